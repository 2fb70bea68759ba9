"""What the collector last did, per tenant and content type, in Table Storage (``O365_STATUS_TABLE``).

Written as a side effect of the work, read by ``status``, the ``health`` function and ``check``:

- a **stream row** (PartitionKey = tenant id, RowKey = ``stream|<content type>``), merged once per stream
  per lister run: when it ran, whether it succeeded, its last error, its counters and lag, the blobs
  it found late and the listing entries it refused. ``LastLate*`` and ``LastRefused*`` are written only
  by a run that found some, so they tell the last time it happened. A fetch failure merges its own
  ``Fetch*`` fields into the same row. Shipped blobs are not written one by one: each process adds
  them up per stream (``ShippedTally``) and folds the sum into ``Shipped*`` at most once a minute per
  stream (at once for a stream's first success in this process, or its first after a failure here),
  with an ETag-conditional read-modify-write, since Table Storage has no atomic counter;
- a **lost row** per content blob the source expired before we fetched it (RowKey =
  ``lost|<content type>|<sha256 of the content id>``). Table Storage has no atomic counter; one
  idempotent row per blob keeps the count exact even when a message is delivered twice.

Writes are merges (upsert, no ETag): status is advisory, last writer wins, and it never gates the work.
The runtime logs a failed status write at WARNING and carries on; nothing here touches checkpoints.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from .lister import StreamResult
from .models import FetchTask, utc
from .redaction import summary
from .storage import RETRY_POSTS_TOO

STREAM_PREFIX = "stream|"
LOST_PREFIX = "lost|"
MAX_MESSAGE_CHARS = 1000  # table properties hold 32 K characters; an error message needs far fewer
# How often one process folds its shipped-records sum into a stream row: a busy stream ships a blob every
# few seconds, and a write per blob is the cost the status table was designed to avoid.
SHIPPED_FLUSH_INTERVAL = dt.timedelta(minutes=1)


def stream_succeeded(stream: StreamResult) -> bool:
    """A listing counts as successful when it raised nothing and was not starved by the run's time budget.

    A stream that listed no window while windows were left (other streams used the budget) made no
    progress: counting that as success would hide a collector that silently stopped moving.
    """
    return stream.ok and not (stream.windows == 0 and stream.windows_left > 0)


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """The stream row as read back."""

    tenant_id: str
    content_type: str
    last_run_at: dt.datetime | None = None
    last_success_at: dt.datetime | None = None
    last_outcome: str | None = None  # "ok", "failed" or "starved"
    last_error_at: dt.datetime | None = None
    last_error_code: str | None = None
    last_error: str | None = None
    fetch_error_at: dt.datetime | None = None
    fetch_error_code: str | None = None
    fetch_error: str | None = None
    run_seconds: float | None = None
    windows: int = 0
    windows_left: int = 0
    blobs_listed: int = 0
    blobs_enqueued: int = 0
    throttled: int = 0
    lag_seconds: float | None = None
    lost_span_from: dt.datetime | None = None
    lost_span_to: dt.datetime | None = None
    lost_span_at: dt.datetime | None = None
    late_blobs: int = 0
    max_lateness_seconds: float | None = None
    sweep_windows: int = 0
    refused_entries: int = 0
    last_late_at: dt.datetime | None = None
    """The last run that found late blobs, how many and the largest lateness."""
    last_late_blobs: int = 0
    last_late_max_seconds: float | None = None
    last_refused_at: dt.datetime | None = None
    """The last run that refused listing entries, how many, and what the first of them were."""
    last_refused_entries: int = 0
    last_refused: tuple[str, ...] = ()
    shipped_records: int = 0
    """Records and blobs shipped since the row was created (summed by the fetchers), and the last one's time."""
    shipped_blobs: int = 0
    last_shipped_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class LostBlob:
    tenant_id: str
    content_type: str
    content_id: str
    content_created: dt.datetime | None
    lost_at: dt.datetime | None
    reason: str


def _time(value: Any) -> dt.datetime | None:
    return utc(value) if isinstance(value, dt.datetime) else None


def _str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value >= 0 else None


def _text(value: Any) -> str | None:
    """Stored error text as served: redacted again on the way out (rows written by older releases)."""
    text = _str(value)
    return summary(text, MAX_MESSAGE_CHARS) if text is not None else None


def _error_code(err: BaseException) -> str:
    code = getattr(err, "code", None)
    return str(code) if code else type(err).__name__


def _or_sentinel(seconds: float | None) -> float:
    return float(seconds) if seconds is not None else -1.0  # -1: none (a merge cannot clear a property)


@dataclass(slots=True)
class _Pending:
    records: int = 0
    blobs: int = 0
    last_at: dt.datetime | None = None
    flushed_at: dt.datetime | None = None
    failed_since_flush: bool = False


class StatusStore:
    def __init__(self, table: TableClient) -> None:
        self._table = table
        self._shipped: dict[tuple[str, str], _Pending] = {}
        self._lock = threading.Lock()  # the Functions host runs queue messages on several threads

    # -- writing ----------------------------------------------------------------------------------

    def record_run(self, stream: StreamResult, now: dt.datetime, seconds: float | None = None) -> None:
        """One merge per stream per lister run."""
        self._table.upsert_entity(self._run_entity(stream, now, seconds), mode=UpdateMode.MERGE)

    def record_runs(self, streams: Sequence[StreamResult], now: dt.datetime) -> None:
        """Every stream of a run: one batch per tenant (its rows share a partition), not one call per stream."""
        by_tenant: dict[str, list[StreamResult]] = {}
        for stream in streams:
            by_tenant.setdefault(stream.tenant_id, []).append(stream)
        for tenant_streams in by_tenant.values():
            operations: list[Any] = [
                ("upsert", self._run_entity(s, now, s.seconds), {"mode": UpdateMode.MERGE}) for s in tenant_streams
            ]
            for start in range(0, len(operations), 100):  # a table batch holds at most 100 operations
                self._table.submit_transaction(operations[start : start + 100], retry_on_methods=RETRY_POSTS_TOO)

    @staticmethod
    def _run_entity(stream: StreamResult, now: dt.datetime, seconds: float | None) -> dict[str, Any]:
        succeeded = stream_succeeded(stream)
        entity: dict[str, Any] = {
            "PartitionKey": stream.tenant_id,
            "RowKey": STREAM_PREFIX + stream.content_type,
            "ContentType": stream.content_type,
            "LastRunAt": now,
            "LastOutcome": "ok" if succeeded else ("failed" if not stream.ok else "starved"),
            "Windows": stream.windows,
            "WindowsLeft": stream.windows_left,
            "BlobsListed": stream.blobs_listed,
            "BlobsEnqueued": stream.blobs_enqueued,
            "Throttled": stream.throttled,
            # -1: no checkpoint yet. A merge cannot clear a property (None is not sent), so a sentinel it is.
            "LagSeconds": float(stream.lag_seconds) if stream.lag_seconds is not None else -1.0,
            "LateBlobs": stream.late_blobs,
            "MaxLatenessSeconds": _or_sentinel(stream.max_lateness_seconds),
            "SweepWindows": stream.sweep_windows,
            "RefusedEntries": stream.refused_entries,
        }
        if stream.late_blobs:
            entity["LastLateAt"] = now
            entity["LastLateBlobs"] = stream.late_blobs
            entity["LastLateMaxSeconds"] = _or_sentinel(stream.max_lateness_seconds)
        if stream.refused_entries:
            entity["LastRefusedAt"] = now
            entity["LastRefusedEntries"] = stream.refused_entries
            entity["LastRefused"] = "\n".join(stream.refused)[:MAX_MESSAGE_CHARS]
        if seconds is not None:
            entity["RunSeconds"] = float(seconds)
        if succeeded:
            entity["LastSuccessAt"] = now
        if not stream.ok:
            entity["LastErrorAt"] = now
            entity["LastErrorCode"] = summary(stream.error_code or "", 100)
            # Redacted before it is stored: the table is read by status, health and anyone with storage access.
            entity["LastError"] = summary(stream.error or "", MAX_MESSAGE_CHARS)
        if stream.lost_from is not None and stream.lost_to is not None:
            entity["LostSpanFrom"] = stream.lost_from
            entity["LostSpanTo"] = stream.lost_to
            entity["LostSpanAt"] = now
        return entity

    def record_fetch_error(self, task: FetchTask, err: BaseException, now: dt.datetime) -> None:
        with self._lock:
            # The next success here is written at once, so a recovered sink stops showing as failing.
            self._shipped.setdefault((task.tenant_id, task.content_type), _Pending()).failed_since_flush = True
        self._table.upsert_entity(
            {
                "PartitionKey": task.tenant_id,
                "RowKey": STREAM_PREFIX + task.content_type,
                "ContentType": task.content_type,
                "FetchErrorAt": now,
                "FetchErrorCode": summary(_error_code(err), 100),
                "FetchError": summary(str(err), MAX_MESSAGE_CHARS),
            },
            mode=UpdateMode.MERGE,
        )

    def record_shipped(self, task: FetchTask, records: int, now: dt.datetime) -> None:
        """Add a shipped blob to this process's sum; write the sum when it is due (see the module docstring)."""
        key = (task.tenant_id, task.content_type)
        with self._lock:
            pending = self._shipped.setdefault(key, _Pending())
            pending.records += records
            pending.blobs += 1
            pending.last_at = now
            due = (
                pending.flushed_at is None
                or pending.failed_since_flush
                or now - pending.flushed_at >= SHIPPED_FLUSH_INTERVAL
            )
        if due:
            self._flush(key, now)

    def flush_shipped(self, now: dt.datetime) -> None:
        """Write every stream's unwritten sum (on shutdown, and at the end of a ``run --once``)."""
        with self._lock:
            keys = [k for k, p in self._shipped.items() if p.blobs]
        for key in keys:
            self._flush(key, now)

    def _flush(self, key: tuple[str, str], now: dt.datetime) -> None:
        with self._lock:
            pending = self._shipped[key]
            records, blobs, last_at = pending.records, pending.blobs, pending.last_at
            pending.records, pending.blobs, pending.flushed_at, pending.failed_since_flush = 0, 0, now, False
        written = False
        try:
            written = self._add_shipped(key, records, blobs, last_at)
        finally:
            if not written:  # kept for the next flush: a lost race or a storage error never drops a count
                with self._lock:
                    pending.records += records
                    pending.blobs += blobs

    def _add_shipped(self, key: tuple[str, str], records: int, blobs: int, last_at: dt.datetime | None) -> bool:
        tenant_id, content_type = key
        entity: dict[str, Any] = {"PartitionKey": tenant_id, "RowKey": STREAM_PREFIX + content_type}
        try:
            row = self._table.get_entity(tenant_id, STREAM_PREFIX + content_type)
        except ResourceNotFoundError:
            row = None
        before: dict[str, Any] = dict(row) if row is not None else {}
        totals: dict[str, Any] = {
            "ContentType": content_type,
            "ShippedRecords": int(before.get("ShippedRecords") or 0) + records,
            "ShippedBlobs": int(before.get("ShippedBlobs") or 0) + blobs,
        }
        if last_at is not None:
            totals["LastShippedAt"] = last_at
        try:
            if row is None:
                self._table.create_entity(entity | totals)
            else:
                # Conditional: a concurrent writer (another instance, the lister's merge) means a re-read next time.
                self._table.update_entity(
                    entity | totals,
                    mode=UpdateMode.MERGE,
                    etag=row.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
        except (ResourceExistsError, ResourceModifiedError):
            return False
        return True

    def record_lost(self, task: FetchTask, reason: str, now: dt.datetime) -> None:
        digest = hashlib.sha256(task.content_id.encode()).hexdigest()
        self._table.upsert_entity(
            {
                "PartitionKey": task.tenant_id,
                "RowKey": f"{LOST_PREFIX}{task.content_type}|{digest}",
                "ContentType": task.content_type,
                "ContentId": task.content_id,
                "ContentCreated": task.content_created,
                "LostAt": now,
                "Reason": summary(reason, MAX_MESSAGE_CHARS),
            },
            mode=UpdateMode.REPLACE,
        )

    # -- reading ----------------------------------------------------------------------------------

    def list_streams(self) -> dict[tuple[str, str], StreamStatus]:
        """Every stream row of every tenant, keyed by (tenant id, content type)."""
        rows = self._query(STREAM_PREFIX)
        found: dict[tuple[str, str], StreamStatus] = {}
        for e in rows:
            content_type = str(e["RowKey"])[len(STREAM_PREFIX) :]
            found[(str(e["PartitionKey"]), content_type)] = StreamStatus(
                tenant_id=str(e["PartitionKey"]),
                content_type=content_type,
                last_run_at=_time(e.get("LastRunAt")),
                last_success_at=_time(e.get("LastSuccessAt")),
                last_outcome=_str(e.get("LastOutcome")),
                last_error_at=_time(e.get("LastErrorAt")),
                last_error_code=_text(e.get("LastErrorCode")),
                last_error=_text(e.get("LastError")),
                fetch_error_at=_time(e.get("FetchErrorAt")),
                fetch_error_code=_text(e.get("FetchErrorCode")),
                fetch_error=_text(e.get("FetchError")),
                run_seconds=float(e["RunSeconds"]) if e.get("RunSeconds") is not None else None,
                windows=int(e.get("Windows") or 0),
                windows_left=int(e.get("WindowsLeft") or 0),
                blobs_listed=int(e.get("BlobsListed") or 0),
                blobs_enqueued=int(e.get("BlobsEnqueued") or 0),
                throttled=int(e.get("Throttled") or 0),
                lag_seconds=_seconds(e.get("LagSeconds")),
                lost_span_from=_time(e.get("LostSpanFrom")),
                lost_span_to=_time(e.get("LostSpanTo")),
                lost_span_at=_time(e.get("LostSpanAt")),
                late_blobs=int(e.get("LateBlobs") or 0),
                max_lateness_seconds=_seconds(e.get("MaxLatenessSeconds")),
                sweep_windows=int(e.get("SweepWindows") or 0),
                refused_entries=int(e.get("RefusedEntries") or 0),
                last_late_at=_time(e.get("LastLateAt")),
                last_late_blobs=int(e.get("LastLateBlobs") or 0),
                last_late_max_seconds=_seconds(e.get("LastLateMaxSeconds")),
                last_refused_at=_time(e.get("LastRefusedAt")),
                last_refused_entries=int(e.get("LastRefusedEntries") or 0),
                last_refused=tuple(str(e.get("LastRefused") or "").splitlines()),
                shipped_records=int(e.get("ShippedRecords") or 0),
                shipped_blobs=int(e.get("ShippedBlobs") or 0),
                last_shipped_at=_time(e.get("LastShippedAt")),
            )
        return found

    def list_lost(self) -> list[LostBlob]:
        """Every content blob recorded as lost at the source, oldest loss first."""
        lost = [
            LostBlob(
                tenant_id=str(e["PartitionKey"]),
                content_type=str(e.get("ContentType") or ""),
                content_id=str(e.get("ContentId") or ""),
                content_created=_time(e.get("ContentCreated")),
                lost_at=_time(e.get("LostAt")),
                reason=summary(str(e.get("Reason") or ""), MAX_MESSAGE_CHARS),
            )
            for e in self._query(LOST_PREFIX)
        ]
        return sorted(lost, key=lambda b: b.lost_at or dt.datetime.min.replace(tzinfo=dt.UTC))

    def _query(self, prefix: str) -> list[dict[str, Any]]:
        # A RowKey range over every partition (one per tenant): a scan, but of a small table. "|" + 1 is "}".
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        try:
            return [
                dict(e)
                for e in self._table.query_entities(
                    "RowKey ge @low and RowKey lt @high", parameters={"low": prefix, "high": upper}
                )
            ]
        except ResourceNotFoundError:
            return []  # no run has written status yet
