"""auth.py: how a failed sign-in becomes our error (permanent or worth retrying, with the admin's hint in the
tenant's own terms, redacted), and which certificate files ``read_certificate`` refuses.

The credential is a stand-in raising what azure-identity raises; the end-to-end sign-ins run against the
simulator in test_certificate_auth.py, test_secretless_auth.py and test_keyvault_certificate.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from o365collector.auth import TokenProvider, read_certificate
from o365collector.errors import ApiPermanentError, ApiTransientError, CollectorError, ConfigError
from o365collector.tenant_config import CertificateCredentialConfig, TenantConfig
from o365collector.tenants import tenants_from_env
from tests.support import TENANT

APP = "0c0c0c0c-9999-4aaa-8bbb-cccccccccccc"
IDENTITY = "0a0a0a0a-1111-4222-8333-444444444444"
SECRET = "Zq8~tHiS-iS-tHe-SeCrEt-vAlUe-0123456789"  # a test value


class Refusing:
    """A credential whose every token request fails with ``text``, as azure-identity reports it."""

    def __init__(self, text: str) -> None:
        self.text = text

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise ClientAuthenticationError(message=self.text)


def tenant(mode: str = "clientSecret") -> TenantConfig:
    entry = {"tenantId": TENANT.tenant_id, "clientId": APP} | ({} if mode == "clientSecret" else {"credential": mode})
    env = {"O365_TENANTS": orjson.dumps([entry]).decode(), "O365_CLIENT_ID": APP, "O365_CLIENT_SECRET": SECRET,
           "AZURE_CLIENT_ID": IDENTITY}  # fmt: skip
    (found,) = tenants_from_env(env, sink_names=None)
    return found


def sign_in(config: TenantConfig, text: str) -> CollectorError:
    with pytest.raises(CollectorError) as raised:
        TokenProvider(config, Refusing(text)).get_token()
    return raised.value


@pytest.mark.parametrize(
    ("mode", "text", "kind", "code"),
    [
        ("clientSecret", "AADSTS7000215: Invalid client secret provided.", ApiPermanentError, "AADSTS7000215"),
        ("clientSecret", "Unable to get authority configuration for x", ApiPermanentError, "AADSTS90002"),
        ("clientSecret", "Connection reset by peer", ApiTransientError, None),
        ("federated", "AADSTS700016: Application not found in the directory", ApiPermanentError, "AADSTS700016"),
        ("federated", "ManagedIdentityCredential: no managed identity endpoint found", ApiTransientError, None),
        ("managedIdentity", "ManagedIdentityCredential: no managed identity endpoint found", ApiTransientError, None),
    ],
)
def test_a_sign_in_failure_is_permanent_only_when_an_admin_must_act(
    mode: str, text: str, kind: type[CollectorError], code: str | None
) -> None:
    error = sign_in(tenant(mode), text)
    assert type(error) is kind, error
    assert getattr(error, "code", None) == code
    assert isinstance(error.__cause__, ClientAuthenticationError), "raised from azure-identity's error"


def test_the_hint_sends_the_admin_to_the_registry_entry() -> None:
    error = sign_in(tenant(), "AADSTS700016: Application with identifier was not found")
    assert "O365_TENANTS[0].clientId" in str(error)
    assert "O365_CLIENT_ID" not in str(error)


def test_a_secret_echoed_by_the_token_endpoint_is_redacted_in_the_error_and_its_cause() -> None:
    error = sign_in(tenant(), f"Authentication failed: the proxy echoed {SECRET} back\nsecond line")
    assert isinstance(error, ApiTransientError)
    assert str(error).startswith("token request failed: Authentication failed: the proxy echoed ")
    assert SECRET not in str(error)
    assert error.__cause__ is not None
    assert SECRET not in str(error.__cause__)
    assert all(SECRET not in str(a) for a in error.__cause__.args)


def certificate(path: Path, folder: Path) -> CertificateCredentialConfig:
    return CertificateCredentialConfig(TENANT.client_id, str(path), folder=str(folder))


def test_a_link_into_a_sibling_folder_with_the_same_prefix_is_outside(tmp_path: Path) -> None:
    """/certs-old is not inside /certs, though its path starts with it."""
    folder, sibling = tmp_path / "certs", tmp_path / "certs-old"
    folder.mkdir()
    sibling.mkdir()
    (sibling / "key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    (folder / "key.pem").symlink_to(sibling / "key.pem")
    with pytest.raises(ConfigError, match="leads outside"):
        read_certificate(certificate(folder / "key.pem", folder), tenant_id=TENANT.tenant_id)


def test_a_link_swapped_in_after_the_folder_check_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check resolved a regular file; by the time it is opened the name is a link leading outside."""
    folder = tmp_path / "certs"
    folder.mkdir()
    outside = tmp_path / "outside.pem"
    outside.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    (folder / "key.pem").symlink_to(outside)
    monkeypatch.setattr(os.path, "realpath", os.path.abspath)  # the check saw no link yet
    with pytest.raises(ConfigError, match="cannot be opened"):
        read_certificate(certificate(folder / "key.pem", folder), tenant_id=TENANT.tenant_id)
