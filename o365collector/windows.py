"""Pure window planning: from a checkpoint and the time now to the listing windows to run.

Rules (from the API's documented limits and the traps seen in other collectors):

- a window spans at most ``policy.window`` (never more than 24 h, the API's limit);
- no window starts before ``now - 7 days + margin`` (the API refuses older starts; the margin
  covers the time between planning and the request). A checkpoint older than that means an
  outage longer than the retention: the part no longer listable is reported as a gap, and
  collection resumes at the edge instead of looping on refused requests;
- windows end ``policy.end_delay`` behind now, and re-list ``policy.overlap`` behind the
  checkpoint, because content can become listable after its ``contentCreated``;
- a checkpoint in the future (clock trouble, manual edit) is treated as now instead of making
  ever-smaller windows; nothing here ever produces a window that ends after now.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .config import CollectionPolicy
from .models import TimeWindow

RETENTION = dt.timedelta(days=7)
RETENTION_MARGIN = dt.timedelta(minutes=15)
MIN_WINDOW = dt.timedelta(minutes=1)
MAX_WINDOW = dt.timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class WindowPlan:
    windows: tuple[TimeWindow, ...]
    lost: TimeWindow | None = None
    """Content created in this span can no longer be listed (the checkpoint fell behind retention)."""
    future_cursor: bool = False
    """The stored checkpoint was ahead of now and was treated as now."""


def earliest_listable(now: dt.datetime) -> dt.datetime:
    return now - RETENTION + RETENTION_MARGIN


def plan_windows(
    *,
    cursor: dt.datetime | None,
    now: dt.datetime,
    policy: CollectionPolicy,
    start_time: dt.datetime | None = None,
) -> WindowPlan:
    """The windows to list, oldest first. ``cursor`` is the end of the last window fully enqueued."""
    end = now - policy.end_delay
    earliest = earliest_listable(now)
    lost: TimeWindow | None = None
    future = False

    if cursor is None:
        start = max(start_time or earliest, earliest)
    else:
        if cursor > now:
            cursor, future = now, True
        start = cursor - policy.overlap
        if cursor < earliest:
            lost = TimeWindow(cursor, earliest)
        start = max(start, earliest)

    span = min(policy.window, MAX_WINDOW)
    windows: list[TimeWindow] = []
    while end - start >= MIN_WINDOW:
        stop = min(start + span, end)
        windows.append(TimeWindow(start, stop))
        start = stop
    return WindowPlan(tuple(windows), lost, future)


def lag(cursor: dt.datetime | None, now: dt.datetime) -> dt.timedelta | None:
    """How far collection is behind now (None before the first window completes)."""
    return None if cursor is None else max(dt.timedelta(0), now - cursor)
