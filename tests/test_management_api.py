"""The API client: error mapping (pure), and paging, retries, subscriptions and URL trust against the simulator."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from o365collector.config import HttpPolicy, Settings
from o365collector.errors import (
    ApiPermanentError,
    ApiTransientError,
    ContentUnavailableError,
    SubscriptionMissingError,
    UntrustedUrlError,
)
from o365collector.management_api import ManagementApiClient, classify_response, content_uri_problem, same_origin
from o365collector.models import CONTENT_TYPES, TimeWindow
from o365collector.simulator import Fault, Simulator, TenantSpec
from tests.loopback import LoopbackService, OwnedHandler
from tests.support import TENANT, EnvFactory, now

TID = TENANT.tenant_id


def err(code: str, message: str = "m") -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


@pytest.mark.parametrize(
    ("status", "body", "kind", "fragment"),
    [
        (403, err("AF429", "Too many requests. Method=GetBlob, PublisherId=x"), ApiTransientError, "AF429"),
        (429, b"", ApiTransientError, "429"),
        (408, b"", ApiTransientError, "408"),
        (500, err("AF50000"), ApiTransientError, "AF50000"),
        (503, b"<html>unavailable</html>", ApiTransientError, "503"),
        (400, err("AF20022"), SubscriptionMissingError, "no subscription"),
        (400, err("AF20023", "The subscription was disabled by a tenant admin."), ApiPermanentError, "re-enable"),
        (401, err("AF10001"), ApiPermanentError, "ActivityFeed.Read"),
        (400, err("AF20051"), ContentUnavailableError, "expired"),
        (404, err("AF20050"), ContentUnavailableError, "does not exist"),
        (400, err("AF20055"), ApiPermanentError, "clock"),
        (
            400,
            err("AF20011", f"Microsoft.Office.Compliance.Audit.DataServiceException: Tenant {TID} does not exist."),
            ApiPermanentError,
            "unified audit logging",
        ),
        (401, b'{"Message":"Authorization has been denied for this request."}', ApiTransientError, "refused"),
        (400, err("AF20099", "something new"), ApiPermanentError, "something new"),
    ],
)
def test_service_answers_map_to_errors_that_say_what_to_do(
    status: int, body: bytes, kind: type[Exception], fragment: str
) -> None:
    error = classify_response(status, body, {}, TID, "list Audit.Exchange")
    assert type(error) is kind
    assert fragment in str(error)


ASPNET_404 = b'{"Message":"No HTTP resource was found that matches the request URI \'/api/v1.0/x\'."}'


@pytest.mark.parametrize(
    ("status", "body", "kind", "fragment"),
    [
        (404, err("AF20050", "The specified content (x) does not exist."), ContentUnavailableError, "does not exist"),
        (400, err("AF20051", "Content with the key x has already expired."), ContentUnavailableError, "expired"),
        (404, ASPNET_404, ApiTransientError, "only AF20050/AF20051 mean the content is gone"),
        (404, b"", ApiTransientError, "retried"),
        (404, b"<html>Not Found</html>", ApiTransientError, "retried"),
    ],
)
def test_only_the_af_codes_for_gone_content_mean_a_blob_is_lost(
    status: int, body: bytes, kind: type[Exception], fragment: str
) -> None:
    """A 404 without an AF code is not the content store saying the blob is gone: it is retried, not lost."""
    error = classify_response(status, body, {}, TID, "fetch 2026$abc")
    assert type(error) is kind
    assert fragment in str(error)


@pytest.mark.parametrize(
    ("url", "api", "same"),
    [
        ("https://manage.office.com:443/api/v1.0/x", "https://manage.office.com", True),
        ("https://manage.office.com/api/v1.0/x", "https://manage.office.com:443", True),
        ("https://MANAGE.office.com/api/v1.0/x", "https://manage.office.com", True),
        ("https://127.0.0.1:8443/api", "https://127.0.0.1:8443", True),
        ("https://manage.office.com:8443/api/v1.0/x", "https://manage.office.com", False),
        ("http://manage.office.com/api/v1.0/x", "https://manage.office.com", False),
        ("http://manage.office.com:443/api/v1.0/x", "https://manage.office.com", False),
        ("https://evil.example/api/v1.0/x", "https://manage.office.com", False),
        ("https://manage.office.com.evil.example/api", "https://manage.office.com", False),
        ("https://user:pw@manage.office.com/api/v1.0/x", "https://manage.office.com", False),
        ("https://manage.office.com@evil.example/api", "https://manage.office.com", False),
        ("https://manage.office.com:bad/api", "https://manage.office.com", False),
    ],
)
def test_the_token_goes_only_to_the_api_origin_whatever_the_spelling_of_its_port(
    url: str, api: str, same: bool
) -> None:
    assert same_origin(urlsplit(url), urlsplit(api)) is same


API = "https://manage.office.com"
CID = "20260301$20260301$abc$Audit_Exchange$na0034"
CANONICAL = f"{API}/api/v1.0/{TID}/activity/feed/audit/{CID}"


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        (CANONICAL, None),
        (f"{API}/api/v1.0/{TID}/activity/feed/Audit/{CID}", None),
        (f"{API}/API/V1.0/{TID.upper()}/Activity/Feed/AUDIT/{CID}", None),
        (f"{API}:443/api/v1.0/{TID}/activity/feed/audit/{CID}", None),
        (f"{API}/api/v1.0/{TID}/activity/feed/audit/{CID.replace('$', '%24')}", None),
        (f"{API}/api/v1/{TID}/activity/feed/audit/{CID}", None),
        (f"{API}/api/v1.0/{TID}/activity/feed/subscriptions/list", "not a content path"),
        (f"{API}/api/v1.0/{TID}/activity/feed/subscriptions/content", "not a content path"),
        (f"{API}/api/v1.0/{TID}/activity/feed/audit/{CID}/x", "not a content path"),
        (f"{API}/api/v2.0/{TID}/activity/feed/audit/{CID}", "not a content path"),
        (f"{API}/api/v1.0/{TID}/activity/feed/audit/other-blob", "another content id"),
        (f"{API}/api/v1.0/{TID}/activity/feed/audit/{CID.upper()}", "another content id"),
        (f"{API}/api/v1.0/99999999-2222-4333-8444-555555555555/activity/feed/audit/{CID}", "another tenant"),
        (f"{CANONICAL}?nextPage=1", "query"),
        (f"{CANONICAL}#frag", "query or a fragment"),
        (f"https://evil.example/api/v1.0/{TID}/activity/feed/audit/{CID}", "evil.example"),
        (f"{API}:8443/api/v1.0/{TID}/activity/feed/audit/{CID}", "not to the API host"),
        (f"{API}/api/v1.0/{TID}/activity/feed/audit/../audit/{CID}", "not a content path"),
        (f"{API}/x/api/v1.0/{TID}/activity/feed/audit/{CID}", "not a content path"),
    ],
)
def test_a_content_uri_must_be_the_content_path_of_the_message_own_tenant_and_id(
    uri: str, problem: str | None
) -> None:
    found = content_uri_problem(uri, api_url=API, tenant_id=TID, content_id=CID)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


@pytest.mark.parametrize("content_id", ["", ".", "..", "a/b", "a\\b", "a?b", "a#b", "a\nb", "a\x1bb"])
def test_a_content_id_no_blob_has_is_refused(content_id: str) -> None:
    uri = f"{API}/api/v1.0/{TID}/activity/feed/audit/{content_id}"
    assert content_uri_problem(uri, api_url=API, tenant_id=TID, content_id=content_id) is not None


def test_an_api_url_with_a_path_prefix_roots_the_content_path() -> None:
    proxy = "https://proxy.example/o365"
    uri = f"{proxy}/api/v1.0/{TID}/activity/feed/audit/{CID}"
    assert content_uri_problem(uri, api_url=proxy, tenant_id=TID, content_id=CID) is None
    bare = f"https://proxy.example/api/v1.0/{TID}/activity/feed/audit/{CID}"
    assert content_uri_problem(bare, api_url=proxy, tenant_id=TID, content_id=CID) is not None


def test_throttling_carries_retry_after_when_sent() -> None:
    error = classify_response(403, err("AF429"), {"Retry-After": "9"}, TID, "fetch x")
    assert isinstance(error, ApiTransientError)
    assert error.throttled
    assert error.retry_after == 9.0


@pytest.fixture
def client(make_env: EnvFactory) -> ManagementApiClient:
    tenant = Settings.from_env(make_env()).tenants[0]
    return ManagementApiClient(tenant, policy=HttpPolicy(backoff_seconds=0.01, max_retry_seconds=10))



def last_day() -> TimeWindow:
    return TimeWindow(now() - dt.timedelta(hours=23), now())


def generate(sim: Simulator, content_type: str = "Audit.Exchange", blobs_every_minutes: int = 60) -> None:
    sim.generate(
        TID,
        content_type,
        now() - dt.timedelta(hours=22),
        now() - dt.timedelta(minutes=5),
        blob_every=dt.timedelta(minutes=blobs_every_minutes),
    )


def test_listing_follows_every_page(simulator: Simulator, client: ManagementApiClient) -> None:
    generate(simulator, blobs_every_minutes=30)  # ~43 blobs, 7 per page
    listed = [b.content_id for b in client.list_content("Audit.Exchange", last_day())]
    assert listed == [b.content_id for b in simulator.blobs(TID, "Audit.Exchange")]
    assert len(listed) > 3 * 7


def test_listing_follows_the_stale_nextpageurl_header_too(simulator: Simulator, client: ManagementApiClient) -> None:
    simulator.options.next_page_header = "NextPageUrl"
    generate(simulator, blobs_every_minutes=30)
    assert len(list(client.list_content("Audit.Exchange", last_day()))) == len(simulator.blobs(TID, "Audit.Exchange"))


def test_every_call_carries_the_publisher_identifier(simulator: Simulator, client: ManagementApiClient) -> None:
    generate(simulator, blobs_every_minutes=30)
    blobs = list(client.list_content("Audit.Exchange", last_day()))
    client.fetch_content(blobs[0].content_uri)
    assert simulator.stats.requests_without_publisher == 0
    assert simulator.stats.requests_by_route["list"] >= 4
    assert simulator.stats.requests_by_route["fetch"] == 1


def test_fetch_returns_the_records_exactly_as_served(simulator: Simulator, client: ManagementApiClient) -> None:
    generate(simulator)
    blob = simulator.blobs(TID, "Audit.Exchange")[0]
    assert client.fetch_content(blob.content_uri) == blob.records


def test_throttling_and_server_errors_are_retried(simulator: Simulator, client: ManagementApiClient) -> None:
    generate(simulator)
    simulator.faults.add(Fault(kind="throttle", route="list", count=2))
    simulator.faults.add(Fault(kind="server_error", route="fetch", count=1))
    simulator.faults.add(Fault(kind="unavailable", route="fetch", count=1))
    blobs = list(client.list_content("Audit.Exchange", last_day()))
    assert client.fetch_content(blobs[0].content_uri)
    assert client.stats.throttled == 2
    assert client.stats.retries == 4


def test_a_bare_404_on_a_content_get_is_retried_and_the_blob_fetched(
    simulator: Simulator, client: ManagementApiClient
) -> None:
    generate(simulator)
    blob = simulator.blobs(TID, "Audit.Exchange")[0]
    simulator.faults.add(Fault(kind="bare_404", route="fetch", count=2))
    assert client.fetch_content(blob.content_uri) == blob.records
    assert client.stats.retries == 2


def test_a_bare_404_that_persists_is_transient_not_a_loss(simulator: Simulator, make_env: EnvFactory) -> None:
    generate(simulator)
    blob = simulator.blobs(TID, "Audit.Exchange")[0]
    tenant = Settings.from_env(make_env()).tenants[0]
    bounded = ManagementApiClient(tenant, policy=HttpPolicy(max_attempts=2, backoff_seconds=0.01))
    simulator.faults.add(Fault(kind="bare_404", route="fetch"))
    with pytest.raises(ApiTransientError, match="404"):
        bounded.fetch_content(blob.content_uri)


def test_dropped_connections_are_retried(simulator: Simulator, client: ManagementApiClient) -> None:
    generate(simulator)
    simulator.faults.add(Fault(kind="drop", route="list", count=1))
    assert list(client.list_content("Audit.Exchange", last_day()))
    assert client.stats.retries == 1


def test_retries_are_bounded(simulator: Simulator, make_env: EnvFactory) -> None:
    tenant = Settings.from_env(make_env()).tenants[0]
    bounded = ManagementApiClient(tenant, policy=HttpPolicy(max_attempts=3, backoff_seconds=0.01))
    simulator.faults.add(Fault(kind="server_error", route="list"))  # every request
    with pytest.raises(ApiTransientError, match="AF50000"):
        list(bounded.list_content("Audit.Exchange", last_day()))
    assert simulator.stats.requests_by_route["list"] == 3


def test_missing_subscription_is_started_and_the_listing_retried(simulator: Simulator, make_env: EnvFactory) -> None:
    spec = TenantSpec(
        tenant_id="22222222-2222-4333-8444-555555555555",
        client_id=TENANT.client_id,
        client_secret=TENANT.client_secret,
        roles=TENANT.roles,
        audit_enabled=True,
        subscribed=(),
    )
    simulator.add_tenant(spec)
    tenant = Settings.from_env(make_env(O365_TENANT_ID=spec.tenant_id)).tenants[0]
    api = ManagementApiClient(tenant, policy=HttpPolicy(backoff_seconds=0.01))
    assert list(api.list_content("Audit.General", last_day())) == []
    assert {s["contentType"]: s["status"] for s in api.list_subscriptions()} == {"Audit.General": "enabled"}
    api.start_subscription("Audit.General")  # already enabled: 400 AF20024 counts as success


def test_disabled_subscription_is_a_clear_permanent_error(simulator: Simulator, client: ManagementApiClient) -> None:
    simulator.disable_subscription(TID, "Audit.SharePoint")
    with pytest.raises(ApiPermanentError, match=r"AF20023.*re-enable"):
        list(client.list_content("Audit.SharePoint", last_day()))


def test_expired_content_is_reported_as_unavailable(simulator: Simulator, client: ManagementApiClient) -> None:
    generate(simulator)
    blob = simulator.blobs(TID, "Audit.Exchange")[0]
    simulator.expire(blob.content_id)
    with pytest.raises(ContentUnavailableError, match="AF20051"):
        client.fetch_content(blob.content_uri)


def test_urls_pointing_to_another_host_are_refused_and_get_no_token(
    simulator: Simulator, client: ManagementApiClient
) -> None:
    generate(simulator, blobs_every_minutes=30)
    simulator.options.foreign_host = "evil.example"
    blobs = list(client.list_content("Audit.Exchange", TimeWindow(now() - dt.timedelta(hours=2), now())))
    with pytest.raises(UntrustedUrlError, match=r"evil\.example"):
        client.fetch_content(blobs[0].content_uri)
    with pytest.raises(UntrustedUrlError, match="NextPageUri"):
        list(client.list_content("Audit.Exchange", last_day()))


def test_wrong_secret_says_so(simulator: Simulator, make_env: EnvFactory) -> None:
    tenant = Settings.from_env(make_env(O365_CLIENT_SECRET="wrong")).tenants[0]
    api = ManagementApiClient(tenant, policy=HttpPolicy(backoff_seconds=0.01))
    with pytest.raises(ApiPermanentError, match=r"AADSTS7000215.*client secret is wrong"):
        list(api.list_content("Audit.Exchange", last_day()))


def test_missing_permission_says_what_to_grant(simulator: Simulator, make_env: EnvFactory) -> None:
    spec = TenantSpec(
        tenant_id="33333333-2222-4333-8444-555555555555",
        client_id=TENANT.client_id,
        client_secret=TENANT.client_secret,
        roles=("ServiceHealth.Read",),
        audit_enabled=True,
        subscribed=CONTENT_TYPES,
    )
    simulator.add_tenant(spec)
    tenant = Settings.from_env(make_env(O365_TENANT_ID=spec.tenant_id)).tenants[0]
    api = ManagementApiClient(tenant, policy=HttpPolicy(backoff_seconds=0.01))
    with pytest.raises(ApiPermanentError, match=r"AF10001.*admin consent"):
        list(api.list_content("Audit.Exchange", last_day()))


def test_audit_logging_off_says_how_to_turn_it_on(simulator: Simulator, make_env: EnvFactory) -> None:
    spec = TenantSpec(
        tenant_id="44444444-2222-4333-8444-555555555555",
        client_id=TENANT.client_id,
        client_secret=TENANT.client_secret,
        roles=TENANT.roles,
        audit_enabled=False,
        subscribed=CONTENT_TYPES,
    )
    simulator.add_tenant(spec)
    tenant = Settings.from_env(make_env(O365_TENANT_ID=spec.tenant_id)).tenants[0]
    api = ManagementApiClient(tenant, policy=HttpPolicy(backoff_seconds=0.01))
    with pytest.raises(ApiPermanentError, match=r"unified audit logging.*60 minutes"):
        list(api.list_content("Audit.Exchange", last_day()))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'[{"Id": "a", "Big": 123456789012345678901234567890, "F": 1.5}]', 123456789012345678901234567890),
        (b'[{"Id": "a", "Big": 18446744073709551615}]', 18446744073709551615),
        (b'[{"Id": "a", "Big": "12345678901234567890123"}]', "12345678901234567890123"),
    ],
)
def test_numbers_keep_their_exact_value_and_type(body: bytes, expected: object) -> None:
    from o365collector.management_api import _json_array

    (record,) = _json_array(body, "blob")
    assert record["Big"] == expected
    assert type(record["Big"]) is type(expected)


@pytest.mark.parametrize("body", [b'[{"Id": "a"', b'[{"Id": "\xff\xfe"}]', b'{"Id": "a"}'])
def test_malformed_blobs_are_permanent_errors_naming_the_blob(body: bytes) -> None:
    from o365collector.management_api import _json_array

    with pytest.raises(ApiPermanentError, match="content blob abc"):
        _json_array(body, "content blob abc")


def test_an_unknown_tenant_is_a_permanent_sign_in_error(simulator: Simulator, make_env: EnvFactory) -> None:
    tenant = Settings.from_env(make_env(O365_TENANT_ID="99999999-2222-4333-8444-555555555555")).tenants[0]
    api = ManagementApiClient(tenant, policy=HttpPolicy(backoff_seconds=0.01))
    with pytest.raises(ApiPermanentError, match=r"AADSTS90002.*O365_TENANT_ID"):
        api.sign_in()


class RepeatingFeed(LoopbackService):
    """A listing endpoint whose every page names the same NextPageUri, ``repeats`` times, then ends.

    A client without the repeated-page guard would follow it round and yield the same entries again.
    """

    def __init__(self, repeats: int) -> None:
        self.repeats = repeats
        self.pages_served = 0
        self._lock = threading.Lock()
        super().__init__(_RepeatingFeedHandler, tls=True, timeout=10.0, name="repeating-feed")


class _RepeatingFeedHandler(OwnedHandler):
    def do_GET(self) -> None:
        feed: RepeatingFeed = self.owner  # type: ignore[assignment]
        with feed._lock:
            feed.pages_served += 1
            page = feed.pages_served
        root = f"{feed.base_url}/api/v1.0/{TID}/activity/feed"
        content_id = f"repeated{page:04d}$repeated{page:04d}$audit_exchange$Audit_Exchange"
        created = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        entry = {
            "contentType": "Audit.Exchange",
            "contentId": content_id,
            "contentUri": f"{root}/audit/{content_id}",
            "contentCreated": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "contentExpiration": (created + dt.timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        body = orjson.dumps([entry])
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if page <= feed.repeats:
            self.send_header("NextPageUri", f"{root}/subscriptions/content?contentType=Audit.Exchange&nextPage=same")
        self.end_headers()
        self.wfile.write(body)


def test_a_next_page_uri_the_service_repeats_ends_the_listing_instead_of_looping(
    simulator: Simulator, make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with RepeatingFeed(repeats=4) as feed:
        # Tokens from the simulator, the listing from the repeating feed: trust both certificates.
        bundle = tmp_path / "trust.pem"
        bundle.write_bytes(Path(simulator.ca_file).read_bytes() + Path(feed.ca_file).read_bytes())
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        tenant = Settings.from_env(make_env(O365_API_URL=feed.base_url, REQUESTS_CA_BUNDLE=str(bundle))).tenants[0]
        api = ManagementApiClient(tenant, policy=HttpPolicy(backoff_seconds=0.01))
        listed: list[str] = []
        with pytest.raises(ApiTransientError, match="repeated a page"):
            listed.extend(b.content_id for b in api.list_content("Audit.Exchange", last_day()))
        assert feed.pages_served == 2, "the first page, then the page that named itself again"
        assert len(listed) == 2, "no entry was listed twice"
