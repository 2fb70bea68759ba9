"""A local stand-in for Azure Monitor's Logs Ingestion API and the Entra token endpoint in front of it.

``LogsIngestionBackend`` serves, over HTTPS on 127.0.0.1 (a CA it generates; trust ``ca_file``):

* the two Entra paths MSAL's client-credentials flow calls when instance discovery is off:
  ``GET /{tenant}/v2.0/.well-known/openid-configuration`` and ``POST /{tenant}/oauth2/v2.0/token``.
  It issues opaque bearer tokens for the one configured app (client id + secret) and only for the
  ``{audience}/.default`` scope, with Entra's error shape (``AADSTS7000215`` for a wrong secret);
* the upload call of the Logs Ingestion API, as the service documents it:
  ``POST /dataCollectionRules/{immutable DCR id}/streams/{stream}?api-version=2023-01-01`` with a
  JSON array body (``Content-Type: application/json``, optionally ``Content-Encoding: gzip``) and a
  bearer token. ``204`` means accepted. Errors use the service's ``{"error": {"code", "message"}}``
  shape: 401 without a valid token, 403 ``OperationFailed`` when the identity lacks the role on the
  DCR, 404 for an unknown DCR or stream, 413 ``ContentLengthLimitExceeded`` above 1,048,576 bytes
  of request body, 400 for a body that is not a JSON array of objects.

Scripting: ``fail_next`` (a status, optionally with Retry-After), ``drop_next`` (close the connection
without answering), ``revoke_role`` (403 from then on), ``revoke_tokens`` (401 for the tokens issued
so far). Every upload is recorded, accepted or not, before it is answered; ``records`` holds the
records of accepted uploads in arrival order.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import secrets
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qs, parse_qsl, urlsplit

from tests.loopback import LoopbackService, OwnedHandler

API_VERSION = "2023-01-01"
MAX_CONTENT_LENGTH = 1024 * 1024  # the service's figure: "Maximum allowed content length: 1048576 bytes (1 MB)"


@dataclass(frozen=True)
class Upload:
    """One POST to the ingestion path, as received, and the status it got."""

    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Header names in lower case."""
    content_length: int
    """Bytes on the wire (compressed when gzip)."""
    body: bytes
    """The JSON text after undoing Content-Encoding."""
    records: list[Any] | None
    status: int


@dataclass
class _Scripted:
    status: int
    retry_after: str | None = None
    drop: bool = False


@dataclass
class _State:
    failures: deque[_Scripted] = field(default_factory=deque)
    role_assigned: bool = True
    tokens: set[str] = field(default_factory=set)
    uploads: list[Upload] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    token_requests: int = 0


class LogsIngestionBackend(LoopbackService):
    """Fake Entra + Logs Ingestion endpoint on ``https://127.0.0.1:<port>``; use as a context manager."""

    def __init__(
        self,
        *,
        tenant_id: str,
        client_id: str,
        client_secret: str,
        dcr_id: str,
        stream: str = "Custom-O365AuditLogs",
        audience: str = "https://monitor.azure.com",
    ) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.dcr_id = dcr_id
        self.stream = stream
        self.audience = audience
        self._lock = threading.Lock()
        self._state = _State()
        super().__init__(_Handler, tls=True, timeout=10, name="logs-ingestion")

    @property
    def url(self) -> str:
        """The ingestion endpoint (SINK_LOGANALYTICS_ENDPOINT) and the authority host: the same server."""
        return self.base_url

    # -- what was received

    @property
    def uploads(self) -> list[Upload]:
        with self._lock:
            return list(self._state.uploads)

    @property
    def records(self) -> list[Any]:
        with self._lock:
            return list(self._state.records)

    @property
    def token_requests(self) -> int:
        with self._lock:
            return self._state.token_requests

    # -- scripting

    def fail_next(self, n: int, status: int = 503, *, retry_after: float | None = None) -> None:
        """Answer ``status`` to the next ``n`` uploads (after authentication passed)."""
        header = None if retry_after is None else f"{retry_after:g}"
        with self._lock:
            self._state.failures.extend(_Scripted(status, header) for _ in range(n))

    def drop_next(self, n: int) -> None:
        """Close the connection without answering the next ``n`` uploads (a front end going away)."""
        with self._lock:
            self._state.failures.extend(_Scripted(0, drop=True) for _ in range(n))

    def revoke_tokens(self) -> None:
        """Forget every issued token: the next upload with one gets 401."""
        with self._lock:
            self._state.tokens.clear()

    def revoke_role(self, revoked: bool = True) -> None:
        """Take away (or give back) the identity's Monitoring Metrics Publisher role on the DCR."""
        with self._lock:
            self._state.role_assigned = not revoked

    # -- called by the handler threads

    def _issue_token(self, tenant: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self._state.token_requests += 1
        if tenant.lower() != self.tenant_id.lower():
            return _aad_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("client_id", "").lower() != self.client_id.lower():
            return _aad_error(
                400, "unauthorized_client", 700016, f"Application with identifier '{form.get('client_id')}' not found."
            )
        if form.get("client_secret") != self.client_secret:
            return _aad_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        if form.get("scope") != f"{self.audience}/.default":
            return _aad_error(
                400, "invalid_resource", 500011, f"The resource principal named {form.get('scope')} was not found."
            )
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._state.tokens.add(token)
        return 200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}

    def _ingest(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str], raw: bytes
    ) -> tuple[_Scripted | None, int, dict[str, Any] | None]:
        """(scripted behaviour or None, status, error body) for one upload; records it."""
        status, error, records, body = self._judge(path, query, headers, raw)
        scripted: _Scripted | None = None
        with self._lock:
            if status == 204 and self._state.failures:
                scripted = self._state.failures.popleft()
                status = scripted.status
                error = None if scripted.drop else _error(_CODES.get(status, "ServiceError"), "scripted failure")
            self._state.uploads.append(Upload(path, query, headers, len(raw), body, records, status))
            if status == 204 and records:
                self._state.records.extend(records)
        return scripted, status, error

    def _judge(
        self, path: str, query: dict[str, list[str]], headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, Any] | None, list[Any] | None, bytes]:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        with self._lock:
            known = scheme.lower() == "bearer" and token in self._state.tokens
            role = self._state.role_assigned
        if not known:
            return 401, _error("InvalidToken", "The provided token is missing, invalid or expired."), None, b""
        if query.get("api-version") != [API_VERSION]:
            message = f"api-version {query.get('api-version')} is not supported"
            return 400, _error("InvalidApiVersion", message), None, b""
        parts = path.split("/")
        if len(parts) != 5 or parts[1] != "dataCollectionRules" or parts[3] != "streams":
            return 404, _error("NotFound", "No such resource."), None, b""
        if parts[2] != self.dcr_id:
            return 404, _error("InvalidDataCollectionRule", f"Data collection rule '{parts[2]}' not found."), None, b""
        if not role:
            message = (
                "The authentication token provided does not have access to ingest data for the data collection "
                f"rule with immutable Id '{self.dcr_id}'."
            )
            return 403, _error("OperationFailed", message), None, b""
        if parts[4] != self.stream:
            return 404, _error("InvalidStream", f"Stream '{parts[4]}' is not declared in the rule."), None, b""
        if len(raw) > MAX_CONTENT_LENGTH:
            message = (
                f"Maximum allowed content length: {MAX_CONTENT_LENGTH} bytes (1 MB). "
                f"Provided content length: {len(raw)} bytes."
            )
            return 413, _error("ContentLengthLimitExceeded", message), None, b""
        if not headers.get("content-type", "").startswith("application/json"):
            return 415, _error("UnsupportedMediaType", "Content-Type must be application/json"), None, b""
        try:
            body = gzip.decompress(raw) if headers.get("content-encoding", "").lower() == "gzip" else raw
            records = json.loads(body)
        except (OSError, ValueError):
            return 400, _error("InvalidPayload", "The request body is not valid JSON."), None, raw
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            return 400, _error("InvalidPayload", "The request body must be a JSON array of objects."), None, body
        return 204, None, records, body


_CODES = {429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable", 504: "GatewayTimeout"}


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _aad_error(status: int, error: str, code: int, message: str) -> tuple[int, dict[str, Any]]:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return status, {
        "error": error,
        "error_description": f"AADSTS{code}: {message} Trace ID: 0 Correlation ID: 0 Timestamp: {stamp}",
        "error_codes": [code],
    }


class _Handler(OwnedHandler):
    @property
    def backend(self) -> LogsIngestionBackend:
        return cast(LogsIngestionBackend, self.owner)

    def do_GET(self) -> None:
        parts = urlsplit(self.path).path.strip("/").split("/")
        if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            root = f"{self.backend.url}/{parts[0]}"
            self._json(
                200,
                {
                    "token_endpoint": f"{root}/oauth2/v2.0/token",
                    "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                    "issuer": f"{root}/v2.0",
                    "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
                },
            )
            return
        self._json(404, _error("NotFound", "No such resource."))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        parts = split.path.strip("/").split("/")
        if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
            self._json(*self.backend._issue_token(parts[0], form))
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        scripted, status, error = self.backend._ingest(split.path, parse_qs(split.query), headers, raw)
        if scripted is not None and scripted.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.request.shutdown(socket.SHUT_RDWR)
            return
        extra = {"Retry-After": scripted.retry_after} if scripted is not None and scripted.retry_after else {}
        if status == 401:
            extra["WWW-Authenticate"] = 'Bearer authorization_uri="https://login.microsoftonline.com/"'
        if status == 204:
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._json(status, error or {}, extra, error_code=(error or {}).get("error", {}).get("code"))

    def _json(
        self,
        status: int,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
        *,
        error_code: str | None = None,
    ) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        if error_code:
            self.send_header("x-ms-error-code", error_code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
