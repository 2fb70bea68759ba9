"""``replay-poison``: move the poison queue's messages back to the content queue once the cause is fixed.

A message lands in ``<queue>-poison`` after ``maxDequeueCount`` failed deliveries (a sink refusing
the data, a permission gone missing). Replaying puts it on the content queue as a fresh message
(dequeue count 0), where the normal fetcher ships it. Before moving a message the ledger is asked:
content already shipped (or recorded as lost at the source) is dropped from the poison queue instead,
so replay never ships a blob twice. A message that is not a content task this release can read (not
base64 text, not JSON, another version) stays in the poison queue exactly as it is, visible again, for
a human to look at; it is counted as unreadable and never stops the replay of its neighbours.

Each message is sent to the content queue *before* it is deleted from the poison queue: a crash in
between leaves a duplicate that the ledger skips, never a loss. ``--dry-run`` receives the messages
the same way, reports what would happen and makes them visible again at once.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.queue import QueueClient, QueueMessage

from .checkpoints import Ledger
from .errors import MessageFormatError
from .models import FetchTask
from .redaction import redact
from .storage import lease_lost, unreadable_reason

log = logging.getLogger(__name__)

BATCH = 32  # the queue service's maximum per receive
# How long received poison messages stay invisible while a replay handles them; far longer than a
# replay of thousands of messages needs, and they reappear by themselves if the command dies.
HOLD_SECONDS = 600
StreamKey = tuple[str, str]


@dataclass
class ReplayResult:
    dry_run: bool
    moved: Counter[StreamKey] = field(default_factory=Counter)
    already_done: Counter[StreamKey] = field(default_factory=Counter)
    unreadable: int = 0

    @property
    def total_moved(self) -> int:
        return sum(self.moved.values())

    @property
    def total_done(self) -> int:
        return sum(self.already_done.values())

    def to_dict(self) -> dict[str, Any]:
        def rows(counts: Counter[StreamKey]) -> list[dict[str, Any]]:
            return [{"tenant_id": t, "content_type": c, "messages": n} for (t, c), n in sorted(counts.items())]

        return {
            "dry_run": self.dry_run,
            "moved": self.total_moved,
            "already_shipped": self.total_done,
            "unreadable": self.unreadable,
            "moved_by_stream": rows(self.moved),
            "already_shipped_by_stream": rows(self.already_done),
        }

    def lines(self, content_queue: str, poison_queue: str) -> list[str]:
        verb = "would move" if self.dry_run else "moved"
        out = [f"{verb} {self.total_moved} messages from {poison_queue} back to {content_queue}"]
        out += [f"  {t} {c}: {n}" for (t, c), n in sorted(self.moved.items())]
        if self.already_done:
            drop = "would drop" if self.dry_run else "dropped"
            out.append(f"{drop} {self.total_done} messages whose content was already shipped (or lost at the source)")
            out += [f"  {t} {c}: {n}" for (t, c), n in sorted(self.already_done.items())]
        if self.unreadable:
            out.append(
                f"left {self.unreadable} unreadable messages in {poison_queue} (not a content task this release "
                "can read): inspect them in Storage Explorer"
            )
        return out


def replay_poison(poison: QueueClient, content: QueueClient, ledger: Ledger, *, dry_run: bool = False) -> ReplayResult:
    result = ReplayResult(dry_run=dry_run)
    held: list[QueueMessage] = []  # messages to make visible again when we are done
    seen: set[str] = set()
    try:
        while True:
            try:
                received = poison.receive_messages(
                    messages_per_page=BATCH, max_messages=BATCH, visibility_timeout=HOLD_SECONDS
                )
                batch = list(received)
            except ResourceNotFoundError:
                break  # no poison queue: nothing was ever poisoned
            fresh = [m for m in batch if m.id not in seen]
            if not fresh:
                break
            for message in fresh:
                seen.add(message.id)
                if _replay_one(message, poison, content, ledger, result):
                    continue
                held.append(message)
    finally:
        for message in held:
            _release(poison, message)
    if not dry_run and (result.total_moved or result.total_done):
        log.info(
            "replayed the poison queue: moved %d messages back, dropped %d already shipped, left %d unreadable",
            result.total_moved,
            result.total_done,
            result.unreadable,
        )
    return result


def _replay_one(
    message: QueueMessage, poison: QueueClient, content: QueueClient, ledger: Ledger, result: ReplayResult
) -> bool:
    """Handle one message; False means it stays in the poison queue (and must be made visible again)."""
    task = _read_task(message)
    if isinstance(task, str):
        result.unreadable += 1
        log.warning("poison message %s stays where it is: %s", message.id, redact(task))
        return False
    key = (task.tenant_id, task.content_type)
    row = ledger.get(task)
    done = row is not None and row.get("State") in ("done", "lost")
    (result.already_done if done else result.moved)[key] += 1
    if result.dry_run:
        return False
    if not done:
        content.send_message(message.content)
    try:
        poison.delete_message(message)
    except HttpResponseError as err:
        if not lease_lost(err):  # otherwise another replay removed it meanwhile
            raise
    return True


def _read_task(message: QueueMessage) -> FetchTask | str:
    """The content task a poison message holds, or why it holds none this release can read."""
    unreadable = unreadable_reason(message)
    if unreadable is not None:
        return f"the message is unreadable: {unreadable}"
    try:
        return FetchTask.from_message(message.content)
    except MessageFormatError as err:
        return str(err)


def _release(poison: QueueClient, message: QueueMessage) -> None:
    try:
        # By id, not by message: only the visibility changes, the stored text stays exactly as it is.
        poison.update_message(message.id, message.pop_receipt, visibility_timeout=0)
    except HttpResponseError as err:
        if not lease_lost(err):
            raise
