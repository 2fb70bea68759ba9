"""The command-line queue runner on Azurite: unreadable messages and slow sinks.

- A message that is not base64 text is moved to the poison queue as it came, with an ERROR naming it and
  why, while the rest of its batch ships; ``status``, ``replay-poison`` and the health function count it
  as unreadable and never raise.
- A sink slower than every lease: the runner keeps the messages it holds invisible (the one being
  shipped and those waiting their turn) and the fetcher keeps its ledger claim, so no other worker
  receives a message or ships a blob meanwhile: each record arrives once.
- A claim lease that short is refused at start-up, naming the setting.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.queue import QueueClient

from o365collector import cli, running
from o365collector.azurite import Azurite
from o365collector.config import QueueRunnerConfig, Settings
from o365collector.errors import ConfigError
from o365collector.fetcher import Fetcher, FetchResult, Outcome
from o365collector.health import health_response
from o365collector.models import FetchTask
from o365collector.queue_runner import POISONED_MESSAGE, DrainResult, QueueRunner
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.storage import UnreadableMessage, decode_message
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory

TID = TENANT.tenant_id
CollectorFactory = Callable[..., Collector]
NOT_BASE64 = 'this is {"not": "base64"} at all'
WEEK = 7 * 24 * 3600
# Leases short enough for a test, given through the constructors (the settings allow 60 s at least).
LEASE = dt.timedelta(seconds=3)


class SlowReceiver(HttpReceiver):
    """An HTTP ingest endpoint that answers a request only after ``delay`` seconds, or once released.

    Every request is held, or with ``only_first`` the first one only. ``arrived`` is set when the first
    request comes in; ``release()`` answers the held requests at once.
    """

    def __init__(self, delay: float, *, only_first: bool = False) -> None:
        self.delay = delay
        self.arrived = threading.Event()
        self._only_first = only_first
        self._go = threading.Event()
        super().__init__(timeout=delay * 4)

    def release(self) -> None:
        self._go.set()

    def close(self) -> None:
        self._go.set()
        super().close()

    def _decide(self, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, bool]:
        first = not self.arrived.is_set()
        self.arrived.set()
        if first or not self._only_first:
            self._go.wait(self.delay)
        return super()._decide(headers)



def generate(simulator: Simulator, blobs: int) -> None:
    now = dt.datetime.now(dt.UTC)
    simulator.generate(
        TID, "Audit.General", now - dt.timedelta(hours=blobs, minutes=10), now - dt.timedelta(minutes=10),
        blob_every=dt.timedelta(hours=1), records_per_blob=(2, 6),
    )  # fmt: skip
    assert len(simulator.blobs(TID, "Audit.General")) == blobs


def served(simulator: Simulator) -> Counter[str]:
    return Counter(r["Id"] for b in simulator.blobs(TID) for r in b.records)


def raw_client(azurite: Azurite, queue_name: str) -> QueueClient:
    """A client that neither encodes nor decodes: it stores and shows a message's text as it is."""
    return QueueClient.from_connection_string(azurite.connection_string, queue_name)


def use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


# -- decoding, one message at a time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text", "reason"),
    [
        (base64.b64encode(b'{"v": 1}').decode(), '{"v": 1}', None),
        ("eyJ2Ijog\nMX0=", '{"v": 1}', None),  # line breaks are skipped, as the host skips them
        (base64.b64encode("Zürich".encode()).decode(), "Zürich", None),
        (NOT_BASE64, None, "not base64"),
        ("eyJ2IjogMX0", None, "not base64"),  # padding missing
        (base64.b64encode(b"\xff\xfe{}").decode(), None, "not UTF-8"),
    ],
)
def test_decode_message_gives_the_text_or_says_why_it_cannot(raw: str, text: str | None, reason: str | None) -> None:
    decoded = decode_message(raw)
    if reason is None:
        assert decoded == text
        assert type(decoded) is str
    else:
        assert isinstance(decoded, UnreadableMessage)
        assert decoded == raw, "an unreadable message keeps its text exactly as stored"
        assert reason in decoded.reason


def test_a_message_that_is_not_base64_is_poisoned_as_it_came_while_its_batch_ships(
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: CollectorFactory,
    make_env: EnvFactory,
    azurite: Azurite,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    generate(simulator, blobs=4)
    settings = {"O365_CONTENT_TYPES": "Audit.General", "SINK_TYPE": "http", "SINK_URL": receiver.url}
    collector = make_collector(**settings)
    bad = raw_client(azurite, collector.settings.content_queue).send_message(NOT_BASE64)

    with caplog.at_level(logging.ERROR, logger="o365collector"):
        assert running.run_once(collector) == 1, "a poisoned message fails the run"
    shipped = Counter(r["Id"] for r in receiver.records)
    assert shipped == served(simulator), "every good message of the batch shipped, each once"
    raw_poison = raw_client(azurite, collector.settings.poison_queue)
    assert [m.content for m in raw_poison.peek_messages(max_messages=32)] == [NOT_BASE64]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert [e for e in errors if POISONED_MESSAGE in e and bad.id in e and "not base64" in e], errors

    use_env(monkeypatch, make_env(**settings))
    capsys.readouterr()
    assert cli.main(["status", "--json"]) == 1  # unhealthy: a message waits in the poison queue
    poison = orjson.loads(capsys.readouterr().out)["queues"]["poison"]
    assert (poison["messages"], poison["unreadable"]) == (1, 1)

    assert cli.main(["replay-poison", "--json"]) == 0
    replayed = orjson.loads(capsys.readouterr().out)
    assert (replayed["moved"], replayed["unreadable"]) == (0, 1)
    assert [m.content for m in raw_poison.peek_messages(max_messages=32)] == [NOT_BASE64], "left exactly as it is"

    status, body = health_response(lambda: collector)
    report = orjson.loads(body)
    assert status == 503
    assert report["queues"]["poison"]["unreadable"] == 1
    assert not [p for p in report["problems"] if "status unavailable" in p]


def test_a_refused_message_counts_as_poisoned(make_collector: CollectorFactory) -> None:
    """The handler moved a forged message to the poison queue itself and completed: the run must not pass."""
    collector = make_collector()
    collector.queue.send_message("forged")
    runner = QueueRunner(
        collector.queue,
        collector.poison_queue,
        lambda _body, _id, _count: FetchResult(Outcome.REFUSED),
        collector.settings.queue_runner,
        processing_lease=LEASE,
    )
    drained = runner.drain()
    assert (drained.count(Outcome.REFUSED), drained.poisoned) == (1, 1)
    assert collector.queue.get_queue_properties().approximate_message_count == 0


# -- slow sinks: no redelivery while a worker holds a message ----------------------------------------------


def worker(collector: Collector, deliveries: list[tuple[str, int]] | None = None) -> QueueRunner:
    """A runner and fetcher as the command line wires them, with the short test leases given to both."""
    fetcher = Fetcher(
        ledger=collector.ledger,
        sinks_for_tenant=collector.sinks_for,
        client_for=collector.client,
        history=collector.unit_memos,
        claim_lease=LEASE,
        clock=collector.clock,
    )

    def handle(body: str, message_id: str, dequeue_count: int) -> FetchResult:
        if deliveries is not None:
            deliveries.append((message_id, dequeue_count))
        return fetcher.process(FetchTask.from_message(body), delivery_id=message_id)

    config = QueueRunnerConfig(visibility_timeout=dt.timedelta(0), max_dequeue_count=5)
    return QueueRunner(collector.queue, collector.poison_queue, handle, config, processing_lease=LEASE)


def test_a_sink_slower_than_the_lease_gets_each_blob_once_and_no_message_is_redelivered(
    simulator: Simulator, make_collector: CollectorFactory
) -> None:
    """Worker A takes both messages in one batch and ships each for longer than the lease; worker B polls
    meanwhile. Neither the message being shipped nor the one waiting its turn ever reappears for B."""
    generate(simulator, blobs=2)
    with SlowReceiver(delay=LEASE.total_seconds() * 5 / 3) as slow, ThreadPoolExecutor(2) as pool:
        settings = {"O365_CONTENT_TYPES": "Audit.General", "SINK_TYPE": "http", "SINK_URL": slow.url}
        first, second = make_collector(**settings), make_collector(**settings)
        first.run_lister()
        deliveries: list[tuple[str, int]] = []
        a = pool.submit(worker(first, deliveries).drain)
        assert slow.arrived.wait(30), "worker A started shipping"
        b = pool.submit(worker(second, deliveries).drain)
        drained_a, drained_b = a.result(timeout=120), b.result(timeout=120)

    assert Counter(r["Id"] for r in slow.records) == served(simulator)
    assert max(Counter(r["Id"] for r in slow.records).values()) == 1
    assert drained_a.count(Outcome.SHIPPED) == 2
    assert drained_b.outcomes == {}, "worker B never received a message worker A held"
    assert sorted(n for _, n in deliveries) == [1, 1], "each message was delivered once"


def test_a_duplicate_message_arriving_while_the_blob_ships_is_skipped_because_the_claim_is_kept(
    simulator: Simulator, make_collector: CollectorFactory
) -> None:
    """Two messages for one blob (an overlapping listing, a replayed copy). The copy becomes visible after
    the claim lease: worker B must find the claim still held by worker A, and skip the blob."""
    generate(simulator, blobs=1)
    with SlowReceiver(delay=60, only_first=True) as slow, ThreadPoolExecutor(2) as pool:
        settings = {"O365_CONTENT_TYPES": "Audit.General", "SINK_TYPE": "http", "SINK_URL": slow.url}
        first, second = make_collector(**settings), make_collector(**settings)
        first.run_lister()
        (message,) = first.queue.peek_messages()
        # The copy shows up once the claim, had it not been renewed, would have run out.
        first.queue.send_message(message.content, visibility_timeout=int(LEASE.total_seconds()) + 1)

        def handled(result: DrainResult) -> None:
            if result.count(Outcome.SKIPPED_BUSY):
                slow.release()  # worker A's answer waits until the copy has been dealt with

        # Either worker may receive the copy: A handles several messages at once, so it polls on.
        a = pool.submit(worker(first).drain, on_progress=handled)
        assert slow.arrived.wait(30), "worker A started shipping"
        b = pool.submit(worker(second).drain, on_progress=handled)
        drained_a, drained_b = a.result(timeout=120), b.result(timeout=120)

    assert Counter(r["Id"] for r in slow.records) == served(simulator), "the blob arrived once"
    assert drained_a.count(Outcome.SHIPPED) == 1
    assert drained_a.count(Outcome.SKIPPED_BUSY) + drained_b.count(Outcome.SKIPPED_BUSY) == 1
    assert drained_b.count(Outcome.SHIPPED) == 0


# -- lease settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "accepted"),
    [
        ("O365_CLAIM_LEASE_SECONDS", "1", False),
        ("O365_CLAIM_LEASE_SECONDS", "59", False),
        ("O365_CLAIM_LEASE_SECONDS", "60", True),
        ("O365_CLAIM_LEASE_SECONDS", str(WEEK), True),
        ("O365_CLAIM_LEASE_SECONDS", str(WEEK + 1), False),
        ("O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS", str(WEEK), True),
        ("O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS", str(WEEK + 1), False),
    ],
)
def test_lease_settings_stay_within_what_leases_and_the_queue_allow(
    make_env: EnvFactory, setting: str, value: str, accepted: bool
) -> None:
    env = make_env(**{setting: value})
    if accepted:
        Settings.from_env(env)
    else:
        with pytest.raises(ConfigError) as caught:
            Settings.from_env(env)
        assert caught.value.setting == setting


def test_a_one_second_claim_lease_is_refused_at_start_up(
    make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_env(monkeypatch, make_env(O365_CLAIM_LEASE_SECONDS="1"))
    assert cli.main(["run", "--once"]) == 2
    error = capsys.readouterr().err
    assert "O365_CLAIM_LEASE_SECONDS" in error
    assert "60" in error


# -- several deliveries at once (host.json batchSize / newBatchThreshold) ------------------------------------

# Small numbers, so that a test can see every message in flight; the settings' defaults are host.json's 16/8.
CONCURRENT = QueueRunnerConfig(
    visibility_timeout=dt.timedelta(0), max_dequeue_count=3, batch_size=4, new_batch_threshold=2
)
WAIT = 20.0  # the bound on every wait below: a runner that handles one message at a time never gets there


class InFlight:
    """Counts the handlers running at once; ``reached(n)`` waits (bounded) until n ran together."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.calls: list[tuple[str, int]] = []
        self._changed = threading.Condition()

    def enter(self, body: str, dequeue_count: int) -> None:
        with self._changed:
            self.now += 1
            self.most = max(self.most, self.now)
            self.calls.append((body, dequeue_count))
            self._changed.notify_all()

    def leave(self) -> None:
        with self._changed:
            self.now -= 1
            self._changed.notify_all()

    def reached(self, n: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.most >= n, timeout=WAIT)


def shipped(records: int = 1) -> FetchResult:
    return FetchResult(Outcome.SHIPPED, records=records)


def bare_runner(collector: Collector, handler: Callable[[str, str, int], FetchResult]) -> QueueRunner:
    return QueueRunner(collector.queue, collector.poison_queue, handler, CONCURRENT, processing_lease=LEASE)


def test_a_batch_is_handled_at_once_up_to_batch_size(make_collector: CollectorFactory) -> None:
    """Each handler waits until three run together (newBatchThreshold + 1: the most the runner always
    reaches, as it receives more whenever 2 or fewer are in flight); one at a time, none would ever return."""
    collector = make_collector()
    for n in range(9):
        collector.queue.send_message(f"m{n}")
    flight = InFlight()
    together = threading.Barrier(3, timeout=WAIT)

    def handle(body: str, _id: str, count: int) -> FetchResult:
        flight.enter(body, count)
        try:
            together.wait()  # raises (the delivery fails) unless 3 handlers run at once
            return shipped()
        finally:
            flight.leave()

    drained = bare_runner(collector, handle).drain()

    assert (drained.count(Outcome.SHIPPED), drained.failures, drained.completed) == (9, 0, 9)
    assert flight.most <= CONCURRENT.batch_size, "never more in flight than batchSize"
    assert sorted(body for body, _ in flight.calls) == [f"m{n}" for n in range(9)], "each delivered once"
    assert collector.queue.get_queue_properties().approximate_message_count == 0


def test_a_slow_message_stays_invisible_while_its_neighbours_complete(
    make_collector: CollectorFactory, azurite: Azurite
) -> None:
    """The slow one outlives its lease several times over; its neighbours finish and are deleted meanwhile,
    and another receiver polling the queue never gets the slow one. Progress comes on the caller's thread."""
    collector = make_collector()
    for n in range(4):
        collector.queue.send_message("slow" if n == 0 else f"quick{n}")
    others_done = threading.Event()
    progress_threads: set[threading.Thread] = set()
    renewals: list[str] = []
    spy = raw_client(azurite, collector.settings.content_queue)
    update = collector.queue.update_message

    def counting_update(message: object, *args: object, **kwargs: object) -> object:
        if kwargs.get("visibility_timeout") == int(LEASE.total_seconds()):
            renewals.append(str(getattr(message, "id", message)))
        return update(message, *args, **kwargs)  # type: ignore[arg-type]

    collector.queue.update_message = counting_update  # type: ignore[method-assign, assignment]

    def handle(body: str, message_id: str, _count: int) -> FetchResult:
        if body != "slow":
            return shipped()
        assert others_done.wait(WAIT), "the quick messages completed while the slow one was still running"
        deadline = time.monotonic() + 30
        while renewals.count(message_id) < 3 and time.monotonic() < deadline:
            # Another worker polls meanwhile: the slow message must never be handed out.
            stolen = list(spy.receive_messages(max_messages=32, visibility_timeout=1))
            assert stolen == [], f"a held message was delivered to another receiver: {stolen}"
            others_done.wait(0.2)  # a poll interval for the spy, not a synchronisation
        assert renewals.count(message_id) >= 3, "the slow message's lease was renewed every half lease"
        return shipped()

    def on_progress(result: DrainResult) -> None:
        progress_threads.add(threading.current_thread())
        if result.completed >= 3:
            others_done.set()

    drained = bare_runner(collector, handle).drain(on_progress=on_progress)

    assert (drained.count(Outcome.SHIPPED), drained.failures) == (4, 0)
    assert progress_threads == {threading.current_thread()}, "progress is reported on the calling thread"
    assert collector.queue.get_queue_properties().approximate_message_count == 0


def test_a_failing_message_is_retried_then_poisoned_while_its_neighbours_wait_in_flight(
    make_collector: CollectorFactory, azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    """Two neighbours stay in flight until the bad message has failed maxDequeueCount (3) times: it is
    put back and received again while they run, then poisoned; they ship, each once."""
    collector = make_collector()
    for body in ("good1", "bad", "good2"):
        collector.queue.send_message(body)
    last_attempt = threading.Event()
    flight = InFlight()

    def handle(body: str, _id: str, count: int) -> FetchResult:
        flight.enter(body, count)
        try:
            if body == "bad":
                if count >= CONCURRENT.max_dequeue_count:
                    last_attempt.set()
                raise RuntimeError(f"attempt {count} failed")
            if not last_attempt.wait(WAIT):
                raise RuntimeError("the bad message was not retried while its neighbours ran")
            return shipped()
        finally:
            flight.leave()

    with caplog.at_level(logging.ERROR, logger="o365collector"):
        drained = bare_runner(collector, handle).drain()

    assert (drained.count(Outcome.SHIPPED), drained.failures, drained.poisoned) == (2, 3, 1)
    errors = [r.getMessage() for r in caplog.records if POISONED_MESSAGE in r.getMessage()]
    assert len(errors) == 1, errors
    assert "RuntimeError: attempt 3 failed" in errors[0], "poisoned on its last failure, naming its cause"
    assert sorted(c for b, c in flight.calls if b == "bad") == [1, 2, 3], "redelivered until maxDequeueCount"
    assert sorted(b for b, _ in flight.calls if b != "bad") == ["good1", "good2"], "the neighbours ran once"
    poison = raw_client(azurite, collector.settings.poison_queue).peek_messages(max_messages=32)
    assert [decode_message(m.content) for m in poison] == ["bad"]
    assert collector.queue.get_queue_properties().approximate_message_count == 0


def test_a_stop_mid_batch_lets_those_in_flight_finish_and_leaves_the_rest_visible(
    make_collector: CollectorFactory, azurite: Azurite
) -> None:
    """Stop is asked once three handlers run together: those in flight (batchSize, 4, at most) finish and
    are deleted, no other is begun, and every other message is on the queue, visible at once (not waiting
    out a lease)."""
    collector = make_collector()
    bodies = [f"m{n}" for n in range(10)]
    for body in bodies:
        collector.queue.send_message(body)
    flight = InFlight()
    stop = threading.Event()

    def handle(body: str, _id: str, count: int) -> FetchResult:
        flight.enter(body, count)
        try:
            if flight.reached(3):
                stop.set()
            else:
                raise RuntimeError("the batch never ran at the same time")
            return shipped()
        finally:
            flight.leave()

    drained = bare_runner(collector, handle).drain(should_stop=stop.is_set)

    assert drained.stopped
    handled = [b for b, _ in flight.calls]
    assert (drained.completed, drained.failures) == (len(handled), 0), "those in flight finished"
    assert 3 <= len(handled) <= CONCURRENT.batch_size, "no message was begun after the stop"
    left = list(raw_client(azurite, collector.settings.content_queue).receive_messages(max_messages=32))
    assert sorted(handled + [decode_message(m.content) for m in left]) == sorted(bodies), "nothing lost"
    assert not set(handled) & {decode_message(m.content) for m in left}, "what finished was deleted"


def test_the_runner_takes_batch_size_and_new_batch_threshold_from_host_json() -> None:
    host = orjson.loads((Path(__file__).resolve().parents[1] / "host.json").read_bytes())
    queues = host["extensions"]["queues"]
    defaults = QueueRunnerConfig()
    assert defaults.new_batch_threshold is None, "derived from the batch size, as the host does"
    assert (defaults.batch_size, defaults.batch_size // 2) == (queues["batchSize"], queues["newBatchThreshold"])


def counting_receives(collector: Collector) -> list[int]:
    """The number of messages asked for by each receive call on the collector's content queue."""
    asked: list[int] = []
    receive = collector.queue.receive_messages

    def spy(*args: object, **kwargs: object) -> object:
        asked.append(int(kwargs["max_messages"]))  # type: ignore[call-overload]
        return receive(*args, **kwargs)  # type: ignore[arg-type]

    collector.queue.receive_messages = spy  # type: ignore[method-assign, assignment]
    return asked


def test_the_next_batch_waits_until_in_flight_drops_to_half_the_batch_by_default(
    make_collector: CollectorFactory,
) -> None:
    """batchSize 4, newBatchThreshold unset (the host's batchSize / 2 = 2). Handlers finish one at a time,
    each after the runner has seen the one before it end: with 3 in flight the runner waits, and it receives
    again only when 2 or fewer are in flight, so it never asks for fewer than 2 messages."""
    collector = make_collector()
    for n in range(8):
        collector.queue.send_message(f"m{n}")
    asked = counting_receives(collector)
    entered: list[str] = []
    seen = threading.Condition()
    completed = 0

    def handle(body: str, _id: str, _count: int) -> FetchResult:
        with seen:
            turn = len(entered)
            entered.append(body)
            if not seen.wait_for(lambda: completed >= turn, timeout=WAIT):
                raise RuntimeError(f"handler {turn} was never let go")
        return shipped()

    def on_progress(result: DrainResult) -> None:
        nonlocal completed
        with seen:
            completed = result.completed
            seen.notify_all()

    config = QueueRunnerConfig(visibility_timeout=dt.timedelta(0), max_dequeue_count=3, batch_size=4)
    runner = QueueRunner(collector.queue, collector.poison_queue, handle, config, processing_lease=LEASE)
    drained = runner.drain(on_progress=on_progress)

    assert (drained.count(Outcome.SHIPPED), drained.failures, drained.completed) == (8, 0, 8)
    assert asked[:3] == [4, 2, 2], f"the first receive fills every thread, the next ones the free threads: {asked}"
    assert min(asked) >= 2, f"a batch was received with more than newBatchThreshold in flight: {asked}"


def test_a_new_batch_threshold_above_the_batch_size_never_asks_for_no_messages(
    make_collector: CollectorFactory,
) -> None:
    """newBatchThreshold at or above batchSize means 'refill whenever a thread is free', never 'receive 0'."""
    collector = make_collector()
    for n in range(5):
        collector.queue.send_message(f"m{n}")
    asked = counting_receives(collector)
    config = QueueRunnerConfig(
        visibility_timeout=dt.timedelta(0), max_dequeue_count=3, batch_size=2, new_batch_threshold=5
    )
    runner = QueueRunner(collector.queue, collector.poison_queue, lambda *_: shipped(), config, processing_lease=LEASE)
    drained = runner.drain()

    assert (drained.count(Outcome.SHIPPED), drained.completed) == (5, 5)
    assert asked, "the runner received"
    assert min(asked) >= 1, asked
    assert max(asked) <= 2, asked


def test_the_tally_adds_up_records_filtered_and_why_deliveries_wait(make_collector: CollectorFactory) -> None:
    """The run's summary line comes from these sums: each message's records and filtered records, and the
    latest deferral's reason (redacted) as the reason blobs wait."""
    collector = make_collector()
    for n in range(3):
        collector.queue.send_message(f"m{n}")
    collector.queue.send_message("deferred")

    def handle(body: str, _id: str, _count: int) -> FetchResult:
        if body == "deferred":
            return FetchResult(Outcome.DEFERRED, reason="sink answered 503: try later")
        return FetchResult(Outcome.SHIPPED, records=int(body[1:]) + 1, filtered=2)

    drained = bare_runner(collector, handle).drain()

    assert (drained.count(Outcome.SHIPPED), drained.deferred, drained.completed) == (3, 1, 4)
    assert (drained.records, drained.filtered) == (1 + 2 + 3, 3 * 2)
    assert drained.last_error == "sink answered 503: try later"
    assert (drained.failures, drained.poisoned, drained.timed_out, drained.stopped) == (0, 0, False, False)


def test_max_seconds_used_up_begins_nothing_and_says_it_timed_out(make_collector: CollectorFactory) -> None:
    collector = make_collector()
    for n in range(3):
        collector.queue.send_message(f"m{n}")
    handled: list[str] = []

    def handle(body: str, _id: str, _count: int) -> FetchResult:
        handled.append(body)
        return shipped()

    drained = bare_runner(collector, handle).drain(max_seconds=0)

    assert drained.timed_out
    assert (handled, drained.completed) == ([], 0)
    assert collector.queue.get_queue_properties().approximate_message_count == 3


def test_while_a_retry_waits_out_its_delay_the_idle_runner_says_when_it_is_visible_again(
    make_collector: CollectorFactory,
) -> None:
    """A message failed once and put back for visibilityTimeout (2 s): each idle poll reports one waiting
    message and when it comes back; then it ships, and the final tally waits for nothing."""
    collector = make_collector()
    collector.queue.send_message("flaky")
    config = QueueRunnerConfig(visibility_timeout=dt.timedelta(seconds=2), max_dequeue_count=3)
    idle: list[DrainResult] = []

    def handle(_body: str, _id: str, count: int) -> FetchResult:
        if count == 1:
            raise RuntimeError("first attempt fails")
        return shipped()

    started = dt.datetime.now(dt.UTC)
    runner = QueueRunner(collector.queue, collector.poison_queue, handle, config, processing_lease=LEASE)
    drained = runner.drain(on_idle=idle.append)

    assert (drained.count(Outcome.SHIPPED), drained.failures, drained.poisoned) == (1, 1, 0)
    assert idle, "the runner polled while the message waited out its retry delay"
    assert all(r.waiting == 1 and r.visible_again is not None for r in idle), idle
    back = idle[0].visible_again
    assert back is not None
    assert started < back <= started + dt.timedelta(seconds=2 + WAIT)
    assert (drained.waiting, drained.visible_again) == (0, None)


def test_a_stop_between_receiving_and_beginning_begins_nothing_and_leaves_the_batch_visible(
    make_collector: CollectorFactory, azurite: Azurite
) -> None:
    """Stop comes after the batch was received (``should_stop`` says go once, then stop): no message is begun,
    and all of them are visible again at once for the next delivery."""
    collector = make_collector()
    for n in range(3):
        collector.queue.send_message(f"m{n}")
    asked = itertools.count()
    handled: list[str] = []

    def handle(body: str, _id: str, _count: int) -> FetchResult:
        handled.append(body)
        return shipped()

    drained = bare_runner(collector, handle).drain(should_stop=lambda: next(asked) >= 1)

    assert drained.stopped
    assert (handled, drained.completed) == ([], 0)
    left = list(raw_client(azurite, collector.settings.content_queue).receive_messages(max_messages=32))
    assert sorted(decode_message(m.content) for m in left) == ["m0", "m1", "m2"], "visible again at once"


def test_a_drain_stops_when_only_its_own_deferred_copies_are_left(make_collector: CollectorFactory) -> None:
    """The handler deferred a delivery (a copy back on the queue, invisible for a minute): the drain does not
    wait for it, and says one message is left for the next pass."""
    collector = make_collector()
    collector.queue.send_message("m0")
    idle: list[DrainResult] = []

    def handle(body: str, _id: str, _count: int) -> FetchResult:
        collector.queue.send_message(body, visibility_timeout=60)  # as o365collector.deferral does
        return FetchResult(Outcome.DEFERRED, reason="sink down")

    drained = bare_runner(collector, handle).drain(on_idle=idle.append, should_stop=lambda: bool(idle))

    assert not drained.stopped, "ended by itself, without waiting a poll for the deferred copy"
    assert idle == []
    assert (drained.deferred, drained.deferred_waiting, drained.completed) == (1, 1, 1)
    assert (drained.waiting, drained.visible_again) == (0, None)


def test_a_storage_error_in_a_worker_ends_the_drain_with_that_error(make_collector: CollectorFactory) -> None:
    """A message that must be poisoned while the poison queue is gone: the drain raises (for a retry by the
    caller) instead of reporting a clean pass, and the message is not lost."""
    collector = make_collector()
    collector.queue.send_message("unlucky")
    collector.poison_queue.delete_queue()
    config = QueueRunnerConfig(visibility_timeout=dt.timedelta(0), max_dequeue_count=1)

    def handle(_body: str, _id: str, _count: int) -> FetchResult:
        raise RuntimeError("fails for good")

    runner = QueueRunner(collector.queue, collector.poison_queue, handle, config, processing_lease=LEASE)
    with pytest.raises(HttpResponseError):
        runner.drain(max_seconds=WAIT)  # bounded: swallowing the error would leave the message held
    assert collector.queue.get_queue_properties().approximate_message_count == 1


def test_a_processing_lease_beyond_the_queue_s_limit_is_capped_to_seven_days(make_collector: CollectorFactory) -> None:
    collector = make_collector()
    collector.queue.send_message("m0")
    runner = QueueRunner(
        collector.queue, collector.poison_queue, lambda *_: shipped(), CONCURRENT, processing_lease=dt.timedelta(days=8)
    )
    assert runner.drain().completed == 1
