"""The Microsoft Graph sources end to end: simulator, Azurite, the real lister/fetcher, an HTTP receiver.

What the issue asks of each source (Entra sign-ins, Entra directory audits, Exchange message trace):
a multi-day backfill collected with the fault injection the audit feed survives (a throttling storm,
a sink outage; SIGKILLed workers: tests/test_fault_injection.py kills them with the Graph sources on),
0 records lost, duplicates only from work in flight; records Entra writes late (within the overlap)
shipped exactly once; and the audit feed collected alongside, unchanged.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from o365collector.models import CONTENT_TYPES
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Fault, Simulator
from o365collector.simulator.faults import FaultKind
from o365collector.sources.catalog import DIRECTORY_AUDITS_STREAM, GRAPH_STREAMS, MESSAGE_TRACE_STREAM, SIGNINS_STREAM
from tests.receivers import HttpReceiver
from tests.support import TENANT, host_queue_runner, now

pytestmark = pytest.mark.integration

TID = TENANT.tenant_id
REPO = Path(__file__).resolve().parents[1]
ALL_SOURCES = "audit,signins,directoryaudits,messagetrace"
OVERLAP = dt.timedelta(minutes=15)
CollectorFactory = Callable[..., Collector]


def graph_env(simulator: Simulator, receiver: HttpReceiver, **overrides: str) -> dict[str, str]:
    return {
        "O365_SOURCES": ALL_SOURCES,
        "O365_GRAPH_URL": simulator.api_url,
        "O365_GRAPH_OVERLAP_MINUTES": str(int(OVERLAP.total_seconds() // 60)),
        "SINK_TYPE": "http",
        "SINK_URL": receiver.url,
        **overrides,
    }


def backfill(sim: Simulator, *, days: float, every: dt.timedelta, audit: bool = True) -> None:
    end = now() - dt.timedelta(minutes=10)
    start = end - dt.timedelta(days=days)
    for stream in GRAPH_STREAMS:
        sim.generate_graph(TID, stream, start, end, every=every)
    if audit:
        for content_type in CONTENT_TYPES:
            sim.generate(TID, content_type, start, end, blob_every=dt.timedelta(hours=3), records_per_blob=(1, 6))


def record_id(record: dict[str, Any]) -> str:
    return str(record.get("Id") or record.get("id"))


def served_graph(sim: Simulator, stream: str | None = None) -> Counter[str]:
    return Counter(r.id for r in sim.graph_records(TID, stream))


def served_audit(sim: Simulator) -> Counter[str]:
    return Counter(r["Id"] for b in sim.blobs(TID) for r in b.records)


def shipped(receiver: HttpReceiver) -> Counter[str]:
    return Counter(record_id(r) for r in receiver.records)


def test_a_three_day_backfill_of_every_source_through_a_throttling_storm_ships_each_record_once(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    backfill(simulator, days=3, every=dt.timedelta(minutes=30))
    # A fifth of Graph's answers are failures: 429 with Retry-After, 503, 504, a dropped connection.
    rates: dict[FaultKind, float] = {"http429": 0.08, "unavailable": 0.05, "request_timeout": 0.04, "drop": 0.04}
    for kind, rate in rates.items():
        simulator.faults.add(Fault(kind=kind, route="graph", rate=rate, retry_after=0 if kind == "http429" else None))
    collector = make_collector(
        **graph_env(simulator, receiver, O365_RETRY_MAX_ATTEMPTS="10"),
        O365_START_TIME=(now() - dt.timedelta(days=3, hours=1)).isoformat(),
        # The audit feed's filters match audit fields (Operation, Workload, RecordType): they must not drop
        # Graph records, which have none of them. No audit record is excluded by this one.
        O365_FILTER_EXCLUDE_WORKLOADS="NoSuchWorkload",
        O365_FILTER_INCLUDE_RECORD_TYPES=",".join(str(n) for n in range(400)),
    )
    assert run_once(collector) == 0

    got = shipped(receiver)
    graph = served_graph(simulator)
    assert sum(graph.values()) > 3 * 3 * 24 * 2 * 0.9, "every Graph stream had a 3-day backfill"
    assert {record_id(r) for r in receiver.records} == set(graph) | set(served_audit(simulator))
    assert all(got[rid] == 1 for rid in graph), "each Graph record arrived once"
    assert all(got[rid] == 1 for rid in served_audit(simulator)), "the audit feed alongside: each record once"
    assert simulator.stats.faults_injected > 10, "the storm happened"
    assert collector.poison_queue.get_queue_properties().approximate_message_count == 0
    # Each record reached the sink labelled with its stream (the sink's metadata, see tests/test_sink_labels.py).
    for stream in GRAPH_STREAMS:
        assert served_graph(simulator, stream), f"{stream} had records to collect"


def test_a_record_entra_writes_late_is_shipped_once_by_the_next_window_and_nothing_twice(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    base = now()
    offset = [dt.timedelta(0)]

    def clock() -> dt.datetime:
        return base + offset[0]

    simulator.set_clock(clock)
    start = base - dt.timedelta(hours=2)
    for stream in (SIGNINS_STREAM, DIRECTORY_AUDITS_STREAM, MESSAGE_TRACE_STREAM):
        simulator.generate_graph(TID, stream, start, base - dt.timedelta(minutes=6), every=dt.timedelta(minutes=7))
    # Written 10 minutes before the first run's windows end, but served only 8 minutes after that run.
    late = {
        stream: simulator.add_graph_record(
            TID, stream, base - dt.timedelta(minutes=15), available_at=base + dt.timedelta(minutes=8)
        )
        for stream in GRAPH_STREAMS
    }
    collector = make_collector(
        clock,
        **graph_env(simulator, receiver, O365_SOURCES="signins,directoryaudits,messagetrace"),
        O365_START_TIME=start.isoformat(),
    )
    assert run_once(collector) == 0
    first = shipped(receiver)
    assert not any(first[r.id] for r in late.values()), "not served yet: the first pass could not see them"

    offset[0] = dt.timedelta(minutes=12)  # the next timer run
    assert run_once(collector) == 0
    got = shipped(receiver)
    assert all(got[r.id] == 1 for r in late.values()), "each late record arrived once, by the next window's overlap"
    assert set(got) == set(served_graph(simulator))
    assert max(got.values()) == 1, "the overlap re-read shipped nothing twice"


def test_a_sink_outage_longer_than_the_sink_retries_ships_every_graph_record_and_poisons_nothing(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    backfill(simulator, days=1, every=dt.timedelta(minutes=40), audit=False)
    attempts, max_deliveries = 2, 5
    collector = make_collector(
        **graph_env(simulator, receiver, O365_SOURCES="signins,directoryaudits,messagetrace"),
        O365_START_TIME=(now() - dt.timedelta(days=1, hours=1)).isoformat(),
        SINK_HTTP_MAX_ATTEMPTS=str(attempts),
        SINK_HTTP_MAX_RETRY_SECONDS="2",
        O365_MAX_DEQUEUE_COUNT=str(max_deliveries),
        O365_QUEUE_BATCH_SIZE="1",
    )
    collector.run_lister()
    refusals = attempts * (max_deliveries - 2)  # ends before any window used up its deliveries
    receiver.fail_next(refusals, status=503)
    result = host_queue_runner(collector).drain(max_seconds=120)

    assert not result.timed_out
    assert sum(r.status == 503 for r in receiver.requests) == refusals, "the whole outage was met"
    assert result.failures >= max_deliveries - 2
    assert result.poisoned == 0
    assert shipped(receiver) == served_graph(simulator), "every Graph record, each once"
