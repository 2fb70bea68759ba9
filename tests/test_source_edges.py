"""Edges of the Graph sources the other source tests leave open (found by breaking the code on purpose):
unit ids at their bounds, the tail memo's corner states, records whose key is blank."""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import orjson
import pytest
import requests
from azure.data.tables import TableClient

from o365collector import cli
from o365collector.auth import TokenProvider
from o365collector.azurite import Azurite
from o365collector.checkpoints import UnitMemos
from o365collector.config import HttpPolicy, Settings
from o365collector.envparse import InvalidSettingsError
from o365collector.errors import ApiTransientError, ContentUnavailableError, UnitNotReadyError
from o365collector.fetcher import Outcome
from o365collector.models import FetchTask, Record, TimeWindow
from o365collector.ratelimit import RateLimiter
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.sources.catalog import DEFAULT_SOURCES, DIRECTORY_AUDITS_STREAM, MESSAGE_TRACE_STREAM, SIGNINS_STREAM
from o365collector.sources.entra import SIGN_INS
from o365collector.sources.graph import classify_graph_response, detail_limiter
from o365collector.sources.graph_source import GraphSource, graph_client
from o365collector.sources.graph_units import MAX_UNIT_SPAN, parse_unit_id, unit_id, unit_problem, unit_uri
from o365collector.sources.message_trace import DETAILS_KEY, attach_details
from o365collector.sources.overlap import (
    NOT_READY_RETRY_SECONDS,
    ReadPlan,
    mark_read,
    mark_reading,
    plan_read,
    select,
    tail_key,
)
from o365collector.sources.selection import entry_sources
from o365collector.sources.settings import GraphSettings
from tests.receivers import HttpReceiver
from tests.support import TENANT, now
from tests.test_source_graph import NOW, W0, FakeGraph, H, StaticTokens, client, tenant, unit
from tests.test_source_overlap import EARLIEST, OVERLAP, MemoryHistory, T, at, window
from tests.test_source_units import ARGS, RETENTION, ROOT, TENANT_ID, task
from tests.test_sources_settings import A, B, tenants_env

S = SIGN_INS.stream


@pytest.fixture
def fake_graph(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGraph]:
    with FakeGraph() as server:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)  # requests prefers it over session.verify
        yield server


# -- unit ids ----------------------------------------------------------------------------------------


def test_an_empty_window_is_no_unit() -> None:
    """A zero-width id would mark the tail at its start "read" with no ids: the next window's overlap
    would then ship again what the real window before it shipped."""
    empty = task(content_id=f"{S}_20261201T100000Z_20261201T100000Z")
    problem = unit_problem(empty, spec=SIGN_INS, root=ROOT, tenant_id=TENANT_ID, retention=RETENTION)
    assert problem == "the content id's window is empty"  # names the fault, never echoes the message's values


def test_the_widest_window_the_settings_allow_is_a_unit() -> None:
    """O365_GRAPH_WINDOW_MINUTES goes up to 1440: a day-long window must not be refused as forged."""
    day = TimeWindow(at(0), at(0) + MAX_UNIT_SPAN)
    assert dt.timedelta(minutes=1440) == MAX_UNIT_SPAN
    assert parse_unit_id(S, unit_id(S, day)) == day
    with pytest.raises(ValueError, match="wider"):
        parse_unit_id(S, unit_id(S, TimeWindow(day.start, day.end + dt.timedelta(seconds=1))))


def test_a_parseable_but_non_canonical_id_is_refused() -> None:
    """strptime reads "2026121" as 2026-12-01: a second id for the same window would be a second ledger
    row, so the same window shipped twice."""
    with pytest.raises(ValueError, match="canonical"):
        parse_unit_id(S, f"{S}_2026121T100000Z_20261201T110000Z")


def test_the_tenant_id_matches_in_any_case() -> None:
    """Tenant ids are GUIDs: a message naming this tenant in capitals is still this tenant's."""
    upper = task(tenant_id=TENANT_ID.upper())
    assert unit_problem(upper, spec=SIGN_INS, root=ROOT, tenant_id=TENANT_ID, retention=RETENTION) is None


# -- the tail memo -----------------------------------------------------------------------------------


def test_records_with_a_blank_id_are_each_shipped() -> None:
    """A blank id is no identity: two such records are two records, not a repeat (a loss otherwise)."""
    records = [
        {"id": "", "createdDateTime": "2026-12-01T10:05:00Z", "n": 1},
        {"id": "", "createdDateTime": "2026-12-01T10:06:00Z", "n": 2},
    ]
    chosen = select(records, SIGN_INS, window(0, 60), ReadPlan(window(0, 60), None))
    assert chosen.records == records
    assert chosen.skipped == 0


def test_without_overlap_a_window_never_waits_for_the_one_before() -> None:
    """O365_GRAPH_OVERLAP_MINUTES=0: windows are independent, so one being read holds nothing off."""
    history = MemoryHistory()
    mark_reading(history, T, S, window(0, 60), since=at(59), until=at(80))
    zero = dt.timedelta(0)
    plan = plan_read(history, T, SIGN_INS, window(60, 120), overlap=zero, now=at(75), earliest=EARLIEST)
    assert plan == ReadPlan(window(60, 120), None)


def test_a_tail_row_in_no_known_state_is_not_an_overlap() -> None:
    """Only a "read" tail lists what was shipped: any other row would make the overlap re-ship its stretch."""
    history = MemoryHistory()
    history.put(T, tail_key(S, at(60)), {"State": "something-else", "Since": at(61)})
    plan = plan_read(history, T, SIGN_INS, window(60, 120), overlap=OVERLAP, now=at(130), earliest=EARLIEST)
    assert plan == ReadPlan(window(60, 120), None)


def test_a_reading_mark_holds_until_its_lease_ends_and_not_at_its_end() -> None:
    history = MemoryHistory()
    mark_reading(history, T, S, window(0, 60), since=at(70), until=at(80))
    with pytest.raises(UnitNotReadyError):
        plan_read(history, T, SIGN_INS, window(60, 120), overlap=OVERLAP, now=at(79), earliest=EARLIEST)
    plan = plan_read(history, T, SIGN_INS, window(60, 120), overlap=OVERLAP, now=at(80), earliest=EARLIEST)
    assert plan == ReadPlan(window(60, 120), None)


def test_a_tail_remembers_when_its_reading_began_not_when_it_ended() -> None:
    """A record that appeared while the window was being read may have been missed by it: the next window
    may skip its overlap only when the reading *began* O after its start."""
    history = MemoryHistory()
    chosen = select([], SIGN_INS, window(0, 60), ReadPlan(window(0, 60), None))
    mark_read(history, T, SIGN_INS, window(0, 60), chosen.tail, overlap=OVERLAP, now=at(76), since=at(74))
    row = history.get(T, tail_key(S, at(60)))
    assert row is not None
    assert row["Since"] == at(74)
    plan = plan_read(history, T, SIGN_INS, window(60, 120), overlap=OVERLAP, now=at(130), earliest=EARLIEST)
    assert plan.read == window(45, 120), "began at 74, before 60 + 15: its stretch is read again"


# -- settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_registry_entry_with_blank_sources_takes_the_default(blank: str) -> None:
    """A table column left blank is "not set", as an unset O365_SOURCES is: not an empty selection."""
    env = {"O365_SOURCES": "audit,directoryaudits"}
    assert entry_sources(blank, env, "O365_TENANTS[0]", cloud="Enterprise") == ("audit", "directoryaudits")
    assert entry_sources(blank, {}, "O365_TENANTS[0]", cloud="Enterprise") == DEFAULT_SOURCES


# -- paging (a loopback Graph) -----------------------------------------------------------------------


def test_a_listing_longer_than_the_page_bound_stops_at_the_bound(fake_graph: FakeGraph) -> None:
    for i in range(10):
        fake_graph.add(SIGNINS_STREAM, f"s{i}", W0 + dt.timedelta(minutes=i))
    http = client(fake_graph)._http
    pages = http.pages(unit_uri(http.root, SIGN_INS, TimeWindow(W0, W0 + H)), "read", max_pages=2)
    assert len(next(pages)) + len(next(pages)) == 6  # pages of 3
    with pytest.raises(ApiTransientError, match="exceeded 2 pages"):
        next(pages)
    assert len(fake_graph.requests) == 2  # the third page is never requested


def test_a_page_entry_that_is_not_an_object_is_skipped_not_shipped(fake_graph: FakeGraph) -> None:
    """A proxy or service fault in one entry must not crash the window's dedupe nor reach a sink."""
    good = {"id": "a", "createdDateTime": "2026-12-05T09:10:00Z"}
    fake_graph.faults = [(200, {}, orjson.dumps({"value": ["junk", 7, good]}))]
    source = client(fake_graph)
    (blob,) = source.list_units(SIGNINS_STREAM, TimeWindow(W0, W0 + H))
    fetched = source.fetch_unit(FetchTask.for_blob(TENANT_ID, blob), MemoryHistory())
    assert fetched.records == [good]


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("O365_GRAPH_OVERLAP_MINUTES", "-1", "-1 is below the minimum 0"),
        ("O365_GRAPH_WINDOW_MINUTES", "1441", "1441 is above the maximum 1440"),
    ],
)
def test_graph_settings_out_of_bounds_are_refused(name: str, value: str, why: str) -> None:
    with pytest.raises(InvalidSettingsError, match=f"{name}: {why}"):
        GraphSettings.from_env({name: value})


def test_graph_settings_at_their_bounds_are_taken() -> None:
    low = GraphSettings.from_env({"O365_GRAPH_OVERLAP_MINUTES": "0", "O365_GRAPH_WINDOW_MINUTES": "5"})
    high = GraphSettings.from_env({"O365_GRAPH_OVERLAP_MINUTES": "1440", "O365_GRAPH_WINDOW_MINUTES": "1440"})
    assert (low.overlap, low.window) == (dt.timedelta(0), dt.timedelta(minutes=5))
    assert (high.overlap, high.window) == (dt.timedelta(days=1), dt.timedelta(days=1))


def test_graph_settings_defaults() -> None:
    """Unset: a 15-minute overlap, hour-long windows, no message-trace details (each documented in README)."""
    assert GraphSettings.from_env({}) == GraphSettings(
        url=None, overlap=dt.timedelta(minutes=15), window=dt.timedelta(hours=1), message_trace_details=False
    )


def test_message_trace_details_are_paced_to_100_calls_per_5_minutes() -> None:
    slept: list[float] = []
    limiter = detail_limiter(slept.append)
    for _ in range(100):
        limiter.acquire()
    assert slept == []  # a burst of 100
    limiter.acquire()
    assert len(slept) == 1
    assert 2.9 < slept[0] <= 3.0  # then one call per 3 s


# -- the memo table (Azurite) ------------------------------------------------------------------------


@pytest.fixture
def memo_table(azurite: Azurite) -> Iterator[TableClient]:
    table = TableClient.from_connection_string(azurite.connection_string, table_name=f"m{uuid.uuid4().hex[:12]}")
    table.create_table()
    yield table
    table.delete_table()


def test_unit_memos_are_per_tenant_per_key_and_replaced_whole(memo_table: TableClient) -> None:
    memos = UnitMemos(memo_table)
    first, second = tail_key(S, at(60)), tail_key(S, at(120))
    memos.put("tenant-a", first, {"State": "reading", "Until": at(70)})
    assert memos.get("tenant-b", first) is None, "another tenant's tail is not this tenant's"
    assert memos.get("tenant-a", second) is None, "each window's tail is its own row"
    memos.put("tenant-a", first, {"State": "read", "Count": 0})
    row = memos.get("tenant-a", first)
    assert row is not None
    assert row["State"] == "read"
    assert "Until" not in row, "a rewrite replaces the row: no field of the reading mark survives"


# -- the Graph source --------------------------------------------------------------------------------


def test_throttling_says_graph_throttles_and_how_long_it_asks_to_wait() -> None:
    error = classify_graph_response(
        429, b'{"error": {"code": "TooManyRequests"}}', {"Retry-After": "7"}, **ARGS
    )
    assert "Microsoft Graph is throttling this app (retry after 7 s)" in str(error)


def test_a_window_starting_exactly_at_the_retention_edge_is_still_read(fake_graph: FakeGraph) -> None:
    edge = NOW - dt.timedelta(days=30)
    fake_graph.add(SIGNINS_STREAM, "oldest", edge)
    source = client(fake_graph)
    fetched = source.fetch_unit(unit(source, edge, edge + H), MemoryHistory())
    assert [r["id"] for r in fetched.records] == ["oldest"]
    with pytest.raises(ContentUnavailableError):
        source.fetch_unit(unit(source, edge - dt.timedelta(seconds=1), edge + H), MemoryHistory())


class RecordingHistory(MemoryHistory):
    def __init__(self) -> None:
        super().__init__()
        self.puts: list[dict[str, Any]] = []

    def put(self, tenant_id: str, key: str, fields: Mapping[str, Any]) -> None:
        self.puts.append({"key": key, **fields})
        super().put(tenant_id, key, fields)


def test_a_window_is_marked_reading_for_the_claim_lease_before_its_first_page(fake_graph: FakeGraph) -> None:
    """The mark holds the next window off while this one reads (lease: claim_lease, 10 minutes here)."""
    fake_graph.add(SIGNINS_STREAM, "a", W0 + dt.timedelta(minutes=1))
    source, history = client(fake_graph), RecordingHistory()
    source.fetch_unit(unit(source, W0, W0 + H), history)
    key = tail_key(S, W0 + H)
    assert history.puts[0] == {"key": key, "State": "reading", "Since": NOW, "Until": NOW + dt.timedelta(minutes=10)}
    assert history.puts[-1]["key"] == key
    assert history.puts[-1]["State"] == "read"


def test_a_client_lists_only_its_own_stream(fake_graph: FakeGraph) -> None:
    with pytest.raises(ValueError, match=r"reads Entra\.SignIns, not Entra\.DirectoryAudits"):
        next(client(fake_graph).list_units(DIRECTORY_AUDITS_STREAM, TimeWindow(W0, W0 + H)))


def test_each_tenant_gets_its_own_graph_client() -> None:
    """A second tenant's unit read with the first tenant's client would be refused as another tenant's."""
    settings = Settings.from_env(
        tenants_env([{"tenantId": A}, {"tenantId": B}], O365_SOURCES="audit,signins"), now=NOW
    )
    collector = Collector(settings)
    try:
        first, second = collector.client(A, SIGNINS_STREAM), collector.client(B, SIGNINS_STREAM)
        assert isinstance(first, GraphSource)
        assert isinstance(second, GraphSource)
        assert (first.tenant.tenant_id, second.tenant.tenant_id) == (A, B)
        assert collector.client(A, SIGNINS_STREAM) is first  # built once per (tenant, stream)
    finally:
        collector.close()


class RecordingQueue:
    """The content queue, with each message sent recorded (text, visibility timeout)."""

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self.sent: list[tuple[str, int | None]] = []

    def send_message(self, content: str, **kwargs: Any) -> object:
        self.sent.append((content, kwargs.get("visibility_timeout")))
        return self._queue.send_message(content, **kwargs)


def test_a_unit_whose_predecessor_is_being_read_goes_back_on_the_queue_uncounted(
    simulator: Simulator, make_collector: Callable[..., Collector]
) -> None:
    """Even on the last delivery the queue allows, waiting for the window before is no failure: the message
    goes back as it came, invisible for the source's retry_after, with no deferral and nothing poisoned."""
    collector = make_collector(O365_SOURCES="audit,signins", O365_GRAPH_URL=simulator.api_url)
    tenant_id = collector.settings.tenants[0].tenant_id
    start = now().replace(minute=0, second=0, microsecond=0) - 2 * H
    reading = {"State": "reading", "Since": start + dt.timedelta(minutes=1), "Until": now() + H}
    collector.unit_memos.put(tenant_id, tail_key(S, start), reading)
    (blob,) = collector.client(tenant_id, S).list_units(S, TimeWindow(start, start + H))
    body = FetchTask.for_blob(tenant_id, blob).to_message()
    queue = RecordingQueue(collector.queue)
    collector.queue = cast(Any, queue)
    last = collector.settings.queue_runner.max_dequeue_count
    _, result = collector.handle_message(body, message_id="m1", dequeue_count=last)
    assert result.outcome is Outcome.WAITING
    assert queue.sent == [(body, int(NOT_READY_RETRY_SECONDS))]
    assert collector.poison_queue.peek_messages() == []


def test_a_window_with_fractions_of_a_second_is_listed_as_its_whole_seconds(fake_graph: FakeGraph) -> None:
    """The lister's window may carry microseconds: the unit names whole seconds, and the fetcher's check
    (which rebuilds every field from the id) accepts it."""
    source = client(fake_graph)
    jitter = dt.timedelta(microseconds=250_000)
    (blob,) = source.list_units(SIGNINS_STREAM, TimeWindow(W0 + jitter, W0 + H + jitter))
    task = FetchTask.for_blob(TENANT_ID, blob)
    assert source.unit_problem(task) is None
    assert (task.content_created, task.content_id) == (W0 + H, unit_id(S, TimeWindow(W0, W0 + H)))


class CountingLimiter:
    def __init__(self) -> None:
        self.acquired = 0

    def acquire(self) -> float:
        self.acquired += 1
        return 0.0


def test_each_details_request_waits_for_the_pace_first(fake_graph: FakeGraph) -> None:
    """getDetailsByRecipient allows 100 calls per 5 minutes: every call (each page too) takes a token."""
    rows: list[Record] = [
        {"id": "m1", "recipientAddress": "adele@contoso.com"},
        {"id": "m1", "recipientAddress": "alex@contoso.com"},
        {"id": "m2"},  # no recipient: no details to ask for
    ]
    limiter = CountingLimiter()
    http = client(fake_graph, MESSAGE_TRACE_STREAM)._http
    calls = attach_details(http, rows, cast(RateLimiter, limiter), "read")
    assert calls == limiter.acquired == 2
    assert http.stats.detail_requests == 2
    assert [DETAILS_KEY in r for r in rows] == [True, True, False]


def test_a_page_without_a_value_array_is_a_fault_not_the_end(fake_graph: FakeGraph) -> None:
    """Taking it for the last page would mark the window read with what came before: a silent loss."""
    fake_graph.faults = [(200, {}, orjson.dumps({"@odata.context": "ctx", "error": "proxy"}))]
    source = client(fake_graph)
    with pytest.raises(ApiTransientError, match="no 'value' array"):
        source.fetch_unit(unit(source, W0, W0 + H), MemoryHistory())
    fake_graph.faults = [(200, {}, b"[]")] * 4  # JSON, but no object: as transient, on every retry
    with pytest.raises(ApiTransientError, match="not a JSON object"):
        source.fetch_unit(unit(source, W0, W0 + H), MemoryHistory())


def test_graph_out_of_reach_is_retried_then_transient() -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps: list[float] = []
    source = graph_client(
        tenant(),
        SIGNINS_STREAM,
        settings=GraphSettings(url=f"https://127.0.0.1:{port}"),
        session=requests.Session(),
        policy=HttpPolicy(max_attempts=3, backoff_seconds=0.0, timeout_seconds=5),
        clock=lambda: NOW,
        claim_lease=dt.timedelta(minutes=10),
        tokens=cast(TokenProvider, StaticTokens()),
        sleep=sleeps.append,
    )
    with pytest.raises(ApiTransientError, match=r"ConnectionError talking to 127\.0\.0\.1"):
        source.fetch_unit(unit(source, W0, W0 + H), MemoryHistory())
    assert len(sleeps) == 2  # three attempts


def test_a_leased_share_of_a_tenant_lists_only_the_leased_streams() -> None:
    """A list message's worker lists the streams it leased and no other (another worker holds those)."""
    settings = Settings.from_env(tenants_env([{"tenantId": A}], O365_SOURCES="audit,signins,directoryaudits"), now=NOW)
    (whole,) = settings.tenants
    assert whole.only_streams((SIGNINS_STREAM,)).streams == (SIGNINS_STREAM,)
    assert whole.only_streams(("Audit.Exchange", DIRECTORY_AUDITS_STREAM)).streams == (
        "Audit.Exchange",
        DIRECTORY_AUDITS_STREAM,
    )
    assert whole.only_streams(whole.streams) == whole


# -- run --resend of Graph windows -------------------------------------------------------------------


def test_resending_graph_windows_reads_each_on_its_own_and_writes_nothing(
    simulator: Simulator,
    make_env: Callable[..., dict[str, str]],
    receiver: HttpReceiver,
    azurite: Azurite,
    names: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A resent window is read alone (no overlap, no tail memo: the ledger table, memos included, is
    untouched) and a ledger row whose URL is not its window's own is reported, not fetched."""
    end = now().replace(microsecond=0) - dt.timedelta(minutes=10)
    truth = simulator.generate_graph(
        TENANT.tenant_id, S, end - 6 * H, end, every=dt.timedelta(minutes=7), lag=(H * 0, H * 0)
    )
    env = make_env(
        SINK_TYPE="http",
        SINK_URL=receiver.url,
        O365_SOURCES="signins",
        O365_GRAPH_URL=simulator.api_url,
        O365_START_TIME=(end - 6 * H).isoformat(),
        O365_GRAPH_OVERLAP_MINUTES="0",  # windows read side by side never wait for each other
    )
    for key, value in env.items():  # the CLI reads the process environment
        monkeypatch.setenv(key, value)
    collector = Collector(Settings.from_env(env))
    collector.ensure_resources()
    try:
        assert run_once(collector) == 0
    finally:
        collector.close()
    assert Counter(r["id"] for r in receiver.records) == Counter(r.id for r in truth)
    table = TableClient.from_connection_string(azurite.connection_string, names["O365_LEDGER_TABLE"])
    with table:
        units = [e for e in table.list_entities() if e.get("ContentType") == S]
        tampered = next(e for e in units if e.get("Records"))  # a window with records: its loss must show
        tampered["ContentUri"] = tampered["ContentUri"].replace("signIns", "directoryAudits")
        table.update_entity(tampered)
        before = sorted((e["RowKey"], e.metadata["etag"]) for e in table.list_entities())
    receiver.reset()
    span = ["--since", (end - 7 * H).isoformat(), "--until", (end + H).isoformat()]
    assert cli.main(["run", "--resend", *span]) == 1  # the tampered row failed
    resent = Counter(r["id"] for r in receiver.records)
    assert set(resent.values()) == {1}
    assert 0 < len(resent) < len(truth)  # all but the tampered window's records
    table = TableClient.from_connection_string(azurite.connection_string, names["O365_LEDGER_TABLE"])
    with table:
        assert sorted((e["RowKey"], e.metadata["etag"]) for e in table.list_entities()) == before
