"""The generic HTTP sink: POST records in batches (NDJSON or a JSON array, gzip) to any HTTPS receiver.

Fits Logstash / Fluent Bit / Vector HTTP inputs, Cribl, a custom Function, anything that takes a POST.
Each request carries ``X-O365-Tenant-Id``, ``X-O365-Content-Type`` and ``X-O365-Content-Id`` so the
receiver can route, plus ``X-O365-Batch-Index`` so it can de-duplicate a redelivered blob. Records go
as served, or with ``SINK_HTTP_SHAPE=flat`` as ``shape.flat_record`` (``o365.audit.*`` and ``@timestamp``).

How answers are classified:

====================================  =====================================================
2xx                                   accepted
408, 429, 5xx                         ``SinkTransientError`` (``retry_after`` from Retry-After)
timeout, connection refused/reset,    ``SinkTransientError``
DNS failure, TLS handshake cut
401, 403                              ``SinkPermanentError``: check the token / headers
TLS certificate not trusted           ``SinkPermanentError``: trust the CA via REQUESTS_CA_BUNDLE
3xx                                   ``SinkPermanentError``: redirects are not followed, so the
                                      token and extra headers only ever go to SINK_URL's host
other 4xx                             ``SinkPermanentError`` with the status and <= 200 chars of body
====================================  =====================================================

Transient failures are retried per batch with ``o365collector.retry`` (bounded by
``SINK_HTTP_MAX_ATTEMPTS`` and ``SINK_HTTP_MAX_RETRY_SECONDS``), then re-raised for the queue to
redeliver. A batch once accepted is not sent again within the same ``send()``; a redelivered blob is
sent whole again, so delivery to the receiver is at least once.

TLS certificates are always verified; requests honours ``REQUESTS_CA_BUNDLE`` for private CAs. The
bearer token, extra header values and record bodies never appear in logs or error messages, and
neither does SINK_URL's path or query (some receivers put a key there): messages name only the
scheme, host and port. The transport rules (TLS, redirects, transport errors, retries) live in
``httpcore``, shared with the Splunk and Elasticsearch sinks.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson
import requests

from ..content import ContentRecords
from ..envparse import Environ, Secret, get_bool, get_choice, get_float, get_int, get_secret, get_str
from ..errors import CollectorError, ConfigError, SinkPermanentError
from ..invocation import TiedThreadPool
from ..models import BlobContext, Record
from ..redaction import register_secret
from ..retry import RetryPolicy
from . import compression
from .batching import FRAMINGS, Batch, iter_batches, iter_served_batches
from .compression import Compressed
from .httpcore import USER_AGENT, HttpCore, Target, is_transient_status, parse_url, snippet
from .shape import flat_record, get_shape

log = logging.getLogger(__name__)

# Defaults (one place, with the reason for each).
# 4 MiB of uncompressed JSON stays under the usual 5-10 MiB request limits of ingest endpoints.
DEFAULT_BATCH_MAX_BYTES = 4 * 1024 * 1024
# Bounds per-request work at the receiver even for tiny records.
DEFAULT_BATCH_MAX_RECORDS = 5000
# Generous for a 4 MiB body over a slow link, yet several attempts fit in the 10-minute function timeout.
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_ATTEMPTS = 5
# Per batch; beyond it the message goes back to the queue, whose redelivery is the longer wait.
DEFAULT_MAX_RETRY_SECONDS = 60.0
# gzip level 1: a third of level 6's CPU for bodies about 30% larger. CPU is what bounds a collector's
# throughput (bench/throughput.py); a receiver's bandwidth rarely does.
GZIP_LEVEL = 1
# Bodies are gzipped on worker threads, 1 MiB blocks in parallel (``compression``), while the sender
# posts the batch before: every core compresses, and at most BATCHES_AHEAD batches wait, so memory
# stays a few batches whatever the blob's size.
COMPRESS_THREADS = min(4, os.cpu_count() or 1)
BATCHES_AHEAD = 2

_TOKEN_CHARS = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 header field names
_VISIBLE_ASCII = re.compile(r"^[\x21-\x7e]+$")  # a bearer token: no spaces, line breaks or non-ASCII
# Header values: printable ASCII, spaces and tabs (RFC 9110 field-value without obs-text). http.client
# encodes values as Latin-1 and fails only when a request is built, so a '€' would fail every send;
# all non-ASCII is refused at start-up instead, since receivers read bytes above 0x7f in different ways.
_HEADER_VALUE_CHARS = frozenset(map(chr, range(0x20, 0x7F))) | {"\t"}
# Headers the sink sets itself; letting SINK_HTTP_HEADERS change them would break the wire format or routing.
_RESERVED_HEADERS = frozenset({"content-type", "content-encoding", "content-length", "transfer-encoding", "host"})


@dataclass(frozen=True, slots=True)
class HttpSinkSettings:
    """``SINK_URL`` and the ``SINK_HTTP_*`` settings."""

    name: ClassVar[str] = "http"

    url: str
    format: str = "ndjson"
    gzip: bool = True
    # Extra header values may be API keys: kept out of repr, like the token.
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    bearer_token: Secret | None = None
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    batch_max_records: int = DEFAULT_BATCH_MAX_RECORDS
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_retry_seconds: float = DEFAULT_MAX_RETRY_SECONDS
    shape: str = "raw"
    """``raw``: each record as served; ``flat``: ``shape.flat_record`` (``o365.audit.*`` and ``@timestamp``)."""

    @classmethod
    def from_env(cls, env: Environ) -> HttpSinkSettings:
        bearer = get_secret(env, "SINK_HTTP_BEARER_TOKEN")
        if bearer is not None and not _VISIBLE_ASCII.match(bearer.reveal()):
            raise ConfigError("SINK_HTTP_BEARER_TOKEN", "must be a single token without spaces or line breaks")
        headers = _parse_headers(env, "SINK_HTTP_HEADERS")
        if bearer is not None and any(name.lower() == "authorization" for name, _ in headers):
            raise ConfigError(
                "SINK_HTTP_HEADERS", "sets Authorization while SINK_HTTP_BEARER_TOKEN is set too: keep one of them"
            )
        return cls(
            url=parse_url(env, "SINK_URL", "the receiver's address, e.g. https://siem.example.com/ingest"),
            format=get_choice(env, "SINK_HTTP_FORMAT", "ndjson", tuple(FRAMINGS)),
            gzip=get_bool(env, "SINK_HTTP_GZIP", True),
            headers=headers,
            bearer_token=bearer,
            batch_max_bytes=get_int(
                env, "SINK_HTTP_BATCH_MAX_BYTES", DEFAULT_BATCH_MAX_BYTES, minimum=1024, maximum=256 * 1024 * 1024
            ),
            batch_max_records=get_int(
                env, "SINK_HTTP_BATCH_MAX_RECORDS", DEFAULT_BATCH_MAX_RECORDS, minimum=1, maximum=1_000_000
            ),
            timeout_seconds=get_float(
                env, "SINK_HTTP_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS, minimum=1.0, maximum=600.0
            ),
            max_attempts=get_int(env, "SINK_HTTP_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, minimum=1, maximum=20),
            max_retry_seconds=get_float(env, "SINK_HTTP_MAX_RETRY_SECONDS", DEFAULT_MAX_RETRY_SECONDS, maximum=3600.0),
            shape=get_shape(env, "SINK_HTTP_SHAPE"),
        )

    def create(self) -> HttpSink:
        return HttpSink(self)


def _parse_headers(env: Environ, name: str) -> tuple[tuple[str, str], ...]:
    text = get_str(env, name)
    if text is None:
        return ()
    example = 'e.g. {"X-Api-Key": "..."}'
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        # The message says where, never what: the text may hold secrets.
        raise ConfigError(
            name, f"is not valid JSON ({err.msg} at char {err.pos}); expected an object, {example}"
        ) from err
    if not isinstance(value, dict):
        raise ConfigError(name, f"must be a JSON object of header names to string values, {example}")
    headers: list[tuple[str, str]] = []
    for key, item in value.items():
        if not _TOKEN_CHARS.match(key):
            raise ConfigError(name, f"{key!r} is not a valid header name")
        if key.lower() in _RESERVED_HEADERS or key.lower().startswith("x-o365-"):
            raise ConfigError(name, f"{key!r} is set by the sink itself and cannot be overridden")
        if not isinstance(item, str) or any(c in item for c in "\r\n\0") or item != item.strip():
            raise ConfigError(name, f"the value of {key!r} must be a one-line string without surrounding spaces")
        bad = next((i for i, c in enumerate(item) if c not in _HEADER_VALUE_CHARS), None)
        if bad is not None:
            # Says where, never what: the value may be a key.
            raise ConfigError(
                name,
                f"the value of {key!r} has a character that cannot be sent in an HTTP header at position {bad + 1} "
                "(only printable ASCII, spaces and tabs)",
            )
        register_secret(item)  # header values are often keys (X-Api-Key): kept out of every message
        headers.append((key, item))
    return tuple(headers)


class HttpSink:
    """Sends each blob's records as one or more POSTs to ``SINK_URL``; see the module docstring."""

    name = "http"

    def __init__(
        self,
        settings: HttpSinkSettings,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._framing = FRAMINGS[settings.format]
        self._core = HttpCore(
            Target(
                url=settings.url,
                url_setting="SINK_URL",
                timeout_seconds=settings.timeout_seconds,
                timeout_setting="SINK_HTTP_TIMEOUT_SECONDS",
            ),
            policy=RetryPolicy(max_attempts=settings.max_attempts, max_seconds=settings.max_retry_seconds),
            session=session,
            sleep=sleep,
            clock=clock,
        )
        self._endpoint = self._core.endpoint
        self._compressor: TiedThreadPool | None = None
        self._compressor_lock = threading.Lock()  # sends run on several threads: one pool, never two

    def check(self) -> None:
        """Probe ``SINK_URL`` with HEAD (with the auth headers); it ships nothing.

        HEAD, because it has no body and no side effect, and most frameworks authenticate it like a
        POST. An empty POST could be stored as a delivery, and OPTIONS is often answered by CORS
        middleware before authentication. Any answer proves DNS, TCP and TLS; 401/403 fail the
        check, 408/429/5xx report the receiver unhealthy, and other answers (a POST-only endpoint
        saying 404 or 405) pass, since they prove the receiver is reachable and took our credentials.
        A receiver that rejects HEAD before authenticating cannot show a bad token here; the first
        send() will.
        """
        headers = self._base_headers()
        response = self._request("HEAD", headers, None)
        with response:
            error = self._classify(response, probe=True)
        if error is not None:
            raise error
        log.debug("http sink: %s answered HEAD with %d", self._endpoint, response.status_code)

    def send(self, records: Sequence[Record], context: BlobContext) -> None:
        """POST the records batch by batch; no records, no request."""
        extra = {
            "tenant_id": context.tenant_id,
            "content_type": context.content_type,
            "content_id": context.content_id,
        }
        headers = self._base_headers()
        headers.update(
            {
                "Content-Type": self._framing.content_type,
                "X-O365-Tenant-Id": context.tenant_id,
                "X-O365-Content-Type": context.content_type,
                "X-O365-Content-Id": context.content_id,
            }
        )
        if self._settings.gzip:
            headers["Content-Encoding"] = "gzip"
        limits = self._settings.batch_max_bytes, self._settings.batch_max_records
        batches: int | None = None
        flat = self._settings.shape == "flat"
        if not flat and isinstance(records, ContentRecords) and records.draft:
            # Records from the fetcher still hold the bytes the API served: batches are cut from them and
            # compressed while the fetcher's validation finishes; none is posted before it passed.
            served = iter_served_batches(records, framing=self._framing, max_bytes=limits[0], max_records=limits[1])
            batches = self._ship(served, headers, extra, context, ready=records.settle)
        if batches is None:  # other records, or valid JSON of another shape than the split assumed: nothing sent
            # The flat shape needs each record parsed (big integers exact, ``content.loads``) and re-written.
            items: Sequence[Record] | Iterator[Record] = (flat_record(r) for r in records) if flat else records
            plain = iter_batches(items, framing=self._framing, max_bytes=limits[0], max_records=limits[1])
            batches = self._ship(plain, headers, extra, context)
        log.debug(
            "http sink: %d records of content %s accepted in %d batches",
            len(records),
            context.content_id,
            batches,
            extra=extra,
        )

    def close(self) -> None:
        with self._compressor_lock:
            compressor, self._compressor = self._compressor, None
        if compressor is not None:
            compressor.shutdown(wait=True, cancel_futures=True)
        self._core.close()

    def _ship(
        self,
        batches: Iterator[Batch],
        headers: dict[str, str],
        extra: dict[str, Any],
        context: BlobContext,
        *,
        ready: Callable[[], bool] | None = None,
    ) -> int | None:
        """POST ``batches`` in order, one at a time, the next ones compressing meanwhile; the count sent.

        ``ready`` is asked once, before the first POST: False means these batches are void (None is
        returned, nothing was sent); it may raise instead.
        """
        sent = 0
        waiting: deque[tuple[Batch, Compressed | None]] = deque()
        try:
            for batch in batches:
                if batch.oversize:
                    log.warning(
                        "http sink: record %d of content %s encodes to %d bytes, above SINK_HTTP_BATCH_MAX_BYTES "
                        "(%d); sending it alone",
                        batch.first,
                        context.content_id,
                        len(batch.body),
                        self._settings.batch_max_bytes,
                        extra=extra,
                    )
                waiting.append((batch, self._encode(batch)))
                if len(waiting) >= BATCHES_AHEAD:
                    if sent == 0 and ready is not None and not ready():
                        return None
                    self._send_batch(*waiting.popleft(), {**headers, "X-O365-Batch-Index": str(sent)}, extra)
                    sent += 1
            while waiting:
                if sent == 0 and ready is not None and not ready():
                    return None
                self._send_batch(*waiting.popleft(), {**headers, "X-O365-Batch-Index": str(sent)}, extra)
                sent += 1
        finally:
            for _, pending in waiting:
                if pending is not None:
                    pending.cancel()
        return sent

    def _encode(self, batch: Batch) -> Compressed | None:
        """Start gzipping ``batch``'s body on the worker threads (None when SINK_HTTP_GZIP is off)."""
        if not self._settings.gzip:
            return None
        with self._compressor_lock:
            if self._compressor is None:
                # Tied per task: the sink outlives invocations, and its threads serve one after another.
                self._compressor = TiedThreadPool(COMPRESS_THREADS, thread_name_prefix="http-sink-gzip")
            compressor = self._compressor
        return compression.compress(batch.body, GZIP_LEVEL, compressor)

    def _base_headers(self) -> dict[str, str]:
        headers = dict(self._settings.headers)
        headers["User-Agent"] = USER_AGENT
        if self._settings.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self._settings.bearer_token.reveal()}"
        return headers

    def _send_batch(
        self, batch: Batch, encoding: Compressed | None, headers: dict[str, str], extra: dict[str, Any]
    ) -> None:
        body = encoding.result() if encoding is not None else batch.body
        _, failures = self._core.with_retries(lambda: self._post(body, headers))
        if failures:
            log.warning(
                "http sink: batch of %d records accepted after %d retries (last failure: %s)",
                batch.count,
                len(failures),
                failures[-1],
                extra=extra,
            )

    def _post(self, body: bytes, headers: dict[str, str]) -> None:
        response = self._request("POST", headers, body)
        with response:
            error = self._classify(response, probe=False)
        if error is not None:
            raise error

    def _request(self, method: str, headers: dict[str, str], body: bytes | None) -> requests.Response:
        return self._core.request(method, self._settings.url, headers=headers, body=body)

    def _classify(self, response: requests.Response, *, probe: bool) -> CollectorError | None:
        status = response.status_code
        where = self._core.where(response)
        if 200 <= status < 300:
            return None
        if is_transient_status(status):
            return self._core.transient(response, snippet(response))
        if status in (401, 403):
            return SinkPermanentError(
                f"{where}: the receiver refused our credentials (check SINK_HTTP_BEARER_TOKEN / SINK_HTTP_HEADERS)"
            )
        if 300 <= status < 400:
            return self._core.redirect_error(response)
        if probe:
            return None
        if status == 413:
            return SinkPermanentError(
                f"{where}: the batch is too large for the receiver (lower SINK_HTTP_BATCH_MAX_BYTES or raise its limit)"
            )
        return SinkPermanentError(f"{where}: the receiver refused the batch{snippet(response)}")
