"""Edges of Graph's HTTP client and unit names that the other Graph tests leave open (``sources.graph``,
``sources.graph_units``), found by breaking the code on purpose: error bodies that are not JSON, answers
that are not pages, the bound on pages, what a refused link's error may say, token failures, timeouts,
and unit names built from windows that are not in UTC.

A scripted loopback Graph (``ScriptedGraph``) answers each request with the next scripted answer and
records the request line and headers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from collections.abc import Iterator
from typing import Any, cast

import orjson
import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import ServiceRequestError

from o365collector.auth import TokenProvider
from o365collector.config import HttpPolicy
from o365collector.errors import ApiPermanentError, ApiTransientError, UntrustedUrlError
from o365collector.models import TimeWindow
from o365collector.sources.entra import SIGN_INS
from o365collector.sources.graph import GraphHttp, classify_graph_response
from o365collector.sources.graph_units import graph_time, parse_unit_id, unit_id, unit_problem, unit_uri
from tests.loopback import LoopbackService, OwnedHandler
from tests.test_source_graph import TOKEN, StaticTokens, tenant
from tests.test_source_units import ARGS, RETENTION, ROOT, START, TENANT_ID, WINDOW, task

HOLD = 0
"""A scripted status that answers nothing (the request waits until the test ends)."""
EMPTY_PAGE: tuple[int, dict[str, str], bytes] = (200, {}, b'{"value": []}')


class ScriptedGraph(LoopbackService):
    """Answers each GET with the next of ``answers`` (an empty page when none is left)."""

    def __init__(self) -> None:
        super().__init__(_ScriptedHandler, tls=True, timeout=10, name="scripted-graph")
        self.answers: list[tuple[int, dict[str, str], bytes]] = []
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.release = threading.Event()
        self.lock = threading.Lock()


class _ScriptedHandler(OwnedHandler):
    def do_GET(self) -> None:
        graph = cast(ScriptedGraph, self.owner)
        with graph.lock:
            graph.seen.append((self.path, dict(self.headers.items())))
            status, headers, body = graph.answers.pop(0) if graph.answers else EMPTY_PAGE
        if status == HOLD:
            graph.release.wait(10)  # bounded: released when the test ends
            self.close_connection = True
            return
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedGraph]:
    with ScriptedGraph() as server:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)  # requests prefers it over session.verify
        try:
            yield server
        finally:
            server.release.set()


def http(root: str, *, tokens: Any = None, max_attempts: int = 3, timeout: float = 10.0, **changes: Any) -> GraphHttp:
    return GraphHttp(
        dataclasses.replace(tenant(), **changes),
        source="signins",
        permission="AuditLog.Read.All",
        root=root,
        tokens=cast(TokenProvider, tokens or StaticTokens()),
        session=requests.Session(),
        policy=HttpPolicy(max_attempts=max_attempts, backoff_seconds=0.0, timeout_seconds=timeout),
        sleep=lambda _s: None,
    )


def page(records: list[Any], next_link: str | None = None) -> tuple[int, dict[str, str], bytes]:
    body: dict[str, Any] = {"value": records}
    if next_link is not None:
        body["@odata.nextLink"] = next_link
    return 200, {}, orjson.dumps(body)


# -- the wire -----------------------------------------------------------------------------------------


def test_a_request_carries_the_bearer_token_and_asks_for_json(scripted: ScriptedGraph) -> None:
    client = http(scripted.base_url + "/")
    assert client.root == scripted.base_url  # a root written with a slash builds no "//v1.0" URLs
    assert client.get_json(f"{client.root}/v1.0/auditLogs/signIns", "read") == {"value": []}
    ((path, headers),) = scripted.seen
    assert path == "/v1.0/auditLogs/signIns"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Accept"] == "application/json"
    assert client.stats.requests == 1


def test_a_long_listing_is_followed_to_its_end_under_the_default_bound(scripted: ScriptedGraph) -> None:
    """The bound stops a looping service, not a busy tenant's window: a few dozen pages are all read."""
    base = f"{scripted.base_url}/v1.0/auditLogs/signIns"
    scripted.answers = [page([{"id": f"r{i}"}], f"{base}?$skiptoken={i + 1}") for i in range(24)] + [page([])]
    pages = list(http(scripted.base_url).pages(base, "read"))
    assert len(pages) == 25
    assert [r["id"] for p in pages for r in p] == [f"r{i}" for i in range(24)]


# -- answers that are not what Graph promises -------------------------------------------------------


def test_an_error_page_that_is_not_json_is_still_classified(scripted: ScriptedGraph) -> None:
    """A gateway's HTML error page: a 502 is retried, a 403 still names the permission."""
    scripted.answers = [(502, {}, b"<html>Bad Gateway</html>"), EMPTY_PAGE]
    client = http(scripted.base_url)
    assert client.get_json(f"{scripted.base_url}/v1.0/x", "read") == {"value": []}
    assert client.stats.retries == 1
    scripted.answers = [(403, {}, b"<html>Forbidden</html>")]
    with pytest.raises(ApiPermanentError, match=r"permission AuditLog\.Read\.All to the app") as raised:
        client.get_json(f"{scripted.base_url}/v1.0/x", "read")
    assert raised.value.status == 403


def test_a_body_that_is_not_json_is_a_retried_fault(scripted: ScriptedGraph) -> None:
    scripted.answers = [(200, {}, b"<html>captive portal</html>"), page([{"id": "a"}])]
    client = http(scripted.base_url)
    assert client.get_json(f"{scripted.base_url}/v1.0/x", "read") == {"value": [{"id": "a"}]}
    scripted.answers = [(200, {}, b"<html>captive portal</html>")] * 3
    with pytest.raises(ApiTransientError, match="not JSON"):
        client.get_json(f"{scripted.base_url}/v1.0/x", "read")


@pytest.mark.parametrize("link", [5, "", ["https://127.0.0.1/next"]])
def test_a_next_link_that_is_not_a_url_is_a_fault_not_the_end(scripted: ScriptedGraph, link: object) -> None:
    """Taking it for the last page would mark the window read with what came before: a silent loss."""
    body = orjson.dumps({"value": [{"id": "a"}], "@odata.nextLink": link})
    scripted.answers = [(200, {}, body), page([{"id": "b"}])]
    pages = http(scripted.base_url).pages(f"{scripted.base_url}/v1.0/x", "read")
    assert next(pages) == [{"id": "a"}]
    with pytest.raises(ApiTransientError, match=r"@odata\.nextLink that is not a URL"):
        next(pages)
    scripted.answers = [(200, {}, orjson.dumps({"value": [{"id": "a"}], "@odata.nextLink": None}))]
    assert list(http(scripted.base_url).pages(f"{scripted.base_url}/v1.0/x", "read")) == [[{"id": "a"}]]


def test_a_redirect_status_without_a_location_is_no_page(scripted: ScriptedGraph) -> None:
    """A 3xx that requests cannot follow is not a success: taking its body for a page could end a window early."""
    scripted.answers = [(300, {}, b'{"value": []}')]
    with pytest.raises(ApiPermanentError) as raised:
        next(http(scripted.base_url).pages(f"{scripted.base_url}/v1.0/x", "read"))
    assert raised.value.status == 300


def test_entries_that_are_not_objects_are_reported_without_their_content(
    scripted: ScriptedGraph, caplog: pytest.LogCaptureFixture
) -> None:
    scripted.answers = [page(["secret-junk", 7, {"id": "a"}])]
    with caplog.at_level(logging.WARNING, logger="o365collector.sources.graph"):
        (records,) = http(scripted.base_url).pages(f"{scripted.base_url}/v1.0/x", "read")
    assert records == [{"id": "a"}]
    (warning,) = [r for r in caplog.records if r.name == "o365collector.sources.graph"]
    assert "2 entries that are not JSON objects" in warning.getMessage()
    assert "secret-junk" not in warning.getMessage()


# -- links that point elsewhere -----------------------------------------------------------------------


def test_a_foreign_next_link_is_named_by_kind_and_host_only(scripted: ScriptedGraph) -> None:
    scripted.answers = [page([{"id": "a"}], "https://evil.example/steal?code=SECRETVALUE")]
    pages = http(scripted.base_url).pages(f"{scripted.base_url}/v1.0/x", "read")
    assert next(pages) == [{"id": "a"}]
    with pytest.raises(UntrustedUrlError) as raised:
        next(pages)
    text = str(raised.value)
    assert "@odata.nextLink" in text
    assert "evil.example" in text
    assert "SECRETVALUE" not in text
    assert "steal" not in text
    assert "check O365_GRAPH_URL and O365_CLOUD" in text, "the Graph setting, not the audit feed's O365_API_URL"
    assert len(scripted.seen) == 1
    with pytest.raises(UntrustedUrlError, match=r"a Graph URL pointing to 'evil\.example'"):
        http(scripted.base_url).get_json("https://evil.example/v1.0/x", "read")


# -- tokens and the network ---------------------------------------------------------------------------


class UnreachableIdentity:
    """A credential whose identity endpoint cannot be reached (azure-core's own network error)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise ServiceRequestError("connection refused")


def test_a_token_endpoint_out_of_reach_is_retried_then_transient(scripted: ScriptedGraph) -> None:
    tokens = TokenProvider(tenant(), cast(Any, UnreachableIdentity()), scope="https://graph.microsoft.com/.default")
    client = http(scripted.base_url, tokens=tokens, max_attempts=3)
    with pytest.raises(ApiTransientError, match="token request failed: ServiceRequestError"):
        client.get_json(f"{scripted.base_url}/v1.0/x", "read")
    assert client.stats.retries == 2
    assert scripted.seen == []  # no request goes out without a token
    with pytest.raises(ApiTransientError, match="token request failed"):
        client.sign_in()  # the health check's sign-in asks for the token itself


def test_a_graph_that_never_answers_times_out_as_transient(scripted: ScriptedGraph) -> None:
    scripted.answers = [(HOLD, {}, b"")]
    client = http(scripted.base_url, max_attempts=1, timeout=0.3)
    with pytest.raises(ApiTransientError, match=r"ReadTimeout talking to 127\.0\.0\.1"):
        client.get_json(f"{scripted.base_url}/v1.0/x", "read")


# -- error texts ----------------------------------------------------------------------------------------


def test_a_registry_tenants_refusal_names_its_own_entry(scripted: ScriptedGraph) -> None:
    """The licence hint says "remove signins from O365_SOURCES": a registry tenant is sent to its entry."""
    error = orjson.dumps({"error": {"code": "Authentication_RequestFromNonPremiumTenantOrB2CTenant", "message": "m"}})
    scripted.answers = [(403, {}, error)]
    own = (("O365_SOURCES", "O365_TENANTS[3].sources"),)
    with pytest.raises(ApiPermanentError) as raised:
        http(scripted.base_url, setting_names=own).get_json(f"{scripted.base_url}/v1.0/x", "read")
    assert "O365_TENANTS[3].sources" in str(raised.value)
    assert "(O365_SOURCES)" not in str(raised.value)


def _body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def test_the_services_message_is_escaped_and_cut() -> None:
    message = "line one\r\nFAKE LOG LINE\x1b[31m" + "x" * 1000
    error = classify_graph_response(400, _body("BadRequest", message), {}, **ARGS)
    text = str(error)
    assert "\n" not in text
    assert "\x1b" not in text
    assert "x" * 301 not in text
    assert "x" * 250 in text


def test_a_transient_refusal_keeps_the_services_message_and_no_invented_code() -> None:
    error = classify_graph_response(503, _body("serviceNotAvailable", "in maintenance until noon"), {}, **ARGS)
    assert str(error) == "read: HTTP 503 serviceNotAvailable in maintenance until noon"
    bare = classify_graph_response(504, orjson.dumps({"error": {"message": "gateway"}}), {}, **ARGS)
    assert isinstance(bare, ApiTransientError)
    assert bare.code is None
    assert str(bare) == "read: HTTP 504 gateway"


def test_the_refusal_names_its_status_and_code() -> None:
    error = classify_graph_response(403, _body("Authorization_RequestDenied", "m"), {}, **ARGS)
    assert str(error).startswith("read: HTTP 403 Authorization_RequestDenied: ")


def test_the_licence_hint_is_for_a_403_only() -> None:
    """Graph's licence refusal is a 403; the same code on a 401 is a token problem, told as one."""
    error = classify_graph_response(
        401, _body("Authentication_RequestFromNonPremiumTenantOrB2CTenant", "m"), {}, **ARGS
    )
    assert "its audience must be" in str(error)
    assert "P1 or P2" not in str(error)


# -- unit names -----------------------------------------------------------------------------------------


def test_a_record_key_is_a_non_blank_string_or_none() -> None:
    assert SIGN_INS.record_key({"id": "a"}) == "a"
    assert SIGN_INS.record_key({"id": 5}) is None
    assert SIGN_INS.record_key({"id": ""}) is None


def test_a_records_time_that_is_missing_or_garbled_is_no_time() -> None:
    assert SIGN_INS.record_time({"createdDateTime": "2026-12-01T10:05:00Z"}) == START + dt.timedelta(minutes=5)
    assert SIGN_INS.record_time({"createdDateTime": 5}) is None
    assert SIGN_INS.record_time({"createdDateTime": "yesterday"}) is None
    assert SIGN_INS.record_time({}) is None


def test_a_window_in_another_zone_is_named_and_filtered_in_utc() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    local = TimeWindow(START.astimezone(plus_two), WINDOW.end.astimezone(plus_two))
    assert unit_id(SIGN_INS.stream, local) == "Entra.SignIns_20261201T100000Z_20261201T110000Z"
    assert graph_time(START.astimezone(plus_two)) == "2026-12-01T10:00:00Z"
    assert unit_uri(ROOT + "/", SIGN_INS, local) == unit_uri(ROOT, SIGN_INS, WINDOW)


@pytest.mark.parametrize(
    ("content_id", "why"),
    [
        ("Entra.SignInsX_20261201T100000Z_20261201T110000Z", "does not start with the stream name"),
        ("Entra.SignIns_20261201T100000Z_20261201T110000Z_x", "is not <stream>_<start>_<end>"),
        ("Entra.SignIns_2026XX01T100000Z_20261201T110000Z", "times are not YYYYMMDDTHHMMSSZ$"),
    ],
)
def test_a_unit_id_names_its_own_fault(content_id: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_unit_id(SIGN_INS.stream, content_id)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"content_created": WINDOW.end + dt.timedelta(seconds=1)}, "contentCreated is not the end"),
        ({"content_expiration": START + RETENTION - dt.timedelta(seconds=1)}, "contentExpiration"),
    ],
)
def test_a_unit_with_dates_off_either_way_is_refused(changes: dict[str, object], why: str) -> None:
    problem = unit_problem(task(**changes), spec=SIGN_INS, root=ROOT, tenant_id=TENANT_ID, retention=RETENTION)
    assert problem is not None
    assert why in problem
