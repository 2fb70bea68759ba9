"""Content the API lists hours after its contentCreated, on Azurite + the simulator, on an injected clock.

The late sweep re-lists up to ``O365_LATE_LOOKBACK_HOURS`` (24) behind the previous sweep once per
``O365_LATE_SWEEP_MINUTES``: a blob listable 3 h or 20 h late is shipped once by the first sweep after
it appears, and counted as late with its lateness; a blob listable 30 h late is past the bound.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Iterator

import orjson
import pytest

from o365collector import cli
from o365collector.checkpoints import CheckpointStore
from o365collector.health import build_report, render_table
from o365collector.lister import RUN_SUMMARY_MESSAGE, SUMMARY_MESSAGE, StreamResult
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator, SimulatorConfig
from o365collector.simulator.data import SimBlob
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory

TID = TENANT.tenant_id
H = dt.timedelta(hours=1)
MIN = dt.timedelta(minutes=1)
CollectorFactory = Callable[..., Collector]


class Crash(BaseException):
    """Stands for the process being killed: not an Exception, so no handler in the collector sees it."""



class Clock:
    """One clock for the simulator and the collector, moved by the test (never by sleeping)."""

    def __init__(self) -> None:
        self.now = self.start = dt.datetime.now(dt.UTC).replace(microsecond=0)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def simulator(clock: Clock) -> Iterator[Simulator]:
    """The usual simulator on the test's clock, with tokens that outlive the 34 simulated hours
    (the collector's token cache runs on real time, the simulator's expiry on the test's clock)."""
    sim = Simulator(SimulatorConfig(seed=42, page_size=7, now=clock, token_lifetime=dt.timedelta(days=3)))
    sim.add_tenant(TENANT)
    sim.start()
    yield sim
    sim.stop()


def late_blob(sim: Simulator, name: str, created: dt.datetime, late: dt.timedelta) -> SimBlob:
    record = {"Id": name, "Operation": "Send", "Workload": "Exchange", "RecordType": 2}
    return sim.add_blob(TID, "Audit.Exchange", created, [record], available_at=created + late)


def collector_for(make_collector: CollectorFactory, receiver: HttpReceiver, clock: Clock, **env: str) -> Collector:
    return make_collector(
        clock=clock,
        SINK_TYPE="http",
        SINK_URL=receiver.url,
        O365_CONTENT_TYPES="Audit.Exchange",
        O365_START_TIME=(clock.start - 2 * H).isoformat(),  # settings check it against the real clock
        **env,
    )


def shipped(receiver: HttpReceiver) -> Counter[str]:
    return Counter(r["Id"] for r in receiver.records)


def exchange(collector: Collector) -> dict[str, object]:
    """The stream as ``status --json`` and the health endpoint show it."""
    doc = orjson.loads(build_report(collector).to_json())
    (stream,) = doc["streams"]
    assert isinstance(stream, dict)
    return stream


def test_content_listed_3_h_and_20_h_late_is_shipped_once_by_the_next_sweep_and_counted(
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: CollectorFactory,
    clock: Clock,
    make_env: EnvFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    t0 = clock.now
    late_blob(simulator, "on-time", t0 + 10 * MIN, dt.timedelta(0))
    three = late_blob(simulator, "late-3h", t0 + 30 * MIN, 3 * H)
    twenty = late_blob(simulator, "late-20h", t0 + 40 * MIN, 20 * H)
    thirty = late_blob(simulator, "late-30h", t0 + 50 * MIN, 30 * H)
    collector = collector_for(make_collector, receiver, clock)
    found: dict[str, tuple[dt.datetime, dict[str, object]]] = {}
    for _ in range(34):  # hourly runs for 34 h: each run sweeps (the interval is 60 min)
        assert run_once(collector) == 0
        for blob in (three, twenty, thirty):
            if blob.records[0]["Id"] in shipped(receiver) and blob.content_id not in found:
                found[blob.content_id] = (clock.now, exchange(collector))
        clock.now += H

    # each once; the blob listed 30 h late is past the bound
    assert shipped(receiver) == Counter({"on-time": 1, "late-3h": 1, "late-20h": 1})
    for blob, late in ((three, 3 * H), (twenty, 20 * H)):
        at, stream = found[blob.content_id]
        assert blob.available_at <= at < blob.available_at + H, "shipped by the first sweep after it was listable"
        lateness = (at - blob.created).total_seconds()
        assert late.total_seconds() <= lateness < (late + H).total_seconds()
        last_run = stream["last_run"]
        assert isinstance(last_run, dict)
        assert last_run["late_blobs"] == 1
        assert last_run["max_lateness_seconds"] == lateness
        assert stream["late_content"] == {
            "last_sweep_at": at.isoformat().replace("+00:00", "Z"),
            "last_found_at": at.isoformat().replace("+00:00", "Z"),
            "blobs": 1,
            "max_lateness_seconds": lateness,
        }
        assert stream["healthy"] is True  # collected: nothing for an operator to do

    # `status --json` (a fresh process would read the same rows) and the table both say it.
    for key, value in make_env(O365_CONTENT_TYPES="Audit.Exchange").items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    cli.main(["status", "--json"])
    (stream,) = orjson.loads(capsys.readouterr().out)["streams"]
    assert stream["late_content"]["blobs"] == 1
    twenty_late = found[twenty.content_id][0] - twenty.created
    assert stream["late_content"]["max_lateness_seconds"] == twenty_late.total_seconds()
    assert "late content " + TID + " Audit.Exchange: 1 blobs listed late, up to 20.3 h" in render_table(
        build_report(collector)
    )


def test_runs_between_sweeps_do_not_relist_the_lookback(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory, clock: Clock
) -> None:
    """The sweep costs one listing per interval, not per run: runs in between list only the overlap."""
    collector = collector_for(make_collector, receiver, clock, O365_LATE_SWEEP_MINUTES="60")
    assert run_once(collector) == 0
    clock.now += 65 * MIN
    before = simulator.stats.requests_by_route["list"]
    assert run_once(collector) == 0
    assert simulator.stats.requests_by_route["list"] - before == 2  # the overlap and the sweep
    for _ in range(5):
        clock.now += 5 * MIN
        before = simulator.stats.requests_by_route["list"]
        assert run_once(collector) == 0
        assert simulator.stats.requests_by_route["list"] - before == 1


def test_a_sweep_cut_short_is_not_recorded_and_runs_again(
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: CollectorFactory,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sweep's completion is saved with its last window, after that window's blobs are on the queue."""
    t0 = clock.now
    late_blob(simulator, "late-5h", t0 + 20 * MIN, 5 * H)
    collector = collector_for(make_collector, receiver, clock)
    for _ in range(5):
        clock.now += H
        assert run_once(collector) == 0
    assert shipped(receiver) == Counter()
    clock.now += H  # listable since 40 min, and a sweep is due
    swept_before = collector.checkpoints.get(TID, "Audit.Exchange").late_sweep_at
    real_advance = CheckpointStore.advance

    def die_on_the_sweep(self: CheckpointStore, *args: object, **kwargs: object) -> object:
        if kwargs.get("late_sweep_at") is not None:
            raise Crash  # the sweep window's blobs are on the queue; its save is not done
        return real_advance(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(CheckpointStore, "advance", die_on_the_sweep)
    with pytest.raises(Crash):
        collector.run_lister()
    monkeypatch.setattr(CheckpointStore, "advance", real_advance)
    assert collector.checkpoints.get(TID, "Audit.Exchange").late_sweep_at == swept_before

    clock.now += 5 * MIN
    restarted = collector_for(make_collector, receiver, clock)
    assert run_once(restarted) == 0
    assert shipped(receiver) == Counter({"late-5h": 1})
    assert restarted.checkpoints.get(TID, "Audit.Exchange").late_sweep_at == clock.now


def test_a_zero_lookback_turns_the_sweep_off(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory, clock: Clock
) -> None:
    late_blob(simulator, "late-3h", clock.now + 30 * MIN, 3 * H)
    collector = collector_for(make_collector, receiver, clock, O365_LATE_LOOKBACK_HOURS="0")
    for _ in range(6):
        assert run_once(collector) == 0
        clock.now += H
    assert shipped(receiver) == Counter()
    assert collector.checkpoints.get(TID, "Audit.Exchange").late_sweep_at is None


def test_late_blobs_are_in_the_run_summaries(
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: CollectorFactory,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    late = late_blob(simulator, "late-2h", clock.now + 10 * MIN, 2 * H)
    collector = collector_for(make_collector, receiver, clock)
    assert run_once(collector) == 0
    clock.now += H  # the checkpoint moves past its contentCreated before it is listable
    assert run_once(collector) == 0
    clock.now = late.available_at + 30 * MIN
    caplog.clear()  # only this run's lines (earlier runs log too when another test left the level lower)
    with caplog.at_level(logging.INFO, logger="o365collector.lister"):
        assert run_once(collector) == 0
    messages = [r.getMessage() for r in caplog.records]
    lateness = (clock.now - late.created).total_seconds()
    (stream_line,) = [m for m in messages if m.startswith(SUMMARY_MESSAGE)]
    stream = orjson.loads(stream_line[len(SUMMARY_MESSAGE) :])
    assert (stream["late_blobs"], stream["max_lateness_seconds"], stream["late_sweep"]) == (1, lateness, True)
    (run_line,) = [m for m in messages if m.startswith(RUN_SUMMARY_MESSAGE)]
    run = orjson.loads(run_line[len(RUN_SUMMARY_MESSAGE) :])
    assert (run["late_blobs"], run["max_lateness_seconds"], run["late_sweeps"]) == (1, lateness, 1)
    assert shipped(receiver) == Counter({"late-2h": 1})


def test_passes_of_one_stream_add_up_late_and_refused_counts_in_the_command_line_total() -> None:
    """``run --once`` lists in passes; its summary must carry every pass's late and refused counts."""
    first = StreamResult(TID, "Audit.Exchange", windows=2, late_blobs=3, max_lateness_seconds=7200.0,
                         late_sweep=True, sweep_windows=1, refused_entries=1, refused=["a"])  # fmt: skip
    second = StreamResult(TID, "Audit.Exchange", windows=1, late_blobs=1, max_lateness_seconds=60.0,
                          refused_entries=2, refused=["b", "c"])  # fmt: skip
    second.add_earlier(first)
    assert (second.windows, second.late_blobs, second.max_lateness_seconds) == (3, 4, 7200.0)
    assert (second.late_sweep, second.sweep_windows) == (True, 1)
    assert (second.refused_entries, second.refused) == (3, ["a", "b", "c"])
