"""The Azure Blob archive sink on Azurite: path layout, exact gzip NDJSON, overwrite, error classes, check()."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.storage.blob import ContainerClient

from o365collector.azurite import ACCOUNT, Azurite
from o365collector.errors import ConfigError, SinkPermanentError, SinkTransientError
from o365collector.models import BlobContext, Record
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.sinks.batching import serialize
from o365collector.sinks.blob import BlobSink, BlobSinkSettings, blob_name
from o365collector.sinks.file import safe_name
from o365collector.sinks.registry import parse_sink_settings
from tests.receivers import HttpReceiver, refusing_url
from tests.support import TENANT

TID = TENANT.tenant_id
CONTENT_ID = "20260304223000.000000000$20260304223000.000000000$audit_exchange$Audit_Exchange$emea0026"
SinkFactory = Callable[..., BlobSink]


def context(content_id: str = CONTENT_ID, created: dt.datetime | None = None) -> BlobContext:
    return BlobContext(
        tenant_id=TID,
        content_type="Audit.Exchange",
        content_id=content_id,
        content_created=created or dt.datetime(2026, 3, 4, 22, 30, tzinfo=dt.UTC),
    )


def records(count: int, tag: str = "a") -> list[dict[str, Any]]:
    return [
        {"Id": f"{tag}-{index}", "Operation": "Send", "Big": 2**64 + index, "Name": "Zoë", "Deep": {"L": [1.5, None]}}
        for index in range(count)
    ]


@pytest.fixture
def container_name() -> str:
    return f"archive-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def container(azurite: Azurite, container_name: str) -> Iterator[ContainerClient]:
    client = ContainerClient.from_connection_string(azurite.connection_string, container_name)
    client.create_container()
    yield client
    client.close()


@pytest.fixture
def make_sink(azurite: Azurite, container_name: str) -> Iterator[SinkFactory]:
    made: list[BlobSink] = []

    def factory(**overrides: str) -> BlobSink:
        env = {"SINK_BLOB_CONNECTION_STRING": azurite.connection_string, "SINK_BLOB_CONTAINER": container_name}
        sink = BlobSinkSettings.from_env(env | overrides).create()
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        sink.close()


def read_archive(container: ContainerClient, name: str) -> bytes:
    """The blob's stored bytes (still gzip: ``decompress=False``), gunzipped here."""
    stored = container.download_blob(name, decompress=False).readall()
    return gzip.decompress(stored)


# -- layout and content


def test_path_layout_is_date_partitioned_and_named_after_the_content_id(
    container: ContainerClient, make_sink: SinkFactory
) -> None:
    make_sink().send(records(2), context())

    (name,) = [b.name for b in container.list_blobs()]
    assert name == f"{TID}/Audit.Exchange/2026/03/04/{safe_name(CONTENT_ID)}.json.gz"
    assert name.split("/")[-1].startswith("20260304223000.000000000_20260304223000.000000000_audit_exchange_")
    assert blob_name(context()) == name


def test_date_is_content_created_in_utc() -> None:
    """00:30 at UTC+02:00 on the 5th is 22:30 UTC on the 4th."""
    created = dt.datetime(2026, 3, 5, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert blob_name(context(created=created)).split("/")[2:5] == ["2026", "03", "04"]


def test_content_is_gzip_ndjson_of_the_records_exactly(container: ContainerClient, make_sink: SinkFactory) -> None:
    given: list[Record] = [*records(3), {"Id": "huge", "N": 10**40, "U": '𝄞 \u2028 "q"'}]
    make_sink().send(given, context())
    name = blob_name(context())

    body = read_archive(container, name)
    assert body == b"".join(serialize(record) + b"\n" for record in given)
    assert [json.loads(line) for line in body.splitlines()] == given
    properties = container.get_blob_client(name).get_blob_properties()
    assert properties.content_settings.content_type == "application/x-ndjson"
    assert properties.content_settings.content_encoding == "gzip"
    assert properties.metadata == {
        "tenant_id": TID,
        "content_type": "Audit.Exchange",
        "content_id": CONTENT_ID,
        "records": "4",
    }


def test_odd_content_ids_get_safe_distinct_names_and_encoded_metadata(
    container: ContainerClient, make_sink: SinkFactory
) -> None:
    sink = make_sink()
    odd = ["a/b", "a?b", "a b", "ünï/../x"]
    for content_id in odd:
        sink.send(records(1, tag=content_id), context(content_id=content_id))

    names = [b.name for b in container.list_blobs(include=["metadata"])]
    assert len(names) == len(odd)
    assert all(name.count("/") == 5 for name in names), "the content id never adds a folder"
    metadata = {b.metadata["content_id"] for b in container.list_blobs(include=["metadata"])}
    assert metadata == {"a/b", "a?b", "a b", "%C3%BCn%C3%AF%2F..%2Fx"}


def test_redelivery_overwrites_instead_of_duplicating(container: ContainerClient, make_sink: SinkFactory) -> None:
    sink = make_sink()
    sink.send(records(5, tag="first"), context())
    sink.send(records(3, tag="second"), context())

    (name,) = [b.name for b in container.list_blobs()]
    assert [json.loads(line)["Id"] for line in read_archive(container, name).splitlines()] == [
        "second-0",
        "second-1",
        "second-2",
    ]


def test_an_empty_content_blob_is_archived_as_an_empty_file(container: ContainerClient, make_sink: SinkFactory) -> None:
    make_sink().send([], context())
    assert read_archive(container, blob_name(context())) == b""


# -- errors and check()


def test_missing_container_is_permanent_and_names_the_setting(azurite: Azurite, make_sink: SinkFactory) -> None:
    sink = make_sink()
    with pytest.raises(SinkPermanentError) as sent:
        sink.send(records(1), context())
    with pytest.raises(SinkPermanentError) as checked:
        sink.check()
    for caught in (sent, checked):
        text = str(caught.value)
        assert "ContainerNotFound" in text
        assert "SINK_BLOB_CONTAINER" in text
        assert "SINK_BLOB_CREATE_CONTAINER" in text
        assert "\n" not in text


def test_missing_container_is_created_when_allowed(
    azurite: Azurite, container_name: str, make_sink: SinkFactory
) -> None:
    make_sink(SINK_BLOB_CREATE_CONTAINER="true").send(records(2), context())
    client = ContainerClient.from_connection_string(azurite.connection_string, container_name)
    with client:
        assert len(read_archive(client, blob_name(context())).splitlines()) == 2


def test_check_creates_the_container_when_allowed(
    azurite: Azurite, container_name: str, make_sink: SinkFactory
) -> None:
    make_sink(SINK_BLOB_CREATE_CONTAINER="true").check()
    with ContainerClient.from_connection_string(azurite.connection_string, container_name) as client:
        assert client.exists()
        assert list(client.list_blobs()) == []


def test_check_passes_and_writes_nothing(container: ContainerClient, make_sink: SinkFactory) -> None:
    make_sink().check()
    assert list(container.list_blobs()) == []


def test_wrong_account_key_is_permanent_and_names_the_connection_string(
    azurite: Azurite, container: ContainerClient, container_name: str
) -> None:
    wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    real_key = azurite.connection_string.split("AccountKey=")[1].split(";")[0]
    env = {
        "SINK_BLOB_CONNECTION_STRING": azurite.connection_string.replace(real_key, wrong_key),
        "SINK_BLOB_CONTAINER": container_name,
    }
    sink = BlobSinkSettings.from_env(env).create()
    try:
        with pytest.raises(SinkPermanentError) as sent:
            sink.send(records(1), context())
        with pytest.raises(SinkPermanentError) as checked:
            sink.check()
    finally:
        sink.close()
    for caught in (sent, checked):
        text = str(caught.value)
        assert "403" in text
        assert "SINK_BLOB_CONNECTION_STRING" in text
        assert wrong_key not in text
        assert "\n" not in text
    assert list(container.list_blobs()) == []


def test_unreachable_account_is_transient(container_name: str) -> None:
    with refusing_url("https") as url:
        endpoint = url.removesuffix("/ingest")
        settings = BlobSinkSettings.from_env(
            {"SINK_BLOB_ACCOUNT_URL": f"{endpoint}/{ACCOUNT}", "SINK_BLOB_CONTAINER": container_name}
        )
        # retry_total=0: the SDK's own retries would only make the test slow; what is left is classified.
        sink = BlobSink(settings, client=settings.container_client(StaticToken(), retry_total=0))
        try:
            with pytest.raises(SinkTransientError, match="network"):
                sink.send(records(1), context())
        finally:
            sink.close()


class StaticToken:
    """A TokenCredential that hands out a fixed bearer token (the test servers don't check it)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("test-token", 4102444800)

    def close(self) -> None:
        pass


@pytest.fixture
def storage_stand_in() -> Iterator[HttpReceiver]:
    """An HTTPS server that answers like Blob Storage when scripted (status + x-ms-error-code)."""
    with HttpReceiver(tls=True) as receiver:
        yield receiver


def identity_sink(receiver: HttpReceiver, container_name: str) -> BlobSink:
    settings = BlobSinkSettings.from_env(
        {"SINK_BLOB_ACCOUNT_URL": f"{receiver.base_url}/{ACCOUNT}", "SINK_BLOB_CONTAINER": container_name}
    )
    client = settings.container_client(StaticToken(), retry_total=0, connection_verify=receiver.ca_file)
    return BlobSink(settings, client=client)


def test_server_busy_is_transient(storage_stand_in: HttpReceiver, container_name: str) -> None:
    storage_stand_in.fail_next(1, status=503, headers={"x-ms-error-code": "ServerBusy"})
    sink = identity_sink(storage_stand_in, container_name)
    try:
        with pytest.raises(SinkTransientError, match="503 ServerBusy"):
            sink.send(records(1), context())
    finally:
        sink.close()
    (request,) = storage_stand_in.requests
    assert request.method == "PUT"
    assert request.path.startswith(f"/{ACCOUNT}/{container_name}/{TID}/Audit.Exchange/2026/03/04/")


def test_missing_role_is_permanent_and_says_which_role(storage_stand_in: HttpReceiver, container_name: str) -> None:
    storage_stand_in.fail_next(1, status=403, headers={"x-ms-error-code": "AuthorizationPermissionMismatch"})
    sink = identity_sink(storage_stand_in, container_name)
    try:
        with pytest.raises(SinkPermanentError) as caught:
            sink.send(records(1), context())
    finally:
        sink.close()
    assert "403 AuthorizationPermissionMismatch" in str(caught.value)
    assert "Storage Blob Data Contributor" in str(caught.value)


def test_a_token_that_cannot_be_had_is_permanent(storage_stand_in: HttpReceiver, container_name: str) -> None:
    from azure.identity import CredentialUnavailableError

    class NoIdentity(StaticToken):
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            raise CredentialUnavailableError("ManagedIdentityCredential: no managed identity endpoint found")

    settings = BlobSinkSettings.from_env(
        {"SINK_BLOB_ACCOUNT_URL": f"{storage_stand_in.base_url}/{ACCOUNT}", "SINK_BLOB_CONTAINER": container_name}
    )
    sink = BlobSink(settings, client=settings.container_client(NoIdentity(), retry_total=0))
    try:
        with pytest.raises(SinkPermanentError, match="no token for Azure Storage from the managed identity"):
            sink.check()
    finally:
        sink.close()
    assert storage_stand_in.requests == []


# -- settings


def test_settings_with_managed_identity() -> None:
    settings = BlobSinkSettings.from_env(
        {
            "SINK_BLOB_ACCOUNT_URL": "https://archive.blob.core.windows.net/",
            "SINK_BLOB_CLIENT_ID": "66666666-7777-4888-9999-AAAAAAAAAAAA",
            "SINK_BLOB_CONTAINER": "o365-archive",
        }
    )
    assert settings.account_url == "https://archive.blob.core.windows.net"
    assert settings.client_id == "66666666-7777-4888-9999-aaaaaaaaaaaa"
    assert settings.connection_string is None
    assert settings.create_container is False


@pytest.mark.parametrize(
    ("setting", "env"),
    [
        ("SINK_BLOB_CONTAINER", {"SINK_BLOB_CONTAINER": ""}),
        ("SINK_BLOB_CONTAINER", {"SINK_BLOB_CONTAINER": "Upper"}),
        ("SINK_BLOB_CONTAINER", {"SINK_BLOB_CONTAINER": "a--b"}),
        ("SINK_BLOB_CONTAINER", {"SINK_BLOB_CONTAINER": "ab"}),
        ("SINK_BLOB_ACCOUNT_URL", {"SINK_BLOB_CONNECTION_STRING": ""}),
        ("SINK_BLOB_ACCOUNT_URL", {"SINK_BLOB_CONNECTION_STRING": "", "SINK_BLOB_ACCOUNT_URL": "http://x.example"}),
        ("SINK_BLOB_CONNECTION_STRING", {"SINK_BLOB_ACCOUNT_URL": "https://a.blob.core.windows.net"}),
        ("SINK_BLOB_CLIENT_ID", {"SINK_BLOB_CLIENT_ID": "66666666-7777-4888-9999-aaaaaaaaaaaa"}),
        (
            "SINK_BLOB_CLIENT_ID",
            {
                "SINK_BLOB_CONNECTION_STRING": "",
                "SINK_BLOB_ACCOUNT_URL": "https://a.blob.core.windows.net",
                "SINK_BLOB_CLIENT_ID": "not-a-guid",
            },
        ),
        ("SINK_BLOB_CREATE_CONTAINER", {"SINK_BLOB_CREATE_CONTAINER": "maybe"}),
    ],
)
def test_settings_errors_name_the_setting(setting: str, env: dict[str, str]) -> None:
    base = {"SINK_BLOB_CONNECTION_STRING": "UseDevelopmentStorage=true", "SINK_BLOB_CONTAINER": "o365-archive"}
    with pytest.raises(ConfigError) as caught:
        BlobSinkSettings.from_env(base | env)
    assert caught.value.setting == setting


def test_settings_repr_hides_the_connection_string(azurite: Azurite) -> None:
    settings = BlobSinkSettings.from_env(
        {"SINK_BLOB_CONNECTION_STRING": azurite.connection_string, "SINK_BLOB_CONTAINER": "o365-archive"}
    )
    assert "AccountKey" not in repr(settings)


def test_registry_builds_the_blob_sink() -> None:
    (settings,) = parse_sink_settings(
        {"SINK_TYPE": "blob", "SINK_BLOB_CONNECTION_STRING": "UseDevelopmentStorage=true", "SINK_BLOB_CONTAINER": "ab1"}
    )
    assert isinstance(settings, BlobSinkSettings)
    sink = settings.create()
    assert sink.name == "blob"
    sink.close()


# -- end to end


class CreateContainerOnFailure:
    """Wraps the real sink; on its ``n``-th failed send the test "fixes" the backend by creating the container."""

    name = "blob"

    def __init__(self, inner: BlobSink, n: int, fix: Callable[[], object]) -> None:
        self.inner, self.n, self.fix, self.failures = inner, n, fix, 0
        self._lock = threading.Lock()  # the queue runner sends from several threads

    def check(self) -> None:
        self.inner.check()

    def send(self, records: Sequence[Record], context: BlobContext) -> None:
        try:
            self.inner.send(records, context)
        except SinkPermanentError:
            with self._lock:
                self.failures += 1
                if self.failures == self.n:
                    self.fix()
            raise

    def close(self) -> None:
        self.inner.close()


def test_end_to_end_missing_container_then_created_archives_every_record_once(
    simulator: Simulator, azurite: Azurite, container_name: str, make_collector: Callable[..., Collector]
) -> None:
    now = dt.datetime.now(dt.UTC)
    simulator.generate(
        TID,
        "Audit.SharePoint",
        now - dt.timedelta(hours=8),
        now - dt.timedelta(minutes=10),
        blob_every=dt.timedelta(minutes=45),
        records_per_blob=(1, 12),
    )
    collector = make_collector(
        SINK_TYPE="blob",
        SINK_BLOB_CONNECTION_STRING=azurite.connection_string,
        SINK_BLOB_CONTAINER=container_name,
        O365_CONTENT_TYPES="Audit.SharePoint",
    )
    admin = ContainerClient.from_connection_string(azurite.connection_string, container_name)
    real = collector.sinks[0]
    assert isinstance(real, BlobSink)
    hook = CreateContainerOnFailure(real, n=3, fix=admin.create_container)
    collector.sinks[0] = hook

    assert run_once(collector) == 0

    # Sends already in flight when the container appeared may have failed too (several run at once).
    assert hook.failures >= 3
    blobs = simulator.blobs(TID)
    names = [b.name for b in admin.list_blobs()]
    assert sorted(names) == sorted(blob_name(BlobContext(TID, b.content_type, b.content_id, b.created)) for b in blobs)
    archived = Counter(json.loads(line)["Id"] for name in names for line in read_archive(admin, name).splitlines())
    assert archived == Counter(r["Id"] for b in blobs for r in b.records)
    assert max(archived.values()) == 1
    assert collector.poison_queue.get_queue_properties().approximate_message_count == 0
    admin.close()


# -- shape (SINK_BLOB_SHAPE)


def test_flat_shape_archives_o365_audit_fields_and_timestamp(
    container: ContainerClient, make_sink: SinkFactory
) -> None:
    given: list[Record] = [
        {"CreationTime": "2026-03-04T22:29:59", "Id": "a", "N": 10**40, "D": {"L": [1]}},
        {"Id": "b"},
    ]
    make_sink(SINK_BLOB_SHAPE="flat").send(given, context())
    body = read_archive(container, blob_name(context()))
    assert [json.loads(line) for line in body.splitlines()] == [
        {
            "@timestamp": "2026-03-04T22:29:59Z",
            "o365.audit.CreationTime": "2026-03-04T22:29:59",
            "o365.audit.Id": "a",
            "o365.audit.N": 10**40,
            "o365.audit.D": {"L": [1]},
        },
        {"o365.audit.Id": "b"},
    ]


def test_raw_shape_is_the_default(container: ContainerClient, make_sink: SinkFactory) -> None:
    given: list[Record] = [{"CreationTime": "2026-03-04T22:29:59", "Id": "a"}]
    make_sink().send(given, context())
    assert read_archive(container, blob_name(context())) == serialize(given[0]) + b"\n"


def test_an_unknown_shape_names_the_setting() -> None:
    env = {"SINK_BLOB_ACCOUNT_URL": "https://acct.blob.core.windows.net", "SINK_BLOB_CONTAINER": "archive"}
    with pytest.raises(ConfigError, match="SINK_BLOB_SHAPE"):
        BlobSinkSettings.from_env({**env, "SINK_BLOB_SHAPE": "ecs"})
