"""A list message's storage work per tenant, on Azurite: one query reads the tenant's checkpoints and leases,
one transaction takes the free leases, one writes them back; a race falls back to one row at a time."""

from __future__ import annotations

import datetime as dt
import http.client
import socket
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from azure.data.tables import TableClient

from o365collector.azurite import Azurite
from o365collector.checkpoints import CheckpointConflictError, CheckpointStore, RecentBlobs, StreamLease, StreamLeases
from o365collector.lister import StreamResult
from o365collector.status import STREAM_PREFIX, StatusStore
from tests.loopback import LoopbackService, OwnedHandler

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
LISTING = dt.timedelta(seconds=30)
TID = "11111111-2222-4333-8444-555555555555"
OTHER = "99999999-2222-4333-8444-555555555555"
TYPES = ("Audit.Exchange", "Audit.SharePoint", "DLP.All")


class CountingTable:
    """The real table, counting the calls that cross to storage by method name."""

    def __init__(self, table: TableClient) -> None:
        self._table = table
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._table, name)
        if callable(attribute):
            self.calls.append(name)
        return attribute


def leased(got: StreamLease | dt.datetime | None) -> StreamLease:
    assert isinstance(got, StreamLease), got
    return got


def test_the_partition_read_splits_checkpoints_from_leases_and_keeps_to_its_tenant(table: TableClient) -> None:
    store, leases = CheckpointStore(table), StreamLeases(table)
    store.advance(store.get(TID, "Audit.Exchange"), NOW, RecentBlobs(), NOW)
    store.advance(store.get(OTHER, "DLP.All"), NOW, RecentBlobs(), NOW)
    leased(leases.acquire(TID, "Audit.SharePoint", "list:a", NOW, LISTING))
    rows = store.read_tenant(TID)
    assert rows.tenant_id == TID
    assert set(rows.checkpoints) == {"Audit.Exchange"}
    assert set(rows.leases) == {"Audit.SharePoint"}
    assert rows.leases["Audit.SharePoint"]["Holder"] == "list:a"


def test_a_tenant_s_free_leases_are_taken_in_one_transaction(table: TableClient) -> None:
    counting = CountingTable(table)
    leases = StreamLeases(cast(TableClient, counting))
    rows = CheckpointStore(table).read_tenant(TID)
    got = leases.acquire_all(rows, TYPES, "list:a", NOW, LISTING)
    assert counting.calls == ["submit_transaction"]
    assert {t: leased(g).holder for t, g in got.items()} == dict.fromkeys(TYPES, "list:a")
    for content_type in TYPES:
        row = table.get_entity(TID, f"lease:{content_type}")
        assert (row["Holder"], row["Until"]) == ("list:a", NOW + LISTING)
        assert row.metadata["etag"] == leased(got[content_type]).etag, "the etag the next write is made under"
    # Another message for the tenant now finds every stream busy until the lease lapses, and writes nothing.
    counting.calls.clear()
    again = leases.acquire_all(CheckpointStore(table).read_tenant(TID), TYPES, "list:b", NOW, LISTING)
    assert again == dict.fromkeys(TYPES, NOW + LISTING)
    assert counting.calls == []


def test_the_verdicts_come_from_the_rows_read_per_stream(table: TableClient) -> None:
    leases = StreamLeases(table)
    leased(leases.acquire(TID, "Audit.Exchange", "list:live", NOW, LISTING))
    leased(leases.acquire(TID, "Audit.SharePoint", "list:dead", NOW - 2 * LISTING, LISTING))
    own = leased(leases.acquire(TID, "DLP.All", "list:me", NOW - LISTING / 3, LISTING))
    got = leases.acquire_all(CheckpointStore(table).read_tenant(TID), TYPES, "list:me", NOW, LISTING)
    assert got["Audit.Exchange"] == NOW + LISTING, "live: busy until it lapses"
    assert leased(got["Audit.SharePoint"]).holder == "list:me", "lapsed: taken"
    assert leased(got["DLP.All"]).until == NOW + LISTING > own.until, "the message's own redelivery takes it back"
    assert table.get_entity(TID, "lease:Audit.Exchange")["Holder"] == "list:live", "a busy row is left alone"


def test_a_continuation_takes_its_handed_leases_and_drops_the_superseded(table: TableClient) -> None:
    leases = StreamLeases(table)
    first = leased(leases.acquire(TID, "Audit.Exchange", "list:a", NOW, LISTING))
    other = leased(leases.acquire(TID, "DLP.All", "list:a", NOW, LISTING))
    handed = leases.write_all([(first, "continuation:1", NOW + LISTING), (other, "continuation:1", NOW + LISTING)])
    assert [leased(h).holder for h in handed] == ["continuation:1", "continuation:1"]
    # After DLP.All's handed lease lapsed, another worker's message took it: its chain carries it on.
    leased(leases.acquire(TID, "DLP.All", "list:x", NOW + 2 * LISTING, LISTING))
    rows = CheckpointStore(table).read_tenant(TID)
    got = leases.acquire_all(rows, ("Audit.Exchange", "DLP.All"), "list:c", NOW, LISTING, handed="continuation:1")
    assert leased(got["Audit.Exchange"]).holder == "list:c"
    assert got["DLP.All"] is None


class RacingTable:
    """A worker whose rival takes one of the leases between its partition read and its transaction."""

    def __init__(self, table: TableClient, content_type: str) -> None:
        self._table = table
        self._content_type = content_type
        self.raced = False

    def submit_transaction(self, *args: Any, **kwargs: Any) -> Any:
        if not self.raced:
            self.raced = True
            leased(StreamLeases(self._table).acquire(TID, self._content_type, "list:rival", NOW, LISTING))
        return self._table.submit_transaction(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


@pytest.mark.parametrize("lease_row", ["absent", "lapsed"], ids=["created", "replaced"])
def test_a_rival_s_lease_taken_after_the_read_fails_the_transaction_and_each_stream_is_decided_alone(
    table: TableClient, lease_row: str
) -> None:
    leases = StreamLeases(table)
    if lease_row == "lapsed":
        for content_type in TYPES:
            leased(leases.acquire(TID, content_type, "list:dead", NOW - 2 * LISTING, LISTING))
    rows = CheckpointStore(table).read_tenant(TID)
    racing = RacingTable(table, "Audit.SharePoint")
    got = StreamLeases(cast(TableClient, racing)).acquire_all(rows, TYPES, "list:late", NOW, LISTING)
    assert racing.raced
    assert got["Audit.SharePoint"] == NOW + LISTING, "the rival's write came first: busy"
    assert table.get_entity(TID, "lease:Audit.SharePoint")["Holder"] == "list:rival"
    for content_type in ("Audit.Exchange", "DLP.All"):
        lease = leased(got[content_type])
        row = table.get_entity(TID, f"lease:{content_type}")
        assert (row["Holder"], row.metadata["etag"]) == ("list:late", lease.etag)


def test_written_together_and_one_at_a_time_when_one_was_taken_over(table: TableClient) -> None:
    counting = CountingTable(table)
    leases = StreamLeases(cast(TableClient, counting))
    held = leases.acquire_all(CheckpointStore(table).read_tenant(TID), TYPES, "list:a", NOW, LISTING)
    counting.calls.clear()
    renewed = leases.write_all([(leased(held[t]), "list:a", NOW + 2 * LISTING) for t in TYPES])
    assert counting.calls == ["submit_transaction"]
    assert [leased(r).until for r in renewed] == [NOW + 2 * LISTING] * 3
    for content_type, lease in zip(TYPES, renewed, strict=True):
        assert table.get_entity(TID, f"lease:{content_type}").metadata["etag"] == leased(lease).etag
    # A stall: Audit.SharePoint's lease lapsed and a rival took it. The others are still written.
    rival = leased(StreamLeases(table).acquire(TID, "Audit.SharePoint", "list:rival", NOW + 3 * LISTING, LISTING))
    released = leases.write_all([(leased(r), "list:a", NOW + 3 * LISTING) for r in renewed])
    assert released[1] is None, "taken over: the stale holder learns it"
    assert [leased(released[i]).until for i in (0, 2)] == [NOW + 3 * LISTING] * 2
    assert table.get_entity(TID, "lease:Audit.SharePoint").metadata["etag"] == rival.etag, "the rival's row untouched"


def test_primed_checkpoints_answer_each_stream_s_first_read_from_the_partition_read(table: TableClient) -> None:
    store = CheckpointStore(table)
    exchange = store.advance(store.get(TID, "Audit.Exchange"), NOW, RecentBlobs(), NOW)
    rows = store.read_tenant(TID)
    # Moved by another run after the read: the primed answer is the row as read, with the ETag read with it ...
    store.advance(exchange, NOW + LISTING, RecentBlobs(), NOW + LISTING)
    store.advance(store.get(TID, "DLP.All"), NOW, RecentBlobs(), NOW)
    store.advance(store.get(OTHER, "Audit.SharePoint"), NOW, RecentBlobs(), NOW)
    counting = CountingTable(table)
    primed = CheckpointStore(cast(TableClient, counting)).primed(rows)
    first = primed.get(TID, "Audit.Exchange")
    assert (first.cursor, first.etag) == (NOW, exchange.etag)
    dlp = primed.get(TID, "DLP.All")
    assert (dlp.cursor, dlp.etag) == (None, None), "absent from the partition read: no checkpoint yet"
    assert counting.calls == [], "no round trip for what the partition read answered"
    # ... so the advance made under it is refused, as with any stale read.
    with pytest.raises(CheckpointConflictError):
        primed.advance(first, NOW + 2 * LISTING, RecentBlobs(), NOW + 2 * LISTING)
    with pytest.raises(CheckpointConflictError):
        primed.advance(dlp, NOW, RecentBlobs(), NOW)
    # Later reads, and other tenants' reads, go to the table.
    counting.calls.clear()
    assert primed.get(TID, "Audit.Exchange").cursor == NOW + LISTING
    assert primed.get(OTHER, "Audit.SharePoint").cursor == NOW
    assert counting.calls == ["get_entity", "get_entity"]


class LosingHandler(OwnedHandler):
    """Forwards every request to Azurite's table endpoint; the first ``$batch`` is applied by Azurite but its
    answer is lost: the connection is closed instead (a pooled connection dropped as the answer came)."""

    def _forward(self) -> None:
        owner = cast(AnswerLosingProxy, self.owner)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        upstream = http.client.HTTPConnection("127.0.0.1", owner.table_port, timeout=10)
        try:
            upstream.request(self.command, self.path, body, {k: v for k, v in self.headers.items()})
            answer = upstream.getresponse()
            content = answer.read()
        finally:
            upstream.close()
        if owner.loses(self.command, self.path.split("?")[0]) and not owner.lost:
            owner.lost.append(self.path)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_MERGE = _forward


class AnswerLosingProxy(LoopbackService):
    def __init__(self, table_port: int, loses: Callable[[str, str], bool]) -> None:
        super().__init__(LosingHandler, tls=False, timeout=10.0, name="answer-losing-proxy")
        self.table_port = table_port
        self.loses = loses
        """Whether the first request of this (method, path) loses its answer."""
        self.lost: list[str] = []


def a_transaction(method: str, path: str) -> bool:
    return path.endswith("/$batch")


def an_insert(method: str, path: str) -> bool:
    return method == "POST" and "(" not in path and not path.endswith("/$batch")


@pytest.fixture
def losing(
    azurite: Azurite, table: TableClient, request: pytest.FixtureRequest
) -> Iterator[tuple[TableClient, AnswerLosingProxy]]:
    loses = getattr(request, "param", a_transaction)
    with AnswerLosingProxy(azurite.table_port, loses) as proxy:
        connection = azurite.connection_string.replace(f":{azurite.table_port}/", f":{proxy.port}/")
        client = TableClient.from_connection_string(
            connection, table_name=table.table_name, retry_backoff_factor=0.01, retry_backoff_max=0.05
        )
        yield client, proxy


def test_a_lease_transaction_whose_answer_was_lost_is_retried_and_found_landed(
    table: TableClient, losing: tuple[TableClient, AnswerLosingProxy]
) -> None:
    client, proxy = losing
    held = StreamLeases(table).acquire_all(CheckpointStore(table).read_tenant(TID), TYPES, "list:a", NOW, LISTING)
    renewed = StreamLeases(client).write_all([(leased(held[t]), "list:a", NOW + 2 * LISTING) for t in TYPES])
    assert proxy.lost, "the transaction's answer was lost once"
    for content_type, lease in zip(TYPES, renewed, strict=True):
        row = table.get_entity(TID, f"lease:{content_type}")
        assert leased(lease).etag == row.metadata["etag"], "still held: the retry found its own write landed"
        assert (row["Holder"], row["Until"]) == ("list:a", NOW + 2 * LISTING)


def test_a_lease_acquisition_whose_answer_was_lost_still_takes_the_streams(
    table: TableClient, losing: tuple[TableClient, AnswerLosingProxy]
) -> None:
    client, proxy = losing
    got = StreamLeases(client).acquire_all(CheckpointStore(table).read_tenant(TID), TYPES, "list:a", NOW, LISTING)
    assert proxy.lost
    for content_type in TYPES:
        assert leased(got[content_type]).etag == table.get_entity(TID, f"lease:{content_type}").metadata["etag"]


def test_a_write_under_an_etag_of_the_holder_s_own_earlier_write_is_not_taken_for_landed(table: TableClient) -> None:
    leases = StreamLeases(table)
    first = leased(leases.acquire(TID, "Audit.Exchange", "list:a", NOW, LISTING))
    leased(leases.write_all([(first, "list:a", NOW + 2 * LISTING)])[0])
    # The same holder, a stale ETag, another instant: not this write's row, so the lease is not the caller's.
    assert leases.write_all([(first, "list:a", NOW + 3 * LISTING)]) == [None]
    assert table.get_entity(TID, "lease:Audit.Exchange")["Until"] == NOW + 2 * LISTING


def test_a_single_lease_write_is_a_plain_conditional_update(table: TableClient) -> None:
    counting = CountingTable(table)
    leases = StreamLeases(cast(TableClient, counting))
    lease = leased(leases.acquire(TID, "Audit.Exchange", "list:a", NOW, LISTING))
    counting.calls.clear()
    assert leased(leases.write_all([(lease, "list:a", NOW)])[0]).until == NOW
    assert counting.calls == ["update_entity"]


@pytest.mark.parametrize("losing", [an_insert], indirect=True)
def test_a_first_checkpoint_whose_answer_was_lost_is_created_once_and_kept(
    table: TableClient, losing: tuple[TableClient, AnswerLosingProxy]
) -> None:
    client, proxy = losing
    store = CheckpointStore(client)
    saved = store.advance(store.get(TID, "Audit.Exchange"), NOW, RecentBlobs(), NOW)
    assert proxy.lost, "the create's answer was lost once, and the create sent again"
    row = table.get_entity(TID, "Audit.Exchange")
    assert (saved.cursor, saved.etag) == (NOW, row.metadata["etag"]), "its own row: the next window moves it"
    store.advance(saved, NOW + LISTING, RecentBlobs(), NOW + LISTING)
    assert table.get_entity(TID, "Audit.Exchange")["Cursor"] == NOW + LISTING


def test_a_status_transaction_whose_answer_was_lost_is_sent_again(
    table: TableClient, losing: tuple[TableClient, AnswerLosingProxy]
) -> None:
    client, proxy = losing
    StatusStore(client).record_runs([StreamResult(TID, t, windows=1) for t in TYPES], NOW)
    assert proxy.lost
    assert sorted(e["RowKey"] for e in table.list_entities()) == sorted(STREAM_PREFIX + t for t in TYPES)
