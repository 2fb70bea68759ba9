"""Window planning: 24 h max, 7-day retention edge, overlap, end delay, no future checkpoints."""

from __future__ import annotations

import datetime as dt

import pytest

from o365collector.config import CollectionPolicy
from o365collector.models import TimeWindow
from o365collector.windows import (
    MAX_WINDOW,
    RETENTION,
    RETENTION_MARGIN,
    earliest_listable,
    lag,
    plan_windows,
    relist_horizon,
    sweep_due,
)

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
MIN = dt.timedelta(minutes=1)
POLICY = CollectionPolicy(window=6 * H, overlap=H, end_delay=dt.timedelta(minutes=5))


def test_first_run_starts_at_the_retention_edge_with_a_margin() -> None:
    plan = plan_windows(cursor=None, now=NOW, policy=POLICY)
    assert plan.windows[0].start == NOW - RETENTION + RETENTION_MARGIN
    assert plan.windows[-1].end == NOW - dt.timedelta(minutes=5)
    assert plan.lost is None


def test_windows_are_contiguous_bounded_and_never_reach_now() -> None:
    plan = plan_windows(cursor=None, now=NOW, policy=POLICY)
    for before, after in zip(plan.windows, plan.windows[1:], strict=False):
        assert before.end == after.start
    assert all(w.span <= 6 * H for w in plan.windows)
    assert all(w.end <= NOW for w in plan.windows)


def test_start_time_inside_retention_is_honoured() -> None:
    plan = plan_windows(cursor=None, now=NOW, policy=POLICY, start_time=NOW - 30 * H)
    assert plan.windows[0].start == NOW - 30 * H
    assert len(plan.windows) == 5  # 30 h - 5 min in 6 h windows


def test_start_time_older_than_retention_is_clamped_forward() -> None:
    plan = plan_windows(cursor=None, now=NOW, policy=POLICY, start_time=NOW - dt.timedelta(days=30))
    assert plan.windows[0].start == earliest_listable(NOW)


def test_later_runs_relist_the_overlap_behind_the_checkpoint() -> None:
    cursor = NOW - dt.timedelta(minutes=10)
    plan = plan_windows(cursor=cursor, now=NOW, policy=POLICY)
    assert plan.windows == (TimeWindow(cursor - H, NOW - dt.timedelta(minutes=5)),)


def test_outage_longer_than_retention_resumes_at_the_edge_and_reports_the_gap() -> None:
    cursor = NOW - dt.timedelta(days=9)
    plan = plan_windows(cursor=cursor, now=NOW, policy=POLICY)
    assert plan.lost == TimeWindow(cursor, earliest_listable(NOW))
    assert plan.windows[0].start == earliest_listable(NOW)
    # and the next run, after the first window is saved, plans normally (no loop on refused starts)
    again = plan_windows(cursor=plan.windows[0].end, now=NOW, policy=POLICY)
    assert again.lost is None


def test_a_checkpoint_in_the_future_does_not_make_tiny_windows() -> None:
    plan = plan_windows(cursor=NOW + dt.timedelta(days=2), now=NOW, policy=POLICY)
    assert plan.future_cursor
    assert plan.windows == (TimeWindow(NOW - H, NOW - dt.timedelta(minutes=5)),)


def test_nothing_to_do_when_less_than_a_minute_is_new() -> None:
    policy = CollectionPolicy(window=6 * H, overlap=dt.timedelta(0), end_delay=dt.timedelta(minutes=5))
    plan = plan_windows(cursor=NOW - dt.timedelta(minutes=5, seconds=30), now=NOW, policy=policy)
    assert plan.windows == ()


@pytest.mark.parametrize("window_hours", [1, 6, 24, 30])
def test_no_window_ever_exceeds_24_hours(window_hours: int) -> None:
    policy = CollectionPolicy(window=window_hours * H, overlap=H)
    plan = plan_windows(cursor=None, now=NOW, policy=policy)
    assert all(w.span <= MAX_WINDOW for w in plan.windows)
    assert plan.windows[0].start >= NOW - RETENTION


def test_lag() -> None:
    assert lag(None, NOW) is None
    assert lag(NOW - H, NOW) == H
    assert lag(NOW + H, NOW) == dt.timedelta(0)


# -- the late sweep ---------------------------------------------------------------------------------

LATE = CollectionPolicy(
    window=6 * H, overlap=H, end_delay=dt.timedelta(minutes=5), late_lookback=24 * H, late_sweep=60 * MIN
)


def test_a_first_run_owes_no_sweep_but_records_one() -> None:
    """Every window of a first run is listed from now on, so it counts as the first sweep."""
    plan = plan_windows(cursor=None, now=NOW, policy=LATE)
    assert plan.sweep == ()
    assert plan.sweep_due


def test_the_first_sweep_reaches_the_lookback_behind_the_checkpoint_and_stops_at_the_overlap() -> None:
    cursor = NOW - 10 * MIN
    plan = plan_windows(cursor=cursor, now=NOW, policy=LATE)
    assert plan.windows == (TimeWindow(cursor - H, NOW - 5 * MIN),)
    assert plan.sweep == (TimeWindow(cursor - 24 * H, cursor - H),)
    assert plan.sweep_due


def test_a_sweep_reaches_the_lookback_behind_the_previous_sweep_in_one_window() -> None:
    """A blob listable at most 24 h late that appeared since the last sweep was created after it - 24 h."""
    cursor, last = NOW - 10 * MIN, NOW - 65 * MIN
    plan = plan_windows(cursor=cursor, now=NOW, policy=LATE, last_sweep=last)
    assert plan.sweep == (TimeWindow(last - 24 * H, cursor - H),)
    assert plan.sweep[0].span <= MAX_WINDOW


@pytest.mark.parametrize(
    ("last_sweep", "due"),
    [
        (NOW - 59 * MIN, False),
        (NOW - 60 * MIN, True),
        (NOW + 3 * H, True),  # a sweep time in the future (clock trouble) is not trusted
        (None, True),
    ],
)
def test_a_sweep_is_due_once_per_interval(last_sweep: dt.datetime | None, due: bool) -> None:
    plan = plan_windows(cursor=NOW - 10 * MIN, now=NOW, policy=LATE, last_sweep=last_sweep)
    assert plan.sweep_due is due
    assert bool(plan.sweep) is due
    assert sweep_due(last_sweep, NOW, LATE) is due


def test_a_lookback_of_zero_disables_the_sweep() -> None:
    policy = CollectionPolicy(overlap=H, late_lookback=dt.timedelta(0))
    plan = plan_windows(cursor=NOW - 10 * MIN, now=NOW, policy=policy)
    assert (plan.sweep, plan.sweep_due) == ((), False)
    assert relist_horizon(cursor=NOW, last_sweep=None, now=NOW, policy=policy) == NOW - H


def test_a_long_gap_between_sweeps_is_swept_in_24_hour_windows_never_past_the_retention_edge() -> None:
    cursor = NOW - 10 * MIN
    plan = plan_windows(cursor=cursor, now=NOW, policy=LATE, last_sweep=NOW - 3 * 24 * H)
    assert plan.sweep[0].start == NOW - 4 * 24 * H
    assert plan.sweep[-1].end == cursor - H
    assert all(w.span <= MAX_WINDOW for w in plan.sweep)
    for before, after in zip(plan.sweep, plan.sweep[1:], strict=False):
        assert before.end == after.start
    stale = plan_windows(cursor=cursor, now=NOW, policy=LATE, last_sweep=NOW - 6 * 24 * H)
    assert stale.sweep[0].start == earliest_listable(NOW)


def test_no_sweep_window_while_the_checkpoint_is_behind_the_lookback() -> None:
    """Catching up: what lies behind the checkpoint was listed just now, after any late blob in it appeared."""
    plan = plan_windows(cursor=NOW - 3 * 24 * H, now=NOW, policy=LATE, last_sweep=NOW - 2 * H)
    assert plan.sweep == ()
    assert plan.sweep_due


def test_the_recent_set_is_kept_back_to_the_next_sweeps_reach() -> None:
    horizon = relist_horizon(cursor=NOW - 10 * MIN, last_sweep=NOW - 30 * MIN, now=NOW, policy=LATE)
    assert horizon == NOW - 30 * MIN - 24 * H
    first = relist_horizon(cursor=NOW - 10 * MIN, last_sweep=None, now=NOW, policy=LATE)
    assert first == NOW - 10 * MIN - 24 * H
