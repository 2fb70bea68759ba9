"""Window planning: 24 h max, 7-day retention edge, overlap, end delay, no future checkpoints."""

from __future__ import annotations

import datetime as dt

import pytest

from o365collector.config import CollectionPolicy
from o365collector.models import TimeWindow
from o365collector.windows import MAX_WINDOW, RETENTION, RETENTION_MARGIN, earliest_listable, lag, plan_windows

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)
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
