"""Loopback HTTP(S) receivers for sink tests: a scriptable stand-in for any HTTP ingest endpoint.

``HttpReceiver`` listens on 127.0.0.1 (a free port), optionally over TLS with a certificate it
generates (SAN 127.0.0.1 and localhost, from ``tests.loopback``; trust its CA through ``ca_file``). It records
every request (method, path, headers, decompressed body, parsed NDJSON / JSON records), answers with
what the test scripted (``fail_next``, ``refuse``, ``require_bearer``, ``stall_next``, ``echo_next``) and
otherwise accepts. It only answers: it never opens an outbound connection.

Bounded: a request body above ``max_body_bytes`` (or a gzip body inflating above it) gets 413 and
the connection is closed; idle keep-alive connections time out after ``timeout`` seconds; stopping
the receiver closes every open connection. Every request is recorded before it is answered, so once
a client call returns, the receiver's lists already hold it: tests never wait or sleep.

``refusing_url()`` gives the opposite: a loopback URL where connections are refused.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import zlib
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from o365collector.simulator.certs import write_certificates
from tests.loopback import HOST, LoopbackService, OwnedHandler


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the receiver saw it, and the status it answered."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names in lower case."""
    raw_body: bytes
    """The body as sent (still gzip-compressed when Content-Encoding says so)."""
    body: bytes
    """The body after undoing Content-Encoding."""
    records: list[Any] | None
    """NDJSON lines or JSON array items (a single JSON object counts as one); None when not JSON."""
    status: int
    client_port: int
    """The client's source port: equal across requests that shared a keep-alive connection."""


@dataclass
class _Failure:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Script:
    """What the test asked for; guarded by the receiver's lock."""

    skip: int = 0
    failures: deque[_Failure] = field(default_factory=deque)
    refusing: bool = False
    bearer: str | None = None
    stalls: int = 0
    echoes: int = 0
    echo_status: int = 503


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 / localhost and its key; returns (cert, key) paths.

    The certificate file holds the leaf followed by its throw-away CA, so it serves both as the
    server's chain and as a trust anchor (``REQUESTS_CA_BUNDLE`` / ``verify=``).
    """
    files = write_certificates(directory)
    return files.cert_file, files.key_file


class HttpReceiver(LoopbackService):
    """A scriptable HTTP(S) ingest endpoint on 127.0.0.1; use as a context manager."""

    kind = "receiver"

    def __init__(self, *, tls: bool = False, max_body_bytes: int = 64 * 1024 * 1024, timeout: float = 10.0) -> None:
        self.max_body_bytes = max_body_bytes
        self._lock = threading.Lock()
        self._script = _Script()
        self._requests: list[ReceivedRequest] = []
        self._records: list[Any] = []
        self._release = threading.Event()
        super().__init__(_Handler, tls=tls, timeout=timeout, name="http-receiver")

    def close(self) -> None:
        """Stop serving, release stalled requests, close every connection and remove the certificate files."""
        self._release.set()
        super().close()

    @property
    def url(self) -> str:
        """The ingest URL (any path is accepted; this one is ``/ingest``)."""
        return f"{self.base_url}/ingest"

    # -- what was received

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request, in arrival order, whatever was answered."""
        with self._lock:
            return list(self._requests)

    @property
    def records(self) -> list[Any]:
        """Records of accepted (2xx) requests only, in order."""
        with self._lock:
            return list(self._records)

    def reset(self) -> None:
        """Forget what was received and every scripted behaviour."""
        with self._lock:
            self._requests.clear()
            self._records.clear()
            self._script = _Script()

    # -- scripting

    def fail_next(
        self,
        n: int,
        status: int = 503,
        retry_after: float | str | None = None,
        *,
        after: int = 0,
        body: bytes | str = b"",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer ``status`` to ``n`` requests once ``after`` more have passed.

        ``retry_after`` (seconds or an HTTP-date) becomes a Retry-After header; ``headers`` adds others
        (a Location for a redirect, say).
        """
        payload = body.encode() if isinstance(body, str) else body
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
        with self._lock:
            self._script.skip = after
            self._script.failures.extend(_Failure(status, extra, payload or b"scripted failure") for _ in range(n))

    def refuse(self, on: bool = True) -> None:
        """While on, every request gets 503."""
        with self._lock:
            self._script.refusing = on

    def require_bearer(self, token: str | None) -> None:
        """Answer 401 unless ``Authorization: Bearer <token>``; None turns the check off."""
        with self._lock:
            self._script.bearer = token

    def stall_next(self, n: int = 1) -> None:
        """Hold the answer (a 503) to the next ``n`` requests until the receiver closes or ``timeout`` passes.

        For client timeouts. A stalled request shows in ``requests`` only once its answer is released.
        """
        with self._lock:
            self._script.stalls += n

    def echo_next(self, n: int, status: int = 503) -> None:
        """Answer ``status`` to the next ``n`` requests, quoting back the credentials each one carried
        (every header value but the plain ones, a scheme's credential alone, a Basic pair decoded), as a
        careless proxy's error page does. With ``Retry-After: 0``, so a sink's retries cost no time."""
        with self._lock:
            self._script.echoes += n
            self._script.echo_status = status

    # -- called by the handler threads

    def _decide(self, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, bool]:
        """(status, extra headers, body, stall) for a request, consuming one scripted step."""
        with self._lock:
            script = self._script
            if script.stalls:
                script.stalls -= 1
                return 503, {}, b"stalled", True
            if script.echoes:
                script.echoes -= 1
                return script.echo_status, {"Retry-After": "0"}, _echo(headers), False
            if script.refusing:
                return 503, {}, b"refusing", False
            if script.failures:
                if script.skip:
                    script.skip -= 1
                else:
                    failure = script.failures.popleft()
                    return failure.status, failure.headers, failure.body, False
            if script.bearer is not None and headers.get("authorization") != f"Bearer {script.bearer}":
                return 401, {"WWW-Authenticate": "Bearer"}, b"unauthorized", False
        return 200, {}, b"", False

    def _record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)
            if 200 <= request.status < 300 and request.records:
                self._records.extend(request.records)


class _Handler(OwnedHandler):
    server_version = "o365collector-test-receiver"

    @property
    def receiver(self) -> HttpReceiver:
        return cast(HttpReceiver, self.owner)

    def _serve(self) -> None:
        receiver = self.receiver
        headers = {name.lower(): value for name, value in self.headers.items()}
        # Bodies this receiver will not read are refused and the connection closed (the unread bytes
        # would otherwise be taken for the next request).
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._recorded(b"", b"", None, 411, b"chunked bodies are not supported", close=True)
            return
        length_text = headers.get("content-length") or "0"
        length = int(length_text) if length_text.isdigit() else -1
        if length < 0 or length > receiver.max_body_bytes:
            self._recorded(b"", b"", None, 413 if length > 0 else 400, b"body too large or unsized", close=True)
            return
        raw = self.rfile.read(length) if length else b""
        try:
            body = _decode(raw, headers.get("content-encoding", ""), receiver.max_body_bytes)
        except ValueError as err:
            self._recorded(raw, raw, None, 413 if "large" in str(err) else 400, str(err).encode())
            return
        records = _parse_records(body, headers.get("content-type", "")) if body else []
        status, extra, text, stall = receiver._decide(headers)
        if status == 200 and body and records is None:
            status, text = 400, b"body is not NDJSON or JSON"
        if stall:
            receiver._release.wait(receiver.timeout)
        if status == 200:
            text = json.dumps({"accepted": len(records or [])}).encode()
        self._recorded(raw, body, records, status, text, extra)

    do_POST = do_PUT = do_HEAD = _serve  # GET and the rest: 501

    def _recorded(
        self,
        raw: bytes,
        body: bytes,
        records: list[Any] | None,
        status: int,
        text: bytes,
        extra: dict[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = ReceivedRequest(self.command, self.path, headers, raw, body, records, status, self.client_address[1])
        self.receiver._record(request)
        self._answer(status, extra or {}, text, close=close)

    def _answer(self, status: int, headers: dict[str, str], body: bytes, *, close: bool) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json" if status == 200 else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


# Request headers that carry no credential: not echoed, so the echo leads with the credentials.
_PLAIN_HEADERS = frozenset(
    {"host", "user-agent", "accept", "accept-encoding", "connection", "content-type", "content-length",
     "content-encoding"}
)  # fmt: skip


def _echo(headers: dict[str, str]) -> bytes:
    """The credentials alone first (as a careless error page shows them), then the headers as sent."""
    shown: list[str] = []
    sent = {
        name: value for name, value in headers.items() if name not in _PLAIN_HEADERS and not name.startswith("x-o365-")
    }
    for value in sent.values():
        shown.append(value)
        scheme, _, credential = value.partition(" ")
        if credential:
            shown.append(credential)
            if scheme.lower() == "basic":
                with contextlib.suppress(ValueError):
                    shown.append(base64.b64decode(credential).decode("utf-8", "replace"))
    listed = "; ".join(f"{name}: {value}" for name, value in sent.items())
    return f"refused {' '.join(shown)} | {listed}".encode()


def _decode(raw: bytes, encoding: str, limit: int) -> bytes:
    if encoding.strip().lower() != "gzip":
        return raw
    inflater = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        body = inflater.decompress(raw, limit + 1)
    except zlib.error as err:
        raise ValueError(f"bad gzip body: {err}") from err
    if len(body) > limit:
        raise ValueError("gzip body inflates too large")
    return body


def _parse_records(body: bytes, content_type: str) -> list[Any] | None:
    """Stdlib json on purpose: it reads integers of any size exactly."""
    try:
        if "ndjson" in content_type.lower() or "x-json-stream" in content_type.lower():
            return [json.loads(line) for line in body.splitlines() if line.strip()]
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, list) else [value]


@contextlib.contextmanager
def refusing_url(scheme: str = "http") -> Iterator[str]:
    """A loopback URL whose port is bound but not listening: every connection attempt is refused at once."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind((HOST, 0))
        yield f"{scheme}://{HOST}:{holder.getsockname()[1]}/ingest"
    finally:
        holder.close()
