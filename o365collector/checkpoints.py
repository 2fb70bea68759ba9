"""Table Storage state: the listing checkpoint per tenant and content type, and the per-blob ledger.

Checkpoint (table ``O365_CHECKPOINT_TABLE``, PartitionKey = tenant id, RowKey = content type):
``Cursor`` is the end of the last listing window whose blobs are all on the queue. It only moves
forward and only under the ETag read with it, so two overlapping runs cannot move it back or
skip a window. ``Recent`` remembers the blobs enqueued inside the re-listed overlap, so re-listing
does not enqueue them again (the ledger would skip them anyway; this saves queue traffic).

Ledger (table ``O365_LEDGER_TABLE``, PartitionKey = tenant id, RowKey = sha256 of the content id):
one row per content blob, ``claimed`` → ``done`` (or ``lost`` when the source no longer has it).
A claim carries the queue message id and a lease: the redelivery of the same message, or any
message after the lease ran out, takes it over, so a crashed worker never blocks its blob.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from .errors import RetryableError
from .models import FetchTask, utc

_ENTRY = struct.Struct(">8sI")  # 8-byte content-id hash, contentCreated as epoch seconds
RECENT_MAX_ENTRIES = 5000  # 60 KB: under the 64 KiB limit of one binary table property


class CheckpointConflictError(RetryableError):
    """Another run moved the checkpoint since we read it; this run leaves the stream to that one."""


def _content_hash(content_id: str) -> bytes:
    return hashlib.blake2b(content_id.encode(), digest_size=8).digest()


@dataclass
class RecentBlobs:
    """Content ids enqueued recently (compact: a hash and the contentCreated second each)."""

    entries: dict[bytes, int] = field(default_factory=dict)

    def __contains__(self, content_id: str) -> bool:
        return _content_hash(content_id) in self.entries

    def add(self, content_id: str, created: dt.datetime) -> None:
        self.entries[_content_hash(content_id)] = int(utc(created).timestamp())

    def prune(self, older_than: dt.datetime) -> None:
        """Forget blobs created before ``older_than`` (they can no longer be re-listed)."""
        limit = int(utc(older_than).timestamp())
        self.entries = {h: t for h, t in self.entries.items() if t >= limit}
        if len(self.entries) > RECENT_MAX_ENTRIES:
            # Keep the newest: losing old entries only means a possible re-enqueue the ledger skips.
            newest = sorted(self.entries.items(), key=lambda kv: kv[1])[-RECENT_MAX_ENTRIES:]
            self.entries = dict(newest)

    def to_bytes(self) -> bytes:
        return b"".join(_ENTRY.pack(h, t) for h, t in self.entries.items())

    @classmethod
    def from_bytes(cls, data: bytes | None) -> RecentBlobs:
        if not data:
            return cls()
        usable = len(data) - len(data) % _ENTRY.size
        return cls(dict(_ENTRY.iter_unpack(data[:usable])))

    def copy(self) -> RecentBlobs:
        return RecentBlobs(dict(self.entries))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    tenant_id: str
    content_type: str
    cursor: dt.datetime | None
    recent: RecentBlobs
    etag: str | None


class CheckpointStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def get(self, tenant_id: str, content_type: str) -> Checkpoint:
        try:
            entity = self._table.get_entity(tenant_id, content_type)
        except ResourceNotFoundError:
            return Checkpoint(tenant_id, content_type, None, RecentBlobs(), None)
        cursor = entity.get("Cursor")
        return Checkpoint(
            tenant_id,
            content_type,
            utc(cursor) if isinstance(cursor, dt.datetime) else None,
            RecentBlobs.from_bytes(entity.get("Recent")),
            entity.metadata["etag"],
        )

    def list(self) -> list[Checkpoint]:
        return [
            Checkpoint(
                e["PartitionKey"],
                e["RowKey"],
                utc(e["Cursor"]) if isinstance(e.get("Cursor"), dt.datetime) else None,
                RecentBlobs.from_bytes(e.get("Recent")),
                e.metadata["etag"],
            )
            for e in self._table.list_entities()
        ]

    def advance(self, checkpoint: Checkpoint, cursor: dt.datetime, recent: RecentBlobs, now: dt.datetime) -> Checkpoint:
        """Save ``cursor`` (never backwards, never past ``now``) if nobody else saved since we read."""
        cursor = min(utc(cursor), now)
        if checkpoint.cursor is not None and cursor < checkpoint.cursor:
            cursor = checkpoint.cursor
        entity: dict[str, Any] = {
            "PartitionKey": checkpoint.tenant_id,
            "RowKey": checkpoint.content_type,
            "Cursor": cursor,
            "Recent": recent.to_bytes(),
            "UpdatedAt": now,
        }
        try:
            if checkpoint.etag is None:
                meta = self._table.create_entity(entity)
            else:
                meta = self._table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=checkpoint.etag, match_condition=MatchConditions.IfNotModified
                )
        except (ResourceExistsError, ResourceModifiedError) as err:
            raise CheckpointConflictError(
                f"checkpoint {checkpoint.tenant_id}/{checkpoint.content_type} was moved by another run"
            ) from err
        return Checkpoint(checkpoint.tenant_id, checkpoint.content_type, cursor, recent, meta["etag"])


class ClaimStatus(StrEnum):
    CLAIMED = "claimed"  # this delivery owns the blob now
    DONE = "done"  # already shipped: skip
    LOST = "lost"  # the source no longer has it: recorded earlier, skip
    BUSY = "busy"  # another live delivery holds it: skip, that delivery carries it


@dataclass(frozen=True, slots=True)
class Claim:
    status: ClaimStatus
    partition_key: str
    row_key: str
    etag: str | None = None


class Ledger:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    @staticmethod
    def key(task: FetchTask) -> tuple[str, str]:
        return task.tenant_id, hashlib.sha256(task.content_id.encode()).hexdigest()

    def get(self, task: FetchTask) -> dict[str, Any] | None:
        try:
            return dict(self._table.get_entity(*self.key(task)))
        except ResourceNotFoundError:
            return None

    def claim(self, task: FetchTask, owner: str, now: dt.datetime, lease: dt.timedelta) -> Claim:
        pk, rk = self.key(task)
        fresh = {
            "PartitionKey": pk,
            "RowKey": rk,
            "ContentId": task.content_id,
            "ContentType": task.content_type,
            "ContentCreated": task.content_created,
            "State": "claimed",
            "Owner": owner,
            "ClaimedUntil": now + lease,
            "Attempts": 1,
        }
        # Insert first: most blobs are new, so one transaction claims them; a conflict means we must look.
        try:
            meta = self._table.create_entity(fresh)
            return Claim(ClaimStatus.CLAIMED, pk, rk, meta["etag"])
        except ResourceExistsError:
            pass
        for _ in range(3):  # bounded: each pass either decides or lost a race it will see next pass
            try:
                entity = self._table.get_entity(pk, rk)
            except ResourceNotFoundError:
                try:
                    meta = self._table.create_entity(fresh)
                    return Claim(ClaimStatus.CLAIMED, pk, rk, meta["etag"])
                except ResourceExistsError:
                    continue
            state = entity.get("State")
            if state == "done":
                return Claim(ClaimStatus.DONE, pk, rk)
            if state == "lost":
                return Claim(ClaimStatus.LOST, pk, rk)
            until = entity.get("ClaimedUntil")
            live = isinstance(until, dt.datetime) and utc(until) > now
            if state == "claimed" and live and entity.get("Owner") != owner:
                return Claim(ClaimStatus.BUSY, pk, rk)
            taken = dict(fresh, Attempts=int(entity.get("Attempts") or 0) + 1)
            try:
                meta = self._table.update_entity(
                    taken,
                    mode=UpdateMode.REPLACE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return Claim(ClaimStatus.CLAIMED, pk, rk, meta["etag"])
            except ResourceModifiedError:
                continue
        return Claim(ClaimStatus.BUSY, pk, rk)

    def mark_done(self, claim: Claim, records: int, now: dt.datetime) -> None:
        # Unconditional: the records are shipped, whoever holds the claim now.
        self._table.update_entity(
            {
                "PartitionKey": claim.partition_key,
                "RowKey": claim.row_key,
                "State": "done",
                "Records": records,
                "DoneAt": now,
            },
            mode=UpdateMode.MERGE,
        )

    def mark_lost(self, claim: Claim, reason: str, now: dt.datetime) -> None:
        self._table.update_entity(
            {
                "PartitionKey": claim.partition_key,
                "RowKey": claim.row_key,
                "State": "lost",
                "Error": reason[:1000],
                "DoneAt": now,
            },
            mode=UpdateMode.MERGE,
        )

    def release(self, claim: Claim, error: str) -> None:
        """Give the blob back after a failure so the next delivery need not wait for the lease."""
        try:
            self._table.update_entity(
                {
                    "PartitionKey": claim.partition_key,
                    "RowKey": claim.row_key,
                    "State": "failed",
                    "Error": error[:1000],
                },
                mode=UpdateMode.MERGE,
                etag=claim.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            pass  # someone else holds it now; nothing to give back
