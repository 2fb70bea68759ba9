"""A Key Vault stand-in: certificates read through their secret, the way an app reads a certificate's key.

A Key Vault certificate is stored with a secret of the same name holding the private key and the
certificate: base64 PKCS#12 (``contentType: application/x-pkcs12``) or PEM text
(``application/x-pem-file``). Each renewal adds a version; ``GET /secrets/{name}`` answers the latest.
The wire follows the data plane: a request without a token gets 401 with the bearer challenge the
SDK's challenge policy parses (``authorization``, ``resource``); a token whose principal holds no
"Key Vault Secrets User" grant gets 403 ``ForbiddenByRbac``; an unknown name 404 ``SecretNotFound``.
Tokens are handed out by ``token_for``, which the simulator's managed identity endpoint calls for a
``https://vault.azure.net`` token (identity.py): the app reads the vault as its identity's object id.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from .times import Clock
from .wire import Request, Response, json_response

PKCS12 = "application/x-pkcs12"
PEM = "application/x-pem-file"
API_VERSIONS = frozenset({"7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"})
# The role an identity needs to read a certificate's secret (RBAC vault).
SECRETS_USER = "Key Vault Secrets User"


@dataclass(frozen=True, slots=True)
class _Caller:
    principal: str  # object id, lower case
    app_id: str | None
    tenant_id: str | None


@dataclass(frozen=True, slots=True)
class SecretVersion:
    name: str
    version: str
    value: str
    content_type: str
    not_before: dt.datetime
    expires: dt.datetime
    created: dt.datetime


def certificate_secret(key: PrivateKeyTypes, certificate: x509.Certificate, content_type: str) -> str:
    """The secret value Key Vault keeps for a certificate: base64 PFX (no password) or PEM text."""
    if content_type == PKCS12:
        pfx = pkcs12.serialize_key_and_certificates(
            None,
            key,  # type: ignore[arg-type]
            certificate,
            None,
            serialization.NoEncryption(),
        )
        return base64.b64encode(pfx).decode("ascii")
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return (private + certificate.public_bytes(serialization.Encoding.PEM)).decode("ascii")


class KeyVaultService:
    """One vault at ``base_url()``: certificate secrets with versions, grants and issued tokens."""

    def __init__(self, clock: Clock, base_url: Callable[[], str]) -> None:
        self._clock = clock
        self._base_url = base_url  # known once the server has its port
        self._lock = threading.Lock()
        self._secrets: dict[str, list[SecretVersion]] = {}
        self._tokens: dict[str, _Caller] = {}  # access token -> who it was issued to
        self._readers: set[str] = set()
        self.reads = 0
        self.refused: list[str] = []  # principals refused for want of a role assignment

    # -- set up by tests and the demo -------------------------------------------------------------

    def import_certificate(
        self, name: str, key: PrivateKeyTypes, certificate: x509.Certificate, *, content_type: str = PKCS12
    ) -> str:
        """Add a new version of certificate ``name`` (as an import or a renewal would); its version id."""
        now = self._clock()
        version = uuid.uuid4().hex
        entry = SecretVersion(
            name,
            version,
            certificate_secret(key, certificate, content_type),
            content_type,
            certificate.not_valid_before_utc,
            certificate.not_valid_after_utc,
            now,
        )
        with self._lock:
            self._secrets.setdefault(name.lower(), []).append(entry)
        return version

    def grant_secrets_user(self, principal: str) -> None:
        """A role assignment of "Key Vault Secrets User" on the vault for ``principal``."""
        with self._lock:
            self._readers.add(principal.lower())

    def token_for(self, principal: str, app_id: str | None = None, tenant_id: str | None = None) -> str:
        """An access token for ``https://vault.azure.net`` as ``principal`` (an object id) gets it from its
        identity endpoint (the simulator's managed identity endpoint calls this)."""
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = _Caller(principal.lower(), app_id, tenant_id)
        return token

    # -- the data plane -------------------------------------------------------------------------

    def handle(self, request: Request, name: str, version: str | None) -> Response:
        if request.method != "GET":
            return self._error(405, "BadParameter", f"The HTTP method '{request.method}' is not supported.")
        api_version = request.query.get("api-version")
        if api_version not in API_VERSIONS:
            return self._error(400, "BadParameter", "The specified version of the API is not supported.")
        caller = self._caller(request.header("authorization"))
        if caller is None:
            return self._challenge()
        with self._lock:
            allowed = caller.principal in self._readers
            versions = list(self._secrets.get(name.lower(), ()))
        if not allowed:
            with self._lock:
                self.refused.append(caller.principal)
            # The data plane's RBAC refusal: code Forbidden, inner code ForbiddenByRbac, the caller and action.
            who = ";".join(
                part
                for part in (
                    f"appid={caller.app_id}" if caller.app_id else "",
                    f"oid={caller.principal}",
                    f"iss=https://sts.windows.net/{caller.tenant_id}/" if caller.tenant_id else "",
                )
                if part
            )
            return self._error(
                403,
                "Forbidden",
                "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or "
                "role definitions were changed recently, please observe propagation time.\r\n"
                f"Caller: {who}\r\nAction: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\n"
                f"Resource: '/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/simulator/providers/"
                f"microsoft.keyvault/vaults/simulator/secrets/{name.lower()}'\r\n"
                "Assignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\n"
                "Vault: simulator;location=local\r\n",
                inner="ForbiddenByRbac",
            )
        if version is None:
            found = versions[-1] if versions else None
        else:
            found = next((v for v in versions if v.version == version), None)
        if found is None:
            what = name if version is None else f"{name}/{version}"
            return self._error(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {what} was not found in this key vault. If you recently deleted this secret "
                "you may be able to recover it using the correct recovery command. For help resolving this issue, "
                "please see https://go.microsoft.com/fwlink/?linkid=2125182",
            )
        with self._lock:
            self.reads += 1
        return json_response(200, self._bundle(found))

    def _bundle(self, entry: SecretVersion) -> dict[str, object]:
        root = self._base_url().rstrip("/")
        return {
            "value": entry.value,
            "contentType": entry.content_type,
            "id": f"{root}/secrets/{entry.name}/{entry.version}",
            "kid": f"{root}/keys/{entry.name}/{entry.version}",
            "managed": True,
            "attributes": {
                "enabled": True,
                "nbf": int(entry.not_before.timestamp()),
                "exp": int(entry.expires.timestamp()),
                "created": int(entry.created.timestamp()),
                "updated": int(entry.created.timestamp()),
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
            "tags": {},
        }

    def _caller(self, authorization: str | None) -> _Caller | None:
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self._lock:
            return self._tokens.get(value.strip())

    def _challenge(self) -> Response:
        challenge = (
            'Bearer authorization="https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47", '
            'resource="https://vault.azure.net"'
        )
        body = {"error": {"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}}
        return json_response(401, body, headers=[("WWW-Authenticate", challenge)])

    @staticmethod
    def _error(status: int, code: str, message: str, *, inner: str | None = None) -> Response:
        error: dict[str, object] = {"code": code, "message": message}
        if inner:
            error["innererror"] = {"code": inner}
        return json_response(status, {"error": error})


def match(segments: list[str]) -> tuple[str, str | None] | None:
    """``(name, version)`` for ``/secrets/{name}[/{version}]``, else None."""
    if len(segments) in (2, 3) and segments[0].lower() == "secrets" and segments[1]:
        return segments[1], segments[2] if len(segments) == 3 else None
    return None
