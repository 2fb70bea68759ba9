"""Fetch -> ship throughput of one collector process, against the floor of the same bytes.

    .venv/bin/python bench/throughput.py [--quick] [--records N] [--blob-records LOW-HIGH] [--tenants N]
        [--processes N] [--batch-size N] [--profile FILE]

``--blob-records 1-20`` makes tiny blobs: what they cost is the per-blob round trips (ledger, queue,
GET, POST), and what counts is blobs/s, which the command-line runner raises by handling up to
host.json ``batchSize`` deliveries at once. ``--tenants N`` spreads the blobs over N tenants (an
MSSP's queue), each with its own app registration and its own API budget at the default pacing
(``O365_MAX_REQUESTS_PER_MINUTE``: the API's quota is per tenant): one tenant's 25 GETs/s is then
not what is measured. ``--processes N`` runs N collector processes on the same queue (one ``run`` per
core of a VM): one process is bound by its interpreter lock at about one core. The services' CPU
(Azurite, the simulator, the receiver) is printed too: on one machine they share its cores.

The workload (``bench/workload.py``): mixed content types, records of 0.5-5 KB with a few of 100 KB+,
blobs of 1-5,000 records. The simulator serves them over HTTPS on loopback; the collector lists them,
then its queue runner fetches every blob and ships it through the ``http`` sink (gzip NDJSON) to a
loopback receiver, with Azurite as the storage account (queue, ledger, checkpoints): the code
``python -m o365collector run --once`` runs, timed in two phases.

The floor is what no collector can avoid for the same bytes in the same process, without any I/O:
``orjson.loads`` of each blob, ``orjson.dumps`` of each record, NDJSON batches of the http sink's size
and ``gzip`` at the http sink's level. The ratio pipeline/floor says what the I/O, storage and
bookkeeping cost on top.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from any folder

import argparse
import contextlib
import cProfile
import datetime as dt
import gc
import gzip
import logging
import multiprocessing
import multiprocessing.queues
import os
import pstats
import resource
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from bench.harness import TENANT, Services, azurite, collector_env, machine
from bench.tenant_services import TenantServices, spread_blobs, tenant_specs, tenants_env
from bench.workload import BlobBody, describe, make_blobs
from o365collector.config import Settings
from o365collector.queue_runner import DrainResult
from o365collector.running import Progress, list_all, queue_runner
from o365collector.runtime import Collector, quiet_sdk_loggers
from o365collector.sinks import http as http_sink
from o365collector.telemetry import ShipTally

TARGET_RECORDS_PER_SECOND = 30_000
TARGET_FLOOR_RATIO = 2.0


def floor_seconds(blobs: Sequence[BlobBody], level: int) -> float:
    """Parse, serialize and gzip every blob the way the http sink batches it; no I/O."""
    max_bytes, max_records = http_sink.DEFAULT_BATCH_MAX_BYTES, http_sink.DEFAULT_BATCH_MAX_RECORDS
    started = time.perf_counter()
    for blob in blobs:
        batch: list[bytes] = []
        size = 0
        for record in orjson.loads(blob.body):
            line = orjson.dumps(record)
            if batch and (len(batch) >= max_records or size + len(line) + 1 > max_bytes):
                gzip.compress(b"\n".join(batch) + b"\n", compresslevel=level, mtime=0)
                batch, size = [], 0
            batch.append(line)
            size += len(line) + 1
        if batch:
            gzip.compress(b"\n".join(batch) + b"\n", compresslevel=level, mtime=0)
    return time.perf_counter() - started


@contextlib.contextmanager
def profiling(path: Path | None) -> Iterator[None]:
    """cProfile every thread started inside the block (the runner's work is on its pool's threads), timed
    in each thread's own CPU time, merged and written to ``path``; the top entries by own time printed."""
    if path is None:
        yield
        return
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start(_frame: object, _event: str, _arg: object) -> None:
        profile = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(profile)
        profile.enable()  # replaces this hook for the rest of the thread

    main_thread = cProfile.Profile(time.thread_time)
    threading.setprofile(start)
    main_thread.enable()
    try:
        yield
    finally:
        main_thread.disable()
        threading.setprofile(None)
    stats = pstats.Stats(main_thread)
    for profile in profiles:  # the pool's threads have ended with the drain
        stats.add(profile)
    stats.dump_stats(path)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(45)


def drain(collector: Collector, workers: int) -> DrainResult:
    """Ship the queue with ``workers`` command-line queue runners (``run --once``'s) at once in this process."""

    def one() -> DrainResult:
        return queue_runner(collector, ShipTally()).drain()

    if workers == 1:
        return one()
    with ThreadPoolExecutor(workers) as pool:
        return merged(pool.map(lambda _: one(), range(workers)))


def _drain_process(
    env: dict[str, str], workers: int, start: Any, results: multiprocessing.queues.Queue[tuple[DrainResult, float]]
) -> None:
    """One collector process (``run --once`` on a VM's core): its own Collector, sessions and runners."""
    quiet_sdk_loggers()
    collector = Collector(Settings.from_env(env), environ=env)
    try:
        start.wait()  # every process built its collector: the timing starts now
        before = time.process_time()
        drained = drain(collector, workers)
        results.put((drained, time.process_time() - before))
    finally:
        collector.close()


def drain_in_processes(env: dict[str, str], processes: int, workers: int) -> tuple[DrainResult, float, float]:
    """(merged result, wall seconds, CPU seconds of all processes): ``processes`` collectors on the same queue."""
    context = multiprocessing.get_context("spawn")  # not fork: this process holds threads and open pools
    start = context.Barrier(processes + 1)
    results: multiprocessing.queues.Queue[tuple[DrainResult, float]] = context.Queue()
    children = [context.Process(target=_drain_process, args=(env, workers, start, results)) for _ in range(processes)]
    for child in children:
        child.start()
    start.wait(timeout=120)
    started = time.perf_counter()
    done = [results.get(timeout=3600) for _ in children]
    seconds = time.perf_counter() - started
    for child in children:
        child.join(30)
    return merged(r for r, _ in done), seconds, sum(cpu for _, cpu in done)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` and its waited-for children so far (Linux /proc), 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(v) for v in fields[11:15]) / ticks  # utime, stime, cutime, cstime


def merged(results: Iterable[DrainResult]) -> DrainResult:
    total = DrainResult()
    for result in results:
        total.records += result.records
        total.failures += result.failures
        total.poisoned += result.poisoned
        for outcome, count in result.outcomes.items():
            total.outcomes[outcome] = total.outcomes.get(outcome, 0) + count
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="40,000 records instead of 300,000")
    parser.add_argument("--records", type=int, default=None, help="records in all (default 300,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="queue runners in this process (1: `run --once`; each handles up to batchSize deliveries at once)",
    )
    parser.add_argument(
        "--gzip-level", type=int, default=None, help="override the http sink's gzip level (floor and pipeline alike)"
    )
    parser.add_argument("--blob-records", default="1-5000", help="records per blob, LOW-HIGH (default 1-5000)")
    parser.add_argument(
        "--api-rate",
        type=float,
        default=None,
        help="O365_MAX_REQUESTS_PER_MINUTE per tenant (default: the setting's, 1,500: one GET per blob makes it "
        "25 blobs/s per tenant at most; use --tenants to measure the collector rather than one tenant's cap)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="collector processes on the same queue, each with --workers runners (a VM running one `run` per core)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="O365_QUEUE_BATCH_SIZE: deliveries at once per runner (default 16)"
    )
    parser.add_argument(
        "--tenants",
        type=int,
        default=1,
        help="spread the blobs over this many tenants (O365_TENANTS), each paced on its own (default 1)",
    )
    parser.add_argument("--spread", choices=("uniform", "log"), default="uniform", help="blob size distribution")
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile of the shipping phase here")
    args = parser.parse_args(argv)
    total = args.records or (40_000 if args.quick else 300_000)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_sdk_loggers()

    print(f"machine: {machine()}")
    created = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)
    low, _, high = args.blob_records.partition("-")
    sizes = (int(low), int(high))
    tenants = tenant_specs(args.tenants) if args.tenants > 1 else []
    spread = spread_blobs(args.seed, tenants, total, records_per_blob=sizes, spread=args.spread) if tenants else []
    blobs = (
        [t.blob for t in spread]
        if tenants
        else make_blobs(args.seed, TENANT.tenant_id, total, records_per_blob=sizes, spread=args.spread)
    )
    json_bytes = sum(len(b.body) for b in blobs)
    print(f"workload: {describe(blobs)}")
    if args.gzip_level is not None:
        http_sink.GZIP_LEVEL = args.gzip_level
    level = http_sink.GZIP_LEVEL
    floor = floor_seconds(blobs, level)
    print(
        f"floor (orjson parse + serialize + gzip level {level}, no I/O): {total / floor:,.0f} records/s, "
        f"{json_bytes / floor / 1e6:.1f} MB/s"
    )

    services: Services | TenantServices = (
        TenantServices(tenants, spread, created=created, seed=args.seed)
        if tenants
        else Services(blobs, created=created, seed=args.seed)
    )
    try:
        with azurite() as storage:
            overrides = {} if args.api_rate is None else {"O365_MAX_REQUESTS_PER_MINUTE": f"{args.api_rate:g}"}
            if args.batch_size is not None:
                overrides["O365_QUEUE_BATCH_SIZE"] = str(args.batch_size)
            env = collector_env(services.endpoints, storage, start=created - dt.timedelta(hours=2), **overrides)
            if tenants:
                env = tenants_env(env, tenants)
            os.environ["REQUESTS_CA_BUNDLE"] = env["REQUESTS_CA_BUNDLE"]
            collector = Collector(Settings.from_env(env), environ=env)
            collector.ensure_resources()
            try:
                started = time.perf_counter()
                listed = list_all(collector, Progress(logging.getLogger("bench")))
                list_seconds = time.perf_counter() - started
                gc.collect()
                # What the services cost meanwhile: on one machine they share the cores with the collector.
                others = {"Azurite": storage.process.pid}
                for child in multiprocessing.active_children():  # the services' process (harness.Services)
                    others["simulator + receiver"] = child.pid or 0
                others_before = {name: cpu_seconds(pid) for name, pid in others.items()}
                if args.processes > 1:
                    drained, ship_seconds, cpu = drain_in_processes(env, args.processes, args.workers)
                else:
                    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
                    started = time.perf_counter()
                    with profiling(args.profile):
                        drained = drain(collector, args.workers)
                        ship_seconds = time.perf_counter() - started
                        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
                    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
                others_cpu = {name: cpu_seconds(pid) - others_before[name] for name, pid in others.items()}
            finally:
                collector.close()
        received, fetches, _requests = services.stats()
    finally:
        services.stop()

    runner = Settings.from_env(env).queue_runner
    pacing = Settings.from_env(env).http.max_requests_per_minute
    print(f"API pacing: {pacing:,.0f} requests/min for each of {max(1, args.tenants)} tenant(s)")
    rate = total / ship_seconds
    ratio = ship_seconds / floor
    print(
        f"listing: {listed.blobs_enqueued} blobs enqueued in {list_seconds:.2f}s; shipping: "
        f"{len(blobs) / ship_seconds:.1f} blobs/s, {cpu / len(blobs) * 1000:.1f} ms CPU per blob "
        f"({args.processes} process(es) x {args.workers} command-line runner(s), up to {runner.batch_size} "
        "deliveries at once each, "
        f"the next batch at {runner.batch_size // 2} or fewer in flight)"
    )
    print(
        f"fetch -> ship: {drained.records:,} records in {ship_seconds:.2f}s = {rate:,.0f} records/s, "
        f"{json_bytes / ship_seconds / 1e6:.1f} MB/s of JSON in, "
        f"{received.wire_bytes / ship_seconds / 1e6:.1f} MB/s gzip out ({received.requests} POSTs)"
    )
    print(
        f"collector CPU while shipping: {cpu:.2f}s ({cpu / ship_seconds:.0%} of one core; "
        f"{cpu / total * 1e6:.0f} CPU-s per million records)"
    )
    print(
        "the services' CPU meanwhile, per blob (same machine): "
        + ", ".join(f"{name} {seconds / len(blobs) * 1000:.1f} ms" for name, seconds in others_cpu.items())
        + f"; machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"pipeline / floor: {ratio:.2f}x (target <= {TARGET_FLOOR_RATIO:g}x); "
        f"records/s target {TARGET_RECORDS_PER_SECOND:,}"
    )
    complete = received.records == total and len(fetches) == len(blobs) and set(fetches.values()) == {1}
    print(
        f"check: receiver got {received.records:,} of {total:,} records; "
        f"{len(fetches)} of {len(blobs)} blobs fetched, {max(fetches.values(), default=0)} GET(s) at most per blob"
    )
    ok = complete and rate >= TARGET_RECORDS_PER_SECOND and ratio <= TARGET_FLOOR_RATIO
    print("result:", "PASS" if ok else "BELOW TARGET" if complete else "INCOMPLETE")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
