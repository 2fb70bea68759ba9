"""The command line's stand-in for the Functions host's queue trigger.

It does for the content queue what the host does (host.json ``extensions.queues``): receive
messages with a processing lease, call the handler, delete the message on success; on failure make it
visible again after ``visibilityTimeout``; once a message has failed ``maxDequeueCount`` times, move
it to the ``-poison`` queue. The handler is the same ``Collector.process_message`` the trigger calls.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient, QueueMessage

from .config import QueueRunnerConfig
from .fetcher import FetchResult, Outcome

log = logging.getLogger(__name__)

POISONED_MESSAGE = "message moved to poison queue"
IDLE_POLL_SECONDS = 1.0


@dataclass
class DrainResult:
    outcomes: dict[str, int] = field(default_factory=dict)
    records: int = 0
    filtered: int = 0
    failures: int = 0
    poisoned: int = 0
    timed_out: bool = False

    def count(self, outcome: Outcome) -> int:
        return self.outcomes.get(outcome.value, 0)


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
        self._lease = max(1, int(processing_lease.total_seconds()))
        self._sleep = sleep
        self._monotonic = monotonic

    def drain(
        self,
        *,
        max_seconds: float | None = None,
        on_progress: Callable[[DrainResult], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> DrainResult:
        """Process until the queue is empty (invisible messages that will come back included)."""
        result = DrainResult()
        deadline = None if max_seconds is None else self._monotonic() + max_seconds
        while not should_stop():
            if deadline is not None and self._monotonic() >= deadline:
                result.timed_out = True
                break
            batch = list(
                self._queue.receive_messages(
                    messages_per_page=self._config.batch_size,
                    visibility_timeout=self._lease,
                    max_messages=self._config.batch_size,
                )
            )
            for message in batch:
                self._handle(message, result)
            if on_progress is not None and batch:
                on_progress(result)
            if batch:
                continue
            if self._queue.get_queue_properties().approximate_message_count == 0:
                break
            # Messages exist but are invisible (retry delay or another worker): wait for them.
            self._sleep(IDLE_POLL_SECONDS)
        return result

    def _handle(self, message: QueueMessage, result: DrainResult) -> None:
        dequeue_count = message.dequeue_count or 1
        if dequeue_count > self._config.max_dequeue_count:
            # Delivered more often than allowed without completing (e.g. the worker kept crashing).
            self._to_poison(message, "delivered more than maxDequeueCount times", result)
            return
        try:
            outcome = self._handler(message.content, message.id, dequeue_count)
        except Exception as err:
            result.failures += 1
            if dequeue_count >= self._config.max_dequeue_count:
                self._to_poison(message, f"{type(err).__name__}: {err}", result)
            else:
                # A retry (STYLE: DEBUG); the last failure is logged at ERROR when the message is poisoned,
                # and the status table keeps the latest fetch error for `status`.
                log.debug(
                    "message %s failed (attempt %d of %d), retrying in %ss: %s",
                    message.id,
                    dequeue_count,
                    self._config.max_dequeue_count,
                    int(self._config.visibility_timeout.total_seconds()),
                    err,
                )
                self._retry_later(message)
            return
        result.outcomes[outcome.outcome.value] = result.outcomes.get(outcome.outcome.value, 0) + 1
        result.records += outcome.records
        result.filtered += outcome.filtered
        self._delete(message)

    def _retry_later(self, message: QueueMessage) -> None:
        try:
            self._queue.update_message(message, visibility_timeout=int(self._config.visibility_timeout.total_seconds()))
        except ResourceNotFoundError:
            pass  # our lease ran out and someone else has it now

    def _to_poison(self, message: QueueMessage, reason: str, result: DrainResult) -> None:
        self._poison.send_message(message.content)
        self._delete(message)
        result.poisoned += 1
        log.error("%s: message %s after %s attempts: %s", POISONED_MESSAGE, message.id, message.dequeue_count, reason)

    def _delete(self, message: QueueMessage) -> None:
        try:
            self._queue.delete_message(message)
        except ResourceNotFoundError:
            # The lease ran out before we finished and another delivery owns it; the ledger makes that harmless.
            log.warning("message %s was re-delivered before it could be deleted", message.id)
