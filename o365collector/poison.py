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

``auto_replay_poison`` does the same by itself after a listing run, once every sink's ``check()``
passes again, at most once per ``O365_AUTO_REPLAY_INTERVAL_MINUTES`` (``O365_AUTO_REPLAY_POISON=false``
turns it off).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.queue import QueueClient, QueueMessage

from .checkpoints import Ledger
from .deferral import DeferralStore
from .errors import MessageFormatError
from .models import FetchTask
from .redaction import redact, summary
from .sinks.base import Sink
from .storage import lease_lost, unreadable_reason

log = logging.getLogger(__name__)

BATCH = 32  # the queue service's maximum per receive
# How long received poison messages stay invisible while a replay handles them; far longer than a
# replay of thousands of messages needs, and they reappear by themselves if the command dies.
HOLD_SECONDS = 600
StreamKey = tuple[str, str]


@dataclass(frozen=True)
class PoisonedBlob:
    """One readable poison message as a dry run shows it: how old, how long the source keeps it, and why."""

    tenant_id: str
    content_type: str
    content_id: str
    content_created: dt.datetime
    content_expiration: dt.datetime
    reason: str
    shipped: bool

    def line(self, now: dt.datetime) -> str:
        left = self.content_expiration - now
        expiry = self.content_expiration.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        when = f"expires in {_span(left)} ({expiry})" if left > dt.timedelta(0) else f"EXPIRED at the source {expiry}"
        action = "would drop (already shipped)" if self.shipped else "would move"
        return (
            f"  {self.tenant_id[:4]}…{self.tenant_id[-4:]} {self.content_type} {self.content_id[-24:]}: "
            f"age {_span(now - self.content_created)}, {when}; {action}; failed: {self.reason}"
        )


def _span(delta: dt.timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if abs(hours) < 48 else f"{hours / 24:.1f} d"


DRY_RUN_LINES = 200  # per-blob lines a dry run prints; --json lists every one


@dataclass
class ReplayResult:
    dry_run: bool
    moved: Counter[StreamKey] = field(default_factory=Counter)
    already_done: Counter[StreamKey] = field(default_factory=Counter)
    unreadable: int = 0
    refused: int = 0
    """Messages the fetcher refuses (forged, misrouted, of a tenant or content type not collected): they stay."""
    blobs: list[PoisonedBlob] = field(default_factory=list)
    """Filled by a dry run only: the details of each readable message."""

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
            "refused": self.refused,
            "moved_by_stream": rows(self.moved),
            "already_shipped_by_stream": rows(self.already_done),
            "blobs": [
                {
                    "tenant_id": b.tenant_id,
                    "content_type": b.content_type,
                    "content_id": b.content_id,
                    "content_created": b.content_created.isoformat(),
                    "content_expiration": b.content_expiration.isoformat(),
                    "already_shipped": b.shipped,
                    "reason": b.reason,
                }
                for b in self.blobs
            ],
        }

    def lines(self, content_queue: str, poison_queue: str, *, now: dt.datetime | None = None) -> list[str]:
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
        if self.refused:
            out.append(
                f"left {self.refused} messages in {poison_queue} that the fetcher refuses (forged or misrouted: "
                "see the `message moved to poison queue … refused` errors); replaying them would not help"
            )
        if self.blobs and now is not None:
            # The most urgent first: a blob that expires at the source before its replay is lost for good.
            urgent = sorted(self.blobs, key=lambda b: b.content_expiration)
            out.append("per blob, the first to expire first (tenant, content type, content id: age, time left, why):")
            out += [b.line(now) for b in urgent[:DRY_RUN_LINES]]
            if len(urgent) > DRY_RUN_LINES:
                out.append(f"  ... and {len(urgent) - DRY_RUN_LINES} more (--json lists every one)")
        return out


Refusal = Callable[[FetchTask], str | None]
"""Why the fetcher would refuse a task (a forged or misrouted message), or None."""


def replay_poison(
    poison: QueueClient,
    content: QueueClient,
    ledger: Ledger,
    *,
    dry_run: bool = False,
    refusal: Refusal | None = None,
) -> ReplayResult:
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
                if _replay_one(message, poison, content, ledger, result, refusal):
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
    message: QueueMessage,
    poison: QueueClient,
    content: QueueClient,
    ledger: Ledger,
    result: ReplayResult,
    refusal: Refusal | None = None,
) -> bool:
    """Handle one message; False means it stays in the poison queue (and must be made visible again)."""
    task = _read_task(message)
    if isinstance(task, str):
        result.unreadable += 1
        log.warning("poison message %s stays where it is: %s", message.id, redact(task))
        return False
    # A forged or misrouted message stays as evidence: replayed, it would only be refused again.
    why = refusal(task) if refusal is not None else None
    if why is not None:
        result.refused += 1
        log.warning("poison message %s stays where it is: the fetcher refuses it: %s", message.id, redact(why))
        return False
    key = (task.tenant_id, task.content_type)
    row = ledger.get(task)
    done = row is not None and row.get("State") in ("done", "lost")
    (result.already_done if done else result.moved)[key] += 1
    if result.dry_run:
        # The ledger keeps the last failure of a blob given back; stored text, so redacted again here.
        error = str(row.get("Error") or "") if row is not None else ""
        reason = summary(error, 300) if error else "no failure recorded in the ledger (see `status`, LAST ERROR)"
        result.blobs.append(
            PoisonedBlob(
                task.tenant_id,
                task.content_type,
                task.content_id,
                task.content_created,
                task.content_expiration,
                reason,
                shipped=done,
            )
        )
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


def auto_replay_poison(
    poison: QueueClient,
    content: QueueClient,
    ledger: Ledger,
    sinks: Sequence[Sink],
    deferrals: DeferralStore,
    *,
    now: dt.datetime,
    interval: dt.timedelta,
    refusal: Refusal | None = None,
) -> ReplayResult | None:
    """After a listing run: replay the poison queue once every sink's ``check()`` passes again.

    Runs at most once per ``interval`` (the last try is kept in the status table, so every instance
    and the command line share it): a flapping sink, or a message that fails for a reason no check
    sees, goes back and forth at that pace at most. None when nothing was replayed.
    """
    try:
        waiting = int(poison.get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return None
    if waiting == 0:
        return None
    last = deferrals.last_auto_replay()
    if last is not None and now - last < interval:
        return None
    for sink in sinks:
        try:
            sink.check()
        except Exception as err:
            reason = f"sink {sink.name} check fails: {redact(str(err))}"
            deferrals.set_last_auto_replay(now, f"not replayed: {reason}")
            log.info("the poison queue holds %d messages; not replayed while %s", waiting, reason)
            return None
    result = replay_poison(poison, content, ledger, refusal=refusal)
    deferrals.set_last_auto_replay(
        now, f"replayed: moved {result.total_moved}, dropped {result.total_done} already shipped"
    )
    log.info(
        "every sink's check passes: replayed the poison queue automatically (moved %d messages back, "
        "dropped %d already shipped, left %d unreadable)",
        result.total_moved,
        result.total_done,
        result.unreadable,
    )
    return result
