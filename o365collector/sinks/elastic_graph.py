"""Where and how the Elasticsearch sink writes records of the Microsoft Graph streams.

``SINK_ELASTICSEARCH_INDEX`` (and ``_SHAPE``, ``_PIPELINE``) name what they always named: the audit feed's
index or data stream. Graph records never go there: each Graph stream has its own data stream
``logs-<dataset>-<namespace>`` (``sources.catalog.LABELS``), in the namespace of the audit data stream when
SINK_ELASTICSEARCH_INDEX is one (``logs-o365.audit-prod`` → ``prod``), else ``default``. No ``?pipeline=``:
SINK_ELASTICSEARCH_PIPELINE was written for audit records; a data stream's own default pipeline runs.

Documents (every one has ``@timestamp``, which a data stream requires, and the ``data_stream.*`` and
``event.dataset`` values its ``constant_keyword`` fields hold):

* message trace, to Elastic's ``microsoft_exchange_online_message_trace.log``: the record as JSON text in
  ``message``, as that integration's own Graph (CEL) input hands it to the pipeline, which parses it and maps
  Graph's field names (elastic/integrations, packages/microsoft_exchange_online_message_trace);
* sign-ins and directory audits, to datasets of our own (``o365collector.entra_signins``,
  ``o365collector.entra_directory_audits``): the record as served under ``entra.signin`` or
  ``entra.directory_audit``. Elastic's Azure integration (``azure.signinlogs``/``azure.auditlogs``) expects
  the diagnostic-settings envelope that Event Hub carries and drops documents without its ``category``: a
  Graph record sent there would vanish without an error.

``_id`` is ``<tenant>:<record id>`` (the tenant scopes it, as for audit records), so a redelivered window adds
no duplicates; the message trace pipeline replaces it with its own fingerprint, which is as stable.
"""

from __future__ import annotations

import re

import orjson

from ..models import Record
from ..sources.catalog import DIRECTORY_AUDITS_STREAM, MESSAGE_TRACE_STREAM, SIGNINS_STREAM
from .streams import labels_for, record_id, time_field

DEFAULT_NAMESPACE = "default"
PRESERVE_ORIGINAL_TAG = "preserve_original_event"
MAX_ID_BYTES = 512
# A data stream name: logs-<dataset>-<namespace>, neither part holding '-'.
_DATA_STREAM = re.compile(r"^logs-[^-]+-(?P<namespace>[^-]+)$")
# Where the record goes in the document of each stream that is not read from ``message``.
_RECORD_PATH: dict[str, tuple[str, str]] = {
    SIGNINS_STREAM: ("entra", "signin"),
    DIRECTORY_AUDITS_STREAM: ("entra", "directory_audit"),
}


def namespace_of(index: str) -> str:
    """The namespace Graph data streams share with the audit data stream (``default`` for a plain index)."""
    found = _DATA_STREAM.match(index)
    return found.group("namespace") if found is not None else DEFAULT_NAMESPACE


def data_stream(stream: str, namespace: str) -> str:
    """The data stream records of Graph ``stream`` are written to."""
    return f"logs-{labels_for(stream).elastic_dataset}-{namespace}"


def document_id(record: Record, stream: str, tenant_id: str) -> str | None:
    value = record_id(record, stream)
    if value is None:
        return None
    text = f"{tenant_id}:{value}"
    return text if len(text.encode()) <= MAX_ID_BYTES else None


def graph_document(
    record: Record, record_json: bytes, stream: str, namespace: str, *, preserve_original: bool
) -> bytes:
    """The document for one Graph record (see the module docstring); ``record_json`` is its JSON text."""
    dataset = labels_for(stream).elastic_dataset
    document: dict[str, object] = {}
    when = record.get(time_field(stream))
    if isinstance(when, str) and when:
        document["@timestamp"] = when  # ISO 8601 with Z: Elasticsearch's default date format reads it
    document["data_stream"] = {"type": "logs", "dataset": dataset, "namespace": namespace}
    document["event"] = {"dataset": dataset}
    if stream == MESSAGE_TRACE_STREAM:
        document["message"] = record_json.decode("utf-8")
        if preserve_original:  # the integration's pipeline keeps event.original only with this tag
            document["tags"] = [PRESERVE_ORIGINAL_TAG]
        return orjson.dumps(document)
    outer, inner = _RECORD_PATH.get(stream, ("graph", "record"))
    head = orjson.dumps(document)[:-1]  # splice the record's own bytes in, as the audit shapes do
    return head + b',"' + outer.encode() + b'":{"' + inner.encode() + b'":' + record_json + b"}}"
