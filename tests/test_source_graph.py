"""The Graph sources end to end over HTTPS (``sources.graph``, ``sources.graph_source``): paging, throttling,
errors with the admin's action, the overlap across windows, retention, refused links.

A small loopback Graph (``FakeGraph``) serves the edges the simulator does not express (a foreign or repeated
``@odata.nextLink``, scripted throttling); ``test_against_the_simulator`` reads the simulator's Graph routes.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any, cast
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson
import pytest
import requests

from o365collector.auth import TokenProvider
from o365collector.config import CollectionPolicy, HttpPolicy
from o365collector.errors import (
    ApiPermanentError,
    ApiTransientError,
    ContentUnavailableError,
    UnitNotReadyError,
    UntrustedUrlError,
)
from o365collector.models import FetchTask, TimeWindow
from o365collector.simulator import Simulator, TenantSpec
from o365collector.simulator.cli import demo_environment
from o365collector.sources.catalog import DIRECTORY_AUDITS_STREAM, MESSAGE_TRACE_STREAM, SIGNINS_STREAM
from o365collector.sources.graph_source import GraphSource, graph_client
from o365collector.sources.message_trace import DETAILS_KEY
from o365collector.sources.settings import GraphSettings
from o365collector.tenant_config import TenantConfig, tenant_from_env
from tests.loopback import LoopbackService, OwnedHandler
from tests.support import TENANT, Clock
from tests.test_source_overlap import MemoryHistory

TENANT_ID = "00000000-0000-0000-0000-0000000000a1"
TOKEN = "graph-token-for-tests"
NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
PATHS = {
    SIGNINS_STREAM: ("/v1.0/auditLogs/signIns", "createdDateTime"),
    DIRECTORY_AUDITS_STREAM: ("/v1.0/auditLogs/directoryAudits", "activityDateTime"),
    MESSAGE_TRACE_STREAM: ("/v1.0/admin/exchange/tracing/messageTraces", "receivedDateTime"),
}
_FILTER = re.compile(r"^(\w+) ge (\S+) and \w+ (lt|le) (\S+)$")


def gtime(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeGraph(LoopbackService):
    """Graph's list routes over records held here: ``$filter`` on the time field, pages of ``page_size``,
    ``$skiptoken`` nextLinks; ``faults`` answer the next requests first; ``link_mode`` forges nextLinks."""

    def __init__(self) -> None:
        super().__init__(_GraphHandler, tls=True, timeout=10, name="fake-graph")
        self.records: dict[str, list[dict[str, Any]]] = {path: [] for path, _ in PATHS.values()}
        self.page_size = 3
        self.faults: list[tuple[int, dict[str, str], bytes]] = []
        self.link_mode: str | None = None
        self.requests: list[tuple[str, dict[str, list[str]], str]] = []
        self.lock = threading.Lock()

    def add(self, stream: str, ident: str, when: dt.datetime, **extra: Any) -> None:
        path, field = PATHS[stream]
        self.records[path].append({"id": ident, field: gtime(when), **extra})


class _GraphHandler(OwnedHandler):
    def do_GET(self) -> None:
        graph = cast(FakeGraph, self.owner)
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        with graph.lock:
            graph.requests.append((parts.path, query, self.headers.get("Authorization", "")))
            fault = graph.faults.pop(0) if graph.faults else None
        if fault is not None:
            self._send(*fault)
            return
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(401, {}, _error("InvalidAuthenticationToken"))
            return
        if "getDetailsByRecipient" in parts.path:
            self._send(200, {}, orjson.dumps({"value": [{"event": "Deliver", "path": parts.path}]}))
            return
        if parts.path not in graph.records:
            self._send(404, {}, _error("ResourceNotFound"))
            return
        field, start, op, end = _FILTER.match(query["$filter"][0]).groups()  # type: ignore[union-attr]
        chosen = [
            r
            for r in sorted(graph.records[parts.path], key=lambda r: str(r[field]), reverse=True)  # newest first
            if start <= r[field] and (r[field] < end if op == "lt" else r[field] <= end)
        ]
        size = int(query.get("$top", [graph.page_size])[0]) if "$top" in query else graph.page_size
        offset = int(query.get("$skiptoken", ["0"])[0])
        body: dict[str, Any] = {"@odata.context": "ctx", "value": chosen[offset : offset + size]}
        if offset + size < len(chosen):
            base = {k: v[0] for k, v in query.items() if k != "$skiptoken"}
            link = f"{graph.base_url}{parts.path}?{urlencode(base | {'$skiptoken': offset + size})}"
            if graph.link_mode == "foreign":
                link = "https://evil.example" + link[len(graph.base_url) :]
            elif graph.link_mode == "repeat":
                link = f"{graph.base_url}{parts.path}?{urlencode(base | {'$skiptoken': size})}"
            body["@odata.nextLink"] = link
        self._send(200, {}, orjson.dumps(body))

    def _send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _error(code: str, message: str = "refused") -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message, "innerError": {"request-id": "r"}}})


class StaticTokens:
    def get_token(self) -> str:
        return TOKEN


def tenant() -> TenantConfig:
    return tenant_from_env(
        {
            "O365_TENANT_ID": TENANT_ID,
            "O365_CLIENT_ID": "00000000-0000-0000-0000-0000000000b2",
            "O365_CLIENT_SECRET": "not-a-secret",
        }
    )


@pytest.fixture
def graph(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGraph]:
    with FakeGraph() as server:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)  # requests prefers it over session.verify
        yield server


def client(
    graph: FakeGraph,
    stream: str = SIGNINS_STREAM,
    *,
    clock: Clock | None = None,
    sleeps: list[float] | None = None,
    **settings: Any,
) -> GraphSource:
    session = requests.Session()
    slept = sleeps if sleeps is not None else []
    return graph_client(
        tenant(),
        stream,
        settings=GraphSettings(url=graph.base_url, **settings),
        session=session,
        policy=HttpPolicy(max_attempts=4, backoff_seconds=0.0, max_retry_seconds=600),
        clock=clock or Clock(NOW),
        claim_lease=dt.timedelta(minutes=10),
        tokens=cast(TokenProvider, StaticTokens()),
        sleep=slept.append,
    )


def unit(source: GraphSource, start: dt.datetime, end: dt.datetime) -> FetchTask:
    (blob,) = source.list_units(source.spec.stream, TimeWindow(start, end))
    return FetchTask.for_blob(TENANT_ID, blob)


H = dt.timedelta(hours=1)
W0 = NOW - 3 * H


def test_policy_is_the_sources_window_and_retention_without_lister_overlap(graph: FakeGraph) -> None:
    policy = client(graph, window=dt.timedelta(minutes=30)).policy(CollectionPolicy())
    assert policy.retention == dt.timedelta(days=30)
    assert policy.window == dt.timedelta(minutes=30)
    assert policy.overlap == dt.timedelta(0)
    assert policy.late_lookback == dt.timedelta(0)
    assert client(graph, MESSAGE_TRACE_STREAM).policy(CollectionPolicy()).retention == dt.timedelta(days=90)


def test_a_unit_follows_every_page_and_lists_with_no_call(graph: FakeGraph) -> None:
    for i in range(10):
        graph.add(SIGNINS_STREAM, f"s{i}", W0 + dt.timedelta(minutes=5 * i))
    graph.add(SIGNINS_STREAM, "after", W0 + H)  # the next window's
    source = client(graph)
    task = unit(source, W0, W0 + H)
    assert graph.requests == []  # listing a window makes no API call
    assert source.unit_problem(task) is None
    fetched = source.fetch_unit(task, MemoryHistory())
    assert sorted(r["id"] for r in fetched.records) == sorted(f"s{i}" for i in range(10))
    assert len(graph.requests) == 4  # pages of 3: 3 + 3 + 3 + 1
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in graph.requests)


def test_throttling_waits_what_graph_asks_and_is_counted(graph: FakeGraph) -> None:
    graph.add(SIGNINS_STREAM, "a", W0)
    throttled = (429, {"Retry-After": "7"}, _error("TooManyRequests", "Too many requests"))
    graph.faults = [throttled, (503, {}, b""), (504, {}, _error("GatewayTimeout"))]
    sleeps: list[float] = []
    source = client(graph, sleeps=sleeps)
    with source.counting() as counts:
        fetched = source.fetch_unit(unit(source, W0, W0 + H), MemoryHistory())
    assert [r["id"] for r in fetched.records] == ["a"]
    assert sleeps[0] == 7.0
    assert len(sleeps) == 3
    assert counts.throttled == 1
    assert counts.retries == 3
    assert counts.requests == 4


def test_throttling_beyond_the_retry_budget_raises_a_throttled_error(graph: FakeGraph) -> None:
    graph.faults = [(429, {"Retry-After": "1"}, _error("TooManyRequests"))] * 4
    source = client(graph)
    with pytest.raises(ApiTransientError) as raised:
        source.fetch_unit(unit(source, W0, W0 + H), MemoryHistory())
    assert raised.value.throttled
    assert raised.value.retry_after == 1


@pytest.mark.parametrize(
    ("stream", "status", "code", "action"),
    [
        (
            SIGNINS_STREAM,
            403,
            "Authorization_RequestDenied",
            "grant the Microsoft Graph application permission AuditLog.Read.All to the app and give admin consent",
        ),
        (
            MESSAGE_TRACE_STREAM,
            403,
            "Forbidden",
            "grant the Microsoft Graph application permission ExchangeMessageTrace.Read.All",
        ),
        (SIGNINS_STREAM, 403, "Authentication_RequestFromNonPremiumTenantOrB2CTenant", "P1 or P2"),
        (DIRECTORY_AUDITS_STREAM, 401, "InvalidAuthenticationToken", "audience must be https://graph.microsoft.com"),
    ],
)
def test_probe_raises_the_refusal_with_the_admins_action(
    graph: FakeGraph, stream: str, status: int, code: str, action: str
) -> None:
    graph.faults = [(status, {}, _error(code))]
    with pytest.raises(ApiPermanentError) as raised:
        client(graph, stream).probe()
    assert action in str(raised.value)
    assert raised.value.code == code
    assert TOKEN not in str(raised.value)
    path, query, _ = graph.requests[0]
    assert path == PATHS[stream][0]
    assert query["$top"] == ["1"]


def test_a_foreign_next_link_is_refused_and_gets_no_token(graph: FakeGraph) -> None:
    for i in range(5):
        graph.add(SIGNINS_STREAM, f"s{i}", W0 + dt.timedelta(minutes=i))
    graph.link_mode = "foreign"
    source = client(graph)
    with pytest.raises(UntrustedUrlError, match=r"evil\.example"):
        source.fetch_unit(unit(source, W0, W0 + H), MemoryHistory())
    assert len(graph.requests) == 1


def test_a_repeated_next_link_ends_the_read_instead_of_looping(graph: FakeGraph) -> None:
    for i in range(10):
        graph.add(SIGNINS_STREAM, f"s{i}", W0 + dt.timedelta(minutes=i))
    graph.link_mode = "repeat"
    source = client(graph)
    with pytest.raises(ApiTransientError, match="repeated a page"):
        source.fetch_unit(unit(source, W0, W0 + H), MemoryHistory())
    assert len(graph.requests) == 2  # the second page links to itself: not requested again


def test_the_overlap_ships_a_late_record_once_across_windows(graph: FakeGraph) -> None:
    graph.add(SIGNINS_STREAM, "near-end", W0 + H - dt.timedelta(minutes=2))
    clock = Clock(W0 + H + dt.timedelta(minutes=5))  # the window is read soon after its end
    source, history = client(graph, clock=clock), MemoryHistory()
    first = source.fetch_unit(unit(source, W0, W0 + H), history)
    graph.add(SIGNINS_STREAM, "late", W0 + H - dt.timedelta(minutes=5))  # Entra wrote it after the read
    graph.add(SIGNINS_STREAM, "next", W0 + H + dt.timedelta(minutes=1))
    clock.now = W0 + 2 * H + dt.timedelta(minutes=5)
    second = source.fetch_unit(unit(source, W0 + H, W0 + 2 * H), history)
    assert [r["id"] for r in first.records] == ["near-end"]
    assert sorted(r["id"] for r in second.records) == ["late", "next"]
    assert second.skipped == 1
    read = graph.requests[-1][1]["$filter"][0]
    assert read.startswith(f"createdDateTime ge {gtime(W0 + H - dt.timedelta(minutes=15))}")


def test_a_window_whose_predecessor_is_being_read_is_put_back(graph: FakeGraph) -> None:
    source, history = client(graph), MemoryHistory()
    history.put(
        TENANT_ID,
        f"{SIGNINS_STREAM}:tail:{gtime(W0 + H)}",
        {"State": "reading", "Until": NOW + dt.timedelta(minutes=5)},
    )
    with pytest.raises(UnitNotReadyError) as raised:
        source.fetch_unit(unit(source, W0 + H, W0 + 2 * H), history)
    assert raised.value.retry_after == 30
    assert graph.requests == []


def test_a_window_older_than_retention_is_unavailable(graph: FakeGraph) -> None:
    source = client(graph)
    old = NOW - dt.timedelta(days=31)
    with pytest.raises(ContentUnavailableError, match="30 days"):
        source.fetch_unit(unit(source, old, old + H), MemoryHistory())
    assert graph.requests == []


def test_message_trace_details_only_on_request_and_counted(graph: FakeGraph) -> None:
    graph.add(MESSAGE_TRACE_STREAM, "m1", W0, recipientAddress="adele@contoso.com")
    graph.add(MESSAGE_TRACE_STREAM, "m1", W0, recipientAddress="alex@contoso.com")
    graph.add(MESSAGE_TRACE_STREAM, "edge", W0 + H, recipientAddress="alex@contoso.com")  # `le end`: next window's
    trace = client(graph, MESSAGE_TRACE_STREAM)
    plain = trace.fetch_unit(unit(trace, W0, W0 + H), MemoryHistory())
    assert len(plain.records) == 2
    assert all(DETAILS_KEY not in r for r in plain.records)
    detailed = client(graph, MESSAGE_TRACE_STREAM, message_trace_details=True)
    with detailed.counting() as counts:
        fetched = detailed.fetch_unit(unit(detailed, W0, W0 + H), MemoryHistory())
    assert {r["recipientAddress"] for r in fetched.records} == {"adele@contoso.com", "alex@contoso.com"}
    assert all(r[DETAILS_KEY][0]["event"] == "Deliver" for r in fetched.records)
    assert counts.detail_requests == 2
    assert detailed.stats.detail_requests == 2
    assert "recipientAddress='adele@contoso.com'" in fetched.records[0][DETAILS_KEY][0]["path"] or (
        "recipientAddress='alex@contoso.com'" in fetched.records[0][DETAILS_KEY][0]["path"]
    )


class StatesSeen(MemoryHistory):
    """Records the tail row's state each time a detail call is made (the details come after the read)."""

    def __init__(self) -> None:
        super().__init__()
        self.during_details: list[object] = []


def test_a_window_is_marked_read_before_its_message_trace_details_are_fetched(graph: FakeGraph) -> None:
    """The details are paced and can take long: the next window must not wait on them (nor take this
    window's reader for dead when its reading mark's lease runs out), so the tail is left first."""
    graph.add(MESSAGE_TRACE_STREAM, "m1", W0, recipientAddress="adele@contoso.com")
    detailed = client(graph, MESSAGE_TRACE_STREAM, message_trace_details=True)
    history = StatesSeen()
    tail_key = f"{MESSAGE_TRACE_STREAM}:tail:"
    original = detailed._http.pages

    def pages(url: str, what: str, **kwargs: Any) -> Any:
        if "getDetailsByRecipient" in url:
            history.during_details += [row.get("State") for (_, key), row in history.rows.items() if tail_key in key]
        return original(url, what, **kwargs)

    detailed._http.pages = pages  # type: ignore[method-assign]
    fetched = detailed.fetch_unit(unit(detailed, W0, W0 + H), history)
    assert fetched.records[0][DETAILS_KEY]
    assert history.during_details == ["read"]


# -- against the simulator's Graph (o365collector.simulator.graph) ---------------------------------------


def sim_client(simulator: Simulator, spec: TenantSpec, stream: str, clock: Clock, **settings: Any) -> GraphSource:
    """A client as the runtime builds it: real token requests (Graph scope) to the simulator's token endpoint."""
    env = demo_environment(simulator, spec)
    return graph_client(
        tenant_from_env(env),
        stream,
        settings=GraphSettings(url=simulator.api_url, **settings),
        session=requests.Session(),
        policy=HttpPolicy(max_attempts=3, backoff_seconds=0.0),
        clock=clock,
        claim_lease=dt.timedelta(minutes=10),
        sleep=lambda _s: None,
    )


@pytest.mark.parametrize("stream", [SIGNINS_STREAM, DIRECTORY_AUDITS_STREAM, MESSAGE_TRACE_STREAM])
def test_a_backfill_against_the_simulator_ships_every_record_once(
    simulator: Simulator, trust_simulator: None, stream: str
) -> None:
    """Forty minutes of records, each served up to 4 minutes late, in 5-minute windows read a minute after
    they end (within the simulator's one-hour token life): some records appear only after their window was
    read, and the next window's overlap ships them, once; what it re-reads from the window before is skipped."""
    start = dt.datetime(2026, 12, 5, 6, 0, tzinfo=dt.UTC)
    step = dt.timedelta(minutes=5)
    clock = Clock(start)
    simulator.set_clock(clock)
    truth = simulator.generate_graph(
        TENANT.tenant_id, stream, start, start + 8 * step, every=dt.timedelta(seconds=20), lag=(H * 0, 4 * step / 5)
    )
    source, history = sim_client(simulator, TENANT, stream, clock), MemoryHistory()
    shipped: list[str] = []
    skipped = 0
    for i in range(9):  # the 9th window only collects what came late into the 8th
        clock.now = start + (i + 1) * step + dt.timedelta(minutes=1)
        fetched = source.fetch_unit(unit(source, start + i * step, start + (i + 1) * step), history)
        shipped += [r["id"] for r in fetched.records]
        skipped += fetched.skipped
    window_read = {r.id: start + ((r.time - start) // step + 1) * step + dt.timedelta(minutes=1) for r in truth}
    assert any(r.available_at > window_read[r.id] for r in truth), "some records must arrive after their window"
    assert sorted(shipped) == sorted(r.id for r in truth)  # each exactly once
    assert skipped > 0  # the overlap re-read what the window before had shipped


def test_the_simulator_refuses_a_tenant_without_licence_or_permission(
    simulator: Simulator, trust_simulator: None
) -> None:
    unlicensed = TenantSpec(
        tenant_id="22222222-3333-4444-8555-666666666666",
        client_id="77777777-8888-4999-aaaa-bbbbbbbbbbbb",
        client_secret="other-secret-Yq8!",
        graph_roles=("AuditLog.Read.All",),
        entra_premium=False,
    )
    simulator.add_tenant(unlicensed)
    clock = Clock(dt.datetime.now(dt.UTC))
    with pytest.raises(ApiPermanentError, match="P1 or P2"):
        sim_client(simulator, unlicensed, SIGNINS_STREAM, clock).probe()
    sim_client(simulator, unlicensed, DIRECTORY_AUDITS_STREAM, clock).probe()  # audits need no licence
    with pytest.raises(ApiPermanentError, match=r"ExchangeMessageTrace\.Read\.All to the app and give admin consent"):
        sim_client(simulator, unlicensed, MESSAGE_TRACE_STREAM, clock).probe()


def test_message_trace_details_from_the_simulator(simulator: Simulator, trust_simulator: None) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - 2 * H
    truth = simulator.generate_graph(
        TENANT.tenant_id, MESSAGE_TRACE_STREAM, start, start + H, every=dt.timedelta(minutes=20), lag=(H * 0, H * 0)
    )
    source = sim_client(
        simulator, TENANT, MESSAGE_TRACE_STREAM, Clock(dt.datetime.now(dt.UTC)), message_trace_details=True
    )
    fetched = source.fetch_unit(unit(source, start, start + H), MemoryHistory())
    assert len(fetched.records) == len(truth) > 0
    assert all(isinstance(r[DETAILS_KEY], list) and r[DETAILS_KEY] for r in fetched.records)
    assert source.stats.detail_requests == len(truth)
