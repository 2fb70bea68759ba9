"""Latency: from content becoming listable at the API to its records accepted by the receiver.

    .venv/bin/python bench/latency.py [--quick] [--hours 3]

A live feed: every content type gets a blob every few minutes, and each blob becomes listable some
time after its ``contentCreated`` (30 seconds to 45 minutes, log-uniform: the service publishes late
and irregularly). The collector runs with the default settings: the lister on ``O365_LIST_SCHEDULE``
(every 5 minutes, on the clock), windows ending ``O365_END_DELAY_MINUTES`` (5) behind now, the
60-minute overlap; the queue is shipped right after each listing, as the queue trigger does.

Time is simulated where nothing happens: between two timer ticks the shared clock of the simulator,
the collector and the receiver jumps ahead; listing, fetching and shipping take their real time.
A blob's latency is the time its last batch was accepted minus the time it became listable.
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
import math
import os
import random
import statistics

from bench.harness import TENANT, FastReceiver, SteppedClock, azurite, machine
from o365collector.config import Settings
from o365collector.models import CONTENT_TYPES
from o365collector.running import run_once
from o365collector.runtime import Collector, quiet_sdk_loggers
from o365collector.simulator import Simulator, SimulatorConfig
from o365collector.simulator.cli import demo_environment

TICK = dt.timedelta(minutes=5)  # O365_LIST_SCHEDULE's default, "0 */5 * * * *"
BLOB_EVERY = dt.timedelta(minutes=4)
DELAY_RANGE = (30.0, 45 * 60.0)  # seconds from contentCreated to listable


def next_tick(when: dt.datetime) -> dt.datetime:
    """The first 5-minute boundary at or after ``when`` (NCRONTAB ``0 */5 * * * *``)."""
    floor = when.replace(second=0, microsecond=0, minute=when.minute - when.minute % 5)
    return floor if floor == when else floor + TICK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one hour of feed instead of three")
    parser.add_argument("--hours", type=float, default=None, help="hours of live feed (default 3)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    hours = args.hours or (1.0 if args.quick else 3.0)
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_sdk_loggers()
    print(f"machine: {machine()}")

    clock = SteppedClock()
    receiver = FastReceiver(clock=lambda: clock().timestamp()).start()
    sim = Simulator(SimulatorConfig(seed=args.seed, page_size=50, now=clock, token_lifetime=dt.timedelta(days=2)))
    sim.add_tenant(TENANT)
    rng = random.Random(args.seed)
    start = next_tick(clock()) + dt.timedelta(minutes=1)
    end = start + dt.timedelta(hours=hours)
    available_at: dict[str, dt.datetime] = {}
    for content_type in CONTENT_TYPES:
        created = start + dt.timedelta(seconds=rng.uniform(0, BLOB_EVERY.total_seconds()))
        while created < end:
            delay = math.exp(rng.uniform(*(math.log(x) for x in DELAY_RANGE)))
            records = [
                {"Id": f"{content_type}-{created.timestamp():.3f}-{i}", "Workload": content_type} for i in range(5)
            ]
            blob = sim.add_blob(
                TENANT.tenant_id,
                content_type,
                created,
                records,
                available_at=created + dt.timedelta(seconds=delay),
            )
            available_at[blob.content_id] = blob.available_at
            created += BLOB_EVERY + dt.timedelta(seconds=rng.uniform(-60, 60))
    sim.start()
    try:
        with azurite() as storage:
            env = demo_environment(sim, TENANT) | {
                "AzureWebJobsStorage": storage.connection_string,
                "SINK_TYPE": "http",
                "SINK_URL": receiver.url,
                "O365_START_TIME": (start - dt.timedelta(minutes=30)).isoformat(),
                "O365_CONTENT_QUEUE": "content-latency",
                "O365_CHECKPOINT_TABLE": "cplatency",
                "O365_LEDGER_TABLE": "ledgerlatency",
            }
            os.environ["REQUESTS_CA_BUNDLE"] = sim.ca_file
            collector = Collector(Settings.from_env(env), clock=clock)
            collector.ensure_resources()
            ticks = 0
            deadline = end + dt.timedelta(seconds=DELAY_RANGE[1]) + 3 * TICK
            try:
                while clock() < deadline and len(receiver.stats.accepted_at) < len(available_at):
                    clock.advance_to(next_tick(clock()))  # idle until the timer fires
                    with contextlib.redirect_stdout(io.StringIO()):
                        run_once(collector)
                    ticks += 1
            finally:
                collector.close()
    finally:
        receiver.stop()
        sim.stop()

    accepted = receiver.settle().accepted_at
    latencies = sorted(accepted[cid][1] - when.timestamp() for cid, when in available_at.items() if cid in accepted)
    missing = len(available_at) - len(latencies)
    print(
        f"feed: {hours:g} h, {len(available_at)} blobs of {len(CONTENT_TYPES)} content types, listable "
        f"{DELAY_RANGE[0]:.0f} s to {DELAY_RANGE[1] / 60:.0f} min after contentCreated; {ticks} timer runs"
    )
    if not latencies:
        print("result: NOTHING SHIPPED")
        return 1
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    print(
        f"listable -> accepted: median {statistics.median(latencies) / 60:.1f} min, p95 {p95 / 60:.1f} min, "
        f"worst {latencies[-1] / 60:.1f} min, best {latencies[0]:.1f} s; {missing} blobs not shipped"
    )
    print(
        "  bound: the next 5-minute tick after the blob is listable and its contentCreated is 5 minutes old "
        "(O365_END_DELAY_MINUTES), plus the seconds listing and shipping take"
    )
    print("result:", "PASS" if missing == 0 else "INCOMPLETE")
    return 0 if missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
