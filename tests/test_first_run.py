"""The first listing run of a stream, on Azurite + the simulator: it backfills from the API's 7-day edge
(now - 7 days + 15 min) when no start time is set, from the start time when one is set within the
7 days, and from the edge again when the start time is older; and it says so, once per stream, at INFO,
before the first window. A stream that has a checkpoint says nothing of the kind.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import pytest

from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from tests.support import TENANT

TID = TENANT.tenant_id
MIN = dt.timedelta(minutes=1)
DAY = dt.timedelta(days=1)
EDGE = dt.timedelta(days=7) - dt.timedelta(minutes=15)  # how far back the first window starts, at most
TYPES = ("Audit.Exchange", "Audit.SharePoint")
CollectorFactory = Callable[..., Collector]


def minute(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%MZ")


def first_run_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "o365collector.lister" and r.getMessage().startswith("first run:")]


def blob(sim: Simulator, name: str, created: dt.datetime) -> None:
    record = {"Id": name, "Operation": "Send", "Workload": "Exchange", "RecordType": 2}
    sim.add_blob(TID, "Audit.Exchange", created, [record])


@pytest.mark.parametrize(
    ("start_back", "expected_start_back", "why"),
    [
        (None, EDGE, "7 days back, the API's limit"),
        (3 * DAY, 3 * DAY, "the start time set, 3.0 days back"),
        (10 * DAY, EDGE, "7 days back, the API's limit; the start time {start_time} is older"),
    ],
    ids=["no start time", "start time 3 days back", "start time 10 days back"],
)
def test_the_first_run_logs_the_span_it_backfills_once_per_stream_and_lists_exactly_that_span(
    simulator: Simulator,
    make_collector: CollectorFactory,
    caplog: pytest.LogCaptureFixture,
    start_back: dt.timedelta | None,
    expected_start_back: dt.timedelta,
    why: str,
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    start_time = now - start_back if start_back is not None else None
    start = now - expected_start_back
    # A blob a minute inside the span is collected; one a minute before it is not listed at all.
    blob(simulator, "before", start - MIN)
    blob(simulator, "inside", start + MIN)
    blob(simulator, "recent", now - 10 * MIN)
    collector = make_collector(
        clock=lambda: now,
        O365_CONTENT_TYPES=",".join(TYPES),
        O365_START_TIME=start_time.isoformat() if start_time else "",
    )
    caplog.set_level(logging.INFO, logger="o365collector.lister")

    result = collector.lister().run()

    assert result.ok, [s.error for s in result.streams]
    reason = why.format(start_time=minute(start_time) if start_time else "")
    said = sorted(
        (getattr(r, "content_type", None), getattr(r, "tenant_id", None), r.levelno, r.getMessage())
        for r in first_run_lines(caplog)
    )  # streams are listed concurrently: in any order, one line each
    assert said == [
        (ct, TID, logging.INFO, f"first run: backfilling {ct} from {minute(start)} ({reason}) to now") for ct in TYPES
    ]
    exchange = next(s for s in result.streams if s.content_type == "Audit.Exchange")
    assert exchange.blobs_enqueued == 2, "the blobs inside the span, and not the one before it"
    assert collector.checkpoints.get(TID, "Audit.Exchange").cursor is not None  # so the next run is not a first

    caplog.clear()
    later = now + 5 * MIN
    collector.clock = lambda: later
    assert collector.lister().run().ok
    assert first_run_lines(caplog) == [], "a stream with a checkpoint is not on its first run"


def test_a_start_time_too_recent_for_a_window_says_there_is_nothing_older_to_backfill(
    make_collector: CollectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    collector = make_collector(
        clock=lambda: now, O365_CONTENT_TYPES="Audit.General", O365_START_TIME=(now - MIN).isoformat()
    )
    caplog.set_level(logging.INFO, logger="o365collector.lister")
    assert collector.lister().run().ok
    (line,) = first_run_lines(caplog)
    assert line.getMessage() == (
        f"first run: collecting Audit.General from {minute(now - MIN)} on; nothing older to backfill"
    )
