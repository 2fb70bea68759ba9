"""The Elasticsearch / OpenSearch sink against a loopback ``_bulk`` API over HTTPS: wire format, batching,
per-item 409/429/400 handling, request-level classification, check(), settings, secrets kept out of
logs, and an outage end to end that loses nothing and stores each record once."""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from o365collector.errors import ConfigError, SinkPermanentError, SinkTransientError
from o365collector.models import BlobContext
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.sinks.batching import serialize
from o365collector.sinks.elasticsearch import (
    ElasticsearchSink,
    ElasticsearchSinkSettings,
    clean_reason,
    document_id,
)
from o365collector.sinks.registry import parse_sink_settings
from tests.backends import BulkServer, HecServer
from tests.receivers import HttpReceiver, refusing_url
from tests.support import TENANT

pytestmark = pytest.mark.integration

INDEX = "o365-audit"
API_KEY = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
MARKER = "body-marker-41d7"  # a value inside records: must never reach the logs or messages
NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
CONTEXT = BlobContext(
    tenant_id="11111111-2222-4333-8444-555555555555",
    content_type="Audit.SharePoint",
    content_id="20260301120000.000000000$20260301120000.000000000$audit_sharepoint$Audit_SharePoint$emea0026",
    content_created=NOW,
)

SinkFactory = Callable[..., ElasticsearchSink]


def audit_records(count: int, *, start: int = 0, pad: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "CreationTime": "2024-05-14T10:11:58",
            "Id": f"00000000-0000-4000-8000-{index:012d}",
            "Operation": "FileAccessed",
            "RecordType": 6,
            "UserId": "adele.vance@contoso.example",
            "Workload": "SharePoint",
            "Seq": index,
            "Note": MARKER + "x" * pad,
        }
        for index in range(start, start + count)
    ]


def doc_id(record: dict[str, Any], context: BlobContext = CONTEXT) -> str:
    """The _id the sink gives a record: scoped by the blob's tenant."""
    return f"{context.tenant_id}:{record['Id']}"


def bulk_body(records: list[dict[str, Any]], index: str = INDEX) -> bytes:
    """The NDJSON Elasticsearch documents for create operations with our _id."""
    lines = []
    for record in records:
        lines.append(serialize({"create": {"_index": index, "_id": doc_id(record)}}) + b"\n")
        lines.append(serialize(record) + b"\n")
    return b"".join(lines)


@pytest.fixture
def es() -> Iterator[BulkServer]:
    with BulkServer(api_key=API_KEY, indexes={INDEX}) as server:
        yield server


@pytest.fixture
def delays() -> list[float]:
    """What the sink would have slept between attempts (it never really sleeps in tests)."""
    return []


@pytest.fixture
def make_sink(delays: list[float], monkeypatch: pytest.MonkeyPatch) -> Iterator[SinkFactory]:
    # requests lets REQUESTS_CA_BUNDLE override a session's verify; sinks here trust the fake per session.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    made: list[ElasticsearchSink] = []

    def factory(server: BulkServer | str, *, session: requests.Session | None = None, **env: str) -> ElasticsearchSink:
        url = server if isinstance(server, str) else server.base_url
        if session is None:
            session = requests.Session()
            if not isinstance(server, str):
                session.verify = server.ca_file
        base = {"SINK_ELASTICSEARCH_URL": url, "SINK_ELASTICSEARCH_INDEX": INDEX}
        if "SINK_ELASTICSEARCH_USERNAME" not in env:
            base["SINK_ELASTICSEARCH_API_KEY"] = API_KEY
        settings = ElasticsearchSinkSettings.from_env({**base, **env})
        sink = ElasticsearchSink(settings, session=session, sleep=delays.append, clock=NOW.timestamp)
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        sink.close()


# -- wire format


def test_bulk_create_wire_format(es: BulkServer, make_sink: SinkFactory) -> None:
    """One POST /_bulk: a create action with the tenant-scoped Id, then the record unchanged, NDJSON."""
    records = audit_records(3)
    make_sink(es).send(records, CONTEXT)

    (request,) = es.exchanges
    assert (request.method, request.path, request.query, request.status) == ("POST", "/_bulk", {}, 200)
    assert request.headers["content-type"] == "application/x-ndjson"
    assert request.headers["authorization"] == f"ApiKey {API_KEY}"
    assert request.headers["user-agent"].startswith("o365collector/")
    assert request.body.startswith(
        b'{"create":{"_index":"o365-audit","_id":"11111111-2222-4333-8444-555555555555:'
        b'00000000-0000-4000-8000-000000000000"}}\n{"CreationTime":'
    )
    assert request.body == bulk_body(records)
    assert es.actions == [({"create": {"_index": INDEX, "_id": doc_id(r)}}, r) for r in records]
    assert es.docs(INDEX) == records
    assert request.json()["errors"] is False


def test_pipeline_is_a_query_parameter(es: BulkServer, make_sink: SinkFactory) -> None:
    make_sink(es, SINK_ELASTICSEARCH_PIPELINE="o365-enrich").send(audit_records(1), CONTEXT)
    (request,) = es.exchanges
    assert request.query == {"pipeline": ["o365-enrich"]}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"Id": "6f5b-guid"}, "t-1:6f5b-guid"),
        ({"Id": 42}, "t-1:42"),
        ({"Id": "x" * 508}, "t-1:" + "x" * 508),
        ({"Id": ""}, None),
        ({"Id": None}, None),
        ({"Id": True}, None),
        ({"Id": {"nested": 1}}, None),
        ({"Id": "x" * 509}, None),  # with the tenant, above the 512 bytes _id allows
        ({"Operation": "NoId"}, None),
    ],
)
def test_document_id_is_the_record_id_scoped_by_tenant(record: dict[str, Any], expected: str | None) -> None:
    assert document_id(record, "t-1") == expected


def test_records_without_an_id_get_an_id_from_the_cluster(es: BulkServer, make_sink: SinkFactory) -> None:
    record = {"Operation": "NoId", "Workload": "Exchange"}
    make_sink(es).send([record], CONTEXT)
    ((action, source),) = es.actions
    assert action == {"create": {"_index": INDEX}}
    assert source == record
    assert es.docs(INDEX) == [record]


def test_values_arrive_exactly(es: BulkServer, make_sink: SinkFactory) -> None:
    records = [{"Id": "v", "Big": 2**64 + 1, "Name": "Zoë 🙂 監査", "F": 0.1, "Nested": {"L": [1, {"x": None}]}}]
    make_sink(es).send(records, CONTEXT)
    assert es.docs(INDEX) == records


def test_no_records_no_request(es: BulkServer, make_sink: SinkFactory) -> None:
    make_sink(es).send([], CONTEXT)
    assert es.exchanges == []


# -- batching and idempotency


def test_batches_respect_record_and_byte_limits(es: BulkServer, make_sink: SinkFactory) -> None:
    records = audit_records(25)
    make_sink(es, SINK_ELASTICSEARCH_BATCH_MAX_RECORDS="10").send(records, CONTEXT)
    assert [e.body.count(b"\n") // 2 for e in es.exchanges] == [10, 10, 5]

    padded = audit_records(30, start=100, pad=200)
    before = len(es.exchanges)
    make_sink(es, SINK_ELASTICSEARCH_BATCH_MAX_BYTES="2048").send(padded, CONTEXT)
    sent = es.exchanges[before:]
    assert len(sent) > 1
    assert all(len(e.body) <= 2048 for e in sent)
    assert es.docs(INDEX) == records + padded


def test_a_redelivered_blob_adds_no_duplicates(es: BulkServer, make_sink: SinkFactory) -> None:
    """The second create of each Id answers 409, which counts as delivered: the sink returns normally."""
    records = audit_records(4)
    sink = make_sink(es)
    sink.send(records, CONTEXT)
    sink.send(records, CONTEXT)
    second = es.exchanges[-1].json()
    assert second["errors"] is True
    assert {item["create"]["status"] for item in second["items"]} == {409}
    assert es.docs(INDEX) == records


def test_another_tenants_record_with_the_same_id_is_stored_not_swallowed(
    es: BulkServer, make_sink: SinkFactory
) -> None:
    """A 409 counts as delivered only for this tenant's record: the same Id from another tenant is created,
    and a redelivery of either blob still stores nothing twice."""
    other = BlobContext("99999999-8888-4777-8666-555555555555", CONTEXT.content_type, "other-blob", NOW)
    ours = audit_records(3)
    theirs = [{**record, "UserId": "someone@fabrikam.example", "Seq": 100 + n} for n, record in enumerate(ours)]
    sink = make_sink(es)
    sink.send(ours, CONTEXT)
    sink.send(theirs, other)  # same Ids, another tenant
    sink.send(theirs, other)  # redelivered
    sink.send(ours, CONTEXT)  # redelivered

    assert es.docs(INDEX) == ours + theirs
    statuses = [[item["create"]["status"] for item in e.json()["items"]] for e in es.exchanges_to("/_bulk")]
    assert statuses == [[201] * 3, [201] * 3, [409] * 3, [409] * 3]


# -- per-item answers


def test_throttled_items_alone_are_sent_again(es: BulkServer, make_sink: SinkFactory, delays: list[float]) -> None:
    records = audit_records(5)
    es.throttle_items(2)  # the first two documents of the first request get 429
    make_sink(es).send(records, CONTEXT)

    first, second = es.exchanges
    assert [item["create"]["status"] for item in first.json()["items"]] == [429, 429, 201, 201, 201]
    assert second.body == bulk_body(records[:2])
    assert len(delays) == 1
    assert sorted(d["Seq"] for d in es.docs(INDEX)) == [0, 1, 2, 3, 4]
    assert len(es.docs(INDEX)) == 5


def test_item_throttling_beyond_the_attempts_is_transient(es: BulkServer, make_sink: SinkFactory) -> None:
    es.throttle_items(100)
    with pytest.raises(SinkTransientError, match="retry 3 of 3 documents") as caught:
        make_sink(es, SINK_ELASTICSEARCH_MAX_ATTEMPTS="3").send(audit_records(3), CONTEXT)
    assert len(es.exchanges) == 3
    assert "\n" not in str(caught.value)


def test_a_mapping_error_is_permanent_and_names_index_type_and_reason(
    es: BulkServer, make_sink: SinkFactory, delays: list[float]
) -> None:
    es.map_field("Note", "long")  # every record's Note is text
    with pytest.raises(SinkPermanentError) as caught:
        make_sink(es).send(audit_records(5), CONTEXT)
    message = str(caught.value)
    assert "refused 5 of 5 documents for index 'o365-audit' (SINK_ELASTICSEARCH_INDEX)" in message
    assert "document_parsing_exception (400)" in message
    assert "failed to parse field [Note] of type [long]" in message
    assert f"for _id {CONTEXT.tenant_id}:00000000-0000-4000-8000-000000000000" in message
    assert "and 2 more" in message
    assert MARKER not in message  # the field preview Elasticsearch quotes is cut
    assert len(es.exchanges) == 1
    assert delays == []


def test_a_refused_item_among_accepted_ones_still_fails_the_send(es: BulkServer, make_sink: SinkFactory) -> None:
    """Never a silent drop: one refused document fails the blob although its neighbours were stored."""
    es.map_field("Seq")
    records = audit_records(3)
    records[1]["Seq"] = "not-a-number"
    with pytest.raises(SinkPermanentError, match="refused 1 of 3 documents"):
        make_sink(es).send(records, CONTEXT)
    assert [d["Seq"] for d in es.docs(INDEX)] == [0, 2]


def test_a_missing_index_without_auto_create_is_permanent(make_sink: SinkFactory) -> None:
    with (
        BulkServer(api_key=API_KEY, auto_create=False) as server,
        pytest.raises(SinkPermanentError, match="index_not_found_exception") as caught,
    ):
        make_sink(server).send(audit_records(1), CONTEXT)
    assert "allow automatic index creation" in str(caught.value)


def test_a_key_without_write_privilege_is_permanent(es: BulkServer, make_sink: SinkFactory) -> None:
    es.forbid_writes()
    with pytest.raises(SinkPermanentError, match="create_doc") as caught:
        make_sink(es).send(audit_records(1), CONTEXT)
    assert "SINK_ELASTICSEARCH_API_KEY" in str(caught.value)
    assert API_KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("reason", "cleaned"),
    [
        (
            "failed to parse field [Seq] of type [long] in document with id 'a'. Preview of field's value: 'secret'",
            "failed to parse field [Seq] of type [long] in document with id 'a'",
        ),
        ('Unexpected character (\'x\'): was expecting comma\n at [Source: (byte[])"{"a":secret}"', "Unexpected"),
        ("  many   spaces\nand lines ", "many spaces and lines"),
    ],
)
def test_reasons_lose_quoted_values(reason: str, cleaned: str) -> None:
    assert clean_reason(reason).startswith(cleaned)
    assert "secret" not in clean_reason(reason)


def test_item_errors_make_a_short_message_whatever_the_cluster_says(es: BulkServer, make_sink: SinkFactory) -> None:
    """Error types, reasons and ids come from the cluster: each is cut short, so the message stays short."""
    es.map_field("Note", "long" + "g" * 3000)  # the fake puts the type in the reason: a very long reason
    with pytest.raises(SinkPermanentError) as caught:
        make_sink(es).send(audit_records(5), CONTEXT)
    message = str(caught.value)
    assert "document_parsing_exception (400)" in message
    assert "and 2 more" in message
    assert len(message) < 1000


def test_request_errors_never_echo_the_credentials(es: BulkServer, make_sink: SinkFactory) -> None:
    """A cluster or proxy that echoes the request headers in its error: a short excerpt without the key."""
    echoed = f"bad header\nAuthorization: ApiKey {API_KEY}\x1b " + "q" * 5000
    es.fail_next(1, 400, {"error": {"type": "illegal_argument_exception" + "x" * 3000, "reason": echoed}})
    with pytest.raises(SinkPermanentError) as caught:
        make_sink(es).send(audit_records(1), CONTEXT)
    message = str(caught.value)
    assert "illegal_argument_exception" in message
    assert "bad header" in message
    assert API_KEY not in message
    assert "\x1b" not in message
    assert "\n" not in message
    assert len(message) < 500


# -- request-level answers


def test_503_is_retried_with_retry_after(es: BulkServer, make_sink: SinkFactory, delays: list[float]) -> None:
    records = audit_records(3)
    es.fail_next(
        2,
        503,
        {"error": {"type": "unavailable_shards_exception", "reason": "primary shard is not active"}},
        retry_after=4,
    )
    make_sink(es).send(records, CONTEXT)
    assert [e.status for e in es.exchanges] == [503, 503, 200]
    assert delays == [4.0, 4.0]
    assert es.docs(INDEX) == records


def test_persistent_429_is_transient_after_max_attempts(es: BulkServer, make_sink: SinkFactory) -> None:
    es.fail_next(10, 429, {"error": {"type": "es_rejected_execution_exception", "reason": "rejected"}, "status": 429})
    with pytest.raises(SinkTransientError, match="429: es_rejected_execution_exception"):
        make_sink(es, SINK_ELASTICSEARCH_MAX_ATTEMPTS="2").send(audit_records(1), CONTEXT)
    assert len(es.exchanges) == 2


def test_wrong_api_key_is_permanent_and_names_the_setting(
    es: BulkServer, make_sink: SinkFactory, delays: list[float]
) -> None:
    wrong = base64.b64encode(b"id:wrong-secret").decode()
    with pytest.raises(SinkPermanentError, match="check SINK_ELASTICSEARCH_API_KEY") as caught:
        make_sink(es, SINK_ELASTICSEARCH_API_KEY=wrong).send(audit_records(1), CONTEXT)
    assert wrong not in str(caught.value)
    assert len(es.exchanges) == 1
    assert delays == []


def test_basic_authentication(make_sink: SinkFactory) -> None:
    with BulkServer(basic=("collector", "pa55-w0rd"), indexes={INDEX}) as server:
        make_sink(server, SINK_ELASTICSEARCH_USERNAME="collector", SINK_ELASTICSEARCH_PASSWORD="pa55-w0rd").send(
            audit_records(1), CONTEXT
        )
        assert (
            server.exchanges[0].headers["authorization"] == "Basic " + base64.b64encode(b"collector:pa55-w0rd").decode()
        )
        sink = make_sink(server, SINK_ELASTICSEARCH_USERNAME="collector", SINK_ELASTICSEARCH_PASSWORD="wrong-pw")
        with pytest.raises(SinkPermanentError, match="SINK_ELASTICSEARCH_USERNAME / SINK_ELASTICSEARCH_PASSWORD"):
            sink.send(audit_records(1), CONTEXT)


def test_an_id_and_key_pair_is_encoded(make_sink: SinkFactory) -> None:
    """Elasticsearch's create-API-key answer has id and api_key; 'id:api_key' works as well as 'encoded'."""
    pair = "VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw"
    with BulkServer(api_key=base64.b64encode(pair.encode()).decode(), indexes={INDEX}) as server:
        make_sink(server, SINK_ELASTICSEARCH_API_KEY=pair).send(audit_records(1), CONTEXT)
        assert server.exchanges[0].status == 200


def test_413_names_the_batch_size_setting(es: BulkServer, make_sink: SinkFactory) -> None:
    es.fail_next(1, 413, b"")
    with pytest.raises(SinkPermanentError, match="SINK_ELASTICSEARCH_BATCH_MAX_BYTES"):
        make_sink(es).send(audit_records(1), CONTEXT)


def test_a_receiver_that_is_not_elasticsearch_is_permanent(make_sink: SinkFactory) -> None:
    with HttpReceiver() as receiver, pytest.raises(SinkPermanentError, match="not with a _bulk response"):
        make_sink(receiver.base_url).send(audit_records(2), CONTEXT)


def test_cluster_down_is_transient_and_names_the_url_setting(make_sink: SinkFactory, delays: list[float]) -> None:
    with refusing_url("https") as url, pytest.raises(SinkTransientError, match=r"refused.*SINK_ELASTICSEARCH_URL"):
        make_sink(url.removesuffix("/ingest"), SINK_ELASTICSEARCH_MAX_ATTEMPTS="2").send(audit_records(1), CONTEXT)
    assert len(delays) == 1


# -- check()


def test_check_reads_cluster_info_and_the_index_without_writing(es: BulkServer, make_sink: SinkFactory) -> None:
    make_sink(es).check()
    assert [(e.method, e.path, e.status) for e in es.exchanges] == [("GET", "/", 200), ("HEAD", f"/{INDEX}", 200)]
    assert es.actions == []


def test_check_passes_for_a_missing_index_that_auto_create_will_make(
    make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with BulkServer(api_key=API_KEY) as server, caplog.at_level(logging.INFO):
        make_sink(server).check()
        assert server.exchanges[-1].status == 404
    assert "automatic index creation" in caplog.text


def test_check_passes_for_an_ingest_only_key(make_sink: SinkFactory) -> None:
    """403 on GET / means the key lacks 'monitor', not that it is wrong: writing may still work."""
    with BulkServer(api_key=API_KEY, indexes={INDEX}, monitor_privilege=False) as server:
        make_sink(server).check()
        assert server.exchanges[0].status == 403


def test_check_reports_wrong_credentials_on_one_line(es: BulkServer, make_sink: SinkFactory) -> None:
    with pytest.raises(SinkPermanentError, match="refused our credentials") as caught:
        make_sink(es, SINK_ELASTICSEARCH_API_KEY="d3Jvbmc6a2V5").check()
    assert "SINK_ELASTICSEARCH_API_KEY" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert len(es.exchanges) == 1


def test_check_reports_an_address_that_is_not_a_cluster(make_sink: SinkFactory) -> None:
    """Pointed at Splunk's HEC port by mistake: GET / answers 404."""
    with HecServer("6b2a1c1e-3f7d-4d0e-9d55-0a1b2c3d4e5f") as other:
        sink = make_sink(other)
        with pytest.raises(SinkPermanentError, match=r"answered 404.*check SINK_ELASTICSEARCH_URL"):
            sink.check()


def test_check_reports_an_unhealthy_cluster_as_transient(es: BulkServer, make_sink: SinkFactory) -> None:
    es.fail_next(1, 503, {"error": {"type": "master_not_discovered_exception", "reason": None}, "status": 503})
    with pytest.raises(SinkTransientError, match="master_not_discovered_exception"):
        make_sink(es).check()


def test_check_reports_an_untrusted_certificate(es: BulkServer, make_sink: SinkFactory) -> None:
    with pytest.raises(SinkPermanentError, match=r"TLS verification.*REQUESTS_CA_BUNDLE"):
        make_sink(es.base_url, session=requests.Session()).check()
    assert es.exchanges == []


def test_https_trusted_through_requests_ca_bundle(
    es: BulkServer, make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", es.ca_file)
    sink = make_sink(es.base_url, session=requests.Session())
    sink.check()
    sink.send(audit_records(2), CONTEXT)
    assert len(es.docs(INDEX)) == 2


# -- settings


def test_settings_defaults() -> None:
    settings = ElasticsearchSinkSettings.from_env(
        {"SINK_ELASTICSEARCH_URL": "https://es.example.com:9200/", "SINK_ELASTICSEARCH_INDEX": "logs-o365-default"}
    )
    assert settings.url == "https://es.example.com:9200"
    assert settings.index == "logs-o365-default"
    assert (settings.api_key, settings.username, settings.password, settings.pipeline) == (None, None, None, None)
    assert (settings.shape, settings.preserve_original) == ("raw", False)  # not the integration's data stream
    assert (settings.batch_max_bytes, settings.batch_max_records) == (5 * 1024 * 1024, 2000)
    assert (settings.timeout_seconds, settings.max_attempts, settings.max_retry_seconds) == (60.0, 5, 60.0)
    assert settings.name == "elasticsearch"


SETTING_ERRORS = [
    ("SINK_ELASTICSEARCH_URL", {"SINK_ELASTICSEARCH_URL": ""}),
    ("SINK_ELASTICSEARCH_URL", {"SINK_ELASTICSEARCH_URL": "http://es.example.com:9200"}),
    ("SINK_ELASTICSEARCH_URL", {"SINK_ELASTICSEARCH_URL": "https://elastic:changeme@es.example.com:9200"}),
    ("SINK_ELASTICSEARCH_URL", {"SINK_ELASTICSEARCH_URL": "https://es.example.com:9200/?pretty"}),
    ("SINK_ELASTICSEARCH_INDEX", {"SINK_ELASTICSEARCH_INDEX": ""}),
    ("SINK_ELASTICSEARCH_INDEX", {"SINK_ELASTICSEARCH_INDEX": "O365"}),
    ("SINK_ELASTICSEARCH_INDEX", {"SINK_ELASTICSEARCH_INDEX": "_o365"}),
    ("SINK_ELASTICSEARCH_INDEX", {"SINK_ELASTICSEARCH_INDEX": "o365,other"}),
    ("SINK_ELASTICSEARCH_INDEX", {"SINK_ELASTICSEARCH_INDEX": "o365*"}),
    ("SINK_ELASTICSEARCH_API_KEY", {"SINK_ELASTICSEARCH_API_KEY": "ApiKey abc"}),
    (
        "SINK_ELASTICSEARCH_API_KEY",
        {"SINK_ELASTICSEARCH_API_KEY": "abc", "SINK_ELASTICSEARCH_USERNAME": "u", "SINK_ELASTICSEARCH_PASSWORD": "p"},
    ),
    ("SINK_ELASTICSEARCH_PASSWORD", {"SINK_ELASTICSEARCH_USERNAME": "collector"}),
    ("SINK_ELASTICSEARCH_USERNAME", {"SINK_ELASTICSEARCH_PASSWORD": "secret-pw"}),
    ("SINK_ELASTICSEARCH_USERNAME", {"SINK_ELASTICSEARCH_USERNAME": "a:b", "SINK_ELASTICSEARCH_PASSWORD": "p"}),
    ("SINK_ELASTICSEARCH_PIPELINE", {"SINK_ELASTICSEARCH_PIPELINE": "my pipeline"}),
    ("SINK_ELASTICSEARCH_BATCH_MAX_BYTES", {"SINK_ELASTICSEARCH_BATCH_MAX_BYTES": "100"}),
    ("SINK_ELASTICSEARCH_BATCH_MAX_RECORDS", {"SINK_ELASTICSEARCH_BATCH_MAX_RECORDS": "0"}),
    ("SINK_ELASTICSEARCH_TIMEOUT_SECONDS", {"SINK_ELASTICSEARCH_TIMEOUT_SECONDS": "soon"}),
    ("SINK_ELASTICSEARCH_MAX_ATTEMPTS", {"SINK_ELASTICSEARCH_MAX_ATTEMPTS": "0"}),
    ("SINK_ELASTICSEARCH_MAX_RETRY_SECONDS", {"SINK_ELASTICSEARCH_MAX_RETRY_SECONDS": "-5"}),
]


@pytest.mark.parametrize(("setting", "env"), SETTING_ERRORS)
def test_settings_errors_name_the_setting(setting: str, env: dict[str, str]) -> None:
    full = {"SINK_ELASTICSEARCH_URL": "https://es.example.com:9200", "SINK_ELASTICSEARCH_INDEX": INDEX, **env}
    with pytest.raises(ConfigError) as caught:
        ElasticsearchSinkSettings.from_env(full)
    assert caught.value.setting == setting
    assert str(caught.value).startswith(f"{setting}: ")
    for secret in ("changeme", "secret-pw"):
        assert secret not in str(caught.value)


def test_settings_repr_hides_secrets() -> None:
    settings = ElasticsearchSinkSettings.from_env(
        {
            "SINK_ELASTICSEARCH_URL": "https://es.example.com",
            "SINK_ELASTICSEARCH_INDEX": INDEX,
            "SINK_ELASTICSEARCH_USERNAME": "collector",
            "SINK_ELASTICSEARCH_PASSWORD": "secret-pw",
        }
    )
    assert "secret-pw" not in repr(settings)
    keyed = ElasticsearchSinkSettings.from_env(
        {
            "SINK_ELASTICSEARCH_URL": "https://es.example.com",
            "SINK_ELASTICSEARCH_INDEX": INDEX,
            "SINK_ELASTICSEARCH_API_KEY": API_KEY,
        }
    )
    assert API_KEY not in repr(keyed)


def test_registry_builds_the_elasticsearch_sink() -> None:
    env = {
        "SINK_TYPE": "elasticsearch",
        "SINK_ELASTICSEARCH_URL": "https://es.example.com",
        "SINK_ELASTICSEARCH_INDEX": INDEX,
    }
    (settings,) = parse_sink_settings(env)
    assert isinstance(settings, ElasticsearchSinkSettings)
    sink = settings.create()
    try:
        assert isinstance(sink, ElasticsearchSink)
        assert sink.name == "elasticsearch"
    finally:
        sink.close()
    with pytest.raises(ConfigError) as caught:
        parse_sink_settings({"SINK_TYPE": "elasticsearch", "SINK_ELASTICSEARCH_URL": "https://es.example.com"})
    assert caught.value.setting == "SINK_ELASTICSEARCH_INDEX"


# -- secrets and bodies stay out of logs


def test_credentials_and_records_never_appear_in_logs(
    es: BulkServer, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = make_sink(es)
    bad = make_sink(es, SINK_ELASTICSEARCH_API_KEY="d3Jvbmc6a2V5")
    errors: list[str] = []

    good.check()
    es.throttle_items(1)
    good.send(audit_records(3, pad=100), CONTEXT)
    for action in (bad.check, lambda: bad.send(audit_records(1), CONTEXT)):
        with pytest.raises(SinkPermanentError) as caught:
            action()
        errors.append(str(caught.value))
    es.map_field("Note")
    with pytest.raises(SinkPermanentError) as refused:
        good.send(audit_records(1, start=50), CONTEXT)
    errors.append(str(refused.value))

    assert "retries" in caplog.text  # something was logged, so the checks below can fail
    for text in (caplog.text, *errors):
        assert API_KEY not in text
        assert "d3Jvbmc6a2V5" not in text
        assert MARKER not in text


# -- end to end


def test_an_outage_longer_than_the_retries_loses_nothing_and_stores_each_record_once(
    simulator: Simulator,
    make_collector: Callable[..., Collector],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The cluster answers 503 to more requests than one delivery retries; the queue redelivers."""
    tenant = TENANT.tenant_id
    end = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    for content_type in ("Audit.AzureActiveDirectory", "Audit.General"):
        simulator.generate(
            tenant, content_type, end - dt.timedelta(hours=6), end,
            blob_every=dt.timedelta(minutes=60), records_per_blob=(1, 12),
        )  # fmt: skip
    served = Counter(r["Id"] for b in simulator.blobs(tenant) if not b.expired for r in b.records)
    with BulkServer(api_key=API_KEY) as server:
        bundle = tmp_path / "ca-bundle.pem"
        bundle.write_text(Path(simulator.ca_file).read_text() + Path(server.ca_file).read_text())
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))  # trusts the simulator and the cluster
        outage = 5  # two deliveries of two attempts each fail, then the cluster is back
        unavailable = {"error": {"type": "cluster_block_exception", "reason": "blocked"}, "status": 503}
        server.fail_next(outage, 503, unavailable, retry_after=0)
        collector = make_collector(
            SINK_TYPE="elasticsearch",
            SINK_ELASTICSEARCH_URL=server.base_url,
            SINK_ELASTICSEARCH_INDEX=INDEX,
            SINK_ELASTICSEARCH_API_KEY=API_KEY,
            SINK_ELASTICSEARCH_MAX_ATTEMPTS="2",
            O365_CONTENT_TYPES="Audit.AzureActiveDirectory,Audit.General",
        )
        assert run_once(collector) == 0
        created = Counter(
            item["create"]["_id"]
            for e in server.exchanges_to("/_bulk")
            if e.status == 200
            for item in e.json()["items"]
            if item["create"]["status"] == 201
        )
        down = [e for e in server.exchanges if e.status == 503]
        stored = server.docs(INDEX)
    assert len(down) == outage
    assert created == Counter({f"{tenant}:{record_id}": n for record_id, n in served.items()})
    assert max(created.values()) == 1
    assert len(served) > 10
    by_id = {r["Id"]: r for b in simulator.blobs(tenant) for r in b.records}
    assert all(doc == by_id[doc["Id"]] for doc in stored)
    assert len(stored) == len(served)
