"""A loopback syslog receiver for tests: octet-counted or LF-framed messages (RFC 6587 / RFC 5425) over TCP or TLS.

``SyslogServer`` binds 127.0.0.1 (a free port) and, once listening, reads frames on every connection,
each in its own thread: ``MSG-LEN SP SYSLOG-MSG`` by default, ``SYSLOG-MSG LF`` with ``framing="lf"``
(as Logstash's syslog input and Fluent Bit read them: every LF ends a message, so a raw LF inside a
message splits it and the halves fail to parse). It parses each SYSLOG-MSG strictly as RFC
5424 (header fields, structured data with its escapes, MSG). A frame or message it cannot read is
recorded in ``errors`` and ends that connection, so a test that expects none fails loudly.

TLS uses a certificate from ``tests.loopback`` (trust its CA through ``ca_file``); ``client_ca``
makes the server require a client certificate signed by it (``make_client_cert`` makes one).

Scripting, for failure tests: ``SyslogServer(listening=False)`` holds the port without listening, so
connection attempts are refused at once, until ``start_listening()``; ``drop_connections()`` closes
every open connection from the server side and returns once their threads have finished.

Bounded: frames above ``max_frame_bytes`` end the connection; idle connections end after
``timeout`` seconds; at most ``max_connections`` are served at once. Tests wait on events
(``wait_for``), never by sleeping. It only listens: it never opens an outbound connection.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from o365collector.simulator.certs import write_certificates
from tests.loopback import HOST, ServerCertificate

_HEADER = re.compile(rb"<([0-9]{1,3})>([1-9][0-9]{0,2}) (\S+) (\S+) (\S+) (\S+) (\S+) ")
_LIMITS = {"hostname": 255, "app_name": 48, "procid": 128, "msgid": 32}
_TIMESTAMP = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})$"
)


class FrameError(ValueError):
    """The stream or a message does not follow RFC 6587 framing / RFC 5424."""


@dataclass(frozen=True)
class SyslogMessage:
    """One SYSLOG-MSG as received, split into its RFC 5424 parts."""

    raw: bytes
    """The SYSLOG-MSG exactly as framed (without the MSG-LEN prefix)."""
    pri: int
    version: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    structured_data: tuple[tuple[str, dict[str, str]], ...] | None
    """``(SD-ID, params)`` per SD-ELEMENT with escapes undone; None for the NILVALUE ``-``."""
    msg: bytes
    connection: int = 0
    """Which accepted connection (1, 2, ...) carried it."""

    @property
    def facility(self) -> int:
        return self.pri // 8

    @property
    def severity(self) -> int:
        return self.pri % 8

    def sd(self, sd_id: str) -> dict[str, str]:
        """The params of the element ``sd_id`` (KeyError when absent)."""
        for element_id, params in self.structured_data or ():
            if element_id == sd_id:
                return params
        raise KeyError(sd_id)


def parse_syslog_message(raw: bytes, connection: int = 0) -> SyslogMessage:
    """Parse one SYSLOG-MSG strictly as RFC 5424; raises ``FrameError`` saying what is wrong."""
    match = _HEADER.match(raw)
    if match is None:
        raise FrameError(f"not an RFC 5424 header: {raw[:80]!r}")
    pri, version = int(match[1]), int(match[2])
    if pri > 191:
        raise FrameError(f"PRI {pri} is above 191")
    fields: dict[str, str] = {}
    for name, value in zip(("timestamp", *_LIMITS), match.groups()[2:], strict=True):
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            raise FrameError(f"{name} is not US-ASCII: {value!r}") from None
        if not text.isprintable() or len(text) > _LIMITS.get(name, 64):
            raise FrameError(f"{name} {text!r} is not 1-{_LIMITS.get(name, 64)} printable characters")
        fields[name] = text
    if fields["timestamp"] != "-" and not _TIMESTAMP.match(fields["timestamp"]):
        raise FrameError(f"bad TIMESTAMP {fields['timestamp']!r}")
    structured, position = _parse_structured_data(raw, match.end())
    if position == len(raw):
        msg = b""
    elif raw[position : position + 1] == b" ":
        msg = raw[position + 1 :]
    else:
        raise FrameError(f"no SP between STRUCTURED-DATA and MSG at offset {position}")
    return SyslogMessage(
        raw=raw,
        pri=pri,
        version=version,
        structured_data=structured,
        msg=msg,
        connection=connection,
        **fields,
    )


def _parse_structured_data(raw: bytes, position: int) -> tuple[tuple[tuple[str, dict[str, str]], ...] | None, int]:
    if raw[position : position + 1] == b"-":
        return None, position + 1
    elements: list[tuple[str, dict[str, str]]] = []
    while raw[position : position + 1] == b"[":
        position += 1
        sd_id, position = _sd_name(raw, position)
        params: dict[str, str] = {}
        while raw[position : position + 1] == b" ":
            name, position = _sd_name(raw, position + 1)
            if raw[position : position + 2] != b'="':
                raise FrameError(f'SD-PARAM {name!r} lacks ="')
            position += 2
            value = bytearray()
            while True:
                char = raw[position : position + 1]
                if not char:
                    raise FrameError("PARAM-VALUE not closed")
                if char == b"\\" and raw[position + 1 : position + 2] in (b'"', b"\\", b"]"):
                    value += raw[position + 1 : position + 2]
                    position += 2
                    continue
                if char == b"]":
                    raise FrameError(f"unescaped ']' in the value of {name!r}")
                position += 1
                if char == b'"':
                    break
                value += char
            params[name] = value.decode("utf-8")
        if raw[position : position + 1] != b"]":
            raise FrameError(f"SD-ELEMENT {sd_id!r} not closed by ']'")
        position += 1
        elements.append((sd_id, params))
    if not elements:
        raise FrameError("STRUCTURED-DATA is neither '-' nor an SD-ELEMENT")
    return tuple(elements), position


def _sd_name(raw: bytes, position: int) -> tuple[str, int]:
    end = position
    while end < len(raw) and 0x21 <= raw[end] <= 0x7E and raw[end : end + 1] not in (b"=", b"]", b'"', b" "):
        end += 1
    if not 1 <= end - position <= 32:
        raise FrameError(f"bad SD-NAME at offset {position}")
    return raw[position:end].decode("ascii"), end


def read_frame(stream: BinaryIO, max_bytes: int) -> bytes | None:
    """The next SYSLOG-MSG of an octet-counted stream; None at a clean end of stream."""
    digits = bytearray()
    while True:
        char = stream.read(1)
        if not char:
            if digits:
                raise FrameError("the stream ended inside MSG-LEN")
            return None
        if char == b" ":
            break
        if not char.isdigit() or len(digits) >= 10:
            raise FrameError(f"bad MSG-LEN {bytes(digits + char)!r}")
        digits += char
    if not digits or digits[0] == ord("0"):
        raise FrameError(f"MSG-LEN {bytes(digits)!r} must start with a nonzero digit")
    length = int(digits)
    if length > max_bytes:
        raise FrameError(f"frame of {length} bytes is above the receiver's limit of {max_bytes}")
    body = stream.read(length)
    if len(body) < length:
        raise FrameError(f"the stream ended inside a frame ({len(body)} of {length} bytes)")
    return body


def read_line(stream: BinaryIO, max_bytes: int) -> bytes | None:
    """The next SYSLOG-MSG of an LF-framed stream (without its LF); None at a clean end of stream."""
    line = stream.readline(max_bytes + 1)
    if not line:
        return None
    if not line.endswith(b"\n"):
        if len(line) > max_bytes:
            raise FrameError(f"message above the receiver's limit of {max_bytes} bytes")
        raise FrameError(f"the stream ended inside a message ({len(line)} bytes without LF)")
    if line == b"\n":
        raise FrameError("an empty message (two LFs in a row)")
    return line[:-1]


def make_client_cert(directory: Path) -> tuple[Path, Path]:
    """A client certificate (EKU clientAuth) and its key; returns (cert, key) paths.

    The certificate file holds the leaf followed by its throw-away CA, so the same file is the chain a
    client presents and the ``client_ca`` a ``SyslogServer`` trusts.
    """
    files = write_certificates(directory, client=True)
    return files.cert_file, files.key_file


class SyslogServer:
    """An RFC 5425 / RFC 6587 receiver on 127.0.0.1; use as a context manager."""

    def __init__(
        self,
        *,
        tls: bool = False,
        framing: str = "octet-counting",
        listening: bool = True,
        client_ca: str | Path | None = None,
        max_frame_bytes: int = 1024 * 1024,
        max_connections: int = 16,
        timeout: float = 10.0,
    ) -> None:
        if framing not in ("octet-counting", "lf"):
            raise ValueError(f"framing {framing!r}")
        self._read = read_line if framing == "lf" else read_frame
        self.max_frame_bytes = max_frame_bytes
        self.max_connections = max_connections
        self.timeout = timeout
        self._listen_on_enter = listening
        self._changed = threading.Condition()
        self._messages: list[SyslogMessage] = []
        self._errors: list[str] = []
        self._open: dict[int, socket.socket] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._accepted = 0
        self._handshake_failures = 0
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None
        self._certificate = ServerCertificate("syslog-server-") if tls else None
        self._tls = self._certificate.context if self._certificate is not None else None
        if self._tls is not None and client_ca is not None:
            self._tls.verify_mode = ssl.CERT_REQUIRED
            self._tls.load_verify_locations(cafile=str(client_ca))
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((HOST, 0))
        self._listener.setblocking(False)  # accepted only when select() says one is waiting

    # -- lifecycle

    def __enter__(self) -> SyslogServer:
        if self._listen_on_enter:
            self.start_listening()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start_listening(self) -> None:
        """Start accepting connections (until now they were refused)."""
        if self._acceptor is not None:
            return
        self._listener.listen(self.max_connections)
        self._acceptor = threading.Thread(target=self._accept_loop, name="syslog-server", daemon=True)
        self._acceptor.start()

    def close(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        self._listener.close()
        self.drop_connections()
        if self._certificate is not None:
            self._certificate.remove()

    def drop_connections(self) -> None:
        """Close every open connection from this side; returns when their threads have finished."""
        with self._changed:
            sockets = list(self._open.values())
            threads = list(self._threads.values())
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(self.timeout)

    def wait_idle(self) -> None:
        """Wait until no connection is open or waiting to be accepted, i.e. every client's data was read."""
        with self._changed:
            if not self._changed.wait_for(lambda: not self._open and not self._pending(), self.timeout):
                raise AssertionError(f"{len(self._open)} syslog connections are still open")

    def _pending(self) -> bool:
        readable, _, _ = select.select([self._listener], [], [], 0)
        return bool(readable)

    # -- addresses

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def ca_file(self) -> str:
        if self._certificate is None:
            raise RuntimeError("this server does not use TLS")
        return self._certificate.ca_file

    # -- what was received

    @property
    def messages(self) -> list[SyslogMessage]:
        with self._changed:
            return list(self._messages)

    @property
    def errors(self) -> list[str]:
        with self._changed:
            return list(self._errors)

    @property
    def connections(self) -> int:
        """Connections accepted so far (TLS: handshakes attempted)."""
        with self._changed:
            return self._accepted

    @property
    def handshake_failures(self) -> int:
        with self._changed:
            return self._handshake_failures

    def wait_for(self, count: int, timeout: float = 5.0) -> list[SyslogMessage]:
        """Block until at least ``count`` messages arrived; fails the test when they don't in ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._messages) >= count or self._errors, timeout):
                raise AssertionError(f"expected {count} syslog messages, got {len(self._messages)}")
            if self._errors:
                raise AssertionError(f"the syslog server could not read what it was sent: {self._errors}")
            return list(self._messages)

    # -- serving

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            readable, _, _ = select.select([self._listener], [], [], 0.05)  # polls the stop flag
            if not readable:
                continue
            # Accepting under the lock: wait_idle() sees a connection either waiting or registered, never between.
            with self._changed:
                try:
                    conn, _ = self._listener.accept()
                except (BlockingIOError, TimeoutError):
                    continue
                except OSError:
                    return
                if len(self._open) >= self.max_connections:
                    conn.close()
                    continue
                self._accepted += 1
                number = self._accepted
                self._open[number] = conn
                thread = threading.Thread(target=self._serve, args=(number, conn), daemon=True)
                self._threads[number] = thread
                self._changed.notify_all()
            thread.start()

    def _serve(self, number: int, conn: socket.socket) -> None:
        stream: BinaryIO | None = None
        try:
            conn.settimeout(self.timeout)
            if self._tls is not None:
                try:
                    conn = self._tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    with self._changed:
                        self._handshake_failures += 1
                    return
                with self._changed:
                    self._open[number] = conn
            stream = conn.makefile("rb")
            while True:
                frame = self._read(stream, self.max_frame_bytes)
                if frame is None:
                    return
                message = parse_syslog_message(frame, number)
                with self._changed:
                    self._messages.append(message)
                    self._changed.notify_all()
        except FrameError as err:
            with self._changed:
                self._errors.append(f"connection {number}: {err}")
                self._changed.notify_all()
        except OSError:
            pass  # reset, timed out or dropped by drop_connections(): the connection just ends
        finally:
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
            with contextlib.suppress(OSError):
                conn.close()
            with self._changed:
                self._open.pop(number, None)
                self._changed.notify_all()
