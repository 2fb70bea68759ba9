"""The Splunk sink: each record becomes one HTTP Event Collector (HEC) event, posted in batches.

Wire format (``POST {SINK_SPLUNK_URL}/services/collector/event``, ``Authorization: Splunk <token>``):
a batch is event objects written one after another, each
``{"time": <epoch seconds>, "host": ..., "source": ..., "sourcetype": ..., "index": ..., "event": <record>}``.
``event`` is the record exactly as the API served it; ``time`` is its ``CreationTime`` (UTC when it has
no offset, as the API writes it), left out when the record has none, so Splunk uses the arrival time.
``host``, ``source`` and ``index`` are left out when unset, so the token's defaults apply;
``sourcetype`` defaults to ``o365:management:activity``, the name the Splunk add-on for Microsoft 365
uses (its own input also writes ``source=o365``: set ``SINK_SPLUNK_SOURCE=o365`` for content that
filters on it). Records of the Microsoft Graph streams get their ecosystem's sourcetype whatever
SINK_SPLUNK_SOURCETYPE says (it names the audit feed's): ``azure:aad:signin`` and ``azure:aad:audit``
(the Splunk Add-on for Microsoft Azure's Entra ID inputs, which read the same Graph endpoints) and
``o365:reporting:messagetrace`` (the Splunk Add-on for Microsoft Office 365); their ``time`` is the
record's own (``createdDateTime``, ``activityDateTime``, ``receivedDateTime``).

Every request carries ``X-Splunk-Request-Channel`` (one GUID per sink instance): tokens with
indexer acknowledgement require it, the others accept it.

Batches stay under ``SINK_SPLUNK_BATCH_MAX_BYTES`` (HEC refuses bodies above its ``max_content_length``,
1,000,000 bytes by default); a single event larger than that is sent alone, and Splunk's 413 then
says so rather than the record vanishing.

With ``SINK_SPLUNK_ACK`` (indexer acknowledgement), each accepted batch returns an ``ackId``; after the
blob's last batch the sink polls ``/services/collector/ack`` until every id reads ``true``, for at most
``SINK_SPLUNK_ACK_TIMEOUT_SECONDS``. Ids still unconfirmed then raise ``SinkTransientError``: the queue
delivers the blob again (at least once, so some events may arrive twice).

How answers are classified (HEC's JSON ``code`` first, then the HTTP status):

=============================================  ===============================================
2xx                                            accepted
code 1, 2, 3, 4 (token disabled, missing,      ``SinkPermanentError``: check SINK_SPLUNK_TOKEN
malformed, invalid), 401, 403
code 7 (incorrect index)                       ``SinkPermanentError``: check SINK_SPLUNK_INDEX
code 14 (ACK is disabled)                      ``SinkPermanentError``: check SINK_SPLUNK_ACK
code 8, 9 (server error, busy), 408, 429, 5xx  ``SinkTransientError`` (Retry-After honoured)
413                                            ``SinkPermanentError``: lower SINK_SPLUNK_BATCH_MAX_BYTES
code 5, 6, 12, 13, ... (data refused), 4xx     ``SinkPermanentError`` with HEC's text and code
3xx                                            ``SinkPermanentError`` (redirects are not followed)
=============================================  ===============================================

Transport failures, TLS, retries and secrets hygiene are ``httpcore``'s. The token never appears in
logs, messages or ``repr``; record bodies never appear in logs or messages.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
import requests

from ..envparse import Environ, Secret, get_bool, get_float, get_int, get_secret, get_str
from ..errors import CollectorError, ConfigError, SinkPermanentError, SinkTransientError
from ..models import BlobContext, Record
from ..retry import RetryPolicy
from .batching import Batch, Framing, iter_batches, serialize
from .httpcore import USER_AGENT, HttpCore, Target, excerpt, is_transient_status, parse_base_url, snippet
from .streams import AUDIT_TIME_FIELD, is_graph_stream, labels_for, time_field

log = logging.getLogger(__name__)

# Defaults (one place, with the reason for each).
# The name Splunk users and the Splunk add-on for Microsoft 365 know for Management Activity records.
DEFAULT_SOURCETYPE = "o365:management:activity"
# HEC's max_content_length defaults to 1,000,000 bytes; stay well below it (headers, proxies).
DEFAULT_BATCH_MAX_BYTES = 800_000
HEC_DEFAULT_MAX_CONTENT_LENGTH = 1_000_000
# Audit records are ~1-5 KB, so the byte limit decides; this only bounds pathological tiny records.
MAX_EVENTS_PER_BATCH = 10_000
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_ATTEMPTS = 5
# Per batch; beyond it the message goes back to the queue, whose redelivery is the longer wait.
DEFAULT_MAX_RETRY_SECONDS = 60.0
# Splunk advises treating data as lost when not acknowledged within minutes; 2 minutes per blob keeps
# a few blobs within the 10-minute function timeout, and redelivery covers the rest.
DEFAULT_ACK_TIMEOUT_SECONDS = 120.0
ACK_FIRST_POLL_SECONDS = 1.0  # indexing takes a moment: asking at once would nearly always read false
ACK_MAX_POLL_SECONDS = 10.0  # Splunk's suggested polling interval

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"

# HEC status codes (the JSON ``code`` of an answer).
HEC_TOKEN_CODES = frozenset({1, 2, 3, 4})  # token disabled / required / invalid authorization / invalid token
HEC_NO_DATA = 5
HEC_INCORRECT_INDEX = 7
HEC_CHANNEL_CODES = frozenset({10, 11})  # data channel missing / invalid
HEC_ACK_DISABLED = 14

_VISIBLE_ASCII = re.compile(r"^[\x21-\x7e]+$")
# Splunk index names: lower-case letters, digits, '_' and '-', not starting with '_' or '-'.
_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# HEC events are JSON objects written back to back (the form HEC documents for batches).
HEC_EVENTS = Framing("hec", "application/json")


@dataclass(frozen=True, slots=True)
class SplunkSinkSettings:
    """``SINK_SPLUNK_*``."""

    name: ClassVar[str] = "splunk"

    url: str
    """Base address (scheme://host:port[/prefix]); the sink appends /services/collector/..."""
    token: Secret = field(repr=False)
    index: str | None = None
    source: str | None = None
    sourcetype: str = DEFAULT_SOURCETYPE
    host: str | None = None
    ack: bool = False
    ack_timeout_seconds: float = DEFAULT_ACK_TIMEOUT_SECONDS
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_retry_seconds: float = DEFAULT_MAX_RETRY_SECONDS

    @classmethod
    def from_env(cls, env: Environ) -> SplunkSinkSettings:
        url = parse_base_url(env, "SINK_SPLUNK_URL", "the HEC address, e.g. https://splunk.example.com:8088")
        # Accept the full event URL too (people copy it from Splunk's docs): keep what precedes it.
        cut = url.find("/services/collector")
        if cut != -1:
            url = url[:cut]
        token = get_secret(env, "SINK_SPLUNK_TOKEN")
        if token is None:
            raise ConfigError("SINK_SPLUNK_TOKEN", "is required but not set (the HEC token, a GUID)")
        if not _VISIBLE_ASCII.match(token.reveal()):
            raise ConfigError("SINK_SPLUNK_TOKEN", "must be the token alone, without spaces or the 'Splunk ' prefix")
        index = get_str(env, "SINK_SPLUNK_INDEX")
        if index is not None and not _INDEX_NAME.match(index):
            raise ConfigError(
                "SINK_SPLUNK_INDEX",
                f"{index!r} is not a Splunk index name (lower-case letters, digits, '_' and '-', "
                "not starting with '_' or '-')",
            )
        return cls(
            url=url,
            token=token,
            index=index,
            source=_one_line(env, "SINK_SPLUNK_SOURCE"),
            sourcetype=_one_line(env, "SINK_SPLUNK_SOURCETYPE") or DEFAULT_SOURCETYPE,
            host=_one_line(env, "SINK_SPLUNK_HOST"),
            ack=get_bool(env, "SINK_SPLUNK_ACK", False),
            ack_timeout_seconds=get_float(
                env, "SINK_SPLUNK_ACK_TIMEOUT_SECONDS", DEFAULT_ACK_TIMEOUT_SECONDS, minimum=1.0, maximum=3600.0
            ),
            batch_max_bytes=get_int(
                env, "SINK_SPLUNK_BATCH_MAX_BYTES", DEFAULT_BATCH_MAX_BYTES, minimum=1024, maximum=800 * 1024 * 1024
            ),
            timeout_seconds=get_float(
                env, "SINK_SPLUNK_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS, minimum=1.0, maximum=600.0
            ),
            max_attempts=get_int(env, "SINK_SPLUNK_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, minimum=1, maximum=20),
            max_retry_seconds=get_float(
                env, "SINK_SPLUNK_MAX_RETRY_SECONDS", DEFAULT_MAX_RETRY_SECONDS, maximum=3600.0
            ),
        )

    def create(self) -> SplunkSink:
        return SplunkSink(self)


def _one_line(env: Environ, name: str) -> str | None:
    value = get_str(env, name)
    if value is not None and (len(value) > 1024 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)):
        raise ConfigError(name, "must be one line of at most 1024 printable characters")
    return value


def event_time(record: Record, field: str = AUDIT_TIME_FIELD) -> int | float | None:
    """``field`` (``CreationTime`` for the audit feed) as epoch seconds (milliseconds kept), or None when
    absent or unreadable.

    The API writes UTC without an offset ("2024-05-14T10:11:58"); an explicit offset is honoured.
    """
    text = record.get(field)
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    if when.microsecond == 0:
        return int(when.timestamp())
    return round(when.timestamp(), 3)


class SplunkSink:
    """Posts each blob's records to HEC as events; see the module docstring."""

    name = "splunk"

    def __init__(
        self,
        settings: SplunkSinkSettings,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        channel: str | None = None,
    ) -> None:
        self._settings = settings
        self._core = HttpCore(
            Target(
                url=settings.url,
                url_setting="SINK_SPLUNK_URL",
                timeout_seconds=settings.timeout_seconds,
                timeout_setting="SINK_SPLUNK_TIMEOUT_SECONDS",
                backend="Splunk HEC",
            ),
            policy=RetryPolicy(max_attempts=settings.max_attempts, max_seconds=settings.max_retry_seconds),
            session=session,
            sleep=sleep,
            clock=clock,
        )
        self._monotonic = monotonic
        self._channel = channel or str(uuid.uuid4())
        # The envelope fields every event shares, in HEC's documented order; event goes last.
        meta: dict[str, Any] = {}
        for key, value in (
            ("host", settings.host),
            ("source", settings.source),
            ("sourcetype", settings.sourcetype),
            ("index", settings.index),
        ):
            if value is not None:
                meta[key] = value
        self._meta = meta

    @property
    def channel(self) -> str:
        """The ``X-Splunk-Request-Channel`` GUID this sink sends."""
        return self._channel

    def check(self) -> None:
        """Probe HEC with an authenticated request that carries no event; nothing is indexed.

        An empty POST to the event endpoint is answered ``No data`` (code 5) once HEC has accepted
        the token, and ``Invalid token`` (code 4) or similar otherwise; any answer proves DNS, TCP
        and TLS. With SINK_SPLUNK_ACK on, an empty ack query also proves the token has indexer
        acknowledgement enabled. HEC's /health endpoint is not used: it does not look at the token.
        The index is not checked here (only an event can be refused for its index); the first
        send() names SINK_SPLUNK_INDEX if Splunk refuses it.
        """
        response = self._post(EVENT_PATH, b"")
        with response:
            reply = _reply(response)
            code = _code(reply)
            status = response.status_code
            token_accepted = code == HEC_NO_DATA or 200 <= status < 300
            hec_said_why = (
                code in HEC_TOKEN_CODES or status in (401, 403) or 300 <= status < 400 or is_transient_status(status)
            )
            if not token_accepted and hec_said_why:  # a token refusal, busy, redirect: as for send()
                raise self._classify(response, reply)
            if not token_accepted:
                raise SinkPermanentError(
                    f"{self._core.where(response)}{_said(response, reply)}: not the answer of an HTTP Event "
                    f"Collector at {EVENT_PATH} (check SINK_SPLUNK_URL: HEC listens on its own port, 8088 by default)"
                )
        if self._settings.ack:
            self._query_acks([])
        log.debug("splunk sink: %s accepted the token", self._core.endpoint)

    def send(self, records: Sequence[Record], context: BlobContext) -> None:
        """Post the records batch by batch; with acknowledgement, wait until Splunk has indexed them."""
        extra = {
            "tenant_id": context.tenant_id,
            "content_type": context.content_type,
            "content_id": context.content_id,
        }
        pending: dict[int, Batch] = {}
        batches = 0
        for batch in iter_batches(
            records,
            framing=HEC_EVENTS,
            max_bytes=self._settings.batch_max_bytes,
            max_records=MAX_EVENTS_PER_BATCH,
            serialize=functools.partial(self._envelope, meta=self._meta_for(context.content_type)),
        ):
            if batch.oversize:
                log.warning(
                    "splunk sink: record %d of content %s encodes to %d bytes, above SINK_SPLUNK_BATCH_MAX_BYTES "
                    "(%d); sending it alone",
                    batch.first,
                    context.content_id,
                    len(batch.body),
                    self._settings.batch_max_bytes,
                    extra=extra,
                )
            ack_id, failures = self._core.with_retries(functools.partial(self._post_events, batch.body))
            if failures:
                log.warning(
                    "splunk sink: batch of %d events accepted after %d retries (last failure: %s)",
                    batch.count,
                    len(failures),
                    failures[-1],
                    extra=extra,
                )
            if self._settings.ack:
                if ack_id is None:
                    raise SinkPermanentError(
                        f"{self._core.endpoint} accepted the events without an ackId: indexer acknowledgement "
                        "is not enabled for this token (enable it in Splunk, or set SINK_SPLUNK_ACK=false)"
                    )
                pending[ack_id] = batch
            batches += 1
        if pending:
            self._wait_for_acks(pending, extra)
        log.debug(
            "splunk sink: %d records of content %s accepted in %d batches%s",
            len(records),
            context.content_id,
            batches,
            " and indexed" if pending else "",
            extra=extra,
        )

    def close(self) -> None:
        self._core.close()

    # -- wire format

    def _meta_for(self, stream: str) -> tuple[dict[str, Any], str]:
        """The envelope fields and the time field for records of ``stream``: a Graph stream gets its
        ecosystem's sourcetype (SINK_SPLUNK_SOURCETYPE names the audit feed's)."""
        if not is_graph_stream(stream):
            return self._meta, AUDIT_TIME_FIELD
        meta = {**self._meta, "sourcetype": labels_for(stream).splunk_sourcetype}
        return {key: meta[key] for key in ("host", "source", "sourcetype", "index") if key in meta}, time_field(stream)

    def _envelope(self, record: Record, meta: tuple[dict[str, Any], str] | None = None) -> bytes:
        fields, field_name = meta if meta is not None else (self._meta, AUDIT_TIME_FIELD)
        envelope: dict[str, Any] = {}
        when = event_time(record, field_name)
        if when is not None:
            envelope["time"] = when
        envelope.update(fields)
        envelope["event"] = record
        return serialize(envelope)

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Splunk {self._settings.token.reveal()}",
            "X-Splunk-Request-Channel": self._channel,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }

    def _post(self, path: str, body: bytes) -> requests.Response:
        return self._core.request("POST", self._settings.url + path, headers=self._headers(), body=body)

    def _post_events(self, body: bytes) -> int | None:
        """One POST of a batch; the ackId HEC returned (None without acknowledgement), or raise."""
        response = self._post(EVENT_PATH, body)
        with response:
            reply = _reply(response)
            if not 200 <= response.status_code < 300:
                raise self._classify(response, reply)
        ack_id = reply.get("ackId") if reply is not None else None
        return ack_id if isinstance(ack_id, int) and not isinstance(ack_id, bool) else None

    # -- indexer acknowledgement

    def _wait_for_acks(self, pending: dict[int, Batch], extra: dict[str, Any]) -> None:
        total = len(pending)
        timeout = self._settings.ack_timeout_seconds
        started = self._monotonic()
        interval = ACK_FIRST_POLL_SECONDS
        last_error: CollectorError | None = None
        while True:
            remaining = timeout - (self._monotonic() - started)
            self._core.sleep(max(0.0, min(interval, remaining)))
            try:
                confirmed = self._query_acks(sorted(pending))
            except SinkPermanentError:
                raise
            except CollectorError as err:  # transient: keep polling until the bound
                last_error = err
                confirmed = set()
            for ack_id in confirmed:
                pending.pop(ack_id, None)
            if not pending:
                return
            if self._monotonic() - started >= timeout:
                records = sum(batch.count for batch in pending.values())
                message = (
                    f"Splunk did not confirm indexing of {len(pending)} of {total} batches ({records} events) "
                    f"within {timeout:g}s (SINK_SPLUNK_ACK_TIMEOUT_SECONDS); the blob will be sent again"
                )
                if last_error is not None:
                    message += f" (last ack query failure: {last_error})"
                log.warning("splunk sink: %s", message, extra=extra)
                raise SinkTransientError(message)
            interval = min(interval * 2, ACK_MAX_POLL_SECONDS)

    def _query_acks(self, ack_ids: list[int]) -> set[int]:
        """The ids HEC reports indexed (``{"acks": {"0": true, ...}}``); raises on any other answer."""
        response = self._post(ACK_PATH, orjson.dumps({"acks": ack_ids}))
        with response:
            reply = _reply(response)
            if not 200 <= response.status_code < 300:
                raise self._classify(response, reply)
        acks = reply.get("acks") if reply is not None else None
        if not isinstance(acks, dict):
            raise SinkPermanentError(
                f"{self._core.endpoint} answered the ack query without an 'acks' object "
                "(is SINK_SPLUNK_URL a Splunk HEC address?)"
            )
        return {int(key) for key, done in acks.items() if done is True and key.isdigit()}

    # -- classification

    def _classify(self, response: requests.Response, reply: dict[str, Any] | None) -> CollectorError:
        """The error for a non-2xx answer (see the table in the module docstring)."""
        status = response.status_code
        where = self._core.where(response)
        code = _code(reply)
        said = _said(response, reply)
        if 300 <= status < 400:
            return self._core.redirect_error(response)
        if code in HEC_TOKEN_CODES or status in (401, 403):
            return SinkPermanentError(f"{where}{said}: HEC refused the token (check SINK_SPLUNK_TOKEN)")
        if code == HEC_INCORRECT_INDEX:
            index = f"index {self._settings.index!r}" if self._settings.index else "the token's default index"
            return SinkPermanentError(
                f"{where}{said}: the token may not write to {index} or it does not exist "
                "(check SINK_SPLUNK_INDEX and the token's allowed indexes)"
            )
        if code == HEC_ACK_DISABLED:
            return SinkPermanentError(
                f"{where}{said}: indexer acknowledgement is disabled for this token "
                "(enable it in Splunk, or set SINK_SPLUNK_ACK=false)"
            )
        if code in HEC_CHANNEL_CODES:
            return SinkPermanentError(f"{where}{said}: HEC refused the request channel {self._channel}")
        if is_transient_status(status):
            return self._core.transient(response, said)
        if status == 413:
            return SinkPermanentError(
                f"{where}{snippet(response)}: the batch is too large for HEC "
                "(lower SINK_SPLUNK_BATCH_MAX_BYTES or raise HEC's max_content_length)"
            )
        event = reply.get("invalid-event-number") if reply is not None else None
        at = f" at event {event} of the batch" if isinstance(event, int) else ""
        return SinkPermanentError(f"{where}{said}: HEC refused the batch{at}")


def _reply(response: requests.Response) -> dict[str, Any] | None:
    """HEC's JSON answer (``{"text": ..., "code": ...}``), or None when the body is something else."""
    try:
        value = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _code(reply: dict[str, Any] | None) -> int | None:
    code = reply.get("code") if reply is not None else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _said(response: requests.Response, reply: dict[str, Any] | None) -> str:
    """What HEC said, as `` (text, code N)``; a short body snippet when the answer is not HEC's JSON."""
    code = _code(reply)
    if reply is None or code is None:
        return snippet(response)
    text = reply.get("text")
    words = excerpt(text, response) if text is not None else "no text"
    return f" ({words}, code {code})"
