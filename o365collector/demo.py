"""``python -m o365collector demo``: the whole pipeline on this machine, no Azure account needed.

Azurite (storage) + the simulator (Management Activity API and token endpoint, HTTPS on loopback)
+ the collector's ``run --once`` + the file sink. Prints what flowed and where it landed.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import requests

from .azurite import start_azurite
from .config import Settings
from .models import CONTENT_TYPES
from .running import queue_runner, run_once
from .runtime import Collector
from .simulator import Simulator, SimulatorConfig, TenantSpec
from .simulator.auth_setup import auth_environment
from .simulator.cli import demo_environment, print_environment, storage_environment, wait_for_signal
from .sources.catalog import GRAPH_STREAMS, SOURCES
from .telemetry import ShipTally
from .webhook_server import WebhookServer

DEMO_TENANT = TenantSpec(
    tenant_id="5b7c3a1e-8d2f-4e6a-9c0b-1a2b3c4d5e6f",
    client_id="0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
    client_secret="demo-secret-not-real",  # noqa: S106 - the simulator's own demo credential
    roles=("ActivityFeed.Read", "ActivityFeed.ReadDlp"),
    audit_enabled=True,
    subscribed=CONTENT_TYPES[:3],  # the collector starts the other two itself
)


def count_output(folder: Path) -> Counter[str]:
    """Records per content type in the file sink's folder ({tenant}/{content type}/...)."""
    counts: Counter[str] = Counter()
    for path in folder.rglob("*.ndjson"):
        content_type = path.relative_to(folder).parts[1]
        with path.open("rb") as handle:
            counts[content_type] += sum(1 for line in handle if line.strip())
    return counts


def serve_webhook(collector: Collector, sim: Simulator) -> WebhookServer:
    """The collector's webhook listener, as ``run --webhook-listen`` serves it on a VM, on
    ``https://127.0.0.1:PORT/api/webhook`` with the simulator's certificate (its pusher trusts that CA)."""
    if sim.cert_files is None:
        raise RuntimeError("simulator not started: no certificate to serve the webhook with")
    files = sim.cert_files
    return WebhookServer(
        collector.webhook_receiver(), cert_file=str(files.cert_file), key_file=str(files.key_file)
    ).start()


def push_phase(collector: Collector, sim: Simulator, *, blobs: int = 3, wait_seconds: float = 30.0) -> int:
    """Push mode, live: webhooks on every subscription, fresh blobs appear, the simulator's background pusher
    notifies the receiver, which queues them; the queue is shipped as the queue trigger would. Returns how
    many of the fresh blobs were pushed within ``wait_seconds``."""
    listener = serve_webhook(collector, sim)
    try:
        address = f"https://127.0.0.1:{listener.port}/api/webhook"  # the simulator's certificate names 127.0.0.1
        auth_id = collector.settings.push.auth_id
        assert auth_id is not None
        http = requests.Session()
        http.verify = sim.ca_file
        token = http.post(
            f"{sim.authority_url}/{DEMO_TENANT.tenant_id}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": DEMO_TENANT.client_id,
                  "client_secret": DEMO_TENANT.client_secret, "scope": "https://manage.office.com/.default"},
            timeout=30,
        ).json()["access_token"]  # fmt: skip
        for content_type in CONTENT_TYPES:
            http.post(
                f"{sim.api_url}/api/v1.0/{DEMO_TENANT.tenant_id}/activity/feed/subscriptions/start",
                params={"contentType": content_type, "PublisherIdentifier": DEMO_TENANT.tenant_id},
                json={"webhook": {"address": address, "authId": auth_id.reveal(), "expiration": ""}},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            ).raise_for_status()
        now = sim.now()
        fresh = {
            sim.add_blob(
                DEMO_TENANT.tenant_id, CONTENT_TYPES[i % len(CONTENT_TYPES)], now,
                [{"Id": f"push-demo-{now.timestamp():.0f}-{i}", "CreationTime": now.strftime("%Y-%m-%dT%H:%M:%S")}],
                available_at=now + dt.timedelta(seconds=1),
            ).content_id
            for i in range(blobs)
        }  # fmt: skip
        print(f"demo: push mode: webhook at {address}; {blobs} fresh blobs become available in 1 s")
        pushed: set[str] = set()
        deadline = time.monotonic() + wait_seconds
        while pushed != fresh and time.monotonic() < deadline:
            time.sleep(0.2)  # the background pusher runs on its own interval
            pushed = {n.content_id for n in sim.pusher.log if n.status == 200} & fresh
        queue_runner(collector, ShipTally()).drain(max_seconds=wait_seconds)  # what the queue trigger does
        print(f"demo: push mode: {len(pushed)} of {blobs} fresh blobs notified by webhook and shipped")
        return len(pushed)
    finally:
        listener.stop()


def run_demo(
    *, days: float, output: str, keep_running: bool = False, push: bool = False, auth_mode: str = "clientSecret"
) -> int:
    """``keep_running``: after the run, print every setting and keep Azurite and the simulator up until
    Ctrl+C, so ``check``, ``status`` and ``run`` can be explored against the demo's state. ``push``: then
    push mode, live (``push_phase``)."""
    out = Path(output).resolve()
    previous = out / DEMO_TENANT.tenant_id
    if previous.is_dir():
        # The counts below read the folder: an earlier demo's files would be counted as this run's.
        shutil.rmtree(previous)
        print(f"cleared the previous demo run's output in {previous}")
    now = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="o365-demo-") as scratch:
        azurite = start_azurite(Path(scratch) / "azurite")
        sim = Simulator(SimulatorConfig(seed=7, page_size=20, push_interval_seconds=0.5 if push else 0.0))
        try:
            sim.add_tenant(DEMO_TENANT)
            for content_type in CONTENT_TYPES:
                sim.generate(
                    DEMO_TENANT.tenant_id,
                    content_type,
                    now - dt.timedelta(days=days),
                    now - dt.timedelta(minutes=10),
                    blob_every=dt.timedelta(minutes=45),
                    records_per_blob=(1, 40),
                )
            for stream in GRAPH_STREAMS:  # Entra sign-ins and directory audits, Exchange message trace
                sim.generate_graph(
                    DEMO_TENANT.tenant_id,
                    stream,
                    now - dt.timedelta(days=days),
                    now - dt.timedelta(minutes=10),
                    every=dt.timedelta(minutes=20),
                )
            sim.start()
            env = (
                demo_environment(sim, DEMO_TENANT)
                | storage_environment(azurite, out)
                | {
                    "O365_START_TIME": (now - dt.timedelta(days=days)).isoformat(),
                    "O365_RETRY_BACKOFF_SECONDS": "0.2",
                    # Every source: the audit feed, and Microsoft Graph's logs from the same simulator.
                    "O365_SOURCES": ",".join(SOURCES),
                    "O365_GRAPH_URL": sim.api_url,
                }
            )
            if auth_mode != "clientSecret":
                env |= auth_environment(sim, DEMO_TENANT.tenant_id, DEMO_TENANT.client_id, auth_mode)
                # azure-identity reads the identity endpoint's variables from the process environment.
                os.environ.update({k: env[k] for k in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER")})
                how = "a Key Vault certificate read" if auth_mode == "certificate" else "signing in"
                print(f"demo: {auth_mode}: {how} through the identity endpoint, no client secret")
            if push:
                env["O365_WEBHOOK_AUTH_ID"] = secrets.token_hex(24)  # the demo's own, new each run
            # requests and azure-identity read the simulator's CA bundle from the environment.
            os.environ["REQUESTS_CA_BUNDLE"] = env["REQUESTS_CA_BUNDLE"]
            print(f"demo: simulator at {sim.api_url}, Azurite on 127.0.0.1, {days:g} days of history")
            collector = Collector(Settings.from_env(env))
            try:
                code = run_once(collector)
                if push and push_phase(collector, sim) < 3:
                    code = code or 1
            finally:
                collector.close()
            expected = Counter(
                {ct: sum(len(b.records) for b in sim.blobs(DEMO_TENANT.tenant_id, ct)) for ct in CONTENT_TYPES}
            ) + Counter({s: len(sim.graph_records(DEMO_TENANT.tenant_id, s)) for s in GRAPH_STREAMS})
            if keep_running:
                print_environment(env)
                print("demo: Azurite and the simulator keep running; Ctrl+C to stop", flush=True)
                wait_for_signal()
        finally:
            sim.stop()
            azurite.stop()
    shipped = count_output(out)
    print("records per stream (shipped / served by the simulator):")
    for stream in CONTENT_TYPES + GRAPH_STREAMS:
        print(f"  {stream:<28} {shipped[stream]:>6} / {expected[stream]}")
    print(f"output: {out} (NDJSON, one file per content blob or Graph window)")
    return code
