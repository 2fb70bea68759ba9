"""Secretless sign-in end to end, through azure-identity's own credential classes, on the simulator and Azurite:

- ``managedIdentity``: the function app's user-assigned identity gets the API token from the App Service
  identity endpoint (``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``) and collects its own tenant;
- ``federated``: a multi-tenant app trusts that identity by a federated identity credential and signs in
  to two customer tenants with the identity's token as client assertion.

No secret is set in either. Each failure an admin must fix (role not granted, consent missing, the
federated credential's subject wrong) fails ``check`` with its code and the command or link that fixes it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from collections import Counter
from collections.abc import Callable
from typing import cast

import orjson
import pytest
from azure.core.credentials import AccessToken, TokenCredential

from o365collector.diagnose import Step, Verdict, diagnose
from o365collector.errors import ConfigError
from o365collector.identity import (
    ExchangeAssertion,
    FederatedCredential,
    missing_role_hint,
    secretless_hint,
    unverified_claims,
)
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator, TenantSpec
from o365collector.simulator.identity import FederatedCredentialSpec, ManagedIdentitySpec, MultiTenantAppSpec
from o365collector.tenant_config import FederatedCredentialConfig, ManagedIdentityCredentialConfig, TenantConfig
from o365collector.tenants import tenants_from_env
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory

IDENTITY = ManagedIdentitySpec(
    client_id="0a0a0a0a-1111-4222-8333-444444444444",
    object_id="0b0b0b0b-5555-4666-8777-888888888888",
    tenant_id=TENANT.tenant_id,
)
APP = "0c0c0c0c-9999-4aaa-8bbb-cccccccccccc"
CUSTOMERS = ("c1000000-0000-4000-8000-000000000001", "c2000000-0000-4000-8000-000000000002")
TYPES = ("Audit.Exchange", "Audit.General")
ROLES = ("ActivityFeed.Read",)
SECRETLESS = {"O365_CLIENT_SECRET": "", "O365_CONTENT_TYPES": ",".join(TYPES)}


@pytest.fixture
def identity(simulator: Simulator, monkeypatch: pytest.MonkeyPatch) -> Simulator:
    """The simulator with the identity, and the environment App Service gives the function app."""
    simulator.identity.add_managed_identity(IDENTITY)
    for name, value in simulator.identity.environment().items():
        monkeypatch.setenv(name, value)  # azure-identity reads these from os.environ
    return simulator


def add_app(sim: Simulator, *, subject: str = IDENTITY.object_id, consented: tuple[str, ...] = CUSTOMERS) -> None:
    fic = FederatedCredentialSpec(issuer=IDENTITY.issuer, subject=subject, audience="api://AzureADTokenExchange")
    sim.identity.add_app(MultiTenantAppSpec(APP, IDENTITY.tenant_id, (fic,), {t: ROLES for t in consented}))


def add_customers(sim: Simulator) -> list[str]:
    """Both customer tenants with a day of content; the ids of every record."""
    now = dt.datetime.now(dt.UTC)
    ids: list[str] = []
    for index, tenant_id in enumerate(CUSTOMERS):
        # The tenants' own app (client id, secret) plays no part: the multi-tenant app signs in.
        sim.add_tenant(TenantSpec(tenant_id, f"d{index}000000-0000-4000-8000-000000000000", "unused", subscribed=TYPES))
        ids += [r["Id"] for ct in TYPES for b in generate(sim, tenant_id, ct, now) for r in b.records]
    return ids


def generate(sim: Simulator, tenant_id: str, content_type: str, now: dt.datetime) -> list[object]:
    return list(
        sim.generate(
            tenant_id, content_type, now - dt.timedelta(hours=20), now - dt.timedelta(minutes=10),
            blob_every=dt.timedelta(hours=4),
        )
    )  # fmt: skip


def federated_env(tenants: tuple[str, ...] = CUSTOMERS) -> dict[str, str]:
    entries = [{"tenantId": t, "credential": "federated", "contentTypes": list(TYPES)} for t in tenants]
    return SECRETLESS | {
        "O365_TENANT_ID": "",
        "O365_CLIENT_ID": APP,
        "AZURE_CLIENT_ID": IDENTITY.client_id,
        "O365_TENANTS": orjson.dumps(entries).decode(),
    }


def managed_env() -> dict[str, str]:
    mode = {"O365_AUTH_MODE": "managedIdentity", "O365_CLIENT_ID": "", "AZURE_CLIENT_ID": IDENTITY.client_id}
    return SECRETLESS | mode


def run_check(env: dict[str, str]) -> dict[tuple[str, str], Step]:
    return {(s.name, s.subject or ""): s for s in diagnose(env)}


def test_the_managed_identity_collects_its_own_tenant_with_no_secret(
    identity: Simulator, receiver: HttpReceiver, make_collector: Callable[..., Collector]
) -> None:
    now = dt.datetime.now(dt.UTC)
    expected = [r["Id"] for ct in TYPES for b in identity.generate(
        TENANT.tenant_id, ct, now - dt.timedelta(hours=20), now - dt.timedelta(minutes=10),
        blob_every=dt.timedelta(hours=4)) for r in b.records]  # fmt: skip
    collector = make_collector(SINK_TYPE="http", SINK_URL=receiver.url, **managed_env())
    assert run_once(collector) == 0
    assert Counter(r["Id"] for r in receiver.records) == Counter(expected)
    # The API token came from the identity endpoint: the token endpoint was never asked.
    assert identity.stats.requests["token"] == 0


def test_the_federated_app_collects_two_customer_tenants_with_no_secret(
    identity: Simulator, receiver: HttpReceiver, make_collector: Callable[..., Collector]
) -> None:
    add_app(identity)
    expected = add_customers(identity)
    collector = make_collector(SINK_TYPE="http", SINK_URL=receiver.url, **federated_env())
    assert run_once(collector) == 0
    assert Counter(r["Id"] for r in receiver.records) == Counter(expected)
    assert {e.tenant_id for e in identity.stats.recent if e.route == "token"} == set(CUSTOMERS)


def test_check_passes_in_both_modes(identity: Simulator, make_env: EnvFactory) -> None:
    add_app(identity)
    add_customers(identity)
    for env in (managed_env(), federated_env()):
        steps = run_check(make_env(**env))
        assert all(s.verdict is Verdict.OK for s in steps.values()), [s.line() for s in steps.values()]


def test_a_role_not_granted_to_the_identity_names_the_grant_command(
    simulator: Simulator, monkeypatch: pytest.MonkeyPatch, make_env: EnvFactory
) -> None:
    simulator.identity.add_managed_identity(dataclasses.replace(IDENTITY, roles=()))
    for name, value in simulator.identity.environment().items():
        monkeypatch.setenv(name, value)
    steps = run_check(make_env(**managed_env()))
    detail = steps[("permissions", TENANT.tenant_id)].detail
    assert steps[("permissions", TENANT.tenant_id)].verdict is Verdict.FAIL
    assert detail.startswith("AF10001: the managed identity's service principal lacks the ActivityFeed.Read")
    assert "scripts/grant-api-access.sh --identity" in detail


def test_a_customer_tenant_without_consent_gets_the_admin_consent_link(
    identity: Simulator, make_env: EnvFactory
) -> None:
    add_app(identity, consented=CUSTOMERS[:1])
    add_customers(identity)
    steps = run_check(make_env(**federated_env()))
    assert steps[("token", CUSTOMERS[0])].verdict is Verdict.OK
    failed = steps[("token", CUSTOMERS[1])]
    assert failed.verdict is Verdict.FAIL
    assert failed.detail.startswith(f"AADSTS700016: the app {APP} is not consented in tenant {CUSTOMERS[1]}")
    assert f"/{CUSTOMERS[1]}/adminconsent?client_id={APP}" in failed.detail


def test_a_federated_credential_with_the_wrong_subject_names_the_right_one(
    identity: Simulator, make_env: EnvFactory
) -> None:
    add_app(identity, subject=IDENTITY.client_id)  # a classic mistake: the client id instead of the principal id
    add_customers(identity)
    steps = run_check(make_env(**federated_env(CUSTOMERS[:1])))
    failed = steps[("token", CUSTOMERS[0])]
    assert failed.verdict is Verdict.FAIL
    assert failed.detail.startswith(f"AADSTS70021: no federated identity credential of app {APP} matches")
    assert f"subject {IDENTITY.object_id}" in failed.detail
    assert f"--federated --app-id {APP} --identity {IDENTITY.object_id}" in failed.detail


@pytest.mark.parametrize(
    ("entry", "settings", "expected"),
    [
        ({"credential": "managedIdentity"}, {}, ManagedIdentityCredentialConfig(IDENTITY.client_id)),
        ({}, {"O365_AUTH_MODE": "managedIdentity"}, ManagedIdentityCredentialConfig(IDENTITY.client_id)),
        (
            {"credential": "federated", "clientId": APP},
            {},
            FederatedCredentialConfig(APP, IDENTITY.client_id, "api://AzureADTokenExchange"),
        ),
        (
            {"credential": "federated", "cloud": "GCCHigh"},
            {"O365_CLIENT_ID": APP},
            FederatedCredentialConfig(APP, IDENTITY.client_id, "api://AzureADTokenExchangeUSGov"),
        ),
        (
            {},
            {"O365_AUTH_MODE": "federated", "O365_CLIENT_ID": APP, "O365_TOKEN_EXCHANGE_AUDIENCE": "api://Custom"},
            FederatedCredentialConfig(APP, IDENTITY.client_id, "api://Custom"),
        ),
    ],
)
def test_registry_entries_name_a_secretless_credential_and_need_no_secret(
    entry: dict[str, str], settings: dict[str, str], expected: object
) -> None:
    env = {"AZURE_CLIENT_ID": IDENTITY.client_id} | settings
    env["O365_TENANTS"] = orjson.dumps([{"tenantId": CUSTOMERS[0]} | entry]).decode()
    (tenant,) = tenants_from_env(env, sink_names=None)
    assert tenant.credential == expected


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"O365_AUTH_MODE": "password"}, "O365_AUTH_MODE: unknown value 'password'"),
        ({"O365_AUTH_MODE": "federated"}, "O365_CLIENT_ID: "),
        ({"O365_AUTH_MODE": "managedIdentity", "AZURE_CLIENT_ID": "not-a-guid"}, "AZURE_CLIENT_ID: "),
        (
            {"O365_AUTH_MODE": "federated", "O365_CLIENT_ID": APP, "O365_TOKEN_EXCHANGE_AUDIENCE": "api://A B"},
            "O365_TOKEN_EXCHANGE_AUDIENCE: 'api://A B' is not a token exchange audience",
        ),
    ],
)
def test_a_bad_auth_setting_is_named(settings: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        tenants_from_env({"O365_TENANT_ID": TENANT.tenant_id} | settings, sink_names=None)
    assert message in str(raised.value)


@pytest.mark.parametrize("secret", ["", "set-but-not-asked-for"])
def test_certificate_mode_without_a_certificate_names_the_certificate_settings(secret: str) -> None:
    env = {"O365_TENANT_ID": TENANT.tenant_id, "O365_CLIENT_ID": TENANT.client_id, "O365_AUTH_MODE": "certificate",
           "O365_CLIENT_SECRET": secret}  # fmt: skip
    with pytest.raises(ConfigError) as raised:
        tenants_from_env(env, sink_names=None)
    message = str(raised.value)
    assert "O365_CLIENT_CERTIFICATE_PATH: is required when O365_AUTH_MODE is certificate" in message
    assert "or set O365_CERTIFICATE_NAME" in message
    assert "O365_CLIENT_SECRET" not in message, "a secret is not what certificate mode needs"


def secretless_tenant(mode: str) -> TenantConfig:
    env = {"O365_TENANT_ID": CUSTOMERS[0], "O365_AUTH_MODE": mode, "O365_CLIENT_ID": APP,
           "AZURE_CLIENT_ID": IDENTITY.client_id}  # fmt: skip
    (tenant,) = tenants_from_env(env, sink_names=None)
    return tenant


def jwt_text(claims: object) -> str:
    body = base64.urlsafe_b64encode(orjson.dumps(claims)).decode().rstrip("=")
    return f"eyJhbGciOiJSUzI1NiJ9.{body}.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (jwt_text({"sub": "s", "iss": "i"}), {"sub": "s", "iss": "i"}),
        (jwt_text({"sub": "x"}).rsplit(".", 1)[0], {}),  # two parts: not a JWT
        (jwt_text({"sub": "x"}) + ".extra", {}),  # four parts: not a JWT either
        (jwt_text(["sub", "x"]), {}),  # a JSON list, not claims
        ("a.!!!.c", {}),
        ("a.bm90IGpzb24.c", {}),  # "not json"
    ],
)
def test_only_a_three_part_token_with_a_json_object_yields_claims(token: str, expected: dict[str, object]) -> None:
    assert unverified_claims(token) == expected


def test_the_wrong_subject_hint_names_the_tokens_subject_not_its_object_id() -> None:
    tenant = secretless_tenant("federated")
    assert isinstance(tenant.credential, FederatedCredentialConfig)

    class NoIdentity:
        def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
            raise AssertionError("not asked in this test")

    assertion = ExchangeAssertion(cast(TokenCredential, NoIdentity()), tenant.credential.token_exchange_audience)
    assertion.claims = {"iss": "https://issuer.example/v2.0", "sub": "the-subject", "oid": "the-object", "aud": "a"}
    credential = FederatedCredential(tenant.tenant_id, APP, assertion, authority="https://127.0.0.1")
    hint = secretless_hint(tenant, "AADSTS70021: No matching federated identity record found", credential)
    assert hint is not None
    assert "(issuer https://issuer.example/v2.0, subject the-subject, audience a)" in hint
    assert f"--app-id {APP} --identity the-subject`" in hint


@pytest.mark.parametrize(
    ("mode", "text", "expected"),
    [
        ("federated", "AADSTS700016: Application not found in the directory", "AADSTS700016: the app"),
        ("managedIdentity", "AADSTS700016: Application not found in the directory", None),
        ("managedIdentity", "ManagedIdentityCredential: no managed identity endpoint found", "the managed identity ("),
        ("federated", "IDENTITY_ENDPOINT did not answer", "the managed identity (AZURE_CLIENT_ID"),
        ("federated", "AADSTS50000: the managed identity token was refused", None),  # Entra's answer: not ours
        ("federated", "connection reset", None),
    ],
)
def test_secretless_hints_match_the_mode_and_the_failure(mode: str, text: str, expected: str | None) -> None:
    hint = secretless_hint(secretless_tenant(mode), text)
    if expected is None:
        assert hint is None
    else:
        assert (hint or "").startswith(expected), hint


@pytest.mark.parametrize(
    ("mode", "role", "dlp"),
    [
        ("managedIdentity", "ActivityFeed.Read", False),
        ("managedIdentity", "ActivityFeed.ReadDlp", True),
        ("federated", "ActivityFeed.ReadDlp", False),  # the app registration's roles: no grant script flag
    ],
)
def test_the_missing_role_hint_asks_for_the_dlp_role_only_when_it_is_missing(mode: str, role: str, dlp: bool) -> None:
    hint = missing_role_hint(secretless_tenant(mode), role)
    assert hint is not None
    assert role in hint
    assert ("--dlp" in hint) is dlp


def test_the_identity_azure_client_id_names_signs_in_when_the_app_has_several(
    identity: Simulator, make_env: EnvFactory
) -> None:
    """App Service may host several identities; without the client id the endpoint would not know which one."""
    other = ManagedIdentitySpec("0d0d0d0d-1111-4222-8333-444444444444", "0e0e0e0e-5555-4666-8777-888888888888",
                                IDENTITY.tenant_id, roles=())  # fmt: skip
    identity.identity.add_managed_identity(other)
    steps = run_check(make_env(**managed_env()))
    assert all(s.verdict is Verdict.OK for s in steps.values()), [s.line() for s in steps.values()]


@pytest.mark.parametrize(
    ("cloud", "audience"), [("", "api://AzureADTokenExchange"), ("gcchigh", "api://AzureADTokenExchangeUSGov")]
)
def test_the_single_tenant_settings_sign_in_federated_with_the_clouds_audience(cloud: str, audience: str) -> None:
    env = {"O365_TENANT_ID": CUSTOMERS[0], "O365_AUTH_MODE": "federated", "O365_CLIENT_ID": APP,
           "AZURE_CLIENT_ID": IDENTITY.client_id, "O365_CLOUD": cloud}  # fmt: skip
    (tenant,) = tenants_from_env(env, sink_names=None)
    assert tenant.credential == FederatedCredentialConfig(APP, IDENTITY.client_id, audience)
