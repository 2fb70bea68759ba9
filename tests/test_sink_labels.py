"""Sinks label each record with its source, in each ecosystem's own words, at the receiver's end.

One record of each Microsoft Graph stream (and one audit record, whose labels must not change) goes through
each sink to its loopback receiver: the Splunk HEC ``sourcetype``, the Elasticsearch data stream and its
``data_stream.dataset``/``event.dataset``, the Log Analytics DCR stream in the upload URL, the syslog MSGID.
The Log Analytics template's Graph streams are checked with Kusto's own analyzer, like the audit stream's.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from o365collector.errors import SinkPermanentError
from o365collector.models import BlobContext, Record
from o365collector.sinks.base import Sink
from o365collector.sinks.elasticsearch import ElasticsearchSink, ElasticsearchSinkSettings
from o365collector.sinks.loganalytics import LogAnalyticsSinkSettings
from o365collector.sinks.splunk import SplunkSink, SplunkSinkSettings
from o365collector.sinks.syslog import SyslogSink, SyslogSinkSettings
from o365collector.sources.catalog import (
    DIRECTORY_AUDITS_STREAM,
    GRAPH_STREAMS,
    MESSAGE_TRACE_STREAM,
    SIGNINS_STREAM,
    labels_for,
)
from tests.backends import BulkServer, HecServer
from tests.backends_azure import LogsIngestionBackend
from tests.syslog_server import SyslogServer
from tests.test_sink_loganalytics import KUSTO_TYPES, analyze_transforms

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
TENANT_ID = "11111111-2222-4333-8444-555555555555"
TOKEN = "6b2a1c1e-3f7d-4d0e-9d55-0a1b2c3d4e5f"
API_KEY = "bGFiZWxzOnRlc3Qta2V5"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

# One record per stream, shaped like Graph's documented responses (signIn, directoryAudit, exchangeMessageTrace).
RECORDS: dict[str, Record] = {
    SIGNINS_STREAM: {
        "id": "66ea54eb-6301-4ee5-be62-ff5a759b0100",
        "createdDateTime": "2026-03-01T11:58:01Z",
        "userDisplayName": "Adele Vance",
        "userPrincipalName": "adele.vance@contoso.example",
        "userId": "d7cc485d-2c1b-422c-98fd-5ce52859a4a3",
        "appId": "de8bc8b5-d9f9-48b1-a8ad-b748da725064",
        "appDisplayName": "Graph Explorer",
        "ipAddress": "131.107.159.37",
        "clientAppUsed": "Browser",
        "correlationId": "d79f5bee-5860-4832-928f-3133e22ae912",
        "conditionalAccessStatus": "notApplied",
        "isInteractive": True,
        "riskDetail": "none",
        "riskLevelAggregated": "none",
        "riskLevelDuringSignIn": "none",
        "riskState": "none",
        "resourceDisplayName": "Microsoft Graph",
        "resourceId": "00000003-0000-0000-c000-000000000000",
        "status": {"errorCode": 0, "failureReason": None, "additionalDetails": None},
        "deviceDetail": {"browser": "Edge 80.0.361", "operatingSystem": "Windows 10"},
        "location": {"city": "Redmond", "state": "Washington", "countryOrRegion": "US"},
        "appliedConditionalAccessPolicies": [],
    },
    DIRECTORY_AUDITS_STREAM: {
        "id": "Directory_ce1b1a4a-6f7a-4c38-8e4b-12b3e5d6a7b8_0K0ZQ_26412137",
        "activityDateTime": "2026-03-01T11:57:14.1234567Z",
        "activityDisplayName": "Add user",
        "category": "UserManagement",
        "correlationId": "da159bfb-54fa-4092-8a38-6e1fa7870e30",
        "initiatedBy": {"user": {"userPrincipalName": "admin@contoso.example"}},
        "loggedByService": "Core Directory",
        "operationType": "Add",
        "result": "success",
        "resultReason": "",
        "targetResources": [{"id": "ef7e527d-6c92-4234-8c6d-cf6fdfb57f95", "type": "User"}],
        "additionalDetails": [],
    },
    MESSAGE_TRACE_STREAM: {
        "id": "4c8ad94e-3b31-4d0c-9f2e-08dd5c0f6a11",
        "messageId": "<a210cf91-4f2e-484c-8ada-3b27064ee5e3@contoso.example>",
        "receivedDateTime": "2026-03-01T11:55:42Z",
        "senderAddress": "azure-noreply@microsoft.com",
        "recipientAddress": "adele.vance@contoso.example",
        "subject": "PIM: A privileged directory role was assigned",
        "status": "delivered",
        "size": 87891,
        "fromIP": "81.2.69.144",
        "toIP": "216.160.83.56",
    },
}
AUDIT: Record = {
    "CreationTime": "2026-03-01T11:59:58",
    "Id": "00000000-0000-4000-8000-000000000001",
    "Operation": "MailItemsAccessed",
    "RecordType": 50,
    "Workload": "Exchange",
}
TIME_FIELDS = {SIGNINS_STREAM: "createdDateTime", DIRECTORY_AUDITS_STREAM: "activityDateTime"}
TIME_FIELDS[MESSAGE_TRACE_STREAM] = "receivedDateTime"


def context(stream: str) -> BlobContext:
    return BlobContext(TENANT_ID, stream, f"{stream}_20260301T110000Z_20260301T120000Z", NOW)


def send_every_source(sink: Sink) -> None:
    """The audit record, then one record of each Graph stream, each as its own unit; then close the sink."""
    try:
        sink.send([AUDIT], context("Audit.Exchange"))
        for stream in GRAPH_STREAMS:
            sink.send([RECORDS[stream]], context(stream))
    finally:
        sink.close()


@pytest.fixture(autouse=True)
def _trust_per_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets REQUESTS_CA_BUNDLE override a session's verify: the HTTP sinks here trust each fake per session."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


# -- Splunk


@pytest.fixture
def hec() -> Iterator[HecServer]:
    with HecServer(TOKEN) as server:
        yield server


def splunk_sink(hec: HecServer, **env: str) -> SplunkSink:
    settings = SplunkSinkSettings.from_env({"SINK_SPLUNK_URL": hec.base_url, "SINK_SPLUNK_TOKEN": TOKEN, **env})
    session = requests.Session()
    session.verify = hec.ca_file
    return SplunkSink(settings, session=session, sleep=lambda _: None)


@pytest.mark.parametrize("configured", [None, "custom:o365"])
def test_splunk_sourcetype_is_the_ecosystem_name_of_each_graph_stream(hec: HecServer, configured: str | None) -> None:
    """Graph records get azure:aad:signin, azure:aad:audit, o365:reporting:messagetrace and their own time;
    SINK_SPLUNK_SOURCETYPE keeps naming the audit feed's sourcetype (default o365:management:activity)."""
    sink = splunk_sink(hec, **({"SINK_SPLUNK_SOURCETYPE": configured} if configured else {}))
    send_every_source(sink)
    audit, *graph = hec.events
    assert audit == {
        "time": int(dt.datetime(2026, 3, 1, 11, 59, 58, tzinfo=dt.UTC).timestamp()),
        "sourcetype": configured or "o365:management:activity",
        "event": AUDIT,
    }
    assert [event["sourcetype"] for event in graph] == [
        "azure:aad:signin",
        "azure:aad:audit",
        "o365:reporting:messagetrace",
    ]
    for stream, event in zip(GRAPH_STREAMS, graph, strict=True):
        assert event["event"] == RECORDS[stream]
        when = dt.datetime.fromisoformat(RECORDS[stream][TIME_FIELDS[stream]].replace("Z", "+00:00"))
        assert event["time"] == pytest.approx(when.timestamp(), abs=0.001)


# -- Elasticsearch


@pytest.fixture
def es() -> Iterator[BulkServer]:
    with BulkServer(api_key=API_KEY) as server:
        yield server


def es_sink(es: BulkServer, index: str, **env: str) -> ElasticsearchSink:
    settings = ElasticsearchSinkSettings.from_env(
        {
            "SINK_ELASTICSEARCH_URL": es.base_url,
            "SINK_ELASTICSEARCH_INDEX": index,
            "SINK_ELASTICSEARCH_API_KEY": API_KEY,
            **env,
        }
    )
    session = requests.Session()
    session.verify = es.ca_file
    return ElasticsearchSink(settings, session=session, sleep=lambda _: None, clock=NOW.timestamp)


def test_elasticsearch_graph_records_go_to_their_own_data_streams_in_the_audit_namespace(es: BulkServer) -> None:
    """With the o365 integration's data stream configured, the audit record keeps its integration shape there;
    each Graph record goes to logs-<dataset>-prod with @timestamp, data_stream.* and event.dataset."""
    sink = es_sink(es, "logs-o365.audit-prod")
    send_every_source(sink)
    (audit,) = es.docs("logs-o365.audit-prod")
    assert audit["o365audit"] == AUDIT
    assert audit["event"]["dataset"] == "o365.audit"
    expected = {
        SIGNINS_STREAM: "o365collector.entra_signins",
        DIRECTORY_AUDITS_STREAM: "o365collector.entra_directory_audits",
        MESSAGE_TRACE_STREAM: "microsoft_exchange_online_message_trace.log",
    }
    for stream, dataset in expected.items():
        assert labels_for(stream).elastic_dataset == dataset
        (document,) = es.docs(f"logs-{dataset}-prod")
        assert document["data_stream"] == {"type": "logs", "dataset": dataset, "namespace": "prod"}
        assert document["event"]["dataset"] == dataset
        assert document["@timestamp"] == RECORDS[stream][TIME_FIELDS[stream]]
    signin = es.docs("logs-o365collector.entra_signins-prod")[0]
    assert signin["entra"]["signin"] == RECORDS[SIGNINS_STREAM]
    audit_doc = es.docs("logs-o365collector.entra_directory_audits-prod")[0]
    assert audit_doc["entra"]["directory_audit"] == RECORDS[DIRECTORY_AUDITS_STREAM]
    # The message trace integration's Graph input hands its pipeline each record as JSON text in `message`.
    trace = es.docs("logs-microsoft_exchange_online_message_trace.log-prod")[0]
    assert json.loads(trace["message"]) == RECORDS[MESSAGE_TRACE_STREAM]
    ids = [action["create"].get("_id") for action, _ in es.actions]
    assert ids[1:] == [f"{TENANT_ID}:{RECORDS[stream]['id']}" for stream in GRAPH_STREAMS]


def test_elasticsearch_pipeline_and_index_settings_stay_the_audit_feeds(es: BulkServer) -> None:
    """A plain index and a named pipeline apply to audit records only: Graph records go to the default
    namespace's data streams, without ?pipeline= (their data stream's own pipeline runs)."""
    sink = es_sink(es, "o365-audit", SINK_ELASTICSEARCH_PIPELINE="o365-audit-pipeline")
    try:
        sink.send([AUDIT], context("Audit.Exchange"))
        sink.send([RECORDS[SIGNINS_STREAM]], context(SIGNINS_STREAM))
    finally:
        sink.close()
    assert es.docs("o365-audit") == [AUDIT]
    assert len(es.docs("logs-o365collector.entra_signins-default")) == 1
    audit_bulk, graph_bulk = es.exchanges_to("/_bulk")
    assert audit_bulk.query == {"pipeline": ["o365-audit-pipeline"]}
    assert graph_bulk.query == {}


def test_elasticsearch_a_refused_graph_document_names_its_own_data_stream(es: BulkServer) -> None:
    """The refusal and the privilege to grant name the data stream the Graph document went to, not the audit
    feed's SINK_ELASTICSEARCH_INDEX it was never sent to."""
    es.forbid_writes()
    sink = es_sink(es, "logs-o365.audit-prod")
    try:
        with pytest.raises(SinkPermanentError) as refused:
            sink.send([RECORDS[SIGNINS_STREAM]], context(SIGNINS_STREAM))
    finally:
        sink.close()
    message = str(refused.value)
    data_stream = "'logs-o365collector.entra_signins-prod'"
    assert (
        f"for index {data_stream} (the {SIGNINS_STREAM} data stream, in the namespace of SINK_ELASTICSEARCH_INDEX)"
        in message
    )
    assert f"grant the create_doc privilege on {data_stream}" in message
    assert "logs-o365.audit-prod" not in message


# -- Log Analytics

DCR_ID = "dcr-4f2a9c0e1b7d4e6f8a3c5b9d0e2f4a6c"
LA_TENANT = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
LA_APP = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
LA_SECRET = "la-secret-labels-never-log-me"


@pytest.fixture
def ingestion(monkeypatch: pytest.MonkeyPatch) -> Iterator[LogsIngestionBackend]:
    with LogsIngestionBackend(tenant_id=LA_TENANT, client_id=LA_APP, client_secret=LA_SECRET, dcr_id=DCR_ID) as server:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", server.ca_file)
        yield server


def la_env(backend: LogsIngestionBackend, **overrides: str) -> dict[str, str]:
    return {
        "SINK_LOGANALYTICS_ENDPOINT": backend.url,
        "SINK_LOGANALYTICS_DCR_ID": DCR_ID,
        "SINK_LOGANALYTICS_AUTHORITY_HOST": backend.url,
        "SINK_LOGANALYTICS_TENANT_ID": LA_TENANT,
        "SINK_LOGANALYTICS_APP_CLIENT_ID": LA_APP,
        "SINK_LOGANALYTICS_CLIENT_SECRET": LA_SECRET,
        "SINK_LOGANALYTICS_RETRY_BACKOFF_SECONDS": "0.01",
        "SINK_LOGANALYTICS_MAX_RETRIES": "0",
        **overrides,
    }


@pytest.mark.parametrize("configured", [None, "Custom-MyAuditStream"])
def test_log_analytics_sends_each_graph_stream_to_its_own_dcr_stream(
    ingestion: LogsIngestionBackend, configured: str | None
) -> None:
    """The upload URL names Custom-O365SignInLogs, ...; SINK_LOGANALYTICS_STREAM keeps naming the audit feed's."""
    env = la_env(ingestion, **({"SINK_LOGANALYTICS_STREAM": configured} if configured else {}))
    sink = LogAnalyticsSinkSettings.from_env(env).create()
    expected = {
        SIGNINS_STREAM: "Custom-O365SignInLogs",
        DIRECTORY_AUDITS_STREAM: "Custom-O365DirectoryAuditLogs",
        MESSAGE_TRACE_STREAM: "Custom-O365MessageTrace",
    }
    try:
        ingestion.stream = configured or "Custom-O365AuditLogs"  # the fake declares one stream at a time
        sink.send([AUDIT], context("Audit.Exchange"))
        for stream, name in expected.items():
            ingestion.stream = name
            sink.send([RECORDS[stream]], context(stream))
    finally:
        sink.close()
    paths = [upload.path for upload in ingestion.uploads if upload.status == 204]
    streams = [configured or "Custom-O365AuditLogs", *expected.values()]
    assert paths == [f"/dataCollectionRules/{DCR_ID}/streams/{name}" for name in streams]
    assert [record["AuditRecord"] for record in ingestion.records] == [AUDIT, *RECORDS.values()]


def test_log_analytics_names_the_template_when_the_dcr_lacks_a_graph_stream(ingestion: LogsIngestionBackend) -> None:
    """A DCR deployed before the Graph streams existed answers 404: the error says to redeploy the template."""
    sink = LogAnalyticsSinkSettings.from_env(la_env(ingestion)).create()
    try:
        with pytest.raises(SinkPermanentError, match=r"Custom-O365SignInLogs.*infra/logs-ingestion\.json"):
            sink.send([RECORDS[SIGNINS_STREAM]], context(SIGNINS_STREAM))
    finally:
        sink.close()


def template() -> dict[str, Any]:
    return dict(json.loads((ROOT / "infra" / "logs-ingestion.json").read_text()))


def test_template_declares_a_stream_flow_and_table_for_each_graph_stream_checked_by_kusto() -> None:
    """Each Graph stream the sink sends to is declared; its flow's transformation, run by Kusto's analyzer over
    the declared stream, yields exactly its table's columns, with TimeGenerated a datetime."""
    body = template()
    declarations = body["variables"]["graphStreamDeclarations"]
    tables = {table["name"]: table for table in body["variables"]["graphTables"]}
    (dcr,) = [r for r in body["resources"] if r["type"] == "Microsoft.Insights/dataCollectionRules"]
    assert "variables('graphStreamDeclarations')" in dcr["properties"]["streamDeclarations"]
    assert "graphTables" in dcr["dependsOn"], "the DCR validates its output tables: create them first"
    flows = {flow["streams"][0]: flow for flow in dcr["properties"]["dataFlows"]}
    queries: dict[str, str] = {}
    for stream in GRAPH_STREAMS:
        name = labels_for(stream).log_analytics_stream
        flow = flows[name]
        table = flow["outputStream"].removeprefix("Custom-")
        assert table in tables
        assert table.endswith("_CL")
        key = flow["transformKql"].removeprefix("[variables('graphTransformKql').").removesuffix("]")
        queries[name] = body["variables"]["graphTransformKql"][key]
        assert name in declarations
    for name, query in queries.items():
        stream = [(c["name"], KUSTO_TYPES[c["type"].lower()]) for c in declarations[name]["columns"]]
        table = tables[flows[name]["outputStream"].removeprefix("Custom-")]["columns"]
        expected = sorted((c["name"], KUSTO_TYPES[c["type"].lower()]) for c in table)
        analysis = analyze_transforms({"transform": query, "broken": query + " | extend X = todatetime(Nope)"}, stream)
        assert analysis["transform"]["errors"] == [], name
        assert sorted(map(tuple, analysis["transform"]["columns"])) == expected, name
        assert analysis["broken"]["errors"], "the checker itself must be able to fail"
        assert ("TimeGenerated", "datetime") in expected
        assert ("AuditRecord", "dynamic") in expected
        assert all(c.get("description") for c in table)
        reserved = {"id", "tenantid", "type", "uniqueid", "title", "_resourceid", "_subscriptionid"}
        assert not {c["name"].lower() for c in table} & reserved


# -- syslog


@pytest.fixture
def syslog_server() -> Iterator[SyslogServer]:
    with SyslogServer() as receiver:
        yield receiver


def test_syslog_msgid_is_the_stream_name_and_the_timestamp_the_records_own(syslog_server: SyslogServer) -> None:
    env = {
        "SINK_SYSLOG_HOST": "127.0.0.1",
        "SINK_SYSLOG_PORT": str(syslog_server.port),
        "SINK_SYSLOG_PROTOCOL": "tcp",
        "SINK_SYSLOG_HOSTNAME": "collector-01",
    }
    sink = SyslogSink(SyslogSinkSettings.from_env(env), connect=socket.create_connection, clock=lambda: NOW)
    send_every_source(sink)
    messages = syslog_server.wait_for(4)
    assert [m.msgid for m in messages] == ["Audit.Exchange", *GRAPH_STREAMS]
    assert messages[0].timestamp.startswith("2026-03-01T11:59:58")
    assert [m.timestamp[:19] for m in messages[1:]] == [
        "2026-03-01T11:58:01",
        "2026-03-01T11:57:14",
        "2026-03-01T11:55:42",
    ]
    assert [json.loads(m.msg) for m in messages] == [AUDIT, *RECORDS.values()]
