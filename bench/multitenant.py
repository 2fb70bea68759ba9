"""One listing run over many tenants: wall time, API calls, peak memory.

    .venv/bin/python bench/multitenant.py                     # 500 tenants x 5 content types, 50 ms per API call
    .venv/bin/python bench/multitenant.py --tenants 50 --quick

The simulator runs in a child process (so its TLS work does not share this process's interpreter
lock) with ``--latency`` added to every API call; Azurite holds the checkpoints and the queue. Each
tenant has its own app registration (a client secret per tenant, referenced from the registry) and
one new content blob per content type in the window, as in steady state. The figure is the wall time
of ``Collector.run_lister()``: plan, list every stream, enqueue, advance every checkpoint.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from o365collector.azurite import start_azurite
from o365collector.config import Settings
from o365collector.models import CONTENT_TYPES
from o365collector.runtime import Collector, quiet_sdk_loggers


def tenant_ids(count: int) -> list[tuple[str, str, str]]:
    """(tenant id, client id, secret) per tenant, deterministic."""
    return [
        (f"{i:08x}-0000-4000-8000-000000000001", f"{i:08x}-0000-4000-8000-0000000000c1", f"secret-{i}")
        for i in range(1, count + 1)
    ]


def serve(count: int, latency: float, conn: Any) -> None:
    """Child process: a simulator with ``count`` tenants, until the parent says stop."""
    from o365collector.simulator import Simulator, SimulatorConfig, TenantSpec

    now = dt.datetime.now(dt.UTC)
    sim = Simulator(SimulatorConfig(seed=5, latency_seconds=latency, page_size=100))
    for tenant_id, client_id, secret in tenant_ids(count):
        sim.add_tenant(
            TenantSpec(tenant_id=tenant_id, client_id=client_id, client_secret=secret, subscribed=CONTENT_TYPES)
        )
        for content_type in CONTENT_TYPES:
            sim.generate(
                tenant_id, content_type, now - dt.timedelta(minutes=50), now - dt.timedelta(minutes=6),
                blob_every=dt.timedelta(minutes=45), records_per_blob=(1, 3),
            )  # fmt: skip
    sim.start()
    conn.send((sim.api_url, sim.ca_file))
    conn.recv()  # stop
    conn.send({"requests": dict(sim.stats.requests), "responses": dict(sim.stats.responses)})
    sim.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every API call")
    parser.add_argument("--concurrency", type=int, default=None, help="O365_LIST_CONCURRENCY (default: the setting's)")
    parser.add_argument("--quick", action="store_true", help="50 tenants")
    args = parser.parse_args()
    count = 50 if args.quick else args.tenants
    quiet_sdk_loggers()

    parent, child = mp.Pipe()
    server = mp.get_context("spawn").Process(target=serve, args=(count, args.latency, child), daemon=True)
    server.start()
    api_url, ca_file = parent.recv()
    os.environ["REQUESTS_CA_BUNDLE"] = ca_file
    with tempfile.TemporaryDirectory() as scratch:
        azurite = start_azurite(Path(scratch) / "azurite")
        try:
            entries, secrets = [], {}
            for index, (tenant_id, client_id, secret) in enumerate(tenant_ids(count)):
                secrets[f"O365_SECRET_TENANT_{index}"] = secret
                entries.append(
                    {"tenantId": tenant_id, "clientId": client_id, "credential": f"setting:O365_SECRET_TENANT_{index}"}
                )
            env = {
                "O365_TENANTS": orjson.dumps(entries).decode(),
                "O365_API_URL": api_url,
                "O365_AUTHORITY_HOST": api_url,
                "O365_START_TIME": (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat(),
                "AzureWebJobsStorage": azurite.connection_string,
                "SINK_TYPE": "file",
                "SINK_FILE_DIR": str(Path(scratch) / "out"),
                "O365_LIST_BUDGET_SECONDS": "600",
                **secrets,
            }
            if args.concurrency:
                env["O365_LIST_CONCURRENCY"] = str(args.concurrency)
            settings = Settings.from_env(env)
            collector = Collector(settings, environ=env)
            collector.ensure_resources()
            idle_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            started, cpu_started = time.perf_counter(), time.process_time()
            result = collector.run_lister()
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        finally:
            azurite.stop()
    parent.send("stop")
    stats = parent.recv()
    server.join(10)

    streams = len(result.streams)
    failed = [s for s in result.streams if not s.ok]
    api_calls = sum(n for route, n in stats["requests"].items() if route != "token" and route != "discovery")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    print(
        f"tenants: {count} x {len(CONTENT_TYPES)} content types = {streams} streams; concurrency "
        f"{settings.list_concurrency}; {args.latency * 1000:.0f} ms added per API call"
    )
    print(
        f"listing run: {seconds:.1f} s wall, {streams / seconds:.0f} streams/s, "
        f"{result.blobs_enqueued} blobs enqueued, {sum(s.windows for s in result.streams)} windows, "
        f"{len(failed)} failed streams, {result.windows_left} windows left"
    )
    print(f"collector CPU: {cpu:.1f} s in {seconds:.1f} s wall (the simulator and Azurite use the other share)")
    print(f"API calls: {stats['requests']} (responses {stats['responses']})")
    print(f"API calls per stream (excluding token requests): {api_calls / streams:.2f}")
    print(f"peak RSS: {peak_rss / 1024:.0f} MiB (before the run {idle_rss / 1024:.0f} MiB)")
    return 0 if not failed and result.windows_left == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
