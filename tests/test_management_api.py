"""The API client: error mapping (pure), and paging, retries, subscriptions and URL trust against the simulator."""

from __future__ import annotations

import datetime as dt

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
from o365collector.management_api import ManagementApiClient, classify_response
from o365collector.models import CONTENT_TYPES, TimeWindow
from o365collector.simulator import Fault, Simulator, TenantSpec
from tests.support import TENANT, EnvFactory

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


def test_throttling_carries_retry_after_when_sent() -> None:
    error = classify_response(403, err("AF429"), {"Retry-After": "9"}, TID, "fetch x")
    assert isinstance(error, ApiTransientError)
    assert error.throttled
    assert error.retry_after == 9.0


@pytest.fixture
def client(make_env: EnvFactory) -> ManagementApiClient:
    tenant = Settings.from_env(make_env()).tenants[0]
    return ManagementApiClient(tenant, policy=HttpPolicy(backoff_seconds=0.01, max_retry_seconds=10))


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
