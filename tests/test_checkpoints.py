"""Checkpoints and the ledger on Azurite: forward-only, ETag-conditional, crash-tolerant claims."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from azure.data.tables import TableClient

from o365collector.azurite import Azurite
from o365collector.checkpoints import (
    RECENT_MAX_ENTRIES,
    CheckpointConflictError,
    CheckpointStore,
    ClaimStatus,
    Ledger,
    RecentBlobs,
)
from o365collector.models import FetchTask

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
TID = "11111111-2222-4333-8444-555555555555"


@pytest.fixture
def table(azurite: Azurite) -> TableClient:
    client = TableClient.from_connection_string(azurite.connection_string, table_name=f"t{uuid.uuid4().hex[:12]}")
    client.create_table()
    return client


def task(content_id: str = "2026112212$abc$audit_exchange$Audit_Exchange$emea0001") -> FetchTask:
    return FetchTask(
        TID, "Audit.Exchange", content_id, f"https://x/audit/{content_id}", NOW, NOW + dt.timedelta(days=7)
    )


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
    assert ledger.get(task())["Records"] == 12


def test_a_duplicate_message_does_not_take_a_live_claim(table: TableClient) -> None:
    ledger = Ledger(table)
    ledger.claim(task(), "msg-1", NOW, LEASE)
    assert ledger.claim(task(), "msg-2", NOW + dt.timedelta(minutes=1), LEASE).status is ClaimStatus.BUSY


def test_the_redelivered_message_takes_over_its_own_claim_after_a_crash(table: TableClient) -> None:
    ledger = Ledger(table)
    ledger.claim(task(), "msg-1", NOW, LEASE)  # ...and the worker dies here
    again = ledger.claim(task(), "msg-1", NOW + dt.timedelta(seconds=40), LEASE)
    assert again.status is ClaimStatus.CLAIMED
    assert ledger.get(task())["Attempts"] == 2


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
    assert "AF20051" in ledger.get(task())["Error"]


def test_content_ids_with_any_characters_are_keyed_safely(table: TableClient) -> None:
    ledger = Ledger(table)
    odd = task("a/b\\c#d?e$f\tg")
    assert ledger.claim(odd, "m", NOW, LEASE).status is ClaimStatus.CLAIMED
    assert ledger.get(odd)["ContentId"] == "a/b\\c#d?e$f\tg"
