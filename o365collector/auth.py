"""Builds the azure-identity credential for a tenant and fetches tokens for its API scope.

azure-identity (MSAL underneath) owns the OAuth exchange and the token cache; tokens are refreshed
before they expire. For an authority host that is not a Microsoft login host (a proxy, the local
simulator) instance discovery is turned off, otherwise MSAL would ask login.microsoftonline.com to
vouch for it. TLS trust follows ``REQUESTS_CA_BUNDLE`` like every requests-based client.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import requests
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import CertificateCredential, ClientSecretCredential

from .errors import ApiPermanentError, ApiTransientError, ConfigError
from .identity import build_secretless_credential, secretless_hint
from .keyvault_certificates import build_keyvault_credential
from .redaction import redact, scrub_exception
from .tenant_config import (
    MAX_CERTIFICATE_BYTES,
    CertificateCredentialConfig,
    FederatedCredentialConfig,
    KeyVaultCertificateConfig,
    ManagedIdentityCredentialConfig,
    TenantConfig,
)

# What the AADSTS codes azure-identity reports mean for the admin.
AADSTS_HINTS: dict[str, str] = {
    "AADSTS7000215": "the client secret is wrong: copy the secret's Value (not its ID) into O365_CLIENT_SECRET",
    "AADSTS7000222": "the client secret has expired: create a new one in the app registration "
    "and update O365_CLIENT_SECRET",
    "AADSTS700016": "the app (O365_CLIENT_ID) is not found in the tenant: check the client id "
    "and that the app was consented there",
    "AADSTS90002": "the tenant (O365_TENANT_ID) was not found at the login host: check the tenant id "
    "(the Directory ID) and O365_CLOUD",
    "AADSTS900023": "the tenant id is malformed: check O365_TENANT_ID",
    "AADSTS50034": "the tenant or account is not found: check O365_TENANT_ID and O365_CLOUD",
    "AADSTS700027": "the app registration does not accept the certificate the collector signs with (never uploaded "
    "there, or expired): upload the current certificate's public part (.cer) under Certificates & secrets",
    "AADSTS700024": "the signed client assertion is outside its valid time range: check the host's clock",
}


def build_credential(tenant: TenantConfig, *, session: requests.Session | None = None) -> TokenCredential:
    """The tenant's credential; ``session`` shares one connection pool among many tenants' token requests."""
    cred = tenant.credential
    options: dict[str, Any] = {
        "authority": tenant.authority_host,
        "disable_instance_discovery": not tenant.authority_is_microsoft,
    }
    if session is not None:
        options["transport"] = RequestsTransport(session=session, session_owner=False)
    if isinstance(cred, ManagedIdentityCredentialConfig | FederatedCredentialConfig):
        return build_secretless_credential(tenant, cred, options)
    if isinstance(cred, CertificateCredentialConfig):
        # The bytes, not the path: azure-identity would read any file whole, however large.
        pem = read_certificate(cred, tenant_id=tenant.tenant_id)
        return CertificateCredential(tenant.tenant_id, cred.client_id, certificate_data=pem, **options)
    if isinstance(cred, KeyVaultCertificateConfig):
        return build_keyvault_credential(tenant, cred, options, session=session)
    return ClientSecretCredential(tenant.tenant_id, cred.client_id, cred.client_secret.reveal(), **options)


def read_certificate(
    cred: CertificateCredentialConfig, *, tenant_id: str, max_bytes: int = MAX_CERTIFICATE_BYTES
) -> bytes:
    """The PEM file's bytes: a regular file, inside ``cred.folder`` when one is set, at most ``max_bytes``.

    The cap is enforced while reading, not by a size check first: a device or FIFO (``/dev/zero``)
    reports no honest size. The folder check resolves symlinks, and the resolved path is opened with
    ``O_NOFOLLOW``, so a link swapped in after the check is refused too.
    """
    setting = "O365_CLIENT_CERTIFICATE_PATH" if cred.folder is None else "O365_CERTIFICATE_DIR"
    where = f"certificate {cred.certificate_path!r} of tenant {tenant_id}"
    path, flags = cred.certificate_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
    if cred.folder is not None:
        folder = os.path.realpath(cred.folder)
        path = os.path.realpath(path)
        if not path.startswith(folder.rstrip("/") + "/"):
            raise ConfigError(setting, f"{where} leads outside {cred.folder} (a symbolic link): refused")
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise ConfigError(setting, f"{where} cannot be opened: {err.strerror}") from err
    with os.fdopen(fd, "rb", buffering=0) as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(setting, f"{where} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = file.read(max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    if size > max_bytes:
        raise ConfigError(setting, f"{where} is larger than {max_bytes // 1024} KiB: not a PEM certificate and key")
    return b"".join(chunks)


def explain_auth_error(err: ClientAuthenticationError) -> str:
    """The admin's hint for a known AADSTS code, else the first line of azure-identity's text, redacted.

    That text quotes the token endpoint's answer, and an endpoint (a proxy, a misconfigured STS) may echo
    the request's form, client_secret included: redacted before the line is picked, so a secret holding a
    line break cannot leave its first half behind.
    """
    text = redact(str(err.message or err), keep_newlines=True)
    for code, hint in AADSTS_HINTS.items():
        if code in text:
            return f"{code}: {hint}"
    lines = text.splitlines()
    return f"token request failed: {lines[0][:300] if lines else type(err).__name__}"


class TokenProvider:
    """Gets bearer tokens for one tenant's API scope, turning sign-in failures into our errors."""

    def __init__(
        self,
        tenant: TenantConfig,
        credential: TokenCredential | None = None,
        *,
        session: requests.Session | None = None,
        scope: str | None = None,
    ) -> None:
        """``scope``: another resource's (Microsoft Graph's for the Graph sources); default the API's."""
        self._tenant = tenant
        self._scope = scope or tenant.token_scope
        self._credential = credential or build_credential(tenant, session=session)

    def get_token(self) -> str:
        try:
            return self._credential.get_token(self._scope).token
        except ClientAuthenticationError as err:
            message = self._tenant.in_own_terms(explain_auth_error(err))
            secretless = secretless_hint(self._tenant, redact(str(err.message or err)), self._credential)
            scrub_exception(err)  # chained as the cause: whoever prints ours with its causes sees redacted text
            if secretless is not None:
                # Consent or a federated credential missing needs an admin; a silent identity endpoint may recover.
                if secretless.startswith("AADSTS"):
                    raise ApiPermanentError(secretless, code=secretless.split(":")[0]) from err
                raise ApiTransientError(secretless) from err
            if any(code in message for code in AADSTS_HINTS):
                raise ApiPermanentError(message, code=message.split(":")[0]) from err
            if "authority configuration" in message:
                # MSAL's answer when the login host does not know the tenant (no AADSTS code survives).
                hint = self._tenant.in_own_terms(AADSTS_HINTS["AADSTS90002"])
                raise ApiPermanentError(f"AADSTS90002: {hint}", code="AADSTS90002") from err
            # Network trouble or a login-service hiccup: worth retrying.
            raise ApiTransientError(message) from err
