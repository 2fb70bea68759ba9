"""The simulator answers like the Management Activity API and Entra's token endpoint (over real HTTPS).

Each test runs its own simulator on 127.0.0.1 with an injected clock: time moves by assignment,
never by sleeping. Facts being reproduced are in management-activity-api.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import email.utils
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientSecretCredential

from o365collector.simulator import Fault, SimBlob, Simulator, SimulatorConfig, TenantSpec, demo_environment
from o365collector.simulator.cli import add_arguments, build
from tests.support import Clock

pytestmark = pytest.mark.integration

TENANT = "0f1e2d3c-4b5a-4697-8877-665544332211"
CLIENT = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
SECRET = "s3cret"
PUBLISHER = TENANT
NOW = dt.datetime(2024, 5, 20, 12, 0, tzinfo=dt.UTC)
SCOPE = "https://manage.office.com/.default"
DENIED = b'{"Message":"Authorization has been denied for this request."}'


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


def new_simulator(clock: Clock, *, seed: int = 1, page_size: int = 5) -> Simulator:
    sim = Simulator(SimulatorConfig(seed=seed, page_size=page_size, latency_seconds=0.0, now=clock))
    sim.add_tenant(TenantSpec(TENANT, CLIENT, SECRET, subscribed=("Audit.Exchange", "DLP.All")))
    return sim


@pytest.fixture
def sim(clock: Clock) -> Iterator[Simulator]:
    simulator = new_simulator(clock).start()
    yield simulator
    simulator.stop()


def session(sim: Simulator) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE from the environment would override verify=
    s.verify = sim.ca_file
    return s


def get_token(sim: Simulator, tenant: str = TENANT, client: str = CLIENT, secret: str = SECRET) -> str:
    response = session(sim).post(
        f"{sim.authority_url}/{tenant}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": client, "client_secret": secret, "scope": SCOPE},
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


class Api:
    """A thin HTTP client of the simulated feed (the collector's real client is tested elsewhere)."""

    def __init__(self, sim: Simulator, token: str, tenant: str = TENANT) -> None:
        self.sim = sim
        self.http = session(sim)
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.root = f"{sim.api_url}/api/v1.0/{tenant}/activity/feed"

    def get(self, url: str, **params: str) -> requests.Response:
        return self.http.get(url, params={"PublisherIdentifier": PUBLISHER, **params})

    def post(self, url: str, **params: str) -> requests.Response:
        return self.http.post(url, params={"PublisherIdentifier": PUBLISHER, **params})

    def content(self, content_type: str = "Audit.Exchange", **params: str) -> requests.Response:
        return self.get(f"{self.root}/subscriptions/content", contentType=content_type, **params)

    def start(self, content_type: str) -> requests.Response:
        return self.post(f"{self.root}/subscriptions/start", contentType=content_type)


@pytest.fixture
def api(sim: Simulator) -> Api:
    return Api(sim, get_token(sim))


def window(start: dt.datetime, end: dt.datetime) -> dict[str, str]:
    return {"startTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "endTime": end.strftime("%Y-%m-%dT%H:%M:%S")}


def error_code(response: requests.Response) -> str:
    return str(response.json()["error"]["code"])


def generate(sim: Simulator, content_type: str = "Audit.Exchange", hours: float = 4, **kwargs: Any) -> list[SimBlob]:
    kwargs.setdefault("blob_every", dt.timedelta(minutes=10))
    return sim.generate(TENANT, content_type, NOW - dt.timedelta(hours=hours), NOW, **kwargs)


def iso_ms(value: dt.datetime) -> str:
    """The descriptor time format: ``2015-05-23T17:35:00.000Z``."""
    return value.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


# -- token endpoint --------------------------------------------------------------------------------


def test_client_secret_credential_gets_a_jwt_shaped_token_for_the_tenant(sim: Simulator) -> None:
    credential = ClientSecretCredential(
        TENANT, CLIENT, SECRET, authority=sim.authority_url, disable_instance_discovery=True,
        connection_verify=sim.ca_file,
    )  # fmt: skip
    token = credential.get_token(SCOPE)
    claims = jwt_claims(token.token)
    assert claims["aud"] == "https://manage.office.com"
    assert (claims["tid"], claims["appid"]) == (TENANT, CLIENT)
    assert claims["roles"] == ["ActivityFeed.Read", "ActivityFeed.ReadDlp"]
    assert claims["exp"] - claims["iat"] == 3599
    assert claims["iat"] == int(NOW.timestamp())
    assert sim.stats.tokens_issued == 1
    assert Api(sim, token.token).get(f"{Api(sim, '').root}/subscriptions/list").status_code == 200


def test_wrong_secret_is_refused_with_aadsts7000215(sim: Simulator) -> None:
    credential = ClientSecretCredential(
        TENANT, CLIENT, "wrong", authority=sim.authority_url, disable_instance_discovery=True,
        connection_verify=sim.ca_file,
    )  # fmt: skip
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        credential.get_token(SCOPE)
    assert sim.stats.tokens_issued == 0


@pytest.mark.parametrize(
    ("tenant", "client", "scope", "status", "error", "code"),
    [
        (TENANT, CLIENT, SCOPE, 200, None, None),
        (TENANT, "00000000-1111-4222-8333-444444444444", SCOPE, 400, "unauthorized_client", "AADSTS700016"),
        ("12345678-1111-4222-8333-444444444444", CLIENT, SCOPE, 400, "invalid_request", "AADSTS90002"),
        (TENANT, CLIENT, "https://manage.office.com", 400, "invalid_scope", "AADSTS1002012"),
        # Microsoft Graph is now a resource the app may hold roles on (test_simulator_graph.py); another is not.
        (TENANT, CLIENT, "https://outlook.office365.com/.default", 400, "invalid_resource", "AADSTS500011"),
        (TENANT, CLIENT, "https://manage-gcc.office.com/.default", 200, None, None),
    ],
)
def test_token_requests_are_checked_like_entra(
    sim: Simulator, tenant: str, client: str, scope: str, status: int, error: str | None, code: str | None
) -> None:
    response = session(sim).post(
        f"{sim.authority_url}/{tenant}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": client, "client_secret": SECRET, "scope": scope},
    )
    assert response.status_code == status
    body = response.json()
    if error is None:
        assert body["token_type"] == "Bearer"
        assert jwt_claims(body["access_token"])["aud"] == scope.removesuffix("/.default")
    else:
        assert body["error"] == error
        assert body["error_description"].startswith(f"{code}: ")


# -- authorization on the feed ---------------------------------------------------------------------


def test_feed_refuses_missing_unknown_and_expired_tokens_with_the_aspnet_401(sim: Simulator, clock: Clock) -> None:
    url = f"{sim.api_url}/api/v1.0/{TENANT}/activity/feed/subscriptions/list"
    token = get_token(sim)
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": token}):
        response = session(sim).get(url, headers=headers)
        assert response.status_code == 401
        assert response.content == DENIED
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert session(sim).get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    clock.now += dt.timedelta(seconds=3599)
    response = session(sim).get(url, headers={"Authorization": f"Bearer {token}"})
    assert (response.status_code, response.content) == (401, DENIED)


def test_token_of_another_tenant_non_guid_tenant_missing_role_and_audit_off_are_refused(sim: Simulator) -> None:
    other = "22222222-3333-4444-8555-666666666666"
    no_role = "33333333-3333-4444-8555-666666666666"
    audit_off = "44444444-3333-4444-8555-666666666666"
    sim.add_tenant(TenantSpec(other, CLIENT, SECRET))
    sim.add_tenant(TenantSpec(no_role, CLIENT, SECRET, roles=("ServiceHealth.Read",)))
    sim.add_tenant(TenantSpec(audit_off, CLIENT, SECRET, audit_enabled=False, subscribed=("Audit.Exchange",)))
    token = get_token(sim)

    response = Api(sim, token, tenant=other).get(f"{Api(sim, token, tenant=other).root}/subscriptions/list")
    assert (response.status_code, error_code(response)) == (401, "AF20010")
    assert TENANT in response.json()["error"]["message"]

    response = Api(sim, token, tenant="contoso.com").content()
    assert (response.status_code, error_code(response)) == (400, "AF20013")

    response = Api(sim, get_token(sim, tenant=no_role), tenant=no_role).content()
    assert (response.status_code, error_code(response)) == (401, "AF10001")
    assert "(ServiceHealth.Read)" in response.json()["error"]["message"]

    response = Api(sim, get_token(sim, tenant=audit_off), tenant=audit_off).content()
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "AF20011",
            "message": f"Microsoft.Office.Compliance.Audit.DataServiceException: Tenant {audit_off} does not exist.",
        }
    }


# -- listing ---------------------------------------------------------------------------------------


def test_listing_pages_with_nextpageuri_until_the_last_page(sim: Simulator, api: Api) -> None:
    blobs = generate(sim, hours=4)  # 24 blobs, 5 per page
    response = api.content(**window(NOW - dt.timedelta(hours=4), NOW))
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    first = response.json()[0]
    assert first == {
        "contentType": "Audit.Exchange",
        "contentId": blobs[0].content_id,
        "contentUri": f"{sim.api_url}/api/v1.0/{TENANT}/activity/feed/audit/{blobs[0].content_id}",
        "contentCreated": iso_ms(blobs[0].created),
        "contentExpiration": iso_ms(blobs[0].created + dt.timedelta(days=7)),
    }
    assert "$" in first["contentId"]
    listed = [item["contentId"] for item in response.json()]
    pages = 1
    while "NextPageUri" in response.headers:
        next_url = response.headers["NextPageUri"]
        query = parse_qs(urlsplit(next_url).query)
        assert next_url.startswith(f"{sim.api_url}/api/v1/{TENANT}/activity/feed/subscriptions/content?")
        assert query["startTime"] == [window(NOW - dt.timedelta(hours=4), NOW)["startTime"]]
        assert query["endTime"] == [window(NOW - dt.timedelta(hours=4), NOW)["endTime"]]
        assert "nextPage" in query
        response = api.http.get(next_url, params={"PublisherIdentifier": PUBLISHER})
        assert response.status_code == 200
        listed += [item["contentId"] for item in response.json()]
        pages += 1
    assert listed == [b.content_id for b in blobs]
    assert pages == 5
    assert response.json(), "the last page is not empty and carries no NextPageUri"
    assert sim.stats.requests["list"] == 5
    assert sim.stats.missing_publisher() == 0


def test_stale_nextpageurl_header_name_can_be_served_instead(sim: Simulator, api: Api) -> None:
    generate(sim, hours=2)
    sim.options.next_page_header = "NextPageUrl"
    response = api.content(**window(NOW - dt.timedelta(hours=2), NOW))
    assert "NextPageUrl" in response.headers
    assert "NextPageUri" not in response.headers


def test_empty_listing_has_no_nextpageuri(sim: Simulator, api: Api) -> None:
    response = api.content(**window(NOW - dt.timedelta(hours=2), NOW))
    assert (response.status_code, response.json()) == (200, [])
    assert "NextPageUri" not in response.headers


def test_bad_nextpage_is_af20031(sim: Simulator, api: Api) -> None:
    response = api.content(**window(NOW - dt.timedelta(hours=2), NOW), nextPage="garbage")
    assert (response.status_code, error_code(response)) == (400, "AF20031")


def test_window_is_start_inclusive_end_exclusive_on_content_created(sim: Simulator, api: Api) -> None:
    at = NOW - dt.timedelta(hours=1)
    blob = sim.add_blob(TENANT, "Audit.Exchange", at, [{"Id": "x"}])
    assert [i["contentId"] for i in api.content(**window(at, NOW)).json()] == [blob.content_id]
    assert api.content(**window(at - dt.timedelta(hours=1), at)).json() == []


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"startTime": "2024-05-20T10:00:00"}, "AF20055"),
        ({"endTime": "2024-05-20T10:00:00"}, "AF20055"),
        ({"startTime": "2024-05-20T10:00:00", "endTime": "2024-05-20T10:00:00"}, "AF20055"),
        ({"startTime": "2024-05-20T11:00:00", "endTime": "2024-05-20T10:00:00"}, "AF20055"),
        ({"startTime": "2024-05-19T09:59:59", "endTime": "2024-05-20T10:00:00"}, "AF20055"),
        ({"startTime": "2024-05-13T11:59:59", "endTime": "2024-05-13T13:00:00"}, "AF20055"),
        ({"startTime": "yesterday", "endTime": "2024-05-20T10:00:00"}, "AF20002"),
    ],
)
def test_invalid_windows_are_refused(sim: Simulator, api: Api, params: dict[str, str], code: str) -> None:
    response = api.content(**params)
    assert (response.status_code, error_code(response)) == (400, code)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-05-20", "2024-05-21"),
        ("2024-05-20T10:00", "2024-05-20T11:00"),
        ("2024-05-20T10:00:00", "2024-05-20T11:00:00"),
        ("2024-05-20T10:00:00Z", "2024-05-20T11:00:00.5Z"),
        ("2024-05-13T12:00:00.0000000Z", "2024-05-14T12:00:00Z"),
    ],
)
def test_documented_time_formats_are_accepted(sim: Simulator, api: Api, start: str, end: str) -> None:
    assert api.content(startTime=start, endTime=end).status_code == 200


def test_omitted_window_means_the_last_24_hours(sim: Simulator, api: Api) -> None:
    old = sim.add_blob(TENANT, "Audit.Exchange", NOW - dt.timedelta(hours=25), [{"Id": "a"}])
    recent = sim.add_blob(TENANT, "Audit.Exchange", NOW - dt.timedelta(hours=23), [{"Id": "b"}])
    listed = [i["contentId"] for i in api.content().json()]
    assert recent.content_id in listed
    assert old.content_id not in listed


def test_listing_delay_hides_a_blob_until_it_is_available(sim: Simulator, api: Api, clock: Clock) -> None:
    (blob,) = sim.generate(
        TENANT, "Audit.Exchange", NOW - dt.timedelta(minutes=30), NOW - dt.timedelta(minutes=20),
        blob_every=dt.timedelta(minutes=10), listing_delay=dt.timedelta(hours=1),
    )  # fmt: skip
    assert api.content(**window(NOW - dt.timedelta(hours=1), NOW)).json() == []
    assert error_code(api.get(blob.content_uri)) == "AF20050"
    clock.now = blob.available_at
    assert [i["contentId"] for i in api.content(**window(NOW - dt.timedelta(hours=1), NOW)).json()] == [blob.content_id]
    assert api.get(blob.content_uri).status_code == 200


def test_query_names_are_case_insensitive_and_v1_paths_work(sim: Simulator, api: Api) -> None:
    blobs = generate(sim, hours=0.5)
    url = f"{sim.api_url}/api/v1/{TENANT}/activity/feed/subscriptions/content"
    params = {"contenttype": "Audit.Exchange", "STARTTIME": "2024-05-20T11:30", "endtime": "2024-05-20T12:00"}
    response = api.http.get(url, params={**params, "publisherIdentifier": PUBLISHER})
    assert [i["contentId"] for i in response.json()] == [b.content_id for b in blobs]
    assert sim.stats.publisher_ids[("list", PUBLISHER)] == 1


def test_foreign_host_option_points_urls_elsewhere(sim: Simulator, api: Api) -> None:
    generate(sim, hours=2)
    sim.options.foreign_host = "evil.example"
    response = api.content(**window(NOW - dt.timedelta(hours=2), NOW))
    assert response.json()[0]["contentUri"].startswith("https://evil.example/api/v1.0/")
    assert response.headers["NextPageUri"].startswith("https://evil.example/api/v1/")


# -- subscriptions ---------------------------------------------------------------------------------


def test_subscription_lifecycle(sim: Simulator, api: Api) -> None:
    response = api.content("Audit.SharePoint", **window(NOW - dt.timedelta(hours=1), NOW))
    assert (response.status_code, error_code(response)) == (400, "AF20022")

    response = api.start("Audit.SharePoint")
    assert response.status_code == 200
    assert response.json() == {"contentType": "Audit.SharePoint", "status": "enabled", "webhook": None}
    assert api.content("Audit.SharePoint", **window(NOW - dt.timedelta(hours=1), NOW)).status_code == 200

    response = api.start("Audit.SharePoint")
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "AF20024",
        "message": "The subscription is already enabled. No property change.",
    }

    assert api.post(f"{api.root}/subscriptions/stop", contentType="Audit.SharePoint").status_code == 200
    response = api.content("Audit.SharePoint", **window(NOW - dt.timedelta(hours=1), NOW))
    assert (response.status_code, error_code(response)) == (400, "AF20023")
    assert api.start("Audit.SharePoint").status_code == 200

    listed = api.get(f"{api.root}/subscriptions/list").json()
    assert [(s["contentType"], s["status"]) for s in listed] == [
        ("Audit.Exchange", "enabled"),
        ("Audit.SharePoint", "enabled"),
        ("DLP.All", "enabled"),
    ]
    response = api.start("Audit.Foo")
    assert (response.status_code, error_code(response)) == (400, "AF20020")


def test_disabled_subscription_refuses_listing_and_fetching_until_restarted(sim: Simulator, api: Api) -> None:
    blob = generate(sim, hours=1)[0]
    sim.disable_subscription(TENANT, "Audit.Exchange")
    response = api.content(**window(NOW - dt.timedelta(hours=1), NOW))
    assert response.json()["error"] == {
        "code": "AF20023",
        "message": "The subscription was disabled by a tenant admin.",
    }
    assert error_code(api.get(blob.content_uri)) == "AF20023"
    assert api.start("Audit.Exchange").status_code == 200
    assert api.get(blob.content_uri).status_code == 200


# -- content ---------------------------------------------------------------------------------------


def test_fetch_serves_the_blob_records_as_json(sim: Simulator, api: Api) -> None:
    blob = generate(sim, hours=1)[0]
    response = api.get(blob.content_uri)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.json() == blob.records
    assert sim.stats.fetches[blob.content_id] == 1
    assert sim.stats.publisher_ids[("fetch", PUBLISHER)] == 1


def test_expired_blob_is_af20051_and_unknown_blob_is_af20050(sim: Simulator, api: Api, clock: Clock) -> None:
    first, second = generate(sim, hours=1)[:2]
    sim.expire(first.content_id)
    assert first.expired
    response = api.get(first.content_uri)
    assert (response.status_code, error_code(response)) == (400, "AF20051")
    assert first.content_id in response.json()["error"]["message"]

    clock.now = second.expiration
    assert second.expired
    api = Api(sim, get_token(sim))  # the first token expired with the clock jump
    assert error_code(api.get(second.content_uri)) == "AF20051"
    assert sim.stats.fetches[first.content_id] == sim.stats.fetches[second.content_id] == 0

    response = api.get(
        f"{api.root}/audit/20240520000000000000000$20240520000000000000000$audit_exchange$Audit_Exchange"
    )
    assert (response.status_code, error_code(response)) == (404, "AF20050")
    response = api.get(f"{api.root}/audit/not%20an%20id")
    assert (response.status_code, error_code(response)) == (400, "AF20052")


def test_hand_made_raw_bodies_are_served_verbatim(sim: Simulator, api: Api) -> None:
    blob = sim.add_blob(TENANT, "Audit.Exchange", NOW - dt.timedelta(minutes=5), b'[{"Id": "1"}, {"Id": ')
    assert api.get(blob.content_uri).content == b'[{"Id": "1"}, {"Id": '


def test_dlp_detail_needs_activityfeed_readdlp(sim: Simulator, api: Api) -> None:
    without = "55555555-3333-4444-8555-666666666666"
    sim.add_tenant(TenantSpec(without, CLIENT, SECRET, roles=("ActivityFeed.Read",), subscribed=("DLP.All",)))
    full = generate(sim, "DLP.All", hours=0.5, records_per_blob=(3, 3))[0]
    redacted = sim.generate(without, "DLP.All", NOW - dt.timedelta(minutes=30), NOW, blob_every=dt.timedelta(hours=1))
    assert b"SensitiveInformationDetections" in api.get(full.content_uri).content
    restricted = Api(sim, get_token(sim, tenant=without), tenant=without)
    body = restricted.get(redacted[0].content_uri).content
    assert b"SensitiveInformationDetections" not in body
    assert all(r.get("SensitiveInfoDetectionIsIncluded") is False for r in orjson.loads(body))


# -- faults ----------------------------------------------------------------------------------------


def test_throttle_fault_answers_403_af429_for_the_first_n_requests(sim: Simulator, api: Api) -> None:
    blob = generate(sim, hours=1)[0]
    sim.faults.add(Fault(kind="throttle", route="fetch", count=2, retry_after=7))
    for _ in range(2):
        response = api.get(blob.content_uri)
        assert response.status_code == 403
        assert response.json() == {
            "error": {"code": "AF429", "message": f"Too many requests. Method=GetBlob, PublisherId={PUBLISHER}"}
        }
        assert response.headers["Retry-After"] == "7"
    assert api.get(blob.content_uri).status_code == 200
    assert api.content(**window(NOW - dt.timedelta(hours=1), NOW)).status_code == 200  # other routes untouched
    assert sim.stats.faults["throttle"] == 2
    assert sim.stats.responses[403] == 2


@pytest.mark.parametrize(
    ("kind", "status", "marker"),
    [
        ("server_error", 500, b'"AF50000"'),
        ("http429", 429, b'"AF429"'),
        ("unavailable", 503, b"Service Unavailable"),
        ("request_timeout", 408, b"Request Timeout"),
    ],
)
def test_error_faults(sim: Simulator, api: Api, kind: Any, status: int, marker: bytes) -> None:
    sim.faults.add(Fault(kind=kind, route="list", count=1))
    response = api.content(**window(NOW - dt.timedelta(hours=1), NOW))
    assert response.status_code == status
    assert marker in response.content
    assert api.content(**window(NOW - dt.timedelta(hours=1), NOW)).status_code == 200


def test_drop_fault_closes_the_connection_without_an_answer(sim: Simulator, api: Api) -> None:
    sim.faults.add(Fault(kind="drop", route="list", count=1))
    with pytest.raises(requests.ConnectionError):
        api.content(**window(NOW - dt.timedelta(hours=1), NOW))
    assert api.content(**window(NOW - dt.timedelta(hours=1), NOW)).status_code == 200
    assert sim.stats.faults["drop"] == 1


def test_slow_fault_still_answers(sim: Simulator, api: Api) -> None:
    sim.faults.add(Fault(kind="slow", route="any", delay_seconds=0.01, count=1))
    response = api.get(f"{api.root}/subscriptions/list")
    assert response.status_code == 200
    assert sim.stats.faults["slow"] == 1


def test_rate_faults_are_seeded(clock: Clock) -> None:
    def outcomes(seed: int) -> list[int]:
        with new_simulator(clock, seed=seed) as simulator:
            simulator.faults.add(Fault(kind="server_error", route="list", rate=0.5))
            client = Api(simulator, get_token(simulator))
            return [client.content(**window(NOW - dt.timedelta(hours=1), NOW)).status_code for _ in range(40)]

    first = outcomes(3)
    assert first == outcomes(3)
    assert 8 <= first.count(500) <= 32
    assert set(first) == {200, 500}


def test_token_route_faults_use_the_oauth_error_shape(sim: Simulator) -> None:
    sim.faults.add(Fault(kind="throttle", route="token", count=1))
    response = session(sim).post(f"{sim.authority_url}/{TENANT}/oauth2/v2.0/token", data={})
    assert response.status_code == 429
    assert response.json()["error"] == "temporarily_unavailable"
    assert get_token(sim)


# -- data ------------------------------------------------------------------------------------------


def test_same_seed_gives_the_same_blobs_and_records(clock: Clock) -> None:
    def make(seed: int) -> list[tuple[str, list[dict[str, Any]]]]:
        simulator = new_simulator(clock, seed=seed)
        return [(b.content_id, b.records) for b in generate(simulator, "Audit.SharePoint", hours=2)]

    assert make(1) == make(1)
    assert [cid for cid, _ in make(1)] != [cid for cid, _ in make(2)]


def test_generated_records_look_real(sim: Simulator) -> None:
    blobs = generate(sim, "Audit.AzureActiveDirectory", hours=6, records_per_blob=(5, 20))
    records = [(b, r) for b in blobs for r in b.records]
    assert len({r["Id"] for _, r in records}) == len(records)
    assert all(r["OrganizationId"] == TENANT for _, r in records)
    for blob, record in records:
        created = dt.datetime.strptime(record["CreationTime"], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
        assert blob.created - dt.timedelta(minutes=16) < created < blob.created
    assert len({r["UserId"] for _, r in records}) > 5
    assert len({r["Operation"] for _, r in records}) > 1
    sizes = [len(orjson.dumps(r)) for _, r in records]
    assert 500 < sum(sizes) / len(sizes) < 5000


def test_duplicate_rate_repeats_record_ids(sim: Simulator) -> None:
    blobs = generate(sim, hours=2, records_per_blob=(10, 10), duplicate_rate=0.3)
    ids = [r["Id"] for b in blobs for r in b.records]
    assert len(set(ids)) < len(ids)


def test_date_header_follows_the_clock_and_skew(sim: Simulator, api: Api) -> None:
    sim.options.date_skew = dt.timedelta(minutes=-10)
    response = api.get(f"{api.root}/subscriptions/list")
    assert email.utils.parsedate_to_datetime(response.headers["Date"]) == NOW - dt.timedelta(minutes=10)


# -- packaging and CLI -----------------------------------------------------------------------------


def test_only_loopback_and_never_azure_functions(sim: Simulator) -> None:
    assert urlsplit(sim.api_url).hostname == "127.0.0.1"
    code = "import sys, o365collector.simulator; assert 'azure.functions' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_cli_builds_a_demo_tenant_and_prints_its_environment() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--days", "0.25", "--blob-every-minutes", "30", "--throttle-rate", "0.1"])
    sim, spec = build(args, NOW)
    assert {b.content_type for b in sim.blobs(spec.tenant_id)} == {
        "Audit.AzureActiveDirectory", "Audit.Exchange", "Audit.SharePoint", "Audit.General", "DLP.All"
    }  # fmt: skip
    assert len(sim.faults.active) == 3
    with sim:
        env = demo_environment(sim, spec)
        assert env == {
            "O365_API_URL": sim.api_url,
            "O365_AUTHORITY_HOST": sim.authority_url,
            "REQUESTS_CA_BUNDLE": sim.ca_file,
            "O365_TENANT_ID": spec.tenant_id,
            "O365_CLIENT_ID": spec.client_id,
            "O365_CLIENT_SECRET": spec.client_secret,
        }


def test_quota_answers_af429_beyond_the_per_minute_limit_per_publisher_and_counts_every_minute(
    sim: Simulator, api: Api, clock: Clock
) -> None:
    """[REF] §2: the quota is per PublisherIdentifier per minute; beyond it, 403 AF429 (refused calls count too)."""
    sim.options.quota_per_minute = 3
    span = window(NOW - dt.timedelta(hours=1), NOW)
    clock.now = NOW.replace(second=10)
    assert [api.content(**span).status_code for _ in range(4)] == [200, 200, 200, 403]
    refused = api.content(**span)
    assert refused.json() == {
        "error": {"code": "AF429", "message": f"Too many requests. Method=ListBlobs, PublisherId={PUBLISHER}"}
    }
    # Another publisher has its own quota; calls without one share the zero-GUID pool.
    other = "5d4c3b2a-1908-4e7f-a6b5-c4d3e2f1a0b9"
    mine = {"PublisherIdentifier": other, "contentType": "Audit.Exchange", **span}
    assert api.http.get(f"{api.root}/subscriptions/content", params=mine).status_code == 200
    bare = api.http.get(f"{api.root}/subscriptions/content", params={"contentType": "Audit.Exchange", **span})
    assert bare.status_code == 200
    # The next minute of the simulator clock starts afresh.
    clock.now = NOW.replace(minute=1, second=0)
    assert api.content(**span).status_code == 200
    minutes = sim.stats.quota.per_minute(PUBLISHER)
    assert minutes == {(PUBLISHER, NOW.replace(second=0)): 5, (PUBLISHER, NOW.replace(minute=1, second=0)): 1}
    assert sim.stats.quota.max_per_minute(PUBLISHER) == 5
    assert sim.stats.quota.per_minute("00000000-0000-0000-0000-000000000000") == {
        ("00000000-0000-0000-0000-000000000000", NOW.replace(second=0)): 1
    }
    assert sim.stats.quota.max_per_minute(other) == 1
    assert sim.stats.faults["quota"] == 2


def test_quota_is_off_by_default_but_counts_are_kept(sim: Simulator, api: Api) -> None:
    span = window(NOW - dt.timedelta(hours=1), NOW)
    assert all(api.content(**span).status_code == 200 for _ in range(30))
    assert sim.stats.quota.max_per_minute() == 30
    assert sim.stats.responses[403] == 0


def test_simulate_command_enforces_the_real_2000_per_minute_quota_by_default() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).quota_per_minute == 2000
    with pytest.raises(SystemExit):
        parser.parse_args(["--quota-per-minute", "-1"])
    sim, _ = build(parser.parse_args(["--quota-per-minute", "0", "--days", "0.01", "--no-azurite"]), NOW)
    assert sim.options.quota_per_minute == 0
