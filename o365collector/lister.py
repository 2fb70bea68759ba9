"""Timer side: for each tenant and stream, plan windows, list every page, enqueue, advance.

A stream is one of the audit feed's content types or one Microsoft Graph log; the lister asks the
collector for the stream's client (``sources.base.SourceClient``) and plans with its policy (retention,
widest window, overlap), so nothing here knows which source it lists.

Who calls it: the timer itself, or with the fan-out on (``O365_LIST_FANOUT``) the list queue's trigger, one
tenant per message (``listing_queue``, where the timer's and the list trigger's entry points are).

The order is the guarantee: every blob of a window is on the queue before the checkpoint moves past
the window, and the checkpoint moves under the ETag it was read with. A crash anywhere means the next
run lists the window again; the ledger makes the repeat harmless. One stream failing (a permission,
a disabled subscription, throttling that outlasts the retries) is reported and the others go on.
A run stops starting windows when its time budget is spent and leaves the rest for the next run.

Listing entries are checked one by one: an entry that is not a usable blob, or whose contentType is
not the stream's, is refused (logged at ERROR with its place in the listing and its contentId) and
the rest of the listing goes on. A blob enqueued with a contentCreated before the checkpoint the run
started from is *late*: its window had been listed before without it (the overlap or the late sweep
found it). Late blobs and their lateness (listing time - contentCreated) are counted per stream.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from .checkpoints import Checkpoint, CheckpointConflictError, CheckpointStore
from .config import CollectionPolicy
from .errors import CollectorError
from .models import ContentBlob, FetchTask, ListingEntryError, TimeWindow
from .redaction import printable
from .scheduler import run_fairly
from .sources.base import SourceClient
from .sources.catalog import source_of
from .tenant_config import TenantConfig
from .windows import RETENTION, WindowPlan, lag, plan_windows, relist_horizon

log = logging.getLogger(__name__)

SUMMARY_MESSAGE = "lister run complete"
FAILED_MESSAGE = "lister run failed"
RUN_SUMMARY_MESSAGE = "lister run summary"
REFUSED_KEPT = 10  # refused entries described per stream and run (all are counted and logged)
ID_CHARS = 128  # of a content id quoted in a log line or a status row: real ones are under 100


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
    late_blobs: int = 0
    """Blobs enqueued with a contentCreated before the checkpoint the run started from."""
    max_lateness_seconds: float | None = None
    """The largest listing time - contentCreated among the late blobs."""
    sweep_windows: int = 0
    """Late-sweep windows listed (included in ``windows``)."""
    late_sweep: bool = False
    """A late sweep was completed and recorded in this run."""
    refused_entries: int = 0
    """Listing entries refused: malformed, or of another content type."""
    refused: list[str] = field(default_factory=list)
    """What the first ``REFUSED_KEPT`` refused entries were (window, index, content id, problem)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> dict[str, object]:
        return {
            "tenant_id": self.tenant_id,
            "content_type": self.content_type,
            "source": _source_name(self.content_type),
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
            "late_blobs": self.late_blobs,
            "max_lateness_seconds": self.max_lateness_seconds,
            "sweep_windows": self.sweep_windows,
            "late_sweep": self.late_sweep,
            "refused_entries": self.refused_entries,
        }

    def add_earlier(self, earlier: StreamResult) -> None:
        """Fold an earlier pass of the same stream into this one (the command line lists in passes)."""
        self.windows += earlier.windows
        self.blobs_listed += earlier.blobs_listed
        self.blobs_enqueued += earlier.blobs_enqueued
        self.blobs_already_queued += earlier.blobs_already_queued
        self.throttled += earlier.throttled
        self.seconds += earlier.seconds
        self.late_blobs += earlier.late_blobs
        if earlier.max_lateness_seconds is not None:
            self.max_lateness_seconds = max(self.max_lateness_seconds or 0.0, earlier.max_lateness_seconds)
        self.sweep_windows += earlier.sweep_windows
        self.late_sweep = self.late_sweep or earlier.late_sweep
        self.refused_entries += earlier.refused_entries
        self.refused = (earlier.refused + self.refused)[:REFUSED_KEPT]

    def note_late(self, lateness: dt.timedelta) -> None:
        self.late_blobs += 1
        seconds = round(lateness.total_seconds(), 1)
        self.max_lateness_seconds = max(self.max_lateness_seconds or 0.0, seconds)


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
    """One tenant/stream's progress through a run: its checkpoint, windows and result."""

    def __init__(self, tenant: TenantConfig, content_type: str) -> None:
        self.tenant = tenant
        self.result = StreamResult(tenant.tenant_id, content_type)
        self.checkpoint: Checkpoint | None = None
        self.windows: tuple[TimeWindow, ...] | None = None
        self.next_window = 0
        self.started_cursor: dt.datetime | None = None
        self.planned_at: dt.datetime | None = None
        self.sweep_from = 0
        """Index of the first late-sweep window in ``windows`` (they come after the normal ones)."""
        self.sweep_recorded_at: int | None = None
        """Index of the window whose save records the sweep as done (None: no sweep due)."""
        self.policy = CollectionPolicy()
        """The stream's source's bounds, set when the stream is planned."""
        self.new_windows = 0
        """Windows listed in this run that end past the checkpoint it started from (what ``window_budget`` counts)."""

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
        client_for: Callable[[str, str], SourceClient],
        checkpoints: CheckpointStore,
        queue: TaskQueue,
        clock: Callable[[], dt.datetime],
        monotonic: Callable[[], float] = time.monotonic,
        on_window: Callable[[StreamResult], None] | None = None,
        concurrency: int = 1,
        per_tenant_concurrency: int = 2,
        window_budget: int | None = None,
    ) -> None:
        """``window_budget``: windows listed per stream in this run at most (a list message's share; the rest is
        left as ``windows_left``, like what the time budget leaves)."""
        self._tenants = tenants
        self._policy = policy
        self._client_for = client_for
        self._checkpoints = checkpoints
        self._queue = queue
        self._clock = clock
        self._monotonic = monotonic
        self._on_window = on_window
        self._concurrency = concurrency
        self._per_tenant = per_tenant_concurrency
        self._window_budget = window_budget
        # Sign-in state per (tenant, source): each source has its own token (audience) and consent.
        self._broken: dict[tuple[str, str], CollectorError] = {}
        self._signed_in: set[tuple[str, str]] = set()
        self._gates: dict[tuple[str, str], threading.Lock] = {}
        self._gates_lock = threading.Lock()
        self._deadline = 0.0

    def run(self) -> ListerResult:
        started = self._monotonic()
        self._deadline = started + self._policy.list_budget.total_seconds()
        self._broken = {}
        self._signed_in = set()
        # Stream major, tenant minor: the first steps touch every tenant once before any tenant twice.
        streams = {tenant.tenant_id: tenant.streams for tenant in self._tenants}
        width = max((len(s) for s in streams.values()), default=0)
        tasks = [
            _StreamTask(tenant, streams[tenant.tenant_id][i])
            for i in range(width)
            for tenant in self._tenants
            if i < len(streams[tenant.tenant_id])
        ]
        run_fairly(tasks, self._step, workers=self._concurrency, per_key_limit=self._per_tenant)
        # The per-stream lines are logged here, on the caller's (the invocation's) own thread, not from the
        # pool: the alerts and the guide read them, so they must reach Application Insights even where a
        # worker thread's records could not be tied to the invocation.
        for task in tasks:
            self._log_stream(task.result)
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
                    "late_blobs": sum(s.late_blobs for s in result.streams),
                    "max_lateness_seconds": max(
                        (s.max_lateness_seconds for s in result.streams if s.max_lateness_seconds is not None),
                        default=None,
                    ),
                    "late_sweeps": sum(1 for s in result.streams if s.late_sweep),
                    "refused_entries": sum(s.refused_entries for s in result.streams),
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
        sign_in_key = (task.tenant.tenant_id, _source_name(stream.content_type) or "")
        try:
            api = self._client_for(task.tenant.tenant_id, stream.content_type)
            self._sign_in(sign_in_key, api)
            with api.counting() as counter:
                try:
                    if task.windows is None:
                        self._plan(task, api, fields)
                    elif self._monotonic() >= self._deadline or self._budget_spent(task):
                        stream.windows_left = len(task.windows) - task.next_window
                    else:
                        self._list_window(task, api, fields)
                    more = task.windows is not None and task.next_window < len(task.windows) and not stream.windows_left
                finally:
                    stream.throttled += counter.throttled
        except CheckpointConflictError as err:
            log.warning("%s; leaving this stream to that run", err, extra=fields)
        except CollectorError as err:
            stream.error, stream.error_code = str(err), getattr(err, "code", None)
            if _is_credential_error(err):
                self._broken.setdefault(sign_in_key, err)
        except Exception as err:  # storage or an unexpected fault: report it, keep the other streams going
            log.exception("unexpected failure listing %s", stream.content_type, extra=fields)
            stream.error = f"{type(err).__name__}: {err}"
        stream.seconds += time.perf_counter() - started
        if not more:
            self._finish(task)
        return more

    def _budget_spent(self, task: _StreamTask) -> bool:
        """The window budget counts new ground only: the overlap re-list and the late sweep (behind the
        checkpoint) are always listed, else a caught-up stream would never finish, each message re-planning them."""
        if self._window_budget is None or task.windows is None or task.new_windows < self._window_budget:
            return False
        return task.started_cursor is None or task.windows[task.next_window].end > task.started_cursor

    def _sign_in(self, key: tuple[str, str], api: SourceClient) -> None:
        """Get the tenant's token for the source once per run, before its first stream: a sign-in failure
        (a wrong or expired secret, missing consent) is the tenant's, so its other streams of that source
        report it without asking the login service again. ``key``: (tenant id, source name)."""
        with self._gates_lock:
            gate = self._gates.setdefault(key, threading.Lock())
        with gate:
            broken = self._broken.get(key)
            if broken is not None:
                raise broken
            if key in self._signed_in:
                return
            try:
                api.sign_in()
            except CollectorError as err:
                if _is_credential_error(err):
                    self._broken[key] = err
                raise
            self._signed_in.add(key)

    def _plan(self, task: _StreamTask, api: SourceClient, fields: dict[str, str]) -> None:
        stream = task.result
        checkpoint = self._checkpoints.get(task.tenant.tenant_id, stream.content_type)
        task.checkpoint = checkpoint
        task.started_cursor = stream.cursor = checkpoint.cursor
        task.planned_at = self._clock()
        task.policy = api.policy(self._policy)
        plan = plan_windows(
            cursor=checkpoint.cursor,
            now=task.planned_at,
            policy=task.policy,
            start_time=task.tenant.start_time,
            last_sweep=checkpoint.late_sweep_at,
        )
        if plan.lost is not None:
            stream.lost_from, stream.lost_to = plan.lost.start, plan.lost.end
            log.error(
                "content created %s .. %s can no longer be listed (collection was stopped longer than the "
                "source's %d-day retention); resuming at the retention edge",
                plan.lost.start.isoformat(),
                plan.lost.end.isoformat(),
                task.policy.retention.days,
                extra=fields,
            )
        if plan.future_cursor:
            log.warning("checkpoint %s is in the future; treated as now", checkpoint.cursor, extra=fields)
        if checkpoint.cursor is None:
            # Said once per stream (the first window saves a checkpoint), so an operator sees how much
            # history a new deployment fetches, and why it starts there, before the blobs arrive.
            span = describe_first_run(stream.content_type, task.tenant.start_time, plan, task.policy.retention)
            log.info("first run: %s", span, extra=fields)
        task.windows = plan.windows + plan.sweep
        task.sweep_from = len(plan.windows)
        if plan.sweep_due:
            # The sweep is recorded with its last window (or with the first window when it has none),
            # after that window's blobs are on the queue: a run cut short sweeps again next time.
            task.sweep_recorded_at = len(task.windows) - 1 if plan.sweep else 0

    def _list_window(self, task: _StreamTask, api: SourceClient, fields: dict[str, str]) -> None:
        assert task.windows is not None
        assert task.checkpoint is not None
        assert task.planned_at is not None
        stream = task.result
        index = task.next_window
        window = task.windows[index]
        recent = task.checkpoint.recent.copy()
        listed_at = self._clock()
        positions = itertools.count()  # an entry's index in this window's listing, refused ones included

        def refuse(err: ListingEntryError) -> None:
            self._refuse(stream, window, next(positions), err.content_id, err.problem, fields)

        for blob in api.list_units(stream.content_type, window, on_malformed=refuse):
            position = next(positions)
            problem = content_type_problem(blob, stream.content_type)
            if problem is not None:
                self._refuse(stream, window, position, blob.content_id, problem, fields)
                continue
            stream.blobs_listed += 1
            if blob.content_id in recent:
                stream.blobs_already_queued += 1
                continue
            enqueue_blob(self._queue, task.tenant.tenant_id, blob)
            recent.add(blob.content_id, blob.content_created)
            stream.blobs_enqueued += 1
            if task.started_cursor is not None and blob.content_created < task.started_cursor:
                self._note_late(stream, blob, listed_at - blob.content_created, fields)
        swept = index == task.sweep_recorded_at
        last_sweep = task.planned_at if swept else task.checkpoint.late_sweep_at
        cursor = max(window.end, task.checkpoint.cursor or window.end)  # a sweep window ends behind it
        now = self._clock()
        forgotten = recent.prune(relist_horizon(cursor=cursor, last_sweep=last_sweep, now=now, policy=task.policy))
        if forgotten:
            log.warning(
                "the recent-blob set is full: forgot the %d oldest of its blobs; any of them listed again "
                "is enqueued again and skipped by the ledger (a shorter O365_LATE_LOOKBACK_HOURS keeps fewer)",
                forgotten,
                extra=fields,
            )
        task.checkpoint = self._checkpoints.advance(
            task.checkpoint, window.end, recent, now, late_sweep_at=task.planned_at if swept else None
        )
        stream.cursor = task.checkpoint.cursor
        stream.windows += 1
        if index >= task.sweep_from:
            stream.sweep_windows += 1
        stream.late_sweep = stream.late_sweep or swept
        if task.started_cursor is None or window.end > task.started_cursor:
            task.new_windows += 1
        task.next_window += 1
        if self._on_window is not None:
            self._on_window(stream)

    @staticmethod
    def _refuse(
        stream: StreamResult,
        window: TimeWindow,
        position: int,
        content_id: str | None,
        problem: str,
        fields: dict[str, str],
    ) -> None:
        """Report one unusable listing entry; the caller goes on with the next."""
        stream.refused_entries += 1
        named = f" (contentId {printable(content_id[:ID_CHARS])})" if content_id else ""
        where = f"{window.start.isoformat()} .. {window.end.isoformat()}"
        what = f"entry {position} of the {where} listing{named}: {problem}"
        if len(stream.refused) < REFUSED_KEPT:
            stream.refused.append(what)
        extra = fields | ({"content_id": printable(content_id[:ID_CHARS])} if content_id else {})
        log.error("refused %s %s; the other entries are collected", stream.content_type, what, extra=extra)

    @staticmethod
    def _note_late(stream: StreamResult, blob: ContentBlob, lateness: dt.timedelta, fields: dict[str, str]) -> None:
        stream.note_late(lateness)
        log.info(
            "content %s created %s was listed late (%.1f h after its contentCreated); enqueued",
            printable(blob.content_id[:ID_CHARS]),
            blob.content_created.isoformat(),
            lateness.total_seconds() / 3600,
            extra=fields | {"content_id": printable(blob.content_id[:ID_CHARS])},
        )

    def _finish(self, task: _StreamTask) -> None:
        stream = task.result
        age = lag(stream.cursor, self._clock())
        stream.lag_seconds = round(age.total_seconds(), 1) if age is not None else None

    @staticmethod
    def _log_stream(stream: StreamResult) -> None:
        fields = {"tenant_id": stream.tenant_id, "content_type": stream.content_type}
        message = SUMMARY_MESSAGE if stream.ok else FAILED_MESSAGE
        level = logging.INFO if stream.ok else logging.ERROR
        log.log(level, "%s %s", message, orjson.dumps(stream.summary()).decode(), extra=fields)


def content_type_problem(blob: ContentBlob, content_type: str) -> str | None:
    """Why a listed (or pushed) blob does not belong to the ``content_type`` stream; None if it does."""
    if blob.content_type != content_type:
        return f"its contentType is not {content_type}, the content type listed"
    return None


def enqueue_blob(queue: TaskQueue, tenant_id: str, blob: ContentBlob) -> None:
    """Put one fetch task on the content queue: the lister and the webhook receiver share this."""
    queue.send_message(FetchTask.for_blob(tenant_id, blob).to_message())


def describe_first_run(
    content_types: str, start_time: dt.datetime | None, plan: WindowPlan, retention: dt.timedelta = RETENTION
) -> str:
    """What a stream with no checkpoint backfills, from its first-run plan (the lister logs it, ``check`` prints it).

    With no start time set, the first window starts at the source's retention edge (the audit feed: now -
    7 days + a margin; a Graph log: 30 or 90 days).
    """
    days = f"{retention.days} days back, the API's limit"
    if not plan.windows:  # a start time within the last few minutes: no window is ready to list yet
        when = _minute(start_time) if start_time else "now"
        return f"collecting {content_types} from {when} on; nothing older to backfill"
    start = plan.windows[0].start
    if start_time is None:
        why = days
    elif start_time < start:
        why = f"{days}; the start time {_minute(start_time)} is older"
    else:
        why = f"the start time set, {(plan.windows[-1].end - start) / dt.timedelta(days=1):.1f} days back"
    return f"backfilling {content_types} from {_minute(start)} ({why}) to now"


def _minute(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%MZ")


def _source_name(stream: str) -> str | None:
    spec = source_of(stream)
    return spec.name if spec is not None else None


def _is_credential_error(err: CollectorError) -> bool:
    code = getattr(err, "code", None) or ""
    return code.startswith("AADSTS") or code in {"AF10001", "AF20010", "AF20011", "AF20013"}
