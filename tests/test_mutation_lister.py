"""Edges of window planning and of the lister that the other tests leave open (found by a mutation audit).

Window planning is pure: unit tests on a fixed ``now``. The lister runs against real Azurite (its checkpoints
and the content queue) with a scripted source client standing in for the API, so each test chooses exactly
which entries a window lists, when, and what signing in does.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import cast

import pytest

from o365collector.checkpoints import RecentBlobs
from o365collector.config import CollectionPolicy
from o365collector.errors import ApiPermanentError
from o365collector.lister import Lister, ListerResult, StreamResult, describe_first_run
from o365collector.models import ContentBlob, FetchTask, ListingEntryError, TimeWindow
from o365collector.runtime import Collector
from o365collector.sources.base import SourceClient
from o365collector.tenant_config import TenantConfig
from o365collector.windows import earliest_listable, plan_windows, relist_horizon
from tests.support import TENANT, Clock

TID = TENANT.tenant_id
H = dt.timedelta(hours=1)
MIN = dt.timedelta(minutes=1)
NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
POLICY = CollectionPolicy(window=6 * H, overlap=H, end_delay=5 * MIN)
LATE = CollectionPolicy(window=6 * H, overlap=H, end_delay=5 * MIN, late_lookback=24 * H, late_sweep=60 * MIN)
NO_SWEEP = CollectionPolicy(window=6 * H, overlap=H, end_delay=5 * MIN, late_lookback=dt.timedelta(0))
CollectorFactory = Callable[..., Collector]


# -- window planning ----------------------------------------------------------------------------------------


def test_a_checkpoint_exactly_at_now_is_not_called_a_future_one() -> None:
    plan = plan_windows(cursor=NOW, now=NOW, policy=POLICY)
    assert plan.future_cursor is False
    assert plan.windows == (TimeWindow(NOW - H, NOW - 5 * MIN),)


def test_a_checkpoint_exactly_at_the_retention_edge_loses_nothing() -> None:
    edge = earliest_listable(NOW)
    plan = plan_windows(cursor=edge, now=NOW, policy=POLICY)
    assert plan.lost is None
    assert plan.windows[0].start == edge
    behind = plan_windows(cursor=edge - MIN, now=NOW, policy=POLICY)
    assert behind.lost == TimeWindow(edge - MIN, edge)


def test_exactly_one_minute_of_new_ground_is_listed_and_less_is_not() -> None:
    policy = CollectionPolicy(window=6 * H, overlap=dt.timedelta(0), end_delay=5 * MIN)
    end = NOW - 5 * MIN
    assert plan_windows(cursor=end - MIN, now=NOW, policy=policy).windows == (TimeWindow(end - MIN, end),)
    assert plan_windows(cursor=end - dt.timedelta(seconds=59), now=NOW, policy=policy).windows == ()


def test_a_wider_configured_window_is_cut_at_24_hours() -> None:
    policy = CollectionPolicy(window=30 * H, overlap=H, end_delay=5 * MIN)
    plan = plan_windows(cursor=NOW - 50 * H, now=NOW, policy=policy)
    assert [w.span for w in plan.windows] == [24 * H, 24 * H, 3 * H - 5 * MIN]


def test_a_sweep_time_in_the_future_sweeps_from_the_checkpoint_not_from_that_time() -> None:
    cursor = NOW - 10 * MIN
    plan = plan_windows(cursor=cursor, now=NOW, policy=LATE, last_sweep=NOW + 3 * H)
    assert plan.sweep == (TimeWindow(cursor - 24 * H, cursor - H),)
    horizon = relist_horizon(cursor=cursor, last_sweep=NOW + 3 * H, now=NOW, policy=LATE)
    assert horizon == cursor - 24 * H


@pytest.mark.parametrize(("policy", "expected"), [(NO_SWEEP, NOW - H), (LATE, NOW - 24 * H)])
def test_a_checkpoint_in_the_future_keeps_the_recent_set_back_from_now(
    policy: CollectionPolicy, expected: dt.datetime
) -> None:
    assert relist_horizon(cursor=NOW + 2 * H, last_sweep=None, now=NOW, policy=policy) == expected


# -- the lister, on Azurite, with a scripted source ---------------------------------------------------------


@dataclass
class Throttled:
    throttled: int = 0


@dataclass
class ScriptedSource:
    """A source client whose listing is a fixed set of blobs (by contentCreated) and entries to refuse."""

    tenant: TenantConfig
    blobs: list[ContentBlob] = field(default_factory=list)
    bad: list[ListingEntryError] = field(default_factory=list)
    """Refused in the first window listed, before its blobs."""
    throttled_per_step: int = 0
    sign_in_error: ApiPermanentError | None = None
    source: str = "audit"
    sign_ins: int = 0
    listed: list[TimeWindow] = field(default_factory=list)
    while_listing: Callable[[], None] | None = None

    def sign_in(self) -> None:
        self.sign_ins += 1
        if self.sign_in_error is not None:
            raise self.sign_in_error

    @contextmanager
    def counting(self) -> Iterator[Throttled]:
        yield Throttled(self.throttled_per_step)

    def policy(self, base: CollectionPolicy) -> CollectionPolicy:
        return base

    def list_units(
        self, stream: str, window: TimeWindow, on_malformed: Callable[[ListingEntryError], None] | None = None
    ) -> Iterator[ContentBlob]:
        if not self.listed and on_malformed is not None:
            for err in self.bad:
                on_malformed(err)
        self.listed.append(window)
        if self.while_listing is not None:
            self.while_listing()
        for blob in self.blobs:
            if window.start <= blob.content_created < window.end:
                yield blob


def blob(content_id: str, created: dt.datetime, content_type: str = "Audit.Exchange") -> ContentBlob:
    return ContentBlob(
        content_type, content_id, f"https://127.0.0.1/content/{content_id}", created, created + 7 * 24 * H
    )


def queued(collector: Collector) -> list[str]:
    return sorted(FetchTask.from_message(m.content).content_id for m in collector.queue.peek_messages(max_messages=32))


@pytest.fixture
def clock() -> Clock:
    return Clock(dt.datetime.now(dt.UTC).replace(second=0, microsecond=0))


@pytest.fixture
def collector(make_collector: CollectorFactory, clock: Clock) -> Collector:
    return make_collector(
        clock=clock,
        O365_CONTENT_TYPES="Audit.Exchange",
        O365_SOURCES="audit",
        O365_WINDOW_MINUTES="60",
        O365_START_TIME=(clock.now - 5 * H - 5 * MIN).isoformat(),
    )


def lister_for(
    collector: Collector,
    source: ScriptedSource,
    clock: Clock,
    *,
    window_budget: int | None = None,
    on_window: Callable[[StreamResult], None] | None = None,
    monotonic: Callable[[], float] | None = None,
) -> Lister:
    return Lister(
        tenants=collector.tenants(),
        policy=collector.settings.policy,
        client_for=lambda _tenant, _stream: cast(SourceClient, source),
        checkpoints=collector.checkpoints,
        queue=collector.queue,
        clock=clock,
        window_budget=window_budget,
        on_window=on_window,
        monotonic=monotonic or (lambda: 0.0),
    )


def prime(collector: Collector, clock: Clock, cursor: dt.datetime, stream: str = "Audit.Exchange") -> None:
    """Store a checkpoint at ``cursor`` (with no late sweep recorded) as an earlier run would have."""
    checkpoint = collector.checkpoints.get(TID, stream)
    collector.checkpoints.advance(checkpoint, cursor, RecentBlobs(), clock.now)


def test_blobs_before_the_checkpoint_are_late_with_the_largest_lateness_and_one_at_it_is_not(
    collector: Collector, clock: Clock
) -> None:
    cursor = clock.now - 10 * MIN
    prime(collector, clock, cursor)
    source = ScriptedSource(
        collector.tenants()[0],
        [blob("late-50", cursor - 40 * MIN), blob("late-40", cursor - 30 * MIN), blob("at-cursor", cursor)],
    )
    (stream,) = lister_for(collector, source, clock).run().streams
    assert stream.ok, stream.error
    assert queued(collector) == ["at-cursor", "late-40", "late-50"]
    assert stream.late_blobs == 2
    assert stream.max_lateness_seconds == 50 * 60


def test_the_window_budget_counts_new_ground_only_and_leaves_the_rest_as_windows_left(
    collector: Collector, clock: Clock
) -> None:
    """Five new hourly windows and a budget of two: two are listed, three are left, the checkpoint stands
    after the second and only its blobs are queued."""
    start = clock.now - 5 * H - 5 * MIN
    source = ScriptedSource(collector.tenants()[0], [blob(f"b{i}", start + i * H + MIN) for i in range(5)])
    (stream,) = lister_for(collector, source, clock, window_budget=2).run().streams
    assert (stream.windows, stream.windows_left) == (2, 3)
    assert stream.cursor == start + 2 * H
    assert collector.checkpoints.get(TID, "Audit.Exchange").cursor == start + 2 * H
    assert queued(collector) == ["b0", "b1"]


def test_the_window_budget_lists_the_overlap_window_and_the_sweep_behind_the_checkpoint_beyond_it(
    collector: Collector, clock: Clock
) -> None:
    """A checkpoint 65 min back: the overlap window [c - 1 h, c) and the sweep end at or behind it (not new
    ground), the window after it is new. A budget of one lists all three and records the sweep."""
    cursor = clock.now - 65 * MIN
    prime(collector, clock, cursor)
    source = ScriptedSource(collector.tenants()[0])
    (stream,) = lister_for(collector, source, clock, window_budget=1).run().streams
    assert source.listed == [
        TimeWindow(cursor - H, cursor),
        TimeWindow(cursor, clock.now - 5 * MIN),
        TimeWindow(cursor - 24 * H, cursor - H),
    ]
    assert (stream.windows, stream.windows_left, stream.sweep_windows, stream.late_sweep) == (3, 0, 1, True)
    assert collector.checkpoints.get(TID, "Audit.Exchange").late_sweep_at == clock.now


def test_with_no_overlap_a_sweep_window_ending_at_the_checkpoint_is_listed_past_the_budget(
    make_collector: CollectorFactory, clock: Clock
) -> None:
    collector = make_collector(
        clock=clock,
        O365_CONTENT_TYPES="Audit.Exchange",
        O365_SOURCES="audit",
        O365_WINDOW_MINUTES="60",
        O365_OVERLAP_MINUTES="0",
    )
    cursor = clock.now - 65 * MIN
    prime(collector, clock, cursor)
    source = ScriptedSource(collector.tenants()[0])
    (stream,) = lister_for(collector, source, clock, window_budget=1).run().streams
    assert source.listed == [TimeWindow(cursor, clock.now - 5 * MIN), TimeWindow(cursor - 24 * H, cursor)]
    assert (stream.windows, stream.windows_left, stream.late_sweep) == (2, 0, True)


def test_refused_entries_are_all_counted_the_first_ten_described_with_their_id_cut_short(
    collector: Collector, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    kept, cut = 10, 128  # entries described per stream and run; characters of an id quoted
    long_id = "x" * (cut + 50)
    bad = [ListingEntryError("contentUri is missing", f"bad-{i}") for i in range(kept)]
    bad.append(ListingEntryError("contentUri is missing", long_id))
    listing = [blob("good", clock.now - H), blob("general", clock.now - H, "Audit.General")]
    source = ScriptedSource(collector.tenants()[0], listing, bad)
    with caplog.at_level(logging.ERROR, logger="o365collector.lister"):
        (stream,) = lister_for(collector, source, clock).run().streams
    assert stream.ok, stream.error
    assert stream.refused_entries == kept + 2  # and the Audit.General blob
    assert len(stream.refused) == kept
    assert stream.refused[0].startswith(f"entry 0 of the {source.listed[0].start.isoformat()} .. ")
    assert "(contentId bad-0): contentUri is missing" in stream.refused[0]
    refused_lines = [r for r in caplog.records if r.getMessage().startswith("refused Audit.Exchange")]
    assert len(refused_lines) == kept + 2
    assert all(r.levelno == logging.ERROR for r in refused_lines)
    assert "its contentType is not Audit.Exchange" in refused_lines[-1].getMessage()
    last = refused_lines[-2]
    assert f"(contentId {'x' * cut}): " in last.getMessage()
    assert long_id not in last.getMessage()
    assert vars(last)["content_id"] == "x" * cut
    assert queued(collector) == ["good"]


@pytest.mark.parametrize("code", ["AF10001", "AF20010", "AF20011", "AF20013", "AADSTS7000215"])
def test_a_credential_error_at_sign_in_is_the_tenants_for_every_stream_of_the_source(
    make_collector: CollectorFactory, clock: Clock, code: str
) -> None:
    collector = make_collector(clock=clock, O365_CONTENT_TYPES="Audit.Exchange,Audit.General", O365_SOURCES="audit")
    source = ScriptedSource(collector.tenants()[0], sign_in_error=ApiPermanentError(f"{code}: refused", code=code))
    streams = lister_for(collector, source, clock).run().streams
    assert source.sign_ins == 1, "the second stream reports the first one's credential error without asking again"
    assert [(s.error_code, s.windows) for s in streams] == [(code, 0), (code, 0)]
    assert source.listed == []


def test_an_error_that_is_not_a_credential_one_lets_the_next_stream_sign_in_again(
    make_collector: CollectorFactory, clock: Clock
) -> None:
    collector = make_collector(clock=clock, O365_CONTENT_TYPES="Audit.Exchange,Audit.General", O365_SOURCES="audit")
    error = ApiPermanentError("AF20022: no subscription", code="AF20022")
    source = ScriptedSource(collector.tenants()[0], sign_in_error=error)
    streams = lister_for(collector, source, clock).run().streams
    assert source.sign_ins == 2
    assert [s.error_code for s in streams] == ["AF20022", "AF20022"]


def test_a_source_is_signed_in_to_once_per_tenant_and_run_for_all_its_streams(
    make_collector: CollectorFactory, clock: Clock
) -> None:
    collector = make_collector(clock=clock, O365_CONTENT_TYPES="Audit.Exchange,Audit.General", O365_SOURCES="audit")
    source = ScriptedSource(collector.tenants()[0])
    lister = lister_for(collector, source, clock)
    assert all(s.ok for s in lister.run().streams)
    assert source.sign_ins == 1
    lister.run()
    assert source.sign_ins == 2, "each run signs in afresh"


def test_throttled_requests_are_summed_over_every_step_and_each_window_is_reported(
    collector: Collector, clock: Clock
) -> None:
    source = ScriptedSource(collector.tenants()[0], throttled_per_step=2)
    seen: list[tuple[int, dt.datetime | None]] = []
    lister = lister_for(collector, source, clock, on_window=lambda s: seen.append((s.windows, s.cursor)))
    (stream,) = lister.run().streams
    assert stream.windows == 5
    assert stream.throttled == 2 * (1 + 5)  # the planning step and five windows
    start = clock.now - 5 * H - 5 * MIN
    assert seen == [(i, start + i * H) for i in range(1, 6)]
    assert stream.lag_seconds == 5 * 60
    assert stream.summary()["windows_left"] == 0
    # A first run owes no sweep windows but counts as a sweep, recorded with its first window.
    assert (stream.sweep_windows, stream.late_sweep) == (0, True)
    assert collector.checkpoints.get(TID, "Audit.Exchange").late_sweep_at == clock.now


def test_a_failed_stream_is_logged_at_error_and_makes_the_run_not_ok(
    collector: Collector, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    source = ScriptedSource(collector.tenants()[0], sign_in_error=ApiPermanentError("AF20022: off", code="AF20022"))
    with caplog.at_level(logging.INFO, logger="o365collector.lister"):
        result = lister_for(collector, source, clock).run()
    assert not result.ok
    (line,) = [r for r in caplog.records if r.getMessage().startswith("lister run failed")]
    assert line.levelno == logging.ERROR
    assert ListerResult([StreamResult(TID, "Audit.Exchange"), *result.streams]).ok is False
    assert ListerResult([StreamResult(TID, "Audit.Exchange")]).ok is True


def test_an_earlier_pass_is_folded_into_the_figures() -> None:
    earlier = StreamResult(TID, "Audit.Exchange", windows=2, blobs_listed=3, blobs_enqueued=2, refused_entries=1)
    earlier.refused = ["first"]
    earlier.note_late(dt.timedelta(seconds=90))
    later = StreamResult(TID, "Audit.Exchange", windows=1, blobs_listed=1, blobs_enqueued=1, refused_entries=1)
    later.refused = ["second"]
    later.note_late(dt.timedelta(seconds=30))
    later.add_earlier(earlier)
    assert (later.windows, later.blobs_listed, later.blobs_enqueued) == (3, 4, 3)
    assert (later.refused_entries, later.refused) == (2, ["first", "second"])
    assert (later.late_blobs, later.max_lateness_seconds) == (2, 90.0)


def spent_after_one_window(source: ScriptedSource) -> Callable[[], float]:
    """A monotonic clock that passes the run's time budget once the first window has been listed."""
    return lambda: 0.0 if not source.listed else 1e9


def test_a_first_run_cut_short_after_its_first_window_has_recorded_the_sweep(
    collector: Collector, clock: Clock
) -> None:
    source = ScriptedSource(collector.tenants()[0])
    (stream,) = lister_for(collector, source, clock, monotonic=spent_after_one_window(source)).run().streams
    assert (stream.windows, stream.windows_left, stream.late_sweep) == (1, 4, True)
    assert collector.checkpoints.get(TID, "Audit.Exchange").late_sweep_at == clock.now


def test_a_run_cut_short_before_its_sweep_windows_does_not_record_the_sweep(collector: Collector, clock: Clock) -> None:
    cursor = clock.now - 65 * MIN
    prime(collector, clock, cursor)
    source = ScriptedSource(collector.tenants()[0])
    (stream,) = lister_for(collector, source, clock, monotonic=spent_after_one_window(source)).run().streams
    assert (stream.windows, stream.windows_left, stream.late_sweep) == (1, 2, False)
    checkpoint = collector.checkpoints.get(TID, "Audit.Exchange")
    assert (checkpoint.cursor, checkpoint.late_sweep_at) == (cursor, None)


def test_a_blob_listed_again_in_the_overlap_is_not_queued_twice(collector: Collector, clock: Clock) -> None:
    source = ScriptedSource(collector.tenants()[0], [blob("recent", clock.now - 20 * MIN)])
    lister = lister_for(collector, source, clock)
    (first,) = lister.run().streams
    clock.now += 10 * MIN
    (second,) = lister.run().streams
    assert (first.blobs_enqueued, second.blobs_listed, second.blobs_enqueued) == (1, 1, 0)
    assert second.blobs_already_queued == 1
    assert queued(collector) == ["recent"]


def test_a_first_run_from_a_start_time_at_the_first_window_says_the_start_time_set() -> None:
    start = NOW - 30 * H
    plan = plan_windows(cursor=None, now=NOW, policy=POLICY, start_time=start)
    assert plan.windows[0].start == start
    text = describe_first_run("Audit.Exchange", start, plan)
    assert "(the start time set, 1.2 days back)" in text
    assert "is older" not in text


def test_a_checkpoint_behind_the_retention_reports_the_lost_span_and_resumes_at_the_edge(
    collector: Collector, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    cursor = clock.now - 8 * 24 * H
    prime(collector, clock, cursor)
    source = ScriptedSource(collector.tenants()[0])
    with caplog.at_level(logging.ERROR, logger="o365collector.lister"):
        (stream,) = lister_for(collector, source, clock, window_budget=1).run().streams
    edge = earliest_listable(clock.now)
    assert (stream.lost_from, stream.lost_to) == (cursor, edge)
    assert source.listed[0].start == edge
    assert any("can no longer be listed" in r.getMessage() for r in caplog.records)


def test_a_checkpoint_moved_by_another_run_meanwhile_leaves_the_stream_to_it_without_an_error(
    collector: Collector, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    other = clock.now - 30 * MIN

    def another_run_saves() -> None:
        checkpoint = collector.checkpoints.get(TID, "Audit.Exchange")
        if checkpoint.cursor is None:
            collector.checkpoints.advance(checkpoint, other, RecentBlobs(), clock.now)

    source = ScriptedSource(collector.tenants()[0], while_listing=another_run_saves)
    with caplog.at_level(logging.WARNING, logger="o365collector.lister"):
        (stream,) = lister_for(collector, source, clock).run().streams
    assert stream.ok, stream.error
    assert (stream.windows, len(source.listed)) == (0, 1)
    assert collector.checkpoints.get(TID, "Audit.Exchange").cursor == other
    assert any("leaving this stream to that run" in r.getMessage() for r in caplog.records)
