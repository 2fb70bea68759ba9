"""Edges of the HTTP-based sinks that the module tests leave open: batches cut from served bytes at their exact
limits, URL settings (port 0, a bare '?' or '#'), endpoints of IPv6 hosts, and more (see each test)."""

from __future__ import annotations

import base64
import datetime as dt
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
import requests

from o365collector.content import ContentRecords
from o365collector.errors import ApiPermanentError, ConfigError, SinkPermanentError, SinkTransientError
from o365collector.models import BlobContext
from o365collector.redaction import redact, register_secret
from o365collector.sinks.batching import NDJSON, as_is, encoded, iter_batches, iter_served_batches
from o365collector.sinks.elasticsearch import ElasticsearchSink, ElasticsearchSinkSettings
from o365collector.sinks.http import HttpSink, HttpSinkSettings
from o365collector.sinks.httpcore import endpoint
from o365collector.sources.catalog import SIGNINS_STREAM
from tests.backends import BulkServer
from tests.receivers import HttpReceiver

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
CONTEXT = BlobContext(
    tenant_id="11111111-2222-4333-8444-555555555555",
    content_type="Audit.Exchange",
    content_id="20260301120000.000000000$20260301120000.000000000$audit_exchange$Audit_Exchange$emea0026",
    content_created=NOW,
)
RECORDS: list[dict[str, Any]] = [
    {"CreationTime": "2026-03-01T11:59:58", "Id": f"00000000-0000-4000-8000-{index:012d}", "Seq": index}
    for index in range(3)
]


@pytest.fixture
def delays() -> list[float]:
    """What the sinks would have slept between attempts (they never really sleep here)."""
    return []


@pytest.fixture
def http_sink(delays: list[float]) -> Iterator[Callable[[HttpSinkSettings], HttpSink]]:
    made: list[HttpSink] = []

    def factory(settings: HttpSinkSettings) -> HttpSink:
        sink = HttpSink(settings, sleep=delays.append, clock=NOW.timestamp)
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        sink.close()


def served(count: int) -> ContentRecords:
    """``count`` records of 29 bytes each, held as the API served them."""
    records = [{"CreationTime": "t", "Id": f"{index:x}"} for index in range(count)]
    assert all(len(orjson.dumps(record)) == 29 for record in records)
    held = ContentRecords.from_body(orjson.dumps(records), "blob")
    assert held.raw
    return held


# -- batching


@pytest.mark.parametrize(
    ("count", "max_bytes", "max_records", "expected"),
    [
        (3, 90, 10, [3]),  # 3 x (29 + 1) = 90: exactly at the limit, one batch
        (3, 89, 10, [2, 1]),  # one byte short
        (5, 10_000, 2, [2, 2, 1]),
        (3, 10_000, 1, [1, 1, 1]),
        (3, 20, 10, [1, 1, 1]),  # every record alone, each oversize
    ],
)
def test_served_batches_at_their_exact_limits(
    count: int, max_bytes: int, max_records: int, expected: list[int]
) -> None:
    """Cut from the served bytes, batches fill up to the byte and record limits exactly, as serialized ones do."""
    held = served(count)
    batches = list(iter_served_batches(held, framing=NDJSON, max_bytes=max_bytes, max_records=max_records))
    assert [batch.count for batch in batches] == expected
    assert batches == list(
        iter_batches(encoded(held), framing=NDJSON, max_bytes=max_bytes, max_records=max_records, serialize=as_is)
    )
    assert [batch.oversize for batch in batches] == [len(batch.body) > max_bytes for batch in batches]


def test_a_served_record_exactly_at_the_limit_is_not_oversize() -> None:
    (batch,) = iter_served_batches(served(1), framing=NDJSON, max_bytes=30, max_records=10)
    assert len(batch.body) == 30
    assert not batch.oversize


@pytest.mark.parametrize(("max_bytes", "max_records"), [(0, 10), (10, 0)])
def test_served_batch_limits_must_be_positive(max_bytes: int, max_records: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        list(iter_served_batches(served(2), framing=NDJSON, max_bytes=max_bytes, max_records=max_records))


def test_parsed_records_are_serialized_not_read_as_served() -> None:
    records: list[dict[str, Any]] = [{"CreationTime": "t", "Id": "a"}]
    held = ContentRecords.from_records(records)
    assert list(encoded(held)) == [orjson.dumps(records[0])]


# -- URL settings and endpoints


def test_port_zero_is_refused_and_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="invalid port") as caught:
        HttpSinkSettings.from_env({"SINK_URL": "https://siem.example.com:0/ingest"})
    assert caught.value.setting == "SINK_URL"


@pytest.mark.parametrize("url", ["https://es.example.com:9200?", "https://es.example.com:9200/#"])
def test_a_base_url_with_an_empty_query_or_fragment_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="query string or fragment") as caught:
        ElasticsearchSinkSettings.from_env({"SINK_ELASTICSEARCH_URL": url, "SINK_ELASTICSEARCH_INDEX": "o365"})
    assert caught.value.setting == "SINK_ELASTICSEARCH_URL"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://[::1]:9200/prefix?key=s3cret", "https://[::1]:9200"),
        ("http://[::1]/x", "http://[::1]"),
        ("https://user:pw@siem.example.com:8443/in?k=v", "https://siem.example.com:8443"),
    ],
)
def test_endpoint_shows_scheme_host_and_port_only(url: str, expected: str) -> None:
    assert endpoint(url) == expected


# -- the http sink: status classes, and what a peer's words may carry into a message


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_transient_statuses_are_retried_then_delivered_once(
    status: int, receiver: HttpReceiver, http_sink: Callable[[HttpSinkSettings], HttpSink], delays: list[float]
) -> None:
    receiver.fail_next(1, status=status)
    http_sink(HttpSinkSettings(url=receiver.url)).send(RECORDS, CONTEXT)
    assert [request.status for request in receiver.requests] == [status, 200]
    assert receiver.records == RECORDS
    assert len(delays) == 1


def test_header_values_we_sent_are_scrubbed_from_a_peers_words_even_when_unregistered(
    receiver: HttpReceiver, http_sink: Callable[[HttpSinkSettings], HttpSink]
) -> None:
    """Settings built in code register nothing: the values of the headers sent (4 characters or more, and the
    credential after a scheme word) are still removed, while the plain headers' values stay readable."""
    headers = (("X-Api-Key", "k9Zq"), ("X-Auth", "Token zq81-unregistered-7c"), ("X-Tiny", "abc"))
    receiver.fail_next(
        1, status=400, body="refused k9Zq and zq81-unregistered-7c; abc; type application/x-ndjson not supported"
    )
    with pytest.raises(SinkPermanentError) as caught:
        http_sink(HttpSinkSettings(url=receiver.url, headers=headers)).send(RECORDS, CONTEXT)
    message = str(caught.value)
    assert "k9Zq" not in message
    assert "zq81-unregistered-7c" not in message
    assert "refused *** and ***; abc;" in message  # too short to be a secret: kept, as the text around it
    assert "application/x-ndjson" in message


def test_registered_secrets_are_scrubbed_from_a_peers_words(
    receiver: HttpReceiver, http_sink: Callable[[HttpSinkSettings], HttpSink]
) -> None:
    """A secret that was never sent (another sink's key, say) is still removed from what a peer says."""
    register_secret("never-sent-secret-4e1a")
    receiver.fail_next(1, status=400, body="bad request near never-sent-secret-4e1a")
    with pytest.raises(SinkPermanentError) as caught:
        http_sink(HttpSinkSettings(url=receiver.url)).send(RECORDS, CONTEXT)
    assert "never-sent-secret-4e1a" not in str(caught.value)
    assert "bad request near" in str(caught.value)


def test_a_cut_tls_handshake_is_transient(
    receiver: HttpReceiver, http_sink: Callable[[HttpSinkSettings], HttpSink], delays: list[float]
) -> None:
    """TLS spoken to a plain-HTTP port: the handshake fails without any certificate verdict, so it may work later."""
    url = receiver.url.replace("http://", "https://")
    with pytest.raises(SinkTransientError, match=r"TLS handshake with https://127\.0\.0\.1:") as caught:
        http_sink(HttpSinkSettings(url=url, max_attempts=2)).send(RECORDS, CONTEXT)
    assert "/ingest" not in str(caught.value)
    assert len(delays) == 1


def test_a_request_that_cannot_be_built_is_permanent_and_not_retried(
    receiver: HttpReceiver, http_sink: Callable[[HttpSinkSettings], HttpSink], delays: list[float]
) -> None:
    """Settings made in code skip from_env's checks: a header value with a line break fails before sending."""
    settings = HttpSinkSettings(url=receiver.url, headers=(("X-Bad", "one\ntwo"),))
    with pytest.raises(SinkPermanentError, match=r"could not be made \(InvalidHeader\)"):
        http_sink(settings).send(RECORDS, CONTEXT)
    assert delays == []
    assert receiver.requests == []


def test_a_body_broken_mid_answer_is_transient(http_sink: Callable[[HttpSinkSettings], HttpSink]) -> None:
    """A peer that starts a chunked answer and then sends garbage (ChunkedEncodingError): sending again may work."""
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def broken_answer() -> None:
            connection, _ = listener.accept()
            with connection, connection.makefile("rb") as stream:
                length = 0
                for line in iter(stream.readline, b"\r\n"):  # the request's head, then its body
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                stream.read(length)
                connection.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz-not-a-size\r\n")

        peer = threading.Thread(target=broken_answer)
        peer.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/ingest"
        with pytest.raises(SinkTransientError, match=r"connection to http://127\.0\.0\.1:"):
            http_sink(HttpSinkSettings(url=url, max_attempts=1)).send(RECORDS, CONTEXT)
        peer.join()


def test_extra_header_values_are_kept_out_of_every_message() -> None:
    """SINK_HTTP_HEADERS values are often keys: once parsed, any text is redacted of them, not only the sink's."""
    HttpSinkSettings.from_env(
        {"SINK_URL": "https://siem.example.com", "SINK_HTTP_HEADERS": '{"X-Api-Key": "hdr-3f9a-key"}'}
    )
    assert redact("a proxy quoted hdr-3f9a-key back") == "a proxy quoted *** back"


@pytest.mark.parametrize("value", [" padded", "padded ", "\tpadded"])
def test_a_header_value_with_surrounding_spaces_is_refused(value: str) -> None:
    headers = orjson.dumps({"X-Api-Key": value}).decode()
    with pytest.raises(ConfigError, match="without surrounding spaces") as caught:
        HttpSinkSettings.from_env({"SINK_URL": "https://siem.example.com", "SINK_HTTP_HEADERS": headers})
    assert caught.value.setting == "SINK_HTTP_HEADERS"


def test_a_malformed_blob_of_a_single_batch_sends_nothing(
    receiver: HttpReceiver, http_sink: Callable[[HttpSinkSettings], HttpSink]
) -> None:
    """The one batch of a small blob still waits for the background validation, and is dropped when it fails."""
    body = orjson.dumps(RECORDS).replace(b'"Seq":1', b'"Seq":"\xff"')
    with ThreadPoolExecutor(1) as pool:
        held = ContentRecords.from_body(body, "content blob blob-1", validate_on=pool)
        assert held.draft
        with pytest.raises(ApiPermanentError, match="not valid JSON"):
            http_sink(HttpSinkSettings(url=receiver.url)).send(held, CONTEXT)
    assert receiver.requests == []


def test_403_is_permanent_and_names_the_credential_settings(
    receiver: HttpReceiver, http_sink: Callable[[HttpSinkSettings], HttpSink], delays: list[float]
) -> None:
    receiver.fail_next(1, status=403)
    with pytest.raises(SinkPermanentError, match="refused our credentials"):
        http_sink(HttpSinkSettings(url=receiver.url)).send(RECORDS, CONTEXT)
    assert delays == []


@pytest.mark.parametrize("name", ["Content-Type", "Content-Encoding", "HOST"])
def test_headers_the_sink_sets_cannot_be_overridden_in_any_case(name: str) -> None:
    headers = orjson.dumps({name: "text/plain"}).decode()
    with pytest.raises(ConfigError, match="set by the sink itself"):
        HttpSinkSettings.from_env({"SINK_URL": "https://siem.example.com", "SINK_HTTP_HEADERS": headers})


# -- elasticsearch settings


def es_env(**more: str) -> dict[str, str]:
    return {"SINK_ELASTICSEARCH_URL": "https://es.example.com:9200", "SINK_ELASTICSEARCH_INDEX": "o365", **more}


@pytest.mark.parametrize("index", [".", "..", "a" * 256])
def test_index_names_elasticsearch_refuses_are_refused_at_start_up(index: str) -> None:
    with pytest.raises(ConfigError, match="not a valid index") as caught:
        ElasticsearchSinkSettings.from_env(es_env(SINK_ELASTICSEARCH_INDEX=index))
    assert caught.value.setting == "SINK_ELASTICSEARCH_INDEX"


@pytest.mark.parametrize("index", ["a" * 255, ".o365", "logs-o365.audit-default"])
def test_index_names_at_the_edges_are_accepted(index: str) -> None:
    assert ElasticsearchSinkSettings.from_env(es_env(SINK_ELASTICSEARCH_INDEX=index)).index == index


# -- the elasticsearch sink against the loopback _bulk API

INDEX = "o365-audit"
STREAM = "logs-o365.audit-prod"
ESFactory = Callable[..., ElasticsearchSink]


@pytest.fixture
def es() -> Iterator[BulkServer]:
    with BulkServer(indexes={INDEX, STREAM}) as server:
        yield server


@pytest.fixture
def es_sink(delays: list[float], monkeypatch: pytest.MonkeyPatch) -> Iterator[ESFactory]:
    # requests lets REQUESTS_CA_BUNDLE override a session's verify; sinks here trust the fake per session.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    made: list[ElasticsearchSink] = []

    def factory(server: BulkServer, **env: str) -> ElasticsearchSink:
        session = requests.Session()
        session.verify = server.ca_file
        settings = ElasticsearchSinkSettings.from_env(
            {"SINK_ELASTICSEARCH_URL": server.base_url, "SINK_ELASTICSEARCH_INDEX": INDEX, **env}
        )
        sink = ElasticsearchSink(settings, session=session, sleep=delays.append, clock=NOW.timestamp)
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        sink.close()


def test_an_empty_error_body_leaves_no_dangling_colon(es: BulkServer, es_sink: ESFactory) -> None:
    es.fail_next(1, status=400, body=b"")
    with pytest.raises(SinkPermanentError) as caught:
        es_sink(es).send(RECORDS, CONTEXT)
    assert str(caught.value).endswith("answered 400: the cluster refused the _bulk request")


@pytest.mark.parametrize("encoded", [False, True], ids=["id:key pair", "encoded"])
def test_the_api_key_proper_is_scrubbed_when_a_peer_quotes_it_alone(
    encoded: bool, es: BulkServer, es_sink: ESFactory
) -> None:
    """Neither the pair nor its base64 form is what a peer may quote: the key without its id is kept out too."""
    key = f"keyproper-{'enc' if encoded else 'pair'}-5d0c"
    pair = f"key-id-7:{key}"
    given = base64.b64encode(pair.encode()).decode() if encoded else pair
    es.fail_next(1, status=400, body={"error": {"type": "parse_exception", "reason": f"bad api key [{key}]"}})
    with pytest.raises(SinkPermanentError) as caught:
        es_sink(es, SINK_ELASTICSEARCH_API_KEY=given).send(RECORDS, CONTEXT)
    assert "parse_exception: bad api key [***]" in str(caught.value)


@pytest.mark.parametrize("preserve", [False, True])
def test_the_integration_document_carries_the_data_streams_constants(
    preserve: bool, es: BulkServer, es_sink: ESFactory
) -> None:
    settings = {"SINK_ELASTICSEARCH_INDEX": STREAM, "SINK_ELASTICSEARCH_PRESERVE_ORIGINAL": str(preserve).lower()}
    es_sink(es, **settings).send(RECORDS[:1], CONTEXT)
    ((action, document),) = es.actions
    assert action == {"create": {"_index": STREAM}}
    event = {"module": "o365", "dataset": "o365.audit"}
    expected: dict[str, Any] = {
        "o365audit": RECORDS[0],
        "data_stream": {"type": "logs", "dataset": "o365.audit", "namespace": "prod"},
        "event": {**event, "original": orjson.dumps(RECORDS[0]).decode()} if preserve else event,
    }
    if preserve:
        expected["tags"] = ["preserve_original_event"]
    assert document == expected


def test_the_raw_shape_asked_for_on_the_integrations_stream_sends_the_record_itself(
    es: BulkServer, es_sink: ESFactory
) -> None:
    es_sink(es, SINK_ELASTICSEARCH_INDEX=STREAM, SINK_ELASTICSEARCH_SHAPE="raw").send(RECORDS[:1], CONTEXT)
    ((action, document),) = es.actions
    assert action == {"create": {"_index": STREAM, "_id": f"{CONTEXT.tenant_id}:{RECORDS[0]['Id']}"}}
    assert document == RECORDS[0]


@pytest.mark.parametrize("items", [[], [{"create": {"status": 201}}] * 4], ids=["none", "too many"])
def test_a_bulk_answer_with_the_wrong_number_of_items_is_permanent(
    items: list[Any], es: BulkServer, es_sink: ESFactory
) -> None:
    es.fail_next(1, status=200, body={"took": 1, "errors": True, "items": items})
    with pytest.raises(SinkPermanentError, match=f"with {len(items)} _bulk items for 3 documents"):
        es_sink(es).send(RECORDS, CONTEXT)


def test_a_403_item_of_any_type_says_which_privilege_to_grant(es: BulkServer, es_sink: ESFactory) -> None:
    item = {"create": {"_index": INDEX, "status": 403, "error": {"type": "authorization_exception", "reason": "no"}}}
    es.fail_next(1, status=200, body={"took": 1, "errors": True, "items": [item] * 3})
    with pytest.raises(SinkPermanentError, match="grant the create_doc privilege on 'o365-audit'") as caught:
        es_sink(es, SINK_ELASTICSEARCH_API_KEY="VGhlS2V5SWQ6azN5LTlmMmUtbmV2ZXItaW4tcHJvc2U=").send(RECORDS, CONTEXT)
    assert "SINK_ELASTICSEARCH_API_KEY" in str(caught.value)


def test_a_graph_document_refused_for_lack_of_timestamp_gets_no_integration_hint(es_sink: ESFactory) -> None:
    """Graph documents carry their own @timestamp: the audit integration's assets would not help them."""
    signin = {"id": "66ea54eb-6301-4ee5-be62-ff5a759b0100", "userPrincipalName": "adele@contoso.example"}
    context = BlobContext(CONTEXT.tenant_id, SIGNINS_STREAM, "graph-blob-1", NOW)
    with (
        BulkServer(require_timestamp=True) as strict,
        pytest.raises(SinkPermanentError, match=r"\[@timestamp\] is missing") as caught,
    ):
        es_sink(strict, SINK_ELASTICSEARCH_INDEX=STREAM).send([signin], context)
    assert "integration" not in str(caught.value)


def test_a_request_level_403_names_the_privilege_and_the_index(es: BulkServer, es_sink: ESFactory) -> None:
    es.fail_next(1, status=403, body={"error": {"type": "security_exception", "reason": "action is unauthorized"}})
    with pytest.raises(SinkPermanentError, match="lack a privilege") as caught:
        es_sink(es).send(RECORDS, CONTEXT)
    assert "create_doc on 'o365-audit'" in str(caught.value)
    assert "security_exception: action is unauthorized" in str(caught.value)


def test_check_refuses_a_200_without_cluster_information(es: BulkServer, es_sink: ESFactory) -> None:
    es.fail_next(1, status=200, body={"status": "ok"})
    with pytest.raises(SinkPermanentError, match="not with cluster information"):
        es_sink(es).check()


def test_check_asks_for_the_index_by_its_escaped_name(es_sink: ESFactory) -> None:
    """A '%' in the index name is sent as %25: the cluster is asked about that index, not another."""
    with BulkServer(indexes={"o365%41"}) as server:
        es_sink(server, SINK_ELASTICSEARCH_INDEX="o365%41").check()
        heads = [e for e in server.exchanges if e.method == "HEAD"]
    assert [(e.path, e.status) for e in heads] == [("/o365%41", 200)]


def test_a_refused_items_id_is_cut_short_on_one_line(es: BulkServer, es_sink: ESFactory) -> None:
    bad_id = "line\nbreak-" + "i" * 300
    error = {"type": "document_parsing_exception", "reason": "failed to parse"}
    item = {"create": {"_index": INDEX, "_id": bad_id, "status": 400, "error": error}}
    es.fail_next(1, status=200, body={"took": 1, "errors": True, "items": [item] * 3})
    with pytest.raises(SinkPermanentError, match="for _id line") as caught:
        es_sink(es).send(RECORDS, CONTEXT)
    assert "\n" not in str(caught.value)
    assert "i" * 100 not in str(caught.value)


def test_an_item_whose_status_is_a_boolean_has_no_status(es: BulkServer, es_sink: ESFactory) -> None:
    item = {"create": {"_index": INDEX, "status": True}}
    es.fail_next(1, status=200, body={"took": 1, "errors": True, "items": [item] * 3})
    with pytest.raises(SinkPermanentError, match="a _bulk item without a status"):
        es_sink(es).send(RECORDS, CONTEXT)


def test_an_error_given_as_plain_text_is_quoted(es: BulkServer, es_sink: ESFactory) -> None:
    """Elasticsearch answers some refusals with ``{"error": "<text>", "status": n}``: that text is the reason."""
    es.fail_next(1, status=406, body={"error": "Content-Type header [text/plain] is not supported", "status": 406})
    with pytest.raises(SinkPermanentError) as caught:
        es_sink(es).send(RECORDS, CONTEXT)
    assert str(caught.value).endswith("_bulk request: Content-Type header [text/plain] is not supported")
