"""The generic HTTP sink against a real loopback receiver (plain HTTP and HTTPS): wire format,
batching, retries, failure classification, health check, settings, and secrets kept out of logs."""

from __future__ import annotations

import datetime as dt
import email.utils
import gzip
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import requests

from o365collector.config import Settings
from o365collector.content import ContentRecords
from o365collector.errors import ConfigError, SinkPermanentError, SinkTransientError
from o365collector.models import BlobContext
from o365collector.sinks.batching import serialize
from o365collector.sinks.http import HttpSink, HttpSinkSettings
from o365collector.sinks.registry import parse_sink_settings
from tests.receivers import HttpReceiver, refusing_url

pytestmark = pytest.mark.integration

TOKEN = "tok-7Qz9-never-log-me"
MARKER = "body-marker-5b1f"  # a value inside records: must never reach the logs
NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
CONTEXT = BlobContext(
    tenant_id="11111111-2222-4333-8444-555555555555",
    content_type="Audit.Exchange",
    content_id="20260301120000.000000000$20260301120000.000000000$audit_exchange$Audit_Exchange$emea0026",
    content_created=NOW,
)

SinkFactory = Callable[..., HttpSink]


def audit_records(count: int, *, start: int = 0, pad: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "CreationTime": "2026-03-01T11:59:58",
            "Id": f"00000000-0000-4000-8000-{index:012d}",
            "Operation": "MailItemsAccessed",
            "RecordType": 50,
            "UserId": "adele.vance@contoso.example",
            "Workload": "Exchange",
            "Seq": index,
            "Note": MARKER + "x" * pad,
        }
        for index in range(start, start + count)
    ]


def ndjson(records: list[dict[str, Any]]) -> bytes:
    return b"".join(serialize(record) + b"\n" for record in records)


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as instance:
        yield instance


@pytest.fixture
def tls_receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver(tls=True) as instance:
        yield instance


@pytest.fixture
def delays() -> list[float]:
    """What the sink would have slept between attempts (it never really sleeps in tests)."""
    return []


@pytest.fixture
def make_sink(delays: list[float]) -> Iterator[SinkFactory]:
    made: list[HttpSink] = []

    def factory(url: str, *, session: requests.Session | None = None, **env: str) -> HttpSink:
        settings = HttpSinkSettings.from_env({"SINK_URL": url, **env})
        sink = HttpSink(settings, session=session, sleep=delays.append, clock=NOW.timestamp)
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        sink.close()


@pytest.fixture
def no_ca_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests falls back to its own CA store (which does not trust the receiver)."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


# -- wire format


def test_ndjson_gzip_wire_format_and_routing_headers(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    records = audit_records(3)
    make_sink(receiver.url).send(records, CONTEXT)

    (request,) = receiver.requests
    assert request.method == "POST"
    assert request.path == "/ingest"
    assert request.headers["content-type"] == "application/x-ndjson"
    assert request.headers["content-encoding"] == "gzip"
    assert request.raw_body[:2] == b"\x1f\x8b"
    assert gzip.decompress(request.raw_body) == ndjson(records)
    assert request.headers["x-o365-tenant-id"] == CONTEXT.tenant_id
    assert request.headers["x-o365-content-type"] == "Audit.Exchange"
    assert request.headers["x-o365-content-id"] == CONTEXT.content_id
    assert request.headers["x-o365-batch-index"] == "0"
    assert request.headers["user-agent"].startswith("o365collector/")
    assert "authorization" not in request.headers
    assert receiver.records == records


def test_json_array_without_gzip(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    records = audit_records(2)
    make_sink(receiver.url, SINK_HTTP_FORMAT="JSON", SINK_HTTP_GZIP="false").send(records, CONTEXT)

    (request,) = receiver.requests
    assert request.headers["content-type"] == "application/json"
    assert "content-encoding" not in request.headers
    assert request.raw_body == b"[" + b",".join(serialize(record) for record in records) + b"]"
    assert receiver.records == records


def test_values_arrive_exactly(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    """Big integers, unicode, floats and nesting reach the receiver unchanged."""
    records = [{"Big": 2**64 + 1, "Name": "Zoë 🙂 監査", "F": 0.1, "Nested": {"L": [1, {"x": None}]}, "B": True}]
    make_sink(receiver.url).send(records, CONTEXT)
    assert receiver.records == records
    assert type(receiver.records[0]["B"]) is bool


def test_extra_headers_and_bearer_token_are_sent(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    receiver.require_bearer(TOKEN)
    sink = make_sink(
        receiver.url,
        SINK_HTTP_BEARER_TOKEN=TOKEN,
        SINK_HTTP_HEADERS='{"X-Api-Key": "key-1", "X-Route": "o365"}',
    )
    sink.send(audit_records(1), CONTEXT)

    (request,) = receiver.requests
    assert request.status == 200
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["x-api-key"] == "key-1"
    assert request.headers["x-route"] == "o365"


def test_no_records_no_request(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    make_sink(receiver.url).send([], CONTEXT)
    assert receiver.requests == []


# -- batching


def test_batches_respect_the_record_limit(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    records = audit_records(25)
    make_sink(receiver.url, SINK_HTTP_BATCH_MAX_RECORDS="10").send(records, CONTEXT)

    assert [len(request.records or []) for request in receiver.requests] == [10, 10, 5]
    assert [request.headers["x-o365-batch-index"] for request in receiver.requests] == ["0", "1", "2"]
    assert receiver.records == records


def test_batches_share_one_keep_alive_connection(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    make_sink(receiver.url, SINK_HTTP_BATCH_MAX_RECORDS="2").send(audit_records(6), CONTEXT)
    assert len(receiver.requests) == 3
    assert len({request.client_port for request in receiver.requests}) == 1


def test_batches_respect_the_uncompressed_byte_limit(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    records = audit_records(40, pad=200)
    make_sink(receiver.url, SINK_HTTP_BATCH_MAX_BYTES="2048").send(records, CONTEXT)

    assert len(receiver.requests) > 1
    for request in receiver.requests:
        assert len(request.body) <= 2048
        assert len(request.raw_body) < len(request.body)  # compressed on the wire
    assert receiver.records == records


def test_oversize_record_is_sent_alone_with_a_warning(
    receiver: HttpReceiver, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    records = [*audit_records(2), *audit_records(1, start=2, pad=5000), *audit_records(2, start=3)]
    with caplog.at_level(logging.WARNING):
        make_sink(receiver.url, SINK_HTTP_BATCH_MAX_BYTES="2048").send(records, CONTEXT)

    assert [len(request.records or []) for request in receiver.requests] == [2, 1, 2]
    assert receiver.records == records
    assert "SINK_HTTP_BATCH_MAX_BYTES" in caplog.text


# -- retries


def test_503_is_retried_then_delivered_once(
    receiver: HttpReceiver, make_sink: SinkFactory, delays: list[float]
) -> None:
    records = audit_records(5)
    receiver.fail_next(2, status=503)
    make_sink(receiver.url).send(records, CONTEXT)

    assert [request.status for request in receiver.requests] == [503, 503, 200]
    assert receiver.records == records
    assert len(delays) == 2
    assert all(0 <= delay <= 60 for delay in delays)


def test_429_waits_what_retry_after_says(receiver: HttpReceiver, make_sink: SinkFactory, delays: list[float]) -> None:
    records = audit_records(3)
    receiver.fail_next(2, status=429, retry_after=7)
    make_sink(receiver.url).send(records, CONTEXT)

    assert delays == [7.0, 7.0]
    assert receiver.records == records


def test_retry_after_as_http_date(receiver: HttpReceiver, make_sink: SinkFactory, delays: list[float]) -> None:
    receiver.fail_next(1, status=503, retry_after=email.utils.format_datetime(NOW + dt.timedelta(seconds=30), True))
    make_sink(receiver.url).send(audit_records(1), CONTEXT)
    assert delays == [30.0]


def test_only_the_failed_batch_is_retried(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    """Batches already accepted are not sent again within one send(): no duplicates at the receiver."""
    records = audit_records(30)
    receiver.fail_next(1, status=503, after=1)
    make_sink(receiver.url, SINK_HTTP_BATCH_MAX_RECORDS="10").send(records, CONTEXT)

    assert [request.status for request in receiver.requests] == [200, 503, 200, 200]
    assert [request.headers["x-o365-batch-index"] for request in receiver.requests] == ["0", "1", "1", "2"]
    assert receiver.records == records


def test_timeout_is_retried(receiver: HttpReceiver, delays: list[float]) -> None:
    records = audit_records(2)
    receiver.stall_next(1)
    settings = HttpSinkSettings(url=receiver.url, timeout_seconds=0.3)  # below the 1 s minimum of the setting
    sink = HttpSink(settings, sleep=delays.append)
    try:
        sink.send(records, CONTEXT)
    finally:
        sink.close()
    assert len(delays) == 1
    assert receiver.records == records


def test_timeouts_until_attempts_run_out(receiver: HttpReceiver, delays: list[float]) -> None:
    receiver.stall_next(2)
    sink = HttpSink(HttpSinkSettings(url=receiver.url, timeout_seconds=0.3, max_attempts=2), sleep=delays.append)
    with pytest.raises(SinkTransientError, match="SINK_HTTP_TIMEOUT_SECONDS"):
        sink.send(audit_records(1), CONTEXT)
    sink.close()
    assert receiver.records == []


def test_receiver_down_is_transient_after_bounded_attempts(make_sink: SinkFactory, delays: list[float]) -> None:
    with refusing_url() as url:
        sink = make_sink(url, SINK_HTTP_MAX_ATTEMPTS="3")
        with pytest.raises(SinkTransientError, match="refused") as caught:
            sink.send(audit_records(1), CONTEXT)
    assert len(delays) == 2  # three attempts
    assert "\n" not in str(caught.value)


def test_persistent_503_gives_up_after_max_attempts(
    receiver: HttpReceiver, make_sink: SinkFactory, delays: list[float]
) -> None:
    receiver.refuse(True)
    with pytest.raises(SinkTransientError, match="503"):
        make_sink(receiver.url, SINK_HTTP_MAX_ATTEMPTS="4").send(audit_records(2), CONTEXT)
    assert len(receiver.requests) == 4
    assert len(delays) == 3
    assert receiver.records == []


def test_retry_after_beyond_the_retry_budget_goes_back_to_the_queue(
    receiver: HttpReceiver, make_sink: SinkFactory, delays: list[float]
) -> None:
    """The sink does not wait longer than SINK_HTTP_MAX_RETRY_SECONDS; the error keeps the server's wish."""
    receiver.fail_next(1, status=429, retry_after=120)
    sink = make_sink(receiver.url, SINK_HTTP_MAX_RETRY_SECONDS="60")
    with pytest.raises(SinkTransientError) as caught:
        sink.send(audit_records(1), CONTEXT)
    assert caught.value.retry_after == 120.0
    assert delays == []
    assert len(receiver.requests) == 1


# -- permanent failures


def test_error_text_never_echoes_request_headers(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    """A receiver (or a proxy) that echoes the request in its error page: the message keeps a short excerpt
    without the token or the extra header values."""
    echo = (
        f"400 Bad Request\r\n\x1b[31mAuthorization: Bearer {TOKEN}\r\nX-Api-Key: hunter2-api-key\r\n"
        + "<p>padding</p>" * 500
    )
    receiver.fail_next(1, status=400, body=echo)
    with pytest.raises(SinkPermanentError) as caught:
        make_sink(
            receiver.url, SINK_HTTP_BEARER_TOKEN=TOKEN, SINK_HTTP_HEADERS='{"X-Api-Key": "hunter2-api-key"}'
        ).send(audit_records(1), CONTEXT)
    message = str(caught.value)
    assert "400 Bad Request" in message
    assert TOKEN not in message
    assert "hunter2-api-key" not in message
    assert "\x1b" not in message
    assert "\n" not in message
    assert len(message) < 400


def test_a_peer_echoing_the_request_line_does_not_put_the_url_key_in_the_message(make_sink: SinkFactory) -> None:
    """http.client quotes a malformed status line; a peer that answers with our request line would put the
    URL's path and query (where some receivers take a key) into the message, were it not scrubbed."""
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def echo_request_line() -> None:
            connection, _ = listener.accept()
            with connection, connection.makefile("rb") as stream:
                connection.sendall(stream.readline().rstrip(b"\r\n") + b"\r\n\r\n")

        peer = threading.Thread(target=echo_request_line)
        peer.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/ingest?key=s3cret-url-key"
        with pytest.raises(SinkTransientError) as caught:
            make_sink(url, SINK_HTTP_MAX_ATTEMPTS="1").send(audit_records(1), CONTEXT)
        peer.join()
    message = str(caught.value)
    assert "connection to http://127.0.0.1:" in message
    assert "POST" in message  # the peer's line is there, so the check below can fail
    assert "s3cret-url-key" not in message


def test_400_is_permanent_with_status_and_short_body(
    receiver: HttpReceiver, make_sink: SinkFactory, delays: list[float]
) -> None:
    receiver.fail_next(1, status=400, body="field Foo is not mapped; " + "y" * 1000)
    with pytest.raises(SinkPermanentError) as caught:
        make_sink(receiver.url).send(audit_records(2), CONTEXT)

    message = str(caught.value)
    assert "400" in message
    assert "field Foo is not mapped" in message
    assert "y" * 200 not in message
    assert len(receiver.requests) == 1
    assert delays == []


def test_401_is_permanent_and_names_the_settings(
    receiver: HttpReceiver, make_sink: SinkFactory, delays: list[float]
) -> None:
    receiver.require_bearer("the-right-token")
    with pytest.raises(SinkPermanentError, match="SINK_HTTP_BEARER_TOKEN") as caught:
        make_sink(receiver.url, SINK_HTTP_BEARER_TOKEN=TOKEN).send(audit_records(1), CONTEXT)
    assert "SINK_HTTP_HEADERS" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert len(receiver.requests) == 1
    assert delays == []


def test_permanent_failure_stops_the_send(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    """A later batch refused for good: earlier batches stay delivered, later ones are not attempted."""
    records = audit_records(30)
    receiver.fail_next(1, status=422, after=1)
    with pytest.raises(SinkPermanentError, match="422"):
        make_sink(receiver.url, SINK_HTTP_BATCH_MAX_RECORDS="10").send(records, CONTEXT)
    assert [request.status for request in receiver.requests] == [200, 422]
    assert receiver.records == records[:10]


def test_413_names_the_batch_size_setting(make_sink: SinkFactory) -> None:
    with HttpReceiver(max_body_bytes=1000) as small:
        sink = make_sink(small.url, SINK_HTTP_GZIP="false", SINK_HTTP_BATCH_MAX_BYTES="4096")
        with pytest.raises(SinkPermanentError, match="SINK_HTTP_BATCH_MAX_BYTES"):
            sink.send(audit_records(5, pad=300), CONTEXT)


def test_redirects_are_not_followed(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    """The token must never follow a redirect to another host."""
    receiver.fail_next(1, status=307, headers={"Location": "https://elsewhere.example/in?key=secret-in-url"})
    with pytest.raises(SinkPermanentError, match="SINK_URL") as caught:
        make_sink(receiver.url, SINK_HTTP_BEARER_TOKEN=TOKEN).send(audit_records(1), CONTEXT)
    assert "https://elsewhere.example" in str(caught.value)
    assert "secret-in-url" not in str(caught.value)
    assert len(receiver.requests) == 1


# -- TLS


def test_https_trusted_through_requests_ca_bundle(
    tls_receiver: HttpReceiver, make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls_receiver.ca_file)
    records = audit_records(3)
    sink = make_sink(tls_receiver.url)
    sink.check()
    sink.send(records, CONTEXT)
    assert tls_receiver.url.startswith("https://")
    assert tls_receiver.records == records


def test_https_trusted_through_the_session(
    tls_receiver: HttpReceiver, make_sink: SinkFactory, no_ca_bundle: None
) -> None:
    session = requests.Session()
    session.verify = tls_receiver.ca_file
    records = audit_records(2)
    make_sink(tls_receiver.url, session=session).send(records, CONTEXT)
    assert tls_receiver.records == records


def test_untrusted_certificate_is_refused(
    tls_receiver: HttpReceiver, make_sink: SinkFactory, no_ca_bundle: None, delays: list[float]
) -> None:
    sink = make_sink(tls_receiver.url)
    with pytest.raises(SinkPermanentError, match="REQUESTS_CA_BUNDLE") as caught:
        sink.send(audit_records(1), CONTEXT)
    assert "certificate" in str(caught.value)
    with pytest.raises(SinkPermanentError, match="TLS verification"):
        sink.check()
    assert tls_receiver.requests == []
    assert delays == []


def test_plain_http_to_a_tls_port_is_a_transient_connection_error(
    tls_receiver: HttpReceiver, make_sink: SinkFactory
) -> None:
    with pytest.raises(SinkTransientError, match="connection to"):
        make_sink(tls_receiver.url.replace("https://", "http://"), SINK_HTTP_MAX_ATTEMPTS="1").send(
            audit_records(1), CONTEXT
        )


# -- check()


def test_check_probes_with_head_and_ships_nothing(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    receiver.require_bearer(TOKEN)
    make_sink(receiver.url, SINK_HTTP_BEARER_TOKEN=TOKEN).check()
    (request,) = receiver.requests
    assert request.method == "HEAD"
    assert request.body == b""
    assert receiver.records == []


@pytest.mark.parametrize("status", [404, 405, 400])
def test_check_passes_when_the_endpoint_only_takes_post(
    receiver: HttpReceiver, make_sink: SinkFactory, status: int
) -> None:
    receiver.fail_next(1, status=status)
    make_sink(receiver.url).check()


def test_check_reports_a_refused_token(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    receiver.require_bearer("the-right-token")
    with pytest.raises(SinkPermanentError, match="SINK_HTTP_BEARER_TOKEN") as caught:
        make_sink(receiver.url, SINK_HTTP_BEARER_TOKEN=TOKEN).check()
    assert TOKEN not in str(caught.value)


def test_check_reports_an_unhealthy_receiver_without_retrying(
    receiver: HttpReceiver, make_sink: SinkFactory, delays: list[float]
) -> None:
    receiver.refuse(True)
    with pytest.raises(SinkTransientError, match="503"):
        make_sink(receiver.url).check()
    assert len(receiver.requests) == 1
    assert delays == []


def test_check_reports_connection_refused_on_one_line(make_sink: SinkFactory) -> None:
    with refusing_url() as url, pytest.raises(SinkTransientError, match="refused") as caught:
        make_sink(url).check()
    assert "\n" not in str(caught.value)
    assert "SINK_URL" in str(caught.value)


def test_check_reports_an_unknown_host(make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Name resolution fails inside the real requests/urllib3 stack (resolver patched: tests use no DNS)."""
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "siem.collector-test.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(SinkTransientError, match=r"cannot resolve the host 'siem\.collector-test\.invalid'"):
        make_sink("https://siem.collector-test.invalid/ingest").check()


# -- settings


def test_settings_defaults() -> None:
    settings = HttpSinkSettings.from_env({"SINK_URL": "https://siem.example.com/ingest/"})
    assert settings.url == "https://siem.example.com/ingest/"  # exactly as given: paths matter to receivers
    assert settings.format == "ndjson"
    assert settings.gzip is True
    assert settings.headers == ()
    assert settings.bearer_token is None
    assert settings.batch_max_bytes == 4 * 1024 * 1024
    assert settings.batch_max_records == 5000
    assert settings.timeout_seconds == 30.0
    assert settings.max_attempts == 5
    assert settings.max_retry_seconds == 60.0
    assert settings.name == "http"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/in", "http://localhost/in", "http://[::1]:9000/", "https://siem.example.com"]
)
def test_plain_http_is_allowed_only_for_loopback(url: str) -> None:
    assert HttpSinkSettings.from_env({"SINK_URL": url}).url == url


SETTING_ERRORS = [
    ("SINK_URL", {}),
    ("SINK_URL", {"SINK_URL": "siem.example.com/ingest"}),
    ("SINK_URL", {"SINK_URL": "ftp://siem.example.com/"}),
    ("SINK_URL", {"SINK_URL": "https://siem.example.com:99999/"}),
    ("SINK_HTTP_FORMAT", {"SINK_HTTP_FORMAT": "xml"}),
    ("SINK_HTTP_GZIP", {"SINK_HTTP_GZIP": "maybe"}),
    ("SINK_HTTP_HEADERS", {"SINK_HTTP_HEADERS": "{"}),
    ("SINK_HTTP_HEADERS", {"SINK_HTTP_HEADERS": '["X-A", "b"]'}),
    ("SINK_HTTP_HEADERS", {"SINK_HTTP_HEADERS": '{"X-Count": 3}'}),
    ("SINK_HTTP_HEADERS", {"SINK_HTTP_HEADERS": '{"Bad Name": "x"}'}),
    ("SINK_HTTP_HEADERS", {"SINK_HTTP_HEADERS": '{"X-A": "one\\ntwo"}'}),
    ("SINK_HTTP_HEADERS", {"SINK_HTTP_HEADERS": '{"content-type": "text/plain"}'}),
    ("SINK_HTTP_HEADERS", {"SINK_HTTP_HEADERS": '{"X-O365-Tenant-Id": "x"}'}),
    ("SINK_HTTP_HEADERS", {"SINK_HTTP_HEADERS": '{"Authorization": "Basic x"}', "SINK_HTTP_BEARER_TOKEN": "t"}),
    ("SINK_HTTP_BEARER_TOKEN", {"SINK_HTTP_BEARER_TOKEN": "two words"}),
    ("SINK_HTTP_BATCH_MAX_BYTES", {"SINK_HTTP_BATCH_MAX_BYTES": "4MB"}),
    ("SINK_HTTP_BATCH_MAX_BYTES", {"SINK_HTTP_BATCH_MAX_BYTES": "100"}),
    ("SINK_HTTP_BATCH_MAX_RECORDS", {"SINK_HTTP_BATCH_MAX_RECORDS": "0"}),
    ("SINK_HTTP_TIMEOUT_SECONDS", {"SINK_HTTP_TIMEOUT_SECONDS": "0"}),
    ("SINK_HTTP_MAX_ATTEMPTS", {"SINK_HTTP_MAX_ATTEMPTS": "0"}),
    ("SINK_HTTP_MAX_ATTEMPTS", {"SINK_HTTP_MAX_ATTEMPTS": "many"}),
    ("SINK_HTTP_MAX_RETRY_SECONDS", {"SINK_HTTP_MAX_RETRY_SECONDS": "-1"}),
]


@pytest.mark.parametrize(("setting", "env"), SETTING_ERRORS)
def test_settings_errors_name_the_setting(setting: str, env: dict[str, str]) -> None:
    full = {"SINK_URL": "https://siem.example.com/ingest", **env} if setting != "SINK_URL" else env
    with pytest.raises(ConfigError) as caught:
        HttpSinkSettings.from_env(full)
    assert caught.value.setting == setting
    assert str(caught.value).startswith(f"{setting}: ")


def test_bearer_token_may_hold_base64_and_jwt_characters() -> None:
    token = "eyJhbGciOi.J9/x+y_z~w-v="
    settings = HttpSinkSettings.from_env({"SINK_URL": "https://siem.example.com", "SINK_HTTP_BEARER_TOKEN": token})
    assert settings.bearer_token is not None
    assert settings.bearer_token.reveal() == token


def test_http_url_error_explains_the_loopback_exception_without_echoing_the_path() -> None:
    with pytest.raises(ConfigError) as caught:
        HttpSinkSettings.from_env({"SINK_URL": "http://siem.example.com/ingest?key=s3cret"})
    message = str(caught.value)
    assert "https" in message
    assert "127.0.0.1, localhost or ::1" in message
    assert "s3cret" not in message


def test_header_errors_do_not_echo_values() -> None:
    with pytest.raises(ConfigError) as caught:
        HttpSinkSettings.from_env(
            {"SINK_URL": "https://siem.example.com", "SINK_HTTP_HEADERS": '{"X-Api-Key": "hunter2", "X-B": 1}'}
        )
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        HttpSinkSettings.from_env(
            {"SINK_URL": "https://siem.example.com", "SINK_HTTP_HEADERS": '{"X-Api-Key": hunter2}'}
        )
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("value", ["price-€", "caf\u00e9", "bell\u0007", "del\u007f"])
def test_a_header_value_http_cannot_carry_is_refused_at_start_up(
    value: str, make_env: Callable[..., dict[str, str]]
) -> None:
    """Refused once when the settings are read, naming the setting and the header but not the value;
    before, every send failed with a UnicodeEncodeError from deep inside http.client."""
    headers = orjson.dumps({"X-Api-Key": f"secret-{value}"}).decode()
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(make_env(SINK_TYPE="http", SINK_URL="https://siem.example.com/in", SINK_HTTP_HEADERS=headers))
    message = str(caught.value)
    assert "SINK_HTTP_HEADERS" in message
    assert "'X-Api-Key'" in message
    assert "secret" not in message
    accepted = HttpSinkSettings.from_env(
        {"SINK_URL": "https://siem.example.com/in", "SINK_HTTP_HEADERS": '{"X-A": "a b\\tc ~!", "X-Empty": ""}'}
    )
    assert accepted.headers == (("X-A", "a b\tc ~!"), ("X-Empty", ""))


def test_settings_repr_hides_secrets() -> None:
    settings = HttpSinkSettings.from_env(
        {
            "SINK_URL": "https://siem.example.com",
            "SINK_HTTP_BEARER_TOKEN": TOKEN,
            "SINK_HTTP_HEADERS": '{"X-Api-Key": "hunter2"}',
        }
    )
    assert TOKEN not in repr(settings)
    assert "hunter2" not in repr(settings)


def test_registry_builds_the_http_sink() -> None:
    (settings,) = parse_sink_settings({"SINK_TYPE": "http", "SINK_URL": "https://siem.example.com/in"})
    assert isinstance(settings, HttpSinkSettings)
    sink = settings.create()
    try:
        assert isinstance(sink, HttpSink)
        assert sink.name == "http"
    finally:
        sink.close()
    with pytest.raises(ConfigError) as caught:
        parse_sink_settings({"SINK_TYPE": "http"})
    assert caught.value.setting == "SINK_URL"


# -- secrets and bodies stay out of logs


def test_token_and_records_never_appear_in_logs(
    receiver: HttpReceiver, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = make_sink(receiver.url, SINK_HTTP_BEARER_TOKEN=TOKEN, SINK_HTTP_HEADERS='{"X-Api-Key": "hunter2"}')
    bad = make_sink(receiver.url, SINK_HTTP_BEARER_TOKEN=TOKEN + "-old", SINK_HTTP_MAX_ATTEMPTS="2")
    errors: list[str] = []

    receiver.require_bearer(TOKEN)
    good.check()
    receiver.fail_next(1, status=503)
    good.send(audit_records(3, pad=100), CONTEXT)
    for action in (bad.check, lambda: bad.send(audit_records(1), CONTEXT)):
        with pytest.raises(SinkPermanentError) as caught:
            action()
        errors.append(str(caught.value))
    receiver.refuse(True)
    with pytest.raises(SinkTransientError) as transient:
        good.send(audit_records(1), CONTEXT)
    errors.append(str(transient.value))

    assert "retries" in caplog.text  # something was logged, so the checks below can fail
    for text in (caplog.text, *errors):
        assert TOKEN not in text
        assert "hunter2" not in text
    assert MARKER not in caplog.text


# -- shape (SINK_HTTP_SHAPE)

SERVED = (
    b'[{"CreationTime":"2026-03-01T11:59:58","Id":"a","Big":18446744073709551617,"P":[{"Name":"N","Value":"v"}]},'
    b'{"CreationTime":"2026-03-01T11:59:59.5","Id":"b","Big":1,"P":[]}]'
)


def test_flat_shape_sends_o365_audit_fields_and_timestamp_from_served_records(
    receiver: HttpReceiver, make_sink: SinkFactory
) -> None:
    """Records still holding their served bytes are re-written flat, big integers exact."""
    records = ContentRecords.from_body(SERVED, "content blob x")
    assert records.raw  # the fast path the flat shape must not take
    make_sink(receiver.url, SINK_HTTP_SHAPE="flat", SINK_HTTP_GZIP="false").send(records, CONTEXT)

    assert receiver.records == [
        {
            "@timestamp": "2026-03-01T11:59:58Z",
            "o365.audit.CreationTime": "2026-03-01T11:59:58",
            "o365.audit.Id": "a",
            "o365.audit.Big": 2**64 + 1,
            "o365.audit.P": [{"Name": "N", "Value": "v"}],
        },
        {
            "@timestamp": "2026-03-01T11:59:59.5Z",
            "o365.audit.CreationTime": "2026-03-01T11:59:59.5",
            "o365.audit.Id": "b",
            "o365.audit.Big": 1,
            "o365.audit.P": [],
        },
    ]


def test_raw_shape_is_the_default_and_sends_the_served_bytes(receiver: HttpReceiver, make_sink: SinkFactory) -> None:
    records = ContentRecords.from_body(SERVED, "content blob x")
    make_sink(receiver.url, SINK_HTTP_GZIP="false").send(records, CONTEXT)
    (request,) = receiver.requests
    assert request.raw_body == SERVED[1:-1].replace(b"},{", b"}\n{") + b"\n"


def test_an_unknown_shape_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="SINK_HTTP_SHAPE"):
        HttpSinkSettings.from_env({"SINK_URL": "https://siem.example.com/ingest", "SINK_HTTP_SHAPE": "ecs"})
