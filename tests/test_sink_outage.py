"""A sink down for hours: deferral with growing delays instead of poison, expiry reporting, auto-replay.

Across Azurite, the simulator and a loopback HTTP receiver that refuses everything (503) for a
"maintenance window" measured on an injected clock. The collector's ``defer_visibility`` hook moves
that clock forward by each deferral's delay and makes the copy visible at once: the tests see the
delays the queue would apply without waiting for them, and never sleep.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable

import pytest

from o365collector.config import Settings
from o365collector.deferral import EXPIRY_MARGIN, backoff_delay, plan_deferral
from o365collector.errors import ApiTransientError
from o365collector.fetcher import Outcome
from o365collector.health import build_report
from o365collector.models import FetchTask, sign_message, signature_problem
from o365collector.queue_runner import DrainResult, QueueRunner
from o365collector.runtime import Collector
from o365collector.simulator import Fault, Simulator
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory, now

TID = TENANT.tenant_id
KEY = "k" * 40
MINUTE = dt.timedelta(minutes=1)


class Outage:
    """The injected clock, and a receiver that is down until ``ends_at`` on that clock."""

    def __init__(self, receiver: HttpReceiver, length: dt.timedelta) -> None:
        self.now = now()
        self.receiver = receiver
        self.ends_at = self.now + length
        self.delays: list[dt.timedelta] = []
        receiver.refuse(True)

    def clock(self) -> dt.datetime:
        return self.now

    def advance(self, delay: dt.timedelta) -> int:
        """The deferral hook: time passes by the delay; the maintenance window ends when it is over."""
        self.delays.append(delay)
        self.now += delay
        if self.now >= self.ends_at:
            self.receiver.refuse(False)
        return 0


def build(make_env: EnvFactory, receiver: HttpReceiver, outage: Outage | None, **overrides: str) -> Collector:
    env = make_env(
        **{
            "SINK_TYPE": "http",
            "SINK_URL": receiver.url,
            "SINK_HTTP_MAX_ATTEMPTS": "1",  # the sink's own retries would wait in real time
            "O365_CONTENT_TYPES": "Audit.General",
            "O365_MAX_DEQUEUE_COUNT": "2",
            **overrides,
        }
    )
    clock: Callable[[], dt.datetime] = outage.clock if outage else now
    collector = Collector(
        Settings.from_env(env), clock=clock, defer_visibility=outage.advance if outage else (lambda _d: 0)
    )
    collector.ensure_resources()
    return collector


def runner(collector: Collector) -> QueueRunner:
    def no_sleep(_seconds: float) -> None:
        raise AssertionError("the runner waited for an invisible message")

    return QueueRunner(
        collector.queue,
        collector.poison_queue,
        lambda body, message_id, count: collector.process_message(body, message_id=message_id, dequeue_count=count),
        collector.settings.queue_runner,
        processing_lease=collector.settings.policy.claim_lease,
        sleep=no_sleep,
    )


def blobs(simulator: Simulator, count: int) -> None:
    start = now() - dt.timedelta(hours=count + 1)
    simulator.generate(TID, "Audit.General", start, start + dt.timedelta(hours=count), blob_every=dt.timedelta(hours=1))


def queued(collector: Collector) -> int:
    return int(collector.queue.get_queue_properties().approximate_message_count or 0)


def poisoned(collector: Collector) -> int:
    return int(collector.poison_queue.get_queue_properties().approximate_message_count or 0)


def defer_once(collector: Collector) -> tuple[FetchTask, Outcome]:
    """Receive the one content message and hand it to the handler, as the host does (then complete it)."""
    [message] = collector.queue.receive_messages(max_messages=1)
    last = collector.settings.queue_runner.max_dequeue_count  # the earlier deliveries failed and came back
    task, result = collector.handle_message(message.content, message_id=message.id, dequeue_count=last)
    collector.queue.delete_message(message)
    return task, result.outcome


# -- pure planning -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "cap_minutes", "expected_minutes"),
    [(1, 60, 1), (2, 60, 2), (3, 60, 4), (6, 60, 32), (7, 60, 60), (50, 60, 60), (10**5, 60, 60), (5, 10, 10)],
)
def test_the_delay_doubles_per_attempt_up_to_the_cap(attempt: int, cap_minutes: int, expected_minutes: int) -> None:
    assert backoff_delay(attempt, dt.timedelta(minutes=cap_minutes)) == dt.timedelta(minutes=expected_minutes)


def _task(expires_in: dt.timedelta, attempt: int, at: dt.datetime) -> FetchTask:
    return FetchTask(TID, "Audit.General", "c1", "https://x/c1", at - dt.timedelta(days=6), at + expires_in, attempt)


def test_a_delay_never_runs_past_the_blobs_expiration_minus_the_margin() -> None:
    at = now()
    plan = plan_deferral(_task(dt.timedelta(minutes=90), 7, at), at, dt.timedelta(minutes=60))
    assert plan.next_attempt_at <= at + dt.timedelta(minutes=90) - EXPIRY_MARGIN
    assert plan.near_expiry
    late = plan_deferral(_task(dt.timedelta(minutes=20), 7, at), at, dt.timedelta(minutes=60))
    assert late.delay == MINUTE  # inside the margin: tried every minute until the source expires it
    far = plan_deferral(_task(dt.timedelta(days=6), 7, at), at, dt.timedelta(minutes=60))
    assert far.delay == dt.timedelta(minutes=60)
    assert not far.near_expiry


def test_the_attempt_counter_keeps_v1_messages_readable_and_signed_copies_valid() -> None:
    at = now()
    first = _task(dt.timedelta(days=6), 0, at)
    assert "attempt" not in first.to_message()  # a first message is the v1 body older releases read
    again = first.deferred().deferred()
    assert FetchTask.from_message(again.to_message()).attempt == 2
    assert signature_problem(sign_message(again.to_message(), KEY.encode()), KEY.encode()) is None


# -- across the boundaries ---------------------------------------------------------------------------


def test_a_sink_down_for_hours_ships_everything_once_after_recovery_and_poisons_nothing(
    simulator: Simulator, receiver: HttpReceiver, make_env: EnvFactory
) -> None:
    blobs(simulator, 3)
    outage = Outage(receiver, dt.timedelta(hours=3))
    collector = build(make_env, receiver, outage)
    collector.run_lister()
    drained: DrainResult = runner(collector).drain()

    max_dequeue = collector.settings.queue_runner.max_dequeue_count
    assert drained.deferred > 3 * max_dequeue, "far more failed deliveries than maxDequeueCount per blob"
    assert drained.poisoned == 0
    assert poisoned(collector) == 0
    assert queued(collector) == 0
    assert outage.now >= outage.ends_at
    expected = Counter(r["Id"] for b in simulator.blobs(TID, "Audit.General") for r in b.records)
    assert Counter(r["Id"] for r in receiver.records) == expected, "every record arrived, once"
    assert collector.deferrals.list_deferred() == [], "nothing is reported as waiting once shipped"
    assert outage.delays == sorted(outage.delays), "the delays grew round by round"
    assert outage.delays[-1] > 8 * outage.delays[0]
    collector.close()


def test_delays_grow_and_are_capped_and_status_says_what_waits(
    simulator: Simulator, receiver: HttpReceiver, make_env: EnvFactory
) -> None:
    blobs(simulator, 1)
    outage = Outage(receiver, dt.timedelta(days=2))
    collector = build(make_env, receiver, outage, O365_SINK_BACKOFF_MAX_MINUTES="10", O365_MESSAGE_KEY=KEY)
    collector.run_lister()
    outcomes = []
    for _ in range(6):
        outcomes.append(defer_once(collector)[1])
    assert outcomes == [Outcome.DEFERRED] * 6, "signed copies are accepted, never refused"
    assert [d / MINUTE for d in outage.delays] == [1, 2, 4, 8, 10, 10]
    [message] = collector.queue.peek_messages(max_messages=1)
    assert FetchTask.from_message(message.content).attempt == 6
    assert poisoned(collector) == 0

    report = build_report(collector, outage.now)
    [stream] = [s for s in report.streams if s.content_type == "Audit.General"]
    next_at = (outage.now).strftime("%H:%M")  # the clock moved by the last delay already
    assert any(
        d.startswith(f"1 blobs waiting for sink http (next attempt {next_at}): SinkTransientError")
        for d in stream.degraded
    ), stream.degraded
    assert stream.deferred[0]["blobs"] == 1
    # Waiting is degraded, not unhealthy, while the blob is far from expiring (the clock also moved 35 min
    # without a listing run: that problem is the health policy's, not ours).
    assert not [p for p in stream.problems if "waiting" in p or "expires" in p], stream.problems
    collector.close()


def test_a_blob_near_its_expiration_is_reported(
    simulator: Simulator, receiver: HttpReceiver, make_env: EnvFactory, caplog: pytest.LogCaptureFixture
) -> None:
    created = now() - dt.timedelta(hours=2)
    simulator.add_blob(
        TID, "Audit.General", created, [{"Id": "r1", "Operation": "x"}], expiration=now() + dt.timedelta(hours=20)
    )
    outage = Outage(receiver, dt.timedelta(days=2))
    collector = build(make_env, receiver, outage)
    collector.run_lister()
    with caplog.at_level(logging.ERROR, logger="o365collector.runtime"):
        assert defer_once(collector)[1] is Outcome.DEFERRED
    assert any(
        "content expires at the source in 20.0 h while sink http is failing" in r.getMessage() for r in caplog.records
    )
    report = build_report(collector, outage.now)
    assert any("content expires at the source in" in p and "sink http" in p for p in report.problems), report.problems
    collector.close()


def test_a_permanent_sink_error_still_poisons(
    simulator: Simulator, receiver: HttpReceiver, make_env: EnvFactory
) -> None:
    blobs(simulator, 2)
    receiver.require_bearer("right-token")
    collector = build(make_env, receiver, None, SINK_HTTP_BEARER_TOKEN="wrong-token", O365_AUTO_REPLAY_POISON="false")
    collector.run_lister()
    drained = runner(collector).drain()
    assert drained.deferred == 0
    assert poisoned(collector) == 2
    assert receiver.records == []
    collector.close()


def _poisoned_by_a_bad_token(simulator: Simulator, receiver: HttpReceiver, collector: Collector) -> None:
    receiver.require_bearer("right-token")
    collector.run_lister()  # the poison queue is empty: nothing to replay yet
    runner(collector).drain()
    assert poisoned(collector) == 2


def test_auto_replay_moves_poison_back_once_every_check_passes_and_not_before(
    simulator: Simulator, receiver: HttpReceiver, make_env: EnvFactory
) -> None:
    blobs(simulator, 2)
    clock = {"now": now()}
    env = make_env(
        SINK_TYPE="http", SINK_URL=receiver.url, SINK_HTTP_MAX_ATTEMPTS="1", SINK_HTTP_BEARER_TOKEN="wrong-token",
        O365_CONTENT_TYPES="Audit.General", O365_MAX_DEQUEUE_COUNT="2", O365_AUTO_REPLAY_INTERVAL_MINUTES="30",
    )  # fmt: skip
    collector = Collector(Settings.from_env(env), clock=lambda: clock["now"])
    collector.ensure_resources()
    _poisoned_by_a_bad_token(simulator, receiver, collector)

    assert collector.auto_replay() is None, "the check fails (401): nothing moves"
    assert poisoned(collector) == 2
    receiver.require_bearer(None)  # the operator fixed the token at the receiver
    clock["now"] += dt.timedelta(minutes=10)
    assert collector.auto_replay() is None, "at most once per interval, even once the check passes"
    clock["now"] += dt.timedelta(minutes=25)
    collector.run_lister()  # the hook: after a listing run
    assert poisoned(collector) == 0
    runner(collector).drain()
    expected = Counter(r["Id"] for b in simulator.blobs(TID, "Audit.General") for r in b.records)
    assert Counter(r["Id"] for r in receiver.records) == expected
    collector.close()


def test_the_setting_turns_auto_replay_off(simulator: Simulator, receiver: HttpReceiver, make_env: EnvFactory) -> None:
    blobs(simulator, 2)
    collector = build(make_env, receiver, None, SINK_HTTP_BEARER_TOKEN="wrong-token", O365_AUTO_REPLAY_POISON="false")
    _poisoned_by_a_bad_token(simulator, receiver, collector)
    receiver.require_bearer(None)
    collector.run_lister()
    assert collector.auto_replay() is None
    assert poisoned(collector) == 2
    collector.close()


def test_a_failure_is_redelivered_quickly_then_deferred_on_the_last_delivery(
    simulator: Simulator, receiver: HttpReceiver, make_env: EnvFactory
) -> None:
    blobs(simulator, 1)
    simulator.faults.add(Fault(kind="server_error", route="fetch", count=100))
    collector = build(make_env, receiver, None, O365_RETRY_MAX_ATTEMPTS="1")
    collector.run_lister()
    [message] = collector.queue.receive_messages(max_messages=1)
    with pytest.raises(ApiTransientError):  # an early delivery: the queue's quick redelivery absorbs blips
        collector.handle_message(message.content, message_id=message.id, dequeue_count=1)
    with pytest.raises(ApiTransientError):  # not told the count: nothing is deferred
        collector.handle_message(message.content, message_id=message.id)
    last = collector.settings.queue_runner.max_dequeue_count
    _task, result = collector.handle_message(message.content, message_id=message.id, dequeue_count=last)
    assert result.outcome is Outcome.DEFERRED
    assert result.reason is not None
    assert result.reason.startswith("waiting for the Management Activity API")
    collector.close()
