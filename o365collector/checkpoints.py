"""Table Storage state: the listing checkpoint per tenant and content type, and the per-blob ledger.

Checkpoint (table ``O365_CHECKPOINT_TABLE``, PartitionKey = tenant id, RowKey = content type):
``Cursor`` is the end of the last listing window whose blobs are all on the queue. It only moves
forward and only under the ETag read with it, so two overlapping runs cannot move it back or
skip a window. ``Recent`` (with ``Recent1`` .. ``Recent13``: one binary property holds 64 KiB)
remembers the blobs enqueued as far back as a coming run may re-list (the overlap and the late
sweep's lookback), so re-listing does not enqueue them again (the ledger would skip them anyway;
this saves queue traffic). ``LateSweepAt`` is when the last late sweep was planned; it is saved
with the last window of the sweep, after that window's blobs are on the queue.

Ledger (table ``O365_LEDGER_TABLE``, PartitionKey = tenant id, RowKey = sha256 of the content id):
one row per content blob, ``claimed`` → ``done`` (or ``lost`` when the source no longer has it).
A claim carries the queue message id and a lease: the redelivery of the same message, or any
message after the lease ran out, takes it over, so a crashed worker never blocks its blob.
A unit of another source (a Graph window) has its row the same way; what a source carries from one
unit to the next (``UnitMemos``, the ``sources.base.UnitHistory``) lives in the same table under
RowKey ``memo-`` + sha256 of the source's key, with no ``State`` a ledger query reads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, TableEntity, TableTransactionError, UpdateMode

from .errors import RetryableError
from .models import FetchTask, utc
from .storage import RETRY_POSTS_TOO

# One operation of a table transaction: ("create" | "update", entity[, keyword arguments]).
_Operation = tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], dict[str, Any]]

_ENTRY = struct.Struct(">8sI")  # 8-byte content-id hash, contentCreated as epoch seconds
RECENT_PROPERTY_ENTRIES = 64 * 1024 // _ENTRY.size  # 5,461 entries: one binary property holds 64 KiB
# 14 properties (917 KB) stay under the 1 MiB entity limit with room for the other properties. That is
# 76,454 blobs: a day and an hour of one stream at 3,000 blobs per hour. Past it the oldest are
# forgotten; a re-listing enqueues those again and the ledger skips them.
RECENT_PROPERTIES = ("Recent", *(f"Recent{i}" for i in range(1, 14)))
RECENT_MAX_ENTRIES = RECENT_PROPERTY_ENTRIES * len(RECENT_PROPERTIES)


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

    def __len__(self) -> int:
        return len(self.entries)

    def prune(self, older_than: dt.datetime) -> int:
        """Forget blobs created before ``older_than`` (they will not be re-listed), then the oldest past
        ``RECENT_MAX_ENTRIES``; returns how many were forgotten for want of room."""
        limit = int(utc(older_than).timestamp())
        self.entries = {h: t for h, t in self.entries.items() if t >= limit}
        excess = len(self.entries) - RECENT_MAX_ENTRIES
        if excess > 0:
            # Keep the newest: losing old entries only means a possible re-enqueue the ledger skips.
            newest = sorted(self.entries.items(), key=lambda kv: kv[1])[-RECENT_MAX_ENTRIES:]
            self.entries = dict(newest)
        return max(excess, 0)

    def to_bytes(self) -> bytes:
        return b"".join(_ENTRY.pack(h, t) for h, t in self.entries.items())

    @classmethod
    def from_bytes(cls, data: bytes | None) -> RecentBlobs:
        if not data:
            return cls()
        usable = len(data) - len(data) % _ENTRY.size
        return cls(dict(_ENTRY.iter_unpack(data[:usable])))

    def to_properties(self) -> dict[str, bytes]:
        """The set as binary entity properties of at most 64 KiB each (``Recent`` always, the rest when used).

        Call ``prune`` first: entries past ``RECENT_MAX_ENTRIES`` have no property to go to.
        """
        data = self.to_bytes()
        size = RECENT_PROPERTY_ENTRIES * _ENTRY.size
        chunks = [data[i : i + size] for i in range(0, len(data), size)][: len(RECENT_PROPERTIES)] or [b""]
        return dict(zip(RECENT_PROPERTIES, chunks, strict=False))

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> RecentBlobs:
        # A checkpoint written before the set spread over several properties has only ``Recent``.
        parts = (entity.get(name) for name in RECENT_PROPERTIES)
        return cls.from_bytes(b"".join(p for p in parts if isinstance(p, bytes)))

    def copy(self) -> RecentBlobs:
        return RecentBlobs(dict(self.entries))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    tenant_id: str
    content_type: str
    cursor: dt.datetime | None
    recent: RecentBlobs
    etag: str | None
    late_sweep_at: dt.datetime | None = None
    """When the last late sweep was planned (None: never); see ``windows.plan_windows``."""


class CheckpointStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table

    def get(self, tenant_id: str, content_type: str) -> Checkpoint:
        try:
            entity = self._table.get_entity(tenant_id, content_type)
        except ResourceNotFoundError:
            return Checkpoint(tenant_id, content_type, None, RecentBlobs(), None)
        return _checkpoint(entity)

    def list(self) -> list[Checkpoint]:
        return [_checkpoint(e) for e in self._table.list_entities() if not is_lease_row(e["RowKey"])]

    def read_tenant(self, tenant_id: str) -> TenantRows:
        """The tenant's whole partition in one query: its checkpoints and its streams' lease rows."""
        rows = TenantRows(tenant_id)
        for entity in self._table.query_entities("PartitionKey eq @tenant", parameters={"tenant": tenant_id}):
            row_key = str(entity["RowKey"])
            if is_lease_row(row_key):
                rows.leases[row_key.removeprefix(LEASE_ROW_PREFIX)] = entity
            else:
                rows.checkpoints[row_key] = entity
        return rows

    def primed(self, rows: TenantRows) -> CheckpointStore:
        """This store, answering the first ``get`` of each of ``rows``' streams from ``rows``."""
        return _PrimedCheckpoints(self._table, rows)

    def advance(
        self,
        checkpoint: Checkpoint,
        cursor: dt.datetime,
        recent: RecentBlobs,
        now: dt.datetime,
        *,
        late_sweep_at: dt.datetime | None = None,
    ) -> Checkpoint:
        """Save ``cursor`` (never backwards, never past ``now``) if nobody else saved since we read.

        ``late_sweep_at`` records a completed late sweep; without it the stored one is kept.
        """
        cursor = min(utc(cursor), now)
        if checkpoint.cursor is not None and cursor < checkpoint.cursor:
            cursor = checkpoint.cursor
        swept = late_sweep_at or checkpoint.late_sweep_at
        entity: dict[str, Any] = {
            "PartitionKey": checkpoint.tenant_id,
            "RowKey": checkpoint.content_type,
            "Cursor": cursor,
            **recent.to_properties(),
            "UpdatedAt": now,
            "WriteId": uuid.uuid4().hex,  # tells this write's row from another run's (see below)
        }
        if swept is not None:
            entity["LateSweepAt"] = swept
        try:
            if checkpoint.etag is None:
                meta = self._table.create_entity(entity, retry_on_methods=RETRY_POSTS_TOO)
            else:
                meta = self._table.update_entity(
                    entity, mode=UpdateMode.REPLACE, etag=checkpoint.etag, match_condition=MatchConditions.IfNotModified
                )
        except ResourceExistsError as err:
            # Sent again after a dropped connection, the create may find its own row: then it carries this WriteId.
            mine = self._table.get_entity(checkpoint.tenant_id, checkpoint.content_type)
            if mine.get("WriteId") != entity["WriteId"]:
                raise CheckpointConflictError(
                    f"checkpoint {checkpoint.tenant_id}/{checkpoint.content_type} was moved by another run"
                ) from err
            meta = {"etag": mine.metadata["etag"]}
        except ResourceModifiedError as err:
            raise CheckpointConflictError(
                f"checkpoint {checkpoint.tenant_id}/{checkpoint.content_type} was moved by another run"
            ) from err
        return Checkpoint(checkpoint.tenant_id, checkpoint.content_type, cursor, recent, meta["etag"], swept)


def _checkpoint(entity: TableEntity) -> Checkpoint:
    cursor, swept = entity.get("Cursor"), entity.get("LateSweepAt")
    return Checkpoint(
        entity["PartitionKey"],
        entity["RowKey"],
        utc(cursor) if isinstance(cursor, dt.datetime) else None,
        RecentBlobs.from_entity(entity),
        entity.metadata["etag"],
        utc(swept) if isinstance(swept, dt.datetime) else None,
    )


@dataclass
class TenantRows:
    """A tenant's checkpoint partition as one query read it: checkpoint rows and lease rows by content type."""

    tenant_id: str
    checkpoints: dict[str, TableEntity] = field(default_factory=dict)
    leases: dict[str, TableEntity] = field(default_factory=dict)


class _PrimedCheckpoints(CheckpointStore):
    """The first ``get`` of each of the tenant's streams answers from the partition read just before (with the
    leases), saving a round trip per stream; an absent row is known absent. Later gets read the table, and
    ``advance`` is unchanged: the ETag it writes under is the one that read saw."""

    def __init__(self, table: TableClient, rows: TenantRows) -> None:
        super().__init__(table)
        self._rows = rows
        self._answered: set[str] = set()

    def get(self, tenant_id: str, content_type: str) -> Checkpoint:
        if tenant_id != self._rows.tenant_id or content_type in self._answered:
            return super().get(tenant_id, content_type)
        self._answered.add(content_type)
        entity = self._rows.checkpoints.get(content_type)
        if entity is None:
            return Checkpoint(tenant_id, content_type, None, RecentBlobs(), None)
        return _checkpoint(entity)


LEASE_ROW_PREFIX = "lease:"


def is_lease_row(row_key: str) -> bool:
    return row_key.startswith(LEASE_ROW_PREFIX)


@dataclass(frozen=True, slots=True)
class StreamLease:
    tenant_id: str
    content_type: str
    holder: str
    until: dt.datetime
    etag: str


class StreamLeases:
    """Who lists a stream now: one row per stream beside its checkpoint (RowKey ``lease:<content type>``).

    A sibling row, not columns of the checkpoint row: the checkpoint is replaced under its ETag at every
    window, and a renewal on the same row would change that ETag under the lister's feet. ``Holder`` names
    the delivery listing the stream (or the continuation it was handed to), ``Until`` when the lease lapses
    unless renewed. Every change is ETag-conditional, so of two workers racing for a stream one wins.
    """

    def __init__(self, table: TableClient) -> None:
        self._table = table

    def acquire(
        self,
        tenant_id: str,
        content_type: str,
        holder: str,
        now: dt.datetime,
        length: dt.timedelta,
        *,
        handed: str = "",
    ) -> StreamLease | dt.datetime | None:
        """Take the stream: the lease; the instant another live holder's lease lapses (busy); or None when
        ``handed`` (the holder this continuation was handed the lease as) was superseded by another worker."""
        row_key = LEASE_ROW_PREFIX + content_type
        fresh = {"PartitionKey": tenant_id, "RowKey": row_key, "Holder": holder, "Until": now + length}
        for _ in range(3):  # bounded: each pass decides, or lost a race it sees on the next pass
            try:
                entity = self._table.get_entity(tenant_id, row_key)
            except ResourceNotFoundError:
                try:
                    meta = self._table.create_entity(fresh)
                except ResourceExistsError:
                    continue
                return StreamLease(tenant_id, content_type, holder, now + length, meta["etag"])
            verdict = _lease_verdict(entity, holder, handed, now, length)
            if not isinstance(verdict, _Take):
                return verdict
            try:
                meta = self._table.update_entity(fresh, **_if_unchanged(entity.metadata["etag"]))
            except ResourceModifiedError:
                continue
            return StreamLease(tenant_id, content_type, holder, now + length, meta["etag"])
        return now + length

    def acquire_all(
        self,
        rows: TenantRows,
        content_types: Iterable[str],
        holder: str,
        now: dt.datetime,
        length: dt.timedelta,
        *,
        handed: str = "",
    ) -> dict[str, StreamLease | dt.datetime | None]:
        """``acquire`` for several of a tenant's streams, decided from ``rows`` (the tenant's partition, read
        once) and written in one entity group transaction: a whole tenant's leases cost two round trips
        instead of two per stream. The transaction is all or nothing; when a row changed since ``rows``
        were read (a race) the streams it was to take are acquired one by one, as ``acquire`` does."""
        verdicts: dict[str, StreamLease | dt.datetime | None] = {}
        operations: list[_Operation] = []
        taking: list[str] = []
        for content_type in content_types:
            fresh = {
                "PartitionKey": rows.tenant_id,
                "RowKey": LEASE_ROW_PREFIX + content_type,
                "Holder": holder,
                "Until": now + length,
            }
            entity = rows.leases.get(content_type)
            if entity is None:
                operations.append(("create", fresh))
            else:
                verdict = _lease_verdict(entity, holder, handed, now, length)
                if not isinstance(verdict, _Take):
                    verdicts[content_type] = verdict
                    continue
                operations.append(("update", fresh, _if_unchanged(entity.metadata["etag"])))
            taking.append(content_type)
        if not operations:
            return verdicts
        try:
            answers = self._table.submit_transaction(operations, retry_on_methods=RETRY_POSTS_TOO)
        except TableTransactionError:
            for content_type in taking:
                verdicts[content_type] = self.acquire(rows.tenant_id, content_type, holder, now, length, handed=handed)
            return verdicts
        for content_type, answer in zip(taking, answers, strict=True):
            verdicts[content_type] = StreamLease(rows.tenant_id, content_type, holder, now + length, answer["etag"])
        return verdicts

    def _write(self, lease: StreamLease, holder: str, until: dt.datetime) -> StreamLease | None:
        try:
            meta = self._table.update_entity(_lease_entity(lease, holder, until), **_if_unchanged(lease.etag))
        except ResourceNotFoundError:
            return None
        except ResourceModifiedError:
            return self._landed(lease, holder, until)
        return StreamLease(lease.tenant_id, lease.content_type, holder, until, meta["etag"])

    def _landed(self, lease: StreamLease, holder: str, until: dt.datetime) -> StreamLease | None:
        """A write refused under its ETag may be this very write, landed by a transaction whose answer was lost
        and retried: the row then says what it wrote (holder names are unique per delivery). Else: taken over."""
        try:
            row = self._table.get_entity(lease.tenant_id, LEASE_ROW_PREFIX + lease.content_type)
        except ResourceNotFoundError:
            return None
        written, etag = row.get("Until"), row.metadata["etag"]
        if row.get("Holder") != holder or not isinstance(written, dt.datetime) or etag is None:
            return None
        if abs(utc(written) - until) >= dt.timedelta(milliseconds=1):
            return None
        return StreamLease(lease.tenant_id, lease.content_type, holder, until, etag)

    def write_all(self, changes: Sequence[tuple[StreamLease, str, dt.datetime]]) -> list[StreamLease | None]:
        """Several ``(lease, holder, until)`` writes of one tenant's leases in one transaction; if any lease was
        taken over meanwhile, each is written alone (None for the lost). A renewal keeps the holder and moves
        ``until``; a hand-over names the continuation message, which alone may take the lease before ``until``
        (so the schedule's next message does not start a second chain); a release sets ``until`` to now and
        keeps the row, whose holder says who listed last."""
        if len(changes) < 2 or len({lease.tenant_id for lease, _, _ in changes}) > 1:
            return [self._write(lease, holder, until) for lease, holder, until in changes]
        operations: list[_Operation] = [
            ("update", _lease_entity(lease, holder, until), _if_unchanged(lease.etag))
            for lease, holder, until in changes
        ]
        try:
            answers = self._table.submit_transaction(operations, retry_on_methods=RETRY_POSTS_TOO)
        except TableTransactionError:
            return [self._write(lease, holder, until) for lease, holder, until in changes]
        return [
            StreamLease(lease.tenant_id, lease.content_type, holder, until, answer["etag"])
            for (lease, holder, until), answer in zip(changes, answers, strict=True)
        ]


class _Take:
    """The verdict "take this lease" (a sentinel beside a lease, a lapse instant and None)."""


_TAKE = _Take()


def _lease_verdict(
    entity: TableEntity, holder: str, handed: str, now: dt.datetime, length: dt.timedelta
) -> _Take | dt.datetime | None:
    """What a worker may do with the lease row ``entity``: take it, wait until it lapses (busy), or None when
    the continuation ``handed`` was superseded by another worker's chain."""
    current = str(entity.get("Holder") or "")
    until = entity.get("Until")
    live = isinstance(until, dt.datetime) and utc(until) > now
    if handed and current not in (handed, holder):  # holder: this continuation's own redelivery
        return None  # someone took the stream after the handover: their chain carries it on
    if live and current not in (handed, holder):  # the same holder: a redelivery of a dead delivery
        return utc(until) if isinstance(until, dt.datetime) else now + length
    return _TAKE


def _lease_entity(lease: StreamLease, holder: str, until: dt.datetime) -> dict[str, Any]:
    return {
        "PartitionKey": lease.tenant_id,
        "RowKey": LEASE_ROW_PREFIX + lease.content_type,
        "Holder": holder,
        "Until": until,
    }


def _if_unchanged(etag: str | None) -> dict[str, Any]:
    """A replace that only lands if the row still has ``etag``."""
    return {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified}


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
            # Kept so ``run --resend`` fetches a unit the way it was fetched (the source checks it again).
            "ContentUri": task.content_uri,
            "ContentCreated": task.content_created,
            "ContentExpiration": task.content_expiration,  # a Graph unit's is its window's start + retention
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

    def renew(self, claim: Claim, until: dt.datetime) -> Claim | None:
        """Extend a claim this delivery holds to ``until``; None when the row changed since the claim was read
        (released, finished, or taken over by another delivery after the lease ran out)."""
        if claim.status is not ClaimStatus.CLAIMED or claim.etag is None:
            return None
        try:
            meta = self._table.update_entity(
                {"PartitionKey": claim.partition_key, "RowKey": claim.row_key, "ClaimedUntil": until},
                mode=UpdateMode.MERGE,
                etag=claim.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return Claim(claim.status, claim.partition_key, claim.row_key, meta["etag"])

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

    def list_done(self, tenant_id: str, since: dt.datetime, until: dt.datetime) -> Iterator[dict[str, Any]]:
        """The rows of ``tenant_id``'s blobs shipped (``done``) and created in ``[since, until)``, for ``run --resend``.

        The service filters on the partition, the state and ``ContentCreated``; rows come page by page,
        in the table's order (not by time), with only the properties a resend reads.
        """
        rows = self._table.query_entities(
            "PartitionKey eq @tenant and State eq 'done' and ContentCreated ge @since and ContentCreated lt @until",
            parameters={"tenant": tenant_id, "since": utc(since), "until": utc(until)},
            select=["ContentId", "ContentType", "ContentUri", "ContentCreated", "ContentExpiration", "Records"],
        )
        for row in rows:
            yield dict(row)


MEMO_ROW_PREFIX = "memo-"


class UnitMemos:
    """``sources.base.UnitHistory`` on the ledger table: one row per (tenant, key), last write wins."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @staticmethod
    def _row_key(key: str) -> str:
        return MEMO_ROW_PREFIX + hashlib.sha256(key.encode()).hexdigest()

    def get(self, tenant_id: str, key: str) -> Mapping[str, Any] | None:
        try:
            return dict(self._table.get_entity(tenant_id, self._row_key(key)))
        except ResourceNotFoundError:
            return None

    def put(self, tenant_id: str, key: str, fields: Mapping[str, Any]) -> None:
        entity = {**fields, "PartitionKey": tenant_id, "RowKey": self._row_key(key), "MemoKey": key[:200]}
        self._table.upsert_entity(entity, mode=UpdateMode.REPLACE)


class NoMemos:
    """A ``UnitHistory`` that remembers nothing: a unit read on its own (``run --resend``) re-reads no
    earlier stretch and leaves nothing for the next unit."""

    def get(self, tenant_id: str, key: str) -> Mapping[str, Any] | None:
        return None

    def put(self, tenant_id: str, key: str, fields: Mapping[str, Any]) -> None:
        return None
