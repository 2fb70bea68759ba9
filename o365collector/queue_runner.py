"""The command line's stand-in for the Functions host's queue trigger.

It does for the content queue what the host does (host.json ``extensions.queues``): receive a batch
of messages under a processing lease, call the handler for each, delete the message on success; on
failure make it visible again after ``visibilityTimeout``; once a message has failed
``maxDequeueCount`` times, move it to the ``-poison`` queue. The handler is the same
``Collector.process_message`` the trigger calls.

Like the host, the runner handles the messages of a batch at once, each on a thread of a pool of
``batchSize`` threads, and receives the next batch when the messages in flight drop to
``newBatchThreshold``; each message is deleted, put back or poisoned on its own, when its handler
returns, never waiting for its neighbours. Unlike the host (up to ``batchSize + newBatchThreshold``
in flight) it takes only as many messages as it has free threads, so that no received message waits
for a thread: a stop (Ctrl-C, SIGTERM) finishes at most ``batchSize`` blobs.

The runner keeps every message it holds invisible, those being worked on and any not begun yet, by
extending their visibility every half lease (keeping each new pop receipt for the delete or update
after it): a slow sink never lets a message reappear and be delivered again while this runner still
holds it.

A message that is not base64 UTF-8 text (the host's encoding) cannot be handled by any retry: it goes
to the poison queue at once, exactly as it came, with an ERROR naming it and why, and the rest of
its batch is handled as usual.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

from azure.core.exceptions import HttpResponseError
from azure.storage.queue import QueueClient, QueueMessage

from .config import QueueRunnerConfig
from .fetcher import FetchResult, Outcome
from .invocation import TiedThreadPool
from .leases import Heartbeat
from .redaction import redact
from .storage import lease_lost, unreadable_reason

log = logging.getLogger(__name__)

POISONED_MESSAGE = "message moved to poison queue"
IDLE_POLL_SECONDS = 1.0
MAX_LEASE_SECONDS = 7 * 24 * 3600  # the queue service refuses longer visibility timeouts
# Moved to the poison queue by the handler itself (a forged or misrouted message), then completed.
_REFUSED: Outcome | None = getattr(Outcome, "REFUSED", None)


@dataclass
class DrainResult:
    outcomes: dict[str, int] = field(default_factory=dict)
    records: int = 0
    filtered: int = 0
    failures: int = 0
    poisoned: int = 0
    timed_out: bool = False
    completed: int = 0  # messages finished for good: deleted after the handler, or poisoned
    stopped: bool = False  # ``should_stop`` ended the drain before the queue was empty
    last_error: str | None = None  # the latest handler failure, redacted, for the progress line
    # What an idle runner waits for: messages on the queue none of which it can receive yet (a
    # retry delay, or another worker's lease), and the earliest time one of ours is visible again.
    waiting: int = 0
    visible_again: dt.datetime | None = None
    # Messages still on the queue when the drain ended, all of them (as far as the runner can tell)
    # deferred copies waiting out a failing sink's backoff (o365collector.deferral): the next pass's.
    deferred_waiting: int = 0

    def count(self, outcome: Outcome) -> int:
        return self.outcomes.get(outcome.value, 0)

    @property
    def deferred(self) -> int:
        """Deliveries the handler deferred (a copy back on the queue with a delay; never toward poison)."""
        return self.count(Outcome.DEFERRED)


Handler = Callable[[str, str, int], FetchResult]


class QueueRunner:
    def __init__(
        self,
        queue: QueueClient,
        poison_queue: QueueClient,
        handler: Handler,
        config: QueueRunnerConfig,
        *,
        processing_lease: dt.timedelta,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = queue
        self._poison = poison_queue
        self._handler = handler
        self._config = config
        self._lease = min(max(1, int(processing_lease.total_seconds())), MAX_LEASE_SECONDS)
        self._sleep = sleep
        self._monotonic = monotonic
        # The host's two numbers: threads (messages in flight at most), and the count in flight at or
        # below which the next batch is received.
        self._threads = max(1, config.batch_size)
        threshold = config.new_batch_threshold if config.new_batch_threshold is not None else self._threads // 2
        self._refill_at = min(max(0, threshold), self._threads - 1)
        self._retrying: dict[str, dt.datetime] = {}  # messages this drain put back, and when each is visible again
        # Guards the drain's result and ``_retrying``: the pool's threads update them as their messages end.
        self._lock = threading.Lock()

    def drain(
        self,
        *,
        max_seconds: float | None = None,
        on_progress: Callable[[DrainResult], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        on_idle: Callable[[DrainResult], None] | None = None,
    ) -> DrainResult:
        """Process until the queue is empty (invisible messages that will come back included).

        ``on_progress`` is called as messages finish, ``on_idle`` at each poll while only invisible
        messages are left (``waiting`` and ``visible_again`` say what for); both on the calling thread,
        with a copy of the tally so far. ``should_stop`` is asked before each message is begun: once
        it says stop, no message is begun, those in flight finish, and those received but not begun
        are made visible again at once. ``max_seconds`` stops the taking of new messages the same way.
        """
        result = DrainResult()
        self._retrying = {}
        deadline = None if max_seconds is None else self._monotonic() + max_seconds
        in_flight: set[Future[None]] = set()
        failed: BaseException | None = None  # a storage error no message's handling could absorb

        def stopping() -> bool:
            if should_stop():
                with self._lock:
                    result.stopped = True
                return True
            return False

        with _HeldMessages(self._queue, self._lease) as held, TiedThreadPool(
            self._threads, thread_name_prefix="queue-runner"
        ) as pool:
            try:
                while True:
                    finished = {f for f in in_flight if f.done()}
                    in_flight -= finished
                    failed = failed or _first_error(finished)
                    if finished and on_progress is not None:
                        on_progress(self._snapshot(result))
                    if failed is not None or stopping():
                        break
                    if deadline is not None and self._monotonic() >= deadline:
                        result.timed_out = True
                        break
                    if len(in_flight) > self._refill_at:
                        wait(in_flight, timeout=IDLE_POLL_SECONDS, return_when=FIRST_COMPLETED)
                        continue
                    batch = self._receive(self._threads - len(in_flight))
                    if batch:
                        with self._lock:
                            result.waiting, result.visible_again = 0, None
                            for message in batch:
                                self._retrying.pop(message.id, None)
                        held.add(batch)
                        for message in batch:
                            in_flight.add(pool.submit(self._begin, message, held, result, stopping))
                        continue
                    if in_flight:
                        # Nothing visible now: poll again when one of ours ends, or after a while (messages
                        # put back by others, or ours coming back after their retry delay).
                        wait(in_flight, timeout=IDLE_POLL_SECONDS, return_when=FIRST_COMPLETED)
                        continue
                    if not self._idle(result, on_idle):
                        break
            finally:
                # Whatever ended the drain: what is in flight finishes (each message released on its own);
                # what was received and never begun is made visible again by ``held`` on leaving.
                done, _ = wait(in_flight)
                failed = failed or _first_error(done)
        if done and on_progress is not None:
            on_progress(self._snapshot(result))
        if failed is not None:
            raise failed
        result.waiting, result.visible_again = 0, None
        return result

    def _receive(self, count: int) -> list[QueueMessage]:
        return list(
            self._queue.receive_messages(
                messages_per_page=count,
                visibility_timeout=self._lease,
                max_messages=count,
            )
        )

    def _idle(self, result: DrainResult, on_idle: Callable[[DrainResult], None] | None) -> bool:
        """With nothing in flight and nothing received: False when the drain is over, else wait a poll."""
        waiting = self._queue.get_queue_properties().approximate_message_count or 0
        with self._lock:
            result.waiting = waiting
            if waiting == 0:
                return False
            if waiting <= result.deferred:
                # What is left may be nothing but copies this drain deferred for minutes to an hour:
                # waiting for them would keep a one-pass `run` going for as long as the sink is down.
                # Counted per deferral, so the guess errs towards stopping; a message still retrying
                # is not lost, only left to the next pass.
                result.deferred_waiting = waiting
                return False
            # Messages exist but are invisible (retry delay or another worker): wait for them.
            result.visible_again = min(self._retrying.values(), default=None)
        if on_idle is not None:
            on_idle(self._snapshot(result))
        self._sleep(IDLE_POLL_SECONDS)
        return True

    def _snapshot(self, result: DrainResult) -> DrainResult:
        with self._lock:
            return copy.deepcopy(result)

    def _begin(
        self, message: QueueMessage, held: _HeldMessages, result: DrainResult, stopping: Callable[[], bool]
    ) -> None:
        if stopping():
            return  # not begun: ``held`` makes it visible again when the drain ends
        self._handle(message, held, result)

    def _handle(self, message: QueueMessage, held: _HeldMessages, result: DrainResult) -> None:
        dequeue_count = message.dequeue_count or 1
        unreadable = unreadable_reason(message)
        if unreadable is not None:
            # No retry can read it, and the handler must not see it: poisoned now, as it came, so nothing is lost.
            self._to_poison(message, held, f"the message is unreadable: {unreadable}", result)
            return
        if dequeue_count > self._config.max_dequeue_count:
            # Delivered more often than allowed without completing (e.g. the worker kept crashing).
            self._to_poison(message, held, "delivered more than maxDequeueCount times", result)
            return
        try:
            outcome = self._handler(message.content, message.id, dequeue_count)
        except Exception as err:
            error = redact(f"{type(err).__name__}: {err}")
            with self._lock:
                result.failures += 1
                result.last_error = error
                first = result.failures == 1
            if first and dequeue_count < self._config.max_dequeue_count:
                # The first failure of a pass is a WARNING with its cause: a sink that is down must not
                # be silent for minutes. The retries after it stay at DEBUG (the progress line counts them).
                log.warning(
                    "message %s failed (attempt %d of %d), retrying in %ss: %s",
                    message.id,
                    dequeue_count,
                    self._config.max_dequeue_count,
                    int(self._config.visibility_timeout.total_seconds()),
                    error,
                )
            if dequeue_count >= self._config.max_dequeue_count:
                self._to_poison(message, held, f"{type(err).__name__}: {err}", result)
            else:
                # A retry (STYLE: DEBUG); the last failure is logged at ERROR when the message is poisoned,
                # and the status table keeps the latest fetch error for `status`.
                log.debug(
                    "message %s failed (attempt %d of %d), retrying in %ss: %s",
                    message.id,
                    dequeue_count,
                    self._config.max_dequeue_count,
                    int(self._config.visibility_timeout.total_seconds()),
                    redact(str(err)),
                )
                self._retry_later(message, held)
            return
        reason = redact(outcome.reason) if outcome.outcome is Outcome.DEFERRED and outcome.reason else None
        with self._lock:
            result.outcomes[outcome.outcome.value] = result.outcomes.get(outcome.outcome.value, 0) + 1
            result.records += outcome.records
            result.filtered += outcome.filtered
            if reason is not None:
                result.last_error = reason  # the progress line says why blobs wait
            if _REFUSED is not None and outcome.outcome is _REFUSED:
                result.poisoned += 1
        self._delete(message, held)
        with self._lock:
            result.completed += 1

    def _retry_later(self, message: QueueMessage, held: _HeldMessages) -> None:
        receipt = held.release(message.id)
        if receipt is None:
            return  # our lease was lost and another delivery has it now
        try:
            # By id, not by message: only the visibility changes, the stored text stays as it is.
            updated = self._queue.update_message(
                message.id, receipt, visibility_timeout=int(self._config.visibility_timeout.total_seconds())
            )
            if updated.next_visible_on is not None:
                with self._lock:
                    self._retrying[message.id] = updated.next_visible_on
        except HttpResponseError as err:
            if not lease_lost(err):
                raise

    def _to_poison(self, message: QueueMessage, held: _HeldMessages, reason: str, result: DrainResult) -> None:
        # The text as received: an unreadable message is sent on unencoded (see o365collector.storage).
        self._poison.send_message(message.content)
        self._delete(message, held)
        with self._lock:
            result.poisoned += 1
            result.completed += 1
        log.error(
            "%s: message %s after %s attempts: %s", POISONED_MESSAGE, message.id, message.dequeue_count, redact(reason)
        )

    def _delete(self, message: QueueMessage, held: _HeldMessages) -> None:
        receipt = held.release(message.id)
        if receipt is not None:
            try:
                self._queue.delete_message(message.id, receipt)
                return
            except HttpResponseError as err:
                if not lease_lost(err):
                    raise
        # The lease was lost before we finished and another delivery owns it; the ledger makes that harmless.
        log.warning("message %s was re-delivered before it could be deleted", message.id)


def _first_error(futures: Iterable[Future[None]]) -> BaseException | None:
    for future in futures:
        if not future.cancelled() and future.exception() is not None:
            return future.exception()
    return None


class _HeldMessages:
    """The messages this runner holds, kept invisible until each is released.

    A heartbeat extends the visibility of every held message to the full lease every half lease and
    keeps the new pop receipt, one message at a time: a message's renewal failing never touches its
    neighbours, and a worker releasing its message waits for one renewal call at most. ``release``
    stops renewing a message and hands over its latest pop receipt for the delete or update (None when
    the lease was lost to another delivery). Messages still held when the drain ends (never begun: a
    stop, an error) are made visible again at once, for the next delivery.
    """

    def __init__(self, queue: QueueClient, lease_seconds: int) -> None:
        self._queue = queue
        self._lease = lease_seconds
        self._receipts: dict[str, str] = {}
        # Held while a message is renewed, so a released message is never renewed after ``release`` returns.
        self._lock = threading.Lock()
        self._heartbeat = Heartbeat(self._renew, lease_seconds / 2, name="queue message lease renewal")

    def __enter__(self) -> _HeldMessages:
        self._heartbeat.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._heartbeat.stop()
        with self._lock:
            left, self._receipts = self._receipts, {}
        for message_id, receipt in left.items():
            try:
                self._queue.update_message(message_id, receipt, visibility_timeout=0)
            except Exception as err:  # best effort: otherwise it comes back when its lease runs out
                log.debug("message %s stays invisible until its lease runs out: %s", message_id, redact(str(err)))

    def add(self, messages: Iterable[QueueMessage]) -> None:
        with self._lock:
            self._receipts.update((m.id, str(m.pop_receipt)) for m in messages)

    def release(self, message_id: str) -> str | None:
        with self._lock:
            return self._receipts.pop(message_id, None)

    def _renew(self) -> bool:
        with self._lock:
            held = list(self._receipts)
        for message_id in held:
            with self._lock:
                receipt = self._receipts.get(message_id)
                if receipt is None:
                    continue  # released meanwhile
                try:
                    updated = self._queue.update_message(message_id, receipt, visibility_timeout=self._lease)
                except Exception as err:
                    if isinstance(err, HttpResponseError) and lease_lost(err):
                        # Our lease had already lapsed and another delivery received it: nothing left to keep.
                        del self._receipts[message_id]
                        log.warning("lost the lease on message %s while holding it", message_id)
                        continue
                    # Storage unreachable or busy: the lease has half its time left for the next round.
                    log.warning("could not renew the lease on message %s: %s", message_id, redact(str(err)))
                else:
                    self._receipts[message_id] = str(updated.pop_receipt)
        return True
