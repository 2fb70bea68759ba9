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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from .checkpoints import Checkpoint, CheckpointConflictError, CheckpointStore
from .config import CollectionPolicy, TenantConfig
from .errors import CollectorError
from .management_api import ManagementApiClient
from .models import FetchTask, TimeWindow
from .scheduler import run_fairly
from .windows import lag, plan_windows

log = logging.getLogger(__name__)

SUMMARY_MESSAGE = "lister run complete"
FAILED_MESSAGE = "lister run failed"
RUN_SUMMARY_MESSAGE = "lister run summary"


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
    seconds: float = 0.0
    """Time spent listing this stream in the run (its steps' sum; streams share the run's workers)."""

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
            "seconds": round(self.seconds, 3),
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


class _StreamTask:
    """One tenant/content type's progress through a run: its checkpoint, windows and result."""

    def __init__(self, tenant: TenantConfig, content_type: str) -> None:
        self.tenant = tenant
        self.result = StreamResult(tenant.tenant_id, content_type)
        self.checkpoint: Checkpoint | None = None
        self.windows: tuple[TimeWindow, ...] | None = None
        self.next_window = 0

    @property
    def key(self) -> str:
        return self.tenant.tenant_id


class Lister:
    """Lists every tenant's content types on a bounded pool, one window per step, fairly."""

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
        concurrency: int = 1,
        per_tenant_concurrency: int = 2,
    ) -> None:
        self._tenants = tenants
        self._policy = policy
        self._api_for_tenant = api_for_tenant
        self._checkpoints = checkpoints
        self._queue = queue
        self._clock = clock
        self._monotonic = monotonic
        self._on_window = on_window
        self._concurrency = concurrency
        self._per_tenant = per_tenant_concurrency
        self._broken: dict[str, CollectorError] = {}
        self._signed_in: set[str] = set()
        self._gates: dict[str, threading.Lock] = {}
        self._gates_lock = threading.Lock()
        self._deadline = 0.0

    def run(self) -> ListerResult:
        started = self._monotonic()
        self._deadline = started + self._policy.list_budget.total_seconds()
        self._broken = {}
        self._signed_in = set()
        # Content type major, tenant minor: the first steps touch every tenant once before any tenant twice.
        width = max((len(t.content_types) for t in self._tenants), default=0)
        tasks = [
            _StreamTask(tenant, tenant.content_types[i])
            for i in range(width)
            for tenant in self._tenants
            if i < len(tenant.content_types)
        ]
        run_fairly(tasks, self._step, workers=self._concurrency, per_key_limit=self._per_tenant)
        result = ListerResult([t.result for t in tasks])
        log.info(
            "%s %s",
            RUN_SUMMARY_MESSAGE,
            orjson.dumps(
                {
                    "tenants": len(self._tenants),
                    "streams": len(tasks),
                    "failed": sum(1 for s in result.streams if not s.ok),
                    "windows": sum(s.windows for s in result.streams),
                    "windows_left": result.windows_left,
                    "blobs_enqueued": result.blobs_enqueued,
                    "throttled": sum(s.throttled for s in result.streams),
                    "seconds": round(self._monotonic() - started, 2),
                }
            ).decode(),
        )
        return result

    def _step(self, task: _StreamTask) -> bool:
        """Plan (first step) or list one window. True while the stream has more to do in this run."""
        stream = task.result
        fields = {"tenant_id": task.tenant.tenant_id, "content_type": stream.content_type}
        more = False
        started = time.perf_counter()
        try:
            api = self._api_for_tenant(task.tenant.tenant_id)
            self._sign_in(task.tenant.tenant_id, api)
            with api.counting() as counter:
                try:
                    if task.windows is None:
                        self._plan(task, fields)
                    elif self._monotonic() >= self._deadline:
                        stream.windows_left = len(task.windows) - task.next_window
                    else:
                        self._list_window(task, api)
                    more = task.windows is not None and task.next_window < len(task.windows) and not stream.windows_left
                finally:
                    stream.throttled += counter.throttled
        except CheckpointConflictError as err:
            log.warning("%s; leaving this stream to that run", err, extra=fields)
        except CollectorError as err:
            stream.error, stream.error_code = str(err), getattr(err, "code", None)
            if _is_credential_error(err):
                self._broken.setdefault(task.tenant.tenant_id, err)
        except Exception as err:  # storage or an unexpected fault: report it, keep the other streams going
            log.exception("unexpected failure listing %s", stream.content_type, extra=fields)
            stream.error = f"{type(err).__name__}: {err}"
        stream.seconds += time.perf_counter() - started
        if not more:
            self._finish(task, fields)
        return more

    def _sign_in(self, tenant_id: str, api: ManagementApiClient) -> None:
        """Get the tenant's token once per run, before its first stream: a sign-in failure
        (a wrong or expired secret, missing consent) is the tenant's, so its other streams report it
        without asking the login service again."""
        with self._gates_lock:
            gate = self._gates.setdefault(tenant_id, threading.Lock())
        with gate:
            broken = self._broken.get(tenant_id)
            if broken is not None:
                raise broken
            if tenant_id in self._signed_in:
                return
            try:
                api.sign_in()
            except CollectorError as err:
                if _is_credential_error(err):
                    self._broken[tenant_id] = err
                raise
            self._signed_in.add(tenant_id)

    def _plan(self, task: _StreamTask, fields: dict[str, str]) -> None:
        stream = task.result
        checkpoint = self._checkpoints.get(task.tenant.tenant_id, stream.content_type)
        task.checkpoint = checkpoint
        stream.cursor = checkpoint.cursor
        plan = plan_windows(
            cursor=checkpoint.cursor, now=self._clock(), policy=self._policy, start_time=task.tenant.start_time
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
        task.windows = plan.windows

    def _list_window(self, task: _StreamTask, api: ManagementApiClient) -> None:
        assert task.windows is not None
        assert task.checkpoint is not None
        stream = task.result
        window = task.windows[task.next_window]
        recent = task.checkpoint.recent.copy()
        for blob in api.list_content(stream.content_type, window):
            stream.blobs_listed += 1
            if blob.content_id in recent:
                stream.blobs_already_queued += 1
                continue
            self._queue.send_message(FetchTask.for_blob(task.tenant.tenant_id, blob).to_message())
            recent.add(blob.content_id, blob.content_created)
            stream.blobs_enqueued += 1
        recent.prune(window.end - self._policy.overlap)
        task.checkpoint = self._checkpoints.advance(task.checkpoint, window.end, recent, self._clock())
        stream.cursor = task.checkpoint.cursor
        stream.windows += 1
        task.next_window += 1
        if self._on_window is not None:
            self._on_window(stream)

    def _finish(self, task: _StreamTask, fields: dict[str, str]) -> None:
        stream = task.result
        age = lag(stream.cursor, self._clock())
        stream.lag_seconds = round(age.total_seconds(), 1) if age is not None else None
        message = SUMMARY_MESSAGE if stream.ok else FAILED_MESSAGE
        level = logging.INFO if stream.ok else logging.ERROR
        log.log(level, "%s %s", message, orjson.dumps(stream.summary()).decode(), extra=fields)


def _is_credential_error(err: CollectorError) -> bool:
    code = getattr(err, "code", None) or ""
    return code.startswith("AADSTS") or code in {"AF10001", "AF20010", "AF20011", "AF20013"}
