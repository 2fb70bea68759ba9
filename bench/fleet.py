"""A fleet of instances lists thousands of tenants through the list queue: wall time, duplicates, quota, storage.

    .venv/bin/python bench/fleet.py                          # 5,000 tenants x 5 content types, 8 instances
    .venv/bin/python bench/fleet.py --quick                  # 200 tenants
    .venv/bin/python bench/fleet.py --tenants 1000 --instances 4
    .venv/bin/python bench/fleet.py --tenants 100 --instances 1 --profile fleet.prof   # where the CPU goes

What runs, as in a Functions app with ``O365_LIST_FANOUT=true`` and ``O365_SHARED_PACING=true``:

- the simulator in a child process, ``--latency`` (50 ms) added to every API call, the API's quota on
  (2,000 calls per publisher per minute, answered 403 AF429 beyond it); one app registration and one
  new content blob per content type per tenant in the window, as in steady state;
- one Azurite for the whole fleet (checkpoints, leases, ledger, pacing rows, list and content queues);
- the timer's work once (``enqueue_listing``: one list message per tenant), then ``--instances``
  processes, each with its own ``Collector`` built from the same settings, draining the list queue with
  the list trigger's code (``list_message``) on ``--threads`` threads (the host's queue batch size),
  until the list queue is empty. The instances are started (imports, settings) before the timer fires,
  as a warm host's are.

Measured: wall time from the timer's start to the last list message handled (the schedule's target is
300 s); every blob enqueued once (the content queue read back and its content ids compared with the
simulator's); the busiest publisher-minute and the AF429 answers (the simulator counts per publisher,
that is per tenant, per minute); storage transactions per stream and per API call (counted at
azure-core's transport in every process) and pacing's share; CPU of the instances, the simulator and
Azurite (from /proc). Exit status 1 when a stream failed, a blob is missing or duplicated, or AF429 came.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from any folder

import argparse
import contextlib
import cProfile
import datetime as dt
import multiprocessing as mp
import os
import pstats
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import orjson

from bench.harness import StorageCounter, machine
from o365collector.azurite import start_azurite
from o365collector.config import Settings
from o365collector.listing_queue import enqueue_listing, list_message
from o365collector.models import CONTENT_TYPES, FetchTask
from o365collector.pacing import PacingStats, fleet_pacing_stats
from o365collector.runtime import Collector, quiet_sdk_loggers

QUOTA_PER_MINUTE = 2000  # the API's baseline per PublisherIdentifier ([REF] §2)
SCHEDULE_SECONDS = 300  # the default listing schedule: every 5 minutes
# Seconds a received list message stays invisible while handled: the host keeps a message it runs hidden
# (up to its 10-minute function timeout), so a slow handler never sees its message delivered twice.
RECEIVE_VISIBILITY = 600
PHASE_TIMEOUT = 3600.0  # bounds every wait of the bench: a stuck run ends with an error, never hangs


def tenant_ids(count: int) -> list[tuple[str, str, str]]:
    """(tenant id, client id, secret) per tenant, deterministic."""
    return [
        (f"{i:08x}-0000-4000-8000-000000000001", f"{i:08x}-0000-4000-8000-0000000000c1", f"secret-{i}")
        for i in range(1, count + 1)
    ]


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc; 0 where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


# -- the simulator (child process) ---------------------------------------------------------------------------


def serve(count: int, latency: float, quota: int, conn: Connection) -> None:
    """Child process: a simulator with ``count`` tenants until the parent says stop; then its counts."""
    from o365collector.simulator import Simulator, SimulatorConfig, TenantSpec

    now = dt.datetime.now(dt.UTC)
    sim = Simulator(SimulatorConfig(seed=15, latency_seconds=latency, page_size=100))
    sim.options.quota_per_minute = quota
    expected: list[str] = []
    for tenant_id, client_id, secret in tenant_ids(count):
        sim.add_tenant(
            TenantSpec(tenant_id=tenant_id, client_id=client_id, client_secret=secret, subscribed=CONTENT_TYPES)
        )
        for content_type in CONTENT_TYPES:
            blobs = sim.generate(
                tenant_id, content_type, now - dt.timedelta(minutes=50), now - dt.timedelta(minutes=6),
                blob_every=dt.timedelta(minutes=45), records_per_blob=(1, 3),
            )  # fmt: skip
            expected.extend(blob.content_id for blob in blobs)
    sim.start()
    conn.send((sim.api_url, sim.ca_file, expected))
    conn.recv()  # stop
    stats = sim.stats
    conn.send(
        {
            "requests": dict(stats.requests),
            "responses": dict(stats.responses),
            "af429": stats.faults.get("quota", 0),
            "max_per_minute": stats.quota.max_per_minute(),
            "feed_calls": sum(stats.quota.per_minute().values()),  # what the quota counts: feed calls only
        }
    )
    sim.stop()


# -- one instance (child process) ----------------------------------------------------------------------------


@dataclass
class InstanceReport:
    """What one instance did while draining the list queue."""

    messages: int = 0
    streams: int = 0
    failed_streams: int = 0
    blobs_enqueued: int = 0
    blobs_already_queued: int = 0
    busy_skips: int = 0
    continued: int = 0
    errors: list[str] = field(default_factory=list)
    last_done: float = 0.0  # time.monotonic() when its last list message was handled (system-wide clock)
    storage: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    pacing: PacingStats = field(default_factory=PacingStats)


def instance_main(
    env: dict[str, str], threads: int, go: Event, enqueued: Event, conn: Connection, profile: str = ""
) -> None:
    """Child process: build a Collector from ``env``, wait for the timer, drain the list queue, report
    (with ``profile``, a cProfile of the drain written there: where an instance's CPU goes)."""
    quiet_sdk_loggers()
    os.environ["REQUESTS_CA_BUNDLE"] = env["REQUESTS_CA_BUNDLE"]
    settings = Settings.from_env(env)
    target = Collector(settings, environ=env)
    storage_ports = _storage_ports(env["AzureWebJobsStorage"])
    counter = StorageCounter(queue_port=storage_ports[0], table_port=storage_ports[1])
    conn.send("ready")
    if not go.wait(PHASE_TIMEOUT):
        conn.send(InstanceReport(errors=["the timer never fired"]))
        return
    with counter.counting(), profiling(profile):
        report = drain(target, threads, enqueued)
    # azure-identity's token calls go through the same transport: not storage, not counted here.
    report.storage = Counter({k: n for k, n in counter.counts.items() if k[0] != "other"})
    report.pacing = fleet_pacing_stats([target.pacing])
    target.close()
    conn.send(report)


@contextlib.contextmanager
def profiling(path: str) -> Iterator[None]:
    """cProfile every thread started inside the block (the triggers', the lister's pools, the heartbeats) and
    this one; their stats merged into ``path``. cProfile alone sees only the thread that enabled it."""
    if not path:
        yield
        return
    profilers = [cProfile.Profile(time.thread_time)]  # CPU per thread: wall time would charge GIL waits
    lock = threading.Lock()

    def start(_frame: Any, _event: str, _arg: Any) -> None:
        mine = cProfile.Profile(time.thread_time)
        with lock:
            profilers.append(mine)
        mine.enable()  # replaces this hook for the rest of the thread's life

    threading.setprofile(start)
    profilers[0].enable()
    try:
        yield
    finally:
        profilers[0].disable()
        threading.setprofile(None)
        with lock:
            merged = pstats.Stats(profilers[0])
            for other in profilers[1:]:
                merged.add(other)
        merged.dump_stats(path)


def drain(target: Collector, threads: int, enqueued: Event) -> InstanceReport:
    """The host's queue trigger, reduced: receive up to ``threads`` * 1.5 list messages at a time (host.json's
    batchSize + newBatchThreshold), handle each with ``list_message`` on a thread, delete it when handled.
    Ends when the timer has enqueued everything and the list queue holds no message (visible or not)."""
    report = InstanceReport()
    lock = threading.Lock()
    queue = target.list_queue

    def handle(message: Any) -> None:
        try:
            outcome = list_message(target, message.content, message_id=message.id)
            queue.delete_message(message)
        except Exception as err:  # reported, and the message is delivered again after its visibility timeout
            with lock:
                report.errors.append(f"{type(err).__name__}: {err}"[:300])
            return
        with lock:
            report.messages += 1
            report.streams += len(outcome.result.streams)
            report.failed_streams += sum(1 for s in outcome.result.streams if not s.ok)
            report.blobs_enqueued += outcome.result.blobs_enqueued
            report.blobs_already_queued += sum(s.blobs_already_queued for s in outcome.result.streams)
            report.busy_skips += len(outcome.busy)
            report.continued += len(outcome.continued)
            report.last_done = time.monotonic()

    deadline = time.monotonic() + PHASE_TIMEOUT
    in_flight: set[Future[None]] = set()
    room_max = threads + threads // 2
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="list-trigger") as pool:
        while time.monotonic() < deadline:
            room = room_max - len(in_flight)
            got = []
            if room > 0:
                pages = queue.receive_messages(
                    messages_per_page=min(32, room), max_messages=min(32, room), visibility_timeout=RECEIVE_VISIBILITY
                )
                got = list(pages)
            for message in got:
                in_flight.add(pool.submit(handle, message))
            if got and room - len(got) > 0:
                continue
            if in_flight:
                done, _ = wait(in_flight, timeout=0.5, return_when=FIRST_COMPLETED)
                in_flight -= done
            elif enqueued.is_set() and queue.get_queue_properties().approximate_message_count == 0:
                break
            else:
                time.sleep(0.1)  # an empty poll: the host backs off too (maxPollingInterval)
        else:
            report.errors.append("the list queue was not drained within the bench's deadline")
    return report


def _storage_ports(connection_string: str) -> tuple[int, int]:
    parts = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)

    def port(key: str) -> int:
        return int(parts[key].split(":")[2].split("/")[0])

    return port("QueueEndpoint"), port("TableEndpoint")


# -- the fleet -----------------------------------------------------------------------------------------------


@dataclass
class FleetReport:
    """The figures one fleet run printed (and the smoke test asserts on)."""

    tenants: int
    instances: int
    threads: int
    latency: float
    streams_expected: int
    seconds: float = 0.0
    timer_seconds: float = 0.0
    messages: int = 0
    streams_listed: int = 0
    failed_streams: int = 0
    busy_skips: int = 0
    continued: int = 0
    blobs_expected: int = 0
    blobs_enqueued: int = 0
    blobs_in_queue: int = 0
    duplicates: int = 0
    missing: int = 0
    unexpected: int = 0
    api_calls: int = 0
    api_routes: dict[str, int] = field(default_factory=dict)
    token_calls: int = 0
    af429: int = 0
    max_per_minute: int = 0
    storage: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    timer_storage: int = 0
    pacing: PacingStats = field(default_factory=PacingStats)
    instance_cpu: list[float] = field(default_factory=list)
    simulator_cpu: float = 0.0
    azurite_cpu: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def storage_total(self) -> int:
        return sum(self.storage.values()) + self.timer_storage

    @property
    def ok(self) -> bool:
        return (
            not self.errors
            and self.failed_streams == 0
            and self.streams_listed == self.streams_expected
            and self.duplicates == 0
            and self.missing == 0
            and self.unexpected == 0
            and self.af429 == 0
        )


def run_fleet(
    tenants: int,
    instances: int,
    *,
    latency: float,
    threads: int,
    quota: int = QUOTA_PER_MINUTE,
    profile: str = "",
) -> FleetReport:
    """Start the simulator and Azurite, run the timer once and ``instances`` instances; return the figures."""
    report = FleetReport(tenants, instances, threads, latency, streams_expected=tenants * len(CONTENT_TYPES))
    spawn = mp.get_context("spawn")  # no forked SDK clients or locks: each instance starts as a host's would
    parent, child = spawn.Pipe()
    server = spawn.Process(target=serve, args=(tenants, latency, quota, child), daemon=True)
    server.start()
    api_url, ca_file, expected = parent.recv()
    report.blobs_expected = len(expected)
    with tempfile.TemporaryDirectory(prefix="o365-fleet-") as scratch:
        azurite = start_azurite(Path(scratch) / "azurite")
        workers: list[tuple[Any, Connection]] = []
        try:
            env = fleet_env(tenants, api_url, ca_file, azurite.connection_string, Path(scratch))
            collector = Collector(Settings.from_env(env), environ=env)
            collector.ensure_resources()
            go, enqueued = spawn.Event(), spawn.Event()
            for index in range(instances):
                mine, theirs = spawn.Pipe()
                args = (env, threads, go, enqueued, theirs, profile if index == 0 else "")
                process = spawn.Process(target=instance_main, args=args, daemon=True)
                process.start()
                workers.append((process, mine))
            for _, conn in workers:
                if not conn.poll(PHASE_TIMEOUT) or conn.recv() != "ready":
                    raise RuntimeError("an instance did not start")
            cpu_before = [proc_cpu_seconds(p.pid or 0) for p, _ in workers]
            sim_cpu, azurite_cpu = proc_cpu_seconds(server.pid or 0), proc_cpu_seconds(azurite.process.pid)
            timer_counter = StorageCounter(azurite.queue_port, azurite.table_port)
            started = time.monotonic()
            go.set()
            with timer_counter.counting():
                enqueue_listing(collector)
            report.timer_seconds = time.monotonic() - started
            report.timer_storage = sum(n for k, n in timer_counter.counts.items() if k[0] != "other")
            enqueued.set()
            last_done = started
            for (process, conn), before in zip(workers, cpu_before, strict=True):
                if not conn.poll(PHASE_TIMEOUT):
                    raise RuntimeError("an instance did not finish within the bench's deadline")
                got: InstanceReport = conn.recv()
                report.instance_cpu.append(proc_cpu_seconds(process.pid or 0) - before)
                _add(report, got)
                last_done = max(last_done, got.last_done)
            report.seconds = last_done - started
            report.simulator_cpu = proc_cpu_seconds(server.pid or 0) - sim_cpu
            report.azurite_cpu = proc_cpu_seconds(azurite.process.pid) - azurite_cpu
            _read_back(report, collector, expected)
            collector.close()
        finally:
            for process, _ in workers:
                process.join(30)
                if process.is_alive():
                    process.terminate()
            azurite.stop()
    parent.send("stop")
    stats = parent.recv()
    server.join(30)
    report.api_calls = stats["feed_calls"]
    report.api_routes = dict(stats["requests"])
    report.token_calls = stats["requests"].get("token", 0) + stats["requests"].get("openid", 0)
    report.af429 = stats["af429"]
    report.max_per_minute = stats["max_per_minute"]
    return report


def fleet_env(tenants: int, api_url: str, ca_file: str, storage: str, scratch: Path) -> dict[str, str]:
    """The app settings every instance shares: one registry entry and client secret per tenant."""
    entries, secrets = [], {}
    for index, (tenant_id, client_id, secret) in enumerate(tenant_ids(tenants)):
        secrets[f"O365_SECRET_TENANT_{index}"] = secret
        credential = f"setting:O365_SECRET_TENANT_{index}"
        entries.append({"tenantId": tenant_id, "clientId": client_id, "credential": credential})
    return {
        "O365_TENANTS": orjson.dumps(entries).decode(),
        "O365_API_URL": api_url,
        "O365_AUTHORITY_HOST": api_url,
        "REQUESTS_CA_BUNDLE": ca_file,
        "O365_START_TIME": (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat(),
        "AzureWebJobsStorage": storage,
        "SINK_TYPE": "file",
        "SINK_FILE_DIR": str(scratch / "out"),
        "O365_LIST_FANOUT": "true",
        "O365_SHARED_PACING": "true",
        **secrets,
    }


def _add(report: FleetReport, got: InstanceReport) -> None:
    report.messages += got.messages
    report.streams_listed += got.streams
    report.failed_streams += got.failed_streams
    report.blobs_enqueued += got.blobs_enqueued
    report.busy_skips += got.busy_skips
    report.continued += got.continued
    report.errors.extend(got.errors)
    report.storage.update(got.storage)
    for name in ("calls", "claims", "transactions", "conflicts", "waits", "waited_seconds", "degraded"):
        setattr(report.pacing, name, getattr(report.pacing, name) + getattr(got.pacing, name))


def _read_back(report: FleetReport, target: Collector, expected: list[str]) -> None:
    """Every message on the content queue, received once (invisible for the rest of the bench)."""
    seen: Counter[str] = Counter()
    rounds = 0
    while rounds < report.blobs_expected * 2 + 100:  # bounded: each round removes up to 32 from view
        rounds += 1
        batch = list(target.queue.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=3600))
        if not batch:
            break
        for message in batch:
            seen[FetchTask.from_message(message.content).content_id] += 1
    report.blobs_in_queue, report.duplicates, report.missing, report.unexpected = compare_ids(seen, expected)


def compare_ids(seen: Counter[str], expected: list[str]) -> tuple[int, int, int, int]:
    """(messages, duplicates, missing, unexpected): the content queue's ids against the simulator's blobs."""
    wanted = set(expected)
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    return sum(seen.values()), duplicates, len(wanted - set(seen)), len(set(seen) - wanted)


def print_report(report: FleetReport) -> None:
    streams = report.streams_expected
    print(f"machine: {machine()}")
    print(
        f"fleet: {report.tenants} tenants x {len(CONTENT_TYPES)} content types = {streams} streams; "
        f"{report.instances} instances x {report.threads} threads; {report.latency * 1000:.0f} ms added per API "
        f"call; one Azurite, the simulator in its own process"
    )
    verdict = "within" if report.seconds <= SCHEDULE_SECONDS else "OVER"
    print(
        f"listing: {report.seconds:.1f} s from the timer's start to the last list message ({verdict} the "
        f"{SCHEDULE_SECONDS} s schedule), {streams / max(report.seconds, 1e-9):.0f} streams/s; the timer's "
        f"enqueue {report.timer_seconds:.1f} s"
    )
    print(
        f"list messages: {report.messages} handled, {report.streams_listed} streams listed, "
        f"{report.failed_streams} failed, {report.busy_skips} skipped as busy, {report.continued} continued"
    )
    print(
        f"blobs: {report.blobs_expected} in the window, {report.blobs_enqueued} enqueued, {report.blobs_in_queue} "
        f"on the content queue; duplicates {report.duplicates}, missing {report.missing}, unexpected "
        f"{report.unexpected}"
    )
    print(
        f"API: {report.api_calls} feed calls ({report.api_calls / streams:.2f} per stream), {report.token_calls} "
        f"sign-in requests (token and OpenID metadata); busiest publisher-minute {report.max_per_minute} calls "
        f"(quota {QUOTA_PER_MINUTE}); "
        f"AF429 answers {report.af429}"
    )
    total = report.storage_total
    print(
        f"storage transactions: {total} ({total / streams:.2f} per stream, "
        f"{total / max(report.api_calls, 1):.2f} per API call); the timer {report.timer_storage}"
    )
    by_resource: Counter[str] = Counter()
    for (service, name, op), n in report.storage.items():
        by_resource[f"{service} {name}: {op}"] += n
    for label, n in by_resource.most_common(12):
        print(f"  {label}: {n} ({n / streams:.2f} per stream)")
    pacing = report.pacing
    print(
        f"shared pacing: {pacing.calls} calls paced, {pacing.claims} slices claimed, {pacing.transactions} "
        f"transactions ({pacing.transactions_per_call:.2f} per call), {pacing.conflicts} conflicts, "
        f"{pacing.waits} waits"
    )
    cpu = sum(report.instance_cpu)
    print(
        f"CPU: instances {cpu:.1f} s (each {', '.join(f'{c:.1f}' for c in report.instance_cpu)}), simulator "
        f"{report.simulator_cpu:.1f} s, Azurite {report.azurite_cpu:.1f} s, in {report.seconds:.1f} s wall "
        f"on {os.cpu_count()} cores"
    )
    for error in report.errors[:5]:
        print(f"error: {error}")
    if len(report.errors) > 5:
        print(f"... and {len(report.errors) - 5} more errors")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=5000)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--threads", type=int, default=16, help="list messages handled at once per instance")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every API call")
    parser.add_argument("--quick", action="store_true", help="200 tenants")
    parser.add_argument("--profile", default="", help="write a cProfile of the first instance's drain to this file")
    args = parser.parse_args()
    if args.tenants < 1 or args.instances < 1 or args.threads < 1 or args.latency < 0:
        parser.error("--tenants, --instances and --threads must be at least 1, --latency at least 0")
    quiet_sdk_loggers()
    tenants = 200 if args.quick else args.tenants
    report = run_fleet(tenants, args.instances, latency=args.latency, threads=args.threads, profile=args.profile)
    print_report(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
