"""Status, health and run summaries per source: the Graph streams' rows beside the audit feed's, each
judged by its own source's rules (retention edge, permission, licence) and counted per source."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from o365collector.checkpoints import RecentBlobs
from o365collector.config import HealthPolicy
from o365collector.errors import ApiPermanentError
from o365collector.fetcher import FetchResult, Outcome
from o365collector.health import build_report, judge, render_table
from o365collector.lister import ListerResult, StreamResult
from o365collector.models import FetchTask
from o365collector.queue_runner import DrainResult
from o365collector.running import pass_summary, records_per_source, report
from o365collector.runtime import Collector
from o365collector.status import StreamStatus
from o365collector.status_report import StatusReport, StreamReport
from o365collector.telemetry import ShipTally
from tests.support import TENANT

TID = TENANT.tenant_id
SIGNINS, AUDITS = "Entra.SignIns", "Entra.DirectoryAudits"
CollectorFactory = Callable[..., Collector]


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _task(stream: str, at: dt.datetime) -> FetchTask:
    return FetchTask(TID, stream, f"{stream}_{at:%Y%m%dT%H%M%SZ}", "https://graph.example/x", at, at)


def test_status_groups_graph_streams_by_source_with_lag_shipped_and_the_permission_to_grant(
    make_collector: CollectorFactory,
) -> None:
    """Rows written by the real stores on Azurite: every stream of every selected source is reported with
    its ``source``; the table adds one line per source (title, lag, records); a directory-audit window
    refused with Authorization_RequestDenied makes that stream unhealthy naming AuditLog.Read.All."""
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange", O365_SOURCES="audit,signins,directoryaudits")
    at = now()
    for stream in ("Audit.Exchange", SIGNINS, AUDITS):
        checkpoint = collector.checkpoints.get(TID, stream)
        collector.checkpoints.advance(checkpoint, at - dt.timedelta(minutes=7), RecentBlobs(), at)
    collector.status.record_runs(
        [StreamResult(TID, s, windows=1, lag_seconds=420.0) for s in ("Audit.Exchange", SIGNINS, AUDITS)], at
    )
    collector.status.record_shipped(_task(SIGNINS, at), 1234, at)
    collector.status.record_shipped(_task("Audit.Exchange", at), 10, at)
    denied = ApiPermanentError(
        "Microsoft Graph refused: Insufficient privileges to complete the operation.",
        status=403,
        code="Authorization_RequestDenied",
    )
    collector.status.record_fetch_error(_task(AUDITS, at), denied, at)

    built = build_report(collector, at)
    doc = built.to_dict()
    by_stream = {s["content_type"]: s for s in doc["streams"]}
    assert {k: v["source"] for k, v in by_stream.items()} == {
        "Audit.Exchange": "audit",
        SIGNINS: "signins",
        AUDITS: "directoryaudits",
    }
    assert by_stream[SIGNINS]["state"] == "healthy"
    assert by_stream[SIGNINS]["shipped"]["records"] == 1234
    sources = {s["source"]: s for s in doc["sources"]}
    assert sources["signins"]["title"] == "Entra ID sign-ins (Microsoft Graph)"
    assert sources["signins"]["records_shipped"] == 1234
    assert sources["directoryaudits"]["state"] == "unhealthy"
    assert sources["audit"]["state"] == "healthy"
    assert [p for p in built.problems if AUDITS in p] == [
        f"{TID} {AUDITS}: the app lacks AuditLog.Read.All (Microsoft Graph) (Authorization_RequestDenied): in the "
        "app registration add it as an Application permission, grant admin consent, then wait a few minutes for "
        "new tokens"
    ]
    table = render_table(built)
    assert "  Entra ID sign-ins (Microsoft Graph): lag 7 min, 1,234 records shipped (healthy)" in table
    assert "  Office 365 audit feed (Management Activity API): lag 7 min, 10 records shipped (healthy)" in table


def test_an_audit_only_table_has_no_source_lines(make_collector: CollectorFactory) -> None:
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange")
    collector.status.record_runs([StreamResult(TID, "Audit.Exchange", windows=1, lag_seconds=300.0)], now())
    built = build_report(collector)
    assert "sources:" not in render_table(built)
    assert [s["source"] for s in built.to_dict()["streams"]] == ["audit"]


AT = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


def _judged(stream: str, lag: dt.timedelta, **row: Any) -> StreamReport:
    status = StreamStatus(TID, stream, last_run_at=AT, last_success_at=AT, last_outcome="ok", **row)
    one = StreamReport(TID, stream, checkpoint=AT - lag, lag_seconds=lag.total_seconds(), status=status)
    whole = StatusReport(AT, HealthPolicy(), "q", "p", streams=[one])
    judge(whole, AT)
    return one


def _span(days: int, to_days: int) -> dict[str, Any]:
    lost = {"lost_span_from": AT - dt.timedelta(days=days), "lost_span_to": AT - dt.timedelta(days=to_days)}
    return lost | {"lost_span_at": AT}


@pytest.mark.parametrize(
    ("stream", "lag", "row", "problem", "warning"),
    [
        # Near the retention edge: a Graph stream is degraded a day before its records fall off...
        (SIGNINS, dt.timedelta(days=29, hours=2), {}, None, "near the 30-day retention of Entra ID sign-ins"),
        ("Exchange.MessageTrace", dt.timedelta(days=60), {}, None, None),
        ("Exchange.MessageTrace", dt.timedelta(days=89, hours=1), {}, None, "near the 90-day retention of Exchange"),
        # ...the audit feed keeps today's rules (no lag rule: its listing age pages well inside 7 days).
        ("Audit.General", dt.timedelta(days=6, hours=12), {}, None, None),
        # Past the edge: the unlistable span names the source and its retention.
        (
            AUDITS,
            dt.timedelta(minutes=7),
            _span(days=33, to_days=30),
            "(collection stopped for longer than the 30-day retention of Entra ID directory audits (Microsoft Graph))",
            None,
        ),
        (
            "Audit.General",
            dt.timedelta(minutes=7),
            _span(days=8, to_days=7),
            "(collection stopped for longer than the API's 7-day retention)",
            None,
        ),
        # No P1/P2: the sign-in listing fails with the licence code, and the fix says what to buy or remove.
        (
            SIGNINS,
            dt.timedelta(minutes=7),
            {
                "fetch_error_at": AT,
                "fetch_error_code": "Authentication_RequestFromNonPremiumTenantOrB2CTenant",
                "fetch_error": "Neither tenant is B2C or tenant doesn't have premium license",
            },
            "the tenant has no Microsoft Entra ID P1 or P2 licence (Authentication_RequestFromNonPremiumTenant"
            "OrB2CTenant): sign-in logs need one; license the tenant, or remove signins from its sources",
            "fetching or shipping is failing",  # the raw error, as for any fetch failure
        ),
        # A sink's 403 on a Graph stream is not a Graph permission: only the fetch warning.
        (
            SIGNINS,
            dt.timedelta(minutes=7),
            {"fetch_error_at": AT, "fetch_error_code": "SinkPermanentError", "fetch_error": "splunk: 403 Forbidden"},
            None,
            "fetching or shipping is failing",
        ),
        # A refusal already followed by a shipped window is resolved.
        (
            SIGNINS,
            dt.timedelta(minutes=7),
            {
                "fetch_error_at": AT - dt.timedelta(hours=1),
                "fetch_error_code": "Authorization_RequestDenied",
                "last_shipped_at": AT,
            },
            None,
            None,
        ),
    ],
)
def test_each_source_is_judged_by_its_own_retention_and_permission(
    stream: str, lag: dt.timedelta, row: dict[str, Any], problem: str | None, warning: str | None
) -> None:
    judged = _judged(stream, lag, **row)
    if problem is None:
        assert judged.problems == []
    else:
        assert len(judged.problems) == 1, judged.problems
        assert problem in judged.problems[0]
    if warning is None:
        assert judged.degraded == []
    else:
        assert len(judged.degraded) == 1, judged.degraded
        assert warning in judged.degraded[0]


def test_a_lost_graph_window_is_reported_against_its_sources_retention(make_collector: CollectorFactory) -> None:
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange", O365_SOURCES="audit,signins")
    at = now()
    collector.status.record_runs([StreamResult(TID, s, windows=1) for s in ("Audit.Exchange", SIGNINS)], at)
    collector.status.record_lost(_task(SIGNINS, at - dt.timedelta(days=31)), "past retention", at)
    problems = build_report(collector, at).problems
    assert f"{TID} {SIGNINS}: 1 windows were past the 30-day retention of Entra ID sign-ins (Microsoft Graph) " \
        "before delivery in the last 24 h: their records are lost" in problems


def _tally(counts: dict[str, int]) -> ShipTally:
    tally = ShipTally()
    for stream, records in counts.items():
        handler = tally.wrap(lambda _b, _m, _d, n=records: FetchResult(Outcome.SHIPPED, records=n))
        handler(_task(stream, AT).to_message(), "m", 1)
    return tally


def test_run_summaries_count_records_per_source(capsys: pytest.CaptureFixture[str]) -> None:
    listed = ListerResult(streams=[StreamResult(TID, s) for s in ("Audit.Exchange", "Audit.General", SIGNINS, AUDITS)])
    tally = _tally({"Audit.Exchange": 100, "Audit.General": 20, SIGNINS: 1234})
    by_source = records_per_source(listed, tally)
    assert by_source == (
        "Office 365 audit feed (Management Activity API) 120 records; Entra ID sign-ins (Microsoft Graph) 1,234 "
        "records; Entra ID directory audits (Microsoft Graph) 0 records"
    )
    drained = DrainResult(outcomes={"shipped": 3}, records=1354, completed=3)
    assert report(listed, drained, 1.0, by_source=by_source) == 0
    assert f"by source: {by_source}" in capsys.readouterr().out
    assert f"(1354 records) ({by_source})" in pass_summary(1, listed, drained, 1.0, None, by_source=by_source)
    # An audit-only run's lines are what they were.
    audit_only = ListerResult(streams=[StreamResult(TID, "Audit.Exchange")])
    assert records_per_source(audit_only, _tally({"Audit.Exchange": 5})) == ""
