"""Riding out a failing sink (or API) for hours: a message is deferred with a growing delay, never poisoned.

The queue's own redelivery (``visibilityTimeout`` times ``maxDequeueCount``) gives a blob a few
minutes; a SIEM's maintenance window lasts hours. Those quick redeliveries still absorb the blips, but
when the last delivery the queue allows fails with a transient error of a sink (``SinkTransientError``)
or of the Management Activity API (``ApiTransientError``), the handler puts a copy of its message back
on the content queue, invisible for a delay that doubles with each attempt (1, 2, 4, ... minutes,
capped at ``O365_SINK_BACKOFF_MAX_MINUTES``), and completes the delivery it holds: the copy starts at
dequeue count 0, so only permanent errors ever reach the poison queue. A handler that is not told the
dequeue count cannot know which delivery is the last and defers nothing (the poison queue's automatic
replay is then the backstop).

The API counts too: its client already retried each call for minutes (``O365_RETRY_*``), so what is
still failing after every delivery is an outage, and the blob waits for it within the same 7-day
retention. ``StorageTransientError`` is never deferred: the copy and the status row are written to
the same storage account, so when it fails the host's redelivery is all there is.

No delay runs past the blob's ``contentExpiration`` minus ``EXPIRY_MARGIN``; within
``EXPIRY_WARNING`` of that edge each deferral is logged at ERROR (an operator must fix the sink before
the source drops the records) and flagged in the status table, where ``status`` and ``health`` read it.

Status rows (table ``O365_STATUS_TABLE``, partition = tenant id): one ``deferred|<content type>|<sha256
of content id>`` row per waiting blob (idempotent, so counts are exact however often a message is
delivered), deleted once the blob completes; the stream row gets ``LastDeferred*`` and ``NextAttemptAt``
merged in the same transaction. A ``collector``/``auto-replay`` row keeps when the poison queue was last
considered for an automatic replay (o365collector.poison.auto_replay_poison).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from .errors import ApiTransientError, SinkTransientError
from .models import BlobContext, FetchTask, Record, utc
from .redaction import summary
from .sinks.base import Sink
from .status_report import StatusReport

log = logging.getLogger(__name__)

FIRST_DELAY = dt.timedelta(minutes=1)
# Never wait past the blob's expiration minus this: the last attempt must have time to fetch and ship.
EXPIRY_MARGIN = dt.timedelta(hours=1)
# A blob deferred this close to its expiration is reported (ERROR, status, health): a day leaves an
# operator time to act on a sink that is still failing.
EXPIRY_WARNING = dt.timedelta(hours=24)
# The queue service refuses longer visibility timeouts.
MAX_VISIBILITY = dt.timedelta(days=7)
DEFERRED_PREFIX = "deferred|"
STREAM_PREFIX = "stream|"  # the stream row of o365collector.status, where the latest deferral is merged
COLLECTOR_PARTITION = "collector"
AUTO_REPLAY_ROW = "auto-replay"
MAX_CAUSE_CHARS = 1000
API_NAME = "the Management Activity API"


def waiting_for(err: BaseException, *, last_delivery: bool) -> str | None:
    """What a deferrable failure waits for ("sink http", the API), or None when it is not deferred.

    Only on the delivery that would otherwise be poisoned (``last_delivery``): the queue's quick
    redelivery absorbs the blips, and the backoff takes over from there.
    """
    if not last_delivery:
        return None
    if isinstance(err, SinkTransientError):
        name = getattr(err, "sink_name", None)
        return f"sink {name}" if name else "a sink"
    if isinstance(err, ApiTransientError):
        return API_NAME
    return None


class NamedSink:
    """A sink whose transient errors carry its name (``sink_name``), so status can say which one fails."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.name = sink.name

    def check(self) -> None:
        self._sink.check()

    def send(self, records: Sequence[Record], context: BlobContext) -> None:
        try:
            self._sink.send(records, context)
        except SinkTransientError as err:
            err.sink_name = self.name  # type: ignore[attr-defined]  # an annotation, read by waiting_for
            raise

    def close(self) -> None:
        self._sink.close()


def backoff_delay(attempt: int, maximum: dt.timedelta) -> dt.timedelta:
    """The wait before ``attempt`` (1 = the first deferral): 1, 2, 4, ... minutes, capped at ``maximum``."""
    cap = min(maximum, MAX_VISIBILITY)
    if attempt >= 30:  # 2**29 minutes is past any cap; no need to build huge numbers from a forged counter
        return cap
    return min(FIRST_DELAY * (1 << max(0, attempt - 1)), cap)


@dataclass(frozen=True, slots=True)
class Deferral:
    """When a deferred blob is tried again, and how close to its expiration at the source it is."""

    attempt: int
    delay: dt.timedelta
    next_attempt_at: dt.datetime
    expires_in: dt.timedelta

    @property
    def near_expiry(self) -> bool:
        return self.expires_in <= EXPIRY_WARNING


def plan_deferral(
    task: FetchTask, now: dt.datetime, maximum: dt.timedelta, retry_after: float | None = None
) -> Deferral:
    """The next attempt of ``task`` (already counted: ``task.attempt`` is the deferral being planned).

    A ``Retry-After`` longer than the backoff is honoured (still capped). The delay never runs past
    the expiration minus ``EXPIRY_MARGIN``; past that point, attempts come every ``FIRST_DELAY`` until
    the source expires the blob (the fetcher then records it as lost).
    """
    delay = backoff_delay(task.attempt, maximum)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(dt.timedelta(seconds=retry_after), maximum, MAX_VISIBILITY))
    expires_in = task.content_expiration - now
    latest = expires_in - EXPIRY_MARGIN
    if latest < delay:
        delay = max(FIRST_DELAY, latest)
    return Deferral(task.attempt, delay, now + delay, expires_in)


def _hours(delta: dt.timedelta) -> str:
    return f"{max(0.0, delta.total_seconds() / 3600):.1f}"


def expiry_message(expires_in: dt.timedelta, what: str, cause: str) -> str:
    return f"content expires at the source in {_hours(expires_in)} h while {what} is failing: {cause}"


# -- the status table -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeferredBlob:
    tenant_id: str
    content_type: str
    content_id: str
    waiting_for: str
    cause: str
    attempt: int
    next_attempt_at: dt.datetime | None
    content_expiration: dt.datetime | None


def _row_key(task: FetchTask) -> str:
    digest = hashlib.sha256(task.content_id.encode()).hexdigest()
    return f"{DEFERRED_PREFIX}{task.content_type}|{digest}"


def _time(value: Any) -> dt.datetime | None:
    return utc(value) if isinstance(value, dt.datetime) else None


class DeferralStore:
    """The deferral rows and the auto-replay timestamp in the status table (advisory, like all status)."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    def record(self, task: FetchTask, deferral: Deferral, what: str, cause: str, now: dt.datetime) -> None:
        cause = summary(cause, MAX_CAUSE_CHARS)
        blob = {
            "PartitionKey": task.tenant_id,
            "RowKey": _row_key(task),
            "ContentType": task.content_type,
            "ContentId": task.content_id,
            "WaitingFor": what,
            "Cause": cause,
            "Attempt": deferral.attempt,
            "DeferredAt": now,
            "NextAttemptAt": deferral.next_attempt_at,
            "ContentExpiration": task.content_expiration,
        }
        stream = {
            "PartitionKey": task.tenant_id,
            "RowKey": STREAM_PREFIX + task.content_type,
            "ContentType": task.content_type,
            "LastDeferredAt": now,
            "LastDeferredFor": what,
            "LastDeferredCause": cause,
            "NextAttemptAt": deferral.next_attempt_at,
        }
        # One partition, one round trip: the blob's row and the stream's latest deferral together.
        self._table.submit_transaction(
            [("upsert", blob, {"mode": UpdateMode.REPLACE}), ("upsert", stream, {"mode": UpdateMode.MERGE})]
        )

    def clear(self, task: FetchTask) -> None:
        """The blob no longer waits (shipped, lost, refused or poisoned): forget its row."""
        try:
            self._table.delete_entity(partition_key=task.tenant_id, row_key=_row_key(task))
        except ResourceNotFoundError:
            pass  # another delivery of the same blob cleared it (or the table is not there yet)

    def list_deferred(self) -> list[DeferredBlob]:
        try:
            rows = list(
                self._table.query_entities(
                    "RowKey ge @low and RowKey lt @high",
                    parameters={"low": DEFERRED_PREFIX, "high": DEFERRED_PREFIX[:-1] + "}"},
                )
            )
        except ResourceNotFoundError:
            return []
        return [
            DeferredBlob(
                tenant_id=str(e["PartitionKey"]),
                content_type=str(e.get("ContentType") or ""),
                content_id=str(e.get("ContentId") or ""),
                waiting_for=str(e.get("WaitingFor") or "a sink"),
                cause=summary(str(e.get("Cause") or ""), MAX_CAUSE_CHARS),
                attempt=int(e.get("Attempt") or 0),
                next_attempt_at=_time(e.get("NextAttemptAt")),
                content_expiration=_time(e.get("ContentExpiration")),
            )
            for e in rows
        ]

    def last_auto_replay(self) -> dt.datetime | None:
        try:
            row = self._table.get_entity(COLLECTOR_PARTITION, AUTO_REPLAY_ROW)
        except ResourceNotFoundError:
            return None
        return _time(row.get("LastTriedAt"))

    def set_last_auto_replay(self, now: dt.datetime, outcome: str) -> None:
        self._table.upsert_entity(
            {
                "PartitionKey": COLLECTOR_PARTITION,
                "RowKey": AUTO_REPLAY_ROW,
                "LastTriedAt": now,
                "LastOutcome": summary(outcome, MAX_CAUSE_CHARS),
            },
            mode=UpdateMode.MERGE,
        )


# -- status and health ----------------------------------------------------------------------------


def report_deferrals(report: StatusReport, deferred: Sequence[DeferredBlob], now: dt.datetime) -> None:
    """Per stream: "N blobs waiting for sink X (next attempt 21:47): <cause>", and blobs near expiry.

    Waiting is degraded (nothing is lost yet); a blob within ``EXPIRY_WARNING`` of its expiration is a
    problem (unhealthy: content is about to be lost). Called before ``health.judge``, which copies each
    stream's problems and warnings into the report's.
    """
    for stream in report.streams:
        mine = [d for d in deferred if (d.tenant_id, d.content_type) == (stream.tenant_id, stream.content_type)]
        by_cause: dict[str, list[DeferredBlob]] = {}
        for blob in mine:
            by_cause.setdefault(blob.waiting_for, []).append(blob)
        for what, blobs in sorted(by_cause.items()):
            latest = max(blobs, key=lambda b: (b.next_attempt_at or now, b.attempt))
            nexts = [b.next_attempt_at for b in blobs if b.next_attempt_at is not None]
            soonest = min(nexts) if nexts else None
            when = soonest.strftime("%H:%M") if soonest is not None else "?"
            stream.deferred.append(
                {
                    "waiting_for": what,
                    "blobs": len(blobs),
                    "next_attempt_at": soonest.isoformat().replace("+00:00", "Z") if soonest else None,
                    "cause": latest.cause,
                }
            )
            stream.degraded.append(f"{len(blobs)} blobs waiting for {what} (next attempt {when}): {latest.cause}")
            edges = [b.content_expiration for b in blobs if b.content_expiration is not None]
            if edges and min(edges) - now <= EXPIRY_WARNING:
                stream.problems.append(expiry_message(min(edges) - now, what, latest.cause))
