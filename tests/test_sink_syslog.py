"""The syslog sink against real TCP and TLS receivers on 127.0.0.1: wire format, size rule, connections, trust."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from o365collector.config import Settings
from o365collector.errors import ConfigError, SinkPermanentError, SinkTransientError
from o365collector.models import BlobContext
from o365collector.redaction import printable
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.sinks.batching import serialize
from o365collector.sinks.registry import parse_sink_settings
from o365collector.sinks.syslog import (
    SyslogSink,
    SyslogSinkSettings,
    escape_param_value,
    format_timestamp,
)
from tests.support import TENANT
from tests.syslog_server import SyslogMessage, SyslogServer, make_client_cert

TID = TENANT.tenant_id
SD_ID = "o365@32473"
CONTENT_ID = "20260304223000.000000000$20260304223000.000000000$audit_exchange$Audit_Exchange$emea0026"
NOW = dt.datetime(2026, 3, 5, 8, 0, 0, 250000, tzinfo=dt.UTC)
SinkFactory = Callable[..., SyslogSink]


def context(content_id: str = CONTENT_ID, content_type: str = "Audit.Exchange") -> BlobContext:
    return BlobContext(TID, content_type, content_id, dt.datetime(2026, 3, 4, 22, 30, tzinfo=dt.UTC))


def records(count: int, tag: str = "r") -> list[dict[str, Any]]:
    return [
        {
            "CreationTime": f"2026-03-04T22:{index % 60:02d}:00",
            "Id": f"{tag}-{index}",
            "Operation": "Send",
            "Big": 2**64 + index,
            "Name": 'Zoë "quoted" [x] \\ end',
        }
        for index in range(count)
    ]


def env_for(server: SyslogServer, **overrides: str) -> dict[str, str]:
    env = {
        "SINK_SYSLOG_HOST": "127.0.0.1",
        "SINK_SYSLOG_PORT": str(server.port),
        "SINK_SYSLOG_PROTOCOL": "tcp",
        "SINK_SYSLOG_HOSTNAME": "collector-01",
        "SINK_SYSLOG_CONNECT_TIMEOUT_SECONDS": "5",
        "SINK_SYSLOG_SEND_TIMEOUT_SECONDS": "5",
    }
    env.update(overrides)
    return env


@pytest.fixture
def server() -> Iterator[SyslogServer]:
    with SyslogServer() as receiver:
        yield receiver


@pytest.fixture
def tls_server() -> Iterator[SyslogServer]:
    with SyslogServer(tls=True) as receiver:
        yield receiver


@pytest.fixture
def make_sink() -> Iterator[SinkFactory]:
    made: list[SyslogSink] = []

    def factory(server: SyslogServer, *, connect: Any = socket.create_connection, **overrides: str) -> SyslogSink:
        sink = SyslogSink(SyslogSinkSettings.from_env(env_for(server, **overrides)), connect=connect, clock=lambda: NOW)
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        sink.close()


def reassemble(messages: list[SyslogMessage]) -> list[Any]:
    """Records from messages, joining split chunks (part 1..n) back into one JSON text."""
    result: list[Any] = []
    chunks: dict[str, list[bytes]] = {}
    for message in messages:
        params = message.sd(SD_ID) if message.structured_data else {}
        if "part" not in params:
            result.append(json.loads(message.msg))
            continue
        key = f"{params['contentId']}#{params['recordIndex']}"
        parts = chunks.setdefault(key, [])
        assert int(params["part"]) == len(parts) + 1, "chunks arrive in order"
        parts.append(message.msg)
        if len(parts) == int(params["parts"]):
            result.append(json.loads(b"".join(parts)))
    return result


# -- wire format


def test_frame_holds_an_exact_rfc5424_message(server: SyslogServer, make_sink: SinkFactory) -> None:
    record = {"CreationTime": "2026-03-04T22:30:00", "Id": "a-1", "Operation": "Send"}
    make_sink(server).send([record], context())

    (message,) = server.wait_for(1)
    expected_sd = f'[o365@32473 tenant="{TID}" contentId="{CONTENT_ID}" recordIndex="0"]'
    expected = (
        f"<134>1 2026-03-04T22:30:00Z collector-01 o365collector - Audit.Exchange {expected_sd} "
    ).encode() + serialize(record)
    assert message.raw == expected
    assert (message.facility, message.severity, message.version) == (16, 6, 1)
    assert (message.hostname, message.app_name, message.procid, message.msgid) == (
        "collector-01",
        "o365collector",
        "-",
        "Audit.Exchange",
    )
    assert message.sd(SD_ID) == {"tenant": TID, "contentId": CONTENT_ID, "recordIndex": "0"}
    assert server.errors == []


def test_each_record_is_one_message_and_its_json_round_trips(server: SyslogServer, make_sink: SinkFactory) -> None:
    given = records(25)
    given.append({"Id": "deep", "Nested": {"List": [1, 2.5, None, True, {"x": "ü€𝄞"}]}, "Huge": 10**30})
    make_sink(server).send(given, context())

    messages = server.wait_for(len(given))
    assert [json.loads(m.msg) for m in messages] == given
    assert [m.msg for m in messages] == [serialize(r) for r in given]
    assert [m.sd(SD_ID)["recordIndex"] for m in messages] == [str(i) for i in range(len(given))]


@pytest.mark.parametrize(
    ("creation_time", "expected"),
    [
        ("2026-03-04T22:30:00", "2026-03-04T22:30:00Z"),
        ("2026-03-04T22:30:00Z", "2026-03-04T22:30:00Z"),
        ("2026-03-04T22:30:00.120", "2026-03-04T22:30:00.12Z"),
        ("2026-03-05T00:30:00+02:00", "2026-03-04T22:30:00Z"),
        (None, "2026-03-05T08:00:00.25Z"),  # absent: the time of sending
        ("not a time", "2026-03-05T08:00:00.25Z"),
        (12345, "2026-03-05T08:00:00.25Z"),
    ],
)
def test_timestamp_is_creation_time_in_utc_or_now(
    server: SyslogServer, make_sink: SinkFactory, creation_time: Any, expected: str
) -> None:
    record: dict[str, Any] = {"Id": "t"}
    if creation_time is not None:
        record["CreationTime"] = creation_time
    make_sink(server).send([record], context())
    assert server.wait_for(1)[0].timestamp == expected


def test_format_timestamp_keeps_at_most_six_fraction_digits() -> None:
    value = dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert format_timestamp(value) == "2026-01-02T08:04:05.123456Z"
    assert format_timestamp(dt.datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05Z"


def test_structured_data_values_are_escaped(server: SyslogServer, make_sink: SinkFactory) -> None:
    nasty = 'id "with" \\back\\slash] and ]] brackets'
    make_sink(server).send([{"Id": "x"}], context(content_id=nasty))

    (message,) = server.wait_for(1)
    assert message.sd(SD_ID)["contentId"] == nasty  # the strict parser undid exactly the three escapes
    assert b'contentId="id \\"with\\" \\\\back\\\\slash\\] and \\]\\] brackets"' in message.raw
    assert escape_param_value('a"b\\c]d') == 'a\\"b\\\\c\\]d'


def test_control_characters_never_split_a_message(server: SyslogServer, make_sink: SinkFactory) -> None:
    """A line feed (or CR, ESC, NUL, DEL, NEL, U+2028) in a structured-data value or a record field never
    reaches the wire raw: a receiver or file that splits on lines keeps the message whole, and the values
    arrive escaped."""
    nasty_id = 'blob\nFAKE <13>1 - - - - - injected]"\r\x1b\x00end'
    text = 'line one\nline two ] "quoted" \r\x1b\x00 del\x7f nel\x85 ls\u2028 ps\u2029 Zoë'
    sent = [{"Id": "x", "Text": text}, {"Id": "y", "Text": text, "Big": 2**64}]  # orjson, then the fallback
    make_sink(server).send(sent, context(content_id=nasty_id))

    messages = server.wait_for(2)
    assert server.errors == []
    for message, record in zip(messages, sent, strict=True):
        assert not any(byte < 0x20 or byte == 0x7F for byte in message.raw), message.raw
        assert not any(char in message.raw.decode() for char in "\x85\u2028\u2029")  # split lines in some readers
        received = message.sd(SD_ID)["contentId"]
        assert received == printable(nasty_id)  # the strict parser undid the RFC escapes: the printable form
        assert received.startswith("blob")
        assert received.endswith("end")
        assert received.isprintable()
        assert json.loads(message.msg) == record  # JSON's own escapes: the field round-trips exactly
    assert "Zoë" in messages[0].raw.decode()  # printable non-ASCII stays as orjson writes it
    assert escape_param_value("a\nb]") == printable("a\nb").replace("\\", "\\\\") + "\\]"


def test_structured_data_can_be_left_out(server: SyslogServer, make_sink: SinkFactory) -> None:
    make_sink(server, SINK_SYSLOG_STRUCTURED_DATA="false").send([{"Id": "x"}], context())
    (message,) = server.wait_for(1)
    assert message.structured_data is None
    assert message.raw.endswith(b' Audit.Exchange - {"Id":"x"}')


def test_header_settings_reach_the_wire(server: SyslogServer, make_sink: SinkFactory) -> None:
    sink = make_sink(
        server,
        SINK_SYSLOG_APP_NAME="m365-audit",
        SINK_SYSLOG_FACILITY="13",
        SINK_SYSLOG_SEVERITY="warning",
        SINK_SYSLOG_SD_ID="audit@55555.1",
    )
    sink.send([{"Id": "x"}], context(content_type="DLP.All"))
    (message,) = server.wait_for(1)
    assert (message.pri, message.app_name, message.msgid) == (13 * 8 + 4, "m365-audit", "DLP.All")
    assert message.sd("audit@55555.1")["recordIndex"] == "0"


# -- newline framing and the Wazuh wrapper


@pytest.fixture
def lf_server() -> Iterator[SyslogServer]:
    with SyslogServer(framing="lf") as receiver:
        yield receiver


def wazuh_decode(message: SyslogMessage) -> Any:
    """What a Wazuh JSON decoder sees: the MSG as JSON, which its office365 rules match on ``integration``."""
    event = json.loads(message.msg)
    assert isinstance(event, dict)
    assert list(event) == ["integration", "office365"]
    assert event["integration"] == "office365"
    return event["office365"]


def test_lf_framing_sends_one_line_per_record_even_with_newlines_in_fields(
    lf_server: SyslogServer, make_sink: SinkFactory
) -> None:
    """With SINK_SYSLOG_FRAMING=lf a receiver that ends a message at every LF (Logstash, Fluent Bit) gets
    exactly one message per record, also when a field or the content id holds a line feed."""
    nasty_id = "blob\n<13>1 - - - - - injected\r\nend"
    sent = [
        {"Id": "x", "Text": "line one\nline two\r\n\u2028 Zoë"},
        {"Id": "y", "Text": "\n\n", "Big": 2**64},  # orjson, then the fallback
        *records(3),
    ]
    sink = make_sink(lf_server, SINK_SYSLOG_FRAMING="LF")
    sink.send(sent, context(content_id=nasty_id))
    sink.close()
    lf_server.wait_idle()

    messages = lf_server.messages
    assert lf_server.errors == []
    assert [json.loads(m.msg) for m in messages] == sent  # one message each, round-tripping exactly
    assert [m.sd(SD_ID)["contentId"] for m in messages] == [printable(nasty_id)] * len(sent)
    assert [m.sd(SD_ID)["recordIndex"] for m in messages] == [str(i) for i in range(len(sent))]


def test_lf_framing_applies_to_split_chunks(lf_server: SyslogServer, make_sink: SinkFactory) -> None:
    sink = make_sink(
        lf_server, SINK_SYSLOG_FRAMING="lf", SINK_SYSLOG_MAX_MESSAGE_BYTES="1024", SINK_SYSLOG_OVERSIZE="split"
    )
    given = [records(1)[0], big_record(5_000) | {"Extra": "a\nb"}, records(1, tag="after")[0]]
    sink.send(given, context())
    sink.close()
    lf_server.wait_idle()

    assert lf_server.errors == []
    assert len(lf_server.messages) > 3
    assert all(len(m.raw) <= 1024 for m in lf_server.messages)
    assert reassemble(lf_server.messages) == given


def test_octet_counting_stays_the_default_framing(server: SyslogServer, make_sink: SinkFactory) -> None:
    """The default still writes MSG-LEN SP SYSLOG-MSG, which the octet-counting receiver parses."""
    sink = make_sink(server)
    sink.send(records(2), context())
    sink.close()
    server.wait_idle()
    assert server.errors == []
    assert [json.loads(m.msg) for m in server.messages] == records(2)


@pytest.mark.parametrize("framing", ["lf", "octet-counting"])
def test_wazuh_wrapper_puts_each_record_under_office365(framing: str, make_sink: SinkFactory) -> None:
    """SINK_SYSLOG_WRAPPER=wazuh: each MSG is {"integration":"office365","office365":<record>}, the shape
    Wazuh's stock office365 rules decode, and the record under office365 round-trips exactly."""
    given = [*records(3), {"Id": "n", "Text": "one\ntwo \u2028", "Nested": {"List": [1, 2.5, None]}, "Huge": 10**30}]
    with SyslogServer(framing=framing) as receiver:
        sink = make_sink(receiver, SINK_SYSLOG_FRAMING=framing, SINK_SYSLOG_WRAPPER="wazuh")
        sink.send(given, context())
        sink.close()
        receiver.wait_idle()
        messages = receiver.messages
        assert receiver.errors == []
    assert [wazuh_decode(m) for m in messages] == given
    assert [m.msg for m in messages[:3]] == [
        b'{"integration":"office365","office365":' + serialize(r) + b"}" for r in given[:3]
    ]


def test_wazuh_wrapped_split_chunks_reassemble_to_the_wrapped_record(
    lf_server: SyslogServer, make_sink: SinkFactory
) -> None:
    sink = make_sink(
        lf_server,
        SINK_SYSLOG_FRAMING="lf",
        SINK_SYSLOG_WRAPPER="wazuh",
        SINK_SYSLOG_MAX_MESSAGE_BYTES="1024",
        SINK_SYSLOG_OVERSIZE="split",
    )
    given = big_record(5_000)
    sink.send([given], context())
    sink.close()
    lf_server.wait_idle()
    assert reassemble(lf_server.messages) == [{"integration": "office365", "office365": given}]


def test_an_lf_receiver_cannot_read_octet_counting() -> None:
    """Why the setting exists: the LF receiver refuses an octet-counted stream instead of misreading it."""
    with SyslogServer(framing="lf") as receiver:
        sink = SyslogSink(SyslogSinkSettings.from_env(env_for(receiver)), clock=lambda: NOW)
        sink.send(records(1), context())
        sink.close()
        receiver.wait_idle()
        assert receiver.messages == []
        assert len(receiver.errors) == 1


def test_concurrent_sends_never_interleave_frames(server: SyslogServer, make_sink: SinkFactory) -> None:
    sink = make_sink(server)
    threads = [
        threading.Thread(target=sink.send, args=(records(40, tag=f"t{n}"), context(content_id=f"c{n}")))
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    messages = server.wait_for(160)
    assert server.errors == []
    assert Counter(json.loads(m.msg)["Id"] for m in messages) == Counter(
        f"t{n}-{i}" for n in range(4) for i in range(40)
    )


def test_no_records_opens_no_connection(server: SyslogServer, make_sink: SinkFactory) -> None:
    make_sink(server).send([], context())
    server.wait_idle()
    assert server.connections == 0


# -- size rule


def big_record(size: int) -> dict[str, Any]:
    return {"Id": "big", "CreationTime": "2026-03-04T22:30:00", "Text": ("Zoë—𝄞 " * size)[:size]}


def test_oversize_record_is_rejected_before_anything_is_sent(server: SyslogServer, make_sink: SinkFactory) -> None:
    sink = make_sink(server, SINK_SYSLOG_MAX_MESSAGE_BYTES="2048")
    given = [*records(3), big_record(3000), *records(2, tag="after")]
    with pytest.raises(SinkPermanentError) as caught:
        sink.send(given, context())
    text = str(caught.value)
    assert f"record 3 of content {CONTENT_ID}" in text
    assert "SINK_SYSLOG_MAX_MESSAGE_BYTES (2048)" in text
    assert "SINK_SYSLOG_OVERSIZE=split" in text
    assert "Zoë" not in text, "no record body in the message"
    server.wait_idle()
    assert server.connections == 0, "nothing of the blob was written"


def test_oversize_record_is_split_into_numbered_chunks(server: SyslogServer, make_sink: SinkFactory) -> None:
    sink = make_sink(server, SINK_SYSLOG_MAX_MESSAGE_BYTES="1024", SINK_SYSLOG_OVERSIZE="split")
    given = [records(1)[0], big_record(20_000), records(1, tag="after")[0]]
    sink.send(given, context())

    sink.close()
    server.wait_idle()

    messages = server.messages
    payload = serialize(given[1])
    chunks = [m for m in messages if "part" in m.sd(SD_ID)]
    assert len(messages) == len(chunks) + 2
    assert all(len(m.raw) <= 1024 for m in messages)
    assert len(chunks) >= len(payload) // 1024 + 1
    assert [int(m.sd(SD_ID)["part"]) for m in chunks] == list(range(1, len(chunks) + 1))
    assert {m.sd(SD_ID)["parts"] for m in chunks} == {str(len(chunks))}
    assert {m.sd(SD_ID)["recordIndex"] for m in chunks} == {"1"}
    assert all(m.msg.decode("utf-8") for m in chunks), "every chunk holds whole UTF-8 characters"
    assert b"".join(m.msg for m in chunks) == payload
    assert reassemble(messages) == given


def test_split_chunks_carry_structured_data_even_when_it_is_off(server: SyslogServer, make_sink: SinkFactory) -> None:
    sink = make_sink(
        server,
        SINK_SYSLOG_MAX_MESSAGE_BYTES="1024",
        SINK_SYSLOG_OVERSIZE="split",
        SINK_SYSLOG_STRUCTURED_DATA="false",
    )
    sink.send([{"Id": "small"}, big_record(3000)], context())
    sink.close()
    server.wait_idle()
    messages = server.messages
    assert messages[0].structured_data is None
    assert all("part" in m.sd(SD_ID) for m in messages[1:])
    assert reassemble(messages)[1] == big_record(3000)


# -- connections


def test_one_connection_is_reused_across_sends(server: SyslogServer, make_sink: SinkFactory) -> None:
    sink = make_sink(server)
    for n in range(3):
        sink.send(records(5, tag=f"s{n}"), context(content_id=f"c{n}"))
    server.wait_for(15)
    assert server.connections == 1


def test_reconnects_after_the_server_drops_the_connection(server: SyslogServer, make_sink: SinkFactory) -> None:
    sink = make_sink(server)
    sink.send(records(5, tag="before"), context(content_id="c1"))
    server.wait_for(5)
    server.drop_connections()

    sink.send(records(5, tag="after"), context(content_id="c2"))
    messages = server.wait_for(10)
    assert server.connections == 2
    assert [json.loads(m.msg)["Id"] for m in messages] == [f"before-{i}" for i in range(5)] + [
        f"after-{i}" for i in range(5)
    ]
    assert {m.connection for m in messages[5:]} == {2}


def test_an_idle_connection_is_replaced_before_use(server: SyslogServer) -> None:
    ticks = {"now": 1000.0}
    settings = SyslogSinkSettings.from_env(env_for(server, SINK_SYSLOG_MAX_IDLE_SECONDS="60"))
    sink = SyslogSink(settings, monotonic=lambda: ticks["now"])
    try:
        sink.send(records(1), context())
        ticks["now"] += 30
        sink.send(records(1), context())
        server.wait_for(2)
        assert server.connections == 1
        ticks["now"] += 61
        sink.send(records(1), context())
        server.wait_for(3)
        assert server.connections == 2
    finally:
        sink.close()


def test_refused_connection_is_transient_and_names_the_settings(make_sink: SinkFactory) -> None:
    with SyslogServer(listening=False) as down:
        sink = make_sink(down)
        with pytest.raises(SinkTransientError) as caught:
            sink.send(records(1), context())
        assert "refused" in str(caught.value)
        assert "SINK_SYSLOG_PORT" in str(caught.value)
        with pytest.raises(SinkTransientError) as checked:
            sink.check()
        assert "\n" not in str(checked.value)


def test_a_server_that_starts_listening_is_reached_by_the_next_send(make_sink: SinkFactory) -> None:
    with SyslogServer(listening=False) as server:
        sink = make_sink(server)
        with pytest.raises(SinkTransientError):
            sink.send(records(2), context())
        server.start_listening()
        sink.send(records(2), context())
        assert [json.loads(m.msg)["Id"] for m in server.wait_for(2)] == ["r-0", "r-1"]


def test_unresolvable_host_is_transient(make_sink: SinkFactory, server: SyslogServer) -> None:
    def no_dns(address: tuple[str, int], timeout: float) -> socket.socket:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(SinkTransientError, match="cannot resolve SINK_SYSLOG_HOST"):
        make_sink(server, connect=no_dns).check()


def test_check_connects_and_sends_nothing(server: SyslogServer, make_sink: SinkFactory) -> None:
    make_sink(server).check()
    server.wait_idle()
    assert server.connections == 1
    assert server.messages == []
    assert server.errors == []


# -- TLS


def test_tls_with_a_trusted_certificate(tls_server: SyslogServer, make_sink: SinkFactory) -> None:
    sink = make_sink(tls_server, SINK_SYSLOG_PROTOCOL="tls", SINK_SYSLOG_CA_FILE=tls_server.ca_file)
    sink.check()
    sink.send(records(3), context())
    assert [json.loads(m.msg) for m in tls_server.wait_for(3)] == records(3)
    assert tls_server.handshake_failures == 0


def test_tls_trust_through_requests_ca_bundle(tls_server: SyslogServer, make_sink: SinkFactory) -> None:
    sink = make_sink(tls_server, SINK_SYSLOG_PROTOCOL="tls", REQUESTS_CA_BUNDLE=tls_server.ca_file)
    sink.send(records(1), context())
    assert len(tls_server.wait_for(1)) == 1


def test_tls_reconnects_after_the_server_drops_the_connection(tls_server: SyslogServer, make_sink: SinkFactory) -> None:
    sink = make_sink(tls_server, SINK_SYSLOG_PROTOCOL="tls", SINK_SYSLOG_CA_FILE=tls_server.ca_file)
    sink.send(records(2, tag="a"), context())
    tls_server.wait_for(2)
    tls_server.drop_connections()
    sink.send(records(2, tag="b"), context())
    assert [json.loads(m.msg)["Id"] for m in tls_server.wait_for(4)] == ["a-0", "a-1", "b-0", "b-1"]
    assert tls_server.connections == 2


def test_untrusted_certificate_is_permanent_and_names_the_ca_setting(
    tls_server: SyslogServer, make_sink: SinkFactory
) -> None:
    sink = make_sink(tls_server, SINK_SYSLOG_PROTOCOL="tls")  # system store: does not know the test CA
    with pytest.raises(SinkPermanentError) as checked:
        sink.check()
    assert "SINK_SYSLOG_CA_FILE" in str(checked.value)
    assert "\n" not in str(checked.value)
    with pytest.raises(SinkPermanentError, match=re.escape("TLS verification of tls://127.0.0.1")):
        sink.send(records(1), context())
    assert tls_server.messages == []


def test_untrusted_through_requests_ca_bundle_says_so(tls_server: SyslogServer, make_sink: SinkFactory) -> None:
    other = SyslogServer(tls=True)  # a different self-signed CA
    try:
        sink = make_sink(tls_server, SINK_SYSLOG_PROTOCOL="tls", REQUESTS_CA_BUNDLE=other.ca_file)
        with pytest.raises(SinkPermanentError, match="REQUESTS_CA_BUNDLE does not trust it"):
            sink.check()
    finally:
        other.close()


def test_missing_ca_file_is_permanent(tls_server: SyslogServer, make_sink: SinkFactory, tmp_path: Path) -> None:
    sink = make_sink(tls_server, SINK_SYSLOG_PROTOCOL="tls", SINK_SYSLOG_CA_FILE=str(tmp_path / "nope.pem"))
    with pytest.raises(SinkPermanentError, match="SINK_SYSLOG_CA_FILE: cannot load the CA file"):
        sink.check()


def test_client_certificate_is_offered_when_required(make_sink: SinkFactory, tmp_path: Path) -> None:
    cert, key = make_client_cert(tmp_path)
    with SyslogServer(tls=True, client_ca=cert) as server:
        tls = {"SINK_SYSLOG_PROTOCOL": "tls", "SINK_SYSLOG_CA_FILE": server.ca_file}
        with_cert = make_sink(
            server, SINK_SYSLOG_CLIENT_CERT_FILE=str(cert), SINK_SYSLOG_CLIENT_KEY_FILE=str(key), **tls
        )
        with_cert.check()
        with_cert.send(records(2), context())
        assert len(server.wait_for(2)) == 2

        without = make_sink(server, **tls)
        with pytest.raises(SinkPermanentError, match="SINK_SYSLOG_CLIENT_CERT_FILE"):
            without.check()


# -- settings


def test_settings_defaults() -> None:
    settings = SyslogSinkSettings.from_env({"SINK_SYSLOG_HOST": "siem.example.com"})
    assert (settings.protocol, settings.port) == ("tls", 6514)
    assert (settings.facility, settings.severity, settings.app_name) == (16, 6, "o365collector")
    assert settings.max_message_bytes == 65536
    assert settings.oversize == "reject"
    assert (settings.framing, settings.wrapper) == ("octet-counting", "none")
    assert settings.structured_data
    assert settings.sd_id == SD_ID
    assert settings.hostname == "".join(c for c in socket.gethostname() if "!" <= c <= "~")[:255] or "-"
    assert settings.ca_file is None
    assert not settings.allow_plaintext
    tcp = SyslogSinkSettings.from_env(
        {"SINK_SYSLOG_HOST": "siem.example.com", "SINK_SYSLOG_PROTOCOL": "TCP", "SINK_SYSLOG_ALLOW_PLAINTEXT": "true"}
    )
    assert (tcp.protocol, tcp.port, tcp.allow_plaintext) == ("tcp", 601, True)


@pytest.mark.parametrize(
    ("facility", "severity", "pri"),
    [("local0", "info", 134), ("LOCAL7", "debug", 191), ("4", "err", 35), ("auth", "0", 32), ("23", "7", 191)],
)
def test_facility_and_severity_by_name_or_number(facility: str, severity: str, pri: int) -> None:
    settings = SyslogSinkSettings.from_env(
        {"SINK_SYSLOG_HOST": "h", "SINK_SYSLOG_FACILITY": facility, "SINK_SYSLOG_SEVERITY": severity}
    )
    assert settings.facility * 8 + settings.severity == pri


@pytest.mark.parametrize(
    ("setting", "env"),
    [
        ("SINK_SYSLOG_HOST", {"SINK_SYSLOG_HOST": " "}),
        ("SINK_SYSLOG_HOST", {"SINK_SYSLOG_HOST": "tcp://siem:514"}),
        ("SINK_SYSLOG_PROTOCOL", {"SINK_SYSLOG_PROTOCOL": "udp"}),
        ("SINK_SYSLOG_PORT", {"SINK_SYSLOG_PORT": "70000"}),
        ("SINK_SYSLOG_FACILITY", {"SINK_SYSLOG_FACILITY": "24"}),
        ("SINK_SYSLOG_FACILITY", {"SINK_SYSLOG_FACILITY": "local8"}),
        ("SINK_SYSLOG_SEVERITY", {"SINK_SYSLOG_SEVERITY": "8"}),
        ("SINK_SYSLOG_APP_NAME", {"SINK_SYSLOG_APP_NAME": "has space"}),
        ("SINK_SYSLOG_APP_NAME", {"SINK_SYSLOG_APP_NAME": "x" * 49}),
        ("SINK_SYSLOG_HOSTNAME", {"SINK_SYSLOG_HOSTNAME": "höst"}),
        ("SINK_SYSLOG_SD_ID", {"SINK_SYSLOG_SD_ID": "noenterprise"}),
        ("SINK_SYSLOG_SD_ID", {"SINK_SYSLOG_SD_ID": "bad=name@123"}),
        ("SINK_SYSLOG_MAX_MESSAGE_BYTES", {"SINK_SYSLOG_MAX_MESSAGE_BYTES": "100"}),
        ("SINK_SYSLOG_OVERSIZE", {"SINK_SYSLOG_OVERSIZE": "drop"}),
        ("SINK_SYSLOG_FRAMING", {"SINK_SYSLOG_FRAMING": "crlf"}),
        ("SINK_SYSLOG_WRAPPER", {"SINK_SYSLOG_WRAPPER": "ossec"}),
        ("SINK_SYSLOG_CA_FILE", {"SINK_SYSLOG_PROTOCOL": "tcp", "SINK_SYSLOG_CA_FILE": "/ca.pem"}),
        ("SINK_SYSLOG_CLIENT_KEY_FILE", {"SINK_SYSLOG_CLIENT_KEY_FILE": "/key.pem"}),
        ("SINK_SYSLOG_CONNECT_TIMEOUT_SECONDS", {"SINK_SYSLOG_CONNECT_TIMEOUT_SECONDS": "0"}),
    ],
)
def test_settings_errors_name_the_setting(setting: str, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        SyslogSinkSettings.from_env({"SINK_SYSLOG_HOST": "siem.example.com"} | env)
    assert caught.value.setting == setting


def test_requests_ca_bundle_is_the_fallback_for_tls_only() -> None:
    tls = SyslogSinkSettings.from_env({"SINK_SYSLOG_HOST": "h", "REQUESTS_CA_BUNDLE": "/corp.pem"})
    assert (tls.ca_file, tls.ca_setting) == ("/corp.pem", "REQUESTS_CA_BUNDLE")
    own = SyslogSinkSettings.from_env(
        {"SINK_SYSLOG_HOST": "h", "REQUESTS_CA_BUNDLE": "/corp.pem", "SINK_SYSLOG_CA_FILE": "/siem.pem"}
    )
    assert (own.ca_file, own.ca_setting) == ("/siem.pem", "SINK_SYSLOG_CA_FILE")
    tcp = SyslogSinkSettings.from_env(
        {
            "SINK_SYSLOG_HOST": "h",
            "SINK_SYSLOG_PROTOCOL": "tcp",
            "SINK_SYSLOG_ALLOW_PLAINTEXT": "true",
            "REQUESTS_CA_BUNDLE": "/corp.pem",
        }
    )
    assert tcp.ca_file is None


@pytest.mark.parametrize("host", ["192.0.2.1", "siem.example.com", "127.0.0.2", "[2001:db8::1]"])
def test_plain_tcp_to_a_remote_host_is_refused_before_any_connection(
    host: str, make_env: Callable[..., dict[str, str]]
) -> None:
    """Unencrypted audit records only with SINK_SYSLOG_ALLOW_PLAINTEXT: refused at start-up, so nothing connects."""
    env = make_env(SINK_TYPE="syslog", SINK_SYSLOG_HOST=host, SINK_SYSLOG_PROTOCOL="tcp")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert "SINK_SYSLOG_ALLOW_PLAINTEXT" in message
    assert "SINK_SYSLOG_PROTOCOL=tcp" in message
    assert "use tls" in message

    # Settings built any other way are held to the same rule: no SyslogSink, so no connection, can exist.
    with pytest.raises(ConfigError, match="SINK_SYSLOG_ALLOW_PLAINTEXT"):
        SyslogSinkSettings(host=host.strip("[]"), port=601, protocol="tcp")

    allowed = Settings.from_env(env | {"SINK_SYSLOG_ALLOW_PLAINTEXT": "true"})
    (settings,) = allowed.sinks
    assert isinstance(settings, SyslogSinkSettings)
    assert (settings.protocol, settings.allow_plaintext) == ("tcp", True)
    assert SyslogSinkSettings.from_env({"SINK_SYSLOG_HOST": host}).protocol == "tls"  # tls needs no permission


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_plain_tcp_to_loopback_needs_no_permission(host: str, server: SyslogServer, make_sink: SinkFactory) -> None:
    """The same settings that are refused for a remote host send to loopback without the permission."""
    with pytest.raises(ConfigError, match="SINK_SYSLOG_ALLOW_PLAINTEXT"):
        SyslogSinkSettings.from_env(env_for(server, SINK_SYSLOG_HOST="192.0.2.1"))
    sink = make_sink(server, SINK_SYSLOG_HOST=host)
    sink.send(records(1), context())
    (message,) = server.wait_for(1)
    assert json.loads(message.msg)["Id"] == "r-0"


def test_registry_builds_the_syslog_sink() -> None:
    (settings,) = parse_sink_settings({"SINK_TYPE": "syslog", "SINK_SYSLOG_HOST": "siem.example.com"})
    assert isinstance(settings, SyslogSinkSettings)
    sink = settings.create()
    assert sink.name == "syslog"
    sink.close()


# -- end to end


def test_end_to_end_receiver_down_then_up_delivers_every_record_once(
    simulator: Simulator, make_collector: Callable[..., Collector]
) -> None:
    """The receiver refuses the first 3 connection attempts, then listens: every record arrives, none twice."""
    now = dt.datetime.now(dt.UTC)
    simulator.generate(
        TID,
        "Audit.Exchange",
        now - dt.timedelta(hours=8),
        now - dt.timedelta(minutes=10),
        blob_every=dt.timedelta(minutes=45),
        records_per_blob=(1, 12),
    )
    expected = Counter(r["Id"] for b in simulator.blobs(TID) for r in b.records)
    refused = {"n": 0}

    with SyslogServer(listening=False) as server:

        def connect(address: tuple[str, int], timeout: float) -> socket.socket:
            try:
                return socket.create_connection(address, timeout)
            except ConnectionRefusedError:
                refused["n"] += 1
                if refused["n"] == 3:
                    server.start_listening()  # the receiver comes back after the third refusal
                raise

        collector = make_collector(
            SINK_TYPE="syslog",
            SINK_SYSLOG_HOST="127.0.0.1",
            SINK_SYSLOG_PORT=str(server.port),
            SINK_SYSLOG_PROTOCOL="tcp",
            O365_CONTENT_TYPES="Audit.Exchange",
        )
        (settings,) = collector.settings.sinks
        assert isinstance(settings, SyslogSinkSettings)
        collector.sinks[0].close()
        collector.sinks[0] = SyslogSink(settings, connect=connect)

        assert run_once(collector) == 0
        collector.close()  # the sink closes its connection: the server reads to the end of the stream
        server.wait_idle()

        assert refused["n"] == 3
        assert server.errors == []
        received = Counter(json.loads(m.msg)["Id"] for m in server.messages)
        assert received == expected
        assert max(received.values()) == 1
        assert len(expected) > 20
    assert collector.poison_queue.get_queue_properties().approximate_message_count == 0
