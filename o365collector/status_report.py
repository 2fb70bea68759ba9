"""The status report's values: per stream and for the whole collector, with their JSON form.

``health`` builds and judges a ``StatusReport``; the modules that add their part to it (``deferral``,
``push_status``, ``certificate_expiry``) fill in these types without importing ``health``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import orjson

from .config import HealthPolicy
from .sources.catalog import AUDIT, source_of
from .status import LostBlob, StreamStatus

# The report's three states; ``health``'s docstring says when each applies.
HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"

StreamKey = tuple[str, str]


@dataclass
class StreamReport:
    tenant_id: str
    content_type: str
    checkpoint: dt.datetime | None = None
    lag_seconds: float | None = None
    status: StreamStatus | None = None
    poisoned: int = 0
    expired: int = 0
    expired_recent: int = 0
    problems: list[str] = field(default_factory=list)
    late_sweep_at: dt.datetime | None = None
    """When the last late sweep was planned (from the checkpoint)."""
    tenant_name: str | None = None
    degraded: list[str] = field(default_factory=list)
    deferred: list[dict[str, Any]] = field(default_factory=list)
    """Blobs waiting for a failing sink or the API, per cause (o365collector.deferral)."""
    push: dict[str, Any] | None = None
    """Push mode only: blobs by push/poll/both and the webhook's state (o365collector.push_status)."""

    @property
    def label(self) -> str:
        """How the table names the tenant: its registry name with a short id, or the short id."""
        short = short_id(self.tenant_id)
        return f"{self.tenant_name} ({short})" if self.tenant_name else short

    @property
    def state(self) -> str:
        return UNHEALTHY if self.problems else DEGRADED if self.degraded else HEALTHY

    @property
    def source(self) -> str:
        """The stream's source in ``sources.catalog`` (a name no source has: the audit feed, as before sources)."""
        spec = source_of(self.content_type)
        return spec.name if spec is not None else AUDIT

    @property
    def last_error(self) -> dict[str, Any] | None:
        """The later of the last listing error and the last fetch error; ``resolved`` when a success followed it
        (a listing error by a successful listing, a fetch error by a shipped blob)."""
        s = self.status
        if s is None:
            return None
        candidates = []
        if s.last_error_at is not None:
            resolved = not since_success(s.last_error_at, s.last_success_at)
            candidates.append((s.last_error_at, "listing", s.last_error_code, s.last_error, resolved))
        if s.fetch_error_at is not None:
            resolved = not since_success(s.fetch_error_at, s.last_shipped_at)
            candidates.append((s.fetch_error_at, "fetch", s.fetch_error_code, s.fetch_error, resolved))
        if not candidates:
            return None
        at, source, code, message, resolved = max(candidates, key=lambda c: c[0])
        return {"at": iso_time(at), "source": source, "code": code, "message": message, "resolved": resolved}

    def to_dict(self) -> dict[str, Any]:
        s = self.status or StreamStatus(self.tenant_id, self.content_type)
        span = None
        if s.lost_span_from is not None:
            span = {"from": iso_time(s.lost_span_from), "to": iso_time(s.lost_span_to), "at": iso_time(s.lost_span_at)}
        return {
            "tenant_id": self.tenant_id,
            "tenant_name": self.tenant_name,
            "content_type": self.content_type,
            "source": self.source,
            "healthy": not self.problems,
            "state": self.state,
            "checkpoint": iso_time(self.checkpoint),
            "lag_seconds": self.lag_seconds,
            "last_run_at": iso_time(s.last_run_at),
            "last_success_at": iso_time(s.last_success_at),
            "last_outcome": s.last_outcome,
            "last_error": self.last_error,
            "shipped": {
                "records": s.shipped_records,
                "blobs": s.shipped_blobs,
                "last_at": iso_time(s.last_shipped_at),
            },
            "last_run": {
                "windows": s.windows,
                "windows_left": s.windows_left,
                "blobs_listed": s.blobs_listed,
                "blobs_enqueued": s.blobs_enqueued,
                "throttled": s.throttled,
                "seconds": s.run_seconds,
                "late_blobs": s.late_blobs,
                "max_lateness_seconds": s.max_lateness_seconds,
                "sweep_windows": s.sweep_windows,
                "refused_entries": s.refused_entries,
            },
            "late_content": {
                "last_sweep_at": iso_time(self.late_sweep_at),
                "last_found_at": iso_time(s.last_late_at),
                "blobs": s.last_late_blobs,
                "max_lateness_seconds": s.last_late_max_seconds,
            },
            "refused_entries": (
                {"at": iso_time(s.last_refused_at), "count": s.last_refused_entries, "entries": list(s.last_refused)}
                if s.last_refused_at is not None
                else None
            ),
            "blobs_poisoned": self.poisoned,
            "blobs_expired": self.expired,
            "blobs_expired_recent": self.expired_recent,
            "unlistable_span": span,
            "problems": self.problems,
            "degraded": self.degraded,
            "deferred": self.deferred,
            "push": self.push,
        }


@dataclass
class QueueCounts:
    content: int | None = None
    content_oldest: dt.datetime | None = None
    """When the content queue's first visible message was inserted (None: empty, or not read)."""
    poison: int | None = None
    poison_peeked: int = 0
    poison_unreadable: int = 0

    @property
    def poison_sampled(self) -> bool:
        """True when the per-stream poison counts cover only the first messages of a longer queue."""
        return self.poison is not None and self.poison > self.poison_peeked


@dataclass
class StatusReport:
    checked_at: dt.datetime
    policy: HealthPolicy
    content_queue: str
    poison_queue: str
    streams: list[StreamReport] = field(default_factory=list)
    queues: QueueCounts = field(default_factory=QueueCounts)
    lost: list[LostBlob] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    general_problems: list[str] = field(default_factory=list)
    """The problems and warnings of the collector as a whole (queues, registry), not of one stream."""
    general_degraded: list[str] = field(default_factory=list)
    push: dict[str, Any] | None = None
    """Push mode only: the webhook receiver's refused requests (o365collector.push_status)."""
    sources: list[dict[str, Any]] = field(default_factory=list)
    """Per source: its streams' worst state, largest lag, records shipped (o365collector.source_health)."""

    @property
    def state(self) -> str:
        return UNHEALTHY if self.problems else DEGRADED if self.degraded else HEALTHY

    @property
    def healthy(self) -> bool:
        return self.state == HEALTHY

    def to_dict(self) -> dict[str, Any]:
        oldest = self.queues.content_oldest
        return {
            "healthy": self.healthy,
            "status": self.state,
            "checked_at": iso_time(self.checked_at),
            "problems": self.problems,
            "degraded": self.degraded,
            "thresholds": {
                "max_listing_age_minutes": self.policy.max_listing_age.total_seconds() / 60,
                "max_throttled": self.policy.max_throttled,
                "lost_data_hours": self.policy.lost_data_lookback.total_seconds() / 3600,
                "max_poison": self.policy.max_poison,
                "secret_expiry_days": self.policy.secret_expiry_warning.days,
            },
            "queues": {
                "content": {
                    "name": self.content_queue,
                    "messages": self.queues.content,
                    "oldest_inserted_at": iso_time(oldest),
                    "oldest_age_seconds": (
                        round((self.checked_at - oldest).total_seconds(), 1) if oldest is not None else None
                    ),
                },
                "poison": {
                    "name": self.poison_queue,
                    "messages": self.queues.poison,
                    "peeked": self.queues.poison_peeked,
                    "sampled": self.queues.poison_sampled,
                    "unreadable": self.queues.poison_unreadable,
                },
            },
            "streams": [s.to_dict() for s in self.streams],
            "sources": self.sources,
            "push": self.push,
        }

    def to_json(self, *, indent: bool = False) -> bytes:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 if indent else 0)


def since_success(error_at: dt.datetime | None, success_at: dt.datetime | None) -> bool:
    """Whether an error is news: it happened after the last success (an older one was recovered from)."""
    return success_at is None or (error_at is not None and error_at >= success_at)


def short_id(tenant_id: str) -> str:
    """A tenant id a table can hold: its first and last four characters (enough to tell 500 tenants apart
    at a glance; ``--tenant`` accepts the short form, the full id or the registry name)."""
    return f"{tenant_id[:4]}…{tenant_id[-4:]}" if len(tenant_id) > 12 else tenant_id


def iso_time(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def age_text(delta: dt.timedelta) -> str:
    """A duration as the status table writes it: ``45 s``, ``12 min``, ``3.5 h``, ``2.0 d``."""
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return "in the future"
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
