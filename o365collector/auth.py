"""Builds the azure-identity credential for a tenant and fetches tokens for its API scope.

azure-identity (MSAL underneath) owns the OAuth exchange and the token cache; tokens are refreshed
before they expire. For an authority host that is not a Microsoft login host (a proxy, the local
simulator) instance discovery is turned off, otherwise MSAL would ask login.microsoftonline.com to
vouch for it. TLS trust follows ``REQUESTS_CA_BUNDLE`` like every requests-based client.
"""

from __future__ import annotations

from typing import Any

import requests
from azure.core.credentials import TokenCredential
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import CertificateCredential, ClientSecretCredential

from .config import CertificateCredentialConfig, TenantConfig
from .errors import ApiPermanentError, ApiTransientError

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
    if isinstance(cred, CertificateCredentialConfig):
        return CertificateCredential(tenant.tenant_id, cred.client_id, cred.certificate_path, **options)
    return ClientSecretCredential(tenant.tenant_id, cred.client_id, cred.client_secret.reveal(), **options)


def explain_auth_error(err: ClientAuthenticationError) -> str:
    text = str(err.message or err)
    for code, hint in AADSTS_HINTS.items():
        if code in text:
            return f"{code}: {hint}"
    return f"token request failed: {text.splitlines()[0][:300] if text else type(err).__name__}"


class TokenProvider:
    """Gets bearer tokens for one tenant's API scope, turning sign-in failures into our errors."""

    def __init__(
        self,
        tenant: TenantConfig,
        credential: TokenCredential | None = None,
        *,
        session: requests.Session | None = None,
    ) -> None:
        self._scope = tenant.token_scope
        self._credential = credential or build_credential(tenant, session=session)

    def get_token(self) -> str:
        try:
            return self._credential.get_token(self._scope).token
        except ClientAuthenticationError as err:
            message = explain_auth_error(err)
            if any(code in message for code in AADSTS_HINTS):
                raise ApiPermanentError(message, code=message.split(":")[0]) from err
            if "authority configuration" in message:
                # MSAL's answer when the login host does not know the tenant (no AADSTS code survives).
                raise ApiPermanentError(f"AADSTS90002: {AADSTS_HINTS['AADSTS90002']}", code="AADSTS90002") from err
            # Network trouble or a login-service hiccup: worth retrying.
            raise ApiTransientError(message) from err
