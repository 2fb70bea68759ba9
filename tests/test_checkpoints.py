"""Checkpoints and the ledger on Azurite: forward-only, ETag-conditional, crash-tolerant claims."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pytest
from azure.data.tables import TableClient

from o365collector.checkpoints import (
    RECENT_MAX_ENTRIES,
    CheckpointConflictError,
    CheckpointStore,
    ClaimStatus,
    Ledger,
    RecentBlobs,
    StreamLease,
    StreamLeases,
)
from o365collector.models import FetchTask

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
TID = "11111111-2222-4333-8444-555555555555"


def task(content_id: str = "2026112212$abc$audit_exchange$Audit_Exchange$emea0001") -> FetchTask:
    return FetchTask(
        TID, "Audit.Exchange", content_id, f"https://x/audit/{content_id}", NOW, NOW + dt.timedelta(days=7)
    )


def stored(ledger: Ledger, fetch: FetchTask) -> dict[str, Any]:
    """The ledger row of ``fetch``, which must exist."""
    row = ledger.get(fetch)
    assert row is not None
    return row


def test_recent_blobs_round_trip_and_prune() -> None:
    recent = RecentBlobs()
    recent.add("old", NOW - dt.timedelta(hours=3))
    recent.add("new", NOW)
    again = RecentBlobs.from_bytes(recent.to_bytes())
    assert "old" in again
    assert "new" in again
    assert "other" not in again
    again.prune(NOW - dt.timedelta(hours=1))
    assert "old" not in again
    assert "new" in again


def test_recent_blobs_fit_the_table_limits_and_keep_the_newest_past_the_bound() -> None:
    recent = RecentBlobs()
    for i in range(RECENT_MAX_ENTRIES + 500):
        recent.add(f"blob-{i}", NOW + dt.timedelta(seconds=i))
    assert recent.prune(NOW) == 500
    properties = recent.to_properties()
    assert all(len(value) <= 64 * 1024 for value in properties.values())  # one binary property's limit
    assert sum(len(value) for value in properties.values()) <= 960 * 1024  # room left in the 1 MiB entity
    assert f"blob-{RECENT_MAX_ENTRIES + 499}" in recent  # the newest are kept
    assert "blob-499" not in recent


def test_a_day_of_blobs_is_remembered_through_azurite(table: TableClient) -> None:
    """The late sweep re-lists 24 h: the set must hold a busy stream's day (here 30,000 blobs), which
    takes several 64 KiB properties of the checkpoint entity."""
    store = CheckpointStore(table)
    recent = RecentBlobs()
    for i in range(30_000):
        recent.add(f"blob-{i}", NOW - dt.timedelta(hours=24) + dt.timedelta(seconds=i * 2))
    store.advance(store.get(TID, "Audit.Exchange"), NOW, recent, NOW)
    again = store.get(TID, "Audit.Exchange").recent
    assert len(again) == 30_000
    assert "blob-0" in again
    assert "blob-29999" in again


def test_a_checkpoint_written_with_one_recent_property_is_still_read(table: TableClient) -> None:
    recent = RecentBlobs()
    recent.add("before-the-upgrade", NOW)
    table.create_entity({"PartitionKey": TID, "RowKey": "DLP.All", "Cursor": NOW, "Recent": recent.to_bytes()})
    checkpoint = CheckpointStore(table).get(TID, "DLP.All")
    assert "before-the-upgrade" in checkpoint.recent
    assert checkpoint.late_sweep_at is None


def test_the_late_sweep_time_is_kept_until_a_sweep_records_a_new_one(table: TableClient) -> None:
    store = CheckpointStore(table)
    swept = NOW - dt.timedelta(minutes=30)
    first = store.advance(store.get(TID, "Audit.General"), NOW - H, RecentBlobs(), NOW, late_sweep_at=swept)
    assert store.get(TID, "Audit.General").late_sweep_at == swept
    store.advance(first, NOW, RecentBlobs(), NOW)
    assert store.get(TID, "Audit.General").late_sweep_at == swept
    store.advance(store.get(TID, "Audit.General"), NOW, RecentBlobs(), NOW, late_sweep_at=NOW)
    assert store.get(TID, "Audit.General").late_sweep_at == NOW


def test_checkpoint_starts_empty_then_moves_forward(table: TableClient) -> None:
    store = CheckpointStore(table)
    first = store.get(TID, "Audit.Exchange")
    assert first.cursor is None
    saved = store.advance(first, NOW - dt.timedelta(hours=1), RecentBlobs(), NOW)
    assert store.get(TID, "Audit.Exchange").cursor == NOW - dt.timedelta(hours=1)
    back = store.advance(saved, NOW - dt.timedelta(hours=5), RecentBlobs(), NOW)
    assert back.cursor == NOW - dt.timedelta(hours=1), "a checkpoint never moves backwards"


def test_checkpoint_is_never_saved_in_the_future(table: TableClient) -> None:
    store = CheckpointStore(table)
    store.advance(store.get(TID, "DLP.All"), NOW + dt.timedelta(days=1), RecentBlobs(), NOW)
    assert store.get(TID, "DLP.All").cursor == NOW


def test_two_runs_cannot_both_advance_from_the_same_read(table: TableClient) -> None:
    store = CheckpointStore(table)
    store.advance(store.get(TID, "Audit.General"), NOW - dt.timedelta(hours=2), RecentBlobs(), NOW)
    run_a = store.get(TID, "Audit.General")
    run_b = store.get(TID, "Audit.General")
    store.advance(run_a, NOW - dt.timedelta(hours=1), RecentBlobs(), NOW)
    with pytest.raises(CheckpointConflictError):
        store.advance(run_b, NOW - dt.timedelta(minutes=30), RecentBlobs(), NOW)
    assert store.get(TID, "Audit.General").cursor == NOW - dt.timedelta(hours=1)


def test_two_first_runs_cannot_both_create(table: TableClient) -> None:
    store = CheckpointStore(table)
    run_a, run_b = store.get(TID, "Audit.SharePoint"), store.get(TID, "Audit.SharePoint")
    store.advance(run_a, NOW - dt.timedelta(hours=1), RecentBlobs(), NOW)
    with pytest.raises(CheckpointConflictError):
        store.advance(run_b, NOW, RecentBlobs(), NOW)


LEASE = dt.timedelta(minutes=10)


def test_ledger_claim_then_done_then_skip(table: TableClient) -> None:
    ledger = Ledger(table)
    claim = ledger.claim(task(), "msg-1", NOW, LEASE)
    assert claim.status is ClaimStatus.CLAIMED
    ledger.mark_done(claim, 12, NOW)
    assert ledger.claim(task(), "msg-1", NOW, LEASE).status is ClaimStatus.DONE
    assert ledger.claim(task(), "msg-2", NOW, LEASE).status is ClaimStatus.DONE
    assert stored(ledger, task())["Records"] == 12


def test_a_duplicate_message_does_not_take_a_live_claim(table: TableClient) -> None:
    ledger = Ledger(table)
    ledger.claim(task(), "msg-1", NOW, LEASE)
    assert ledger.claim(task(), "msg-2", NOW + dt.timedelta(minutes=1), LEASE).status is ClaimStatus.BUSY


def test_the_redelivered_message_takes_over_its_own_claim_after_a_crash(table: TableClient) -> None:
    ledger = Ledger(table)
    ledger.claim(task(), "msg-1", NOW, LEASE)  # ...and the worker dies here
    again = ledger.claim(task(), "msg-1", NOW + dt.timedelta(seconds=40), LEASE)
    assert again.status is ClaimStatus.CLAIMED
    assert stored(ledger, task())["Attempts"] == 2


def test_an_expired_claim_can_be_taken_by_any_delivery(table: TableClient) -> None:
    ledger = Ledger(table)
    ledger.claim(task(), "msg-1", NOW, LEASE)
    assert ledger.claim(task(), "msg-2", NOW + LEASE + dt.timedelta(seconds=1), LEASE).status is ClaimStatus.CLAIMED


def test_a_released_claim_is_free_at_once(table: TableClient) -> None:
    ledger = Ledger(table)
    claim = ledger.claim(task(), "msg-1", NOW, LEASE)
    ledger.release(claim, "sink down")
    assert ledger.claim(task(), "msg-2", NOW, LEASE).status is ClaimStatus.CLAIMED


def test_lost_content_stays_lost(table: TableClient) -> None:
    ledger = Ledger(table)
    claim = ledger.claim(task(), "msg-1", NOW, LEASE)
    ledger.mark_lost(claim, "AF20051 expired", NOW)
    assert ledger.claim(task(), "msg-1", NOW, LEASE).status is ClaimStatus.LOST
    assert "AF20051" in stored(ledger, task())["Error"]


def test_content_ids_with_any_characters_are_keyed_safely(table: TableClient) -> None:
    ledger = Ledger(table)
    odd = task("a/b\\c#d?e$f\tg")
    assert ledger.claim(odd, "m", NOW, LEASE).status is ClaimStatus.CLAIMED
    assert stored(ledger, odd)["ContentId"] == "a/b\\c#d?e$f\tg"


# -- stream leases (who lists a stream now) ----------------------------------------------------------------------

LISTING = dt.timedelta(seconds=30)  # a stream lease's length


def leased(got: StreamLease | dt.datetime | None) -> StreamLease:
    assert isinstance(got, StreamLease), got
    return got


def test_a_stream_lease_keeps_other_deliveries_out_until_it_lapses(table: TableClient) -> None:
    leases = StreamLeases(table)
    first = leased(leases.acquire(TID, "Audit.Exchange", "list:a", NOW, LISTING))
    assert (first.holder, first.until) == ("list:a", NOW + LISTING)
    busy = leases.acquire(TID, "Audit.Exchange", "list:b", NOW + LISTING / 2, LISTING)
    assert busy == NOW + LISTING, "busy until then"
    assert leased(leases.acquire(TID, "DLP.All", "list:b", NOW, LISTING)).holder == "list:b", "streams are separate"
    assert leased(leases.acquire(TID, "Audit.Exchange", "list:b", NOW + LISTING, LISTING)).holder == "list:b", "lapsed"


def test_a_redelivered_list_message_takes_back_its_own_live_lease(table: TableClient) -> None:
    """The delivery died holding the lease: its redelivery (same message id) must not wait for the lease."""
    leases = StreamLeases(table)
    leased(leases.acquire(TID, "Audit.Exchange", "list:a", NOW, LISTING))
    again = leased(leases.acquire(TID, "Audit.Exchange", "list:a", NOW + H / 3600, LISTING))
    assert again.until == NOW + H / 3600 + LISTING


def test_a_renewal_extends_a_lease_still_held_and_fails_once_another_took_it(table: TableClient) -> None:
    leases = StreamLeases(table)
    lease = leased(leases.acquire(TID, "Audit.Exchange", "list:a", NOW, LISTING))
    [renewed] = leases.write_all([(lease, lease.holder, NOW + 2 * LISTING)])
    assert renewed is not None
    assert (renewed.holder, renewed.until) == ("list:a", NOW + 2 * LISTING)
    assert leases.acquire(TID, "Audit.Exchange", "list:b", NOW + LISTING, LISTING) == NOW + 2 * LISTING, "renewed: busy"
    taken = leased(leases.acquire(TID, "Audit.Exchange", "list:b", NOW + 3 * LISTING, LISTING))  # a stall: it lapsed
    stale = leases.write_all([(renewed, renewed.holder, NOW + 4 * LISTING)])
    assert stale == [None], "taken over: the stale holder learns it"
    assert leases.write_all([(renewed, "continuation:x", NOW + 4 * LISTING)]) == [None]
    leases.write_all([(renewed, renewed.holder, NOW + 3 * LISTING)])  # a stale release changes nothing
    assert leases.acquire(TID, "Audit.Exchange", "list:c", NOW + 3 * LISTING, LISTING) == taken.until


def test_a_released_lease_is_free_at_once(table: TableClient) -> None:
    leases = StreamLeases(table)
    lease = leased(leases.acquire(TID, "Audit.Exchange", "list:a", NOW, LISTING))
    leases.write_all([(lease, lease.holder, NOW + LISTING / 3)])
    assert leased(leases.acquire(TID, "Audit.Exchange", "list:b", NOW + LISTING / 3, LISTING)).holder == "list:b"


def test_a_handed_lease_is_taken_only_by_its_continuation_and_a_superseded_one_is_dropped(table: TableClient) -> None:
    leases = StreamLeases(table)
    lease = leased(leases.acquire(TID, "Audit.Exchange", "list:a", NOW, LISTING))
    [handed] = leases.write_all([(lease, "continuation:1", NOW + LISTING)])
    assert handed is not None
    assert handed.holder == "continuation:1"
    # The schedule's next message for the tenant: the stream is the continuation's, no second chain.
    assert leases.acquire(TID, "Audit.Exchange", "list:next", NOW, LISTING) == NOW + LISTING
    own = leased(leases.acquire(TID, "Audit.Exchange", "list:c", NOW, LISTING, handed="continuation:1"))
    assert own.holder == "list:c"
    # The continuation's delivery died listing: its redelivery (same message id) takes the stream back.
    again = leased(leases.acquire(TID, "Audit.Exchange", "list:c", NOW + LISTING / 3, LISTING, handed="continuation:1"))
    assert again.until == NOW + LISTING / 3 + LISTING
    # Another continuation of the same chain, redelivered after list:c took the stream over (even lapsed):
    assert leases.acquire(TID, "Audit.Exchange", "list:d", NOW, LISTING, handed="continuation:1") is None
    assert leases.acquire(TID, "Audit.Exchange", "list:d", NOW + 2 * LISTING, LISTING, handed="continuation:1") is None


class RacingTable:
    """A table on which another worker acts between this one's read of a lease row and its write."""

    def __init__(self, table: TableClient, rival: str) -> None:
        self._table = table
        self._rival = rival
        self.raced = False

    def get_entity(self, *args: Any, **kwargs: Any) -> Any:
        entity = self._table.get_entity(*args, **kwargs)
        if not self.raced:
            self.raced = True
            leased(StreamLeases(self._table).acquire(TID, "Audit.Exchange", self._rival, NOW, LISTING))
        return entity

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


def test_of_two_workers_racing_for_a_lapsed_lease_one_wins(table: TableClient) -> None:
    leased(StreamLeases(table).acquire(TID, "Audit.Exchange", "list:dead", NOW - 2 * LISTING, LISTING))
    racing = RacingTable(table, "list:rival")
    got = StreamLeases(cast(TableClient, racing)).acquire(TID, "Audit.Exchange", "list:late", NOW, LISTING)
    assert racing.raced
    assert got == NOW + LISTING, "the rival's write came first: the stream is busy"
    assert table.get_entity(TID, "lease:Audit.Exchange")["Holder"] == "list:rival"
