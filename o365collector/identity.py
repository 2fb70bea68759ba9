"""Secretless sign-in: the function app's managed identity, directly or as a federated credential.

``managedIdentity``: azure-identity's ``ManagedIdentityCredential`` (App Service's ``IDENTITY_ENDPOINT``)
gets the API token itself; the identity's service principal must hold the ActivityFeed.Read app role
of "Office 365 Management APIs". Its own tenant only.

``federated``: a multi-tenant app registration trusts the identity through a federated identity
credential (FIC); each customer tenant consents to the app. ``ClientAssertionCredential`` signs in to
each tenant as the app, the assertion being the identity's token for the token exchange audience
(``api://AzureADTokenExchange``, per cloud). No secret is stored anywhere.

Failures here need an admin, not a retry: the hints say what is missing and the command that fixes it.
"""

from __future__ import annotations

import base64
import binascii
import threading
from typing import Any

import orjson
from azure.core.credentials import TokenCredential
from azure.identity import ClientAssertionCredential, ManagedIdentityCredential

from .tenant_config import FederatedCredentialConfig, ManagedIdentityCredentialConfig, TenantConfig

GRANT_SCRIPT = "scripts/grant-api-access.sh"


class ExchangeAssertion:
    """The managed identity's token for the token exchange audience, as ``ClientAssertionCredential``'s func.

    Remembers the claims of the last assertion (issuer, subject, audience; never the token), so that a
    refusal (AADSTS70021) can tell the admin exactly which federated identity credential is missing.
    """

    def __init__(self, identity: TokenCredential, audience: str) -> None:
        self._identity = identity
        self._scope = audience + "/.default"
        self._lock = threading.Lock()
        self.claims: dict[str, Any] = {}

    def __call__(self) -> str:
        token = self._identity.get_token(self._scope).token  # cached by azure-identity until near expiry
        with self._lock:
            self.claims = unverified_claims(token)
        return token


class FederatedCredential(ClientAssertionCredential):
    """``ClientAssertionCredential`` keeping its assertion source, for the hints."""

    def __init__(self, tenant_id: str, client_id: str, assertion: ExchangeAssertion, **kwargs: Any) -> None:
        super().__init__(tenant_id, client_id, assertion, **kwargs)
        self.assertion = assertion


def build_secretless_credential(
    tenant: TenantConfig,
    cred: ManagedIdentityCredentialConfig | FederatedCredentialConfig,
    options: dict[str, Any],
) -> TokenCredential:
    """The tenant's credential; ``options`` are the login-host options of ``auth.build_credential``."""
    transport = {"transport": options["transport"]} if "transport" in options else {}
    # client_id passed explicitly: App Service may host several identities, and the default is the
    # system-assigned one, which holds no role.
    identity = ManagedIdentityCredential(client_id=cred.identity_client_id, **transport)
    if isinstance(cred, ManagedIdentityCredentialConfig):
        return identity
    assertion = ExchangeAssertion(identity, cred.token_exchange_audience)
    # AadClient posts to {authority}/{tenant}/oauth2/v2.0/token without instance discovery.
    return FederatedCredential(
        tenant.tenant_id, cred.client_id, assertion, authority=options["authority"], **transport
    )


def unverified_claims(token: str) -> dict[str, Any]:
    """A JWT's claims, signature NOT verified: only to describe it in a hint, never to decide access."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def consent_url(tenant: TenantConfig, client_id: str) -> str:
    return f"{tenant.authority_host}/{tenant.tenant_id}/adminconsent?client_id={client_id}"


def secretless_hint(tenant: TenantConfig, text: str, credential: TokenCredential | None = None) -> str | None:
    """What the admin must do about a sign-in failure of a secretless mode, or None (not one of ours)."""
    cred = tenant.credential
    if not isinstance(cred, ManagedIdentityCredentialConfig | FederatedCredentialConfig):
        return None
    if isinstance(cred, FederatedCredentialConfig) and "AADSTS700016" in text:
        return (
            f"AADSTS700016: the app {cred.client_id} is not consented in tenant {tenant.tenant_id}: an admin of "
            f"that tenant must open {consent_url(tenant, cred.client_id)} and accept (Office 365 Management APIs, "
            "ActivityFeed.Read)"
        )
    if isinstance(cred, FederatedCredentialConfig) and "AADSTS70021" in text:
        claims = credential.assertion.claims if isinstance(credential, FederatedCredential) else {}
        issuer = claims.get("iss", "https://login.microsoftonline.com/<identity's tenant>/v2.0")
        subject = claims.get("sub", "<the identity's principal (object) id>")
        audience = claims.get("aud", cred.token_exchange_audience)
        return (
            f"AADSTS70021: no federated identity credential of app {cred.client_id} matches the managed identity's "
            f"token (issuer {issuer}, subject {subject}, audience {audience}): add it with "
            f"`{GRANT_SCRIPT} --federated --app-id {cred.client_id} --identity {subject}` (the subject must be "
            "the identity's principal id, not its client id)"
        )
    if "AADSTS" not in text and ("managed identity" in text.lower() or "IDENTITY_ENDPOINT" in text):
        which = f"AZURE_CLIENT_ID {cred.identity_client_id}" if cred.identity_client_id else "the system-assigned"
        return (
            f"the managed identity ({which}) gave no token: check that the identity is assigned to the function "
            f"app and that AZURE_CLIENT_ID is its client id ({text.splitlines()[0][:200] if text else ''})"
        )
    return None


def missing_role_hint(tenant: TenantConfig, role: str) -> str | None:
    """How to grant ``role`` in a secretless mode (AF10001 from the API), or None for the other modes."""
    cred = tenant.credential
    dlp = " --dlp" if role.endswith("ReadDlp") else ""
    if isinstance(cred, ManagedIdentityCredentialConfig):
        return (
            f"AF10001: the managed identity's service principal lacks the {role} app role of Office 365 "
            f"Management APIs: run `{GRANT_SCRIPT} --identity <the identity's principal id>{dlp}` as an admin "
            f"of tenant {tenant.tenant_id}"
        )
    if isinstance(cred, FederatedCredentialConfig):
        return (
            f"AF10001: app {cred.client_id} holds no {role} role in tenant {tenant.tenant_id}: add Office 365 "
            f"Management APIs > {role} (application) to the app registration, then an admin of the tenant "
            f"consents again at {consent_url(tenant, cred.client_id)}"
        )
    return None
