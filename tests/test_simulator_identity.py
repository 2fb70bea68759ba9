"""The simulator's managed identity endpoint (App Service protocol) and its check of federated assertions,
spoken to over real HTTP on 127.0.0.1 the way msal and azure-identity speak to them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import jwt
import pytest
import requests

from o365collector.simulator import Simulator
from o365collector.simulator.identity import FederatedCredentialSpec, ManagedIdentitySpec, MultiTenantAppSpec
from tests.support import TENANT

IDENTITY = ManagedIdentitySpec(
    client_id="0a0a0a0a-1111-4222-8333-444444444444",
    object_id="0b0b0b0b-5555-4666-8777-888888888888",
    tenant_id=TENANT.tenant_id,
    roles=("ActivityFeed.Read",),
)
APP = "0c0c0c0c-9999-4aaa-8bbb-cccccccccccc"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def endpoint(simulator: Simulator) -> dict[str, str]:
    simulator.identity.add_managed_identity(IDENTITY)
    fic = FederatedCredentialSpec(IDENTITY.issuer, IDENTITY.object_id)
    simulator.identity.add_app(MultiTenantAppSpec(APP, TENANT.tenant_id, (fic,), {TENANT.tenant_id: IDENTITY.roles}))
    return simulator.identity.environment()


def mi_token(env: dict[str, str], audience: str, **changes: Any) -> requests.Response:
    params = {"api-version": "2019-08-01", "resource": audience, "client_id": IDENTITY.client_id}
    headers = {"X-IDENTITY-HEADER": env["IDENTITY_HEADER"]}
    params.update({k: v for k, v in changes.items() if k != "header"})
    if "header" in changes:
        headers = {"X-IDENTITY-HEADER": changes["header"]} if changes["header"] else {}
    return requests.get(env["IDENTITY_ENDPOINT"], params=params, headers=headers, timeout=10)


def test_the_endpoint_is_plain_http_on_loopback(endpoint: dict[str, str]) -> None:
    assert endpoint["IDENTITY_ENDPOINT"].startswith("http://127.0.0.1:")


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"header": ""}, 401),
        ({"header": "a-guessed-header"}, 401),
        ({"api-version": "2017-09-01"}, 400),
        ({"client_id": "99999999-9999-4999-8999-999999999999"}, 400),
        ({"resource": "https://outlook.office365.com"}, 400),  # a resource the endpoint serves no token for
    ],
)
def test_a_request_app_service_would_refuse_is_refused(
    endpoint: dict[str, str], changes: dict[str, str], status: int
) -> None:
    answer = mi_token(endpoint, "https://manage.office.com", **changes)
    assert answer.status_code == status
    assert set(answer.json()) >= {"statusCode", "message"}  # msal turns it into an error with this text


def test_an_api_token_carries_the_roles_granted_to_the_identity(simulator: Simulator, endpoint: dict[str, str]) -> None:
    answer = mi_token(endpoint, "https://manage.office.com")
    assert answer.status_code == 200
    body = answer.json()
    assert int(body["expires_on"]) > dt.datetime.now(dt.UTC).timestamp()
    # The feed accepts it for the identity's own tenant.
    listed = requests.get(
        f"{simulator.api_url}/api/v1.0/{TENANT.tenant_id}/activity/feed/subscriptions/list",
        headers={"Authorization": f"Bearer {body['access_token']}"},
        verify=simulator.ca_file,
        timeout=10,
    )
    assert listed.status_code == 200


def test_a_graph_token_carries_the_graph_roles_granted_to_the_identity(
    simulator: Simulator, endpoint: dict[str, str]
) -> None:
    """The Graph sources in managedIdentity mode: the identity's own Graph token reads the audit logs."""
    answer = mi_token(endpoint, "https://graph.microsoft.com")
    assert answer.status_code == 200
    claims = jwt.decode(answer.json()["access_token"], options={"verify_signature": False})
    assert set(claims["roles"]) == {"AuditLog.Read.All", "ExchangeMessageTrace.Read.All"}
    listed = requests.get(
        f"{simulator.api_url}/v1.0/auditLogs/directoryAudits",
        headers={"Authorization": f"Bearer {answer.json()['access_token']}"},
        verify=simulator.ca_file,
        timeout=10,
    )
    assert listed.status_code == 200
    assert "value" in listed.json()


def test_the_exchange_token_is_an_rs256_jwt_naming_the_identity(simulator: Simulator, endpoint: dict[str, str]) -> None:
    token = mi_token(endpoint, "api://AzureADTokenExchange").json()["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["iss"], claims["sub"], claims["aud"]) == (
        f"https://login.microsoftonline.com/{TENANT.tenant_id}/v2.0",
        IDENTITY.object_id,
        "api://AzureADTokenExchange",
    )


def exchange(simulator: Simulator, assertion: str, client_id: str = APP) -> requests.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
        "scope": "https://manage.office.com/.default",
    }
    url = f"{simulator.authority_url}/{TENANT.tenant_id}/oauth2/v2.0/token"
    return requests.post(url, data=form, verify=simulator.ca_file, timeout=10)


def test_a_matching_assertion_gets_the_apps_consented_roles(simulator: Simulator, endpoint: dict[str, str]) -> None:
    assertion = mi_token(endpoint, "api://AzureADTokenExchange").json()["access_token"]
    answer = exchange(simulator, assertion)
    assert answer.status_code == 200, answer.text
    claims = jwt.decode(answer.json()["access_token"], options={"verify_signature": False})
    assert (claims["appid"], claims["tid"], claims["roles"]) == (APP, TENANT.tenant_id, list(IDENTITY.roles))


def test_assertions_entra_would_refuse_are_refused_with_its_codes(
    simulator: Simulator, endpoint: dict[str, str]
) -> None:
    good = mi_token(endpoint, "api://AzureADTokenExchange").json()["access_token"]
    claims = jwt.decode(good, options={"verify_signature": False})
    forged = jwt.encode(claims, "not-the-simulator-key-but-long-enough-for-hs256", algorithm="HS256")
    assert "AADSTS50013" in exchange(simulator, forged).json()["error_description"]

    wrong_audience = mi_token(endpoint, "api://AzureADTokenExchangeUSGov").json()["access_token"]
    refused = exchange(simulator, wrong_audience).json()
    assert refused["error_codes"] == [70021]
    assert "Assertion Audience: 'api://AzureADTokenExchangeUSGov'" in refused["error_description"]

    unknown_app = exchange(simulator, good, client_id="99999999-9999-4999-8999-999999999999").json()
    assert unknown_app["error_codes"] == [700016]

    simulator.set_clock(lambda: dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
    assert exchange(simulator, good).json()["error_codes"] == [700024]
