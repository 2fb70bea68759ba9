"""API calls and storage transactions per content blob, and what that costs per million records.

    .venv/bin/python bench/efficiency.py [--quick]

A two-day backfill, then three restarts (each a fresh collector, as after a redeploy or a crash):
new and late-listed content inside the re-listed overlap, then nothing new, then two collectors
listing and shipping the same streams at the same time; then a run with a late sweep (content
listed 6 h after its contentCreated, found by re-listing 24 h) and a run without one, whose
listing calls and storage transactions are printed side by side: the sweep's extra cost. The
simulator counts every API call and every successful content GET per blob; every storage REST call
(each one a billed transaction) is counted by resource and operation. Target: exactly one
successful GET per blob.

The cost estimate multiplies those counts by list prices (USD, East US, pay-as-you-go, LRS; free
grants ignored, so it is an upper bound) and adds the Functions execution time a million records take
at ``--records-per-second`` (20,000 by default: below what ``bench/throughput.py`` measures on two
cores, since a Flex Consumption instance's CPU is not this machine's). Prices change: they are printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from any folder

import argparse
import contextlib
import datetime as dt
import io
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from bench.harness import TENANT, FastReceiver, SteppedClock, StorageCounter, azurite, machine
from o365collector.config import Settings
from o365collector.models import CONTENT_TYPES
from o365collector.running import run_once
from o365collector.runtime import Collector, quiet_sdk_loggers
from o365collector.simulator import Simulator, SimulatorConfig
from o365collector.simulator.cli import demo_environment

# List prices used for the estimate (USD, East US, pay-as-you-go), with where they were read.
QUEUE_PER_10K = 0.004  # Queue Storage (GPv2, LRS) operations, Azure Retail Prices API as of 2026-09-29
TABLE_PER_10K = 0.00036  # Table Storage (LRS) transactions, azure.microsoft.com/pricing/details/storage/tables
FLEX_PER_GB_SECOND = 0.000026  # Functions Flex Consumption, on-demand execution time
FLEX_PER_MILLION_EXECUTIONS = 0.40  # Functions Flex Consumption, on-demand executions
INSTANCE_GB = 2.048  # Flex Consumption's default instance memory (2,048 MB)
PRICE_SOURCES = (
    "Azure Functions pricing (azure.microsoft.com/pricing/details/functions, Flex Consumption on demand) and "
    "the Azure Retail Prices API, East US, read 2026-09/10; Table Storage pricing page (LRS)"
)


def run_quietly(collector: Collector) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return run_once(collector)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="half a day of backfill instead of two days")
    parser.add_argument(
        "--records-per-second",
        type=float,
        default=20_000.0,
        help="records/s one instance ships (from bench/throughput.py), for the execution-time cost",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_sdk_loggers()
    print(f"machine: {machine()}")

    clock = SteppedClock()
    start = clock()
    days = 0.5 if args.quick else 2.0
    sim = Simulator(SimulatorConfig(seed=3, page_size=20, now=clock, token_lifetime=dt.timedelta(days=3)))
    sim.add_tenant(TENANT)
    tid = TENANT.tenant_id
    for content_type in CONTENT_TYPES:
        sim.generate(
            tid,
            content_type,
            start - dt.timedelta(days=days),
            start - dt.timedelta(minutes=10),
            blob_every=dt.timedelta(minutes=30),
            records_per_blob=(1, 60),
        )
    sim.start()
    receiver = FastReceiver().start()
    try:
        with azurite() as storage:
            env = demo_environment(sim, TENANT) | {
                "AzureWebJobsStorage": storage.connection_string,
                "SINK_TYPE": "http",
                "SINK_URL": receiver.url,
                "O365_START_TIME": (start - dt.timedelta(days=days)).isoformat(),
                "O365_CONTENT_QUEUE": "content-efficiency",
                "O365_CHECKPOINT_TABLE": "cpefficiency",
                "O365_LEDGER_TABLE": "ledgerefficiency",
                "O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "1",
            }
            os.environ["REQUESTS_CA_BUNDLE"] = sim.ca_file
            settings = Settings.from_env(env)

            def collector() -> Collector:
                made = Collector(settings, clock=clock)
                made.ensure_resources()
                return made

            first = collector()  # creates the queues and tables before counting starts
            counter = StorageCounter(storage.queue_port, storage.table_port)
            with counter.counting():
                codes = [run_quietly(first)]
                first.close()
                backfill_counts = counter.counts.copy()
                backfill_blobs = len(sim.blobs(tid))

                # 1. New content, and content listed late (created 40 minutes ago, listable 15 minutes from now).
                now = clock()
                for content_type in CONTENT_TYPES:
                    sim.generate(
                        tid,
                        content_type,
                        now - dt.timedelta(minutes=10),
                        now + dt.timedelta(minutes=20),
                        blob_every=dt.timedelta(minutes=2),
                        records_per_blob=(1, 60),
                    )
                    sim.generate(
                        tid,
                        content_type,
                        now - dt.timedelta(minutes=40),
                        now - dt.timedelta(minutes=38),
                        blob_every=dt.timedelta(minutes=1),
                        records_per_blob=(1, 60),
                        listing_delay=dt.timedelta(minutes=55),
                    )
                clock.advance(dt.timedelta(minutes=30))
                restarted = collector()
                codes.append(run_quietly(restarted))
                restarted.close()

                # 2. Nothing new: the overlap is listed again and nothing is fetched.
                clock.advance(dt.timedelta(minutes=5))
                restarted = collector()
                codes.append(run_quietly(restarted))
                restarted.close()

                # 3. Two collectors at once over the same streams (an overlapping timer run, a second instance).
                now = clock()
                for content_type in CONTENT_TYPES:
                    sim.generate(
                        tid,
                        content_type,
                        now - dt.timedelta(minutes=4),
                        now + dt.timedelta(minutes=8),
                        blob_every=dt.timedelta(minutes=1),
                        records_per_blob=(1, 60),
                    )
                clock.advance(dt.timedelta(minutes=15))
                pair = [collector(), collector()]
                results: dict[int, int] = {}
                threads = [
                    threading.Thread(target=lambda i=i: results.__setitem__(i, run_once(pair[i]))) for i in (0, 1)
                ]
                with contextlib.redirect_stdout(io.StringIO()):  # process-wide: set once, not per thread
                    for thread in threads:
                        thread.start()
                    for thread in threads:
                        thread.join()
                codes.extend(results.values())
                for made in pair:
                    made.close()

                # 4. A late sweep is due (over 60 min since the first run's); content listed 6 h late.
                now = clock()
                for content_type in CONTENT_TYPES:
                    sim.generate(
                        tid,
                        content_type,
                        now - dt.timedelta(hours=6, minutes=10),
                        now - dt.timedelta(hours=6),
                        blob_every=dt.timedelta(minutes=2),
                        records_per_blob=(1, 60),
                        listing_delay=dt.timedelta(hours=6, minutes=5),
                    )
                clock.advance(dt.timedelta(minutes=15))
                sweep = measure_run(collector, sim, counter, codes)
                # 5. The next run, 5 minutes later: no sweep is due, only the overlap is re-listed.
                clock.advance(dt.timedelta(minutes=5))
                plain = measure_run(collector, sim, counter, codes)
    finally:
        receiver.stop()
        sim.stop()

    received = receiver.settle()
    blobs = sim.blobs(tid)
    served = sum(len(b.records) for b in blobs)
    fetches = sim.stats.fetches
    requests = sim.stats.requests
    print(
        f"content: {len(blobs)} blobs, {served:,} records; 4 runs + 2 concurrent, exit codes {codes}; "
        f"receiver got {received.records:,} records"
    )
    once = sum(1 for b in blobs if fetches.get(b.content_id) == 1)
    print(
        f"API: {sum(fetches.values())} successful content GETs for {len(blobs)} blobs "
        f"({once} fetched exactly once, {max(fetches.values(), default=0)} at most); "
        f"{requests['list']} listing calls ({requests['list'] / len(blobs):.2f} per blob), "
        f"{requests['token']} token requests"
    )
    streams = len(CONTENT_TYPES)
    extra_calls = (sweep.list_calls - plain.list_calls) / streams
    extra_storage = (sweep.storage - sweep.late_blobs - plain.storage) / streams
    print(
        f"late sweep ({streams} streams, 24 h re-listed, 48 blobs a day per stream, 20 per page): the listing "
        f"half of a run with it made {sweep.list_calls} listing calls and {sweep.storage} storage transactions "
        f"(of which {sweep.late_blobs} queue messages for the late blobs it found); the next run, without it, "
        f"{plain.list_calls} and {plain.storage}: {extra_calls:.1f} listing calls and {extra_storage:.1f} storage "
        f"transactions more per stream per sweep, {extra_calls * 24:.0f} and {extra_storage * 24:.0f} per stream "
        "per day at the hourly default"
    )
    backfill = _by_role(backfill_counts, settings)
    overall = _by_role(counter.counts, settings)
    print("storage transactions (each REST call is one billed transaction):")
    print(f"  {'':34s} {'backfill':>10s} {'per blob':>9s} {'all runs':>10s} {'per blob':>9s}")
    for key in sorted(set(backfill) | set(overall)):
        role, op = key
        b, a = backfill.get(key, 0), overall.get(key, 0)
        print(f"  {role + ' ' + op:34s} {b:10d} {b / backfill_blobs:9.3f} {a:10d} {a / len(blobs):9.3f}")
    b_total, a_total = sum(backfill.values()), sum(overall.values())
    print(f"  {'total':34s} {b_total:10d} {b_total / backfill_blobs:9.3f} {a_total:10d} {a_total / len(blobs):9.3f}")
    queue_ops = sum(n for (role, _), n in backfill.items() if role.startswith("queue"))
    table_ops = b_total - queue_ops

    print(f"estimated cost per million records, from the backfill's transactions per blob ({PRICE_SOURCES}):")
    for records_per_blob in (100, 2500):
        blobs_per_million = 1e6 / records_per_blob
        storage_cost = (
            blobs_per_million * (queue_ops * QUEUE_PER_10K + table_ops * TABLE_PER_10K) / backfill_blobs / 1e4
        )
        executions = blobs_per_million * FLEX_PER_MILLION_EXECUTIONS / 1e6
        compute = 1e6 / args.records_per_second * INSTANCE_GB * FLEX_PER_GB_SECOND
        total = storage_cost + executions + compute
        print(
            f"  {records_per_blob:>5} records per blob: storage ${storage_cost:.4f} + executions ${executions:.4f} "
            f"+ execution time ${compute:.4f} ({args.records_per_second:,.0f} records/s on a "
            f"{INSTANCE_GB * 1000:.0f} MB instance) = ${total:.4f}"
        )
    ok = once == len(blobs) and received.records >= served and set(codes) == {0} and sweep.late_blobs > 0
    print("result:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


@dataclass(frozen=True)
class RunCost:
    list_calls: int
    storage: int
    late_blobs: int


def measure_run(
    make: Callable[[], Collector], sim: Simulator, counter: StorageCounter, codes: list[int]
) -> RunCost:
    """The listing half of a fresh collector's run (list, enqueue, checkpoints, status): its listing calls,
    storage transactions and late blobs. The blobs it enqueued are shipped afterwards, outside the figures."""
    collector = make()
    calls, transactions = sim.stats.requests["list"], sum(counter.counts.values())
    listed = collector.run_lister()
    collector.record_listing(listed)
    cost = RunCost(
        sim.stats.requests["list"] - calls,
        sum(counter.counts.values()) - transactions,
        sum(s.late_blobs for s in listed.streams),
    )
    codes.append(run_quietly(collector))
    collector.close()
    return cost


def _by_role(counts: Counter[tuple[str, str, str]], settings: Settings) -> Counter[tuple[str, str]]:
    """Transactions by (what the resource is for, operation); calls to anything but storage are left out."""
    roles = {
        settings.content_queue: "queue",
        settings.poison_queue: "poison queue",
        settings.ledger_table: "ledger",
        settings.checkpoint_table: "checkpoints",
    }
    grouped: Counter[tuple[str, str]] = Counter()
    for (service, resource, op), count in counts.items():
        if service != "other":
            grouped[(roles.get(resource, f"{service} {resource}"), op)] += count
    return grouped


if __name__ == "__main__":
    sys.exit(main())
