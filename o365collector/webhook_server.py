"""The webhook receiver over HTTPS outside Azure Functions (``run --webhook-listen``, the push demo, tests).

Serves ``WebhookReceiver.handle`` for POSTs to ``/api/webhook`` (the Functions route) or ``/``; anything
else is 404, other verbs 405. TLS is required unless the listener is on a loopback address: the service
only posts to HTTPS addresses, and the body carries content URIs a forger could use. In Azure the function
key guards the route; here the ``Webhook-AuthID`` check is the only gate, so bind to the address the
service (or a reverse proxy) reaches, not to every interface by default.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .errors import ConfigError
from .invocation import bind
from .webhook import MAX_BODY_BYTES, WebhookReceiver

log = logging.getLogger(__name__)

PATHS = frozenset({"/", "/api/webhook"})


def parse_listen(text: str, setting: str = "--webhook-listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8443`` for IPv6) into its parts; errors name ``setting``."""
    host, sep, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(setting, f"{text[:60]!r} is not HOST:PORT (e.g. 127.0.0.1:8443)")
    return host, int(port_text)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that drops the TLS connection mid-request: one line, not socketserver's traceback on stderr.
        log.info("webhook listener: a connection from %s ended abnormally", client_address)


class WebhookServer:
    def __init__(
        self,
        receiver: WebhookReceiver,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        if cert_file is None and not _is_loopback(host):
            raise ConfigError("--webhook-cert", "is required to listen on a non-loopback address (HTTPS only)")
        self._receiver = receiver
        handler = self._handler_class()
        self._server = _Server((host, port), handler)
        self._tls = cert_file is not None
        if cert_file is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(cert_file, key_file)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        shown = "localhost" if host in ("127.0.0.1", "::1") else host
        return f"{'https' if self._tls else 'http'}://{shown}:{self.port}/api/webhook"

    def start(self) -> WebhookServer:
        self._thread = threading.Thread(target=bind(self._server.serve_forever), name="webhook-listener", daemon=True)
        self._thread.start()
        log.info("webhook listener on %s", self.url)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self._receiver

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                if self.path.split("?", 1)[0] not in PATHS:
                    self._answer(404, b'{"error":"not found"}')
                    return
                try:
                    length = int(self.headers.get("Content-Length") or "0")
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY_BYTES:
                    self._answer(400 if length < 0 else 413, b'{"error":"bad or too large Content-Length"}')
                    return
                body = self.rfile.read(length)
                answer = receiver.handle(dict(self.headers.items()), body)
                self._answer(answer.status, answer.content())

            def do_GET(self) -> None:
                self._answer(405, b'{"error":"POST only"}')

            do_PUT = do_DELETE = do_PATCH = do_GET

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("webhook listener: %s", format % args)

        return Handler
