"""Queue side: claim a content blob in the ledger, fetch it, ship it through every sink, mark it done.

Idempotent by content id: a blob the ledger has as done is skipped, whether the message is a queue
redelivery or a duplicate from overlapping listings. A blob is marked done only after every sink
accepted all of its records. Any failure raises, so the Functions host (or the CLI runner) delivers
the message again and, after ``maxDequeueCount`` attempts, moves it to the poison queue.
Content the API no longer has (AF20051 expired, AF20050 gone) cannot be fetched by any retry: it is
recorded as lost in the ledger and logged at ERROR with its content id, and the message completes.
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
from .content import ContentRecords
from .errors import CollectorError, ContentUnavailableError
from .filtering import RecordFilter
from .management_api import ManagementApiClient
from .models import BlobContext, FetchTask
from .sinks.base import Sink

log = logging.getLogger(__name__)

EXPIRED_MESSAGE = "content expired before delivery"


class Outcome(StrEnum):
    SHIPPED = "shipped"
    SKIPPED_DONE = "skipped_done"
    SKIPPED_BUSY = "skipped_busy"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class FetchResult:
    outcome: Outcome
    records: int = 0
    seconds: float = 0.0
    reason: str | None = None  # why content was LOST (the service's answer)
    filtered: int = 0  # records dropped by the O365_FILTER_* settings


class Fetcher:
    def __init__(
        self,
        *,
        ledger: Ledger,
        sinks_for_tenant: Callable[[str], Sequence[Sink]],
        api_for_tenant: Callable[[str], ManagementApiClient],
        claim_lease: dt.timedelta,
        clock: Callable[[], dt.datetime],
        record_filter: RecordFilter | None = None,
    ) -> None:
        self._filter = record_filter or RecordFilter()
        self._ledger = ledger
        self._sinks_for_tenant = sinks_for_tenant
        self._api_for_tenant = api_for_tenant
        self._lease = claim_lease
        self._clock = clock

    def process(self, task: FetchTask, *, delivery_id: str) -> FetchResult:
        started = time.monotonic()
        fields = {"tenant_id": task.tenant_id, "content_type": task.content_type, "content_id": task.content_id}
        claim = self._ledger.claim(task, delivery_id, self._clock(), self._lease)
        if claim.status is ClaimStatus.DONE or claim.status is ClaimStatus.LOST:
            log.debug("content %s already %s: skipped", task.content_id, claim.status.value, extra=fields)
            return FetchResult(Outcome.SKIPPED_DONE)
        if claim.status is ClaimStatus.BUSY:
            log.debug("content %s is being shipped by another delivery: skipped", task.content_id, extra=fields)
            return FetchResult(Outcome.SKIPPED_BUSY)

        try:
            # Held as the bytes served and parsed only as sinks read them: see o365collector.content.
            records = self._api_for_tenant(task.tenant_id).fetch_records(task.content_uri)
        except ContentUnavailableError as err:
            self._ledger.mark_lost(claim, str(err), self._clock())
            lost = dict(fields, content_created=task.content_created.isoformat(), reason=str(err))
            log.error("%s %s", EXPIRED_MESSAGE, orjson.dumps(lost).decode(), extra=fields)
            return FetchResult(Outcome.LOST, seconds=time.monotonic() - started, reason=str(err))
        except CollectorError as err:
            self._ledger.release(claim, str(err))
            raise

        context = BlobContext(task.tenant_id, task.content_type, task.content_id, task.content_created)
        try:
            to_ship, filtered = self._filter.apply(records)
            for sink in self._sinks_for_tenant(task.tenant_id):
                sink.send(to_ship, context)
            if isinstance(records, ContentRecords):
                records.settle()  # validation ran meanwhile; a blob that is not valid JSON is never marked done
        except Exception as err:
            self._ledger.release(claim, f"{type(err).__name__}: {err}")
            raise
        self._ledger.mark_done(claim, len(to_ship), self._clock())
        seconds = time.monotonic() - started
        summary: dict[str, object] = {**fields, "records": len(to_ship), "seconds": round(seconds, 3)}
        log.debug("content shipped %s", orjson.dumps(summary).decode(), extra=fields)
        return FetchResult(Outcome.SHIPPED, len(to_ship), seconds, filtered=filtered)
