"""What each Microsoft Graph source costs: Graph API calls, records re-read in the overlap, storage transactions.

    .venv/bin/python bench/graph_sources.py [--quick] [--runs N] [--signins-per-hour R] ...

One tenant collects the three Graph streams (Entra sign-ins, Entra directory audits, Exchange message
trace) against the simulator and Azurite, on a stepped clock the simulator and the collector share.
First a backfill (2 days, ``--quick`` 12 h: the lister's 60-minute windows, read long after their
records appeared), then the steady state: ``--runs`` timer runs 5 minutes apart while records arrive at
each stream's rate, ``--late-share`` of them written 5-12 minutes after their time (Entra's late
records, which the window's trailing overlap exists for). The same steady-state arrivals are collected
by two more collectors, side by side on the same clock, with ``O365_GRAPH_OVERLAP_MINUTES`` 0 and 60
instead of the default 15: late records missed against records re-read.

Counted: Graph calls per route by the simulator; records each read returned and those it skipped as
already shipped by the window before (the re-read cost), from the Graph source's own fetches; records
shipped, duplicates and missing by record id at a loopback receiver; every storage REST call (one
billed transaction each) by ``StorageCounter``. Storage is shared by the streams (one queue, one ledger,
one checkpoint table): its per-window figure is the phase's transactions over all streams' windows.
Exit 1 if a record is missing or shipped twice with an overlap at least the lateness (the default 15).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from any folder

import argparse
import contextlib
import datetime as dt
import gzip
import http.server
import io
import logging
import os
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.harness import TENANT, SteppedClock, StorageCounter, azurite, machine
from o365collector.config import Settings
from o365collector.models import FetchTask, Record
from o365collector.running import run_once
from o365collector.runtime import Collector, quiet_sdk_loggers
from o365collector.simulator import Simulator, SimulatorConfig
from o365collector.simulator.cli import demo_environment
from o365collector.sources.base import FetchedUnit, UnitHistory
from o365collector.sources.catalog import DIRECTORY_AUDITS_STREAM, MESSAGE_TRACE_STREAM, SIGNINS_STREAM
from o365collector.sources.graph import MAX_PAGES, GraphHttp
from o365collector.sources.graph_source import GRAPH_LOGS, GraphSource

STREAMS = (SIGNINS_STREAM, DIRECTORY_AUDITS_STREAM, MESSAGE_TRACE_STREAM)
ROUTE = {SIGNINS_STREAM: "signins", DIRECTORY_AUDITS_STREAM: "directoryaudits", MESSAGE_TRACE_STREAM: "messagetrace"}
STREAM_OF_SOURCE = {spec.source: spec.stream for spec in GRAPH_LOGS.values()}
TIMER = dt.timedelta(minutes=5)  # the timer's schedule
END_DELAY = dt.timedelta(minutes=5)  # CollectionPolicy.end_delay: windows end this far behind now
LATENESS = (dt.timedelta(minutes=5), dt.timedelta(minutes=12))
DEFAULT_OVERLAP = 15
OVERLAPS = (0, DEFAULT_OVERLAP, 60)
DAY = dt.timedelta(days=1)


# -- what the collector read and shipped ------------------------------------------------------


@dataclass
class Reads:
    """Per stream: windows fetched, records Graph returned, records skipped as shipped by the window before."""

    windows: Counter[str] = field(default_factory=Counter)
    read: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def copy(self) -> Reads:
        return Reads(self.windows.copy(), self.read.copy(), self.skipped.copy())

    def since(self, before: Reads) -> Reads:
        return Reads(self.windows - before.windows, self.read - before.read, self.skipped - before.skipped)

    def add(self, other: Reads) -> None:
        self.windows.update(other.windows)
        self.read.update(other.read)
        self.skipped.update(other.skipped)


@contextlib.contextmanager
def counting_reads(reads: Reads) -> Iterator[Reads]:
    """Count what every Graph source's fetch read and skipped (wraps the source's methods while inside)."""
    lock = threading.Lock()
    original_fetch, original_pages = GraphSource.fetch_unit, GraphHttp.pages

    def fetch_unit(self: GraphSource, task: FetchTask, history: UnitHistory) -> FetchedUnit:
        fetched = original_fetch(self, task, history)
        with lock:
            reads.windows[self.spec.stream] += 1
            reads.skipped[self.spec.stream] += fetched.skipped
        return fetched

    def pages(
        self: GraphHttp,
        url: str,
        what: str,
        *,
        max_pages: int = MAX_PAGES,
        before_each: Callable[[], object] | None = None,
    ) -> Iterator[list[Record]]:
        for page in original_pages(self, url, what, max_pages=max_pages, before_each=before_each):
            with lock:
                reads.read[STREAM_OF_SOURCE[self.source]] += len(page)
            yield page

    GraphSource.fetch_unit = fetch_unit  # type: ignore[method-assign]
    GraphHttp.pages = pages  # type: ignore[method-assign]
    try:
        yield reads
    finally:
        GraphSource.fetch_unit = original_fetch  # type: ignore[method-assign]
        GraphHttp.pages = original_pages  # type: ignore[method-assign]


class IdReceiver:
    """A loopback HTTP ingest endpoint that counts each record's ``id`` (duplicates and missing are by id)."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                ids = [str(orjson.loads(line).get("id")) for line in body.splitlines() if line.strip()]
                with receiver._lock:
                    receiver.ids.update(ids)
                self._answer()  # counted before the answer: once the sink returns, the ids are here

            def _answer(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/ingest"

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return self.ids.copy()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- one collector and its costs --------------------------------------------------------------


@dataclass
class Costs:
    """One collector's costs over a phase."""

    calls: Counter[str] = field(default_factory=Counter)  # Graph requests per route (token requests apart)
    storage: int = 0
    reads: Reads = field(default_factory=Reads)
    runs: int = 0
    codes: list[int] = field(default_factory=list)


class Deployment:
    """A collector of the tenant's three Graph streams with its own queue, tables and receiver."""

    def __init__(self, name: str, env: dict[str, str], clock: SteppedClock) -> None:
        self.name = name
        self.receiver = IdReceiver()
        settings = Settings.from_env(
            env
            | {
                "SINK_URL": self.receiver.url,
                "O365_CONTENT_QUEUE": f"content-graph-{name}",
                "O365_CHECKPOINT_TABLE": f"cpgraph{name}",
                "O365_LEDGER_TABLE": f"ledgergraph{name}",
            }
        )
        self.collector = Collector(settings, clock=clock)
        self.collector.ensure_resources()  # before counting: creating queues and tables is a one-off

    def run(self, sim: Simulator, counter: StorageCounter, reads: Reads, costs: Costs) -> None:
        """One timer run (``run --once``), its Graph calls, storage transactions and reads added to ``costs``."""
        calls, storage, read = sim.stats.requests.copy(), sum(counter.counts.values()), reads.copy()
        with contextlib.redirect_stdout(io.StringIO()):
            costs.codes.append(run_once(self.collector))
        costs.calls.update(sim.stats.requests - calls)
        costs.storage += sum(counter.counts.values()) - storage
        costs.reads.add(reads.since(read))
        costs.runs += 1

    def close(self) -> None:
        self.collector.close()
        self.receiver.stop()


# -- the figures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    phase: str
    stream: str
    windows: int
    calls: int
    calls_per_day: float
    in_graph: int
    read: int
    shipped: int
    duplicates: int
    missing: int
    skipped: int
    storage_per_window: float
    storage_per_day: float


def compare_ids(expected: set[str], received: Counter[str]) -> tuple[int, int, int]:
    """(records of ``expected`` received, counting repeats; ids received more than once; ids never received)."""
    shipped = sum(received[i] for i in expected)
    duplicates = sum(1 for i in expected if received[i] > 1)
    missing = sum(1 for i in expected if not received[i])
    return shipped, duplicates, missing


def rows_for(
    phase: str,
    costs: Costs,
    expected: dict[str, set[str]],
    shipped: Counter[str],
    everything: Counter[str],
    span: dt.timedelta,
) -> list[Row]:
    """``shipped``: the ids the receiver got in the phase; ``everything``: every id it ever got (duplicates).
    ``span``: the time the phase covers (its data for a backfill, its runs for the steady state)."""
    per_day = DAY / span
    all_windows = sum(costs.reads.windows.values()) or 1
    storage_per_window = costs.storage / all_windows
    rows = []
    for stream in STREAMS:
        ids = expected[stream]
        shipped_here = compare_ids(ids, shipped)[0]
        _, duplicates, missing = compare_ids(ids, everything)
        windows = costs.reads.windows[stream]
        calls = costs.calls[ROUTE[stream]]
        rows.append(
            Row(
                phase,
                stream,
                windows,
                calls,
                calls * per_day,
                len(ids),
                costs.reads.read[stream],
                shipped_here,
                duplicates,
                missing,
                costs.reads.skipped[stream],
                storage_per_window,
                storage_per_window * windows * per_day,
            )
        )
    return rows


HEADER = (
    f"{'phase':14s} {'stream':24s} {'windows':>7s} {'calls':>6s} {'calls/day':>9s} {'in Graph':>8s} {'read':>6s} "
    f"{'shipped':>7s} {'dup':>4s} {'missing':>7s} {'re-read':>7s} {'storage/window':>14s} {'storage/day':>11s}"
)


def print_row(row: Row) -> None:
    print(
        f"{row.phase:14s} {row.stream:24s} {row.windows:7d} {row.calls:6d} {row.calls_per_day:9.0f} "
        f"{row.in_graph:8d} {row.read:6d} {row.shipped:7d} {row.duplicates:4d} {row.missing:7d} {row.skipped:7d} "
        f"{row.storage_per_window:14.1f} {row.storage_per_day:11.0f}"
    )


def covers(overlap_minutes: int) -> bool:
    """Whether an overlap of this many minutes catches every late record (nothing may then be missing)."""
    return dt.timedelta(minutes=overlap_minutes) >= LATENESS[1]


# -- the scenario -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 h of backfill and 12 steady-state runs")
    parser.add_argument("--runs", type=int, default=None, help="steady-state timer runs (default 144, --quick 12)")
    parser.add_argument("--signins-per-hour", type=float, default=120.0)
    parser.add_argument("--audits-per-hour", type=float, default=20.0)
    parser.add_argument("--messages-per-hour", type=float, default=60.0)
    parser.add_argument("--late-share", type=float, default=0.05, help="share of steady-state records written late")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args(argv)
    rates = {
        SIGNINS_STREAM: args.signins_per_hour,
        DIRECTORY_AUDITS_STREAM: args.audits_per_hour,
        MESSAGE_TRACE_STREAM: args.messages_per_hour,
    }
    if any(r <= 0 for r in rates.values()) or not 0 <= args.late_share < 1:
        parser.error("rates must be > 0 and --late-share in [0, 1)")
    runs = args.runs if args.runs is not None else (12 if args.quick else 144)
    if runs < 6:
        parser.error("--runs must be at least 6 (late records need 3 runs to be caught)")
    days = 0.5 if args.quick else 2.0
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_sdk_loggers()
    print(f"machine: {machine()}")

    clock = SteppedClock()
    start = clock().replace(microsecond=0)
    cursor = start - END_DELAY  # where the backfill ends (whole windows from O365_START_TIME)
    backfill_start = cursor - dt.timedelta(days=days)
    sim = Simulator(SimulatorConfig(seed=args.seed, now=clock, token_lifetime=dt.timedelta(days=3)))
    sim.add_tenant(TENANT)
    tid = TENANT.tenant_id
    rng = random.Random(args.seed)

    # Backfill: every record appeared long before it is read. Steady state: records from the backfill's end
    # until 4 runs before the last (a record up to 12 minutes late is read by the last run at the latest).
    last_run = start + TIMER * runs
    steady_end = last_run - END_DELAY - LATENESS[1] - TIMER
    late: dict[str, set[str]] = {}
    for stream in STREAMS:
        rate = rates[stream]
        sim.generate_graph(tid, stream, backfill_start, cursor - END_DELAY, every=dt.timedelta(hours=1) / rate)
        on_time = rate * (1 - args.late_share)
        sim.generate_graph(tid, stream, cursor, steady_end, every=dt.timedelta(hours=1) / on_time)
        span_s = (steady_end - cursor).total_seconds()
        late[stream] = set()
        for _ in range(round(rate * args.late_share * span_s / 3600)):
            when = cursor + dt.timedelta(seconds=rng.uniform(0, span_s))
            delay = dt.timedelta(seconds=rng.uniform(LATENESS[0].total_seconds(), LATENESS[1].total_seconds()))
            late[stream].add(sim.add_graph_record(tid, stream, when, available_at=when + delay).id)
    backfilled = {s: {r.id for r in sim.graph_records(tid, s) if r.time < cursor} for s in STREAMS}
    steady = {s: {r.id for r in sim.graph_records(tid, s) if r.time >= cursor} for s in STREAMS}
    sim.start()

    deployments: dict[int, Deployment] = {}
    reads = Reads()
    backfill_costs = Costs()
    steady_costs = {overlap: Costs() for overlap in OVERLAPS}
    try:
        with azurite() as storage:
            os.environ["REQUESTS_CA_BUNDLE"] = sim.ca_file
            env = demo_environment(sim, TENANT) | {
                "AzureWebJobsStorage": storage.connection_string,
                "SINK_TYPE": "http",
                "O365_SOURCES": "signins,directoryaudits,messagetrace",
                "O365_GRAPH_URL": sim.api_url,
                "O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS": "1",
            }
            for overlap in OVERLAPS:
                # The default collector backfills first; the others start where the backfill ends.
                begins = backfill_start if overlap == DEFAULT_OVERLAP else cursor
                deployments[overlap] = Deployment(
                    f"o{overlap}",
                    env | {"O365_GRAPH_OVERLAP_MINUTES": str(overlap), "O365_START_TIME": begins.isoformat()},
                    clock,
                )
            counter = StorageCounter(storage.queue_port, storage.table_port)
            main_deployment = deployments[DEFAULT_OVERLAP]
            with counter.counting(), counting_reads(reads):
                main_deployment.run(sim, counter, reads, backfill_costs)
                after_backfill = main_deployment.receiver.snapshot()
                for run in range(1, runs + 1):
                    clock.advance_to(start + TIMER * run)
                    for overlap in OVERLAPS:  # the same arrivals, the same clock
                        deployments[overlap].run(sim, counter, reads, steady_costs[overlap])
            received = {overlap: d.receiver.snapshot() for overlap, d in deployments.items()}
    finally:
        for deployment in deployments.values():
            deployment.close()
        sim.stop()

    print(
        f"one tenant, three Graph streams; records per hour: {SIGNINS_STREAM} {rates[SIGNINS_STREAM]:g}, "
        f"{DIRECTORY_AUDITS_STREAM} {rates[DIRECTORY_AUDITS_STREAM]:g}, {MESSAGE_TRACE_STREAM} "
        f"{rates[MESSAGE_TRACE_STREAM]:g}; backfill {days * 24:g} h (60-minute windows), then {runs} timer runs "
        f"{TIMER.seconds // 60} minutes apart with {args.late_share:.0%} of the records written "
        f"{LATENESS[0].seconds // 60}-{LATENESS[1].seconds // 60} minutes late; token requests: "
        f"{sim.stats.requests['token']} for {len(OVERLAPS)} collectors"
    )
    steady_span = TIMER * runs
    main_received = received[DEFAULT_OVERLAP]
    rows = rows_for("backfill", backfill_costs, backfilled, after_backfill, main_received, dt.timedelta(days=days))
    rows += rows_for(
        f"steady O={DEFAULT_OVERLAP}m",
        steady_costs[DEFAULT_OVERLAP],
        steady,
        main_received - after_backfill,
        main_received,
        steady_span,
    )
    print("calls/day: a backfill's per day of data, the steady state's per day of timer runs; re-read: records")
    print("read again in the overlap and skipped as shipped by the window before; storage is shared by the")
    print("three streams (per window: the phase's transactions over all their windows); read - shipped - re-read:")
    print("records at a window's exact end (Graph's filter is `le`), read again and shipped by the next window")
    print(HEADER)
    for row in rows:
        print_row(row)
    backfill_windows = sum(backfill_costs.reads.windows.values())
    print(
        f"storage transactions: backfill {backfill_costs.storage} for {backfill_windows} windows; steady state "
        f"{steady_costs[DEFAULT_OVERLAP].storage} for {runs} runs "
        f"({steady_costs[DEFAULT_OVERLAP].storage / runs:.1f} per run, "
        f"{steady_costs[DEFAULT_OVERLAP].storage * (DAY / steady_span):.0f} per day)"
    )

    print(f"O365_GRAPH_OVERLAP_MINUTES on the same steady-state arrivals ({runs} runs, all three streams):")
    print(
        f"  {'overlap':>7s} {'late':>5s} {'late missed':>11s} {'missing':>7s} {'dup':>4s} {'calls':>6s} "
        f"{'read':>6s} {'re-read':>7s} {'re-read/day':>11s} {'storage/run':>11s}"
    )
    # Held to 0 missing and 0 duplicates: the backfill, and each overlap at least the lateness.
    checked = [r for r in rows if r.phase == "backfill" or covers(DEFAULT_OVERLAP)]
    ok = all(code == 0 for code in backfill_costs.codes) and all(r.duplicates == r.missing == 0 for r in checked)
    all_late = set().union(*late.values())
    all_steady = set().union(*steady.values())
    for overlap in OVERLAPS:
        costs, got = steady_costs[overlap], received[overlap]
        _, dup, missing = compare_ids(all_steady, got)
        skipped = sum(costs.reads.skipped.values())
        print(
            f"  {overlap:>5d} m {len(all_late):5d} {sum(1 for i in all_late if not got[i]):11d} {missing:7d} "
            f"{dup:4d} {sum(costs.calls[ROUTE[s]] for s in STREAMS):6d} {sum(costs.reads.read.values()):6d} "
            f"{skipped:7d} {skipped * (DAY / steady_span):11.0f} {costs.storage / runs:11.1f}"
        )
        if covers(overlap):
            ok = ok and missing == 0 and dup == 0 and all(code == 0 for code in costs.codes)
    print("result:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
