"""Behaviour of the Splunk, syslog and Log Analytics sinks that their own test files leave unpinned: setting
boundaries, wire-format details SIEM receivers depend on, error classification and connection handling.

Each test closes a gap a deliberate breakage of the product code (a mutation audit) slipped through; HTTP
goes to the loopback HEC and Logs Ingestion backends, syslog to the loopback receiver, as in the sinks' own
tests (tests/test_sink_splunk.py, tests/test_sink_syslog.py, tests/test_sink_loganalytics.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.identity import AzureAuthorityHosts

from o365collector.errors import ConfigError, SinkPermanentError, SinkTransientError
from o365collector.models import BlobContext
from o365collector.sinks import syslog
from o365collector.sinks.loganalytics import (
    LogAnalyticsSink,
    LogAnalyticsSinkSettings,
    _ServiceError,
    build_credential,
    with_record_column,
)
from o365collector.sinks.splunk import MAX_EVENTS_PER_BATCH, SplunkSink, SplunkSinkSettings, event_time
from o365collector.sinks.syslog import SyslogSink, SyslogSinkSettings
from tests.backends import HecServer
from tests.backends_azure import LogsIngestionBackend
from tests.syslog_server import SyslogServer

TOKEN = "6b2a1c1e-3f7d-4d0e-9d55-0a1b2c3d4e5f"
DCR_ID = "dcr-4f2a9c0e1b7d4e6f8a3c5b9d0e2f4a6c"
LA_TENANT = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
LA_APP = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
CONTEXT = BlobContext(
    tenant_id="11111111-2222-4333-8444-555555555555",
    content_type="Audit.Exchange",
    content_id="20260301120000.000000000$20260301120000.000000000$audit_exchange$Audit_Exchange$emea0026",
    content_created=dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC),
)
EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"


def records(count: int) -> list[dict[str, Any]]:
    return [{"CreationTime": "2026-03-01T11:59:58", "Id": f"id-{index}", "Operation": "Send"} for index in range(count)]


# -- Splunk settings and envelope


def splunk_env(**overrides: str) -> dict[str, str]:
    return {"SINK_SPLUNK_URL": "https://splunk.example.com:8088", "SINK_SPLUNK_TOKEN": TOKEN, **overrides}


def test_splunk_one_line_settings_take_1024_characters_and_refuse_1025() -> None:
    assert SplunkSinkSettings.from_env(splunk_env(SINK_SPLUNK_SOURCE="s" * 1024)).source == "s" * 1024
    with pytest.raises(ConfigError) as caught:
        SplunkSinkSettings.from_env(splunk_env(SINK_SPLUNK_SOURCE="s" * 1025))
    assert caught.value.setting == "SINK_SPLUNK_SOURCE"


def test_splunk_one_line_settings_refuse_the_del_control_character() -> None:
    with pytest.raises(ConfigError) as caught:
        SplunkSinkSettings.from_env(splunk_env(SINK_SPLUNK_HOST="collector\x7f01"))
    assert caught.value.setting == "SINK_SPLUNK_HOST"


@pytest.fixture
def eastern_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is not UTC (a developer laptop, a Windows host with WEBSITE_TIME_ZONE)."""
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_splunk_time_reads_an_offsetless_creation_time_as_utc_whatever_the_local_zone(eastern_local_time: None) -> None:
    expected = dt.datetime(2024, 5, 14, 10, 11, 58, tzinfo=dt.UTC).timestamp()
    assert event_time({"CreationTime": "2024-05-14T10:11:58"}) == int(expected)
    assert event_time({"CreationTime": "2024-05-14T10:11:58.5"}) == expected + 0.5


@pytest.fixture
def make_splunk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., SplunkSink]]:
    """Sinks that trust the loopback HEC's certificate per session (as tests/test_sink_splunk.py builds them)."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    made: list[SplunkSink] = []

    def factory(server: HecServer, **env: str) -> SplunkSink:
        session = requests.Session()
        session.verify = server.ca_file
        settings = SplunkSinkSettings.from_env(splunk_env(SINK_SPLUNK_URL=server.base_url, **env))
        clock = {"now": 5000.0}  # sleeping advances it: bounded polling without waiting

        def sleep(seconds: float) -> None:
            clock["now"] += seconds

        sink = SplunkSink(settings, session=session, sleep=sleep, monotonic=lambda: clock["now"])
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        sink.close()


def test_splunk_check_passes_when_hec_accepts_the_empty_probe(make_splunk: Callable[..., SplunkSink]) -> None:
    """A 2xx answer to the empty probe proves the token as well as HEC's "No data" does."""
    with HecServer(TOKEN) as server:
        server.fail_next(1, 200, {"text": "Success", "code": 0})
        make_splunk(server).check()
        assert [(e.path, e.status) for e in server.exchanges] == [(EVENT_PATH, 200)]


def test_splunk_ack_setting_against_a_token_without_ack_fails_before_any_ack_query(
    make_splunk: Callable[..., SplunkSink],
) -> None:
    with HecServer(TOKEN) as server:
        with pytest.raises(SinkPermanentError, match="without an ackId"):
            make_splunk(server, SINK_SPLUNK_ACK="true").send(records(2), CONTEXT)
        assert server.exchanges_to(ACK_PATH) == []


def test_splunk_an_ack_id_that_is_not_an_integer_is_no_ack_id(make_splunk: Callable[..., SplunkSink]) -> None:
    with HecServer(TOKEN, ack=True) as server:
        server.fail_next(1, 200, {"text": "Success", "code": 0, "ackId": True})
        with pytest.raises(SinkPermanentError, match="without an ackId"):
            make_splunk(server, SINK_SPLUNK_ACK="true").send(records(1), CONTEXT)
        assert server.exchanges_to(ACK_PATH) == []


def test_splunk_a_permanent_answer_to_an_ack_query_stops_the_polling(make_splunk: Callable[..., SplunkSink]) -> None:
    """A token revoked while the sink waits for acknowledgement is reported at once, not after the timeout."""
    with HecServer(TOKEN, ack=True, acks_after=10**9) as server:
        server.fail_next(1, 403, {"text": "Invalid token", "code": 4}, after=1)  # the first ack query
        with pytest.raises(SinkPermanentError, match="SINK_SPLUNK_TOKEN"):
            make_splunk(server, SINK_SPLUNK_ACK="true").send(records(1), CONTEXT)
        assert len(server.exchanges_to(ACK_PATH)) == 1


def test_splunk_an_ack_answer_without_an_acks_object_is_permanent(make_splunk: Callable[..., SplunkSink]) -> None:
    with HecServer(TOKEN, ack=True) as server:
        server.fail_next(1, 200, {"acks": [True]}, after=1)  # the first ack query: not HEC's object
        with pytest.raises(SinkPermanentError, match="without an 'acks' object"):
            make_splunk(server, SINK_SPLUNK_ACK="true").send(records(1), CONTEXT)


def test_splunk_only_a_json_true_confirms_an_ack(make_splunk: Callable[..., SplunkSink]) -> None:
    with HecServer(TOKEN, ack=True) as server:
        server.fail_next(1, 200, {"acks": {"0": "false"}}, after=1)  # the first ack query: not a boolean true
        make_splunk(server, SINK_SPLUNK_ACK="true").send(records(1), CONTEXT)
        assert len(server.exchanges_to(ACK_PATH)) == 2


@pytest.mark.parametrize(
    ("body", "expected", "unwanted"),
    [
        ({"text": "Invalid data channel", "code": 11}, "request channel", "HEC refused the batch"),
        ({"text": "no code here"}, "no code here", "code None"),
    ],
    ids=["channel", "json-without-code"],
)
def test_splunk_refusals_say_what_hec_said(
    make_splunk: Callable[..., SplunkSink], body: dict[str, Any], expected: str, unwanted: str
) -> None:
    with HecServer(TOKEN) as server:
        server.fail_next(1, 400, body)
        with pytest.raises(SinkPermanentError) as caught:
            make_splunk(server).send(records(1), CONTEXT)
    assert expected in str(caught.value)
    assert unwanted not in str(caught.value)


def test_splunk_batches_hold_at_most_10000_events(make_splunk: Callable[..., SplunkSink]) -> None:
    """The event-count bound applies when tiny records would fit many more under the byte limit."""
    given = [{"Id": index} for index in range(MAX_EVENTS_PER_BATCH + 1)]
    with HecServer(TOKEN, max_content_length=50_000_000) as server:
        make_splunk(server, SINK_SPLUNK_BATCH_MAX_BYTES="40000000").send(given, CONTEXT)
        bodies = server.event_bodies
        assert server.records == given
    assert MAX_EVENTS_PER_BATCH == 10_000
    assert [body.count(b'"event":') for body in bodies] == [10_000, 1]


# -- syslog settings


def test_syslog_loopback_host_is_recognised_in_any_case_and_in_brackets() -> None:
    """Plain tcp to loopback needs no SINK_SYSLOG_ALLOW_PLAINTEXT, however the host is written."""
    upper = SyslogSinkSettings(host="LOCALHOST", port=601, protocol="tcp")
    assert upper.allow_plaintext is False
    bracketed = SyslogSinkSettings.from_env({"SINK_SYSLOG_HOST": "[::1]", "SINK_SYSLOG_PROTOCOL": "tcp"})
    assert bracketed.host == "::1"
    assert bracketed.create()._endpoint == "tcp://[::1]:601"


def test_syslog_sd_id_takes_32_characters_and_refuses_33() -> None:
    """RFC 5424 SD-NAME: at most 32 characters."""
    longest = "n" * 26 + "@32473"
    assert SyslogSinkSettings.from_env({"SINK_SYSLOG_HOST": "h", "SINK_SYSLOG_SD_ID": longest}).sd_id == longest
    with pytest.raises(ConfigError) as caught:
        SyslogSinkSettings.from_env({"SINK_SYSLOG_HOST": "h", "SINK_SYSLOG_SD_ID": "n" + longest})
    assert caught.value.setting == "SINK_SYSLOG_SD_ID"


def test_syslog_sd_id_enterprise_number_must_be_digits() -> None:
    for sd_id in ("o365@acme", "o365@32473.x", "o365@1..2"):
        with pytest.raises(ConfigError) as caught:
            SyslogSinkSettings.from_env({"SINK_SYSLOG_HOST": "h", "SINK_SYSLOG_SD_ID": sd_id})
        assert caught.value.setting == "SINK_SYSLOG_SD_ID"
    assert (
        SyslogSinkSettings.from_env({"SINK_SYSLOG_HOST": "h", "SINK_SYSLOG_SD_ID": "o365@1.3.6"}).sd_id == "o365@1.3.6"
    )


@pytest.fixture
def receiver() -> Iterator[SyslogServer]:
    with SyslogServer() as server:
        yield server


def plain_sink(server: SyslogServer, **overrides: Any) -> SyslogSink:
    fields: dict[str, Any] = {"host": "127.0.0.1", "port": server.port, "protocol": "tcp", "hostname": "collector-01"}
    return SyslogSink(SyslogSinkSettings(**(fields | overrides)))


def test_syslog_msgid_is_the_first_32_characters_of_a_long_content_type(receiver: SyslogServer) -> None:
    long_type = "Audit." + "".join(chr(ord("A") + n % 26) for n in range(40))
    sink = plain_sink(receiver)
    try:
        sink.send(records(1), BlobContext(CONTEXT.tenant_id, long_type, CONTEXT.content_id, CONTEXT.content_created))
        (message,) = receiver.wait_for(1)
    finally:
        sink.close()
    assert message.msgid == long_type[:32]


def test_syslog_a_message_of_exactly_the_size_limit_is_sent_whole(receiver: SyslogServer) -> None:
    probe = plain_sink(receiver)
    try:
        probe.send([{"CreationTime": "2026-03-01T11:59:58", "Pad": ""}], CONTEXT)
        (first,) = receiver.wait_for(1)
    finally:
        probe.close()
    record = {"CreationTime": "2026-03-01T11:59:58", "Pad": "x" * (1024 - len(first.raw))}
    sink = plain_sink(receiver, max_message_bytes=1024)
    try:
        sink.send([record], CONTEXT)
        _, message = receiver.wait_for(2)
    finally:
        sink.close()
    assert len(message.raw) == 1024
    assert "part" not in message.sd("o365@32473")


# -- syslog connections


def test_syslog_frames_are_handed_over_in_bounded_runs() -> None:
    """A blob of many frames is written in runs of about WRITE_BYTES, not one buffer the size of the blob."""
    frames = [b"x" * 1000] * 1000
    runs = list(syslog._writes(frames))
    assert b"".join(runs) == b"".join(frames)
    assert len(runs) > 1
    assert all(syslog.WRITE_BYTES <= len(run) < syslog.WRITE_BYTES + 1000 for run in runs[:-1])


def test_syslog_a_header_that_leaves_too_little_room_is_not_split_into_slivers(receiver: SyslogServer) -> None:
    """Under split, a structured-data header that leaves under MIN_CHUNK_BYTES per message is refused, not sent."""
    sink = plain_sink(receiver, max_message_bytes=1024, oversize="split")
    context = BlobContext(CONTEXT.tenant_id, CONTEXT.content_type, "c" * 810, CONTEXT.content_created)
    try:
        with pytest.raises(SinkPermanentError, match="cannot be split"):
            sink.send([{"CreationTime": "2026-03-01T11:59:58", "Pad": "x" * 3000}], context)
    finally:
        sink.close()
    receiver.wait_idle()
    assert receiver.connections == 0


def test_syslog_idle_time_counts_from_the_last_send_not_from_the_connect(receiver: SyslogServer) -> None:
    ticks = {"now": 0.0}
    settings = SyslogSinkSettings(host="127.0.0.1", port=receiver.port, protocol="tcp", max_idle_seconds=120.0)
    sink = SyslogSink(settings, monotonic=lambda: ticks["now"])
    try:
        for now in (0.0, 100.0, 200.0, 300.0):  # never 120 s without a send
            ticks["now"] = now
            sink.send(records(1), CONTEXT)
        receiver.wait_for(4)
    finally:
        sink.close()
    assert receiver.connections == 1


def test_syslog_writes_are_bounded_by_the_send_timeout_not_the_connect_timeout(receiver: SyslogServer) -> None:
    settings = SyslogSinkSettings(
        host="127.0.0.1", port=receiver.port, protocol="tcp", connect_timeout_seconds=7.0, send_timeout_seconds=3.0
    )
    sink = SyslogSink(settings)
    try:
        sink.send(records(1), CONTEXT)
        assert sink._sock is not None
        assert sink._sock.gettimeout() == 3.0
    finally:
        sink.close()


def test_syslog_a_tls_port_that_answers_in_plain_text_is_permanent() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def answer_in_plain_text() -> None:
            peer, _ = listener.accept()
            with peer:
                peer.sendall(b"220 plain text service ready\r\n" * 4)
                peer.settimeout(5)
                with contextlib.suppress(OSError):
                    peer.recv(65536)

        thread = threading.Thread(target=answer_in_plain_text, daemon=True)
        thread.start()
        sink = SyslogSink(SyslogSinkSettings(host="127.0.0.1", port=listener.getsockname()[1]))
        try:
            with pytest.raises(SinkPermanentError, match=r"does not speak TLS.*SINK_SYSLOG_PROTOCOL"):
                sink.send(records(1), CONTEXT)
        finally:
            sink.close()
        thread.join(10)


def test_syslog_a_receiver_that_stops_reading_names_the_send_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        settings = SyslogSinkSettings(
            host="127.0.0.1",
            port=listener.getsockname()[1],
            protocol="tcp",
            max_message_bytes=1024 * 1024,
            send_timeout_seconds=0.2,
        )
        sink = SyslogSink(settings)
        big = [{"CreationTime": "2026-03-01T11:59:58", "Pad": "x" * 500_000} for _ in range(200)]
        try:
            with pytest.raises(SinkTransientError, match="SINK_SYSLOG_SEND_TIMEOUT_SECONDS"):
                sink.send(big, CONTEXT)  # 100 MB to a receiver that accepts and never reads
        finally:
            sink.close()


def test_syslog_a_receiver_that_closed_during_the_send_makes_it_transient() -> None:
    """Frames written to a connection the receiver had already closed are not reported as delivered."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        accepted: list[socket.socket] = []

        def connect_then_receiver_closes(address: tuple[str, int], timeout: float) -> socket.socket:
            client = socket.create_connection(listener.getsockname(), timeout)
            peer, _ = listener.accept()
            peer.shutdown(socket.SHUT_WR)  # the receiver says goodbye (FIN) but still reads: no reset
            accepted.append(peer)
            return client

        port = listener.getsockname()[1]
        settings = SyslogSinkSettings(host="127.0.0.1", port=port, protocol="tcp")
        sink = SyslogSink(settings, connect=connect_then_receiver_closes)
        try:
            with pytest.raises(SinkTransientError, match="closed the connection while content"):
                sink.send(records(3), CONTEXT)
            with pytest.raises(SinkTransientError):
                sink.send(records(1), CONTEXT)
            assert len(accepted) == 2, "the closed connection is not reused"
        finally:
            sink.close()
            for peer in accepted:
                peer.close()


# -- Log Analytics settings


def la_env(**overrides: str) -> dict[str, str]:
    return {
        "SINK_LOGANALYTICS_ENDPOINT": "https://dcr-x.westeurope-1.ingest.monitor.azure.com",
        "SINK_LOGANALYTICS_DCR_ID": DCR_ID,
        **overrides,
    }


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"SINK_LOGANALYTICS_AUDIENCE": "http://monitor.azure.com"}, "SINK_LOGANALYTICS_AUDIENCE"),
        (
            {
                "SINK_LOGANALYTICS_TENANT_ID": "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",
                "SINK_LOGANALYTICS_APP_CLIENT_ID": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                "SINK_LOGANALYTICS_CLIENT_SECRET": "s",
                "SINK_LOGANALYTICS_AUTHORITY_HOST": "http://login.example",
            },
            "SINK_LOGANALYTICS_AUTHORITY_HOST",
        ),
        (
            {"SINK_LOGANALYTICS_ENDPOINT": "https://dcr-x.westeurope-1.ingest.monitor.azure.com/?api-version=1"},
            "SINK_LOGANALYTICS_ENDPOINT",
        ),
        (
            {"SINK_LOGANALYTICS_ENDPOINT": "https://dcr-x.westeurope-1.ingest.monitor.azure.com:0"},
            "SINK_LOGANALYTICS_ENDPOINT",
        ),
        (
            {"SINK_LOGANALYTICS_ENDPOINT": "https://dcr-x.westeurope-1.ingest.monitor.azure.com:99999"},
            "SINK_LOGANALYTICS_ENDPOINT",
        ),
    ],
    ids=["audience-http", "authority-http", "endpoint-query", "endpoint-port-0", "endpoint-port-out-of-range"],
)
def test_log_analytics_urls_must_be_plain_https(overrides: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        LogAnalyticsSinkSettings.from_env(la_env(**overrides))
    assert caught.value.setting == setting


def test_log_analytics_dcr_id_is_kept_in_lower_case() -> None:
    settings = LogAnalyticsSinkSettings.from_env(
        la_env(SINK_LOGANALYTICS_DCR_ID=DCR_ID.upper().replace("DCR-", "dcr-"))
    )
    assert settings.dcr_id == DCR_ID
    assert f"/dataCollectionRules/{DCR_ID}/" in settings.upload_url


@pytest.mark.parametrize("stream", ["Custom-My Stream", "Custom-a/b", "Custom-x?y", "Custom-\u00e9"])
def test_log_analytics_stream_names_are_refused_outside_the_dcr_alphabet(stream: str) -> None:
    with pytest.raises(ConfigError) as caught:
        LogAnalyticsSinkSettings.from_env(la_env(SINK_LOGANALYTICS_STREAM=stream))
    assert caught.value.setting == "SINK_LOGANALYTICS_STREAM"


@pytest.mark.parametrize(
    ("authority", "discovery"),
    [(None, True), (AzureAuthorityHosts.AZURE_GOVERNMENT, True), ("https://login.example.test", False)],
)
def test_log_analytics_instance_discovery_is_off_only_for_a_non_microsoft_authority(
    authority: str | None, discovery: bool
) -> None:
    env = la_env(
        SINK_LOGANALYTICS_TENANT_ID="0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",
        SINK_LOGANALYTICS_APP_CLIENT_ID="9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
        SINK_LOGANALYTICS_CLIENT_SECRET="s",
    )
    if authority is not None:
        env["SINK_LOGANALYTICS_AUTHORITY_HOST"] = authority if "://" in authority else f"https://{authority}"
    credential = build_credential(LogAnalyticsSinkSettings.from_env(env))
    assert credential._instance_discovery is discovery  # type: ignore[attr-defined]  # azure-identity's own flag


def test_log_analytics_the_whole_record_column_wins_over_a_field_of_the_same_name() -> None:
    record = {"Id": "1", "AuditRecord": "a field of the record"}
    row = with_record_column(record)
    assert row["AuditRecord"] == record
    assert row["Id"] == "1"
    assert record == {"Id": "1", "AuditRecord": "a field of the record"}, "the caller's record is not modified"


def ingestion_env(backend: LogsIngestionBackend, **overrides: str) -> dict[str, str]:
    return la_env(
        SINK_LOGANALYTICS_ENDPOINT=backend.url,
        SINK_LOGANALYTICS_AUTHORITY_HOST=backend.url,
        SINK_LOGANALYTICS_TENANT_ID=LA_TENANT,
        SINK_LOGANALYTICS_APP_CLIENT_ID=LA_APP,
        SINK_LOGANALYTICS_CLIENT_SECRET="la-secret",
        SINK_LOGANALYTICS_MAX_RETRIES="0",
        **overrides,
    )


def test_log_analytics_the_token_is_asked_for_the_configured_audience(monkeypatch: pytest.MonkeyPatch) -> None:
    """A government-cloud audience reaches the token request (the fake sign-in refuses any other scope)."""
    audience = "https://monitor.azure.us"
    with LogsIngestionBackend(
        tenant_id=LA_TENANT, client_id=LA_APP, client_secret="la-secret", dcr_id=DCR_ID, audience=audience
    ) as backend:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", backend.ca_file)
        sink = LogAnalyticsSinkSettings.from_env(ingestion_env(backend, SINK_LOGANALYTICS_AUDIENCE=audience)).create()
        try:
            sink.send(records(2), CONTEXT)
        finally:
            sink.close()
        assert len(backend.records) == 2


def test_log_analytics_a_request_timeout_is_transient_and_retry_after_never_negative(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """408 joins 429 and 5xx: the queue sends the blob again."""
    with LogsIngestionBackend(
        tenant_id=LA_TENANT, client_id=LA_APP, client_secret="la-secret", dcr_id=DCR_ID
    ) as backend:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", backend.ca_file)
        sink = LogAnalyticsSinkSettings.from_env(ingestion_env(backend)).create()
        try:
            backend.fail_next(1, 408)
            with pytest.raises(SinkTransientError, match="answered 408"):
                sink.send(records(1), CONTEXT)
            backend.fail_next(1, 503, retry_after=-30)  # a clock-skewed proxy: never a negative wait
            with pytest.raises(SinkTransientError) as caught:
                sink.send(records(1), CONTEXT)
            assert caught.value.retry_after == 0.0
            assert "(ServiceUnavailable: scripted failure)" in str(caught.value), "the service's code and message"
            backend.fail_next(1, 500)
            with pytest.raises(SinkTransientError, match="answered 500"):
                sink.check()  # a server error is not a pass, unlike the other 4xx answers to the empty probe
            backend.fail_next(1, 413)  # a chunk of several records refused for its size
            with pytest.raises(SinkPermanentError, match="413 to a chunk of 2 records"):
                sink.send(records(2), CONTEXT)
        finally:
            sink.close()


class ClosableCredential:
    def __init__(self) -> None:
        self.closed = False

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("static-token", 2_000_000_000)

    def close(self) -> None:
        self.closed = True


def test_log_analytics_close_also_closes_the_credential() -> None:
    """The credential's own HTTP sessions (sign-in) are released with the sink."""
    credential = ClosableCredential()
    sink = LogAnalyticsSink(LogAnalyticsSinkSettings.from_env(la_env()), credential=credential)
    sink.close()
    assert credential.closed


class _Answer:
    def __init__(self, payload: object) -> None:
        self._payload = payload

    def json(self) -> object:
        return self._payload


def test_log_analytics_a_service_error_is_one_line_cut_to_300_characters() -> None:
    wordy = "The\\tstream\n  Custom-O365   was not found " + "x" * 400
    error = _ServiceError.of(_Answer({"error": {"code": "InvalidStream", "message": wordy}}))
    assert error.code == "InvalidStream"
    assert error.message is not None
    assert error.message.startswith("The\\tstream Custom-O365 was not found x")
    assert len(error.message) == 300
    assert str(error).startswith(" (InvalidStream: The")
    assert str(_ServiceError.of(_Answer(["not an object"]))) == ""
