"""What a sink needs to know about a record's stream: its time field, its id field, and its labels.

A sink learns the stream from ``BlobContext.content_type``: one of the audit feed's content types
(``Audit.Exchange``…) or a Microsoft Graph stream (``Entra.SignIns``, ``Entra.DirectoryAudits``,
``Exchange.MessageTrace``). The labels each ecosystem gives a stream live in ``sources.catalog.LABELS``;
this module adds what the records themselves look like. Pure functions, no I/O.
"""

from __future__ import annotations

from ..models import Record
from ..sources.catalog import (
    DIRECTORY_AUDITS_STREAM,
    MESSAGE_TRACE_STREAM,
    SIGNINS_STREAM,
    StreamLabels,
    is_graph_stream,
    labels_for,
)

__all__ = ["StreamLabels", "is_graph_stream", "labels_for", "record_id", "time_field"]

AUDIT_TIME_FIELD = "CreationTime"
# The property each Graph resource documents as the time of the event (signIn, directoryAudit,
# exchangeMessageTrace in the Graph v1.0 reference): the field the sources' windows filter on too.
GRAPH_TIME_FIELDS: dict[str, str] = {
    SIGNINS_STREAM: "createdDateTime",
    DIRECTORY_AUDITS_STREAM: "activityDateTime",
    MESSAGE_TRACE_STREAM: "receivedDateTime",
}


def time_field(stream: str) -> str:
    """The record field holding the event's time (ISO 8601) for records of ``stream``."""
    return GRAPH_TIME_FIELDS.get(stream, AUDIT_TIME_FIELD)


def record_id(record: Record, stream: str) -> str | None:
    """The record's own stable id as text (Graph: ``id``; the audit feed: ``Id``), or None when unusable."""
    value = record.get("id" if is_graph_stream(stream) else "Id")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    return str(value)
