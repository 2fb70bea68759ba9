"""``status`` after real runs on Azurite + the simulator: checkpoint, lag, last run and error, poisoned and
expired blobs per tenant and content type, and the health verdict with its thresholds."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from o365collector import cli
from o365collector.checkpoints import RecentBlobs
from o365collector.health import build_report, render_table
from o365collector.lister import StreamResult
from o365collector.models import FetchTask
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Fault, Simulator
from o365collector.status import stream_succeeded
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory

TID = TENANT.tenant_id
CollectorFactory = Callable[..., Collector]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def history(sim: Simulator, content_type: str, hours: float = 6) -> None:
    sim.generate(
        TID, content_type, now() - dt.timedelta(hours=hours), now() - dt.timedelta(minutes=10),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip


def streams(collector: Collector, at: dt.datetime | None = None) -> dict[str, dict[str, Any]]:
    report = build_report(collector, at)
    return {s["content_type"]: s for s in report.to_dict()["streams"]}


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as server:
        yield server


def test_a_healthy_run_reports_checkpoint_lag_and_last_success(
    simulator: Simulator, make_collector: CollectorFactory
) -> None:
    history(simulator, "Audit.Exchange")
    history(simulator, "Audit.General")
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange,Audit.General")
    before = now()
    assert run_once(collector) == 0
    report = build_report(collector)
    after = now()
    assert report.healthy, report.problems
    doc = report.to_dict()
    assert doc["status"] == "healthy"
    assert doc["queues"]["content"]["messages"] == 0
    assert doc["queues"]["poison"]["messages"] == 0
    by_type = {s["content_type"]: s for s in doc["streams"]}
    assert set(by_type) == {"Audit.Exchange", "Audit.General"}
    for stream in by_type.values():
        assert stream["tenant_id"] == TID
        checkpoint = dt.datetime.fromisoformat(stream["checkpoint"].replace("Z", "+00:00"))
        # the checkpoint trails the run's clock by the end delay (5 min): bounds from this test's own clock
        # readings, not a guess at how fast the machine is
        delay = dt.timedelta(minutes=5)
        assert before - delay - dt.timedelta(seconds=1) <= checkpoint <= after - delay
        assert 5 * 60 <= stream["lag_seconds"] <= 5 * 60 + (after - before).total_seconds() + 1
        assert stream["last_success_at"] == stream["last_run_at"]
        assert stream["last_outcome"] == "ok"
        assert stream["last_error"] is None
        assert stream["last_run"]["windows"] >= 1
        assert stream["last_run"]["seconds"] > 0
        assert stream["blobs_poisoned"] == stream["blobs_expired"] == 0
    table = render_table(report)
    assert "Audit.Exchange" in table
    assert table.rstrip().endswith("HEALTHY")


def test_a_failing_stream_shows_its_last_error_and_makes_the_collector_unhealthy(
    simulator: Simulator, make_collector: CollectorFactory
) -> None:
    history(simulator, "Audit.Exchange")
    simulator.disable_subscription(TID, "DLP.All")
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange,DLP.All")
    assert run_once(collector) == 1
    report = build_report(collector)
    dlp = {s.content_type: s for s in report.streams}["DLP.All"].to_dict()
    assert dlp["last_error"]["code"] == "AF20023"
    assert dlp["last_error"]["source"] == "listing"
    assert "disabled by an administrator" in dlp["last_error"]["message"]
    assert dlp["last_success_at"] is None
    assert dlp["checkpoint"] is None
    assert not report.healthy
    assert report.problems == [
        f"{TID} DLP.All: no successful listing since status was recorded (last error: {dlp['last_error']['message']})"
    ]
    exchange = {s.content_type: s for s in report.streams}["Audit.Exchange"]
    assert exchange.problems == []


def test_no_successful_listing_within_the_threshold_flips_to_unhealthy(
    simulator: Simulator, make_collector: CollectorFactory
) -> None:
    clock = {"now": now()}
    history(simulator, "Audit.SharePoint")
    collector = make_collector(clock=lambda: clock["now"], O365_CONTENT_TYPES="Audit.SharePoint")
    assert run_once(collector) == 0
    last_success = clock["now"]
    assert build_report(collector, last_success + dt.timedelta(minutes=29)).healthy
    later = build_report(collector, last_success + dt.timedelta(minutes=31))
    assert later.problems == [f"{TID} Audit.SharePoint: no successful listing for 31 min"]

    # The next run fails: the last success stays where it was, and the error is shown with it.
    simulator.disable_subscription(TID, "Audit.SharePoint")
    clock["now"] += dt.timedelta(minutes=31)
    assert run_once(collector) == 1
    stream = streams(collector)["Audit.SharePoint"]
    assert stream["last_success_at"] == last_success.isoformat().replace("+00:00", "Z")
    assert stream["last_outcome"] == "failed"
    assert stream["last_error"]["code"] == "AF20023"
    # lag is measured from the checkpoint, which did not move
    assert stream["lag_seconds"] >= 31 * 60
    (problem,) = stream["problems"]
    assert problem.startswith("no successful listing for 31 min (last error: ")
    assert "AF20023" in problem

    relaxed = make_collector(clock=lambda: clock["now"], O365_CONTENT_TYPES="Audit.SharePoint",
                             O365_HEALTH_MAX_LISTING_AGE_MINUTES="60")  # fmt: skip
    # Within the listing age the failed run is no longer healthy either: degraded, with the disabled subscription.
    relaxed_report = build_report(relaxed)
    assert relaxed_report.problems == []
    assert relaxed_report.state == "degraded"
    (warning,) = relaxed_report.degraded
    assert warning.startswith(f"{TID} Audit.SharePoint: the subscription is disabled (AF20023, ")


def test_poisoned_blobs_are_counted_per_stream_with_the_fetch_error(
    simulator: Simulator, make_collector: CollectorFactory, receiver: HttpReceiver
) -> None:
    history(simulator, "Audit.General", hours=4)
    receiver.require_bearer("right-token")
    collector = make_collector(
        O365_CONTENT_TYPES="Audit.General,Audit.Exchange",
        SINK_TYPE="http", SINK_URL=receiver.url, SINK_HTTP_BEARER_TOKEN="wrong-token", O365_MAX_DEQUEUE_COUNT="2",
    )  # fmt: skip
    assert run_once(collector) == 1
    blobs = len(simulator.blobs(TID, "Audit.General"))
    report = build_report(collector)
    doc = report.to_dict()
    assert doc["queues"]["poison"]["messages"] == blobs
    assert doc["queues"]["poison"]["sampled"] is False
    general = {s["content_type"]: s for s in doc["streams"]}["Audit.General"]
    assert general["blobs_poisoned"] == blobs
    assert general["last_error"]["source"] == "fetch"
    assert general["last_error"]["code"] == "SinkPermanentError"
    assert "401" in general["last_error"]["message"]
    assert {s["content_type"]: s for s in doc["streams"]}["Audit.Exchange"]["blobs_poisoned"] == 0
    assert any("poison queue" in p and "replay-poison" in p for p in report.problems)
    # O365_HEALTH_MAX_POISON on both sides of the count: as many as allowed is no problem, one more is.
    def poison_problems(max_poison: int) -> list[str]:
        tolerant = make_collector(O365_CONTENT_TYPES="Audit.General", O365_HEALTH_MAX_POISON=str(max_poison))
        return [p for p in build_report(tolerant).problems if "poison queue" in p]

    assert poison_problems(blobs) == []
    assert len(poison_problems(blobs - 1)) == 1


def test_expired_content_is_counted_and_makes_the_collector_unhealthy_for_the_lookback(
    simulator: Simulator, make_collector: CollectorFactory
) -> None:
    history(simulator, "Audit.Exchange")
    victim = simulator.blobs(TID, "Audit.Exchange")[2]
    simulator.expire(victim.content_id)
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange")
    assert run_once(collector) == 1
    assert run_once(collector) == 0  # the ledger has it as lost: not fetched, not counted twice
    report = build_report(collector)
    stream = report.streams[0].to_dict()
    assert stream["blobs_expired"] == 1
    assert stream["blobs_expired_recent"] == 1
    assert report.problems == [
        f"{TID} Audit.Exchange: 1 content blobs expired at the source before delivery in the last 24 h"
    ]
    lost = collector.status.list_lost()
    assert [b.content_id for b in lost] == [victim.content_id]
    assert "AF20051" in lost[0].reason
    ignoring = make_collector(O365_CONTENT_TYPES="Audit.Exchange", O365_HEALTH_LOST_DATA_HOURS="0")
    assert build_report(ignoring).healthy


def test_throttling_beyond_the_threshold_is_unhealthy(simulator: Simulator, make_collector: CollectorFactory) -> None:
    history(simulator, "Audit.Exchange", hours=2)
    simulator.faults.add(Fault(kind="throttle", route="list", count=3))
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange", O365_HEALTH_MAX_THROTTLED="2")
    assert run_once(collector) == 0  # retries absorbed the throttling...
    report = build_report(collector)
    assert report.streams[0].to_dict()["last_run"]["throttled"] == 3
    assert report.problems == [f"{TID} Audit.Exchange: 3 throttled responses in the last listing run (threshold 2)"]
    tolerant = make_collector(O365_CONTENT_TYPES="Audit.Exchange", O365_HEALTH_MAX_THROTTLED="3")
    assert build_report(tolerant).healthy


def test_content_that_fell_out_of_retention_is_reported(simulator: Simulator, make_collector: CollectorFactory) -> None:
    collector = make_collector(O365_CONTENT_TYPES="Audit.General")
    stale = collector.checkpoints.get(TID, "Audit.General")
    collector.checkpoints.advance(stale, now() - dt.timedelta(days=8), RecentBlobs(), now())
    assert run_once(collector) == 0
    stream = streams(collector)["Audit.General"]
    assert stream["unlistable_span"] is not None
    assert any("could no longer be listed" in p for p in stream["problems"])


def test_a_stream_that_never_ran_is_unhealthy(make_collector: CollectorFactory) -> None:
    report = build_report(make_collector(O365_CONTENT_TYPES="Audit.Exchange"))
    assert report.problems == [f"{TID} Audit.Exchange: no listing run recorded yet: is the list_content timer running?"]


def test_poison_counts_beyond_one_peek_are_flagged_as_a_sample(make_collector: CollectorFactory) -> None:
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange")
    for i in range(40):
        collector.poison_queue.send_message(_task(i))
    collector.poison_queue.send_message("not a task")
    report = build_report(collector)
    assert report.queues.poison == 41
    assert report.queues.poison_peeked == 32
    assert report.queues.poison_sampled
    assert report.streams[0].poisoned + report.queues.poison_unreadable == 32
    assert "first 32" in render_table(report)


def _task(i: int) -> str:
    return FetchTask(TID, "Audit.Exchange", f"content-{i}", f"https://x/{i}", now(), now()).to_message()


@pytest.mark.parametrize(
    ("error", "windows", "windows_left", "succeeded"),
    [
        (None, 3, 0, True),  # listed everything
        (None, 0, 0, True),  # nothing to list yet (the next window is not complete)
        (None, 2, 5, True),  # made progress, budget ran out: the next run continues
        (None, 0, 5, False),  # starved: other streams used the whole budget
        ("AF20023 ...", 0, 0, False),
        ("boom", 2, 0, False),
    ],
)
def test_what_counts_as_a_successful_listing(
    error: str | None, windows: int, windows_left: int, succeeded: bool
) -> None:
    stream = StreamResult(TID, "Audit.Exchange", windows=windows, windows_left=windows_left, error=error)
    assert stream_succeeded(stream) is succeeded


def test_status_command_prints_a_table_or_json_and_exits_1_when_unhealthy(
    simulator: Simulator, make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    history(simulator, "Audit.Exchange")
    for key, value in make_env(O365_CONTENT_TYPES="Audit.Exchange").items():
        monkeypatch.setenv(key, value)
    assert cli.main(["status"]) == 1  # nothing ran yet
    assert "no listing run recorded yet" in capsys.readouterr().out
    assert cli.main(["run", "--once"]) == 0
    capsys.readouterr()
    assert cli.main(["status"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == [
        "TENANT", "CONTENT", "TYPE", "STATE", "CHECKPOINT", "LAG", "LAST", "RUN", "LAST", "SUCCESS", "SHIPPED",
        "POISON", "EXPIRED", "LAST", "ERROR",
    ]  # fmt: skip
    assert f"{TID[:4]}…{TID[-4:]}" in table  # a short id: the full one is in --json
    assert cli.main(["status", "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["healthy"] is True
    assert doc["streams"][0]["content_type"] == "Audit.Exchange"
