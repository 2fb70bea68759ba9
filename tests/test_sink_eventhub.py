"""The Event Hubs sink: settings, one event per record, batching and partitioning through the SDK's own
``EventDataBatch``, oversize records, failure classification and the health check.

There is no Event Hubs broker here. Batching runs on real ``EventDataBatch`` objects (the SDK's AMQP
size accounting) handed out by ``BatchingProducer``, a stand-in for ``EventHubProducerClient`` that
records what would have been sent. Connection failures run through the real ``EventHubProducerClient``
against a loopback port that refuses connections.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from azure.eventhub import EventData, EventDataBatch, EventHubProducerClient
from azure.eventhub.exceptions import (
    AuthenticationError,
    ConnectError,
    ConnectionLostError,
    EventDataError,
    EventDataSendError,
    EventHubError,
    OperationTimeoutError,
)

from o365collector.errors import ConfigError, SinkPermanentError, SinkTransientError
from o365collector.models import BlobContext, Record
from o365collector.sinks.batching import serialize
from o365collector.sinks.eventhub import EventHubSink, EventHubSinkSettings, build_producer
from o365collector.sinks.registry import parse_sink_settings

KEY = "c2VjcmV0LWtleS1uZXZlci1sb2ctbWU="  # a SAS key: must never reach logs, messages or repr
CONNECTION_STRING = f"Endpoint=sb://contoso-ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={KEY}"
MARKER = "body-marker-e7a1"
CONTEXT = BlobContext(
    tenant_id="11111111-2222-4333-8444-555555555555",
    content_type="Audit.SharePoint",
    content_id="20260301120000.000000000$20260301120000.000000000$audit_sharepoint$Audit_SharePoint$emea0026",
    content_created=dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC),
)
PARTITION_KEY = f"{CONTEXT.tenant_id}/{CONTEXT.content_type}"


def audit_records(count: int, *, pad: int = 0) -> list[Record]:
    return [
        {
            "CreationTime": "2026-03-01T11:59:58",
            "Id": f"00000000-0000-4000-8000-{index:012d}",
            "Operation": "FileAccessed",
            "RecordType": 6,
            "UserId": "adele.vance@contoso.example",
            "Workload": "SharePoint",
            "Note": MARKER,
            "Pad": "x" * pad,
            "Nested": {"Ünïcode": "✓", "Big": 2**70},
        }
        for index in range(count)
    ]


class RecordingBatch(EventDataBatch):
    """A real ``EventDataBatch`` that also keeps the events added to it, for the assertions."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events: list[EventData] = []

    def add(self, event_data: Any) -> None:
        super().add(event_data)  # raises ValueError when full, as the SDK does
        self.events.append(event_data)


class BatchingProducer:
    """Stands in for ``EventHubProducerClient``: real batches bounded by ``link_max_bytes``, sends recorded."""

    def __init__(self, *, link_max_bytes: int = 1024 * 1024, partitions: int = 4) -> None:
        self.link_max_bytes = link_max_bytes
        self.partitions = partitions
        self.created: list[tuple[str | None, int | None]] = []
        self.sent: list[RecordingBatch] = []
        self.send_errors: deque[Exception | None] = deque()
        self.properties_error: Exception | None = None
        self.closed = False

    def create_batch(self, *, partition_key: str | None = None, max_size_in_bytes: int | None = None) -> EventDataBatch:
        self.created.append((partition_key, max_size_in_bytes))
        if max_size_in_bytes and max_size_in_bytes > self.link_max_bytes:  # the SDK's own check and wording
            raise ValueError(
                f"Max message size: {max_size_in_bytes} is too large, acceptable max batch size is: "
                f"{self.link_max_bytes} bytes."
            )
        return RecordingBatch(max_size_in_bytes=max_size_in_bytes or self.link_max_bytes, partition_key=partition_key)

    def send_batch(self, event_data_batch: EventDataBatch) -> None:
        error = self.send_errors.popleft() if self.send_errors else None
        if error is not None:
            raise error
        assert isinstance(event_data_batch, RecordingBatch)
        self.sent.append(event_data_batch)

    def get_eventhub_properties(self) -> dict[str, Any]:
        if self.properties_error is not None:
            raise self.properties_error
        return {
            "eventhub_name": "o365-audit",
            "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "partition_ids": [str(i) for i in range(self.partitions)],
        }

    def close(self) -> None:
        self.closed = True

    @property
    def events(self) -> list[EventData]:
        return [event for batch in self.sent for event in batch.events]


def settings(**overrides: str) -> EventHubSinkSettings:
    env = {"SINK_EVENTHUB_NAMESPACE": "contoso-ns.servicebus.windows.net", "SINK_EVENTHUB_NAME": "o365-audit"}
    return EventHubSinkSettings.from_env({**env, **overrides})


@pytest.fixture
def producer() -> BatchingProducer:
    return BatchingProducer()


def make_sink(producer: BatchingProducer, **overrides: str) -> EventHubSink:
    return EventHubSink(settings(**overrides), producer=producer)


def body_of(event: EventData) -> bytes:
    return b"".join(event.body)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that is bound but not listening: every connection attempt is refused at once."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    yield holder.getsockname()[1]
    holder.close()


def real_producer(port: int) -> EventHubProducerClient:
    """The SDK's producer, aimed at ``port`` on loopback, with no retries (each failure surfaces at once)."""
    return EventHubProducerClient.from_connection_string(
        CONNECTION_STRING, eventhub_name="o365-audit", retry_total=0, custom_endpoint_address=f"sb://127.0.0.1:{port}"
    )


# -- events


def test_one_event_per_record_with_the_exact_json_and_routing_properties(producer: BatchingProducer) -> None:
    records = audit_records(3)
    make_sink(producer).send(records, CONTEXT)

    (batch,) = producer.sent
    assert len(batch) == 3
    for index, (event, record) in enumerate(zip(producer.events, records, strict=True)):
        assert body_of(event) == serialize(record)  # byte for byte what serialize() gives
        assert json.loads(body_of(event)) == record
        assert event.content_type == "application/json"
        assert event.properties == {
            "tenant_id": CONTEXT.tenant_id,
            "content_type": CONTEXT.content_type,
            "content_id": CONTEXT.content_id,
            "record_index": index,
        }
        assert event.partition_key == PARTITION_KEY


def test_each_tenant_and_content_type_gets_its_own_partition_key(producer: BatchingProducer) -> None:
    sink = make_sink(producer)
    other = BlobContext("22222222-2222-4333-8444-555555555555", "Audit.Exchange", "cid-2", CONTEXT.content_created)
    sink.send(audit_records(2), CONTEXT)
    sink.send(audit_records(2), other)
    assert [key for key, _ in producer.created] == [PARTITION_KEY, f"{other.tenant_id}/Audit.Exchange"]
    assert [event.partition_key for event in producer.events] == [PARTITION_KEY] * 2 + [
        f"{other.tenant_id}/Audit.Exchange"
    ] * 2


def test_nothing_to_send_makes_no_call(producer: BatchingProducer) -> None:
    make_sink(producer).send([], CONTEXT)
    assert producer.created == []
    assert producer.sent == []


# -- batching


def test_a_full_batch_is_sent_and_a_new_one_started_keeping_order(producer: BatchingProducer) -> None:
    records = audit_records(60, pad=300)
    make_sink(producer, SINK_EVENTHUB_MAX_BATCH_BYTES="4096").send(records, CONTEXT)

    assert len(producer.sent) > 3
    assert all(len(batch) > 0 and batch.size_in_bytes <= 4096 for batch in producer.sent)
    assert [json.loads(body_of(e)) for e in producer.events] == records  # each once, in order
    assert [e.properties["record_index"] for e in producer.events] == list(range(60))
    # Batches are filled: the first event of each batch would not have fitted in the one before.
    for before, after in zip(producer.sent, producer.sent[1:], strict=False):
        probe = EventDataBatch(max_size_in_bytes=4096, partition_key=PARTITION_KEY)
        for event in [*before.events, after.events[0]]:
            try:
                probe.add(event)
            except ValueError:
                break
        else:
            pytest.fail("a batch was sent while the next event still fitted")


def test_without_a_setting_the_hubs_own_limit_bounds_the_batch(producer: BatchingProducer) -> None:
    producer.link_max_bytes = 8 * 1024  # what the hub's AMQP link reports
    make_sink(producer).send(audit_records(40, pad=300), CONTEXT)
    assert {size for _, size in producer.created} == {None}
    assert len(producer.sent) > 1
    assert all(batch.max_size_in_bytes == 8 * 1024 for batch in producer.sent)


def test_a_record_too_large_for_an_empty_batch_fails_the_blob_before_anything_is_sent(
    producer: BatchingProducer,
) -> None:
    records = audit_records(4)
    records[2] = dict(records[2], Pad="y" * 6000)
    with pytest.raises(SinkPermanentError) as caught:
        make_sink(producer, SINK_EVENTHUB_MAX_BATCH_BYTES="4096").send(records, CONTEXT)
    message = str(caught.value)
    assert f"record 2 of content {CONTEXT.content_id}" in message
    assert "4096 bytes per batch" in message
    assert producer.sent == [], "no part of the blob was sent"


def test_a_batch_limit_above_the_hubs_is_refused_as_a_setting_problem(producer: BatchingProducer) -> None:
    producer.link_max_bytes = 256 * 1024  # a Basic namespace
    with pytest.raises(SinkPermanentError, match="SINK_EVENTHUB_MAX_BATCH_BYTES"):
        make_sink(producer, SINK_EVENTHUB_MAX_BATCH_BYTES=str(1024 * 1024)).send(audit_records(1), CONTEXT)


# -- failures


@pytest.mark.parametrize(
    ("error_type", "condition", "kind", "fragment"),
    [
        (AuthenticationError, "amqp:unauthorized-access", SinkPermanentError, "Azure Event Hubs Data Sender"),
        (AuthenticationError, None, SinkPermanentError, "SINK_EVENTHUB_CONNECTION_STRING"),
        (ConnectError, "amqp:not-found", SinkPermanentError, "check SINK_EVENTHUB_NAME"),
        (EventHubError, "com.microsoft:entity-disabled", SinkPermanentError, "is disabled"),
        (EventDataSendError, "amqp:link:message-size-exceeded", SinkPermanentError, "SINK_EVENTHUB_MAX_BATCH_BYTES"),
        (EventDataError, None, SinkPermanentError, "refused the event data"),
        (ConnectError, "amqp:socket-error", SinkTransientError, "SINK_EVENTHUB_NAMESPACE"),
        (ConnectionLostError, "amqp:link:detach-forced", SinkTransientError, "failed after 3 retries"),
        (OperationTimeoutError, None, SinkTransientError, "failed after 3 retries"),
        (EventHubError, "com.microsoft:server-busy", SinkTransientError, "failed after 3 retries"),
    ],
    ids=[
        "unauthorized", "auth", "not-found", "disabled", "message-size", "event-data",
        "socket", "link-lost", "timeout", "server-busy",
    ],
)  # fmt: skip
def test_sdk_failures_are_classified(
    producer: BatchingProducer,
    error_type: type[EventHubError],
    condition: str | None,
    kind: type[Exception],
    fragment: str,
) -> None:
    error = error_type("the service said no")
    if condition is not None:
        error.error = condition.partition(":")[2]  # how the SDK turns the AMQP condition into ``.error``
    producer.send_errors.append(error)
    with pytest.raises(kind) as caught:
        make_sink(producer).send(audit_records(2), CONTEXT)
    assert fragment in str(caught.value)
    assert caught.value.__cause__ is error


def test_a_failure_after_some_batches_raises_and_the_blob_is_sent_whole_again(producer: BatchingProducer) -> None:
    sink = make_sink(producer, SINK_EVENTHUB_MAX_BATCH_BYTES="4096")
    records = audit_records(30, pad=300)
    producer.send_errors.extend([None, ConnectionLostError("link detached")])
    with pytest.raises(SinkTransientError):
        sink.send(records, CONTEXT)
    assert len(producer.sent) == 1  # at least once: the first batch went out
    sink.send(records, CONTEXT)  # the queue's redelivery
    assert [json.loads(body_of(e)) for e in producer.events[len(producer.sent[0]) :]] == records


def test_the_real_client_failing_to_connect_is_transient_and_names_the_namespace(
    refused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    client = real_producer(refused_port)
    sink = EventHubSink(
        settings(SINK_EVENTHUB_CONNECTION_STRING=CONNECTION_STRING, SINK_EVENTHUB_NAMESPACE=""), producer=client
    )
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(SinkTransientError) as on_send:
            sink.send(audit_records(2), CONTEXT)
        with pytest.raises(SinkTransientError) as on_check:
            sink.check()
    sink.close()
    for caught in (on_send, on_check):
        message = str(caught.value)
        assert "cannot connect to event hub 'o365-audit' in contoso-ns.servicebus.windows.net" in message
        assert "Connection refused" in message
        assert "\n" not in message
        assert isinstance(caught.value.__cause__, ConnectError)
    assert KEY not in caplog.text + str(on_send.value) + str(on_check.value)
    assert MARKER not in caplog.text


# -- health check


def test_check_reads_the_hub_properties_and_logs_one_line(
    producer: BatchingProducer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="o365collector"):
        make_sink(producer).check()
    (line,) = [r.getMessage() for r in caplog.records if r.name == "o365collector.sinks.eventhub"]
    assert (
        line == "eventhub sink: event hub 'o365-audit' in contoso-ns.servicebus.windows.net is reachable (4 partitions)"
    )
    assert producer.sent == []


def test_check_fails_saying_what_to_fix(producer: BatchingProducer) -> None:
    producer.properties_error = AuthenticationError("Management authentication failed. Status code: 401")
    with pytest.raises(SinkPermanentError, match="SINK_EVENTHUB_CONNECTION_STRING"):
        make_sink(producer).check()


def test_close_closes_the_producer(producer: BatchingProducer) -> None:
    make_sink(producer).close()
    assert producer.closed


# -- settings


def test_namespace_and_name_with_the_default_identity() -> None:
    parsed = settings()
    assert parsed.namespace == "contoso-ns.servicebus.windows.net"
    assert parsed.eventhub_name == "o365-audit"
    assert parsed.connection_string is None
    assert parsed.managed_identity_client_id is None
    assert parsed.retry_total == 3
    assert parsed.max_batch_bytes is None
    assert parsed.websockets is False


def test_a_connection_string_names_namespace_and_hub() -> None:
    parsed = EventHubSinkSettings.from_env({"SINK_EVENTHUB_CONNECTION_STRING": CONNECTION_STRING + ";EntityPath=hub1"})
    assert (parsed.namespace, parsed.eventhub_name) == ("contoso-ns.servicebus.windows.net", "hub1")
    assert KEY not in repr(parsed)
    same = EventHubSinkSettings.from_env(
        {"SINK_EVENTHUB_CONNECTION_STRING": CONNECTION_STRING + ";EntityPath=hub1", "SINK_EVENTHUB_NAME": "hub1"}
    )
    assert same.eventhub_name == "hub1"


@pytest.mark.parametrize(
    ("env", "setting", "fragment"),
    [
        ({}, "SINK_EVENTHUB_NAMESPACE", "is required"),
        ({"SINK_EVENTHUB_NAMESPACE": "contoso-ns"}, "SINK_EVENTHUB_NAMESPACE", "fully qualified"),
        ({"SINK_EVENTHUB_NAMESPACE": "bad_ns!.servicebus.windows.net"}, "SINK_EVENTHUB_NAMESPACE", "host name"),
        ({"SINK_EVENTHUB_NAMESPACE": "ns.servicebus.windows.net"}, "SINK_EVENTHUB_NAME", "is required"),
        (
            {"SINK_EVENTHUB_NAMESPACE": "ns.servicebus.windows.net", "SINK_EVENTHUB_NAME": "-hub"},
            "SINK_EVENTHUB_NAME",
            "not an event hub name",
        ),
        (
            {
                "SINK_EVENTHUB_NAMESPACE": "ns.servicebus.windows.net",
                "SINK_EVENTHUB_NAME": "h",
                "SINK_EVENTHUB_CLIENT_ID": "x",
            },
            "SINK_EVENTHUB_CLIENT_ID",
            "GUID",
        ),
        ({"SINK_EVENTHUB_CONNECTION_STRING": f"SharedAccessKey={KEY}"}, "SINK_EVENTHUB_CONNECTION_STRING", "not an"),
        ({"SINK_EVENTHUB_CONNECTION_STRING": CONNECTION_STRING}, "SINK_EVENTHUB_NAME", "is required"),
        (
            {"SINK_EVENTHUB_CONNECTION_STRING": CONNECTION_STRING + ";EntityPath=a", "SINK_EVENTHUB_NAME": "b"},
            "SINK_EVENTHUB_NAME",
            "differs from the EntityPath",
        ),
        (
            {
                "SINK_EVENTHUB_CONNECTION_STRING": CONNECTION_STRING,
                "SINK_EVENTHUB_NAMESPACE": "ns.servicebus.windows.net",
            },
            "SINK_EVENTHUB_NAMESPACE",
            "keep one",
        ),
        (
            {
                "SINK_EVENTHUB_CONNECTION_STRING": CONNECTION_STRING,
                "SINK_EVENTHUB_CLIENT_ID": "11111111-2222-4333-8444-555555555555",
            },
            "SINK_EVENTHUB_CLIENT_ID",
            "keep one",
        ),
        (
            {
                "SINK_EVENTHUB_NAMESPACE": "ns.servicebus.windows.net",
                "SINK_EVENTHUB_NAME": "h",
                "SINK_EVENTHUB_MAX_BATCH_BYTES": "100",
            },
            "SINK_EVENTHUB_MAX_BATCH_BYTES",
            "minimum",
        ),
        (
            {
                "SINK_EVENTHUB_NAMESPACE": "ns.servicebus.windows.net",
                "SINK_EVENTHUB_NAME": "h",
                "SINK_EVENTHUB_RETRY_TOTAL": "11",
            },
            "SINK_EVENTHUB_RETRY_TOTAL",
            "maximum",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(env: dict[str, str], setting: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        EventHubSinkSettings.from_env(env)
    assert caught.value.setting == setting
    assert fragment in caught.value.problem
    assert KEY not in str(caught.value)


@pytest.mark.parametrize(
    "env",
    [
        {"SINK_EVENTHUB_CONNECTION_STRING": CONNECTION_STRING, "SINK_EVENTHUB_NAME": "o365-audit"},
        {"SINK_EVENTHUB_NAMESPACE": "contoso-ns.servicebus.windows.net", "SINK_EVENTHUB_NAME": "o365-audit"},
        {
            "SINK_EVENTHUB_NAMESPACE": "contoso-ns.servicebus.windows.net",
            "SINK_EVENTHUB_NAME": "o365-audit",
            "SINK_EVENTHUB_CLIENT_ID": "11111111-2222-4333-8444-555555555555",
            "SINK_EVENTHUB_WEBSOCKETS": "true",
        },
    ],
    ids=["connection-string", "default-identity", "user-assigned-identity"],
)
def test_the_settings_build_the_sdk_producer_without_connecting(env: dict[str, str]) -> None:
    parsed = EventHubSinkSettings.from_env({**env, "SINK_EVENTHUB_RETRY_TOTAL": "5"})
    client = build_producer(parsed)
    try:
        assert isinstance(client, EventHubProducerClient)
        assert client.eventhub_name == "o365-audit"
        # Private attributes, read only here: the SDK exposes neither the host nor the retry budget.
        assert client._address.hostname == "contoso-ns.servicebus.windows.net"
        assert client._config.max_retries == 5  # the SDK's own retries, from SINK_EVENTHUB_RETRY_TOTAL
    finally:
        client.close()


def test_the_registry_builds_it_from_sink_type() -> None:
    (parsed,) = parse_sink_settings(
        {"SINK_TYPE": "eventhub", "SINK_EVENTHUB_NAMESPACE": "ns.servicebus.windows.net", "SINK_EVENTHUB_NAME": "h"}
    )
    assert isinstance(parsed, EventHubSinkSettings)
    assert parsed.name == "eventhub"


# -- shape (SINK_EVENTHUB_SHAPE)


def test_flat_shape_sends_o365_audit_fields_and_timestamp(producer: BatchingProducer) -> None:
    records = audit_records(2)
    make_sink(producer, SINK_EVENTHUB_SHAPE="flat").send(records, CONTEXT)
    bodies = [json.loads(body_of(event)) for event in producer.events]
    assert bodies == [
        {"@timestamp": "2026-03-01T11:59:58Z", **{f"o365.audit.{key}": value for key, value in record.items()}}
        for record in records
    ]
    assert bodies[0]["o365.audit.Nested"] == {"Ünïcode": "✓", "Big": 2**70}  # nested kept whole, exact
    assert [event.properties["record_index"] for event in producer.events] == [0, 1]


def test_raw_shape_is_the_default(producer: BatchingProducer) -> None:
    records = audit_records(1)
    make_sink(producer).send(records, CONTEXT)
    assert [body_of(event) for event in producer.events] == [serialize(records[0])]


def test_an_unknown_shape_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="SINK_EVENTHUB_SHAPE"):
        settings(SINK_EVENTHUB_SHAPE="ecs")
