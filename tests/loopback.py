"""Plumbing shared by the test suite's loopback servers: a throw-away certificate and a threaded HTTP(S) server.

``ServerCertificate`` writes a CA and a server certificate for 127.0.0.1 / localhost to a temporary
folder, from ``o365collector.simulator.certs`` like the simulator's own, and holds the server-side
``SSLContext``; clients trust ``ca_file``.

``LoopbackService`` serves a handler class on 127.0.0.1 (a free port, bound at construction), over
TLS when asked, from a background thread; as a context manager it starts serving on entry and on
exit stops, drops every open connection and removes its certificate. The server plumbing (TLS
handshake in the connection's thread, open-connection tracking) is the simulator's
``LoopbackHTTPServer``. Handlers derive from ``OwnedHandler`` and reach their service as ``owner``;
idle connections end after the service's ``timeout`` seconds.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, cast

from o365collector.simulator.certs import write_certificates
from o365collector.simulator.server import LOOPBACK, LoopbackHandler, LoopbackHTTPServer

HOST = LOOPBACK


class ServerCertificate:
    """A CA and a server certificate (SAN 127.0.0.1, localhost) in a temporary folder, and a context serving it."""

    def __init__(self, prefix: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=prefix))
        self.files = write_certificates(self.directory)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.files.cert_file, self.files.key_file)

    @property
    def ca_file(self) -> str:
        """The CA to trust (REQUESTS_CA_BUNDLE, ``verify=``, ``connection_verify=``)."""
        return str(self.files.ca_file)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class _Server(LoopbackHTTPServer):
    request_queue_size = 32

    def __init__(self, handler: type[OwnedHandler], owner: LoopbackService, context: ssl.SSLContext | None) -> None:
        self.owner = owner
        super().__init__(0, handler, context)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # failed handshakes (the untrusted-certificate tests) and clients hanging up are expected in tests


class OwnedHandler(LoopbackHandler):
    """A quiet handler that knows the ``LoopbackService`` it serves."""

    @property
    def owner(self) -> LoopbackService:
        return cast(_Server, self.server).owner

    def connection_timeout(self) -> float | None:
        return self.owner.timeout

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LoopbackService:
    """Serves ``handler`` on 127.0.0.1 from a background thread, over TLS when asked; see the module docstring."""

    poll_interval: ClassVar[float] = 0.05
    """How often ``serve_forever`` checks for shutdown: only makes stopping prompt."""
    kind: ClassVar[str] = "server"
    """What to call it in messages."""

    def __init__(self, handler: type[OwnedHandler], *, tls: bool, timeout: float, name: str) -> None:
        self.timeout = timeout
        self.certificate = ServerCertificate(f"{name}-") if tls else None
        self._server = _Server(handler, self, self.certificate.context if self.certificate is not None else None)
        self._name = name
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(self.poll_interval,), name=self._name, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, close every open connection and remove the certificate files."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        self._server.close_connections()
        if self.certificate is not None:
            self.certificate.remove()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        scheme = "https" if self.certificate is not None else "http"
        return f"{scheme}://{HOST}:{self.port}"

    @property
    def ca_file(self) -> str:
        """The CA to trust (TLS only)."""
        if self.certificate is None:
            raise RuntimeError(f"this {self.kind} does not use TLS")
        return self.certificate.ca_file
