"""The app's certificate read from Key Vault (keyvault_certificates.py), end to end against the simulator.

The simulator plays Entra (it checks the certificate's client assertion), the App Service managed
identity endpoint (simulator/identity.py) and the vault (simulator/keyvault.py: the bearer challenge,
RBAC, secret versions). Nothing is injected: azure-identity's ``ManagedIdentityCredential`` gets the
vault token from the identity endpoint, and the vault authorizes the identity's object id.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable

import orjson
import pytest
import requests

from o365collector.config import Settings
from o365collector.diagnose import Verdict, diagnose
from o365collector.errors import ApiPermanentError
from o365collector.health import build_report
from o365collector.keyvault_certificates import KeyVaultCertificateCredential
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.simulator.identity import ManagedIdentitySpec
from o365collector.simulator.keyvault import PEM, PKCS12
from o365collector.tenant_config import KeyVaultCertificateConfig
from tests.receivers import HttpReceiver
from tests.support import TENANT, now
from tests.test_certificate_auth import make_certificate

TID = TENANT.tenant_id
# The function app's user-assigned identity: it reads the vault; the app registration's certificate signs in.
IDENTITY = ManagedIdentitySpec(
    client_id="4d4d4d4d-1111-4222-8333-444444444444", object_id="4e4e4e4e-5555-4666-8777-888888888888", tenant_id=TID
)
PRINCIPAL = IDENTITY.object_id
SCOPE = "https://manage.office.com/.default"


@pytest.fixture(autouse=True)
def vault_identity(simulator: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The identity on the simulator's endpoint, and the variables App Service sets (azure-identity reads them)."""
    simulator.identity.add_managed_identity(IDENTITY)
    for name, value in simulator.identity.environment().items():
        monkeypatch.setenv(name, value)


def keyvault_env(simulator: Simulator, receiver: HttpReceiver, **overrides: str) -> dict[str, str]:
    entry = {"tenantId": TID, "clientId": TENANT.client_id, "credential": "keyvault:app-cert",
             "contentTypes": ["Audit.Exchange"]}  # fmt: skip
    return {
        "O365_TENANT_ID": "",
        "O365_TENANTS": orjson.dumps([entry]).decode(),
        "O365_CLIENT_ID": TENANT.client_id,
        "O365_CLIENT_SECRET": "",  # the certificate in Key Vault is the only credential
        "O365_CERTIFICATE_KEY_VAULT_URI": simulator.key_vault_url,
        "AZURE_CLIENT_ID": IDENTITY.client_id,
        "O365_RETRY_MAX_ATTEMPTS": "2",
        "SINK_TYPE": "http",
        "SINK_URL": receiver.url,
    } | overrides


def import_registered(
    simulator: Simulator, content_type: str, *, valid_for: dt.timedelta = dt.timedelta(days=90)
) -> str:
    """A new version of 'app-cert' in the vault, its certificate uploaded to the app registration."""
    key, cert = make_certificate(valid_for=valid_for)
    simulator.certificates.register(TID, cert)
    return simulator.key_vault.import_certificate("app-cert", key, cert, content_type=content_type)


@pytest.mark.parametrize("content_type", [PKCS12, PEM], ids=["pfx", "pem"])
def test_a_key_vault_certificate_signs_in_and_everything_ships(
    content_type: str,
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: Callable[..., Collector],
) -> None:
    blobs = simulator.generate(
        TID, "Audit.Exchange", now() - dt.timedelta(hours=3), now() - dt.timedelta(minutes=20),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    simulator.key_vault.grant_secrets_user(PRINCIPAL)
    import_registered(simulator, content_type)
    collector = make_collector(**keyvault_env(simulator, receiver))

    assert run_once(collector) == 0
    assert Counter(r["Id"] for r in receiver.records) == Counter(r["Id"] for b in blobs for r in b.records)
    assert simulator.certificates.accepted >= 1
    assert simulator.certificates.refused == []
    assert simulator.key_vault.reads >= 1


def test_a_renewed_version_is_picked_up_without_a_restart(
    simulator: Simulator, make_env: Callable[..., dict[str, str]]
) -> None:
    simulator.key_vault.grant_secrets_user(PRINCIPAL)
    first = import_registered(simulator, PKCS12)
    settings = Settings.from_env(
        make_env(O365_CERTIFICATE_NAME="app-cert", O365_CERTIFICATE_KEY_VAULT_URI=simulator.key_vault_url,
                 O365_CLIENT_SECRET="", O365_CERTIFICATE_REFRESH_MINUTES="30", AZURE_CLIENT_ID=IDENTITY.client_id)
    )  # fmt: skip
    tenant = settings.tenants[0]
    assert isinstance(tenant.credential, KeyVaultCertificateConfig)
    clock = [now()]
    credential = KeyVaultCertificateCredential(
        tenant,
        tenant.credential,
        options={"authority": tenant.authority_host, "disable_instance_discovery": True},
        clock=lambda: clock[0],
    )
    credential.get_token(SCOPE)
    assert credential.certificate is not None
    assert credential.certificate.version == first

    second = import_registered(simulator, PEM)  # Key Vault renewed it; the new one is on the app registration
    clock[0] += dt.timedelta(minutes=29)
    credential.get_token(SCOPE)
    assert credential.certificate.version == first, "looked up again only every O365_CERTIFICATE_REFRESH_MINUTES"
    clock[0] += dt.timedelta(minutes=2)
    credential.get_token(SCOPE)
    assert credential.certificate.version == second
    assert credential.lookups == 2
    assert simulator.certificates.accepted == 2, "the new version signed a fresh assertion"


def test_an_expired_certificate_says_to_renew_it(simulator: Simulator, make_env: Callable[..., dict[str, str]]) -> None:
    simulator.key_vault.grant_secrets_user(PRINCIPAL)
    import_registered(simulator, PKCS12, valid_for=-dt.timedelta(hours=1))
    settings = Settings.from_env(
        make_env(O365_CERTIFICATE_NAME="app-cert", O365_CERTIFICATE_KEY_VAULT_URI=simulator.key_vault_url,
                 O365_CLIENT_SECRET="", AZURE_CLIENT_ID=IDENTITY.client_id)
    )  # fmt: skip
    tenant = settings.tenants[0]
    assert isinstance(tenant.credential, KeyVaultCertificateConfig)
    credential = KeyVaultCertificateCredential(tenant, tenant.credential)

    with pytest.raises(ApiPermanentError) as raised:
        credential.get_token(SCOPE)
    message = str(raised.value)
    assert "O365_CERTIFICATE_NAME: certificate 'app-cert'" in message
    assert "expired on" in message
    assert "renew it in Key Vault" in message
    assert simulator.certificates.refused == [], "no doomed sign-in"
    assert simulator.certificates.accepted == 0


def test_an_identity_without_the_role_is_told_which_role_to_assign(
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: Callable[..., Collector],
    capsys: pytest.CaptureFixture[str],
) -> None:
    simulator.generate(
        TID, "Audit.Exchange", now() - dt.timedelta(hours=2), now() - dt.timedelta(minutes=20),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    import_registered(simulator, PKCS12)  # but no role assignment for the identity
    collector = make_collector(**keyvault_env(simulator, receiver))

    assert run_once(collector) == 1
    assert receiver.records == []
    failed = capsys.readouterr().err
    assert "O365_TENANTS[0].credential: certificate 'app-cert' in Key Vault" in failed
    assert "assign it the role 'Key Vault Secrets User'" in failed
    assert simulator.key_vault.refused, "the vault refused the identity's token"
    assert set(simulator.key_vault.refused) == {PRINCIPAL}


def test_the_vault_refuses_an_identity_token_without_the_role_as_key_vault_does(simulator: Simulator) -> None:
    """The identity endpoint's vault token names the identity; without the role the data plane answers 403
    Forbidden / ForbiddenByRbac with the caller and the action, and with it the secret."""
    import_registered(simulator, PKCS12)
    http = requests.Session()
    http.trust_env = False  # a REQUESTS_CA_BUNDLE left in the environment would override verify
    http.verify = simulator.ca_file
    mi = requests.get(
        simulator.identity.start(),
        params={"api-version": "2019-08-01", "resource": "https://vault.azure.net", "client_id": IDENTITY.client_id},
        headers={"X-IDENTITY-HEADER": simulator.identity.identity_header},
        timeout=10,
    )
    assert mi.status_code == 200, mi.text
    bearer = {"Authorization": f"Bearer {mi.json()['access_token']}"}
    url = f"{simulator.key_vault_url.rstrip('/')}/secrets/app-cert?api-version=7.5"

    refused = http.get(url, headers=bearer, timeout=10)
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "Forbidden"
    assert error["innererror"] == {"code": "ForbiddenByRbac"}
    assert error["message"].startswith("Caller is not authorized to perform action on resource.")
    assert f"Caller: appid={IDENTITY.client_id};oid={PRINCIPAL};iss=https://sts.windows.net/{TID}/" in error["message"]
    assert "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'" in error["message"]

    simulator.key_vault.grant_secrets_user(PRINCIPAL)
    assert http.get(url, headers=bearer, timeout=10).json()["contentType"] == PKCS12


def test_a_keyvault_reference_needs_the_vault_uri(make_env: Callable[..., dict[str, str]]) -> None:
    entry = {"tenantId": TID, "clientId": TENANT.client_id, "credential": "keyvault:app-cert"}
    env = make_env(O365_TENANT_ID="", O365_TENANTS=orjson.dumps([entry]).decode())
    with pytest.raises(Exception, match="O365_CERTIFICATE_KEY_VAULT_URI: is required"):
        Settings.from_env(env)


def test_check_status_and_health_warn_ahead_of_the_certificates_end(
    simulator: Simulator, receiver: HttpReceiver, make_collector: Callable[..., Collector],
    make_env: Callable[..., dict[str, str]],
) -> None:  # fmt: skip
    simulator.key_vault.grant_secrets_user(PRINCIPAL)
    import_registered(simulator, PKCS12, valid_for=dt.timedelta(days=10))
    env = keyvault_env(simulator, receiver, O365_HEALTH_SECRET_EXPIRY_DAYS="30")
    report = build_report(make_collector(**env))
    assert not any("app-cert" in p for p in report.general_problems)
    assert any("certificate 'app-cert' in Key Vault" in w and "expires in 9 days" in w and "renew it in Key Vault" in w
               for w in report.general_degraded), report.general_degraded  # fmt: skip

    steps = {s.name: s for s in diagnose(make_env(**env))}
    assert steps["certificate"].verdict == Verdict.WARN
    assert "renew it in Key Vault" in steps["certificate"].detail
    assert steps["token"].verdict == Verdict.OK, "the certificate still signs in until its end"

    import_registered(simulator, PKCS12, valid_for=-dt.timedelta(minutes=5))  # a new version, already past its end
    report = build_report(make_collector(**env))
    assert report.state == "unhealthy"
    assert not any("app-cert" in w for w in report.general_degraded)
    assert any("expired on" in p and "sign-in fails until you renew it" in p for p in report.general_problems)
