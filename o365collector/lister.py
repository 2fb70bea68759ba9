"""Timer side: for each tenant and content type, plan windows, list every page, enqueue, advance.

The order is the guarantee: every blob of a window is on the queue before the checkpoint moves past
the window, and the checkpoint moves under the ETag it was read with. A crash anywhere means the next
run lists the window again; the ledger makes the repeat harmless. One stream failing (a permission,
a disabled subscription, throttling that outlasts the retries) is reported and the others go on.
A run stops starting windows when its time budget is spent and leaves the rest for the next run.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from .checkpoints import CheckpointConflictError, CheckpointStore
from .config import CollectionPolicy, TenantConfig
from .errors import CollectorError
from .management_api import ManagementApiClient
from .models import FetchTask
from .windows import lag, plan_windows

log = logging.getLogger(__name__)

SUMMARY_MESSAGE = "lister run complete"
FAILED_MESSAGE = "lister run failed"


class TaskQueue(Protocol):
    def send_message(self, content: str) -> object: ...


@dataclass
class StreamResult:
    tenant_id: str
    content_type: str
    windows: int = 0
    windows_left: int = 0
    blobs_listed: int = 0
    blobs_enqueued: int = 0
    blobs_already_queued: int = 0
    cursor: dt.datetime | None = None
    lag_seconds: float | None = None
    throttled: int = 0
    error: str | None = None
    error_code: str | None = None
    lost_from: dt.datetime | None = None
    lost_to: dt.datetime | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> dict[str, object]:
        return {
            "tenant_id": self.tenant_id,
            "content_type": self.content_type,
            "windows": self.windows,
            "windows_left": self.windows_left,
            "blobs_listed": self.blobs_listed,
            "blobs_enqueued": self.blobs_enqueued,
            "blobs_already_queued": self.blobs_already_queued,
            "cursor": self.cursor.isoformat() if self.cursor else None,
            "lag_seconds": self.lag_seconds,
            "throttled": self.throttled,
            "error_code": self.error_code,
            "error": self.error,
        }


@dataclass
class ListerResult:
    streams: list[StreamResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.streams)

    @property
    def blobs_enqueued(self) -> int:
        return sum(s.blobs_enqueued for s in self.streams)

    @property
    def windows_left(self) -> int:
        return sum(s.windows_left for s in self.streams)


class Lister:
    def __init__(
        self,
        *,
        tenants: tuple[TenantConfig, ...],
        policy: CollectionPolicy,
        api_for_tenant: Callable[[str], ManagementApiClient],
        checkpoints: CheckpointStore,
        queue: TaskQueue,
        clock: Callable[[], dt.datetime],
        monotonic: Callable[[], float] = time.monotonic,
        on_window: Callable[[StreamResult], None] | None = None,
    ) -> None:
        self._tenants = tenants
        self._policy = policy
        self._api_for_tenant = api_for_tenant
        self._checkpoints = checkpoints
        self._queue = queue
        self._clock = clock
        self._monotonic = monotonic
        self._on_window = on_window

    def run(self) -> ListerResult:
        deadline = self._monotonic() + self._policy.list_budget.total_seconds()
        result = ListerResult()
        for tenant in self._tenants:
            for content_type in tenant.content_types:
                stream = StreamResult(tenant.tenant_id, content_type)
                result.streams.append(stream)
                self._run_stream(tenant, stream, deadline)
        return result

    def _run_stream(self, tenant: TenantConfig, stream: StreamResult, deadline: float) -> None:
        fields = {"tenant_id": tenant.tenant_id, "content_type": stream.content_type}
        api: ManagementApiClient | None = None
        throttled_before = 0
        try:
            api = self._api_for_tenant(tenant.tenant_id)
            throttled_before = api.stats.throttled
            checkpoint = self._checkpoints.get(tenant.tenant_id, stream.content_type)
            stream.cursor = checkpoint.cursor
            plan = plan_windows(
                cursor=checkpoint.cursor, now=self._clock(), policy=self._policy, start_time=tenant.start_time
            )
            if plan.lost is not None:
                stream.lost_from, stream.lost_to = plan.lost.start, plan.lost.end
                log.error(
                    "content created %s .. %s can no longer be listed (collection was stopped longer than the "
                    "API's 7-day retention); resuming at the retention edge",
                    plan.lost.start.isoformat(),
                    plan.lost.end.isoformat(),
                    extra=fields,
                )
            if plan.future_cursor:
                log.warning("checkpoint %s is in the future; treated as now", checkpoint.cursor, extra=fields)
            for index, window in enumerate(plan.windows):
                if self._monotonic() >= deadline:
                    stream.windows_left = len(plan.windows) - index
                    break
                recent = checkpoint.recent.copy()
                for blob in api.list_content(stream.content_type, window):
                    stream.blobs_listed += 1
                    if blob.content_id in recent:
                        stream.blobs_already_queued += 1
                        continue
                    self._queue.send_message(FetchTask.for_blob(tenant.tenant_id, blob).to_message())
                    recent.add(blob.content_id, blob.content_created)
                    stream.blobs_enqueued += 1
                recent.prune(window.end - self._policy.overlap)
                checkpoint = self._checkpoints.advance(checkpoint, window.end, recent, self._clock())
                stream.cursor = checkpoint.cursor
                stream.windows += 1
                if self._on_window is not None:
                    self._on_window(stream)
        except CheckpointConflictError as err:
            log.warning("%s; leaving this stream to that run", err, extra=fields)
        except CollectorError as err:
            stream.error, stream.error_code = str(err), getattr(err, "code", None)
        except Exception as err:  # storage or an unexpected fault: report it, keep the other streams going
            log.exception("unexpected failure listing %s", stream.content_type, extra=fields)
            stream.error = f"{type(err).__name__}: {err}"
        finally:
            if api is not None:
                stream.throttled = api.stats.throttled - throttled_before
            age = lag(stream.cursor, self._clock())
            stream.lag_seconds = round(age.total_seconds(), 1) if age is not None else None
            message = SUMMARY_MESSAGE if stream.ok else FAILED_MESSAGE
            level = logging.INFO if stream.ok else logging.ERROR
            log.log(level, "%s %s", message, orjson.dumps(stream.summary()).decode(), extra=fields)
