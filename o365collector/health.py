"""The collector's state in one report: what ``status`` prints and the ``health`` function returns.

Per tenant and content type: the checkpoint and the lag behind now, the last run and the last
successful one, the last error (``resolved`` when a later success followed it), the records shipped,
the blobs in the poison queue and those expired before delivery. The report is in one of three states.

**Unhealthy** (HTTP 503 from ``health``, ``status`` exits 1) when, per ``HealthPolicy``:

- a stream has had no successful listing for ``O365_HEALTH_MAX_LISTING_AGE_MINUTES`` (offline);
- a stream's last listing run met more than ``O365_HEALTH_MAX_THROTTLED`` throttled responses;
- content was lost within ``O365_HEALTH_LOST_DATA_HOURS`` (expired at the source, or unlistable
  after an outage longer than the API's 7-day retention);
- the poison queue holds more than ``O365_HEALTH_MAX_POISON`` messages (content not delivered yet).
- per source (``source_health``): a Microsoft Graph stream refused for a missing permission or licence
  (the message names the permission to grant), and losses past each source's own retention.

**Degraded** (HTTP 200 with ``"status": "degraded"``, ``status`` exits 3) when nothing is unhealthy yet
but something is going wrong that will become so if nobody looks:

- a stream's last listing run failed (it still succeeded within the listing age);
- a subscription is disabled (the stream's current error is ``AF20023``);
- fetching or shipping is failing: a stream's last fetch error is newer than its last shipped blob;
- the content queue is not draining: its oldest visible message has waited longer than the listing age;
- push mode: a stream's webhook was disabled by the service or expired (``push_status``).
- a Microsoft Graph stream's checkpoint is within a day of its source's retention (``source_health``).

200 for degraded follows ASP.NET Core's health checks (Healthy and Degraded answer 200, Unhealthy 503):
an uptime checker that only reads the status code pages for outages, not for warnings; one that wants
warnings matches the body (Azure Monitor availability tests: "content match").

Sources: the checkpoint table (cursor), the status table (runs, errors, losses; see ``status``) and
the queues (approximate counts; the poison queue's split per stream comes from peeking at most 32
messages, flagged as a sample when the queue holds more; the content queue's oldest message from
peeking one). Reading is cheap: a few table queries, two queue property calls and two peeks; no API call.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import orjson
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from .arrivals import ArrivalStore
from .certificate_expiry import report_certificate_expiry
from .checkpoints import CheckpointStore
from .config import Settings
from .deferral import DeferralStore, report_deferrals
from .errors import MessageFormatError
from .models import FetchTask
from .push_status import push_lines, report_push
from .redaction import describe, summary
from .secret_expiry import expiry_verdict
from .source_health import expired_text, judge_source, retention_phrase, source_lines, summarize_sources
from .status import LostBlob, StatusStore, StreamStatus
from .status_report import (
    HEALTHY,
    UNHEALTHY,
    QueueCounts,
    StatusReport,
    StreamKey,
    StreamReport,
    age_text,
    iso_time,
    short_id,
    since_success,
)
from .storage import unreadable_reason
from .tenant_config import TenantConfig

log = logging.getLogger(__name__)

PEEK_MAX = 32  # the queue service's limit for one peek
SUBSCRIPTION_DISABLED = "AF20023"  # the API's code for a subscription an administrator disabled


class CollectorState(Protocol):
    """What the report reads of a collector (``runtime.Collector`` is one): its stores and queues, never its API."""

    @property
    def settings(self) -> Settings: ...
    @property
    def clock(self) -> Callable[[], dt.datetime]: ...
    @property
    def checkpoints(self) -> CheckpointStore: ...
    @property
    def status(self) -> StatusStore: ...
    @property
    def deferrals(self) -> DeferralStore: ...
    @property
    def arrivals(self) -> ArrivalStore: ...
    @property
    def queue(self) -> QueueClient: ...
    @property
    def poison_queue(self) -> QueueClient: ...
    @property
    def registry_problems(self) -> Sequence[Exception]: ...
    def tenants(self) -> tuple[TenantConfig, ...]: ...


# -- building ---------------------------------------------------------------------------------------


def build_report(collector: CollectorState, now: dt.datetime | None = None) -> StatusReport:
    """Read the state of every configured stream and judge it against the health policy."""
    now = now or collector.clock()
    settings = collector.settings
    report = StatusReport(now, settings.health, settings.content_queue, settings.poison_queue)
    tenants = collector.tenants()
    streams = [(t.tenant_id, stream) for t in tenants for stream in t.streams]  # every source's streams
    names = {t.tenant_id: t.name for t in tenants}
    try:
        checkpoints = collector.checkpoints.list()
    except ResourceNotFoundError:
        checkpoints = []  # no run has created the table yet
    cursors = {(c.tenant_id, c.content_type): c.cursor for c in checkpoints}
    sweeps = {(c.tenant_id, c.content_type): c.late_sweep_at for c in checkpoints}
    rows = collector.status.list_streams()
    report.lost = collector.status.list_lost()
    report.queues, poisoned = count_queues(collector.queue, collector.poison_queue)
    for key in streams:
        report.streams.append(
            _stream_report(key, cursors.get(key), rows.get(key), report.lost, poisoned.get(key, 0), now)
        )
        report.streams[-1].late_sweep_at = sweeps.get(key)
        # A registry row's text: shown in a terminal and served, so one short redacted line.
        name = names.get(key[0])
        report.streams[-1].tenant_name = summary(name, 80) if name else None
    # Rows of the tenant table skipped as invalid: those tenants are not collected until fixed.
    report.general_problems.extend(
        f"tenant registry row skipped (not collected): {summary(str(p))}" for p in collector.registry_problems
    )
    report_deferrals(report, collector.deferrals.list_deferred(), now)
    report_push(report, collector, now)
    report_certificate_expiry(report, tenants)  # certificates near or past their end (certificate_expiry.py)
    judge(report, now)
    return report


def count_queues(queue: QueueClient, poison: QueueClient) -> tuple[QueueCounts, dict[StreamKey, int]]:
    counts = QueueCounts(content=_approximate_count(queue), poison=_approximate_count(poison))
    if counts.content:
        counts.content_oldest = _oldest_inserted(queue)
    per_stream: Counter[StreamKey] = Counter()
    if counts.poison:
        try:
            peeked = poison.peek_messages(max_messages=PEEK_MAX)
        except ResourceNotFoundError:
            peeked = []
        for message in peeked:
            counts.poison_peeked += 1
            if unreadable_reason(message) is not None:  # not base64 text: peeked as it is, never decoded
                counts.poison_unreadable += 1
                continue
            try:
                task = FetchTask.from_message(message.content)
            except MessageFormatError:
                counts.poison_unreadable += 1
                continue
            per_stream[(task.tenant_id, task.content_type)] += 1
    return counts, dict(per_stream)


def _oldest_inserted(queue: QueueClient) -> dt.datetime | None:
    """The first visible message's insertion time: messages being processed are invisible and not seen,
    so a message waiting this long is one no fetcher took, or one that keeps failing and coming back."""
    try:
        peeked = queue.peek_messages(max_messages=1)
    except ResourceNotFoundError:
        return None
    inserted = peeked[0].inserted_on if peeked else None
    return inserted.astimezone(dt.UTC) if inserted is not None else None


def _approximate_count(queue: QueueClient) -> int | None:
    try:
        return int(queue.get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return 0  # not created yet: nothing was ever queued


def _stream_report(
    key: StreamKey,
    cursor: dt.datetime | None,
    row: StreamStatus | None,
    lost: Sequence[LostBlob],
    poisoned: int,
    now: dt.datetime,
) -> StreamReport:
    tenant_id, content_type = key
    mine = [b for b in lost if b.tenant_id == tenant_id and b.content_type == content_type]
    return StreamReport(
        tenant_id=tenant_id,
        content_type=content_type,
        checkpoint=cursor,
        lag_seconds=round((now - cursor).total_seconds(), 1) if cursor is not None else None,
        status=row,
        poisoned=poisoned,
        expired=len(mine),
    )


def judge(report: StatusReport, now: dt.datetime) -> None:
    """Fill in the problems (unhealthy) and warnings (degraded) of each stream and of the whole report."""
    policy = report.policy
    for stream in report.streams:
        _judge_stream(report, stream, now)
        _degrade_stream(stream, now)
    poison = report.queues.poison or 0
    if poison > policy.max_poison:
        report.general_problems.insert(
            0,
            f"{poison} messages in the poison queue {report.poison_queue}: fix the cause (see the last errors), "
            "then run `python -m o365collector replay-poison`",
        )
    oldest = report.queues.content_oldest
    if oldest is not None and now - oldest > policy.max_listing_age:
        report.general_degraded.append(
            f"the content queue {report.content_queue} is not draining: {_count(report.queues.content)} messages, "
            f"the oldest waiting for {age_text(now - oldest)} (more than O365_HEALTH_MAX_LISTING_AGE_MINUTES); "
            "is the fetch_content function running, and is it failing (see the last errors)?"
        )
    expiry = expiry_verdict(policy.client_secret_expires, policy.secret_expiry_warning, now)
    if expiry is not None:
        (report.general_problems if expiry[0] else report.general_degraded).append(expiry[1])
    _collect(report)


def _collect(report: StatusReport) -> None:
    """The report's lists: each stream's, led by its name, then the collector's own."""
    report.problems = [f"{s.tenant_id} {s.content_type}: {p}" for s in report.streams for p in s.problems]
    report.problems += report.general_problems
    report.degraded = [f"{s.tenant_id} {s.content_type}: {d}" for s in report.streams for d in s.degraded]
    report.degraded += report.general_degraded
    report.sources = [s.to_dict() for s in summarize_sources(report.streams)]


def _degrade_stream(stream: StreamReport, now: dt.datetime) -> None:
    """What is going wrong with a stream that is not (yet) unhealthy: current errors, not resolved ones."""
    s = stream.status
    if s is None:
        return
    listing_current = s.last_error_at is not None and since_success(s.last_error_at, s.last_success_at)
    if listing_current and SUBSCRIPTION_DISABLED in f"{s.last_error_code} {s.last_error}":
        stream.degraded.append(
            f"the subscription is disabled ({SUBSCRIPTION_DISABLED}, {_ago(s.last_error_at, now)}): nothing is "
            f"listed until it is started again (`python -m o365collector subscriptions start --content-type "
            f"{stream.content_type}`)"
        )
    elif s.last_outcome == "failed" and listing_current and not stream.problems:
        # With a problem, "no successful listing ... (last error: ...)" already says it.
        stream.degraded.append(
            f"the last listing run failed ({_ago(s.last_error_at, now)}): {_with_code(s.last_error_code, s.last_error)}"
        )
    if s.fetch_error_at is not None and since_success(s.fetch_error_at, s.last_shipped_at):
        stream.degraded.append(
            f"fetching or shipping is failing: last error {_ago(s.fetch_error_at, now)} "
            f"({_with_code(s.fetch_error_code, s.fetch_error)}), last blob shipped {_ago(s.last_shipped_at, now)}"
        )


def _judge_stream(report: StatusReport, stream: StreamReport, now: dt.datetime) -> None:
    policy = report.policy
    lookback = policy.lost_data_lookback
    s = stream.status
    if s is None or s.last_run_at is None:
        stream.problems.append("no listing run recorded yet: is the list_content timer running?")
    elif s.last_success_at is None or now - s.last_success_at > policy.max_listing_age:
        since = f"for {age_text(now - s.last_success_at)}" if s.last_success_at else "since status was recorded"
        why = ""
        if s.last_outcome == "starved":
            why = " (each run's time budget ran out before this stream's turn)"
        elif (s.last_error_code or s.last_error) and since_success(s.last_error_at, s.last_success_at):
            why = f" (last error: {_with_code(s.last_error_code, s.last_error)})"
        stream.problems.append(f"no successful listing {since}{why}")
    if s is not None and s.throttled > policy.max_throttled:
        stream.problems.append(
            f"{s.throttled} throttled responses in the last listing run (threshold {policy.max_throttled})"
        )
    if lookback > dt.timedelta(0):
        # Counted here, not when loading: the lookback is a policy, the losses are facts.
        stream.expired_recent = _recent_losses(report, stream, now - lookback)
        hours = lookback.total_seconds() / 3600
        if stream.expired_recent:
            stream.problems.append(expired_text(stream, hours))
        if s is not None and s.lost_span_at is not None and s.lost_span_at >= now - lookback:
            stream.problems.append(
                f"content created {iso_time(s.lost_span_from)} .. {iso_time(s.lost_span_to)} could no longer be listed "
                f"(collection stopped for longer than {retention_phrase(stream.content_type)})"
            )
        if s is not None and s.last_refused_at is not None and s.last_refused_at >= now - lookback:
            stream.problems.append(
                f"{s.last_refused_entries} listing entries refused {_ago(s.last_refused_at, now)} (malformed, or "
                "of another content type): the content they name was not collected (the lister's ERROR log "
                "names each one)"
            )
    judge_source(stream, now)  # the stream's source's own rules (Microsoft Graph: edge, permission, licence)


def _recent_losses(report: StatusReport, stream: StreamReport, since: dt.datetime) -> int:
    return sum(
        1
        for b in report.lost
        if b.tenant_id == stream.tenant_id
        and b.content_type == stream.content_type
        and b.lost_at is not None
        and b.lost_at >= since
    )


# -- filtering ----------------------------------------------------------------------------------------


def matches_tenant(stream: StreamReport, wanted: str) -> bool:
    """A ``--tenant`` value: the tenant id (or its start), the short id, or the registry name (any case)."""
    w = wanted.strip().casefold()
    tid = stream.tenant_id.casefold()
    return bool(w) and (
        tid.startswith(w)
        or w == short_id(stream.tenant_id).casefold()
        or (stream.tenant_name is not None and w == stream.tenant_name.casefold())
    )


def filter_report(report: StatusReport, tenants: Sequence[str] = (), *, problems_only: bool = False) -> StatusReport:
    """The report narrowed to some tenants and/or to the streams that are not healthy.

    The collector-wide problems and warnings (queues, registry) stay: they concern every tenant. The state,
    and so the exit code, is that of what is shown.
    """
    kept = [
        s
        for s in report.streams
        if (not tenants or any(matches_tenant(s, t) for t in tenants)) and not (problems_only and s.state == HEALTHY)
    ]
    narrowed = replace(report, streams=kept)
    _collect(narrowed)
    return narrowed


# -- rendering ----------------------------------------------------------------------------------------


def _zoned(value: dt.datetime) -> str:
    """A time for the table, with its zone: UTC, like every time the collector stores."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _ago(value: dt.datetime | None, now: dt.datetime) -> str:
    return f"{age_text(now - value)} ago" if value is not None else "never"


def render_table(report: StatusReport) -> str:
    """The human view: one line per stream, then the queues, then what is wrong."""
    now = report.checked_at
    header = (
        *("TENANT", "CONTENT TYPE", "STATE", "CHECKPOINT", "LAG", "LAST RUN"),
        *("LAST SUCCESS", "SHIPPED", "POISON", "EXPIRED", "LAST ERROR"),
    )
    rows: list[tuple[str, ...]] = []
    sampled = "+" if report.queues.poison_sampled else ""
    for stream in report.streams:
        s = stream.status
        error = stream.last_error
        rows.append(
            (
                stream.label,
                stream.content_type,
                stream.state.upper(),
                _zoned(stream.checkpoint) if stream.checkpoint else "-",
                age_text(dt.timedelta(seconds=stream.lag_seconds)) if stream.lag_seconds is not None else "-",
                _ago(s.last_run_at if s else None, now),
                _ago(s.last_success_at if s else None, now),
                str(s.shipped_records if s else 0),
                f"{stream.poisoned}{sampled}",
                str(stream.expired),
                _error_text(error, now),
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    q = report.queues
    lines.append("")
    content_line = f"content queue {report.content_queue}: {_count(q.content)} messages"
    if q.content_oldest is not None:
        content_line += f", the oldest inserted {_zoned(q.content_oldest)} ({_ago(q.content_oldest, now)})"
    lines.append(content_line)
    poison_line = f"poison queue {report.poison_queue}: {_count(q.poison)} messages"
    if q.poison_sampled:
        poison_line += f" (per-stream counts above are from the first {q.poison_peeked}, marked +)"
    if q.poison_unreadable:
        poison_line += f"; {q.poison_unreadable} unreadable"
    lines.append(poison_line)
    lines.extend(_late_line(stream, now) for stream in report.streams if stream.status and stream.status.last_late_at)
    lines.extend(push_lines(report))
    lines.extend(source_lines(report.streams))
    lines.append(f"checked {_zoned(now)}; SHIPPED counts records since the status row was created")
    lines.append("")
    if report.problems:
        lines.append(f"UNHEALTHY: {len(report.problems)} problem(s)")
        lines.extend(f"  - {p}" for p in report.problems)
    if report.degraded:
        lines.append(f"{'also degraded' if report.problems else 'DEGRADED'}: {len(report.degraded)} warning(s)")
        lines.extend(f"  - {d}" for d in report.degraded)
    if report.healthy:
        lines.append("HEALTHY")
    return "\n".join(lines)


def _late_line(stream: StreamReport, now: dt.datetime) -> str:
    """Late-listed content that the overlap or the late sweep collected: how much, how late, when."""
    s = stream.status
    assert s is not None
    worst = s.last_late_max_seconds
    late = f", up to {age_text(dt.timedelta(seconds=worst))} after contentCreated" if worst is not None else ""
    return (
        f"late content {stream.tenant_id} {stream.content_type}: {s.last_late_blobs} blobs listed late{late}, "
        f"found {_ago(s.last_late_at, now)} (collected)"
    )


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _error_text(error: dict[str, Any] | None, now: dt.datetime) -> str:
    if error is None:
        return "-"
    at = dt.datetime.fromisoformat(str(error["at"]).replace("Z", "+00:00"))
    message = _with_code(error.get("code"), error.get("message"))
    if len(message) > 100:
        message = message[:97] + "..."
    resolved = "resolved: " if error.get("resolved") else ""
    return f"{resolved}{_ago(at, now)} ({error['source']}): {message}"


def _with_code(code: str | None, message: str | None) -> str:
    """The message, led by its code unless it already names it (the client's messages do)."""
    text = message or ""
    if code and code not in text:
        text = f"{code}: {text}" if text else code
    return text


# -- the health function -------------------------------------------------------------------------------


def health_response(get_collector: Callable[[], CollectorState]) -> tuple[int, bytes]:
    """(HTTP status, JSON body) for the health endpoint: 200 when healthy or degraded (``"status"`` tells
    which), 503 when unhealthy. See the module docstring for why degraded is a 200.

    A collector that cannot even read its own state (bad settings, storage unreachable) is reported
    as unhealthy with the reason, never as an unhandled 500 that an uptime checker can't explain.
    """
    try:
        report = build_report(get_collector())
    except Exception as err:
        # An anonymous uptime checker reads this body: a code and a short redacted summary, never raw text.
        reason = describe(err, 200)
        log.error("health check could not read the collector's state: %s", reason)
        body = {"healthy": False, "status": "unhealthy", "problems": [f"status unavailable: {reason}"]}
        return 503, orjson.dumps(body)
    return (503 if report.state == UNHEALTHY else 200), report.to_json()
