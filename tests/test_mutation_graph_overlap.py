"""Graph source edges found by breaking ``sources.overlap``, ``graph_source``, ``message_trace`` and ``base``
on purpose: a tail row of no state, the overlap at the retention edge, which records the filters and the
message-trace details apply to, and the probe's one hour."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import orjson
import pytest
import requests

from o365collector.checkpoints import RecentBlobs
from o365collector.content import ContentRecords
from o365collector.errors import ConfigError, MalformedContentError, MessageFormatError
from o365collector.filtering import RecordFilter
from o365collector.models import Record, TimeWindow
from o365collector.ratelimit import RateLimiter
from o365collector.sources.base import FetchedUnit
from o365collector.sources.catalog import MESSAGE_TRACE_STREAM, SIGNINS_STREAM
from o365collector.sources.entra import SIGN_INS
from o365collector.sources.graph_source import GraphSource, graph_client
from o365collector.sources.message_trace import MESSAGE_TRACE_LOG, attach_details, trace_key
from o365collector.sources.overlap import ReadPlan, mark_read, plan_read, select, tail_key, tail_state
from o365collector.sources.settings import GraphSettings
from tests.test_source_edges import CountingLimiter
from tests.test_source_graph import NOW, TENANT_ID, W0, FakeGraph, H, client, gtime, unit
from tests.test_source_overlap import EARLIEST, OVERLAP, MemoryHistory, T, at, window
from tests.test_source_units import tenant as cloud_tenant

S = SIGN_INS.stream
# Audit-feed filters that match no Graph record: applied to a Graph log, they would drop every record.
AUDIT_ONLY = RecordFilter.from_env({"O365_FILTER_INCLUDE_WORKLOADS": "Exchange"})


@pytest.fixture
def fake_graph(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGraph]:
    with FakeGraph() as server:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)  # requests prefers it over session.verify
        yield server


def detail_requests(graph: FakeGraph) -> list[str]:
    return [path for path, _, _ in graph.requests if "getDetailsByRecipient" in path]


# -- the tail memo -----------------------------------------------------------------------------------


def test_a_tail_row_without_a_state_lists_nothing_shipped() -> None:
    """Only a row marked "read" says which ids were shipped: a row that lost its State (or any other row
    under the key) must not make this window skip the ids it happens to hold."""
    history = MemoryHistory()
    chosen = select(
        [{"id": "a", "createdDateTime": "2026-12-01T10:55:00Z"}], SIGN_INS, window(0, 60), ReadPlan(window(0, 60), None)
    )
    mark_read(history, T, SIGN_INS, window(0, 60), chosen.tail, overlap=OVERLAP, now=at(61), since=at(61))
    key = tail_key(S, at(60))
    row = dict(history.rows[(T, key)])
    del row["State"]
    history.put(T, key, row)
    plan = plan_read(history, T, SIGN_INS, window(60, 120), overlap=OVERLAP, now=at(130), earliest=EARLIEST)
    assert plan == ReadPlan(window(60, 120), None)


def test_tail_state_reads_the_rows_state() -> None:
    history = MemoryHistory()
    mark_read(
        history,
        T,
        SIGN_INS,
        window(0, 60),
        RecentBlobs(),
        overlap=OVERLAP,
        now=at(61),
        since=at(61),
    )
    assert tail_state(history.get(T, tail_key(S, at(60)))) == "read"
    assert tail_state(None) is None
    assert tail_state({"State": 3}) is None


def test_message_trace_rows_with_a_blank_id_are_each_shipped() -> None:
    """A blank id is no identity, whatever the recipient: two such rows are two rows, not a repeat."""
    rows: list[Record] = [
        {"id": "", "recipientAddress": "adele@contoso.com", "receivedDateTime": "2026-12-01T10:05:00Z"},
        {"id": "", "recipientAddress": "adele@contoso.com", "receivedDateTime": "2026-12-01T10:06:00Z"},
    ]
    assert trace_key(rows[0]) is None
    chosen = select(rows, MESSAGE_TRACE_LOG, window(0, 60), ReadPlan(window(0, 60), None))
    assert chosen.records == rows
    assert chosen.skipped == 0


# -- fetch_unit over a loopback Graph ----------------------------------------------------------------


def test_the_overlap_of_a_window_at_the_retention_edge_reads_from_the_edge(fake_graph: FakeGraph) -> None:
    """Graph keeps 30 days: the re-read of the window before never asks for what is older than that."""
    edge = NOW - dt.timedelta(days=30)
    start = edge + dt.timedelta(minutes=5)
    history = MemoryHistory()
    before = TimeWindow(start - H, start)  # read, with nothing near its end
    mark_read(history, TENANT_ID, SIGN_INS, before, RecentBlobs(), overlap=OVERLAP, now=start, since=start)
    source = client(fake_graph)
    source.fetch_unit(unit(source, start, start + H), history)
    (query,) = [q for _, q, _ in fake_graph.requests]
    assert query["$filter"][0].startswith(f"createdDateTime ge {gtime(edge)} and")


def test_a_unit_id_that_names_no_window_is_a_message_error_and_nothing_is_read(fake_graph: FakeGraph) -> None:
    source = client(fake_graph)
    good = unit(source, W0, W0 + H)
    bad = dataclasses.replace(good, content_id=f"{S}_garbled")
    with pytest.raises(MessageFormatError, match=r"Entra\.SignIns unit"):
        source.fetch_unit(bad, MemoryHistory())
    assert fake_graph.requests == []


def test_graph_records_are_never_dropped_by_the_audit_feeds_filters(fake_graph: FakeGraph) -> None:
    """O365_FILTER_* match audit fields (Workload, Operation, RecordType) that Graph records lack."""
    fake_graph.add(SIGNINS_STREAM, "a", W0 + dt.timedelta(minutes=1))
    source = client(fake_graph)
    fetched = source.fetch_unit(unit(source, W0, W0 + H), MemoryHistory())
    records, filtered = fetched.to_ship(AUDIT_ONLY)
    assert ([r["id"] for r in records], filtered) == (["a"], 0)
    assert FetchedUnit([{"Workload": "SharePoint"}]).to_ship(AUDIT_ONLY)[1] == 0, "unfiltered unless asked"
    audit = FetchedUnit([{"Workload": "SharePoint"}, {"Workload": "Exchange"}], filterable=True)
    assert audit.to_ship(AUDIT_ONLY) == ([{"Workload": "Exchange"}], 1)


def test_the_probe_asks_for_one_record_of_the_last_hour(fake_graph: FakeGraph) -> None:
    client(fake_graph).probe()
    (query,) = [q for _, q, _ in fake_graph.requests]
    assert query["$filter"] == [f"createdDateTime ge {gtime(NOW - H)} and createdDateTime le {gtime(NOW)}"]
    assert query["$top"] == ["1"]


def build(cloud: str, stream: str) -> GraphSource:
    return graph_client(
        cloud_tenant(cloud),
        stream,
        settings=GraphSettings(),
        session=requests.Session(),
        clock=lambda: NOW,
        claim_lease=dt.timedelta(minutes=10),
    )


def test_only_message_trace_is_refused_outside_the_global_cloud_naming_the_sources_setting() -> None:
    with pytest.raises(ConfigError) as raised:
        build("GCCHigh", MESSAGE_TRACE_STREAM)
    assert raised.value.setting == "O365_SOURCES"
    assert build("GCCHigh", SIGNINS_STREAM).spec is SIGN_INS  # Entra logs are served in every cloud


def test_a_stream_that_is_no_graph_log_gets_no_graph_client() -> None:
    with pytest.raises(ValueError, match=r"Audit\.Exchange is not a Microsoft Graph stream \(expected one of"):
        build("Enterprise", "Audit.Exchange")


# -- message trace details ---------------------------------------------------------------------------


def test_details_are_asked_for_message_trace_only(fake_graph: FakeGraph) -> None:
    """O365_MESSAGE_TRACE_DETAILS is one setting for every Graph client: a sign-in is never sent for details."""
    fake_graph.add(SIGNINS_STREAM, "s1", W0 + dt.timedelta(minutes=1), recipientAddress="adele@contoso.com")
    source = client(fake_graph, message_trace_details=True)
    fetched = source.fetch_unit(unit(source, W0, W0 + H), MemoryHistory())
    assert [r["id"] for r in fetched.records] == ["s1"]
    assert "traceDetails" not in fetched.records[0]
    assert detail_requests(fake_graph) == []
    assert source.stats.detail_requests == 0


def test_details_ask_only_for_rows_with_an_id_and_a_recipient_and_keep_every_page(fake_graph: FakeGraph) -> None:
    """Rows without either are passed over (not the rows after them); every detail of every page is kept,
    under ``traceDetails`` (README), each page paced."""
    http = client(fake_graph, MESSAGE_TRACE_STREAM)._http
    second_page = f"{fake_graph.base_url}/v1.0/admin/exchange/tracing/messageTraces/m1/getDetailsByRecipient(x)"
    first = {"value": [{"event": "Receive"}, {"event": "Submit"}], "@odata.nextLink": second_page}
    fake_graph.faults = [(200, {}, orjson.dumps(first))]
    rows: list[Record] = [
        {"id": "", "recipientAddress": "adele@contoso.com"},
        {"id": "m0", "recipientAddress": ""},
        {"id": "m2"},
        {"id": "m1", "recipientAddress": "alex@contoso.com"},
    ]
    limiter = CountingLimiter()
    calls = attach_details(http, rows, cast(RateLimiter, limiter), "read")
    assert calls == limiter.acquired == 2
    assert [p.rsplit("/", 1)[-1] for p in detail_requests(fake_graph)] == [
        "getDetailsByRecipient(recipientAddress='alex@contoso.com')",
        "getDetailsByRecipient(x)",
    ]
    assert [d["event"] for d in rows[3]["traceDetails"]] == ["Receive", "Submit", "Deliver"]
    assert ["traceDetails" in r for r in rows[:3]] == [False, False, False]


def test_details_beyond_the_burst_wait_on_the_clients_own_sleep(fake_graph: FakeGraph) -> None:
    """The pace (100 calls, then one per 3 s) sleeps through the sleep the client was built with, so a
    caller (a test, a bench) that passes one is never held by the real clock."""
    for i in range(101):
        fake_graph.add(MESSAGE_TRACE_STREAM, f"m{i}", W0 + dt.timedelta(seconds=i), recipientAddress="a@contoso.com")
    sleeps: list[float] = []
    trace = client(fake_graph, MESSAGE_TRACE_STREAM, sleeps=sleeps, message_trace_details=True)
    fetched = trace.fetch_unit(unit(trace, W0, W0 + H), MemoryHistory())
    assert len(fetched.records) == 101
    assert trace.stats.detail_requests == 101
    assert len(sleeps) == 1
    assert 0 < sleeps[0] <= 3.0


def test_a_fetched_unit_settles_by_raising_what_its_lazy_validation_found() -> None:
    """The fetcher's last check before marking a unit done: a blob found malformed in the background."""
    body = orjson.dumps([{"Id": f"id-{i}", "n": i} for i in range(5)]).replace(b'"id-3"', b"1e999")
    with ThreadPoolExecutor(1) as pool:
        held = ContentRecords.from_body(body, "content blob abc", validate_on=pool)
        with pytest.raises(MalformedContentError, match="content blob abc"):
            FetchedUnit(held, filterable=True).settle()
    FetchedUnit([{"id": "a"}]).settle()  # records held as a list have nothing to wait for
