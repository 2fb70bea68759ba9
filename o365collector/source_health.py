"""Status and health per source: which source a stream belongs to, its own health rules, its summary lines.

A stream's status row, checkpoint and lag are already its own (rows are keyed by stream name); what a
source adds is how they are judged and shown:

- **Retention edge** (every source): content that fell out of the source's retention before we read it
  is unhealthy, and the message names the source and how long it keeps records (the audit feed 7 days,
  Entra ID logs 30, message trace 90; ``sources.catalog``).
- **Near the edge** (Microsoft Graph sources): a stream whose checkpoint is within ``EDGE_HEADROOM`` of
  its source's retention is degraded. The audit feed keeps today's rules: its listing-age rule already
  pages well inside 7 days. No new setting: the edge comes from the catalog's retention and the
  listing age (``O365_HEALTH_MAX_LISTING_AGE_MINUTES``) stays the offline rule of every source, since
  the lister plans every stream's windows on each timer run whichever source it is. Entra writes
  sign-ins within minutes, so a Graph stream's checkpoint lag is the end delay plus one timer interval,
  like the audit feed's.
- **Permission or licence** (Microsoft Graph sources): a current error (not followed by a success)
  whose code is Graph's refusal (``Authorization_RequestDenied``, ``Authentication_RequestFromNon
  PremiumTenantOrB2CTenant``, ...) or whose text names the source's permission makes the stream
  unhealthy with the permission to grant (or the licence to buy).

Pure: reads the report's values, no I/O, no clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .sources.catalog import AUDIT, SOURCES, SourceSpec, source_of
from .status_report import DEGRADED, HEALTHY, UNHEALTHY, StreamReport, age_text, since_success

# A day between "degraded: near the edge" and records falling off the source: time to fix and catch up.
EDGE_HEADROOM = dt.timedelta(days=1)

# Microsoft Graph's answers that only an admin can fix (the stored error code is the service's).
GRAPH_DENIED = "Authorization_RequestDenied"  # "Insufficient privileges to complete the operation."
PERMISSION_CODES = frozenset({GRAPH_DENIED, "Authorization_Failed", "Forbidden", "AccessDenied"})
LICENCE_CODES = frozenset({"Authentication_RequestFromNonPremiumTenantOrB2CTenant"})
LICENCE_HINT = (
    "the tenant has no Microsoft Entra ID P1 or P2 licence ({code}): sign-in logs need one; "
    "license the tenant, or remove {name} from its sources (O365_SOURCES or the entry's sources)"
)
PERMISSION_HINT = (
    "the app lacks {permission} ({code}): in the app registration add it as an Application permission, "
    "grant admin consent, then wait a few minutes for new tokens"
)


def source_spec(stream: str) -> SourceSpec:
    """The stream's source; a name no source has is an audit content type (the only streams before sources)."""
    return source_of(stream) or SOURCES[AUDIT]


def retention_phrase(stream: str) -> str:
    spec = source_spec(stream)
    if spec.name == AUDIT:
        return "the API's 7-day retention"  # the audit feed's wording since before there were sources
    return f"the {spec.retention.days}-day retention of {spec.title}"


def expired_text(stream: StreamReport, hours: float) -> str:
    """The problem for units the source no longer had when we fetched them."""
    spec = source_spec(stream.content_type)
    if spec.name == AUDIT:
        return f"{stream.expired_recent} content blobs expired at the source before delivery in the last {hours:g} h"
    return (
        f"{stream.expired_recent} windows were past {retention_phrase(stream.content_type)} before delivery "
        f"in the last {hours:g} h: their records are lost"
    )


def judge_source(stream: StreamReport, now: dt.datetime) -> None:
    """A Graph stream's own rules (the audit feed's are ``health``'s): near the edge, permission, licence."""
    spec = source_spec(stream.content_type)
    if spec.name == AUDIT:
        return
    if stream.checkpoint is not None and now - stream.checkpoint > spec.retention - EDGE_HEADROOM:
        days = (now - stream.checkpoint).total_seconds() / 86400
        stream.degraded.append(
            f"the checkpoint is {days:.1f} d behind, near {retention_phrase(stream.content_type)}: "
            "records older than that are lost unless collection catches up"
        )
    refusal = permission_problem(stream, spec)
    if refusal is not None:
        stream.problems.append(refusal)


def permission_problem(stream: StreamReport, spec: SourceSpec) -> str | None:
    """The fix for a current permission or licence refusal of the stream's source (None: no such error)."""
    s = stream.status
    if s is None:
        return None
    current: list[tuple[str | None, str | None]] = []
    if s.last_error_at is not None and since_success(s.last_error_at, s.last_success_at):
        current.append((s.last_error_code, s.last_error))
    if s.fetch_error_at is not None and since_success(s.fetch_error_at, s.last_shipped_at):
        current.append((s.fetch_error_code, s.fetch_error))
    for code, message in current:
        text = f"{code or ''} {message or ''}"
        licence = next((c for c in LICENCE_CODES if c in text), None)
        if licence is not None:
            return LICENCE_HINT.format(code=licence, name=spec.name)
        # Exact codes only: a fetch error may be a sink's "403 Forbidden", which no Graph permission fixes.
        refused = code if code in PERMISSION_CODES else None
        if refused is None and GRAPH_DENIED in text:
            refused = GRAPH_DENIED
        if refused is None and code == "ApiPermanentError" and spec.permission.split(" ")[0] in text:
            refused = code
        if refused is not None:
            return PERMISSION_HINT.format(permission=spec.permission, code=refused)
    return None


# -- showing streams by source ------------------------------------------------------------------------


@dataclass
class SourceSummary:
    """One source across the tenants and streams of a report."""

    spec: SourceSpec
    streams: int = 0
    lag_seconds: float | None = None
    """The largest lag among its streams (None: no stream has a checkpoint yet)."""
    records: int = 0
    state: str = HEALTHY

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.spec.name,
            "title": self.spec.title,
            "streams": self.streams,
            "state": self.state,
            "lag_seconds": self.lag_seconds,
            "records_shipped": self.records,
            "retention_days": self.spec.retention.days,
            "permission": self.spec.permission,
        }


_WORST = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}


def summarize_sources(streams: Iterable[StreamReport]) -> list[SourceSummary]:
    """Per source, in the catalog's order: its streams' worst state, largest lag and shipped records."""
    found: dict[str, SourceSummary] = {}
    for stream in streams:
        spec = source_spec(stream.content_type)
        summary = found.setdefault(spec.name, SourceSummary(spec))
        summary.streams += 1
        summary.records += stream.status.shipped_records if stream.status else 0
        if stream.lag_seconds is not None:
            summary.lag_seconds = max(summary.lag_seconds or 0.0, stream.lag_seconds)
        if _WORST[stream.state] > _WORST[summary.state]:
            summary.state = stream.state
    return [found[name] for name in SOURCES if name in found]


def source_lines(streams: Sequence[StreamReport]) -> list[str]:
    """The table's per-source lines, shown only when a stream of another source than the audit feed is."""
    summaries = summarize_sources(streams)
    if all(s.spec.name == AUDIT for s in summaries):
        return []  # an audit-only deployment's table stays as it was
    lines = ["sources:"]
    for s in summaries:
        lag = "no checkpoint yet" if s.lag_seconds is None else f"lag {age_text(dt.timedelta(seconds=s.lag_seconds))}"
        count = f"{s.streams} streams, " if s.streams > 1 else ""
        lines.append(f"  {s.spec.title}: {count}{lag}, {s.records:,} records shipped ({s.state})")
    return lines


def records_by_source(counts: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """(stream, records) pairs summed per source title, in the catalog's order (for run summaries)."""
    sums: dict[str, int] = {}
    for stream, records in counts:
        name = source_spec(stream).name
        sums[name] = sums.get(name, 0) + records
    return [(SOURCES[name].title, sums[name]) for name in SOURCES if name in sums]
