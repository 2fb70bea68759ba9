"""HTTPS plumbing: a threaded ``http.server`` on 127.0.0.1 that hands parsed requests to a dispatcher.

HTTP/1.1 with keep-alive (``Content-Length`` always set), TLS with the handshake done in the
connection's own thread (so a slow client never blocks ``accept``), one buffered write per response,
and a ``Date`` header taken from the simulator's clock. This module knows nothing of the API.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .wire import Request, Response

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
MAX_BODY = 1 << 20

Dispatch = Callable[[Request], Response | None]
"""Answers a request; None means drop the connection without answering."""


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1, over TLS when given a context, that can drop its open connections.

    The TLS handshake is left to the connection's own thread (``LoopbackHandler.setup``), so a slow
    client never blocks ``accept``. Also the base of the test suite's loopback servers.
    """

    daemon_threads = True

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext | None = None) -> None:
        self.context = context
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__((LOOPBACK, port), handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        if self.context is None:
            return sock, address
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            try:
                # The plain-socket shutdown: wakes a handler blocked in a TLS read without touching its SSL state.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


class LoopbackHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive; idle connections end after ``timeout`` seconds; completes the TLS handshake."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def connection_timeout(self) -> float | None:
        """Seconds the TLS handshake and each read may take; ``timeout`` unless a subclass says otherwise."""
        return self.timeout

    def setup(self) -> None:
        self.request.settimeout(self.connection_timeout())
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()


class _Server(LoopbackHTTPServer):
    # The default listen backlog (5) drops connections when hundreds of tenants connect at once.
    request_queue_size = 256

    def __init__(self, port: int, context: ssl.SSLContext, dispatch: Dispatch, date_source: Callable[[], dt.datetime]):
        self.dispatch = dispatch
        self.date_source = date_source
        super().__init__(port, _Handler, context)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up, reject our certificate or time out are routine here.
        logger.debug("connection from %s ended: %r", client_address, sys.exc_info()[1])


class _Handler(LoopbackHandler):
    server: _Server
    server_version = "Microsoft-IIS/10.0"
    sys_version = ""
    wbufsize = 1 << 16  # headers and body leave in one write, flushed after each request
    timeout = 120  # idle keep-alive connections are closed after this many seconds

    def log_message(self, format: str, *args: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s", self.address_string(), format % args)

    def version_string(self) -> str:
        return self.server_version

    def date_time_string(self, timestamp: float | None = None) -> str:
        if timestamp is not None:
            return super().date_time_string(timestamp)
        return email.utils.format_datetime(self.server.date_source().astimezone(dt.UTC), usegmt=True)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def _serve(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            self._write(Response(411, b""))
            self.close_connection = True
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._write(Response(413, b""))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        query: dict[str, str] = {}
        for key, value in parse_qsl(split.query, keep_blank_values=True):
            query.setdefault(key.lower(), value)
        request = Request(
            method=self.command,
            path=split.path,
            segments=[unquote(part) for part in split.path.split("/") if part],
            query=query,
            headers={key.lower(): value for key, value in self.headers.items()},
            body=body,
        )
        response = self.server.dispatch(request)
        if response is None:
            self.close_connection = True  # "drop": no status line, no body, just a closed connection
            return
        self._write(response)

    def _write(self, response: Response) -> None:
        self.send_response(response.status)
        if response.content_type:
            self.send_header("Content-Type", response.content_type)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)


class HttpsServer:
    """Serves ``dispatch`` over HTTPS on 127.0.0.1 from a background thread."""

    def __init__(
        self,
        dispatch: Dispatch,
        *,
        cert_file: Path,
        key_file: Path,
        port: int = 0,
        date_source: Callable[[], dt.datetime],
    ) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_file, key_file)
        self._server = _Server(port, context, dispatch, date_source)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="o365-simulator", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # serve_forever checks for shutdown every 0.05 s (its poll interval), so stopping is quick.
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        self._thread.join(timeout=5)
