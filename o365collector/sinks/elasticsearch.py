"""The Elasticsearch / OpenSearch sink: records become documents through the ``_bulk`` API.

Wire format (``POST {SINK_ELASTICSEARCH_URL}/_bulk[?pipeline=...]``, ``Content-Type: application/x-ndjson``):
two lines per record, ``{"create":{"_index":"<index>","_id":"<tenant>:<record Id>"}}`` then the record
exactly as the API served it, every line ending in a newline. ``create`` (not ``index``) because data
streams accept only ``create``, and because it never overwrites: a document already stored under that
``_id`` answers 409, which counts as delivered. The ``_id`` is the idempotency key, so a redelivered blob
adds no duplicates.

Why the tenant is in the ``_id``: a 409 means "some document has this ``_id``", not "this record is
stored". Keyed by ``Id`` alone, a document of another tenant with the same ``Id`` (one collector serves
many tenants) would make a record count as delivered without ever being stored. Scoped by the tenant
of the blob (``BlobContext.tenant_id``, from our own settings, not from the record), a 409 can only be
this tenant's record with this ``Id``: the one sent before. Scoping costs nothing per record, where
comparing the stored document on every 409 would cost a read, and would fail once an ingest pipeline
has reshaped the stored document. ``<tenant>:<Id>`` rather than a hash keeps ``_id`` readable.

A record without a usable ``Id`` (missing, not a string or number, or an ``_id`` longer than the 512
bytes Elasticsearch allows) is sent without ``_id``: Elasticsearch assigns one, and a redelivery would
store it again.

Document shapes (``SINK_ELASTICSEARCH_SHAPE``): ``raw`` sends the record itself as the document, as
above. ``integration`` shapes it for Elastic's o365 integration (data stream
``logs-o365.audit-<namespace>``), whose default ingest pipeline maps the ECS fields its dashboards and
Elastic's detection rules read: ``{"o365audit":<record as served>,"data_stream":{...},"event":{...}}``,
plus ``event.original`` (the record's text) and the ``preserve_original_event`` tag when
SINK_ELASTICSEARCH_PRESERVE_ORIGINAL is on. ``auto`` (the default) is ``integration`` exactly when the
index is such a data stream and no ``SINK_ELASTICSEARCH_PIPELINE`` is named: ``?pipeline=`` would
replace the data stream's default pipeline, so the integration shape never sends one.

Records of the Microsoft Graph streams (sign-ins, directory audits, message trace) go to data streams of
their own, whatever the settings above say (they name the audit feed's index): see ``elastic_graph``.

The integration shape sends no ``_id``: the integration's pipeline sets ``_id`` to a fingerprint of
``o365audit.Id`` whatever the request says, so that fingerprint is the idempotency key, and a
redelivered record answers 409 as above. It is not scoped by tenant: two tenants' records with the
same ``Id`` would share it (``Id`` values are GUIDs minted by the service, so in practice they do not).

Authentication: ``Authorization: ApiKey <SINK_ELASTICSEARCH_API_KEY>`` (the ``encoded`` value of an API
key; an ``id:api_key`` pair is encoded here), or HTTP basic with SINK_ELASTICSEARCH_USERNAME/PASSWORD,
or none.

How answers are classified:

===========================================  ===================================================
request 2xx, ``errors: false``               every document accepted (fast path)
item 2xx, item 409 (already exists)          accepted
item 429, item 5xx                           only those documents are sent again, with the
                                             retry policy; still refused: ``SinkTransientError``
item 4xx (mapper_parsing_exception, ...)     ``SinkPermanentError`` naming the index, the error
                                             type and reason (never the document)
request 401                                  ``SinkPermanentError``: check the credentials
request 403                                  ``SinkPermanentError``: the credentials lack privileges
request 408, 429, 5xx                        ``SinkTransientError`` (Retry-After honoured)
request 413                                  ``SinkPermanentError``: lower SINK_ELASTICSEARCH_BATCH_MAX_BYTES
other 4xx, 3xx                               ``SinkPermanentError``
===========================================  ===================================================

Elasticsearch error reasons may quote a field's value ("Preview of field's value: ..."); that part is
cut before a reason reaches a message or log. Credentials never appear in logs, messages or ``repr``.
Transport failures, TLS and retries are ``httpcore``'s.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote

import orjson
import requests

from ..content import ContentRecords
from ..envparse import Environ, Secret, get_bool, get_choice, get_float, get_int, get_secret, get_str
from ..errors import CollectorError, ConfigError, SinkPermanentError, SinkTransientError
from ..models import BlobContext, Record
from ..redaction import register_secret
from ..retry import RetryPolicy
from . import elastic_graph
from .batching import NDJSON, Batch, iter_batches, serialize
from .httpcore import EXCERPT_CHARS, USER_AGENT, HttpCore, Target, excerpt, is_transient_status, parse_base_url, snippet
from .streams import is_graph_stream

log = logging.getLogger(__name__)

# Defaults (one place, with the reason for each).
# Elastic's tuning guide puts efficient bulk requests at a few MB; far below http.max_content_length (100 MB).
DEFAULT_BATCH_MAX_BYTES = 5 * 1024 * 1024
# Bounds per-request work (and the response, one item per document) even for small records.
DEFAULT_BATCH_MAX_RECORDS = 2000
# A 5 MB bulk through an ingest pipeline can take a while on a busy cluster.
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_MAX_ATTEMPTS = 5
# Per batch; beyond it the message goes back to the queue, whose redelivery is the longer wait.
DEFAULT_MAX_RETRY_SECONDS = 60.0

MAX_ID_BYTES = 512  # Elasticsearch and OpenSearch refuse longer _id values
ITEM_ERRORS_SHOWN = 3
# Per refused item shown: together a few hundred characters, whatever the cluster answered.
ITEM_REASON_CHARS = 120
ITEM_WORD_CHARS = 80  # an error type, an _id

_VISIBLE_ASCII = re.compile(r"^[\x21-\x7e]+$")
# Index and data stream names: lower case, none of \ / * ? " < > | , # : or space, not starting with - _ +.
_INDEX_NAME = re.compile(r'^[^-_+A-Z\\/*?"<>|,# :][^A-Z\\/*?"<>|,# :]*$')
_PIPELINE_NAME = re.compile(r"^[^\s]+$")
# The data stream of Elastic's o365 integration: logs-o365.audit-<namespace>.
_INTEGRATION_STREAM = re.compile(r"^logs-o365\.audit-(?P<namespace>.+)$")
INTEGRATION_DATASET = "o365.audit"
PRESERVE_ORIGINAL_TAG = "preserve_original_event"  # the integration's pipeline keeps event.original only with it
SHAPES = ("auto", "raw", "integration")


@dataclass(frozen=True, slots=True)
class ElasticsearchSinkSettings:
    """``SINK_ELASTICSEARCH_*``."""

    name: ClassVar[str] = "elasticsearch"

    url: str
    """Base address (scheme://host:port[/prefix]); the sink appends /_bulk."""
    index: str
    api_key: Secret | None = field(default=None, repr=False)
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)
    pipeline: str | None = None
    shape: str = "raw"
    """``raw`` (the record as the document) or ``integration`` (shaped for Elastic's o365 integration);
    ``auto`` is resolved when the settings are parsed."""
    preserve_original: bool = False
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    batch_max_records: int = DEFAULT_BATCH_MAX_RECORDS
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_retry_seconds: float = DEFAULT_MAX_RETRY_SECONDS

    @classmethod
    def from_env(cls, env: Environ) -> ElasticsearchSinkSettings:
        url = parse_base_url(env, "SINK_ELASTICSEARCH_URL", "the cluster's address, e.g. https://es.example.com:9200")
        index = get_str(env, "SINK_ELASTICSEARCH_INDEX")
        if index is None:
            raise ConfigError("SINK_ELASTICSEARCH_INDEX", "is required but not set (an index or data stream name)")
        if not _INDEX_NAME.match(index) or index in {".", ".."} or len(index.encode()) > 255:
            raise ConfigError(
                "SINK_ELASTICSEARCH_INDEX",
                f"{index!r} is not a valid index or data stream name (lower case, none of "
                '\\ / * ? " < > | , # : or spaces, not starting with -, _ or +)',
            )
        api_key = get_secret(env, "SINK_ELASTICSEARCH_API_KEY")
        username = get_str(env, "SINK_ELASTICSEARCH_USERNAME")
        password = get_secret(env, "SINK_ELASTICSEARCH_PASSWORD")
        if api_key is not None:
            if username is not None or password is not None:
                raise ConfigError(
                    "SINK_ELASTICSEARCH_API_KEY",
                    "is set together with SINK_ELASTICSEARCH_USERNAME/PASSWORD: keep one way to authenticate",
                )
            api_key = _encoded_api_key(api_key)
        if (username is None) != (password is None):
            missing = "SINK_ELASTICSEARCH_PASSWORD" if password is None else "SINK_ELASTICSEARCH_USERNAME"
            raise ConfigError(missing, "is required when the other basic-auth setting is set")
        if username is not None and ":" in username:
            raise ConfigError("SINK_ELASTICSEARCH_USERNAME", "must not contain ':' (HTTP basic authentication)")
        pipeline = get_str(env, "SINK_ELASTICSEARCH_PIPELINE")
        if pipeline is not None and not _PIPELINE_NAME.match(pipeline):
            raise ConfigError("SINK_ELASTICSEARCH_PIPELINE", "must be an ingest pipeline id without spaces")
        shape = _document_shape(env, index, pipeline)
        return cls(
            url=url,
            index=index,
            api_key=api_key,
            username=username,
            password=password,
            pipeline=pipeline,
            shape=shape,
            preserve_original=get_bool(env, "SINK_ELASTICSEARCH_PRESERVE_ORIGINAL", False),
            batch_max_bytes=get_int(
                env,
                "SINK_ELASTICSEARCH_BATCH_MAX_BYTES",
                DEFAULT_BATCH_MAX_BYTES,
                minimum=1024,
                maximum=100 * 1024 * 1024,
            ),
            batch_max_records=get_int(
                env, "SINK_ELASTICSEARCH_BATCH_MAX_RECORDS", DEFAULT_BATCH_MAX_RECORDS, minimum=1, maximum=100_000
            ),
            timeout_seconds=get_float(
                env, "SINK_ELASTICSEARCH_TIMEOUT_SECONDS", DEFAULT_TIMEOUT_SECONDS, minimum=1.0, maximum=600.0
            ),
            max_attempts=get_int(env, "SINK_ELASTICSEARCH_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, minimum=1, maximum=20),
            max_retry_seconds=get_float(
                env, "SINK_ELASTICSEARCH_MAX_RETRY_SECONDS", DEFAULT_MAX_RETRY_SECONDS, maximum=3600.0
            ),
        )

    def create(self) -> ElasticsearchSink:
        return ElasticsearchSink(self)

    @property
    def credential_settings(self) -> str:
        """The settings to check when the cluster refuses our credentials."""
        if self.api_key is not None:
            return "SINK_ELASTICSEARCH_API_KEY"
        if self.username is not None:
            return "SINK_ELASTICSEARCH_USERNAME / SINK_ELASTICSEARCH_PASSWORD"
        return "SINK_ELASTICSEARCH_API_KEY or SINK_ELASTICSEARCH_USERNAME / SINK_ELASTICSEARCH_PASSWORD (none is set)"


def _document_shape(env: Environ, index: str, pipeline: str | None) -> str:
    """``SINK_ELASTICSEARCH_SHAPE`` resolved: ``auto`` is ``integration`` for the integration's data stream.

    ``auto`` keeps the raw shape when a pipeline is named: documents then go through that pipeline (our
    earlier advice for data streams), which was written for the raw record, not for ``o365audit``.
    """
    shape = get_choice(env, "SINK_ELASTICSEARCH_SHAPE", "auto", SHAPES)
    stream = _INTEGRATION_STREAM.match(index)
    if shape == "auto":
        return "integration" if stream is not None and pipeline is None else "raw"
    if shape == "integration":
        if stream is None:
            raise ConfigError(
                "SINK_ELASTICSEARCH_SHAPE",
                f"'integration' needs SINK_ELASTICSEARCH_INDEX to be the o365 integration's data stream "
                f"logs-o365.audit-<namespace> (got {index!r})",
            )
        if pipeline is not None:
            raise ConfigError(
                "SINK_ELASTICSEARCH_SHAPE",
                "'integration' cannot be used with SINK_ELASTICSEARCH_PIPELINE: ?pipeline= would replace the "
                "integration's own pipeline (unset SINK_ELASTICSEARCH_PIPELINE)",
            )
    return shape


def _encoded_api_key(key: Secret) -> Secret:
    """The value for ``Authorization: ApiKey``: Elasticsearch's ``encoded`` form, base64 of ``id:api_key``.

    Base64 has no ':', so a value holding one is the raw ``id:api_key`` pair and is encoded here.
    """
    text = key.reveal()
    if not _VISIBLE_ASCII.match(text):
        raise ConfigError(
            "SINK_ELASTICSEARCH_API_KEY", "must be the key alone (the 'encoded' value), without spaces or 'ApiKey '"
        )
    if ":" in text:
        register_secret(text.partition(":")[2])  # the key proper: an echo may quote it without its id
        return Secret(base64.b64encode(text.encode()).decode("ascii"))
    try:  # the encoded form given: its decoded pair and key are the same secret in other words
        pair = base64.b64decode(text, validate=True).decode("utf-8")
    except ValueError:
        return key
    register_secret(pair)
    register_secret(pair.partition(":")[2])
    return key


def document_id(record: Record, tenant_id: str) -> str | None:
    """The ``_id`` for a record of ``tenant_id``: ``<tenant>:<Id>`` (``Id`` a string, or an integer as
    text), or None to let the cluster pick. See the module docstring for why the tenant is part of it."""
    value = record.get("Id")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    text = f"{tenant_id}:{value}"
    if len(text.encode()) > MAX_ID_BYTES:
        return None
    return text


def integration_document(record_json: bytes, namespace: str, *, preserve_original: bool) -> bytes:
    """The document Elastic's o365 integration expects, around one record's JSON (an object).

    The record goes under ``o365audit`` byte for byte (its pipeline maps ECS fields from there, then
    renames it ``o365.audit``); ``data_stream.*`` and ``event.dataset`` carry the values the data
    stream's ``constant_keyword`` fields hold, as Elastic Agent sends them. With ``preserve_original``
    the record's text also goes to ``event.original`` with the tag that makes the pipeline keep it.
    """
    event: dict[str, str] = {"module": "o365", "dataset": INTEGRATION_DATASET}
    if preserve_original:
        event["original"] = record_json.decode("utf-8")
    stream = {"type": "logs", "dataset": INTEGRATION_DATASET, "namespace": namespace}
    parts = [b'{"o365audit":', record_json, b',"data_stream":', orjson.dumps(stream), b',"event":', orjson.dumps(event)]
    if preserve_original:
        parts.append(b',"tags":' + orjson.dumps([PRESERVE_ORIGINAL_TAG]))
    parts.append(b"}")
    return b"".join(parts)


def record_json(records: Sequence[Record], index: int) -> bytes:
    """Record ``index`` as JSON: the bytes the API served when still held, else serialized."""
    if isinstance(records, ContentRecords) and records.raw:
        return records.served_joined(index, index + 1, b",")  # one record: a plain slice of the body
    return serialize(records[index])


def clean_reason(reason: object, limit: int = EXCERPT_CHARS, response: requests.Response | None = None) -> str:
    """An Elasticsearch error reason fit for a message: an ``excerpt``, without quoted field values.

    Mapping errors end in ``. Preview of field's value: '...'`` and JSON parse errors quote the source
    after ``[Source: ``; both would put record content in logs, so they are cut.
    """
    text = " ".join(str(reason).split())
    for marker in (". Preview of field's value", " at [Source:", "[Source:"):
        cut = text.find(marker)
        if cut != -1:
            text = text[:cut]
    return excerpt(text, response, limit)


class ElasticsearchSink:
    """Indexes each blob's records with ``_bulk`` ``create``; see the module docstring."""

    name = "elasticsearch"

    def __init__(
        self,
        settings: ElasticsearchSinkSettings,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._core = HttpCore(
            Target(
                url=settings.url,
                url_setting="SINK_ELASTICSEARCH_URL",
                timeout_seconds=settings.timeout_seconds,
                timeout_setting="SINK_ELASTICSEARCH_TIMEOUT_SECONDS",
                backend="Elasticsearch",
            ),
            policy=RetryPolicy(max_attempts=settings.max_attempts, max_seconds=settings.max_retry_seconds),
            session=session,
            sleep=sleep,
            clock=clock,
        )
        self._params = {"pipeline": settings.pipeline} if settings.pipeline else None
        stream = _INTEGRATION_STREAM.match(settings.index)
        # Only the integration shape uses it; from_env guarantees the index matches for that shape.
        self._namespace = stream.group("namespace") if stream is not None else None
        self._integration = settings.shape == "integration"
        self._graph_namespace = elastic_graph.namespace_of(settings.index)

    def check(self) -> None:
        """Probe the cluster with our credentials: ``GET /``, then ``HEAD /<index>``; nothing is written.

        401 fails the check (the credentials are wrong). 403 on either request passes: an ingest-only
        key may lack the ``monitor`` or ``view_index_metadata`` privilege these need, yet write fine; the
        first send() reports a missing write privilege. A missing index passes too: the first write
        creates it when the cluster allows automatic index creation (a data stream also needs a
        matching index template); otherwise the first send() says the index does not exist.
        """
        headers = self._headers()
        response = self._core.request("GET", self._settings.url + "/", headers=headers)
        with response:
            error = self._probe_error(response, allowed=(200, 403))
            info = _json(response)
        if error is not None:
            raise error
        if response.status_code == 200 and not (isinstance(info, dict) and isinstance(info.get("version"), dict)):
            raise SinkPermanentError(
                f"{self._core.where(response)} but not with cluster information "
                "(is SINK_ELASTICSEARCH_URL an Elasticsearch or OpenSearch address?)"
            )
        index_url = f"{self._settings.url}/{quote(self._settings.index, safe='')}"
        response = self._core.request("HEAD", index_url, headers=headers)
        with response:
            error = self._probe_error(response, allowed=(200, 403, 404))
        if error is not None:
            raise error
        if response.status_code == 404:
            log.info(
                "elasticsearch sink: index %r does not exist yet; the first write creates it if the cluster "
                "allows automatic index creation (a data stream needs a matching index template)",
                self._settings.index,
            )
        log.debug("elasticsearch sink: %s took our credentials", self._core.endpoint)

    def send(self, records: Sequence[Record], context: BlobContext) -> None:
        """Bulk-create the records batch by batch; no records, no request."""
        extra = {
            "tenant_id": context.tenant_id,
            "content_type": context.content_type,
            "content_id": context.content_id,
        }
        batches = 0
        for batch in iter_batches(
            range(len(records)),
            framing=NDJSON,
            max_bytes=self._settings.batch_max_bytes,
            max_records=self._settings.batch_max_records,
            serialize=lambda index: self._operation(records, index, context.tenant_id, context.content_type),
        ):
            if batch.oversize:
                log.warning(
                    "elasticsearch sink: record %d of content %s encodes to %d bytes, above "
                    "SINK_ELASTICSEARCH_BATCH_MAX_BYTES (%d); sending it alone",
                    batch.first,
                    context.content_id,
                    len(batch.body),
                    self._settings.batch_max_bytes,
                    extra=extra,
                )
            self._send_batch(records, batch, context.tenant_id, extra, context.content_type)
            batches += 1
        log.debug(
            "elasticsearch sink: %d records of content %s accepted in %d batches",
            len(records),
            context.content_id,
            batches,
            extra=extra,
        )

    def close(self) -> None:
        self._core.close()

    # -- wire format

    def _operation(self, records: Sequence[Record], index: int, tenant_id: str, stream: str = "") -> bytes:
        """The action line and the document line of record ``index`` (NDJSON adds the final newline)."""
        if is_graph_stream(stream):
            return self._graph_operation(records, index, tenant_id, stream)
        meta: dict[str, str] = {"_index": self._settings.index}
        if self._integration and self._namespace is not None:
            # No _id: the integration's pipeline sets _id to a fingerprint of the record's Id whatever
            # we send, so that fingerprint is the idempotency key (see the module docstring).
            document = integration_document(
                record_json(records, index), self._namespace, preserve_original=self._settings.preserve_original
            )
            return orjson.dumps({"create": meta}) + b"\n" + document
        record = records[index]
        doc_id = document_id(record, tenant_id)
        if doc_id is not None:
            meta["_id"] = doc_id
        return orjson.dumps({"create": meta}) + b"\n" + serialize(record)

    def _graph_operation(self, records: Sequence[Record], index: int, tenant_id: str, stream: str) -> bytes:
        record = records[index]
        meta = {"_index": elastic_graph.data_stream(stream, self._graph_namespace)}
        doc_id = elastic_graph.document_id(record, stream, tenant_id)
        if doc_id is not None:
            meta["_id"] = doc_id
        document = elastic_graph.graph_document(
            record,
            record_json(records, index),
            stream,
            self._graph_namespace,
            preserve_original=self._settings.preserve_original,
        )
        return orjson.dumps({"create": meta}) + b"\n" + document

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT}
        settings = self._settings
        if settings.api_key is not None:
            headers["Authorization"] = f"ApiKey {settings.api_key.reveal()}"
        elif settings.username is not None and settings.password is not None:
            pair = f"{settings.username}:{settings.password.reveal()}"
            encoded = base64.b64encode(pair.encode()).decode("ascii")
            # The password in its wire form: a peer echoing our headers shows this, not the password.
            register_secret(pair)
            register_secret(encoded)
            headers["Authorization"] = f"Basic {encoded}"
        return headers

    # -- sending

    def _send_batch(
        self, records: Sequence[Record], batch: Batch, tenant_id: str, extra: dict[str, Any], stream: str = ""
    ) -> None:
        """Send one batch; documents throttled per item are sent again on their own until accepted."""
        pending = list(range(batch.first, batch.stop))
        body = batch.body
        # SINK_ELASTICSEARCH_PIPELINE is for audit records; Graph data streams run their own default pipeline.
        params = None if is_graph_stream(stream) else self._params

        def attempt() -> None:
            nonlocal pending, body
            remaining = self._post_bulk(body, pending, params, stream)
            if remaining:
                pending = remaining
                body = NDJSON.encode([self._operation(records, i, tenant_id, stream) for i in remaining])
                raise SinkTransientError(
                    f"{self._core.endpoint} asked to retry {len(remaining)} of {batch.count} documents "
                    "(429 or 5xx per item: the cluster is busy)"
                )

        _, failures = self._core.with_retries(attempt)
        if failures:
            log.warning(
                "elasticsearch sink: batch of %d records accepted after %d retries (last failure: %s)",
                batch.count,
                len(failures),
                failures[-1],
                extra=extra,
            )

    def _post_bulk(
        self, body: bytes, sent: list[int], params: dict[str, str] | None = None, stream: str = ""
    ) -> list[int]:
        """POST one ``_bulk`` body holding the records at ``sent`` (of ``stream``); returns those to send again."""
        headers = self._headers()
        headers["Content-Type"] = NDJSON.content_type
        response = self._core.request(
            "POST", self._settings.url + "/_bulk", headers=headers, body=body, params=params
        )
        with response:
            if not 200 <= response.status_code < 300:
                raise self._request_error(response)
            reply = _json(response)
            where = self._core.where(response)
        if not isinstance(reply, dict) or not isinstance(reply.get("errors"), bool):
            raise SinkPermanentError(
                f"{where} but not with a _bulk response (is SINK_ELASTICSEARCH_URL the cluster's address?)"
            )
        if reply["errors"] is False:
            return []
        items = reply.get("items")
        if not isinstance(items, list) or len(items) != len(sent):
            raise SinkPermanentError(
                f"{where} with {len(items) if isinstance(items, list) else 'no'} _bulk items for {len(sent)} "
                "documents (is SINK_ELASTICSEARCH_URL the cluster's address?)"
            )
        retry: list[int] = []
        refused: list[tuple[str | None, str, str, int]] = []
        for position, item in zip(sent, items, strict=True):
            result = next(iter(item.values()), None) if isinstance(item, dict) and item else None
            status = result.get("status") if isinstance(result, dict) else None
            if not isinstance(result, dict) or not isinstance(status, int) or isinstance(status, bool):
                raise SinkPermanentError(f"{where} with a _bulk item without a status")
            # 409: this record was stored before (create never overwrites): under our tenant-scoped _id, or
            # under the integration pipeline's fingerprint of its Id.
            if 200 <= status < 300 or status == 409:
                continue
            if is_transient_status(status):
                retry.append(position)
                continue
            # Every word from the item is the cluster's: each is cut short (see ITEM_REASON_CHARS).
            error = result.get("error")
            kind = error.get("type", "error") if isinstance(error, dict) else "error"
            reason = error.get("reason", "") if isinstance(error, dict) else error
            doc_id = result.get("_id")
            refused.append(
                (
                    excerpt(doc_id, response, ITEM_WORD_CHARS) if isinstance(doc_id, str) else None,
                    excerpt(kind, response, ITEM_WORD_CHARS),
                    clean_reason(reason, ITEM_REASON_CHARS, response),
                    status,
                )
            )
        if refused:
            raise self._refused_error(refused, len(sent), stream)
        return retry

    # -- classification

    def _refused_error(
        self, refused: list[tuple[str | None, str, str, int]], sent: int, stream: str = ""
    ) -> SinkPermanentError:
        index, named_by = self._settings.index, "SINK_ELASTICSEARCH_INDEX"
        if is_graph_stream(stream):  # its own data stream, in the namespace SINK_ELASTICSEARCH_INDEX gives
            index = elastic_graph.data_stream(stream, self._graph_namespace)
            named_by = f"the {stream} data stream, in the namespace of SINK_ELASTICSEARCH_INDEX"
        shown = "; ".join(
            f"{kind} ({status}){f' for _id {doc_id}' if doc_id else ''}: {reason}"
            for doc_id, kind, reason, status in refused[:ITEM_ERRORS_SHOWN]
        )
        more = f"; and {len(refused) - ITEM_ERRORS_SHOWN} more" if len(refused) > ITEM_ERRORS_SHOWN else ""
        hint = ""
        kinds = {kind for _, kind, _, _ in refused}
        if "index_not_found_exception" in kinds:
            hint = " (create the index or data stream, or allow automatic index creation)"
        elif "security_exception" in kinds or any(status == 403 for *_, status in refused):
            hint = f" (grant the create_doc privilege on {index!r} to {self._settings.credential_settings})"
        elif (
            self._integration
            and not is_graph_stream(stream)  # Graph documents carry their own @timestamp
            and any("@timestamp" in reason for *_, reason, _ in refused)
        ):
            hint = (
                " (install the Microsoft 365 integration's assets in Kibana: its ingest pipeline sets "
                "@timestamp; or set SINK_ELASTICSEARCH_SHAPE=raw)"
            )
        return SinkPermanentError(
            f"{self._core.endpoint} refused {len(refused)} of {sent} documents for index {index!r} "
            f"({named_by}): {shown}{more}{hint}"
        )

    def _request_error(self, response: requests.Response) -> CollectorError:
        status = response.status_code
        where = self._core.where(response)
        if is_transient_status(status):
            return self._core.transient(response, _error_summary(response))
        if 300 <= status < 400:
            return self._core.redirect_error(response)
        if status == 401:
            return SinkPermanentError(
                f"{where}: the cluster refused our credentials (check {self._settings.credential_settings})"
            )
        if status == 403:
            return SinkPermanentError(
                f"{where}{_error_summary(response)}: the credentials lack a privilege "
                f"(writing needs create_doc on {self._settings.index!r})"
            )
        if status == 413:
            return SinkPermanentError(
                f"{where}: the batch is too large for the cluster "
                "(lower SINK_ELASTICSEARCH_BATCH_MAX_BYTES or raise http.max_content_length)"
            )
        return SinkPermanentError(f"{where}: the cluster refused the _bulk request{_error_summary(response)}")

    def _probe_error(self, response: requests.Response, *, allowed: tuple[int, ...]) -> CollectorError | None:
        status = response.status_code
        if status in allowed:
            return None
        if status == 401 or is_transient_status(status) or 300 <= status < 400:
            return self._request_error(response)
        return SinkPermanentError(
            f"{self._core.where(response)}{_error_summary(response)}: not the answer of an Elasticsearch or "
            "OpenSearch cluster (check SINK_ELASTICSEARCH_URL)"
        )


def _json(response: requests.Response) -> Any:
    try:
        return orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        return None


def _error_summary(response: requests.Response) -> str:
    """``: type: reason`` of an Elasticsearch error body, else a short snippet of the body."""
    reply = _json(response)
    error = reply.get("error") if isinstance(reply, dict) else None
    if isinstance(error, dict):
        kind = excerpt(error.get("type", "error"), response, ITEM_WORD_CHARS)
        return f": {kind}: {clean_reason(error.get('reason', ''), EXCERPT_CHARS, response)}"
    if isinstance(error, str):
        return f": {clean_reason(error, EXCERPT_CHARS, response)}"
    return snippet(response)
