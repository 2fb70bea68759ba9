"""Push mode in ``status`` and ``health``: per stream, how blobs arrived and the webhook's state; refusals.

Read from the arrival table (``arrivals``), only when push mode is on: one query for the counts, one for
the webhook states, one read for the refusals. A webhook the service disabled or let expire makes its
stream degraded (polling still collects, but push latency is gone until it is re-enabled).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Protocol

from .arrivals import REENABLE, ArrivalCounts, ArrivalStore
from .config import Settings
from .redaction import summary
from .status_report import StatusReport

log = logging.getLogger(__name__)


class PushState(Protocol):
    """What push mode's part of the report reads of a collector: its settings and the arrival table."""

    @property
    def settings(self) -> Settings: ...
    @property
    def arrivals(self) -> ArrivalStore: ...


def report_push(report: StatusReport, collector: PushState, now: dt.datetime) -> None:
    if not collector.settings.push.enabled:
        return
    try:
        counts = collector.arrivals.counts(now)
        hooks = collector.arrivals.webhooks()
        refused = collector.arrivals.refused()
    except Exception as err:  # advisory: the rest of the report stands without it
        log.warning("could not read the arrival table for the push counts: %s", summary(str(err)))
        return
    for stream in report.streams:
        key = (stream.tenant_id, stream.content_type)
        arrival = counts.get(key, ArrivalCounts())
        hook = hooks.get(key)
        stream.push = arrival.to_dict() | {
            "webhook": hook.state if hook else None,
            "webhook_address": hook.address if hook else None,
            "webhook_seen_at": hook.seen_at.isoformat() if hook and hook.seen_at else None,
        }
        if hook is not None and hook.state in ("disabled", "expired"):
            stream.degraded.append(
                f"the push webhook is {hook.state} (as read {_when(hook.seen_at)}): polling still collects; "
                f"re-enable it with `{REENABLE.format(content_type=stream.content_type)}`"
            )
    report.push = {"refused": refused.to_dict()}


def _when(at: dt.datetime | None) -> str:
    return at.strftime("%Y-%m-%dT%H:%MZ") if at else "at an unknown time"


def push_lines(report: StatusReport) -> list[str]:
    """The table's push lines: one per stream, then the receiver's refusals."""
    if report.push is None:
        return []
    lines = []
    for stream in report.streams:
        push: dict[str, Any] = stream.push or {}
        lines.append(
            f"push {stream.tenant_id} {stream.content_type}: webhook {push.get('webhook') or 'unknown'}; "
            f"blobs by push only {push.get('pushed_only', 0)}, by poll only (push missed) "
            f"{push.get('polled_only', 0)}, both {push.get('both', 0)} (created in the last 7 days)"
        )
    refused = report.push.get("refused") or {}
    lines.append(
        f"webhook requests refused: {refused.get('bad_body', 0)} bad bodies (400), "
        f"{refused.get('bad_auth', 0)} wrong Webhook-AuthID (401)"
        + (f"; the last {refused.get('last_at')}: {refused.get('last_reason')}" if refused.get("last_at") else "")
    )
    return lines
