"""The API client's edges that the broader tests leave open, each pinned by one behaviour.

Pure error mapping and URL checks are tested as tables; the transport (Retry-After, timeouts, a body
cut off halfway, the size cap at its exact bound, paging verbatim and bounded, the quota key, the
request pacing) against a scripted API on 127.0.0.1; ``run --resend`` against ledger rows on Azurite
and blobs on the simulator.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
import requests
from azure.core.exceptions import ServiceRequestError

from o365collector import management_api
from o365collector.auth import TokenProvider
from o365collector.config import HttpPolicy, Settings
from o365collector.errors import (
    ApiPermanentError,
    ApiTransientError,
    ConfigError,
    MalformedContentError,
    SubscriptionMissingError,
)
from o365collector.management_api import ManagementApiClient, classify_response, content_uri_problem, same_origin
from o365collector.models import TimeWindow
from o365collector.ratelimit import Pacer
from o365collector.resend import ResendRequest, ResendResult, report, request_from_args, resend, select_sinks, time_arg
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.simulator.data import SimBlob
from o365collector.windows import earliest_listable
from tests.loopback import LoopbackService, OwnedHandler
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory, now

TID = TENANT.tenant_id
API = "https://manage.office.com"
CID = "20260301$20260301$abc$Audit_Exchange$na0034"


def err(code: str, message: str = "m") -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


# -- error mapping (pure) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "what", "kind", "fragment"),
    [
        # A 5xx is retried whatever its body, the first 5xx included.
        (500, b"", "list Audit.Exchange", ApiTransientError, "HTTP 500"),
        (500, b"<html>oops</html>", "fetch x", ApiTransientError, "HTTP 500"),
        # An invalid nextPage is the service's own fault ([REF] AF20031): retried, never fatal.
        (400, err("AF20031", "Invalid nextPage Input: x."), "list Audit.Exchange", ApiTransientError, "AF20031"),
        (500, err("AF50005"), "list Audit.Exchange", ApiTransientError, "AF50005"),
        (500, err("AF50006"), "list Audit.Exchange", ApiTransientError, "AF50006"),
        # A listing URL answered 404 without an AF code is a wrong O365_API_URL, not a lost blob: permanent.
        (404, b"", "list Audit.Exchange", ApiPermanentError, "HTTP 404"),
        # The {"Message": ...} shape gives its message, not the raw JSON.
        (400, b'{"Message":"The request is invalid."}', "list Audit.Exchange", ApiPermanentError, "invalid."),
        # A JSON object of neither shape is reported, not a crash.
        (400, b'{"Detail":"odd"}', "list Audit.Exchange", ApiPermanentError, "odd"),
        (400, err("AF20022"), "list Audit.Exchange", SubscriptionMissingError, "AF20022"),
        (400, err("AF20030"), "list Audit.Exchange", ApiPermanentError, "clock"),
        (400, err("AF20052"), "fetch x", ApiPermanentError, "content id is invalid"),
    ],
)
def test_each_service_answer_maps_to_the_error_that_says_what_to_do(
    status: int, body: bytes, what: str, kind: type[Exception], fragment: str
) -> None:
    error = classify_response(status, body, {}, TID, what)
    assert type(error) is kind
    assert fragment in str(error)


def test_the_message_of_an_aspnet_error_body_is_shown_without_its_json() -> None:
    error = classify_response(400, b'{"Message":"The request is invalid."}', {}, TID, "list Audit.Exchange")
    assert str(error) == "list Audit.Exchange: HTTP 400: The request is invalid."


def test_an_error_code_sent_as_empty_text_is_no_code() -> None:
    error = classify_response(403, b'{"error":{"code":"","message":"denied"}}', {}, TID, "list Audit.Exchange")
    assert isinstance(error, ApiPermanentError)
    assert error.code is None
    assert str(error) == "list Audit.Exchange: HTTP 403: denied"


@pytest.mark.parametrize(
    ("url", "api", "same"),
    [
        ("HTTPS://manage.office.com/api/v1.0/x", "https://manage.office.com", True),
        ("https://manage.office.com/api", "HTTPS://manage.office.com", True),
        ("https://:pw@manage.office.com/api", "https://manage.office.com", False),
        ("http://127.0.0.1/api", "http://127.0.0.1:80", True),
    ],
)
def test_the_api_origin_ignores_the_case_of_its_scheme_and_refuses_any_credential(
    url: str, api: str, same: bool
) -> None:
    assert same_origin(urlsplit(url), urlsplit(api)) is same


def test_an_api_url_with_a_trailing_slash_roots_the_content_path_the_same() -> None:
    uri = f"https://proxy.example/o365/api/v1.0/{TID}/activity/feed/audit/{CID}"
    assert content_uri_problem(uri, api_url="https://proxy.example/o365/", tenant_id=TID, content_id=CID) is None


def test_a_percent_encoded_tenant_segment_is_the_same_tenant() -> None:
    encoded = TID.replace("-", "%2D")
    uri = f"{API}/api/v1.0/{encoded}/activity/feed/audit/{CID}"
    assert content_uri_problem(uri, api_url=API, tenant_id=TID, content_id=CID) is None


# -- the transport, against a scripted API -----------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"[]"
    headers: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None
    """Send the full Content-Length but only this many body bytes, then close the connection."""
    chunked: bool = False
    """Send the body chunked, without a Content-Length."""
    hang: bool = False
    """Answer nothing until the test ends (the client's timeout must fire)."""


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class ScriptedApi(LoopbackService):
    """Answers each route (``list``, ``fetch``, ``start``, ``stop``, ``subs``) from its own script, in order;
    the last reply of a script repeats. Every request is recorded."""

    def __init__(self) -> None:
        self.script: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []
        self.released = threading.Event()
        self._lock = threading.Lock()
        super().__init__(_ScriptedHandler, tls=True, timeout=10.0, name="scripted-api")

    @property
    def root(self) -> str:
        return f"{self.base_url}/api/v1.0/{TID}/activity/feed"

    def close(self) -> None:
        self.released.set()
        super().close()

    def next_reply(self, route: str) -> Reply:
        with self._lock:
            replies = self.script.get(route) or [Reply(404, b"")]
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def routes(self) -> list[str]:
        return [_route(s.target) for s in self.seen]


def _route(target: str) -> str:
    path = urlsplit(target).path
    for marker, route in (
        ("/subscriptions/content", "list"),
        ("/subscriptions/start", "start"),
        ("/subscriptions/stop", "stop"),
        ("/subscriptions/list", "subs"),
        ("/audit/", "fetch"),
    ):
        if marker in path:
            return route
    return "other"


class _ScriptedHandler(OwnedHandler):
    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        api: ScriptedApi = self.owner  # type: ignore[assignment]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with api._lock:
            api.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
        reply = api.next_reply(_route(self.path))
        if reply.hang:
            api.released.wait(10.0)
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            step = 1 << 16
            for start in range(0, len(reply.body), step):
                piece = reply.body[start : start + step]
                self.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if reply.cut_after is not None:
            self.wfile.write(reply.body[: reply.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(reply.body)


class FixedToken(TokenProvider):
    """A token without a sign-in (the scripted API does not check it); ``fail`` raises a network error first."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.calls = 0

    def get_token(self) -> str:
        self.calls += 1
        if self.calls <= self.fail:
            raise ServiceRequestError("login host unreachable")
        return "token-abc"


@pytest.fixture
def api() -> Iterator[ScriptedApi]:
    with ScriptedApi() as server:
        yield server


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_client(
    api: ScriptedApi,
    make_env: EnvFactory,
    *,
    tokens: TokenProvider | None = None,
    env: dict[str, str] | None = None,
    pacer: Pacer | None = None,
    **policy: float,
) -> tuple[ManagementApiClient, Sleeps]:
    tenant = Settings.from_env(make_env(O365_API_URL=api.base_url, **(env or {}))).tenants[0]
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE (the simulator's) would override ``verify``
    session.verify = api.ca_file
    sleeps = Sleeps()
    settings: dict[str, float] = {"backoff_seconds": 0.01, "max_retry_seconds": 30.0} | policy
    client = ManagementApiClient(
        tenant,
        tokens=tokens or FixedToken(),
        session=session,
        policy=HttpPolicy(**settings),  # type: ignore[arg-type]
        sleep=sleeps,
        pacer=pacer,
    )
    return client, sleeps


def window() -> TimeWindow:
    return TimeWindow(now() - dt.timedelta(hours=2), now())


def entry(api: ScriptedApi, n: int) -> dict[str, str]:
    cid = f"blob{n:04d}$blob{n:04d}$audit_exchange$Audit_Exchange"
    created = now() - dt.timedelta(hours=1)
    return {
        "contentType": "Audit.Exchange",
        "contentId": cid,
        "contentUri": f"{api.root}/audit/{cid}",
        "contentCreated": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "contentExpiration": (created + dt.timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


def page(api: ScriptedApi, *numbers: int, next_uri: str | None = None) -> Reply:
    headers = {"NextPageUri": next_uri} if next_uri else {}
    return Reply(body=orjson.dumps([entry(api, n) for n in numbers]), headers=headers)


def test_retry_after_is_waited_exactly_before_the_next_attempt(api: ScriptedApi, make_env: EnvFactory) -> None:
    api.script["list"] = [Reply(403, err("AF429"), {"Retry-After": "7"}), page(api, 1)]
    client, sleeps = make_client(api, make_env)
    assert [b.content_id for b in client.list_content("Audit.Exchange", window())] == [entry(api, 1)["contentId"]]
    assert 7.0 in sleeps
    assert client.stats.throttled == 1
    assert client.stats.retries == 1
    assert client.stats.requests == 2


def test_a_first_page_refused_for_a_missing_subscription_starts_it_then_lists(
    api: ScriptedApi, make_env: EnvFactory
) -> None:
    api.script["list"] = [Reply(400, err("AF20022")), page(api, 1)]
    api.script["start"] = [Reply(200, b'{"contentType":"Audit.Exchange","status":"enabled","webhook":null}')]
    client, _ = make_client(api, make_env)
    assert len(list(client.list_content("Audit.Exchange", window()))) == 1
    assert api.routes() == ["list", "start", "list"]


def test_a_later_page_refused_for_a_missing_subscription_is_raised_not_restarted(
    api: ScriptedApi, make_env: EnvFactory
) -> None:
    second = f"{api.root}/subscriptions/content?contentType=Audit.Exchange&nextPage=2"
    api.script["list"] = [page(api, 1, next_uri=second), Reply(400, err("AF20022"))]
    client, _ = make_client(api, make_env)
    with pytest.raises(SubscriptionMissingError):
        list(client.list_content("Audit.Exchange", window()))
    assert api.routes() == ["list", "list"]


def test_a_next_page_uri_is_followed_verbatim_its_own_quota_key_kept(api: ScriptedApi, make_env: EnvFactory) -> None:
    """The service's URL is followed as sent: a publisheridentifier it carries (any case) is not added twice."""
    second = f"{api.root}/subscriptions/content?contentType=Audit.Exchange&nextPage=2&publisheridentifier=own"
    api.script["list"] = [page(api, 1, next_uri=second), page(api, 2)]
    client, _ = make_client(api, make_env)
    assert len(list(client.list_content("Audit.Exchange", window()))) == 2
    first, followed = (s.target for s in api.seen)
    assert urlsplit(followed).path + "?" + urlsplit(followed).query == second.removeprefix(api.base_url)
    keys = [k for k, _ in parse_qsl(urlsplit(first).query)]
    assert keys == ["contentType", "startTime", "endTime", "PublisherIdentifier"]


def test_the_listing_ends_after_max_pages_and_not_one_page_sooner(
    api: ScriptedApi, make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(management_api, "MAX_PAGES", 3)
    uris = [f"{api.root}/subscriptions/content?contentType=Audit.Exchange&nextPage={n}" for n in range(2, 6)]
    api.script["list"] = [page(api, n, next_uri=uris[n - 1]) for n in range(1, 5)]
    client, _ = make_client(api, make_env)
    listed: list[str] = []
    with pytest.raises(ApiTransientError, match="exceeded 3 pages"):
        listed.extend(b.content_id for b in client.list_content("Audit.Exchange", window()))
    assert len(listed) == 3, "exactly MAX_PAGES pages were read"

    api.script["list"] = [page(api, 1, next_uri=uris[0]), page(api, 2, next_uri=uris[1]), page(api, 3)]
    assert len(list(client.list_content("Audit.Exchange", window()))) == 3, "MAX_PAGES pages are allowed"


def test_a_malformed_entry_is_reported_and_the_entries_after_it_still_listed(
    api: ScriptedApi, make_env: EnvFactory
) -> None:
    entries = [entry(api, 1), {"contentType": "Audit.Exchange"}, entry(api, 3)]
    api.script["list"] = [Reply(body=orjson.dumps(entries))]
    client, _ = make_client(api, make_env)
    reported: list[object] = []
    listed = [b.content_id for b in client.list_content("Audit.Exchange", window(), reported.append)]
    assert listed == [entry(api, 1)["contentId"], entry(api, 3)["contentId"]]
    assert len(reported) == 1


def test_a_body_cut_off_halfway_is_retried_and_then_read_whole(api: ScriptedApi, make_env: EnvFactory) -> None:
    records = orjson.dumps([{"Id": f"r{i}", "Pad": "x" * 200} for i in range(50)])
    api.script["fetch"] = [Reply(body=records, cut_after=100), Reply(body=records)]
    client, _ = make_client(api, make_env)
    assert [r["Id"] for r in client.fetch_content(entry(api, 1)["contentUri"])] == [f"r{i}" for i in range(50)]
    assert client.stats.retries == 1


def _blob_of(size: int) -> bytes:
    """A JSON array of one record, exactly ``size`` bytes long."""
    shell = b'[{"Id":"a","Pad":""}]'
    return shell[:-3] + b"x" * (size - len(shell)) + shell[-3:]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_of_exactly_the_cap_is_read_and_one_byte_more_refused(
    api: ScriptedApi, make_env: EnvFactory, chunked: bool
) -> None:
    cap = 1 << 20  # O365_MAX_CONTENT_MB=1
    api.script["fetch"] = [Reply(body=_blob_of(cap), chunked=chunked), Reply(body=_blob_of(cap + 1), chunked=chunked)]
    client, _ = make_client(api, make_env, max_content_mb=1)
    uri = entry(api, 1)["contentUri"]
    assert len(client.fetch_content(uri)[0]["Pad"]) == cap - len(b'[{"Id":"a","Pad":""}]')
    with pytest.raises(MalformedContentError, match=r"larger than O365_MAX_CONTENT_MB \(1 MB\)"):
        client.fetch_content(uri)


def test_an_answer_that_never_comes_times_out_as_a_retryable_error(api: ScriptedApi, make_env: EnvFactory) -> None:
    api.script["list"] = [Reply(hang=True)]
    client, _ = make_client(api, make_env, timeout_seconds=0.5, max_attempts=1)
    with pytest.raises(ApiTransientError, match="ReadTimeout"):
        list(client.list_content("Audit.Exchange", window()))


def test_a_network_failure_reaching_the_login_host_is_retryable(api: ScriptedApi, make_env: EnvFactory) -> None:
    client, _ = make_client(api, make_env, tokens=FixedToken(fail=1), max_attempts=1)
    with pytest.raises(ApiTransientError, match="token request failed: ServiceRequestError"):
        client.sign_in()
    api.script["list"] = [page(api, 1)]
    blocked, _ = make_client(api, make_env, tokens=FixedToken(fail=1))
    assert len(list(blocked.list_content("Audit.Exchange", window()))) == 1, "retried after the failure"
    assert blocked.stats.retries == 1


def test_a_3xx_status_is_an_error_not_an_empty_listing(api: ScriptedApi, make_env: EnvFactory) -> None:
    api.script["list"] = [Reply(300, b"[]")]
    client, _ = make_client(api, make_env)
    with pytest.raises(ApiPermanentError, match="HTTP 300"):
        list(client.list_content("Audit.Exchange", window()))


def test_a_registry_tenant_is_sent_to_its_own_entry_not_to_the_single_tenant_setting(
    api: ScriptedApi, make_env: EnvFactory
) -> None:
    api.script["list"] = [Reply(400, err("AF20013"))]
    entries = orjson.dumps([{"tenantId": TID}]).decode()
    client, _ = make_client(api, make_env, env={"O365_TENANT_ID": "", "O365_TENANTS": entries})
    with pytest.raises(ApiPermanentError) as caught:
        list(client.list_content("Audit.Exchange", window()))
    assert "O365_TENANTS[0].tenantId is not a valid GUID" in str(caught.value)
    assert "O365_TENANT_ID" not in str(caught.value)


def test_subscription_calls_send_their_json_body_and_verbs(api: ScriptedApi, make_env: EnvFactory) -> None:
    started = {"contentType": "Audit.Exchange", "status": "enabled", "webhook": {"address": "https://h/x"}}
    api.script["start"] = [Reply(200, orjson.dumps(started)), Reply(200, b"not json")]
    api.script["stop"] = [Reply(200, b"")]
    api.script["subs"] = [Reply(200, b"[]")]
    client, _ = make_client(api, make_env)
    webhook = {"address": "https://h/x", "authId": "a", "expiration": ""}
    assert client.start_subscription("Audit.Exchange", webhook=webhook) == started
    assert client.start_subscription("Audit.Exchange") is None
    client.stop_subscription("Audit.Exchange")
    subscriptions, date = client.list_subscriptions_with_date()
    assert subscriptions == []
    assert date is not None
    assert abs(parsedate_to_datetime(date) - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5), "the service's clock"
    first, bare, stop, _ = api.seen
    assert (first.method, orjson.loads(first.body)) == ("POST", {"webhook": webhook})
    assert first.headers["Content-Type"] == "application/json; utf-8"
    assert first.headers["Authorization"] == "Bearer token-abc"
    assert bare.body == b""
    assert (stop.method, _route(stop.target)) == ("POST", "stop")


class CountingPacer:
    def __init__(self) -> None:
        self.calls = 0

    def acquire(self) -> float:
        self.calls += 1
        return 0.0


def test_every_request_draws_on_the_shared_publisher_budget(api: ScriptedApi, make_env: EnvFactory) -> None:
    api.script["list"] = [Reply(500, err("AF50000")), page(api, 1)]
    pacer = CountingPacer()
    client, _ = make_client(api, make_env, pacer=pacer)
    assert len(list(client.list_content("Audit.Exchange", window()))) == 1
    assert pacer.calls == len(api.seen) == 2, "a retried request draws again"


def test_requests_are_paced_to_the_configured_rate(api: ScriptedApi, make_env: EnvFactory) -> None:
    """One request a minute: the second waits about a minute (on the injected sleep) before it is sent."""
    api.script["subs"] = [Reply(200, b"[]")]
    client, sleeps = make_client(api, make_env, max_requests_per_minute=1.0)
    client.list_subscriptions()
    client.list_subscriptions()
    assert len(api.seen) == 2
    assert 50.0 < sum(sleeps) <= 60.0


# -- run --resend: rows from the ledger, blobs from the simulator, records to a loopback receiver ------

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def _record(n: int, operation: str = "Send") -> dict[str, object]:
    return {"Id": f"resent-{n}", "Operation": operation, "Workload": "Exchange", "RecordType": 2}


def _row(blob: SimBlob, **changes: object) -> dict[str, object]:
    """A ``done`` ledger row for ``blob`` as ``Ledger.list_done`` yields it."""
    row: dict[str, object] = {
        "ContentId": blob.content_id,
        "ContentType": blob.content_type,
        "ContentUri": blob.content_uri,
        "ContentCreated": blob.created,
        "ContentExpiration": blob.expiration,
        "Records": len(blob.records),
    }
    row.update(changes)
    return {k: v for k, v in row.items() if v is not None}


@pytest.fixture
def resender(
    make_collector: Callable[..., Collector], receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[ResendResult, HttpReceiver]]:
    """Resends the given ledger rows of TENANT (the ledger's query replaced by them) to ``receiver``."""

    def run(rows: list[dict[str, object]], **env: str) -> tuple[ResendResult, HttpReceiver]:
        collector = make_collector(clock=lambda: NOW, SINK_TYPE="http", SINK_URL=receiver.url, **env)
        monkeypatch.setattr(collector.ledger, "list_done", lambda tenant_id, since, until: iter(rows))
        return resend(collector, ResendRequest(NOW - dt.timedelta(days=8), NOW)), receiver

    return run


def _blob(simulator: Simulator, created: dt.datetime, records: list[dict[str, object]] | bytes) -> SimBlob:
    return simulator.add_blob(TID, "Audit.Exchange", created, records, expiration=NOW + dt.timedelta(days=1))


def test_a_ledger_row_lacking_what_builds_a_task_is_reported_and_its_neighbours_resent(
    simulator: Simulator, resender: Callable[..., tuple[ResendResult, HttpReceiver]]
) -> None:
    good = _blob(simulator, NOW - dt.timedelta(hours=3), [_record(1), _record(2)])
    rows = [
        _row(good, ContentId=123),
        _row(good, ContentType="Audit.Nonsense"),
        _row(good, ContentCreated="2026-03-01T00:00:00Z"),
        _row(good),
    ]
    result, receiver = resender(rows)
    assert result.in_range == 4
    assert (result.resent, result.records, result.gone) == (1, 2, 0)
    assert len(result.failed) == 3
    assert all("lacks a content id, type or creation time" in line for line in result.failed)
    assert [r["Id"] for r in receiver.records] == ["resent-1", "resent-2"]


def test_a_resend_fetches_the_uri_the_ledger_kept_and_checks_it_like_the_fetcher(
    simulator: Simulator, resender: Callable[..., tuple[ResendResult, HttpReceiver]]
) -> None:
    kept = _blob(simulator, NOW - dt.timedelta(hours=3), [_record(1)])
    older = _blob(simulator, NOW - dt.timedelta(hours=2), [_record(2)])
    other = _blob(simulator, NOW - dt.timedelta(hours=1), [_record(3)])
    forged = other.content_uri  # names another blob than the row's content id
    rows = [_row(kept), _row(older, ContentUri=None), _row(kept, ContentUri=forged)]
    result, receiver = resender(rows)
    assert sorted(r["Id"] for r in receiver.records) == ["resent-1", "resent-2"], "a row without a URI: canonical"
    assert len(result.failed) == 1
    assert "another content id" in result.failed[0]
    assert simulator.stats.fetches.get(other.content_id, 0) == 0, "the forged URI was not fetched"


def test_a_refused_ledger_uri_is_reported_without_its_userinfo(
    simulator: Simulator, resender: Callable[..., tuple[ResendResult, HttpReceiver]]
) -> None:
    kept = _blob(simulator, NOW - dt.timedelta(hours=3), [_record(1)])
    foreign = kept.content_uri.replace("https://", "https://operator:hunter2-secret@evil.example.", 1)
    result, receiver = resender([_row(kept, ContentUri=foreign)])
    [line] = result.failed
    assert "evil.example" in line
    assert "hunter2-secret" not in line
    assert receiver.records == []


def test_content_at_the_retention_edge_is_resent_and_just_past_it_is_not(
    simulator: Simulator, resender: Callable[..., tuple[ResendResult, HttpReceiver]]
) -> None:
    edge = earliest_listable(NOW, dt.timedelta(days=7))
    at_edge = _blob(simulator, edge, [_record(1)])
    past = _blob(simulator, edge - dt.timedelta(seconds=1), [_record(2)])
    result, receiver = resender([_row(at_edge), _row(past)])
    assert [r["Id"] for r in receiver.records] == ["resent-1"]
    assert (result.resent, result.gone) == (1, 1)
    assert simulator.stats.fetches.get(past.content_id, 0) == 0


def test_content_the_source_answers_as_expired_counts_as_gone_not_failed(
    simulator: Simulator, resender: Callable[..., tuple[ResendResult, HttpReceiver]]
) -> None:
    expired = _blob(simulator, NOW - dt.timedelta(hours=3), [_record(1)])
    simulator.expire(expired.content_id)
    result, receiver = resender([_row(expired)])
    assert (result.gone, result.failed, result.resent) == (1, [], 0)
    assert not result.ok
    assert receiver.records == []


def test_a_resend_applies_the_record_filters_of_the_live_path(
    simulator: Simulator, resender: Callable[..., tuple[ResendResult, HttpReceiver]]
) -> None:
    blob = _blob(simulator, NOW - dt.timedelta(hours=3), [_record(1, "Send"), _record(2, "MailItemsAccessed")])
    result, receiver = resender([_row(blob)], O365_FILTER_EXCLUDE_OPERATIONS="MailItemsAccessed")
    assert [r["Id"] for r in receiver.records] == ["resent-1"]
    assert (result.resent, result.records) == (1, 1)


def test_a_blob_that_is_not_an_array_of_records_is_a_failure_not_a_resend(
    simulator: Simulator, resender: Callable[..., tuple[ResendResult, HttpReceiver]]
) -> None:
    bad = _blob(simulator, NOW - dt.timedelta(hours=3), b'[{"Id":"x","V":NaN,"Big":123456789012345678901234567890}]')
    result, receiver = resender([_row(bad)])
    assert result.resent == 0
    assert receiver.records == [], "nothing of it reached the sink"
    assert len(result.failed) == 1
    assert "NaN" in result.failed[0]


def test_a_resend_without_a_ledger_table_names_the_setting(make_env: EnvFactory) -> None:
    collector = Collector(Settings.from_env(make_env()))  # resources never created: no ledger table
    try:
        with pytest.raises(ConfigError) as caught:
            resend(collector, ResendRequest(NOW - dt.timedelta(days=1)))
    finally:
        collector.close()
    assert caught.value.setting == "O365_LEDGER_TABLE"


def test_tenants_and_sinks_are_chosen_whatever_their_case_and_spacing(make_env: EnvFactory) -> None:
    args = argparse.Namespace(
        resend=True, since=NOW - dt.timedelta(days=1), until=None, sink=None, dry_run=False,
        tenant=[f" {TID} ", TID],
    )  # fmt: skip
    assert request_from_args(args).tenants == (TID,)
    settings = Settings.from_env(make_env(SINK_TYPE="file,http", SINK_URL="https://127.0.0.1:9/x"))
    assert [s.name for s in select_sinks(settings.sinks, " HTTP ")] == ["http"]


def test_a_resend_of_a_tenant_named_in_another_case_resends_it(
    simulator: Simulator, make_collector: Callable[..., Collector], receiver: HttpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    lettered = dataclasses.replace(TENANT, tenant_id="abcdef00-2222-4333-8444-555555555555")
    simulator.add_tenant(lettered)
    created = NOW - dt.timedelta(hours=3)
    blob = simulator.add_blob(lettered.tenant_id, "Audit.Exchange", created, [_record(1)])
    collector = make_collector(
        clock=lambda: NOW, SINK_TYPE="http", SINK_URL=receiver.url, O365_TENANT_ID=lettered.tenant_id
    )
    monkeypatch.setattr(collector.ledger, "list_done", lambda tenant_id, since, until: iter([_row(blob)]))
    result = resend(collector, ResendRequest(NOW - dt.timedelta(days=1), tenants=(lettered.tenant_id.upper(),)))
    assert (result.resent, result.failed) == (1, [])
    assert [r["Id"] for r in receiver.records] == ["resent-1"]


def test_an_instant_without_an_offset_is_utc() -> None:
    assert time_arg("2024-05-01T06:00:00") == dt.datetime(2024, 5, 1, 6, tzinfo=dt.UTC)
    assert time_arg(" 2024-05-01T08:00:00+02:00 ") == dt.datetime(2024, 5, 1, 6, tzinfo=dt.UTC)


def test_the_report_lists_each_failure_and_what_a_dry_run_would_send(capsys: pytest.CaptureFixture[str]) -> None:
    span = (NOW - dt.timedelta(days=1), NOW)
    result = ResendResult(*span, sinks=("http",), in_range=5, resent=3, gone=1, failed=[f"{TID} blob9: broken"])
    assert report(result, dry_run=False, seconds=1.0) == 1
    out, err = capsys.readouterr()
    assert "resent 3 of 5 blobs" in out
    assert f"FAILED {TID} blob9: broken" in err
    assert report(result, dry_run=True, seconds=0.0) == 1
    assert "would resend 3 blobs to http" in capsys.readouterr().out
    assert report(ResendResult(*span, sinks=("http",), in_range=2, resent=2), dry_run=False, seconds=0.0) == 0


def test_a_tenant_whose_records_do_not_go_to_the_chosen_sink_is_skipped_unread(
    simulator: Simulator, make_env: EnvFactory, receiver: HttpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = _blob(simulator, NOW - dt.timedelta(hours=3), [_record(1)])
    entry = {"tenantId": TID, "clientId": TENANT.client_id, "credential": "setting:O365_SECRET_0", "sinks": ["file"]}
    env = make_env(
        SINK_TYPE="file,http", SINK_URL=receiver.url, O365_TENANT_ID="",
        O365_TENANTS=orjson.dumps([entry]).decode(), O365_SECRET_0=TENANT.client_secret,
    )  # fmt: skip
    settings = Settings.from_env(env)
    collector = Collector(settings, clock=lambda: NOW, sinks=[s.create() for s in select_sinks(settings.sinks, "http")])
    try:
        monkeypatch.setattr(collector.ledger, "list_done", lambda tenant_id, since, until: iter([_row(blob)]))
        result = resend(collector, ResendRequest(NOW - dt.timedelta(days=1)))
    finally:
        collector.close()
    assert result.skipped_tenants == [TID]
    assert (result.in_range, result.resent) == (0, 0)
    assert receiver.records == []


def test_a_resent_blob_is_written_where_the_live_path_wrote_it(
    simulator: Simulator, make_collector: Callable[..., Collector], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sinks see the blob's own creation time (a file sink's folders), not the time of the resend."""
    created = NOW - dt.timedelta(days=3)
    blob = _blob(simulator, created, [_record(1)])
    folder = tmp_path / "rebuilt"
    collector = make_collector(clock=lambda: NOW, SINK_TYPE="file", SINK_FILE_DIR=str(folder))
    monkeypatch.setattr(collector.ledger, "list_done", lambda tenant_id, since, until: iter([_row(blob)]))
    assert resend(collector, ResendRequest(NOW - dt.timedelta(days=4))).resent == 1
    (written,) = folder.rglob("*.ndjson")
    assert written.parent.relative_to(folder).parts[-3:] == (f"{created:%Y}", f"{created:%m}", f"{created:%d}")
