"""Queue side: claim a unit (a content blob, a Graph window) in the ledger, fetch it, ship it, mark it done.

The unit's source answers through the contract in ``o365collector.sources.base``: the fetcher asks
for the client of the message's (tenant, stream) and never looks at which source it is.

Idempotent by content id: a blob the ledger has as done is skipped, whether the message is a queue
redelivery or a duplicate from overlapping listings. A blob is marked done only after every sink
accepted all of its records. Any failure raises, so the Functions host (or the CLI runner) delivers
the message again and, after ``maxDequeueCount`` attempts, moves it to the poison queue.
Content the API no longer has (AF20051 expired, AF20050 gone) cannot be fetched by any retry: it is
recorded as lost in the ledger and logged at ERROR with its content id, and the message completes.

A message is checked before it claims anything: its tenant and content type must be collected by this
deployment, and its contentUri must be the content path of its own tenant and content id on the API
host. Otherwise (a forged or misrouted message) it raises ``RefusedMessageError`` and the handler
moves it to the poison queue at once; so does a blob that can never ship (malformed, too large),
after giving its claim back. Without the check, a message pairing a real content id with a URI that
answers ``[]`` would mark the real blob done with no records.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import orjson

from .checkpoints import ClaimStatus, Ledger
from .errors import (
    CollectorError,
    ContentUnavailableError,
    MalformedContentError,
    RefusedMessageError,
    UnknownTenantError,
)
from .filtering import RecordFilter
from .leases import ClaimRenewal
from .models import BlobContext, FetchTask
from .redaction import printable
from .sinks.base import Sink
from .sources.base import SourceClient, UnitHistory

log = logging.getLogger(__name__)

EXPIRED_MESSAGE = "content expired before delivery"


class Outcome(StrEnum):
    SHIPPED = "shipped"
    SKIPPED_DONE = "skipped_done"
    SKIPPED_BUSY = "skipped_busy"
    LOST = "lost"
    # The message was moved to the poison queue by the handler itself (forged, misrouted, or a blob
    # that can never ship) and completes: the queue must not redeliver it. Count it as poisoned.
    REFUSED = "refused"
    # A sink or the API kept failing: the handler put a copy back on the queue with a growing delay
    # (o365collector.deferral) and completes this delivery, which must not count toward poison.
    DEFERRED = "deferred"
    # The unit waits for the one before it (``UnitNotReadyError``): the handler put the message back with a
    # short delay and completes this delivery, which is no failure and must not count toward poison.
    WAITING = "waiting"


@dataclass(frozen=True, slots=True)
class FetchResult:
    outcome: Outcome
    records: int = 0
    seconds: float = 0.0
    reason: str | None = None  # why content was LOST (the service's answer) or the message REFUSED
    filtered: int = 0  # records dropped by the O365_FILTER_* settings


class Fetcher:
    def __init__(
        self,
        *,
        ledger: Ledger,
        sinks_for_tenant: Callable[[str], Sequence[Sink]],
        client_for: Callable[[str, str], SourceClient],
        history: UnitHistory,
        claim_lease: dt.timedelta,
        clock: Callable[[], dt.datetime],
        record_filter: RecordFilter | None = None,
    ) -> None:
        """``client_for(tenant_id, stream)``: the source's client; ``history``: what units leave for the next."""
        self._filter = record_filter or RecordFilter()
        self._ledger = ledger
        self._sinks_for_tenant = sinks_for_tenant
        self._client_for = client_for
        self._history = history
        self._lease = claim_lease
        self._clock = clock

    def accepted_client(self, task: FetchTask) -> SourceClient:
        """The client for ``task``'s tenant and stream, if the message may be acted on; else ``RefusedMessageError``."""
        try:
            client = self._client_for(task.tenant_id, task.content_type)
        except UnknownTenantError as err:
            shown = printable(task.tenant_id)
            raise RefusedMessageError(f"tenant {shown!r} is not configured in this deployment") from err
        tenant = client.tenant
        if task.content_type not in tenant.streams:
            raise RefusedMessageError(
                f"content type {printable(task.content_type)!r} is not collected for tenant {tenant.tenant_id} "
                f"(collected: {', '.join(tenant.streams)})"
            )
        problem = client.unit_problem(task)
        if problem is not None:
            raise RefusedMessageError(problem)
        return client

    def process(self, task: FetchTask, *, delivery_id: str) -> FetchResult:
        started = time.monotonic()
        fields = _log_fields(task)
        shown = fields["content_id"]
        client = self.accepted_client(task)  # before the claim: a refused message marks nothing done or lost
        claim = self._ledger.claim(task, delivery_id, self._clock(), self._lease)
        if claim.status is ClaimStatus.DONE or claim.status is ClaimStatus.LOST:
            log.debug("content %s already %s: skipped", shown, claim.status.value, extra=fields)
            return FetchResult(Outcome.SKIPPED_DONE)
        if claim.status is ClaimStatus.BUSY:
            log.debug("content %s is being shipped by another delivery: skipped", shown, extra=fields)
            return FetchResult(Outcome.SKIPPED_BUSY)

        # Renewed while the blob is fetched and shipped, however slow the sink: the claim never lapses while
        # this delivery is alive, so no other delivery ships the blob meanwhile.
        with ClaimRenewal(self._ledger, claim, self._lease, self._clock, content_id=shown) as renewal:
            try:
                # An audit blob is held as the bytes served and parsed only as sinks read them (o365collector.content).
                unit = client.fetch_unit(task, self._history)
            except MalformedContentError as err:
                self._ledger.release(renewal.stop(), str(err))
                raise RefusedMessageError(str(err)) from err
            except ContentUnavailableError as err:
                self._ledger.mark_lost(renewal.stop(), str(err), self._clock())
                lost = dict(fields, content_created=task.content_created.isoformat(), reason=str(err))
                log.error("%s %s", EXPIRED_MESSAGE, orjson.dumps(lost).decode(), extra=fields)
                return FetchResult(Outcome.LOST, seconds=time.monotonic() - started, reason=str(err))
            except CollectorError as err:
                self._ledger.release(renewal.stop(), str(err))
                raise

            context = BlobContext(task.tenant_id, task.content_type, task.content_id, task.content_created)
            try:
                to_ship, filtered = unit.to_ship(self._filter)
                for sink in self._sinks_for_tenant(task.tenant_id):
                    sink.send(to_ship, context)
                unit.settle()  # validation ran meanwhile; a blob that is not valid JSON is never marked done
            except MalformedContentError as err:  # found by the validation while the sinks read (nothing was sent)
                self._ledger.release(renewal.stop(), str(err))
                raise RefusedMessageError(str(err)) from err
            except Exception as err:
                self._ledger.release(renewal.stop(), f"{type(err).__name__}: {err}")
                raise
        self._ledger.mark_done(claim, len(to_ship), self._clock())
        seconds = time.monotonic() - started
        summary: dict[str, object] = {**fields, "records": len(to_ship), "seconds": round(seconds, 3)}
        log.debug("content shipped %s", orjson.dumps(summary).decode(), extra=fields)
        return FetchResult(Outcome.SHIPPED, len(to_ship), seconds, filtered=filtered)


def _log_fields(task: FetchTask) -> dict[str, str]:
    """The task's ids for logs, control characters escaped: a message's text is not to be trusted."""
    return {
        "tenant_id": printable(task.tenant_id),
        "content_type": printable(task.content_type),
        "content_id": printable(task.content_id),
    }
