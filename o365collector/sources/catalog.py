"""The sources this collector reads and their streams: names, retention, and the labels sinks give records.

A *stream* is what has its own checkpoint, status row and health: one of the audit feed's five content
types, or one Microsoft Graph log. Its name travels as a queue message's ``contentType`` and in sink
metadata, so a stream name never changes once released. Pure data: every layer may import it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..models import CONTENT_TYPES

AUDIT = "audit"
SIGNINS = "signins"
DIRECTORY_AUDITS = "directoryaudits"
MESSAGE_TRACE = "messagetrace"

SIGNINS_STREAM = "Entra.SignIns"
DIRECTORY_AUDITS_STREAM = "Entra.DirectoryAudits"
MESSAGE_TRACE_STREAM = "Exchange.MessageTrace"

DEFAULT_SOURCES: tuple[str, ...] = (AUDIT,)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """One source: the setting value that selects it, its streams, and what bounds its windows."""

    name: str
    """As written in O365_SOURCES and a registry entry's ``sources``."""
    title: str
    """For people: ``check``, ``status``, the README."""
    streams: tuple[str, ...]
    retention: dt.timedelta
    """How far back the service keeps records: windows never reach behind it."""
    permission: str
    """The application permission an admin grants (Office 365 Management APIs or Microsoft Graph)."""
    global_cloud_only: bool = False


SOURCES: dict[str, SourceSpec] = {
    spec.name: spec
    for spec in (
        SourceSpec(
            AUDIT,
            "Office 365 audit feed (Management Activity API)",
            CONTENT_TYPES,
            dt.timedelta(days=7),
            "ActivityFeed.Read (Office 365 Management APIs)",
        ),
        SourceSpec(
            SIGNINS,
            "Entra ID sign-ins (Microsoft Graph)",
            (SIGNINS_STREAM,),
            dt.timedelta(days=30),
            "AuditLog.Read.All (Microsoft Graph)",
        ),
        SourceSpec(
            DIRECTORY_AUDITS,
            "Entra ID directory audits (Microsoft Graph)",
            (DIRECTORY_AUDITS_STREAM,),
            dt.timedelta(days=30),
            "AuditLog.Read.All (Microsoft Graph)",
        ),
        SourceSpec(
            MESSAGE_TRACE,
            "Exchange Online message trace (Microsoft Graph)",
            (MESSAGE_TRACE_STREAM,),
            dt.timedelta(days=90),
            "ExchangeMessageTrace.Read.All (Microsoft Graph)",
            global_cloud_only=True,
        ),
    )
}

GRAPH_STREAMS: tuple[str, ...] = (SIGNINS_STREAM, DIRECTORY_AUDITS_STREAM, MESSAGE_TRACE_STREAM)


def source_of(stream: str) -> SourceSpec | None:
    """The source a stream belongs to (None for a name no source has: a forged or misrouted message)."""
    for spec in SOURCES.values():
        if stream in spec.streams:
            return spec
    return None


def is_graph_stream(stream: str) -> bool:
    return stream in GRAPH_STREAMS


@dataclass(frozen=True, slots=True)
class StreamLabels:
    """How each sink's ecosystem names a stream's records (see the SIEM reference, docs/sinks/)."""

    splunk_sourcetype: str
    elastic_dataset: str
    """The Elastic data stream ``logs-<dataset>-<namespace>`` and ``event.dataset`` (sinks/elasticsearch.py)."""
    log_analytics_stream: str
    """The data collection rule's input stream (``Custom-…``) the Log Analytics sink sends this stream to."""
    # Syslog's MSGID is the stream name itself (``Audit.Exchange``, ``Entra.SignIns``): no field needed.


_AUDIT_LABELS = StreamLabels(
    splunk_sourcetype="o365:management:activity",
    elastic_dataset="o365.audit",
    log_analytics_stream="Custom-O365AuditLogs",
)

# Where each Graph name comes from (checked against the tools' own sources):
# - Splunk: ``azure:aad:signin`` / ``azure:aad:audit`` are the sourcetypes of the Splunk Add-on for Microsoft
#   Azure's (TA-MS-AAD) Azure AD inputs, which read the same Graph endpoints (its wiki, "Configure Azure Active
#   Directory Sign-in inputs": API used graph/api/signin-list, directoryaudit-list); Splunk's CIM
#   Authentication content and Splunk's own content-pack macros key on them. ``o365:reporting:messagetrace``
#   is the Splunk Add-on for Microsoft Office 365's message trace sourcetype (the cs_o365 macro of Splunk's
#   content packs: o365:management:activity, o365:service:healthIssue, o365:reporting:messagetrace; older
#   add-on versions wrote ms:o365:reporting:messagetrace, as they wrote ms:o365:management).
# - Elastic: the Azure Logs integration's ``azure.signinlogs`` / ``azure.auditlogs`` pipelines parse the
#   diagnostic-settings envelope that Event Hub carries (elastic/integrations packages/azure/data_stream/
#   signinlogs/elasticsearch/ingest_pipeline/default.yml drops every document whose ``category`` does not
#   end in SignInLogs and takes @timestamp from the envelope's ``time``): a Graph record has neither, so it
#   would be dropped without an error. Entra records therefore go to datasets of our own. Message trace
#   goes to the microsoft_exchange_online_message_trace integration's ``…log`` dataset: its CEL input reads
#   this same Graph endpoint and hands the pipeline each record as JSON text in ``message``
#   (data_stream/log/agent/stream/cel.yml.hbs), which is the shape the sink sends.
# - Log Analytics: the built-in SigninLogs/AuditLogs tables are not among the tables the Logs Ingestion API
#   can write, so each Graph stream has its own DCR stream and custom table (infra/logs-ingestion.json).
LABELS: dict[str, StreamLabels] = {
    **{content_type: _AUDIT_LABELS for content_type in CONTENT_TYPES},
    SIGNINS_STREAM: StreamLabels(
        splunk_sourcetype="azure:aad:signin",
        elastic_dataset="o365collector.entra_signins",
        log_analytics_stream="Custom-O365SignInLogs",
    ),
    DIRECTORY_AUDITS_STREAM: StreamLabels(
        splunk_sourcetype="azure:aad:audit",
        elastic_dataset="o365collector.entra_directory_audits",
        log_analytics_stream="Custom-O365DirectoryAuditLogs",
    ),
    MESSAGE_TRACE_STREAM: StreamLabels(
        splunk_sourcetype="o365:reporting:messagetrace",
        elastic_dataset="microsoft_exchange_online_message_trace.log",
        log_analytics_stream="Custom-O365MessageTrace",
    ),
}


def labels_for(stream: str) -> StreamLabels:
    """The stream's labels; an unknown name gets the audit feed's (the only source before streams had names)."""
    return LABELS.get(stream, _AUDIT_LABELS)
