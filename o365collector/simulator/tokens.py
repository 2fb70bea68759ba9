"""The Entra ID (AAD) token endpoint, as far as MSAL's client-credentials flow needs it.

With ``disable_instance_discovery=True`` MSAL makes two calls (offline-tooling.md §5):
``GET /{tenant}/v2.0/.well-known/openid-configuration`` and ``POST /{tenant}/oauth2/v2.0/token``.
Errors use Entra's OAuth shape and its AADSTS codes, so the collector's error handling meets the
messages an operator would see. Issued tokens are JWT-shaped (the signature is an HMAC, not RS256;
nothing verifies it) and remembered, so the feed can refuse unknown or expired ones.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson

from .assertions import CertificateAssertions, is_certificate_assertion
from .store import Store, is_guid
from .times import Clock
from .wire import Response, json_response

# API hosts per Microsoft 365 cloud ([REF] §1.6); the scope is the host + "/.default".
MANAGE_HOSTS = frozenset(
    {"manage.office.com", "manage-gcc.office.com", "manage.office365.us", "manage.protection.apps.mil"}
)
# Microsoft Graph per cloud (global, US Gov L4, US Gov L5 DoD): a token for one is refused by the feed and vice versa.
GRAPH_HOSTS = frozenset({"graph.microsoft.com", "graph.microsoft.us", "dod-graph.microsoft.us"})
_RESERVED_SCOPES = frozenset({"openid", "profile", "offline_access"})


def is_graph_audience(audience: str) -> bool:
    return audience.lower().removeprefix("https://") in GRAPH_HOSTS


@dataclass(frozen=True, slots=True)
class IssuedToken:
    tenant_id: str
    client_id: str
    roles: tuple[str, ...]
    audience: str
    issued_at: dt.datetime
    expires_at: dt.datetime


@dataclass(frozen=True, slots=True)
class AssertionGrant:
    """What a verified federated client assertion grants: the app in the tenant, with its consented roles."""

    tenant_id: str
    client_id: str
    roles: tuple[str, ...]


# Checks a federated client assertion (tenant, client_id, assertion): the grant or Entra's refusal.
FederatedCheck = Callable[[str, str, str], "AssertionGrant | Response"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenService:
    def __init__(self, store: Store, clock: Clock, lifetime: dt.timedelta) -> None:
        self._store = store
        self._clock = clock
        self._lifetime = lifetime
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._tokens: dict[str, IssuedToken] = {}
        # The apps' registered certificates (set by the Simulator, which knows the endpoint's URL).
        self.certificates: CertificateAssertions | None = None
        # Federated identity credentials of multi-tenant apps (simulator/identity.py, set by the Simulator).
        self.federated: FederatedCheck | None = None
        # Tests flip this to model a token endpoint (a proxy, a misconfigured STS) that refuses every request
        # and quotes it back, client_secret included: the collector must never pass such text on.
        self.echo_requests = False

    # -- endpoints ------------------------------------------------------------------------------

    def openid_configuration(self, base_url: str, tenant: str) -> Response:
        if self._store.tenant(tenant) is None:
            return self._error(400, "invalid_tenant", 90002, self._tenant_not_found(tenant))
        root = f"{base_url}/{tenant}"
        return json_response(
            200,
            {
                "token_endpoint": f"{root}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base_url}/{tenant}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{root}/v2.0",
                "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
                "tenant_region_scope": "EU",
            },
        )

    def token(self, tenant: str, body: bytes) -> tuple[Response, IssuedToken | None]:
        """Answer a token request; the issued token (if any) is returned for the stats."""
        raw = body.decode("utf-8", "replace")
        form = dict(parse_qsl(raw, keep_blank_values=True))
        if self.echo_requests:
            message = f"Request could not be processed. Received: {raw} Parsed: {orjson.dumps(form).decode()}"
            return self._error(400, "invalid_request", 50000, message), None
        state = self._store.tenant(tenant)
        if state is None:
            return self._error(400, "invalid_request", 90002, self._tenant_not_found(tenant)), None
        if form.get("grant_type") != "client_credentials":
            grant = form.get("grant_type", "")
            message = f"The provided value for the 'grant_type' parameter ('{grant}') is not supported."
            return self._error(400, "unsupported_grant_type", 70003, message), None
        client_id = form.get("client_id", "")
        if not client_id:
            message = "The request body must contain the following parameter: 'client_id'."
            return self._error(400, "invalid_request", 900144, message), None
        spec = state.spec
        if self.federated is not None and form.get("client_assertion") and not is_certificate_assertion(form):
            # A multi-tenant app's federated assertion: the app is judged by its consent, not by spec.client_id.
            return self._federated_token(tenant, client_id, form)
        if client_id.lower() != spec.client_id.lower():
            message = (
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen "
                "if the application has not been installed by the administrator of the tenant or consented to by any "
                "user in the tenant. You may have sent your authentication request to the wrong tenant."
            )
            return self._error(400, "unauthorized_client", 700016, message), None
        proven = False  # by a certificate assertion instead of a secret
        if self.certificates is not None and is_certificate_assertion(form):
            refusal = self.certificates.check(tenant, client_id, form)
            if refusal is not None:
                return self._error(refusal.status, refusal.error, refusal.code, refusal.message), None
            proven = True
        secret = form.get("client_secret")
        if not secret and not proven:
            message = "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."
            return self._error(401, "invalid_client", 7000216, message), None
        if not proven and not hmac.compare_digest((secret or "").encode(), spec.client_secret.encode()):
            message = (
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
                f"value, not the client secret ID, for a secret added to app '{spec.client_id}'."
            )
            return self._error(401, "invalid_client", 7000215, message), None
        if spec.secret_expired and not proven:
            message = (
                f"The provided client secret keys for app '{spec.client_id}' are expired. Visit the Azure portal to "
                "create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate "
                "credentials for added security: https://aka.ms/certCreds."
            )
            return self._error(401, "invalid_client", 7000222, message), None
        audience = self._audience(form.get("scope", ""))
        if audience is None:
            message = (
                f"The provided value for scope {form.get('scope', '')} is not valid. Client credential flows must have "
                "a scope value with /.default suffixed to the resource identifier (application ID URI)."
            )
            return self._error(400, "invalid_scope", 1002012, message), None
        if not audience:
            message = (
                f"The resource principal named {form.get('scope', '')} was not found in the tenant named {tenant}. "
                "This can happen if the application has not been installed by the administrator of the tenant."
            )
            return self._error(400, "invalid_resource", 500011, message), None
        now = self._clock()
        # A Graph token's roles are the Graph application permissions granted (store.TenantSpec.graph_roles).
        roles = spec.graph_roles if is_graph_audience(audience) else spec.roles
        issued = IssuedToken(spec.tenant_id, spec.client_id, roles, audience, now, now + self._lifetime)
        access_token = self._encode(issued)
        with self._lock:
            self._tokens[access_token] = issued
        seconds = int(self._lifetime.total_seconds())
        payload = {
            "token_type": "Bearer",
            "expires_in": seconds,
            "ext_expires_in": seconds,
            "access_token": access_token,
        }
        return json_response(200, payload), issued

    def _federated_token(
        self, tenant: str, client_id: str, form: dict[str, str]
    ) -> tuple[Response, IssuedToken | None]:
        assert self.federated is not None
        outcome = self.federated(tenant, client_id, form.get("client_assertion", ""))
        if isinstance(outcome, Response):
            return outcome, None
        audience = self._audience(form.get("scope", ""))
        if not audience:
            message = f"The provided value for scope {form.get('scope', '')} is not valid for this API."
            return self._error(400, "invalid_scope", 1002012, message), None
        roles = outcome.roles
        if is_graph_audience(audience):  # the Graph roles the tenant's admin granted the app (TenantSpec)
            state = self._store.tenant(outcome.tenant_id)
            roles = state.spec.graph_roles if state is not None else ()
        token, issued = self.issue(outcome.tenant_id, outcome.client_id, roles, audience)
        seconds = int(self._lifetime.total_seconds())
        payload = {"token_type": "Bearer", "expires_in": seconds, "ext_expires_in": seconds, "access_token": token}
        return json_response(200, payload), issued

    def issue(self, tenant_id: str, client_id: str, roles: tuple[str, ...], audience: str) -> tuple[str, IssuedToken]:
        """A token the feed accepts (the managed identity endpoint issues API tokens through this too)."""
        now = self._clock()
        issued = IssuedToken(tenant_id, client_id, roles, audience, now, now + self._lifetime)
        access_token = self._encode(issued)
        with self._lock:
            self._tokens[access_token] = issued
        return access_token, issued

    def error(self, status: int, error: str, code: int, message: str) -> Response:
        """An Entra error answer (AADSTS code, trace and correlation ids)."""
        return self._error(status, error, code, message)

    # -- used by the feed -----------------------------------------------------------------------

    def validate(self, authorization: str | None) -> IssuedToken | None:
        """The feed's token behind an ``Authorization: Bearer …`` header, or None if missing/unknown/expired
        or issued for Microsoft Graph (another audience)."""
        issued, _ = self.inspect(authorization)
        if issued is None or is_graph_audience(issued.audience):
            return None
        return issued

    def inspect(self, authorization: str | None) -> tuple[IssuedToken | None, str]:
        """The valid token behind the header, or None and why: ``empty``, ``malformed``, ``unknown``, ``expired``."""
        if not authorization:
            return None, "empty"
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None, "empty"
        if value.strip().count(".") != 2:
            return None, "malformed"
        with self._lock:
            issued = self._tokens.get(value.strip())
        if issued is None:
            return None, "unknown"
        if self._clock() >= issued.expires_at:
            return None, "expired"
        return issued, ""

    def revoke_all(self) -> None:
        with self._lock:
            self._tokens.clear()

    # -- helpers --------------------------------------------------------------------------------

    @staticmethod
    def _audience(scope: str) -> str | None:
        """``https://manage.office.com`` (or a Graph root) for its ``/.default`` scope; "" for another resource;
        None if malformed."""
        scopes = [s for s in scope.split() if s.lower() not in _RESERVED_SCOPES]
        if len(scopes) != 1 or not scopes[0].lower().endswith("/.default"):
            return None
        resource = scopes[0][: -len("/.default")].rstrip("/")
        host = resource.lower().removeprefix("https://")
        return f"https://{host}" if host in MANAGE_HOSTS or host in GRAPH_HOSTS else ""

    def _encode(self, issued: IssuedToken) -> str:
        tid = issued.tenant_id
        header = {"typ": "JWT", "alg": "RS256", "kid": "o365collector-simulator"}
        iat = int(issued.issued_at.timestamp())
        claims = {
            "aud": issued.audience,
            "iss": f"https://sts.windows.net/{tid}/",
            "iat": iat,
            "nbf": iat,
            "exp": int(issued.expires_at.timestamp()),
            "appid": issued.client_id,
            "appidacr": "1",
            "idp": f"https://sts.windows.net/{tid}/",
            "idtyp": "app",
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tid}/{issued.client_id}")),
            "roles": list(issued.roles),
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tid}/{issued.client_id}")),
            "tid": tid,
            "uti": _b64url(secrets.token_bytes(16)),
            "ver": "1.0",
        }
        signing_input = f"{_b64url(orjson.dumps(header))}.{_b64url(orjson.dumps(claims))}"
        signature = hmac.new(self._key, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64url(signature)}"

    @staticmethod
    def _tenant_not_found(tenant: str) -> str:
        what = "Tenant" if is_guid(tenant) else "Tenant identifier"
        return (
            f"{what} '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the "
            "correct cloud. Check with your subscription administrator, this may happen if there are no active "
            "subscriptions for the tenant."
        )

    def _error(self, status: int, error: str, code: int, message: str) -> Response:
        now = self._clock()
        trace, correlation = uuid.uuid4(), uuid.uuid4()
        stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        payload: dict[str, Any] = {
            "error": error,
            "error_description": f"AADSTS{code}: {message} Trace ID: {trace} Correlation ID: {correlation} "
            f"Timestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": str(trace),
            "correlation_id": str(correlation),
        }
        return json_response(status, payload)


def match(segments: list[str]) -> tuple[str, str] | None:
    """``("openid" | "token", tenant)`` for the two Entra paths MSAL calls, else None."""
    tail = [s.lower() for s in segments[1:]]
    if len(segments) == 4 and tail == ["v2.0", ".well-known", "openid-configuration"]:
        return "openid", segments[0]
    if len(segments) == 4 and tail == ["oauth2", "v2.0", "token"]:
        return "token", segments[0]
    return None
