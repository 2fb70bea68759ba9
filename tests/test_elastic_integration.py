"""The Elasticsearch sink feeding Elastic's o365 integration (data stream ``logs-o365.audit-<namespace>``).

The loopback ``_bulk`` API (``tests.backends.BulkServer``) stands in for the data stream, with a small
emulation of the integration's ingest pipeline as its default pipeline: the first steps that
docs/sinks/elasticsearch.md and /work/shared/reference/siem-conventions.md describe (``_id`` from a
fingerprint of ``o365audit.Id``, ``@timestamp`` from ``o365audit.CreationTime``, ``event.action`` and
``event.provider`` from ``Operation`` and ``Workload``, ``o365audit`` renamed ``o365.audit``, and
``event.original`` kept only with the ``preserve_original_event`` tag). The data stream refuses a
document without ``@timestamp``, as a real one does.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from o365collector.content import ContentRecords
from o365collector.errors import ConfigError, SinkPermanentError
from o365collector.models import BlobContext
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.sinks.elasticsearch import ElasticsearchSink, ElasticsearchSinkSettings
from tests.backends import BulkServer
from tests.support import TENANT

pytestmark = pytest.mark.integration

STREAM = "logs-o365.audit-default"
API_KEY = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
CONTEXT = BlobContext(
    tenant_id="11111111-2222-4333-8444-555555555555",
    content_type="Audit.SharePoint",
    content_id="20260301120000.000000000$20260301120000.000000000$audit_sharepoint$Audit_SharePoint$emea0026",
    content_created=dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC),
)

# Records as the service might serve them, written by hand so their bytes are known: integers beyond
# 64 bits (orjson would read them as floats), non-ASCII text, escapes, a number written as 1.50.
HAND_MADE = [
    b'{"CreationTime":"2026-03-01T11:58:00","Id":"9f1c1a2e-0000-4000-8000-000000000001","Operation":"FileAccessed",'
    b'"OrganizationId":"11111111-2222-4333-8444-555555555555","RecordType":6,"UserId":"ad\\u00e8le@contoso.example",'
    b'"Workload":"SharePoint","Size":123456789012345678901234567890,"Delta":-98765432109876543210,'
    b'"Ratio":1.50,"Name":"Bj\xc3\xb6rk \\"quoted\\" \\\\ \xf0\x9f\x93\x84"}',
    b'{"CreationTime":"2026-03-01T11:59:30","Id":"9f1c1a2e-0000-4000-8000-000000000002","Operation":"UserLoggedIn",'
    b'"RecordType":15,"UserId":"adele.vance@contoso.example","Workload":"AzureActiveDirectory",'
    b'"ExtendedProperties":[{"Name":"UserAgent","Value":"Mozilla/5.0"}],"ClientIP":"203.0.113.7"}',
]


def integration_pipeline(doc_id: str | None, source: Any) -> tuple[str | None, Any]:
    """The first steps of the o365 integration's default pipeline, in its order (a copy: the fake keeps what it got)."""
    doc = copy.deepcopy(source)
    audit = doc.get("o365audit")
    event = doc.setdefault("event", {})
    if "original" not in event and audit is not None:
        event["original"] = str(audit)  # the real pipeline renders the object with a template: not JSON
    if isinstance(audit, dict) and "Id" in audit:  # fingerprint: a stable hash of the field and its value
        # SHA-1 is the fingerprint processor's default method; an id, not a security boundary.
        digest = hashlib.sha1(f"|o365audit.Id|{audit['Id']}|".encode(), usedforsecurity=False).digest()
        doc_id = base64.b64encode(digest).decode("ascii")
    if isinstance(audit, dict) and audit.get("CreationTime") is not None:
        when = dt.datetime.fromisoformat(audit["CreationTime"])  # ISO8601, UTC when no offset is given
        doc["@timestamp"] = (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).isoformat()
    if isinstance(audit, dict):
        for field, target in (("Id", "id"), ("Workload", "provider"), ("Operation", "action")):
            if field in audit:
                event[target] = audit.pop(field)
        doc.setdefault("o365", {})["audit"] = doc.pop("o365audit")
    if PRESERVE not in doc.get("tags", []):
        event.pop("original", None)
    return doc_id, doc


PRESERVE = "preserve_original_event"


def served_records(simulator: Simulator, tenant: str) -> list[bytes]:
    """Every record the simulator serves, as the bytes it serves (each blob's body, split)."""
    records: list[bytes] = []
    for blob in simulator.blobs(tenant):
        if blob.expired:
            continue
        body = blob.body()
        split = ContentRecords.from_body(body, blob.content_id)
        assert split.raw
        pieces = list(split.served())
        assert b"[" + b",".join(pieces) + b"]" == body  # really the served bytes, nothing between
        records.extend(pieces)
    return records


def documents_sent(server: BulkServer) -> list[tuple[dict[str, Any], bytes]]:
    """(action, document line as sent) for every _bulk item, from the request bodies."""
    sent: list[tuple[dict[str, Any], bytes]] = []
    for exchange in server.exchanges_to("/_bulk"):
        lines = exchange.body.split(b"\n")[:-1]
        sent.extend((json.loads(action), doc) for action, doc in zip(lines[::2], lines[1::2], strict=True))
    return sent


@pytest.mark.parametrize("preserve", [False, True])
def test_demo_records_reach_the_integration_with_ecs_fields_and_round_trip_exactly(
    simulator: Simulator,
    make_collector: Callable[..., Collector],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    preserve: bool,
) -> None:
    """The simulator's records, shipped end to end to the integration's data stream: each arrives under
    o365audit exactly as served (bytes on the wire, values after parsing, big integers included), the
    pipeline finds what it maps, and event.original is the served text when asked for."""
    tenant = TENANT.tenant_id
    end = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    for content_type in ("Audit.AzureActiveDirectory", "Audit.Exchange", "Audit.SharePoint", "Audit.General"):
        simulator.generate(
            tenant, content_type, end - dt.timedelta(hours=4), end,
            blob_every=dt.timedelta(minutes=60), records_per_blob=(1, 8),
        )  # fmt: skip
    simulator.add_blob(tenant, "Audit.SharePoint", end - dt.timedelta(hours=1), b"[" + b",".join(HAND_MADE) + b"]")
    served = served_records(simulator, tenant)
    assert set(HAND_MADE) <= set(served)
    with BulkServer(api_key=API_KEY, default_pipeline=integration_pipeline, require_timestamp=True) as server:
        bundle = tmp_path / "ca-bundle.pem"
        bundle.write_text(Path(simulator.ca_file).read_text() + Path(server.ca_file).read_text())
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
        collector = make_collector(
            SINK_TYPE="elasticsearch",
            SINK_ELASTICSEARCH_URL=server.base_url,
            SINK_ELASTICSEARCH_INDEX=STREAM,
            SINK_ELASTICSEARCH_API_KEY=API_KEY,
            SINK_ELASTICSEARCH_PRESERVE_ORIGINAL=str(preserve).lower(),
            O365_CONTENT_TYPES="Audit.AzureActiveDirectory,Audit.Exchange,Audit.SharePoint,Audit.General",
        )
        assert run_once(collector) == 0
        sent = documents_sent(server)
        bulk_queries = [e.query for e in server.exchanges_to("/_bulk")]
        stored = server.documents.get(STREAM, {})

    assert all("pipeline" not in query for query in bulk_queries)  # the data stream's own pipeline runs
    assert all(action == {"create": {"_index": STREAM}} for action, _ in sent)  # no _id: the pipeline sets it
    assert len(sent) == len(served) > 20

    by_bytes = {record: orjson.loads(record) if record not in HAND_MADE else json.loads(record) for record in served}
    prefix = b'{"o365audit":'
    # Sorted alike: each line starts with the prefix and its record, and no record is a prefix of another.
    lines = sorted(line for _, line in sent)
    for line, record in zip(lines, sorted(served, key=lambda r: prefix + r), strict=True):
        assert line.startswith(prefix + record + b',"data_stream":')  # byte for byte on the wire
        doc = json.loads(line)
        assert doc["o365audit"] == by_bytes[record]  # value for value (json keeps big integers exact)
        assert doc["data_stream"] == {"type": "logs", "dataset": "o365.audit", "namespace": "default"}
        assert doc["event"]["dataset"] == "o365.audit"
        if preserve:
            assert doc["event"]["original"].encode() == record
            assert doc["tags"] == [PRESERVE]
        else:
            assert "original" not in doc["event"]
            assert "tags" not in doc
    big = json.loads(next(line for _, line in sent if b"123456789012345678901234567890" in line))
    assert big["o365audit"]["Size"] == 123456789012345678901234567890
    assert big["o365audit"]["Delta"] == -98765432109876543210

    assert len(stored) == len(served)  # every record stored, none twice
    served_ids = {by_bytes[record]["Id"] for record in served}
    for doc_id, doc in stored.items():
        assert doc_id
        assert doc["@timestamp"]
        assert doc["event"]["action"]
        assert doc["event"]["provider"]
        assert doc["data_stream"]["dataset"] == "o365.audit"
        assert doc["event"]["id"] in served_ids
        assert ("original" in doc["event"]) is preserve


@pytest.fixture
def make_sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., ElasticsearchSink]]:
    # requests lets these override a session's verify; sinks here trust the fake per session.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    made: list[ElasticsearchSink] = []

    def factory(server: BulkServer, **env: str) -> ElasticsearchSink:
        session = requests.Session()
        session.verify = server.ca_file
        base = {"SINK_ELASTICSEARCH_URL": server.base_url, "SINK_ELASTICSEARCH_INDEX": STREAM}
        settings = ElasticsearchSinkSettings.from_env({**base, "SINK_ELASTICSEARCH_API_KEY": API_KEY, **env})
        sink = ElasticsearchSink(settings, session=session, sleep=lambda _: None)
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        sink.close()


def test_a_redelivered_blob_adds_no_duplicates_through_the_pipelines_fingerprint(
    make_sink: Callable[..., ElasticsearchSink],
) -> None:
    """No _id is sent, yet a second delivery is harmless: the pipeline's _id answers 409 for each record."""
    records = ContentRecords.from_body(b"[" + b",".join(HAND_MADE) + b"]", "blob")
    with BulkServer(api_key=API_KEY, default_pipeline=integration_pipeline, require_timestamp=True) as server:
        sink = make_sink(server)
        sink.send(records, CONTEXT)
        sink.send(records, CONTEXT)
        second = server.exchanges_to("/_bulk")[-1].json()
        stored = server.docs(STREAM)
    assert [item["create"]["status"] for item in second["items"]] == [409, 409]
    assert len(stored) == 2


def test_parsed_records_are_shaped_the_same(make_sink: Callable[..., ElasticsearchSink]) -> None:
    """Records that are no longer held as served bytes are serialized, still under o365audit, same values."""
    records = [json.loads(record) for record in HAND_MADE]
    with BulkServer(api_key=API_KEY) as server:
        make_sink(server, SINK_ELASTICSEARCH_PRESERVE_ORIGINAL="true").send(records, CONTEXT)
        sent = documents_sent(server)
    for (_, line), record in zip(sent, records, strict=True):
        doc = json.loads(line)
        assert doc["o365audit"] == record
        assert json.loads(doc["event"]["original"]) == record


def test_a_data_stream_without_the_integrations_pipeline_says_what_to_install(
    make_sink: Callable[..., ElasticsearchSink],
) -> None:
    """Assets not installed: the data stream refuses documents without @timestamp; the message says why."""
    refused = r"@timestamp.*install the Microsoft 365 integration"
    with (
        BulkServer(api_key=API_KEY, require_timestamp=True) as server,
        pytest.raises(SinkPermanentError, match=refused) as caught,
    ):
        make_sink(server).send([json.loads(HAND_MADE[0])], CONTEXT)
    assert "Bj" not in str(caught.value)


def test_raw_shape_is_kept_for_plain_indices_and_when_asked() -> None:
    env = {"SINK_ELASTICSEARCH_URL": "https://es.example.com"}
    cases = [
        ({"SINK_ELASTICSEARCH_INDEX": STREAM}, "integration"),
        ({"SINK_ELASTICSEARCH_INDEX": "logs-o365.audit-prod"}, "integration"),
        ({"SINK_ELASTICSEARCH_INDEX": "o365-audit"}, "raw"),
        ({"SINK_ELASTICSEARCH_INDEX": "logs-o365-default"}, "raw"),
        ({"SINK_ELASTICSEARCH_INDEX": STREAM, "SINK_ELASTICSEARCH_SHAPE": "raw"}, "raw"),
        ({"SINK_ELASTICSEARCH_INDEX": STREAM, "SINK_ELASTICSEARCH_PIPELINE": "o365-ts"}, "raw"),
        ({"SINK_ELASTICSEARCH_INDEX": STREAM, "SINK_ELASTICSEARCH_SHAPE": "Integration"}, "integration"),
    ]
    for extra, shape in cases:
        assert ElasticsearchSinkSettings.from_env({**env, **extra}).shape == shape, extra
    assert ElasticsearchSinkSettings.from_env({**env, "SINK_ELASTICSEARCH_INDEX": STREAM}).preserve_original is False


@pytest.mark.parametrize(
    ("setting", "extra"),
    [
        ("SINK_ELASTICSEARCH_SHAPE", {"SINK_ELASTICSEARCH_SHAPE": "ecs"}),
        ("SINK_ELASTICSEARCH_SHAPE", {"SINK_ELASTICSEARCH_SHAPE": "integration", "SINK_ELASTICSEARCH_INDEX": "o365"}),
        ("SINK_ELASTICSEARCH_SHAPE", {"SINK_ELASTICSEARCH_SHAPE": "integration", "SINK_ELASTICSEARCH_PIPELINE": "p"}),
        ("SINK_ELASTICSEARCH_PRESERVE_ORIGINAL", {"SINK_ELASTICSEARCH_PRESERVE_ORIGINAL": "maybe"}),
    ],
)
def test_shape_settings_errors_name_the_setting(setting: str, extra: dict[str, str]) -> None:
    env = {"SINK_ELASTICSEARCH_URL": "https://es.example.com", "SINK_ELASTICSEARCH_INDEX": STREAM, **extra}
    with pytest.raises(ConfigError) as caught:
        ElasticsearchSinkSettings.from_env(env)
    assert caught.value.setting == setting
