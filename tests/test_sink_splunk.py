"""The Splunk HEC sink against a loopback HTTP Event Collector over HTTPS: wire format, batching within
HEC's limits, retryable vs permanent answers, indexer acknowledgement, check(), settings, secrets kept
out of logs, and an outage end to end that loses nothing and ships each record once."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
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
from o365collector.sinks.registry import parse_sink_settings
from o365collector.sinks.splunk import SplunkSink, SplunkSinkSettings, event_time
from tests.backends import HecServer
from tests.receivers import refusing_url
from tests.support import TENANT

pytestmark = pytest.mark.integration

TOKEN = "6b2a1c1e-3f7d-4d0e-9d55-0a1b2c3d4e5f"
MARKER = "body-marker-9c2e"  # a value inside records: must never reach the logs
NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
CONTEXT = BlobContext(
    tenant_id="11111111-2222-4333-8444-555555555555",
    content_type="Audit.Exchange",
    content_id="20260301120000.000000000$20260301120000.000000000$audit_exchange$Audit_Exchange$emea0026",
    content_created=NOW,
)
SOURCETYPE = "o365:management:activity"

SinkFactory = Callable[..., SplunkSink]


def audit_records(count: int, *, start: int = 0, pad: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "CreationTime": "2024-05-14T10:11:58",
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


class FakeTime:
    """Sleeping advances the monotonic clock instead of waiting."""

    def __init__(self) -> None:
        self.now = 5000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def hec() -> Iterator[HecServer]:
    with HecServer(TOKEN) as server:
        yield server


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_sink(fake_time: FakeTime, monkeypatch: pytest.MonkeyPatch) -> Iterator[SinkFactory]:
    # requests lets REQUESTS_CA_BUNDLE override a session's verify; sinks here trust the fake per session.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    made: list[SplunkSink] = []

    def factory(server: HecServer | str, *, session: requests.Session | None = None, **env: str) -> SplunkSink:
        url = server if isinstance(server, str) else server.base_url
        if session is None:
            session = requests.Session()
            if not isinstance(server, str):
                session.verify = server.ca_file  # trust the fake's self-signed certificate
        settings = SplunkSinkSettings.from_env({"SINK_SPLUNK_URL": url, "SINK_SPLUNK_TOKEN": TOKEN, **env})
        sink = SplunkSink(
            settings, session=session, sleep=fake_time.sleep, clock=NOW.timestamp, monotonic=fake_time.monotonic
        )
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        sink.close()


# -- wire format


def test_events_wire_format(hec: HecServer, make_sink: SinkFactory) -> None:
    """One POST to /services/collector/event: event objects back to back, the record unchanged in `event`."""
    records = audit_records(3)
    sink = make_sink(hec)
    sink.send(records, CONTEXT)

    (request,) = hec.exchanges
    assert (request.method, request.path, request.status) == ("POST", "/services/collector/event", 200)
    assert request.headers["authorization"] == f"Splunk {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert str(uuid.UUID(request.headers["x-splunk-request-channel"])) == sink.channel
    assert request.headers["user-agent"].startswith("o365collector/")
    first = records[0]
    assert request.body.startswith(
        b'{"time":1715681518,"sourcetype":"o365:management:activity","event":{"CreationTime":"2024-05-14T10:11:58",'
    )
    expected = [{"time": 1715681518, "sourcetype": SOURCETYPE, "event": record} for record in records]
    assert request.body == b"".join(serialize(envelope) for envelope in expected)
    assert hec.events == expected
    assert hec.records[0] == first
    assert request.json() == {"text": "Success", "code": 0}


def test_index_source_and_host_are_set_when_configured(hec: HecServer, make_sink: SinkFactory) -> None:
    records = audit_records(1)
    make_sink(
        hec,
        SINK_SPLUNK_INDEX="o365",
        SINK_SPLUNK_SOURCE="o365collector",
        SINK_SPLUNK_SOURCETYPE="ms:o365:management",
        SINK_SPLUNK_HOST="collector-01",
    ).send(records, CONTEXT)
    (event,) = hec.events
    assert list(event) == ["time", "host", "source", "sourcetype", "index", "event"]
    assert event == {
        "time": 1715681518,
        "host": "collector-01",
        "source": "o365collector",
        "sourcetype": "ms:o365:management",
        "index": "o365",
        "event": records[0],
    }


@pytest.mark.parametrize(
    ("creation_time", "expected"),
    [
        ("2024-05-14T10:11:58", 1715681518),  # the API's form: UTC without offset
        ("2024-05-14T10:11:58.5", 1715681518.5),
        ("2024-05-14T10:11:58.1234567", 1715681518.123),
        ("2024-05-14T10:11:58Z", 1715681518),
        ("2024-05-14T12:11:58+02:00", 1715681518),
        ("yesterday", None),
        (1715681518, None),
        (None, None),
    ],
)
def test_event_time_comes_from_creation_time(creation_time: Any, expected: float | None) -> None:
    record = {"Id": "x"} if creation_time is None else {"Id": "x", "CreationTime": creation_time}
    assert event_time(record) == expected


def test_a_record_without_creation_time_has_no_time_field(hec: HecServer, make_sink: SinkFactory) -> None:
    """Splunk then stamps the arrival time; the record itself is not touched."""
    record = {"Id": "no-time", "Operation": "X"}
    make_sink(hec).send([record], CONTEXT)
    assert hec.events == [{"sourcetype": SOURCETYPE, "event": record}]


def test_values_arrive_exactly(hec: HecServer, make_sink: SinkFactory) -> None:
    """Big integers, unicode, floats and nesting reach HEC unchanged inside `event`."""
    records = [{"Big": 2**64 + 1, "Name": "Zoë 🙂 監査", "F": 0.1, "Nested": {"L": [1, {"x": None}]}, "B": True}]
    make_sink(hec).send(records, CONTEXT)
    assert hec.records == records
    assert type(hec.records[0]["B"]) is bool


def test_no_records_no_request(hec: HecServer, make_sink: SinkFactory) -> None:
    make_sink(hec).send([], CONTEXT)
    assert hec.exchanges == []


# -- batching


def test_batches_respect_the_byte_limit(hec: HecServer, make_sink: SinkFactory) -> None:
    records = audit_records(40, pad=200)
    make_sink(hec, SINK_SPLUNK_BATCH_MAX_BYTES="2048").send(records, CONTEXT)
    assert len(hec.exchanges) > 1
    assert all(len(exchange.body) <= 2048 for exchange in hec.exchanges)
    assert hec.records == records


def test_default_batches_fit_hec_default_max_content_length(hec: HecServer, make_sink: SinkFactory) -> None:
    """1.5 MB of events against HEC's default 1,000,000-byte limit: split, every request accepted."""
    records = audit_records(300, pad=5000)
    make_sink(hec).send(records, CONTEXT)
    assert len(hec.exchanges) >= 2
    assert all(e.status == 200 and len(e.body) <= 800_000 for e in hec.exchanges)
    assert hec.records == records


def test_oversize_event_is_sent_alone_with_a_warning(
    hec: HecServer, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    records = [*audit_records(2), *audit_records(1, start=2, pad=5000), *audit_records(2, start=3)]
    with caplog.at_level(logging.WARNING):
        make_sink(hec, SINK_SPLUNK_BATCH_MAX_BYTES="2048").send(records, CONTEXT)
    assert [len(e.body) > 2048 for e in hec.exchanges] == [False, True, False]
    assert hec.records == records
    assert "SINK_SPLUNK_BATCH_MAX_BYTES" in caplog.text


def test_413_names_the_batch_size_setting(make_sink: SinkFactory) -> None:
    with HecServer(TOKEN, max_content_length=1500) as small:
        sink = make_sink(small, SINK_SPLUNK_BATCH_MAX_BYTES="4096")
        with pytest.raises(SinkPermanentError, match="SINK_SPLUNK_BATCH_MAX_BYTES"):
            sink.send(audit_records(5, pad=300), CONTEXT)
        assert len(small.exchanges) == 1


# -- retryable answers


def test_server_busy_is_retried_then_delivered_once(
    hec: HecServer, make_sink: SinkFactory, fake_time: FakeTime
) -> None:
    records = audit_records(4)
    hec.fail_next(2, 503, {"text": "Server is busy", "code": 9}, retry_after=3)
    make_sink(hec).send(records, CONTEXT)
    assert [e.status for e in hec.exchanges] == [503, 503, 200]
    assert fake_time.sleeps == [3.0, 3.0]
    assert hec.records == records


def test_persistent_busy_gives_up_transient_after_max_attempts(hec: HecServer, make_sink: SinkFactory) -> None:
    hec.fail_next(10, 503, {"text": "Server is busy", "code": 9})
    with pytest.raises(SinkTransientError, match=r"Server is busy, code 9") as caught:
        make_sink(hec, SINK_SPLUNK_MAX_ATTEMPTS="3").send(audit_records(1), CONTEXT)
    assert len(hec.exchanges) == 3
    assert "\n" not in str(caught.value)
    assert hec.records == []


@pytest.mark.parametrize(("status", "body"), [(500, {"text": "Internal server error", "code": 8}), (429, None)])
def test_server_errors_and_throttling_are_transient(
    hec: HecServer, make_sink: SinkFactory, status: int, body: Any
) -> None:
    hec.fail_next(1, status, body)
    with pytest.raises(SinkTransientError, match=str(status)):
        make_sink(hec, SINK_SPLUNK_MAX_ATTEMPTS="1").send(audit_records(1), CONTEXT)


def test_only_the_failed_batch_is_retried(hec: HecServer, make_sink: SinkFactory) -> None:
    records = audit_records(30, pad=200)
    hec.fail_next(1, 503, {"text": "Server is busy", "code": 9}, after=1, retry_after=0)
    make_sink(hec, SINK_SPLUNK_BATCH_MAX_BYTES="4096").send(records, CONTEXT)
    statuses = [e.status for e in hec.exchanges]
    assert statuses[:3] == [200, 503, 200]
    assert hec.records == records  # every event once, in order


def test_hec_down_is_transient_and_names_the_url_setting(make_sink: SinkFactory, fake_time: FakeTime) -> None:
    with refusing_url("https") as url:
        base = url.removesuffix("/ingest")
        with pytest.raises(SinkTransientError, match="SINK_SPLUNK_URL") as caught:
            make_sink(base, SINK_SPLUNK_MAX_ATTEMPTS="2").send(audit_records(1), CONTEXT)
    assert "refused" in str(caught.value)
    assert len(fake_time.sleeps) == 1


# -- permanent answers


@pytest.mark.parametrize(
    ("token", "code"),
    [("0f0f0f0f-0000-4000-8000-000000000000", 4)],
)
def test_invalid_token_is_permanent_and_names_the_setting(
    hec: HecServer, make_sink: SinkFactory, fake_time: FakeTime, token: str, code: int
) -> None:
    sink = make_sink(hec, SINK_SPLUNK_TOKEN=token)
    with pytest.raises(SinkPermanentError, match="SINK_SPLUNK_TOKEN") as caught:
        sink.send(audit_records(1), CONTEXT)
    assert f"code {code}" in str(caught.value)
    assert token not in str(caught.value)
    assert len(hec.exchanges) == 1
    assert fake_time.sleeps == []


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (403, {"text": "Token disabled", "code": 1}),
        (401, {"text": "Token is required", "code": 2}),
        (401, {"text": "Invalid authorization", "code": 3}),
        (401, b"<html>Unauthorized</html>"),
    ],
)
def test_every_token_refusal_names_the_token_setting(
    hec: HecServer, make_sink: SinkFactory, status: int, body: Any
) -> None:
    hec.fail_next(1, status, body)
    with pytest.raises(SinkPermanentError, match="check SINK_SPLUNK_TOKEN"):
        make_sink(hec).send(audit_records(1), CONTEXT)


def test_incorrect_index_is_permanent_and_names_the_index_setting(make_sink: SinkFactory) -> None:
    with HecServer(TOKEN, indexes={"main"}) as server:
        with pytest.raises(SinkPermanentError, match="SINK_SPLUNK_INDEX") as caught:
            make_sink(server, SINK_SPLUNK_INDEX="o365").send(audit_records(2), CONTEXT)
        assert "'o365'" in str(caught.value)
        assert "Incorrect index, code 7" in str(caught.value)
        assert len(server.exchanges) == 1


def test_refused_data_is_permanent_and_says_which_event(hec: HecServer, make_sink: SinkFactory) -> None:
    hec.fail_next(1, 400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 2})
    with pytest.raises(SinkPermanentError, match="at event 2 of the batch") as caught:
        make_sink(hec).send(audit_records(3), CONTEXT)
    assert "Invalid data format, code 6" in str(caught.value)
    assert MARKER not in str(caught.value)
    assert len(hec.exchanges) == 1


@pytest.mark.parametrize("json_answer", [True, False])
def test_error_text_never_echoes_the_token(hec: HecServer, make_sink: SinkFactory, json_answer: bool) -> None:
    """HEC's text (or a proxy's page) that echoes the request: a short excerpt, without the token."""
    echoed = f"Invalid data format\nAuthorization: Splunk {TOKEN}\x1b[0m " + "z" * 5000
    body: Any = {"text": echoed, "code": 6} if json_answer else echoed.encode()
    hec.fail_next(1, 400, body)
    with pytest.raises(SinkPermanentError) as caught:
        make_sink(hec).send(audit_records(1), CONTEXT)
    message = str(caught.value)
    assert "Invalid data format" in message
    assert TOKEN not in message
    assert "\x1b" not in message
    assert "\n" not in message
    assert len(message) < 400


def test_redirects_are_not_followed(hec: HecServer, make_sink: SinkFactory) -> None:
    hec.fail_next(1, 302, b"")
    with pytest.raises(SinkPermanentError, match="redirects are not followed"):
        make_sink(hec).send(audit_records(1), CONTEXT)


# -- indexer acknowledgement


def test_ack_flow_polls_until_every_batch_is_indexed(make_sink: SinkFactory, fake_time: FakeTime) -> None:
    records = audit_records(30, pad=200)
    with HecServer(TOKEN, ack=True, acks_after=2) as server:
        sink = make_sink(server, SINK_SPLUNK_ACK="true", SINK_SPLUNK_BATCH_MAX_BYTES="4096")
        sink.send(records, CONTEXT)
        events = server.exchanges_to("/services/collector/event")
        queries = server.exchanges_to("/services/collector/ack")
    batches = len(events)
    assert batches > 1
    assert [e.json()["ackId"] for e in events] == list(range(batches))
    assert {e.headers["x-splunk-request-channel"] for e in server.exchanges} == {sink.channel}
    assert [q.json() for q in queries] == [
        {"acks": {str(i): False for i in range(batches)}},
        {"acks": {str(i): False for i in range(batches)}},
        {"acks": {str(i): True for i in range(batches)}},
    ]
    assert [q.body for q in queries] == [serialize({"acks": list(range(batches))})] * 3
    assert fake_time.sleeps == [1.0, 2.0, 4.0]  # polling backs off
    assert server.records == records


def test_unacknowledged_batches_are_transient_within_the_bound(make_sink: SinkFactory, fake_time: FakeTime) -> None:
    with HecServer(TOKEN, ack=True, acks_after=10**9) as server:
        sink = make_sink(server, SINK_SPLUNK_ACK="true", SINK_SPLUNK_ACK_TIMEOUT_SECONDS="30")
        with pytest.raises(SinkTransientError, match="SINK_SPLUNK_ACK_TIMEOUT_SECONDS") as caught:
            sink.send(audit_records(2), CONTEXT)
        polls = len(server.exchanges_to("/services/collector/ack"))
    assert "1 of 1 batches (2 events)" in str(caught.value)
    assert sum(fake_time.sleeps) == pytest.approx(30.0)
    assert max(fake_time.sleeps) <= 10.0
    assert polls == len(fake_time.sleeps)


def test_a_failed_ack_query_is_polled_again(make_sink: SinkFactory) -> None:
    with HecServer(TOKEN, ack=True) as server:
        server.fail_next(1, 503, {"text": "Server is busy", "code": 9}, after=1)  # the first ack query
        make_sink(server, SINK_SPLUNK_ACK="true").send(audit_records(2), CONTEXT)
        statuses = [(e.path, e.status) for e in server.exchanges]
    assert statuses == [
        ("/services/collector/event", 200),
        ("/services/collector/ack", 503),
        ("/services/collector/ack", 200),
    ]


def test_ack_setting_without_ack_on_the_token_is_permanent(hec: HecServer, make_sink: SinkFactory) -> None:
    sink = make_sink(hec, SINK_SPLUNK_ACK="true")
    with pytest.raises(SinkPermanentError, match="SINK_SPLUNK_ACK=false"):
        sink.send(audit_records(1), CONTEXT)
    with pytest.raises(SinkPermanentError, match=r"ACK is disabled, code 14.*SINK_SPLUNK_ACK"):
        sink.check()


def test_a_token_with_ack_works_without_the_ack_setting(make_sink: SinkFactory) -> None:
    """The channel header is always sent, so an ack-enabled token accepts events either way."""
    with HecServer(TOKEN, ack=True) as server:
        make_sink(server).send(audit_records(2), CONTEXT)
        assert [e.path for e in server.exchanges] == ["/services/collector/event"]
        assert len(server.records) == 2


# -- check()


def test_check_probes_the_token_without_indexing(hec: HecServer, make_sink: SinkFactory) -> None:
    make_sink(hec).check()
    (probe,) = hec.exchanges
    assert (probe.method, probe.path, probe.body) == ("POST", "/services/collector/event", b"")
    assert probe.json() == {"text": "No data", "code": 5}
    assert hec.events == []


def test_check_with_ack_also_proves_the_token_has_ack(make_sink: SinkFactory) -> None:
    with HecServer(TOKEN, ack=True) as server:
        make_sink(server, SINK_SPLUNK_ACK="true").check()
        assert [e.path for e in server.exchanges] == ["/services/collector/event", "/services/collector/ack"]
        assert server.events == []


def test_check_reports_a_bad_token_on_one_line(hec: HecServer, make_sink: SinkFactory) -> None:
    wrong = "0f0f0f0f-0000-4000-8000-000000000000"
    with pytest.raises(SinkPermanentError) as caught:
        make_sink(hec, SINK_SPLUNK_TOKEN=wrong).check()
    message = str(caught.value)
    assert "Invalid token, code 4" in message
    assert "check SINK_SPLUNK_TOKEN" in message
    assert wrong not in message
    assert "\n" not in message


def test_check_reports_a_url_that_is_not_hec(hec: HecServer, make_sink: SinkFactory) -> None:
    session = requests.Session()
    session.verify = hec.ca_file
    sink = make_sink(hec.base_url + "/not-splunk", session=session)
    with pytest.raises(SinkPermanentError, match=r"not the answer of an HTTP Event Collector.*SINK_SPLUNK_URL"):
        sink.check()


@pytest.mark.parametrize(("status", "body"), [(503, {"text": "Server is busy", "code": 9}), (429, b"slow down")])
def test_check_reports_a_busy_hec_as_transient(hec: HecServer, make_sink: SinkFactory, status: int, body: Any) -> None:
    hec.fail_next(1, status, body)
    with pytest.raises(SinkTransientError, match=f"answered {status}"):
        make_sink(hec).check()
    assert len(hec.exchanges) == 1


def test_check_reports_hec_down(make_sink: SinkFactory) -> None:
    with refusing_url("https") as url, pytest.raises(SinkTransientError, match=r"refused.*SINK_SPLUNK_URL"):
        make_sink(url.removesuffix("/ingest")).check()


def test_check_reports_an_untrusted_certificate(hec: HecServer, make_sink: SinkFactory) -> None:
    with pytest.raises(SinkPermanentError, match=r"TLS verification.*REQUESTS_CA_BUNDLE"):
        make_sink(hec.base_url, session=requests.Session()).check()
    assert hec.exchanges == []


def test_https_trusted_through_requests_ca_bundle(
    hec: HecServer, make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", hec.ca_file)
    sink = make_sink(hec.base_url, session=requests.Session())
    sink.check()
    sink.send(audit_records(2), CONTEXT)
    assert len(hec.records) == 2


# -- settings


def test_settings_defaults() -> None:
    settings = SplunkSinkSettings.from_env(
        {"SINK_SPLUNK_URL": "https://splunk.example.com:8088/", "SINK_SPLUNK_TOKEN": TOKEN}
    )
    assert settings.url == "https://splunk.example.com:8088"
    assert settings.token.reveal() == TOKEN
    assert (settings.index, settings.source, settings.host) == (None, None, None)
    assert settings.sourcetype == SOURCETYPE
    assert settings.ack is False
    assert settings.ack_timeout_seconds == 120.0
    assert settings.batch_max_bytes == 800_000 < 1_000_000
    assert (settings.timeout_seconds, settings.max_attempts, settings.max_retry_seconds) == (30.0, 5, 60.0)
    assert settings.name == "splunk"


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("https://splunk.example.com:8088/services/collector/event", "https://splunk.example.com:8088"),
        ("https://splunk.example.com:8088/services/collector", "https://splunk.example.com:8088"),
        ("https://proxy.example.com/splunk/", "https://proxy.example.com/splunk"),
        ("http://127.0.0.1:8088", "http://127.0.0.1:8088"),
    ],
)
def test_url_is_the_base_address(given: str, base: str) -> None:
    assert SplunkSinkSettings.from_env({"SINK_SPLUNK_URL": given, "SINK_SPLUNK_TOKEN": TOKEN}).url == base


SETTING_ERRORS = [
    ("SINK_SPLUNK_URL", {"SINK_SPLUNK_URL": ""}),
    ("SINK_SPLUNK_URL", {"SINK_SPLUNK_URL": "splunk.example.com:8088"}),
    ("SINK_SPLUNK_URL", {"SINK_SPLUNK_URL": "http://splunk.example.com:8088"}),
    ("SINK_SPLUNK_URL", {"SINK_SPLUNK_URL": "https://splunk.example.com:8088/?token=x"}),
    ("SINK_SPLUNK_URL", {"SINK_SPLUNK_URL": "https://admin:pw@splunk.example.com:8088"}),
    ("SINK_SPLUNK_TOKEN", {"SINK_SPLUNK_TOKEN": ""}),
    ("SINK_SPLUNK_TOKEN", {"SINK_SPLUNK_TOKEN": f"Splunk {TOKEN}"}),
    ("SINK_SPLUNK_INDEX", {"SINK_SPLUNK_INDEX": "Main"}),
    ("SINK_SPLUNK_INDEX", {"SINK_SPLUNK_INDEX": "_internal"}),
    ("SINK_SPLUNK_SOURCE", {"SINK_SPLUNK_SOURCE": "two\nlines"}),
    ("SINK_SPLUNK_SOURCETYPE", {"SINK_SPLUNK_SOURCETYPE": "x" * 2000}),
    ("SINK_SPLUNK_HOST", {"SINK_SPLUNK_HOST": "a\tb"}),
    ("SINK_SPLUNK_ACK", {"SINK_SPLUNK_ACK": "maybe"}),
    ("SINK_SPLUNK_ACK_TIMEOUT_SECONDS", {"SINK_SPLUNK_ACK_TIMEOUT_SECONDS": "0"}),
    ("SINK_SPLUNK_BATCH_MAX_BYTES", {"SINK_SPLUNK_BATCH_MAX_BYTES": "1MB"}),
    ("SINK_SPLUNK_BATCH_MAX_BYTES", {"SINK_SPLUNK_BATCH_MAX_BYTES": "100"}),
    ("SINK_SPLUNK_TIMEOUT_SECONDS", {"SINK_SPLUNK_TIMEOUT_SECONDS": "0"}),
    ("SINK_SPLUNK_MAX_ATTEMPTS", {"SINK_SPLUNK_MAX_ATTEMPTS": "0"}),
    ("SINK_SPLUNK_MAX_RETRY_SECONDS", {"SINK_SPLUNK_MAX_RETRY_SECONDS": "-1"}),
]


@pytest.mark.parametrize(("setting", "env"), SETTING_ERRORS)
def test_settings_errors_name_the_setting(setting: str, env: dict[str, str]) -> None:
    full = {"SINK_SPLUNK_URL": "https://splunk.example.com:8088", "SINK_SPLUNK_TOKEN": TOKEN, **env}
    with pytest.raises(ConfigError) as caught:
        SplunkSinkSettings.from_env(full)
    assert caught.value.setting == setting
    assert str(caught.value).startswith(f"{setting}: ")
    assert TOKEN not in str(caught.value)
    assert "token=x" not in str(caught.value)
    assert ":pw@" not in str(caught.value)


def test_settings_repr_hides_the_token() -> None:
    settings = SplunkSinkSettings.from_env({"SINK_SPLUNK_URL": "https://s.example.com", "SINK_SPLUNK_TOKEN": TOKEN})
    assert TOKEN not in repr(settings)


def test_registry_builds_the_splunk_sink() -> None:
    env = {"SINK_TYPE": "splunk", "SINK_SPLUNK_URL": "https://splunk.example.com:8088", "SINK_SPLUNK_TOKEN": TOKEN}
    (settings,) = parse_sink_settings(env)
    assert isinstance(settings, SplunkSinkSettings)
    sink = settings.create()
    try:
        assert isinstance(sink, SplunkSink)
        assert sink.name == "splunk"
    finally:
        sink.close()
    with pytest.raises(ConfigError) as caught:
        parse_sink_settings({"SINK_TYPE": "splunk", "SINK_SPLUNK_URL": "https://splunk.example.com:8088"})
    assert caught.value.setting == "SINK_SPLUNK_TOKEN"


# -- secrets and bodies stay out of logs


def test_token_and_records_never_appear_in_logs(
    hec: HecServer, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "0f0f0f0f-0000-4000-8000-000000000000"
    good = make_sink(hec)
    bad = make_sink(hec, SINK_SPLUNK_TOKEN=wrong)
    errors: list[str] = []

    good.check()
    hec.fail_next(1, 503, {"text": "Server is busy", "code": 9})
    good.send(audit_records(3, pad=100), CONTEXT)
    for action in (bad.check, lambda: bad.send(audit_records(1), CONTEXT)):
        with pytest.raises(SinkPermanentError) as caught:
            action()
        errors.append(str(caught.value))
    hec.fail_next(10, 503, {"text": "Server is busy", "code": 9})
    with pytest.raises(SinkTransientError) as transient:
        good.send(audit_records(1), CONTEXT)
    errors.append(str(transient.value))

    assert "retries" in caplog.text  # something was logged, so the checks below can fail
    for text in (caplog.text, *errors):
        assert TOKEN not in text
        assert wrong not in text
    assert MARKER not in caplog.text


# -- end to end


def test_an_outage_longer_than_the_retries_loses_nothing_and_ships_each_record_once(
    simulator: Simulator,
    make_collector: Callable[..., Collector],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """HEC answers 'Server is busy' to more requests than one delivery retries; the queue redelivers."""
    tenant = TENANT.tenant_id
    end = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    for content_type in ("Audit.Exchange", "Audit.SharePoint"):
        simulator.generate(
            tenant, content_type, end - dt.timedelta(hours=6), end,
            blob_every=dt.timedelta(minutes=60), records_per_blob=(1, 12),
        )  # fmt: skip
    served = Counter(r["Id"] for b in simulator.blobs(tenant) if not b.expired for r in b.records)
    with HecServer(TOKEN) as server:
        bundle = tmp_path / "ca-bundle.pem"
        bundle.write_text(Path(simulator.ca_file).read_text() + Path(server.ca_file).read_text())
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))  # trusts the simulator and HEC
        outage = 5  # two deliveries of two attempts each fail, then HEC is back
        server.fail_next(outage, 503, {"text": "Server is busy", "code": 9}, retry_after=0)
        collector = make_collector(
            SINK_TYPE="splunk",
            SINK_SPLUNK_URL=server.base_url,
            SINK_SPLUNK_TOKEN=TOKEN,
            SINK_SPLUNK_INDEX="o365",
            SINK_SPLUNK_MAX_ATTEMPTS="2",
            O365_CONTENT_TYPES="Audit.Exchange,Audit.SharePoint",
        )
        assert run_once(collector) == 0
        shipped = Counter(record["Id"] for record in server.records)
        busy = [e for e in server.exchanges if e.status == 503]
        events = list(server.events)
    assert len(busy) == outage
    assert shipped == served
    assert max(shipped.values()) == 1
    assert len(served) > 10
    assert all(event["index"] == "o365" and event["sourcetype"] == SOURCETYPE for event in events)
    by_id = {r["Id"]: r for b in simulator.blobs(tenant) for r in b.records}
    assert all(event["event"] == by_id[event["event"]["Id"]] for event in events)
