"""End to end on Azurite + the simulator + a loopback HTTP receiver: every record exactly once.

The lister, the queue runner and the fetcher are the real ones (the same code the functions call).
Crashes are injected by raising a ``BaseException`` at the exact point, which nothing in the
collector catches: like a killed process, no cleanup code runs and the queue message stays leased.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from o365collector.checkpoints import CheckpointStore, Ledger
from o365collector.fetcher import Outcome
from o365collector.models import CONTENT_TYPES, FetchTask, Record
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Fault, Simulator
from tests.receivers import HttpReceiver
from tests.support import TENANT, host_queue_runner, now

TID = TENANT.tenant_id
CollectorFactory = Callable[..., Collector]


class Crash(BaseException):
    """Stands for the process being killed: not an Exception, so no handler in the collector sees it."""




def backfill(sim: Simulator, days: float, *, every_minutes: int = 90, types: tuple[str, ...] = CONTENT_TYPES) -> None:
    for content_type in types:
        sim.generate(
            TID,
            content_type,
            now() - dt.timedelta(days=days),
            now() - dt.timedelta(minutes=10),
            blob_every=dt.timedelta(minutes=every_minutes),
            records_per_blob=(1, 12),
        )


def served(sim: Simulator) -> Counter[str]:
    """Record Ids in every listable, unexpired blob (the ground truth)."""
    return Counter(r["Id"] for b in sim.blobs(TID) if not b.expired for r in b.records)


def shipped(receiver: HttpReceiver) -> Counter[str]:
    return Counter(r["Id"] for r in receiver.records)


def http_collector(make_collector: CollectorFactory, receiver: HttpReceiver, **overrides: str) -> Collector:
    settings = {"SINK_TYPE": "http", "SINK_URL": receiver.url, "SINK_HTTP_BATCH_MAX_RECORDS": "5"} | overrides
    return make_collector(**settings)



def test_three_day_backfill_ships_every_record_exactly_once(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    backfill(simulator, days=3)
    collector = http_collector(
        make_collector,
        receiver,
        O365_START_TIME=(now() - dt.timedelta(days=3)).isoformat(),
        O365_WINDOW_MINUTES="1440",  # 16 blobs per window, 7 per page: every window has several pages
    )
    assert run_once(collector) == 0
    expected = served(simulator)
    assert shipped(receiver) == expected
    assert len(expected) > 500
    assert {r["Workload"] for r in receiver.records} >= {"Exchange", "SharePoint", "AzureActiveDirectory"}
    # 5 content types x 3-4 daily windows x 16 blobs at 7 per page: only paging reaches this many calls
    assert simulator.stats.requests_by_route["list"] >= 40
    # one successful GET per blob
    assert all(count == 1 for count in simulator.stats.fetches.values())
    assert len(simulator.stats.fetches) == len(simulator.blobs(TID))


def test_records_arrive_exactly_as_served(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    backfill(simulator, days=0.5, types=("Audit.Exchange", "DLP.All"))
    collector = http_collector(make_collector, receiver)
    assert run_once(collector) == 0
    by_id: dict[str, Record] = {r["Id"]: r for r in receiver.records}
    for blob in simulator.blobs(TID):
        for record in blob.records:
            assert by_id[record["Id"]] == record


def test_a_second_run_relists_the_overlap_but_ships_nothing_again(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    backfill(simulator, days=0.5)
    collector = http_collector(make_collector, receiver)
    assert run_once(collector) == 0
    first = len(receiver.records)
    listed_before = simulator.stats.requests_by_route["list"]
    assert run_once(collector) == 0
    assert simulator.stats.requests_by_route["list"] > listed_before, "the overlap was listed again"
    assert len(receiver.records) == first
    assert collector.queue.get_queue_properties().approximate_message_count == 0


def test_throttling_and_server_errors_still_ship_everything(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    backfill(simulator, days=1)
    simulator.faults.add(Fault(kind="throttle", route="any", rate=0.15))
    simulator.faults.add(Fault(kind="server_error", route="any", rate=0.1))
    simulator.faults.add(Fault(kind="unavailable", route="fetch", rate=0.1))
    receiver.fail_next(3, status=503, retry_after=0)
    collector = http_collector(make_collector, receiver, O365_RETRY_MAX_ATTEMPTS="10")
    assert run_once(collector) == 0
    assert shipped(receiver) == served(simulator)
    assert simulator.stats.faults_injected > 5


def test_crash_between_enqueue_and_checkpoint_loses_nothing(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    backfill(simulator, days=1)
    collector = http_collector(make_collector, receiver)
    real_advance = CheckpointStore.advance
    calls = {"n": 0}

    def advance_then_die(self: CheckpointStore, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:  # the third window's blobs are on the queue; its checkpoint is not saved
            raise Crash
        return real_advance(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(CheckpointStore, "advance", advance_then_die)
    with pytest.raises(Crash):
        collector.run_lister()
    monkeypatch.setattr(CheckpointStore, "advance", real_advance)

    restarted = http_collector(make_collector, receiver)
    assert run_once(restarted) == 0
    counts = shipped(receiver)
    assert set(counts) == set(served(simulator))
    assert max(counts.values()) == 1, "the re-listed window's blobs were skipped by the ledger"


def test_crash_between_ship_and_mark_done_ships_only_that_blob_twice(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    backfill(simulator, days=0.5)
    # The shortest lease the settings allow: the dead worker's message (and claim) come back after it.
    collector = http_collector(make_collector, receiver, O365_CLAIM_LEASE_SECONDS="60")
    collector.run_lister()
    real_mark_done = Ledger.mark_done
    calls = {"n": 0}

    def die_before_marking(self: Ledger, *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # the fourth blob reached the receiver; the ledger never hears of it
            raise Crash
        real_mark_done(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Ledger, "mark_done", die_before_marking)
    with pytest.raises(Crash):
        host_queue_runner(collector).drain()
    monkeypatch.setattr(Ledger, "mark_done", real_mark_done)

    restarted = http_collector(make_collector, receiver, O365_CLAIM_LEASE_SECONDS="60")
    assert run_once(restarted) == 0  # waits for the dead worker's message to become visible again
    counts = shipped(receiver)
    assert set(counts) == set(served(simulator))
    twice = {record_id for record_id, n in counts.items() if n > 1}
    in_flight = [b for b in simulator.blobs(TID) if {r["Id"] for r in b.records} & twice]
    assert len(in_flight) <= 1, "only the blob in flight at the crash may arrive twice"


def test_expired_content_is_reported_not_retried_forever(
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: CollectorFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backfill(simulator, days=0.5, types=("Audit.SharePoint",))
    victim = simulator.blobs(TID, "Audit.SharePoint")[1]
    simulator.expire(victim.content_id)
    collector = http_collector(make_collector, receiver)
    with caplog.at_level(logging.INFO):
        assert run_once(collector) == 1, "lost data makes the run fail"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and victim.content_id in r.getMessage()]
    assert errors
    assert errors[0].getMessage().startswith("content expired before delivery")
    assert simulator.stats.fetches.get(victim.content_id, 0) == 0
    assert shipped(receiver) == served(simulator)  # everything else arrived
    assert collector.poison_queue.get_queue_properties().approximate_message_count == 0


def test_content_the_api_listed_but_no_longer_has_af20050_is_reported_as_lost_not_retried(
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: CollectorFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    t0 = now()
    simulator.generate(
        TID, "Audit.SharePoint", t0 - dt.timedelta(hours=6), t0 - dt.timedelta(hours=2),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    victim = simulator.add_blob(
        TID, "Audit.SharePoint", t0 - dt.timedelta(minutes=90),
        [{"Id": "gone-1", "Operation": "FileAccessed", "Workload": "SharePoint", "RecordType": 6}],
        available_at=t0 - dt.timedelta(minutes=30),
    )  # fmt: skip
    collector = http_collector(make_collector, receiver, O365_CONTENT_TYPES="Audit.SharePoint")
    collector.run_lister()  # the victim is listed and enqueued
    # By the time the fetcher asks, the service has it no more: on the simulator's clock, an hour back,
    # the blob is not available, and its GET answers 404 AF20050 (the content does not exist).
    simulator.set_clock(lambda: t0 - dt.timedelta(hours=1))
    with caplog.at_level(logging.INFO):
        assert run_once(collector) == 1, "lost data makes the run fail"

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    errors = [message for message in errors if victim.content_id in message]
    assert errors
    assert errors[0].startswith("content expired before delivery")
    assert "AF20050" in errors[0]
    victim_gets = [e for e in simulator.stats.recent if e.route == "fetch" and victim.content_id in e.path]
    assert [e.status for e in victim_gets] == [404], "asked once: no retry can bring it back"
    assert collector.ledger.get(_task(victim))["State"] == "lost"  # type: ignore[index]
    assert collector.poison_queue.get_queue_properties().approximate_message_count == 0
    assert collector.queue.get_queue_properties().approximate_message_count == 0
    others = Counter(r["Id"] for b in simulator.blobs(TID) if b is not victim for r in b.records)
    assert shipped(receiver) == others, "everything else arrived, once"


def test_a_backend_that_keeps_refusing_ends_in_the_poison_queue(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    simulator.generate(
        TID, "Audit.General", now() - dt.timedelta(hours=3), now() - dt.timedelta(hours=1),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    receiver.require_bearer("right-token")
    collector = http_collector(
        make_collector, receiver, SINK_HTTP_BEARER_TOKEN="wrong-token", O365_MAX_DEQUEUE_COUNT="2"
    )
    assert run_once(collector) == 1
    blobs = len(simulator.blobs(TID, "Audit.General"))
    assert collector.poison_queue.get_queue_properties().approximate_message_count == blobs
    assert receiver.records == []


def test_late_listed_content_is_caught_by_the_overlap(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    clock = {"now": now()}
    simulator.set_clock(lambda: clock["now"])
    late = simulator.add_blob(
        TID,
        "Audit.Exchange",
        clock["now"] - dt.timedelta(minutes=40),
        [{"Id": "late-record-1", "Operation": "Send", "Workload": "Exchange", "RecordType": 2}],
        available_at=clock["now"] + dt.timedelta(minutes=20),
    )
    collector = http_collector(
        make_collector, receiver, clock=lambda: clock["now"], O365_CONTENT_TYPES="Audit.Exchange"
    )
    assert run_once(collector) == 0
    assert receiver.records == []  # not listable yet; the checkpoint has moved past its contentCreated
    clock["now"] += dt.timedelta(minutes=30)
    assert run_once(collector) == 0
    assert [r["Id"] for r in receiver.records] == [late.records[0]["Id"]]


def test_outcomes_are_counted(simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory) -> None:
    backfill(simulator, days=0.25, types=("Audit.AzureActiveDirectory",))
    collector = http_collector(make_collector, receiver)
    collector.run_lister()
    collector.run_lister()  # lists the same blobs again: nothing new enqueued
    result = host_queue_runner(collector).drain()
    assert result.count(Outcome.SHIPPED) == len(simulator.blobs(TID))
    assert result.records == sum(len(b.records) for b in simulator.blobs(TID))


def test_fan_out_counts_a_blob_done_only_when_every_sink_accepted_it(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    simulator.generate(
        TID, "Audit.Exchange", now() - dt.timedelta(hours=3), now() - dt.timedelta(hours=1),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    blobs = simulator.blobs(TID, "Audit.Exchange")
    receiver.fail_next(2, status=503)  # more than the sink's in-process attempts: the first delivery fails
    collector = http_collector(
        make_collector, receiver, SINK_TYPE="file,http", SINK_HTTP_MAX_ATTEMPTS="2", O365_CONTENT_TYPES="Audit.Exchange"
    )
    # One delivery at a time: both scripted failures then fall on the same blob's two attempts.
    collector.settings = dataclasses.replace(
        collector.settings,
        queue_runner=dataclasses.replace(collector.settings.queue_runner, batch_size=1, new_batch_threshold=0),
    )
    assert run_once(collector) == 0
    assert shipped(receiver) == served(simulator)
    attempts = [collector.ledger.get(_task(b))["Attempts"] for b in blobs]
    assert sorted(attempts) == [1] * (len(blobs) - 1) + [2], "the blob the http sink refused was redelivered"
    written = Counter(
        orjson.loads(line)["Id"]
        for path in Path(collector.settings.sinks[0].directory).rglob("*.ndjson")  # type: ignore[attr-defined]
        for line in path.read_bytes().splitlines()
    )
    assert written == served(simulator), "the file sink's redelivery overwrote its first copy"


def test_filtered_records_are_counted_not_shipped(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    backfill(simulator, days=0.3, types=("Audit.Exchange", "Audit.SharePoint"))
    collector = http_collector(make_collector, receiver, O365_FILTER_EXCLUDE_WORKLOADS="sharepoint")
    assert run_once(collector) == 0
    sharepoint = sum(1 for b in simulator.blobs(TID) for r in b.records if r["Workload"] == "SharePoint")
    assert sharepoint > 0
    assert "SharePoint" not in {r["Workload"] for r in receiver.records}
    assert len(receiver.records) == sum(len(b.records) for b in simulator.blobs(TID)) - sharepoint
    assert f"{sharepoint} filtered out" in capsys.readouterr().out


def _task(blob: object) -> FetchTask:
    return FetchTask(TID, blob.content_type, blob.content_id, blob.content_uri, blob.created, blob.expiration)  # type: ignore[attr-defined]
