"""The tail memo (``sources.overlap``): a window re-reads the end of the one before it and ships each record once."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

import pytest

from o365collector.checkpoints import RECENT_MAX_ENTRIES
from o365collector.errors import UnitNotReadyError
from o365collector.models import Record, TimeWindow
from o365collector.sources.entra import SIGN_INS
from o365collector.sources.overlap import (
    NOT_READY_RETRY_SECONDS,
    ReadPlan,
    mark_read,
    mark_reading,
    plan_read,
    select,
    tail_key,
)

T = "tenant-a"
OVERLAP = dt.timedelta(minutes=15)
T0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
NOW = T0 + dt.timedelta(days=1)
EARLIEST = NOW - dt.timedelta(days=30)


class MemoryHistory:
    """An in-memory ``UnitHistory``: rows per (tenant, key), replaced whole by ``put`` like an upsert."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, tenant_id: str, key: str) -> Mapping[str, Any] | None:
        return self.rows.get((tenant_id, key))

    def put(self, tenant_id: str, key: str, fields: Mapping[str, Any]) -> None:
        self.rows[(tenant_id, key)] = dict(fields)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def window(a: float, b: float) -> TimeWindow:
    return TimeWindow(at(a), at(b))


def rec(ident: str, minutes: float) -> Record:
    return {"id": ident, "createdDateTime": at(minutes).isoformat().replace("+00:00", "Z")}


class Graph:
    """Records as Graph serves them: each visible from its arrival on, filtered on its time."""

    def __init__(self) -> None:
        self.records: list[tuple[Record, float]] = []  # (record, arrival minute)

    def add(self, ident: str, minutes: float, *, late_by: float = 0.0) -> None:
        self.records.append((rec(ident, minutes), minutes + late_by))

    def read(self, span: TimeWindow, now_minutes: float) -> list[Record]:
        return [
            r
            for r, arrival in self.records
            if arrival <= now_minutes and span.start <= SIGN_INS.record_time(r) < span.end  # type: ignore[operator]
        ]


def fetch(history: MemoryHistory, graph: Graph, unit: TimeWindow, now_minutes: float) -> tuple[list[str], int]:
    """``fetch_unit``'s steps 2-5 around an in-memory Graph; returns the ids shipped and the skipped count."""
    now = at(now_minutes)
    plan = plan_read(history, T, SIGN_INS, unit, overlap=OVERLAP, now=now, earliest=EARLIEST)
    mark_reading(history, T, SIGN_INS.stream, unit, since=now, until=now + dt.timedelta(minutes=10))
    chosen = select(graph.read(plan.read, now_minutes), SIGN_INS, unit, plan)
    mark_read(history, T, SIGN_INS, unit, chosen.tail, overlap=OVERLAP, now=now, since=now)
    return [r["id"] for r in chosen.records], chosen.skipped


def test_first_window_reads_only_itself_and_leaves_its_tail() -> None:
    history = MemoryHistory()
    plan = plan_read(history, T, SIGN_INS, window(0, 60), overlap=OVERLAP, now=NOW, earliest=EARLIEST)
    assert plan == ReadPlan(window(0, 60), None)
    graph = Graph()
    for ident, minute in (("a", 10), ("b", 44), ("c", 45), ("d", 59.5)):
        graph.add(ident, minute)
    shipped, skipped = fetch(history, graph, window(0, 60), 70)
    assert (shipped, skipped) == (["a", "b", "c", "d"], 0)
    row = history.get(T, tail_key(SIGN_INS.stream, at(60)))
    assert row is not None
    assert row["State"] == "read"
    assert row["Count"] == 2


def test_overlap_ships_a_late_record_once_and_skips_what_the_previous_window_shipped() -> None:
    history, graph = MemoryHistory(), Graph()
    graph.add("early", 50)
    graph.add("edge", 59)
    graph.add("late", 55, late_by=20)  # written at minute 75: after window 0..60 was read at 70
    graph.add("next", 65)
    assert fetch(history, graph, window(0, 60), 70) == (["early", "edge"], 0)
    plan = plan_read(history, T, SIGN_INS, window(60, 120), overlap=OVERLAP, now=at(130), earliest=EARLIEST)
    assert plan.read == window(45, 120)
    shipped, skipped = fetch(history, graph, window(60, 120), 130)
    assert sorted(shipped) == ["late", "next"]
    assert skipped == 2  # early and edge were shipped by the window before


def test_a_window_whose_predecessor_is_being_read_is_not_ready() -> None:
    history = MemoryHistory()
    mark_reading(history, T, SIGN_INS.stream, window(0, 60), since=at(70), until=at(80))
    with pytest.raises(UnitNotReadyError) as raised:
        plan_read(history, T, SIGN_INS, window(60, 120), overlap=OVERLAP, now=at(75), earliest=EARLIEST)
    assert raised.value.retry_after == NOT_READY_RETRY_SECONDS
    assert raised.value.retryable


def test_a_predecessor_whose_reader_died_is_left_to_read_itself() -> None:
    """Its lease ran out: it will be delivered again and read whole, so this window does not overlap."""
    history = MemoryHistory()
    mark_reading(history, T, SIGN_INS.stream, window(0, 60), since=at(70), until=at(80))
    plan = plan_read(history, T, SIGN_INS, window(60, 120), overlap=OVERLAP, now=at(81), earliest=EARLIEST)
    assert plan == ReadPlan(window(60, 120), None)


def test_a_predecessor_read_after_its_stretch_had_appeared_is_neither_waited_for_nor_re_read() -> None:
    """A backfill: the window before began reading 15 minutes (the overlap) or more after this window's start,
    when every record of its stretch had appeared, so it ships them all itself."""
    history = MemoryHistory()
    mark_reading(history, T, SIGN_INS.stream, window(0, 60), since=at(75), until=at(90))
    plan = plan_read(history, T, SIGN_INS, window(60, 120), overlap=OVERLAP, now=at(76), earliest=EARLIEST)
    assert plan == ReadPlan(window(60, 120), None)
    graph = Graph()
    graph.add("stretch", 50)
    fetch(history, graph, window(0, 60), 75)
    plan = plan_read(history, T, SIGN_INS, window(60, 120), overlap=OVERLAP, now=at(130), earliest=EARLIEST)
    assert plan == ReadPlan(window(60, 120), None), "read, and no re-read of its stretch either"
    history = MemoryHistory()
    mark_reading(history, T, SIGN_INS.stream, window(0, 60), since=at(74), until=at(90))
    with pytest.raises(UnitNotReadyError):  # a minute earlier, a late record could still have been missed
        plan_read(history, T, SIGN_INS, window(60, 120), overlap=OVERLAP, now=at(76), earliest=EARLIEST)


def test_the_overlap_never_reaches_behind_retention() -> None:
    history, graph = MemoryHistory(), Graph()
    fetch(history, graph, window(0, 60), 70)
    plan = plan_read(history, T, SIGN_INS, window(60, 120), overlap=OVERLAP, now=NOW, earliest=at(50))
    assert plan.read == window(50, 120)


def test_windows_shorter_than_the_overlap_carry_the_earlier_tail() -> None:
    """Five-minute windows with a 15-minute overlap: a record late by 12 minutes is still shipped once."""
    history, graph = MemoryHistory(), Graph()
    graph.add("a", 1)
    graph.add("b", 2, late_by=12)  # arrives at 14, three windows later
    graph.add("c", 6)
    shipped: list[str] = []
    for start in range(0, 30, 5):
        ids, _ = fetch(history, graph, window(start, start + 5), start + 5.5)
        shipped += ids
    assert sorted(shipped) == ["a", "b", "c"]


@pytest.mark.parametrize("late_by", [0.0, 3.0, 9.0, 14.0])
def test_every_record_late_by_less_than_the_overlap_is_shipped_exactly_once(late_by: float) -> None:
    history, graph = MemoryHistory(), Graph()
    expected = []
    for i in range(240):
        minute = i * 0.75
        graph.add(f"r{i}", minute, late_by=late_by if i % 3 == 0 else 0.0)
        expected.append(f"r{i}")
    shipped: list[str] = []
    for start in range(0, 240, 30):
        ids, _ = fetch(history, graph, window(start, start + 30), start + 31)
        shipped += ids
    assert sorted(shipped) == sorted(expected)


def test_a_window_read_again_ships_only_what_its_predecessor_did_not() -> None:
    """A worker died after reading: the redelivery reads the window again with the same result."""
    history, graph = MemoryHistory(), Graph()
    graph.add("x", 58)
    graph.add("y", 61)
    fetch(history, graph, window(0, 60), 70)
    first = fetch(history, graph, window(60, 120), 130)
    assert fetch(history, graph, window(60, 120), 140) == first == (["y"], 1)


def test_a_record_without_id_or_time_is_shipped_and_repeats_within_a_read_are_not() -> None:
    history = MemoryHistory()
    records = [rec("a", 1), {"createdDateTime": "garbled"}, {"id": "b"}, rec("a", 1)]
    chosen = select(records, SIGN_INS, window(0, 60), ReadPlan(window(0, 60), None))
    assert chosen.records == records[:3]
    assert chosen.skipped == 1
    assert len(history.rows) == 0


def test_a_tail_beyond_the_memo_keeps_the_newest_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    history = MemoryHistory()
    unit = window(0, 60)
    records = [
        {"id": f"r{i}", "createdDateTime": (at(50) + dt.timedelta(microseconds=i * 100)).isoformat()}
        for i in range(RECENT_MAX_ENTRIES + 10)
    ]
    chosen = select(records, SIGN_INS, unit, ReadPlan(unit, None))
    with caplog.at_level(logging.WARNING, logger="o365collector.sources.overlap"):
        mark_read(history, T, SIGN_INS, unit, chosen.tail, overlap=OVERLAP, now=NOW, since=NOW)
    row = history.get(T, tail_key(SIGN_INS.stream, at(60)))
    assert row is not None
    assert row["Count"] == RECENT_MAX_ENTRIES
    assert any("may ship them again" in r.getMessage() for r in caplog.records)
