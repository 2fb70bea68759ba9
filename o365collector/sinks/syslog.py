"""The syslog sink: one RFC 5424 message per record over TCP or TLS, octet-counted or newline-framed.

For QRadar, ArcSight, rsyslog, syslog-ng, Logstash, Fluent Bit, Wazuh and anything else that takes
RFC 5424 over a stream. Framing (``SINK_SYSLOG_FRAMING``):

* ``octet-counting`` (default; RFC 6587 section 3.4.1, RFC 5425): each record becomes one frame
  ``MSG-LEN SP SYSLOG-MSG``, MSG-LEN being the length of SYSLOG-MSG in octets;
* ``lf`` (RFC 6587 section 3.4.2, non-transparent framing): ``SYSLOG-MSG LF``. Logstash's syslog
  input and Fluent Bit's read only this. It is lossless here because no SYSLOG-MSG holds a raw line
  feed (see STRUCTURED-DATA and MSG below).

A SYSLOG-MSG is::

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [o365@32473 tenant="..." contentId="..." recordIndex="7"] {json}

* PRI = facility * 8 + severity (``SINK_SYSLOG_FACILITY``, default local0; ``SINK_SYSLOG_SEVERITY``, default info);
* TIMESTAMP = the record's ``CreationTime`` in UTC with ``Z`` (the time of sending when absent or unreadable);
* HOSTNAME = ``SINK_SYSLOG_HOSTNAME`` or this machine's name; APP-NAME = ``SINK_SYSLOG_APP_NAME``;
  PROCID = ``-`` (the NILVALUE); MSGID = the content type (``Audit.Exchange``);
* STRUCTURED-DATA = one element naming the tenant, content id and the record's index in its content
  blob (``SINK_SYSLOG_STRUCTURED_DATA=false`` sends ``-``). Control characters in values are first
  written as ``printable`` escapes (a line feed as the two characters ``\\n``), then ``"``, ``\\`` and
  ``]`` are escaped by a backslash (RFC 5424 section 6.3.3);
* MSG = the record as ``batching.serialize`` writes it: compact UTF-8 JSON, without a BOM; with
  ``SINK_SYSLOG_WRAPPER=wazuh``, the object ``{"integration":"office365","office365":<record>}``
  that Wazuh's stock office365 decoder and rules read (split chunks are of that text too). JSON
  writes the C0 control characters in strings as escapes (``\\n``, ``\\u001b``); ``json_payload``
  escapes the few others JSON may leave raw (DEL, C1, U+2028/U+2029). So no message, header to
  MSG, holds a raw control character: a receiver or file that splits on lines keeps it whole.

Size rule: no SYSLOG-MSG (header, structured data and JSON; not the MSG-LEN prefix or LF) is longer than
``SINK_SYSLOG_MAX_MESSAGE_BYTES``. A record that does not fit is, by ``SINK_SYSLOG_OVERSIZE``:

* ``reject`` (default): ``SinkPermanentError`` naming the content id and record index, raised before any
  message of that content blob is written, so the blob is retried and then poisoned, never half-sent;
* ``split``: sent as numbered chunks, each a message of its own whose structured data (always present
  on chunks) adds ``part`` and ``parts``; the MSGs of parts 1..n, concatenated, are the record's JSON.
  Chunks are cut on UTF-8 character boundaries.

Plain TCP sends audit records unencrypted: it is refused at start-up for any host other than
127.0.0.1, localhost or ::1 unless ``SINK_SYSLOG_ALLOW_PLAINTEXT=true`` says the network is trusted
(as the HTTP sinks accept plain http only for loopback).

Connections: one connection, opened on first use, is reused across sends (a lock keeps concurrent
sends from interleaving frames). Before it is reused, it is replaced if the receiver has closed it
or it has been idle longer than ``SINK_SYSLOG_MAX_IDLE_SECONDS`` (load balancers and NAT drop idle
flows without telling either end, and a write on such a flow vanishes). TLS verifies the receiver's
certificate and host name against ``SINK_SYSLOG_CA_FILE``, else ``REQUESTS_CA_BUNDLE``, else the
system store; a client certificate is offered when ``SINK_SYSLOG_CLIENT_CERT_FILE`` is set.

What "accepted" means: syslog has no acknowledgement. ``send`` returns once every frame was handed to
the operating system (TLS: encrypted and handed over) and, checked afterwards, the receiver had not
closed or reset the connection. Messages in flight when a receiver crashes can still be lost; a
failure detected during or right after the writes raises ``SinkTransientError`` and the whole blob is
sent again, so delivery is at least once (messages written before the failure may arrive twice).

Errors: refused, reset, timed out, unresolvable → ``SinkTransientError``; certificate not trusted,
TLS refused by the receiver (e.g. it wants a client certificate), not TLS on a TLS port, unreadable
CA or client certificate files, oversize records under ``reject`` → ``SinkPermanentError``.
Messages name the setting to fix and never contain record bodies.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..envparse import Environ, get_bool, get_choice, get_float, get_int, get_str, require_str
from ..errors import CollectorError, ConfigError, SinkPermanentError, SinkTransientError
from ..models import BlobContext, Record, parse_api_time, utc
from ..redaction import printable
from .batching import serialize
from .httpcore import LOOPBACK_HOSTS
from .streams import AUDIT_TIME_FIELD, time_field

log = logging.getLogger(__name__)

# Defaults (one place, with the reason for each).
DEFAULT_PORTS = {"tls": 6514, "tcp": 601}  # the ports registered for syslog over TLS and syslog over TCP
DEFAULT_APP_NAME = "o365collector"
DEFAULT_FACILITY = "local0"  # the local facilities are the ones meant for applications
DEFAULT_SEVERITY = "info"
# 32473 is the private enterprise number RFC 5424 uses in its examples; set your own with SINK_SYSLOG_SD_ID.
DEFAULT_SD_ID = "o365@32473"
# Many receivers cut messages at 8 KiB or 64 KiB; 64 KiB fits most audit records whole.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10.0  # connect plus TLS handshake
DEFAULT_SEND_TIMEOUT_SECONDS = 30.0  # one write of up to WRITE_BYTES to a receiver that stopped reading
# Azure's load balancers drop idle flows after 4 minutes by default, silently; reconnect well before.
DEFAULT_MAX_IDLE_SECONDS = 120.0
# Octet counting is the framing RFC 5425 requires over TLS and the one that survives any payload; receivers
# that only read lines (Logstash's syslog input, Fluent Bit) need SINK_SYSLOG_FRAMING=lf.
DEFAULT_FRAMING = "octet-counting"
FRAMINGS = ("octet-counting", "lf")
WRAPPERS = ("none", "wazuh")

WRITE_BYTES = 256 * 1024  # frames are written in runs of about this size
MIN_CHUNK_BYTES = 64  # below this much room for JSON per message, splitting is pointless
CHECK_TLS_WAIT_SECONDS = 0.25  # how long check() listens for a receiver refusing the session after the handshake

FACILITIES: dict[str, int] = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "lpr": 6,
    "news": 7,
    "uucp": 8,
    "cron": 9,
    "authpriv": 10,
    "ftp": 11,
    "ntp": 12,
    "audit": 13,
    "alert": 14,
    "clock": 15,
    **{f"local{n}": 16 + n for n in range(8)},
}
SEVERITIES: dict[str, int] = {
    "emerg": 0,
    "emergency": 0,
    "alert": 1,
    "crit": 2,
    "critical": 2,
    "err": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "informational": 6,
    "debug": 7,
}

_PRINTUSASCII = re.compile(r"^[\x21-\x7e]+$")
# DEL, U+0080-U+009F and U+2028/U+2029 as UTF-8: control characters JSON does not have to escape.
# The lead bytes \xc2 and \xe2 never occur inside another character, so these never match mid-character.
_RAW_CONTROLS = re.compile(rb"\x7f|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")
# SD-ID "name@enterprise-number": printable US-ASCII without '=', ' ', ']', '"', and no '@' in the name.
_SD_NAME_FORBIDDEN = frozenset('=]" @')
# OpenSSL reasons for "the other end does not speak TLS here".
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL", "UNEXPECTED_MESSAGE", "HTTP_REQUEST"})

Connector = Callable[[tuple[str, int], float], socket.socket]
"""Opens a TCP connection: ``socket.create_connection`` or a stand-in (tests count attempts with it)."""


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class SyslogSinkSettings:
    """``SINK_SYSLOG_*``: the receiver, the message header, the size rule and the TLS trust."""

    name: ClassVar[str] = "syslog"

    host: str
    port: int
    protocol: str = "tls"
    app_name: str = DEFAULT_APP_NAME
    hostname: str = "-"
    facility: int = FACILITIES[DEFAULT_FACILITY]
    severity: int = SEVERITIES[DEFAULT_SEVERITY]
    structured_data: bool = True
    sd_id: str = DEFAULT_SD_ID
    allow_plaintext: bool = False
    """``SINK_SYSLOG_ALLOW_PLAINTEXT``: plain TCP to a host other than loopback (a trusted network)."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    oversize: str = "reject"
    framing: str = DEFAULT_FRAMING
    """``SINK_SYSLOG_FRAMING``: ``octet-counting`` (MSG-LEN SP SYSLOG-MSG) or ``lf`` (SYSLOG-MSG LF)."""
    wrapper: str = "none"
    """``SINK_SYSLOG_WRAPPER``: ``wazuh`` sends ``{"integration":"office365","office365":<record>}`` as MSG."""
    ca_file: str | None = None
    ca_setting: str | None = None
    """Which setting ``ca_file`` came from (SINK_SYSLOG_CA_FILE or REQUESTS_CA_BUNDLE), for messages."""
    client_cert_file: str | None = None
    client_key_file: str | None = None
    connect_timeout_seconds: float = DEFAULT_CONNECT_TIMEOUT_SECONDS
    send_timeout_seconds: float = DEFAULT_SEND_TIMEOUT_SECONDS
    max_idle_seconds: float = DEFAULT_MAX_IDLE_SECONDS

    def __post_init__(self) -> None:
        # Audit records name users, files and IP addresses: like plain http in the HTTP sinks, an
        # unencrypted stream is for loopback only unless the operator says the network is trusted.
        # Checked here, not only in from_env, so no way of building the settings can skip it.
        if self.protocol != "tls" and not self.allow_plaintext and self.host.lower() not in LOOPBACK_HOSTS:
            raise ConfigError(
                "SINK_SYSLOG_ALLOW_PLAINTEXT",
                f"SINK_SYSLOG_PROTOCOL=tcp would send records unencrypted to {self.host!r}: use tls, or set "
                "SINK_SYSLOG_ALLOW_PLAINTEXT=true if the network to the receiver is trusted (plain tcp is "
                "accepted without it only for 127.0.0.1, localhost or ::1)",
            )

    @classmethod
    def from_env(cls, env: Environ) -> SyslogSinkSettings:
        host = require_str(env, "SINK_SYSLOG_HOST", "the syslog receiver's host name or IP address")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]  # [::1]
        if "://" in host or not _PRINTUSASCII.match(host):
            raise ConfigError("SINK_SYSLOG_HOST", f"{host!r} is not a host name or IP address (no scheme or port)")
        protocol = get_choice(env, "SINK_SYSLOG_PROTOCOL", "tls", ("tls", "tcp"))
        tls = protocol == "tls"
        ca_file, ca_setting = get_str(env, "SINK_SYSLOG_CA_FILE"), "SINK_SYSLOG_CA_FILE"
        cert_file = get_str(env, "SINK_SYSLOG_CLIENT_CERT_FILE")
        key_file = get_str(env, "SINK_SYSLOG_CLIENT_KEY_FILE")
        if not tls:
            for setting, value in (
                ("SINK_SYSLOG_CA_FILE", ca_file),
                ("SINK_SYSLOG_CLIENT_CERT_FILE", cert_file),
                ("SINK_SYSLOG_CLIENT_KEY_FILE", key_file),
            ):
                if value is not None:
                    raise ConfigError(setting, "only applies with SINK_SYSLOG_PROTOCOL=tls")
        elif ca_file is None:
            # Like requests: a private CA bundle named for the whole app applies here too.
            ca_file, ca_setting = get_str(env, "REQUESTS_CA_BUNDLE"), "REQUESTS_CA_BUNDLE"
        if key_file is not None and cert_file is None:
            raise ConfigError("SINK_SYSLOG_CLIENT_KEY_FILE", "is set without SINK_SYSLOG_CLIENT_CERT_FILE")
        hostname = get_str(env, "SINK_SYSLOG_HOSTNAME")
        sd_id = get_str(env, "SINK_SYSLOG_SD_ID", DEFAULT_SD_ID) or DEFAULT_SD_ID
        if not _valid_sd_id(sd_id):
            raise ConfigError(
                "SINK_SYSLOG_SD_ID",
                f"{sd_id!r} is not an SD-ID of the form name@enterprise-number (at most 32 printable characters, "
                "no spaces, '=', ']' or '\"')",
            )
        return cls(
            host=host,
            port=get_int(env, "SINK_SYSLOG_PORT", DEFAULT_PORTS[protocol], minimum=1, maximum=65535),
            protocol=protocol,
            app_name=_header_value(env, "SINK_SYSLOG_APP_NAME", DEFAULT_APP_NAME, 48),
            hostname=(
                _header_value(env, "SINK_SYSLOG_HOSTNAME", "-", 255) if hostname is not None else _machine_hostname()
            ),
            facility=_code(env, "SINK_SYSLOG_FACILITY", DEFAULT_FACILITY, FACILITIES, 23),
            severity=_code(env, "SINK_SYSLOG_SEVERITY", DEFAULT_SEVERITY, SEVERITIES, 7),
            structured_data=get_bool(env, "SINK_SYSLOG_STRUCTURED_DATA", True),
            sd_id=sd_id,
            allow_plaintext=get_bool(env, "SINK_SYSLOG_ALLOW_PLAINTEXT", False),
            max_message_bytes=get_int(
                env,
                "SINK_SYSLOG_MAX_MESSAGE_BYTES",
                DEFAULT_MAX_MESSAGE_BYTES,
                minimum=1024,
                maximum=16 * 1024 * 1024,
            ),
            oversize=get_choice(env, "SINK_SYSLOG_OVERSIZE", "reject", ("reject", "split")),
            framing=get_choice(env, "SINK_SYSLOG_FRAMING", DEFAULT_FRAMING, FRAMINGS),
            wrapper=get_choice(env, "SINK_SYSLOG_WRAPPER", "none", WRAPPERS),
            ca_file=ca_file if tls else None,
            ca_setting=ca_setting if tls and ca_file is not None else None,
            client_cert_file=cert_file,
            client_key_file=key_file,
            connect_timeout_seconds=get_float(
                env, "SINK_SYSLOG_CONNECT_TIMEOUT_SECONDS", DEFAULT_CONNECT_TIMEOUT_SECONDS, minimum=0.1, maximum=600.0
            ),
            send_timeout_seconds=get_float(
                env, "SINK_SYSLOG_SEND_TIMEOUT_SECONDS", DEFAULT_SEND_TIMEOUT_SECONDS, minimum=0.1, maximum=600.0
            ),
            max_idle_seconds=get_float(env, "SINK_SYSLOG_MAX_IDLE_SECONDS", DEFAULT_MAX_IDLE_SECONDS, maximum=86400.0),
        )

    def create(self) -> SyslogSink:
        return SyslogSink(self)


def _header_value(env: Environ, name: str, default: str, limit: int) -> str:
    value = get_str(env, name, default) or default
    if not _PRINTUSASCII.match(value) or len(value) > limit:
        raise ConfigError(name, f"{value!r} must be 1 to {limit} printable ASCII characters without spaces")
    return value


def _code(env: Environ, name: str, default: str, names: dict[str, int], maximum: int) -> int:
    text = (get_str(env, name, default) or default).lower()
    if text.isdigit() and int(text) <= maximum:
        return int(text)
    if text in names:
        return names[text]
    raise ConfigError(name, f"unknown value {text!r} (expected 0-{maximum} or one of {', '.join(names)})")


def _valid_sd_id(text: str) -> bool:
    name, at, number = text.partition("@")
    return (
        bool(at and name and number)
        and len(text) <= 32
        and _PRINTUSASCII.match(text) is not None
        and not _SD_NAME_FORBIDDEN.intersection(name)
        and all(part.isdigit() for part in number.split("."))
    )


def _machine_hostname() -> str:
    # RFC 5424 HOSTNAME: printable US-ASCII, at most 255 characters; "-" (NILVALUE) when there is none.
    cleaned = "".join(c for c in socket.gethostname() if "\x21" <= c <= "\x7e")[:255]
    return cleaned or "-"


def escape_param_value(text: str) -> str:
    """A PARAM-VALUE: control characters as ``printable`` escapes, then ``\\``, ``"`` and ``]`` escaped.

    RFC 5424 requires only the three backslash escapes and allows control characters, but a raw line
    feed splits the message for every receiver or file that reads lines. Written as ``\\n``, it
    arrives as those two characters.
    """
    return printable(text).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def json_payload(record: Record) -> bytes:
    """The MSG: ``serialize(record)`` with DEL, the C1 controls and U+2028/U+2029 as ``\\uXXXX`` escapes.

    JSON escapes the C0 controls itself but may write these raw; some readers split lines on them
    (NEL, LINE SEPARATOR). Only JSON strings can hold them, so the escaped text is the same JSON value.
    """
    payload = serialize(record)
    return _RAW_CONTROLS.sub(_json_escape, payload) if _RAW_CONTROLS.search(payload) else payload


def _json_escape(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % ord(match[0].decode("utf-8"))


def format_timestamp(value: dt.datetime) -> str:
    """RFC 5424 TIMESTAMP in UTC: ``2026-03-04T22:30:00Z``, with up to 6 fraction digits when there are any."""
    t = utc(value)
    text = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    if t.microsecond:
        text += f".{t.microsecond:06d}".rstrip("0")
    return text + "Z"


def _record_time(record: Record, now: Callable[[], dt.datetime], field: str = AUDIT_TIME_FIELD) -> dt.datetime:
    value = record.get(field)
    if isinstance(value, str):
        try:
            return parse_api_time(value)
        except ValueError:
            pass
    return now()


def wazuh_wrap(record: Record) -> Record:
    """The record in the shape Wazuh's stock office365 decoder and rules read."""
    # Wazuh's own office365 module writes events this way; its rules key on integration == "office365".
    return {"integration": "office365", "office365": record}


def _octet_frame(message: bytes) -> bytes:
    # RFC 6587 section 3.4.1 / RFC 5425 section 4.3: MSG-LEN SP SYSLOG-MSG, MSG-LEN in octets.
    return str(len(message)).encode("ascii") + b" " + message


def _lf_frame(message: bytes) -> bytes:
    # RFC 6587 section 3.4.2 with LF as the trailer; lossless because messages never hold a raw LF.
    return message + b"\n"


def _utf8_pieces(payload: bytes, room: int) -> list[bytes]:
    """``payload`` cut into pieces of at most ``room`` bytes, never inside a UTF-8 character."""
    pieces: list[bytes] = []
    start = 0
    while start < len(payload):
        end = min(start + room, len(payload))
        while end < len(payload) and (payload[end] & 0xC0) == 0x80:  # a continuation byte: back off
            end -= 1
        pieces.append(payload[start:end])
        start = end
    return pieces


def _writes(frames: Iterable[bytes]) -> Iterator[bytes]:
    buffer = bytearray()
    for frame in frames:
        buffer += frame
        if len(buffer) >= WRITE_BYTES:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


def _still_open(sock: socket.socket, wait: float = 0.0) -> bool:
    """False when the receiver has closed the connection; raises the OSError of a reset or a TLS alert.

    A syslog receiver never sends application data, so anything readable is an end of stream, an
    error, or TLS housekeeping (session tickets), which the TLS layer consumes. Never blocks longer
    than ``wait``.
    """
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return True
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        # Anything a chatty receiver sent is discarded, up to a bound; an empty read is the end of stream.
        return all(sock.recv(65536) for _ in range(64))
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return True
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


class SyslogSink:
    """Sends each record as one RFC 5424 message over a reused TCP or TLS connection; see the module docstring."""

    name = "syslog"

    def __init__(
        self,
        settings: SyslogSinkSettings,
        *,
        connect: Connector = socket.create_connection,
        clock: Callable[[], dt.datetime] = _utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._connect = connect
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._last_used = 0.0
        self._tls_context: ssl.SSLContext | None = None
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        self._endpoint = f"{settings.protocol}://{host}:{settings.port}"
        self._pri = settings.facility * 8 + settings.severity

    # -- the Sink protocol

    def check(self) -> None:
        """Connect (and complete the TLS handshake), then close: nothing is sent."""
        with self._lock:
            self._drop()
            sock = self._open()
            try:
                wait = CHECK_TLS_WAIT_SECONDS if self._settings.protocol == "tls" else 0.0
                if not _still_open(sock, wait):
                    raise SinkTransientError(f"{self._endpoint} accepted the connection and closed it at once")
            except OSError as err:
                raise self._connection_error(err, "open a session with") from err
            finally:
                with contextlib.suppress(OSError):
                    sock.close()
        log.debug("syslog sink: %s accepts connections", self._endpoint)

    def send(self, records: Sequence[Record], context: BlobContext) -> None:
        """Write one frame per record (more under ``split``); see the module docstring for what returning means."""
        # Built up front: an oversize record under "reject" fails the blob before any of it is written.
        frame = _lf_frame if self._settings.framing == "lf" else _octet_frame
        frames = [frame(message) for message in self._messages(records, context)]
        if not frames:
            return
        extra = {"tenant_id": context.tenant_id, "content_type": context.content_type, "content_id": context.content_id}
        with self._lock:
            sock = self._ready_connection()
            try:
                for chunk in _writes(frames):
                    sock.sendall(chunk)
                still_open = _still_open(sock)
            except OSError as err:
                self._drop()
                failure = self._connection_error(err, "send to")
                raise type(failure)(
                    f"{failure}; messages of content {context.content_id} written before the failure may arrive "
                    "twice when it is sent again"
                ) from err
            if not still_open:
                self._drop()
                raise SinkTransientError(
                    f"{self._endpoint} closed the connection while content {context.content_id} was sent; "
                    f"some of its {len(frames)} messages may be lost, so all are sent again"
                )
            self._last_used = self._monotonic()
        log.debug(
            "syslog sink: %d records of content %s sent in %d messages",
            len(records),
            context.content_id,
            len(frames),
            extra=extra,
        )

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- messages

    def _messages(self, records: Sequence[Record], context: BlobContext) -> Iterator[bytes]:
        settings = self._settings
        # MSGID: 1-32 printable US-ASCII; content types (Audit.AzureActiveDirectory) fit, anything else is cleaned.
        msgid = "".join(c for c in context.content_type if "\x21" <= c <= "\x7e")[:32] or "-"
        prefix = f"<{self._pri}>1 "
        suffix = f" {settings.hostname} {settings.app_name} - {msgid} "
        field = time_field(context.content_type)  # a Graph record's own time (createdDateTime, ...)
        for index, record in enumerate(records):
            head = (prefix + format_timestamp(_record_time(record, self._clock, field)) + suffix).encode("ascii")
            payload = json_payload(wazuh_wrap(record) if settings.wrapper == "wazuh" else record)
            sd = self._structured_data(context, index) if settings.structured_data else b"-"
            message = head + sd + b" " + payload
            if len(message) <= settings.max_message_bytes:
                yield message
            elif settings.oversize == "split":
                yield from self._split(head, payload, context, index)
            else:
                raise SinkPermanentError(
                    f"record {index} of content {context.content_id} ({context.content_type}) makes a "
                    f"{len(message)}-byte syslog message, above SINK_SYSLOG_MAX_MESSAGE_BYTES "
                    f"({settings.max_message_bytes}): raise the limit (the receiver's too) or set "
                    "SINK_SYSLOG_OVERSIZE=split; nothing of this content blob was sent"
                )

    def _split(self, head: bytes, payload: bytes, context: BlobContext, index: int) -> Iterator[bytes]:
        limit = self._settings.max_message_bytes
        digits = 1
        while True:
            widest = 10**digits - 1  # room is computed for the widest part numbers of this many digits
            room = limit - len(head) - len(self._structured_data(context, index, widest, widest)) - 1
            if room < MIN_CHUNK_BYTES:
                raise SinkPermanentError(
                    f"record {index} of content {context.content_id} cannot be split: the syslog header leaves "
                    f"{room} bytes per message under SINK_SYSLOG_MAX_MESSAGE_BYTES ({limit}); raise it"
                )
            pieces = _utf8_pieces(payload, room)
            if len(pieces) <= widest:
                break
            digits += 1
        for number, piece in enumerate(pieces, 1):
            yield head + self._structured_data(context, index, number, len(pieces)) + b" " + piece

    def _structured_data(
        self, context: BlobContext, index: int, part: int | None = None, parts: int | None = None
    ) -> bytes:
        params = [("tenant", context.tenant_id), ("contentId", context.content_id), ("recordIndex", str(index))]
        if part is not None and parts is not None:
            params += [("part", str(part)), ("parts", str(parts))]
        body = " ".join(f'{name}="{escape_param_value(value)}"' for name, value in params)
        return f"[{self._settings.sd_id} {body}]".encode()

    # -- connections (callers hold the lock)

    def _ready_connection(self) -> socket.socket:
        sock = self._sock
        if sock is not None:
            reason = None
            if self._monotonic() - self._last_used > self._settings.max_idle_seconds:
                reason = "idle longer than SINK_SYSLOG_MAX_IDLE_SECONDS"
            else:
                try:
                    if not _still_open(sock):
                        reason = "closed by the receiver"
                except OSError as err:
                    reason = f"broken ({err.strerror or type(err).__name__})"
            if reason is None:
                return sock
            log.debug("syslog sink: connection to %s %s; reconnecting", self._endpoint, reason)
            self._drop()
        self._sock = self._open()
        self._last_used = self._monotonic()
        return self._sock

    def _open(self) -> socket.socket:
        settings = self._settings
        try:
            raw = self._connect((settings.host, settings.port), settings.connect_timeout_seconds)
        except OSError as err:
            raise self._connection_error(err, "connect to") from err
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # frames go out as written
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock = raw
            if settings.protocol == "tls":
                raw.settimeout(settings.connect_timeout_seconds)  # bounds the handshake too
                sock = self._tls().wrap_socket(raw, server_hostname=settings.host)
            sock.settimeout(settings.send_timeout_seconds)
        except OSError as err:
            raw.close()
            raise self._connection_error(err, "complete the TLS handshake with") from err
        except CollectorError:
            raw.close()
            raise
        return sock

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _tls(self) -> ssl.SSLContext:
        if self._tls_context is None:
            settings = self._settings
            try:
                context = ssl.create_default_context(cafile=settings.ca_file)
            except (OSError, ValueError) as err:
                raise SinkPermanentError(
                    f"{settings.ca_setting}: cannot load the CA file {settings.ca_file!r} ({_reason(err)})"
                ) from err
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if settings.client_cert_file is not None:
                try:
                    context.load_cert_chain(settings.client_cert_file, settings.client_key_file)
                except (OSError, ValueError) as err:
                    raise SinkPermanentError(
                        "SINK_SYSLOG_CLIENT_CERT_FILE / SINK_SYSLOG_CLIENT_KEY_FILE: cannot load the client "
                        f"certificate {settings.client_cert_file!r} ({_reason(err)}; the key must be unencrypted PEM)"
                    ) from err
            self._tls_context = context
        return self._tls_context

    def _connection_error(self, err: OSError, action: str) -> CollectorError:
        settings = self._settings
        where = self._endpoint
        if isinstance(err, ssl.SSLCertVerificationError):
            if settings.ca_setting == "REQUESTS_CA_BUNDLE":
                trust = "the bundle in REQUESTS_CA_BUNDLE does not trust it: set SINK_SYSLOG_CA_FILE to its CA"
            elif settings.ca_setting is not None:
                trust = f"trust its CA with {settings.ca_setting}"
            else:
                trust = "the system store does not trust it: set SINK_SYSLOG_CA_FILE to its CA"
            return SinkPermanentError(
                f"TLS verification of {where} failed ({err.verify_message or err.reason}): {trust}, "
                "or fix the receiver's certificate"
            )
        if isinstance(err, ssl.SSLError) and not isinstance(err, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            reason = err.reason or type(err).__name__
            if reason in _NOT_TLS_REASONS:
                return SinkPermanentError(
                    f"{where} does not speak TLS ({reason}): check SINK_SYSLOG_PROTOCOL and SINK_SYSLOG_PORT"
                )
            if "ALERT" in reason:
                return SinkPermanentError(
                    f"{where} refused the TLS session ({reason}): check what the receiver requires, e.g. a client "
                    "certificate (SINK_SYSLOG_CLIENT_CERT_FILE / SINK_SYSLOG_CLIENT_KEY_FILE)"
                )
            return SinkTransientError(f"TLS with {where} failed ({reason})")
        if isinstance(err, ConnectionRefusedError):
            return SinkTransientError(
                f"connection to {where} refused: is the syslog receiver listening there? "
                "(SINK_SYSLOG_HOST, SINK_SYSLOG_PORT)"
            )
        if isinstance(err, socket.gaierror):
            return SinkTransientError(f"cannot resolve SINK_SYSLOG_HOST {settings.host!r} ({_reason(err)})")
        if isinstance(err, TimeoutError):
            if action == "send to":
                return SinkTransientError(
                    f"{where} did not take the data within {settings.send_timeout_seconds:g}s "
                    "(SINK_SYSLOG_SEND_TIMEOUT_SECONDS)"
                )
            return SinkTransientError(
                f"cannot {action} {where} within {settings.connect_timeout_seconds:g}s "
                "(SINK_SYSLOG_CONNECT_TIMEOUT_SECONDS)"
            )
        return SinkTransientError(f"cannot {action} {where}: {_reason(err)}")


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__
