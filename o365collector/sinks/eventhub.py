"""The Azure Event Hubs sink: one event per audit record, in batches the hub accepts.

A thin wrapper around ``azure-eventhub``'s ``EventHubProducerClient``. For each content blob the sink
asks the producer for ``EventDataBatch`` objects (``create_batch(partition_key=...)``) and fills them
with ``EventDataBatch.add`` until it raises ``ValueError`` (full); the batch size limit is the hub's
own (from the AMQP link: 1 MB on Standard, 256 KB on Basic) unless ``SINK_EVENTHUB_MAX_BATCH_BYTES``
lowers it. All batches of a blob are built before the first is sent, so a record too large for an
empty batch fails the blob (``SinkPermanentError`` naming the content id and the record's index)
before anything of it is sent, and is never dropped silently.

Each event:

* body: the record's JSON exactly as ``batching.serialize`` writes it (UTF-8, unchanged record), or with
  ``SINK_EVENTHUB_SHAPE=flat`` ``shape.flat_record`` of it (``o365.audit.*`` fields and ``@timestamp``);
* ``content_type``: ``application/json``;
* application properties: ``tenant_id``, ``content_type``, ``content_id`` and ``record_index`` (the
  record's position in its blob: with ``content_id`` a stable key consumers can de-duplicate on);
* partition key ``{tenant_id}/{content_type}``: one tenant's records of one content type stay in order
  on one partition.

Authentication: ``SINK_EVENTHUB_CONNECTION_STRING`` (a SAS connection string, kept secret), or
``SINK_EVENTHUB_NAMESPACE`` (``<ns>.servicebus.windows.net``) with a managed identity
(``SINK_EVENTHUB_CLIENT_ID`` for a user-assigned one, else ``DefaultAzureCredential``), which needs the
*Azure Event Hubs Data Sender* role on the hub or namespace.

The SDK retries retryable failures itself (``SINK_EVENTHUB_RETRY_TOTAL`` times); this module does not
retry again. What reaches it is classified:

=======================================  =========================================================
``AuthenticationError``, unauthorized    ``SinkPermanentError``: check the connection string / role
not found, entity disabled / deleted     ``SinkPermanentError``: check SINK_EVENTHUB_NAME / namespace
message size exceeded                    ``SinkPermanentError``: lower SINK_EVENTHUB_MAX_BATCH_BYTES
``EventDataError``                       ``SinkPermanentError``: the client refused the event data
``ConnectError`` (DNS, refused, TLS)     ``SinkTransientError`` naming SINK_EVENTHUB_NAMESPACE
other ``EventHubError`` (lost link,      ``SinkTransientError``
timeout, server busy)
=======================================  =========================================================

A blob whose batches were partly sent before a failure is sent whole again when the queue redelivers
it: delivery is at least once. The connection string and record bodies never appear in logs.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from azure.core.credentials import TokenCredential
from azure.eventhub import EventData, EventDataBatch, EventHubProducerClient, TransportType, parse_connection_string
from azure.eventhub.exceptions import AuthenticationError, ConnectError, EventDataError, EventHubError
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

from ..envparse import Environ, Secret, get_bool, get_int, get_secret, get_str, parse_guid
from ..errors import CollectorError, ConfigError, SinkPermanentError, SinkTransientError
from ..models import BlobContext, Record
from .batching import serialize
from .shape import flat_record, get_shape

log = logging.getLogger(__name__)

# Defaults (one place, with the reason for each).
# The SDK's own default: a few quick retries; the queue's redelivery is the longer wait.
DEFAULT_RETRY_TOTAL = 3

# Event Hubs names: 1-256 of letters, digits, periods, hyphens and underscores, starting and ending
# with a letter or digit. Namespaces: a DNS name (<ns>.servicebus.windows.net in the public cloud).
_HUB_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,254}[A-Za-z0-9])?$")
_NAMESPACE = re.compile(r"^(?=.{4,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})+$")

# AMQP error conditions (``EventHubError.error``, the part after "amqp:" / "com.microsoft:") that no
# retry will fix, with what the operator should do.
_PERMANENT_CONDITIONS: dict[str, str] = {
    "unauthorized-access": "the namespace refused our credentials: check SINK_EVENTHUB_CONNECTION_STRING, or give "
    "the identity the Azure Event Hubs Data Sender role on the event hub",
    "not-found": "the event hub does not exist: check SINK_EVENTHUB_NAME and the namespace",
    "resource-deleted": "the event hub was deleted: check SINK_EVENTHUB_NAME and the namespace",
    "entity-disabled": "the event hub is disabled: enable it in the namespace",
    "link:message-size-exceeded": "the batch is larger than the hub accepts: lower SINK_EVENTHUB_MAX_BATCH_BYTES",
    "argument-error": "the service refused the request's arguments",
    "argument-out-of-range": "the service refused the request's arguments",
}


class Producer(Protocol):
    """The part of ``EventHubProducerClient`` the sink uses (a test stand-in implements the same)."""

    def create_batch(
        self, *, partition_key: str | None = None, max_size_in_bytes: int | None = None
    ) -> EventDataBatch: ...

    def send_batch(self, event_data_batch: EventDataBatch) -> None: ...

    def get_eventhub_properties(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class EventHubSinkSettings:
    """``SINK_EVENTHUB_*``: which hub, as whom, and the SDK's retry budget."""

    name: ClassVar[str] = "eventhub"

    namespace: str
    """Fully qualified: ``<ns>.servicebus.windows.net``."""
    eventhub_name: str
    connection_string: Secret | None = field(default=None, repr=False)
    managed_identity_client_id: str | None = None
    retry_total: int = DEFAULT_RETRY_TOTAL
    max_batch_bytes: int | None = None
    """None: the hub's own limit, as the AMQP link reports it."""
    websockets: bool = False
    shape: str = "raw"
    """``raw``: each record as served; ``flat``: ``shape.flat_record`` (``o365.audit.*`` and ``@timestamp``)."""

    @classmethod
    def from_env(cls, env: Environ) -> EventHubSinkSettings:
        connection_string = get_secret(env, "SINK_EVENTHUB_CONNECTION_STRING")
        namespace = get_str(env, "SINK_EVENTHUB_NAMESPACE")
        hub = get_str(env, "SINK_EVENTHUB_NAME")
        client_id = get_str(env, "SINK_EVENTHUB_CLIENT_ID")
        if connection_string is not None:
            if namespace is not None:
                raise ConfigError(
                    "SINK_EVENTHUB_NAMESPACE",
                    "is set while SINK_EVENTHUB_CONNECTION_STRING names the namespace too: keep one of them",
                )
            if client_id is not None:
                raise ConfigError(
                    "SINK_EVENTHUB_CLIENT_ID",
                    "selects a managed identity, but SINK_EVENTHUB_CONNECTION_STRING is set too: keep one of them",
                )
            namespace, hub = _from_connection_string(connection_string, hub)
        elif namespace is None:
            raise ConfigError(
                "SINK_EVENTHUB_NAMESPACE",
                "is required (e.g. my-ns.servicebus.windows.net, with a managed identity), "
                "or set SINK_EVENTHUB_CONNECTION_STRING",
            )
        else:
            namespace = _parse_namespace(namespace)
        if hub is None:
            raise ConfigError("SINK_EVENTHUB_NAME", "is required (the event hub's name within the namespace)")
        if not _HUB_NAME.match(hub):
            raise ConfigError("SINK_EVENTHUB_NAME", f"{hub!r} is not an event hub name")
        max_batch = get_int(env, "SINK_EVENTHUB_MAX_BATCH_BYTES", 0, minimum=0, maximum=100 * 1024 * 1024)
        if 0 < max_batch < 1024:
            raise ConfigError(
                "SINK_EVENTHUB_MAX_BATCH_BYTES", f"{max_batch} is below the minimum 1024 (0: the hub's limit)"
            )
        return cls(
            namespace=namespace,
            eventhub_name=hub,
            connection_string=connection_string,
            managed_identity_client_id=parse_guid("SINK_EVENTHUB_CLIENT_ID", client_id) if client_id else None,
            retry_total=get_int(env, "SINK_EVENTHUB_RETRY_TOTAL", DEFAULT_RETRY_TOTAL, minimum=0, maximum=10),
            max_batch_bytes=max_batch or None,
            websockets=get_bool(env, "SINK_EVENTHUB_WEBSOCKETS", False),
            shape=get_shape(env, "SINK_EVENTHUB_SHAPE"),
        )

    def create(self) -> EventHubSink:
        return EventHubSink(self)


def _from_connection_string(secret: Secret, hub: str | None) -> tuple[str, str | None]:
    try:
        properties = parse_connection_string(secret.reveal())
    except ValueError as err:
        # The SDK's messages name the missing part, never the key; the text itself is not echoed.
        raise ConfigError(
            "SINK_EVENTHUB_CONNECTION_STRING", f"is not an Event Hubs connection string ({err})"
        ) from None
    entity = properties.eventhub_name
    if entity and hub and entity != hub:
        raise ConfigError(
            "SINK_EVENTHUB_NAME",
            f"{hub!r} differs from the EntityPath {entity!r} of SINK_EVENTHUB_CONNECTION_STRING: keep one of them",
        )
    return properties.fully_qualified_namespace, hub or entity or None


def _parse_namespace(text: str) -> str:
    value = text.strip().removeprefix("sb://").removeprefix("https://").rstrip("/")
    if "." not in value:
        raise ConfigError(
            "SINK_EVENTHUB_NAMESPACE",
            f"{text!r} is not fully qualified (expected e.g. {value}.servicebus.windows.net)",
        )
    if not _NAMESPACE.match(value):
        raise ConfigError(
            "SINK_EVENTHUB_NAMESPACE", f"{text!r} is not a host name (expected <ns>.servicebus.windows.net)"
        )
    return value.lower()


def build_producer(settings: EventHubSinkSettings) -> EventHubProducerClient:
    """The SDK producer the settings describe. Builds no connection: the first call opens it."""
    options: dict[str, Any] = {
        "retry_total": settings.retry_total,
        "transport_type": TransportType.AmqpOverWebsocket if settings.websockets else TransportType.Amqp,
    }
    if settings.connection_string is not None:
        return EventHubProducerClient.from_connection_string(
            settings.connection_string.reveal(), eventhub_name=settings.eventhub_name, **options
        )
    credential: TokenCredential = (
        ManagedIdentityCredential(client_id=settings.managed_identity_client_id)
        if settings.managed_identity_client_id
        else DefaultAzureCredential()
    )
    return EventHubProducerClient(settings.namespace, settings.eventhub_name, credential, **options)


class EventHubSink:
    """Sends each blob's records as events through an ``EventHubProducerClient``; see the module docstring."""

    name = "eventhub"

    def __init__(self, settings: EventHubSinkSettings, *, producer: Producer | None = None) -> None:
        self._settings = settings
        self._producer: Producer = producer if producer is not None else build_producer(settings)
        # The SDK does not make the producer or a batch thread-safe, and the queue runner sends from
        # several threads: one blob's batches are made and sent under this lock, then the next blob's.
        self._lock = threading.Lock()
        self._where = f"event hub {settings.eventhub_name!r} in {settings.namespace}"

    def check(self) -> None:
        """Read the hub's properties (a management call: no event is sent) and log one line."""
        try:
            with self._lock:
                properties = self._producer.get_eventhub_properties()
        except (EventHubError, ValueError) as err:
            raise self._classify(err) from err
        partitions = properties.get("partition_ids") or []
        log.info("eventhub sink: %s is reachable (%d partitions)", self._where, len(partitions))

    def send(self, records: Sequence[Record], context: BlobContext) -> None:
        """Send one event per record, in as few batches as the hub's size limit allows; no records, no call."""
        if not records:
            return
        extra = {
            "tenant_id": context.tenant_id,
            "content_type": context.content_type,
            "content_id": context.content_id,
        }
        try:
            with self._lock:
                batches = self._batches(records, context)
                for batch in batches:
                    self._producer.send_batch(batch)
        except (EventHubError, ValueError) as err:  # an oversize record raised SinkPermanentError already
            raise self._classify(err) from err
        log.debug(
            "eventhub sink: %d records of content %s sent in %d batches",
            len(records),
            context.content_id,
            len(batches),
            extra=extra,
        )

    def close(self) -> None:
        with self._lock:
            self._producer.close()

    def _batches(self, records: Sequence[Record], context: BlobContext) -> list[EventDataBatch]:
        """Every record in an ``EventDataBatch``, in order; raises before anything is sent if one cannot fit."""
        key = f"{context.tenant_id}/{context.content_type}"
        batches = [self._new_batch(key)]
        flat = self._settings.shape == "flat"
        for index, record in enumerate(records):
            body = serialize(flat_record(record) if flat else record)
            event = self._event(body, index, context)
            try:
                batches[-1].add(event)
                continue
            except ValueError:
                if len(batches[-1]) == 0:
                    raise self._oversize(index, len(body), batches[-1], context) from None
            batches.append(self._new_batch(key))
            try:
                batches[-1].add(event)
            except ValueError:
                raise self._oversize(index, len(body), batches[-1], context) from None
        return batches

    def _new_batch(self, partition_key: str) -> EventDataBatch:
        return self._producer.create_batch(
            partition_key=partition_key, max_size_in_bytes=self._settings.max_batch_bytes
        )

    @staticmethod
    def _event(body: bytes, index: int, context: BlobContext) -> EventData:
        event = EventData(body)
        event.content_type = "application/json"
        event.properties = {
            "tenant_id": context.tenant_id,
            "content_type": context.content_type,
            "content_id": context.content_id,
            "record_index": index,
        }
        return event

    def _oversize(self, index: int, size: int, batch: EventDataBatch, context: BlobContext) -> CollectorError:
        return SinkPermanentError(
            f"record {index} of content {context.content_id} ({size} bytes of JSON) does not fit in an empty batch of "
            f"{self._where} (at most {batch.max_size_in_bytes} bytes per batch): the record cannot be sent as one "
            "event (a Premium or Dedicated namespace accepts larger events)"
        )

    def _classify(self, err: EventHubError | ValueError) -> CollectorError:
        if isinstance(err, ValueError):
            # create_batch refuses a max_size_in_bytes above the link's limit.
            return SinkPermanentError(f"{self._where}: {str(err)[:200]} (check SINK_EVENTHUB_MAX_BATCH_BYTES)")
        condition = (err.error or "").lower()
        summary = _first_line(err)
        if isinstance(err, AuthenticationError) and condition not in _PERMANENT_CONDITIONS:
            condition = "unauthorized-access"
        hint = _PERMANENT_CONDITIONS.get(condition)
        if hint is not None:
            return SinkPermanentError(f"{self._where}: {hint} ({type(err).__name__}: {summary})")
        if isinstance(err, EventDataError):
            return SinkPermanentError(f"{self._where} refused the event data ({summary})")
        if isinstance(err, ConnectError):
            return SinkTransientError(
                f"cannot connect to {self._where} ({summary}): check SINK_EVENTHUB_NAMESPACE and that the network "
                "allows AMQP (port 5671) or set SINK_EVENTHUB_WEBSOCKETS=true (port 443)"
            )
        return SinkTransientError(f"{self._where} failed after {self._settings.retry_total} retries ({summary})")


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]
