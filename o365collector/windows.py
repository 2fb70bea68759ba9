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
  ever-smaller windows; nothing here ever produces a window that ends after now;
- once per ``policy.late_sweep``, a *late sweep* re-lists what lies behind the overlap, back to
  ``policy.late_lookback`` before the previous sweep (before the checkpoint on the first one):
  a blob listable up to ``late_lookback`` after its contentCreated became listable after that
  sweep, so it was created after the previous sweep's time minus the lookback. The sweep ends where
  the overlap starts (so it never reaches the checkpoint) and is cut in windows of at most 24 h.
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
    sweep: tuple[TimeWindow, ...] = ()
    """The late sweep's windows, oldest first (none when no sweep is due or nothing lies behind the overlap)."""
    sweep_due: bool = False
    """A sweep is due: once ``windows`` and ``sweep`` are listed, record ``now`` as the last sweep.
    True with no sweep windows on a first run: every window is listed from now on."""


def earliest_listable(now: dt.datetime, retention: dt.timedelta = RETENTION) -> dt.datetime:
    return now - retention + RETENTION_MARGIN


def plan_windows(
    *,
    cursor: dt.datetime | None,
    now: dt.datetime,
    policy: CollectionPolicy,
    start_time: dt.datetime | None = None,
    last_sweep: dt.datetime | None = None,
) -> WindowPlan:
    """The windows to list, oldest first. ``cursor`` is the end of the last window fully enqueued,
    ``last_sweep`` when the last late sweep was planned (None: never)."""
    end = now - policy.end_delay
    earliest = earliest_listable(now, policy.retention)
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

    windows = _split(start, end, min(policy.window, MAX_WINDOW))
    due = sweep_due(last_sweep, now, policy)
    sweep: tuple[TimeWindow, ...] = ()
    if due and cursor is not None:
        reach = _sweep_base(cursor, last_sweep, now) - policy.late_lookback
        sweep = _split(max(reach, earliest), cursor - policy.overlap, MAX_WINDOW)
    return WindowPlan(windows, lost, future, sweep, due)


def sweep_due(last_sweep: dt.datetime | None, now: dt.datetime, policy: CollectionPolicy) -> bool:
    """Whether this run should sweep for late content (a sweep time in the future counts as none)."""
    if policy.late_lookback <= dt.timedelta(0):
        return False
    return last_sweep is None or last_sweep > now or now - last_sweep >= policy.late_sweep


def relist_horizon(
    *, cursor: dt.datetime, last_sweep: dt.datetime | None, now: dt.datetime, policy: CollectionPolicy
) -> dt.datetime:
    """The oldest contentCreated a coming run may list again (the overlap, or the next sweep's reach).

    Blobs created before it will not be listed again, so the recent-blob set may forget them.
    """
    horizon = min(cursor, now) - policy.overlap
    if policy.late_lookback > dt.timedelta(0):
        horizon = min(horizon, _sweep_base(cursor, last_sweep, now) - policy.late_lookback)
    return horizon


def _sweep_base(cursor: dt.datetime, last_sweep: dt.datetime | None, now: dt.datetime) -> dt.datetime:
    if last_sweep is None or last_sweep > now:
        return min(cursor, now)
    return last_sweep


def _split(start: dt.datetime, end: dt.datetime, span: dt.timedelta) -> tuple[TimeWindow, ...]:
    windows: list[TimeWindow] = []
    while end - start >= MIN_WINDOW:
        stop = min(start + span, end)
        windows.append(TimeWindow(start, stop))
        start = stop
    return tuple(windows)


def lag(cursor: dt.datetime | None, now: dt.datetime) -> dt.timedelta | None:
    """How far collection is behind now (None before the first window completes)."""
    return None if cursor is None else max(dt.timedelta(0), now - cursor)
