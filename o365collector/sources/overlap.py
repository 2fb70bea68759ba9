"""The tail memo: how a Graph window re-reads the end of the window before it and ships each record once.

Entra (and Exchange) write some records late, after their window may have been read. So the window
``[start, end)`` reads ``[start - O, end)`` when the window before it is already read, and ships a record
from before ``start`` only if that window did not ship it. Each window leaves, in the ``UnitHistory`` under
``{stream}:tail:{end}``, the ids of the records it saw at or after ``end - O`` (8-byte hashes with the
record second: ``checkpoints.RecentBlobs``), which is exactly what the next window needs. The row is
``State = "reading"`` (with ``Until``, the reader's claim lease) while the window is read, then
``State = "read"`` with the ids:

- previous tail absent, or ``reading`` past its ``Until`` (its reader died): that window is not read yet and
  will read its whole stretch itself, so this one reads only ``[start, end)``;
- previous tail ``reading`` within its ``Until``: ``UnitNotReadyError`` (the message comes back shortly);
- previous tail ``read``: overlap, skipping the ids it lists;
- except when the previous window's reading began (``Since``) at least O after this window's start: every
  record of its stretch had appeared by then, so it ships them all, and this window neither waits nor
  re-reads (a backfill's windows, read side by side long after their time, never wait for each other).

The cost is bounded: one small row per window, at most ``RECENT_MAX_ENTRIES`` (about 76k) ids; beyond that
the newest are kept and a WARNING says only duplicates can follow. Nothing is lost as long as a record
appears within O of its time, or before its window is read.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..checkpoints import RecentBlobs
from ..errors import UnitNotReadyError
from ..models import Record, TimeWindow, utc
from .base import UnitHistory
from .graph_units import GraphStream, graph_time

log = logging.getLogger(__name__)

READING = "reading"
READ = "read"
# A window waiting for the one before it asks to come back after this many seconds.
NOT_READY_RETRY_SECONDS = 30.0


def tail_key(stream: str, at: dt.datetime) -> str:
    """The history key of the tail ending at ``at`` (Table Storage keys allow ``:``; no ``/``, ``#`` or ``?``)."""
    return f"{stream}:tail:{graph_time(at)}"


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """What ``fetch_unit`` requests, and the ids already shipped in the overlap stretch (None: no overlap)."""

    read: TimeWindow
    previous: RecentBlobs | None


def plan_read(
    history: UnitHistory,
    tenant_id: str,
    spec: GraphStream,
    window: TimeWindow,
    *,
    overlap: dt.timedelta,
    now: dt.datetime,
    earliest: dt.datetime,
) -> ReadPlan:
    """Step 2 of the algorithm: read the previous tail and decide how far back to read (never before ``earliest``)."""
    if overlap <= dt.timedelta(0):
        return ReadPlan(window, None)
    fields = history.get(tenant_id, tail_key(spec.stream, window.start))
    state = fields.get("State") if fields is not None else None
    if fields is None or state not in (READING, READ):
        return ReadPlan(window, None)
    since = fields.get("Since")
    if isinstance(since, dt.datetime) and utc(since) >= window.start + overlap:
        return ReadPlan(window, None)  # read after its whole stretch had appeared: nothing late to catch
    if state == READING:
        until = fields.get("Until")
        if isinstance(until, dt.datetime) and utc(until) > now:
            raise UnitNotReadyError(
                f"{spec.stream} window {graph_time(window.start)}..{graph_time(window.end)} waits for the window "
                "before it, which another delivery is reading",
                retry_after=NOT_READY_RETRY_SECONDS,
            )
        return ReadPlan(window, None)  # its reader died: it will be read again, whole
    start = max(window.start - overlap, earliest)
    if start >= window.start:
        return ReadPlan(window, None)
    return ReadPlan(TimeWindow(start, window.end), RecentBlobs.from_entity(fields))


def mark_reading(
    history: UnitHistory, tenant_id: str, stream: str, window: TimeWindow, *, since: dt.datetime, until: dt.datetime
) -> None:
    """Step 3: tell the next window this one is being read, from ``since`` (until the reader's lease runs out)."""
    history.put(tenant_id, tail_key(stream, window.end), {"State": READING, "Since": since, "Until": until})


@dataclass(frozen=True, slots=True)
class Selection:
    records: list[Record]
    skipped: int
    tail: RecentBlobs


def select(records: Iterable[Record], spec: GraphStream, window: TimeWindow, plan: ReadPlan) -> Selection:
    """Which records read for ``window`` to ship, how many were skipped, and this window's tail.

    A record before ``start`` whose id the previous tail lists was shipped by that window: skipped. So is an
    id read twice within this window (a page repeated by the service). A record at or after ``end`` (message
    trace filters with ``le``) belongs to the next window and is dropped. A record without an id or a
    readable time is shipped: a possible duplicate is better than a loss.
    """
    shipped: list[Record] = []
    skipped = 0
    tail = plan.previous.copy() if plan.previous is not None else RecentBlobs()
    seen: set[str] = set()
    for record in records:
        key = spec.record_key(record)
        when = spec.record_time(record)
        if when is not None and when >= window.end:
            continue
        if key is not None:
            if key in seen:
                skipped += 1
                continue
            seen.add(key)
            if when is not None and when < window.start and plan.previous is not None and key in plan.previous:
                skipped += 1
                continue
            if when is not None:
                tail.add(key, when)
        shipped.append(record)
    return Selection(shipped, skipped, tail)


def mark_read(
    history: UnitHistory,
    tenant_id: str,
    spec: GraphStream,
    window: TimeWindow,
    tail: RecentBlobs,
    *,
    overlap: dt.timedelta,
    now: dt.datetime,
    since: dt.datetime,
) -> None:
    """Step 5 (``since``: when the reading began): leave the ids at or after ``end - O`` (this window's and,
    for a window shorter than O, the previous tail's) for the next window."""
    kept = tail.copy()
    forgotten = kept.prune(window.end - overlap)
    if forgotten:
        log.warning(
            "%s window %s..%s: %d ids near its end exceed the tail memo; the next window may ship them again",
            spec.stream,
            graph_time(window.start),
            graph_time(window.end),
            forgotten,
            extra={"tenant_id": tenant_id, "content_type": spec.stream},
        )
    fields: dict[str, Any] = {
        "State": READ,
        "Since": since,
        "ReadAt": now,
        "Count": len(kept),
        **kept.to_properties(),
    }
    history.put(tenant_id, tail_key(spec.stream, window.end), fields)


def tail_state(fields: Mapping[str, Any] | None) -> str | None:
    """The state a history row records (for tests and ``status``)."""
    if fields is None:
        return None
    state = fields.get("State")
    return state if isinstance(state, str) else None
