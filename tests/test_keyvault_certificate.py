"""The app's certificate read from Key Vault (keyvault_certificates.py), end to end against the simulator.

The simulator plays Entra (it checks the certificate's client assertion), the App Service managed
identity endpoint (simulator/identity.py) and the vault (simulator/keyvault.py: the bearer challenge,
RBAC, secret versions). Nothing is injected: azure-identity's ``ManagedIdentityCredential`` gets the
vault token from the identity endpoint, and the vault authorizes the identity's object id.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections import Counter
from collections.abc import Callable

import orjson
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from o365collector.certificate_expiry import certificate_expiries
from o365collector.config import Settings
from o365collector.diagnose import Verdict, diagnose
from o365collector.errors import ApiPermanentError, ConfigError
from o365collector.health import build_report
from o365collector.keyvault_certificates import KeyVaultCertificateCredential, load_secret
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.simulator.faults import Fault
from o365collector.simulator.identity import ManagedIdentitySpec
from o365collector.simulator.keyvault import PEM, PKCS12, certificate_secret
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
    expired = {s.name: s for s in diagnose(make_env(**env))}["certificate"]
    assert expired.verdict == Verdict.FAIL, expired.line()
    assert "expired on" in expired.detail


def test_a_failed_look_up_or_an_expired_version_is_looked_up_again_within_a_minute(
    simulator: Simulator, make_env: Callable[..., dict[str, str]]
) -> None:
    """A failed look-up keeps the version in hand (it still signs) and retries a minute later, not an hour;
    from the certificate's end instant sign-in stops, and a renewed version is picked up a minute later."""
    simulator.key_vault.grant_secrets_user(PRINCIPAL)
    import_registered(simulator, PKCS12, valid_for=dt.timedelta(days=1))
    settings = Settings.from_env(
        make_env(O365_CERTIFICATE_NAME="app-cert", O365_CERTIFICATE_KEY_VAULT_URI=simulator.key_vault_url,
                 O365_CLIENT_SECRET="", O365_CERTIFICATE_REFRESH_MINUTES="30", AZURE_CLIENT_ID=IDENTITY.client_id)
    )  # fmt: skip
    tenant = settings.tenants[0]
    assert isinstance(tenant.credential, KeyVaultCertificateConfig)
    clock = [now()]
    credential = KeyVaultCertificateCredential(
        tenant, tenant.credential,
        options={"authority": tenant.authority_host, "disable_instance_discovery": True}, clock=lambda: clock[0],
    )  # fmt: skip
    credential.get_token(SCOPE)
    loaded = credential.certificate
    assert loaded is not None
    leaf = x509.load_pem_x509_certificates(loaded.pem)[0]
    assert loaded.thumbprint == leaf.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - as Entra shows it

    simulator.faults.add(Fault("bare_404", route="any", count=1))  # the next request: the vault's look-up
    clock[0] += dt.timedelta(minutes=31)
    credential.get_token(SCOPE)
    assert (credential.lookups, credential.certificate) == (2, loaded), "the version in hand still signs"
    clock[0] += dt.timedelta(seconds=61)
    credential.get_token(SCOPE)
    assert credential.lookups == 3, "looked up again a minute after the failure"

    clock[0] = loaded.not_after  # its end instant: no assertion signed with it any more
    with pytest.raises(ApiPermanentError) as raised:
        credential.get_token(SCOPE)
    assert raised.value.code == "CertificateExpired"
    renewed = import_registered(simulator, PKCS12)
    clock[0] += dt.timedelta(seconds=61)
    credential.get_token(SCOPE)
    assert credential.certificate is not None
    assert credential.certificate.version == renewed


def pem_of(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def test_the_certificate_matching_the_key_leads_whatever_its_place_in_the_secret() -> None:
    key, leaf = make_certificate()
    _, other = make_certificate()  # a chain certificate listed before the leaf
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    for value, content_type in (
        ((private + pem_of(other, leaf)).decode(), PEM),
        (certificate_secret(key, leaf, PKCS12), None),  # no content type: base64 is PKCS#12
    ):
        pem, found = load_secret(value, content_type, where="w")
        assert found == leaf
        assert x509.load_pem_x509_certificates(pem)[0] == leaf, "azure-identity signs with the first certificate"
        assert pem.startswith(private)


def test_a_secret_without_a_usable_key_says_what_is_missing() -> None:
    key, leaf = make_certificate()
    _, other = make_certificate()
    no_key = base64.b64encode(
        pkcs12.serialize_key_and_certificates(b"c", None, leaf, None, serialization.NoEncryption())
    ).decode()
    with pytest.raises(ApiPermanentError, match="w: its secret holds no private key"):
        load_secret(no_key, PKCS12, where="w")
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    with pytest.raises(ApiPermanentError, match="w: no certificate in its secret matches its private key"):
        load_secret((private + pem_of(other)).decode(), PEM, where="w")


def test_the_vault_is_read_as_azure_client_id_every_refresh_minutes(make_env: Callable[..., dict[str, str]]) -> None:
    base = {"O365_CERTIFICATE_NAME": "app-cert", "O365_CERTIFICATE_KEY_VAULT_URI": "https://v.vault.azure.net",
            "O365_CLIENT_SECRET": "", "AZURE_CLIENT_ID": IDENTITY.client_id}  # fmt: skip
    credential = Settings.from_env(make_env(**base, O365_CERTIFICATE_REFRESH_MINUTES="1")).tenants[0].credential
    assert isinstance(credential, KeyVaultCertificateConfig)
    assert credential.identity_client_id == IDENTITY.client_id
    assert credential.refresh == dt.timedelta(minutes=1)
    with pytest.raises(ConfigError, match="O365_CERTIFICATE_REFRESH_MINUTES"):
        Settings.from_env(make_env(**base, O365_CERTIFICATE_REFRESH_MINUTES="0"))
    with pytest.raises(ConfigError, match="O365_CERTIFICATE_NAME: 'app_cert' is not a Key Vault certificate name"):
        Settings.from_env(make_env(**base | {"O365_CERTIFICATE_NAME": "app_cert"}))


def test_a_certificate_missing_from_the_vault_says_to_create_it(
    simulator: Simulator, make_env: Callable[..., dict[str, str]]
) -> None:
    simulator.key_vault.grant_secrets_user(PRINCIPAL)  # allowed to read, but nothing imported under that name
    settings = Settings.from_env(
        make_env(O365_CERTIFICATE_NAME="app-cert", O365_CERTIFICATE_KEY_VAULT_URI=simulator.key_vault_url,
                 O365_CLIENT_SECRET="", AZURE_CLIENT_ID=IDENTITY.client_id)
    )  # fmt: skip
    tenant = settings.tenants[0]
    assert isinstance(tenant.credential, KeyVaultCertificateConfig)
    with pytest.raises(ApiPermanentError, match=r"'app-cert' in Key Vault .* does not exist: create or import it"):
        KeyVaultCertificateCredential(tenant, tenant.credential).load()


def test_a_certificate_shared_by_tenants_is_read_once_for_its_expiry(
    simulator: Simulator, receiver: HttpReceiver, make_env: Callable[..., dict[str, str]]
) -> None:
    simulator.key_vault.grant_secrets_user(PRINCIPAL)
    import_registered(simulator, PKCS12)
    entries = [{"tenantId": t, "clientId": TENANT.client_id, "credential": "keyvault:App-Cert"}
               for t in (TID, "c2000000-0000-4000-8000-000000000002")]  # fmt: skip
    env = keyvault_env(simulator, receiver, O365_TENANTS=orjson.dumps(entries).decode())
    tenants = Settings.from_env(make_env(**env)).tenants
    assert len(tenants) == 2
    assert [t.tenant_id for t, _, _ in certificate_expiries(tenants)] == [TID]
    assert simulator.key_vault.reads == 1
