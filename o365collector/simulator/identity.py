"""Secretless sign-in: the App Service managed identity endpoint and federated identity credentials.

Two pieces of Entra the collector's secretless modes meet:

- the managed identity endpoint App Service and Functions expose to the app (``IDENTITY_ENDPOINT``,
  ``IDENTITY_HEADER``): plain HTTP on 127.0.0.1, ``GET ?api-version=2019-08-01&resource=...&client_id=...``
  with an ``X-IDENTITY-HEADER`` header, answering ``access_token`` and ``expires_on`` (epoch seconds), the
  protocol msal's ``_obtain_token_on_app_service`` speaks. A token for the API carries the app roles
  granted to the identity's service principal; a token for ``api://AzureADTokenExchange`` is an RS256
  JWT signed with this simulator's key (issuer ``https://login.microsoftonline.com/<home tenant>/v2.0``,
  subject the identity's object id), to be presented as a client assertion;
- the token endpoint's check of such an assertion for a multi-tenant app: the app must be consented in
  the tenant asked (else AADSTS700016), the assertion's signature and lifetime must hold (AADSTS50013,
  AADSTS700024), and one of the app's federated identity credentials must match its issuer, subject
  and audience exactly (else AADSTS70021, quoting all three as Entra does).
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import rsa

from .server import LOOPBACK, LoopbackHandler, LoopbackHTTPServer
from .times import Clock
from .tokens import GRAPH_HOSTS, MANAGE_HOSTS, AssertionGrant, TokenService
from .wire import Response, json_response

# The audiences Entra accepts for a federated assertion, per cloud (the US Government and China clouds
# have their own; Microsoft 365 GCC signs in to the commercial cloud).
TOKEN_EXCHANGE_AUDIENCES = frozenset(
    {"api://AzureADTokenExchange", "api://AzureADTokenExchangeUSGov", "api://AzureADTokenExchangeChina"}
)
APP_SERVICE_API_VERSION = "2019-08-01"
ISSUER_HOST = "https://login.microsoftonline.com"
# Key Vault's resource per cloud (the SDK asks for ``https://vault.azure.net/.default`` after the challenge).
KEY_VAULT_HOSTS = frozenset({"vault.azure.net", "vault.usgovcloudapi.net", "vault.azure.cn"})
_KEY_ID = "o365collector-simulator-identity"


@dataclass(frozen=True, slots=True)
class ManagedIdentitySpec:
    """A user-assigned managed identity of the function app, and the app roles its service principal holds."""

    client_id: str
    object_id: str
    tenant_id: str
    # App roles of "Office 365 Management APIs" granted to the identity's service principal.
    roles: tuple[str, ...] = ("ActivityFeed.Read", "ActivityFeed.ReadDlp")
    # Microsoft Graph application roles granted to it (the Graph sources: grant-api-access.sh --sources).
    graph_roles: tuple[str, ...] = ("AuditLog.Read.All", "ExchangeMessageTrace.Read.All")

    @property
    def issuer(self) -> str:
        return f"{ISSUER_HOST}/{self.tenant_id}/v2.0"


@dataclass(frozen=True, slots=True)
class FederatedCredentialSpec:
    """One federated identity credential of an app registration: who may sign in as the app."""

    issuer: str
    subject: str
    audience: str = "api://AzureADTokenExchange"


@dataclass(frozen=True, slots=True)
class MultiTenantAppSpec:
    """A multi-tenant app registration trusting federated assertions, and the tenants that consented to it."""

    client_id: str
    home_tenant: str
    federated_credentials: tuple[FederatedCredentialSpec, ...] = ()
    # tenant id -> the app roles its admin consented to (no entry: never consented there).
    consents: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class IdentityService:
    """The identities, the apps trusting them, and the managed identity endpoint (started on first use)."""

    def __init__(self, tokens: TokenService, clock: Clock, lifetime: dt.timedelta) -> None:
        self._tokens = tokens
        self._clock = clock
        self._lifetime = lifetime
        self._key_cache: rsa.RSAPrivateKey | None = None
        self._lock = threading.Lock()
        self._identities: dict[str, ManagedIdentitySpec] = {}
        self._apps: dict[str, MultiTenantAppSpec] = {}
        self.identity_header = secrets.token_urlsafe(24)
        self._server: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Issues a vault token for (object id, client id, tenant): the Key Vault stand-in's ``token_for``.
        self.vault_token: Callable[[str, str, str], str] | None = None

    @property
    def _key(self) -> rsa.RSAPrivateKey:
        # Made on first use: most simulators never sign an exchange token, and an RSA key takes a while.
        with self._lock:
            if self._key_cache is None:
                self._key_cache = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._key_cache

    # -- model ------------------------------------------------------------------------------------

    def add_managed_identity(self, spec: ManagedIdentitySpec) -> None:
        with self._lock:
            self._identities[spec.client_id.lower()] = spec

    def add_app(self, spec: MultiTenantAppSpec) -> None:
        with self._lock:
            self._apps[spec.client_id.lower()] = spec

    # -- the managed identity endpoint --------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The variables App Service sets for the app: azure-identity reads them from ``os.environ``."""
        return {"IDENTITY_ENDPOINT": self.start(), "IDENTITY_HEADER": self.identity_header}

    def start(self) -> str:
        """Start the endpoint if needed; its URL."""
        with self._lock:
            if self._server is None:
                self._server = _IdentityServer(self)
                self._thread = threading.Thread(
                    target=self._server.serve_forever, args=(0.05,), name="o365-simulator-identity", daemon=True
                )
                self._thread.start()
            port = self._server.server_address[1]
        return f"http://{LOOPBACK}:{port}/msi/token"

    def stop(self) -> None:
        with self._lock:
            server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def answer(self, query: Mapping[str, str], header: str | None) -> Response:
        """One managed identity token request, answered as App Service does."""
        if header is None or not secrets.compare_digest(header.encode(), self.identity_header.encode()):
            return _mi_error(401, "The X-IDENTITY-HEADER header is missing or does not match IDENTITY_HEADER.")
        if query.get("api-version") != APP_SERVICE_API_VERSION:
            return _mi_error(400, f"api-version {query.get('api-version')!r} is not supported.")
        identity = self._identity(query.get("client_id"))
        if identity is None:
            return _mi_error(400, "Unable to load the requested managed identity (no such client_id on this app).")
        resource = (query.get("resource") or "").rstrip("/")
        host = resource.lower().removeprefix("https://")
        now = self._clock()
        if host in MANAGE_HOSTS:
            token, _ = self._tokens.issue(identity.tenant_id, identity.client_id, identity.roles, f"https://{host}")
        elif host in GRAPH_HOSTS:
            token, _ = self._tokens.issue(identity.tenant_id, identity.client_id, identity.graph_roles, f"https://{host}")
        elif resource in TOKEN_EXCHANGE_AUDIENCES:
            token = self.exchange_token(identity, resource, now)
        elif host in KEY_VAULT_HOSTS and self.vault_token is not None:
            # Key Vault authorizes by the caller's object id (its RBAC role assignments name principals).
            token = self.vault_token(identity.object_id, identity.client_id, identity.tenant_id)
        else:
            return _mi_error(
                400,
                f"AADSTS500011: The resource principal named {resource} was not found in the tenant named "
                f"{identity.tenant_id}.",
            )
        # expires_on on the wall clock: msal subtracts time.time() from it to cache the token.
        expires_on = int(time.time() + self._lifetime.total_seconds())
        payload = {
            "access_token": token,
            "expires_on": str(expires_on),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }
        return json_response(200, payload)

    def exchange_token(self, identity: ManagedIdentitySpec, audience: str, now: dt.datetime) -> str:
        """The identity's token for ``audience``, RS256-signed by the simulator's key, as Entra issues it."""
        iat = int(now.timestamp())
        claims = {
            "aud": audience,
            "iss": identity.issuer,
            "iat": iat,
            "nbf": iat,
            "exp": iat + int(self._lifetime.total_seconds()),
            "sub": identity.object_id,
            "oid": identity.object_id,
            "azp": identity.client_id,
            "tid": identity.tenant_id,
            "idtyp": "app",
            "ver": "2.0",
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": _KEY_ID})

    def _identity(self, client_id: str | None) -> ManagedIdentitySpec | None:
        with self._lock:
            if client_id:
                return self._identities.get(client_id.lower())
            # No client_id: the system-assigned identity, here the only identity if there is just one.
            only = list(self._identities.values())
            return only[0] if len(only) == 1 else None

    # -- the token endpoint's federated check ---------------------------------------------------------

    def check_federated(self, tenant: str, client_id: str, assertion: str) -> AssertionGrant | Response:
        """A federated client assertion for ``client_id`` in ``tenant``: the grant, or Entra's refusal."""
        with self._lock:
            app = self._apps.get(client_id.lower())
        consents = {t.lower(): roles for t, roles in (app.consents if app else {}).items()}
        if app is None or tenant.lower() not in consents:
            message = (
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can "
                "happen if the application has not been installed by the administrator of the tenant or consented "
                "to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            )
            return self._tokens.error(400, "unauthorized_client", 700016, message)
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                self._key.public_key(),
                algorithms=["RS256"],
                options={"verify_aud": False, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            return self._tokens.error(401, "invalid_client", 50013, "Assertion failed signature validation.")
        now = int(self._clock().timestamp())
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= now:
            return self._tokens.error(
                401, "invalid_client", 700024, "Client assertion is not within its valid time range."
            )
        presented = FederatedCredentialSpec(str(claims.get("iss")), str(claims.get("sub")), str(claims.get("aud")))
        if presented not in app.federated_credentials:
            message = (
                "No matching federated identity record found for presented assertion. "
                f"Assertion Issuer: '{presented.issuer}'. Assertion Subject: '{presented.subject}'. "
                f"Assertion Audience: '{presented.audience}'."
            )
            return self._tokens.error(401, "invalid_client", 70021, message)
        return AssertionGrant(tenant, app.client_id, consents[tenant.lower()])


class _IdentityServer(LoopbackHTTPServer):
    def __init__(self, service: IdentityService) -> None:
        self.service = service
        super().__init__(0, _IdentityHandler)


class _IdentityHandler(LoopbackHandler):
    server: _IdentityServer
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the query holds nothing secret, but the endpoint is chatty and tests run many

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        if split.path != "/msi/token":
            response = _mi_error(404, f"no route {split.path}")
        else:
            query = dict(parse_qsl(split.query, keep_blank_values=True))
            response = self.server.service.answer(query, self.headers.get("X-IDENTITY-HEADER"))
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type or "application/json")
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)


def _mi_error(status: int, message: str) -> Response:
    # App Service's shape: msal turns it into ("invalid_scope", "<statusCode>, <message>").
    body = orjson.dumps({"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())})
    return Response(status, body, "application/json")



# The demo's identity and multi-tenant app (fixed ids: printed settings stay the same between runs).
DEMO_IDENTITY_CLIENT_ID = "5e1f0000-0000-4000-8000-00000000001d"
DEMO_IDENTITY_OBJECT_ID = "5e1f0000-0000-4000-8000-0000000000b1"
DEMO_APP_CLIENT_ID = "5e1f0000-0000-4000-8000-0000000000a9"


def secretless_environment(identity: IdentityService, tenant_id: str, mode: str) -> dict[str, str]:
    """Set up ``mode`` for ``tenant_id`` (the identity lives there; the app is consented there) and return
    the settings that replace the client secret: the identity endpoint's variables, AZURE_CLIENT_ID and
    O365_AUTH_MODE. ``O365_CLIENT_ID``/``O365_CLIENT_SECRET`` come back empty: nothing secret is needed."""
    spec = ManagedIdentitySpec(DEMO_IDENTITY_CLIENT_ID, DEMO_IDENTITY_OBJECT_ID, tenant_id)
    identity.add_managed_identity(spec)
    env = identity.environment() | {
        "AZURE_CLIENT_ID": spec.client_id,
        "O365_AUTH_MODE": mode,
        "O365_CLIENT_ID": "",
        "O365_CLIENT_SECRET": "",
    }
    if mode == "federated":
        fic = FederatedCredentialSpec(spec.issuer, spec.object_id)
        identity.add_app(MultiTenantAppSpec(DEMO_APP_CLIENT_ID, tenant_id, (fic,), {tenant_id: spec.roles}))
        env["O365_CLIENT_ID"] = DEMO_APP_CLIENT_ID
    return env
