"""The third state: ``status`` and ``health`` say DEGRADED (exit 3, HTTP 200 with ``"status": "degraded"``)
for a failed last listing run, a disabled subscription, failing deliveries and a content queue that is not
draining; an error older than the success after it shows as resolved. Also the MSSP view: registry names,
short ids, records shipped per stream, ``--tenant`` and ``--problems-only``, and the dry run's per-blob lines.

Storage is Azurite; times come from injected clocks (a report's ``now``, the status rows' write times)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import orjson
import pytest

from o365collector import cli
from o365collector.health import build_report, filter_report, health_response, render_table
from o365collector.lister import StreamResult
from o365collector.models import FetchTask
from o365collector.poison import replay_poison
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from tests.support import TENANT, EnvFactory

TID = TENANT.tenant_id
OTHER = "99999999-8888-4777-8666-555555555555"
CollectorFactory = Callable[..., Collector]
T0 = dt.datetime.now(dt.UTC).replace(microsecond=0)


def ok(content_type: str, tenant_id: str = TID) -> StreamResult:
    return StreamResult(tenant_id, content_type, windows=1)


def failed(content_type: str, code: str, error: str) -> StreamResult:
    return StreamResult(TID, content_type, error=error, error_code=code)


def task(content_id: str = "blob-1", created: dt.datetime = T0, content_type: str = "Audit.Exchange") -> FetchTask:
    return FetchTask(TID, content_type, content_id, f"https://x/{content_id}", created, created + dt.timedelta(days=7))


def test_a_failed_last_run_after_a_recent_success_is_degraded_not_unhealthy(make_collector: CollectorFactory) -> None:
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange")
    collector.status.record_runs([ok("Audit.Exchange")], T0)
    collector.status.record_runs(
        [failed("Audit.Exchange", "HTTP500", "list: HTTP 500 boom")], T0 + dt.timedelta(minutes=5)
    )
    report = build_report(collector, T0 + dt.timedelta(minutes=6))
    assert report.problems == []
    assert report.state == "degraded"
    assert not report.healthy
    assert report.degraded == [
        f"{TID} Audit.Exchange: the last listing run failed (60 s ago): HTTP500: list: HTTP 500 boom"
    ]
    assert "DEGRADED: 1 warning(s)" in render_table(report)
    status, body = health_response(lambda: _at(collector, T0 + dt.timedelta(minutes=6)))
    doc = orjson.loads(body)
    assert (status, doc["status"], doc["healthy"]) == (200, "degraded", False)
    assert doc["streams"][0]["state"] == "degraded"
    # Past the listing age it is unhealthy, and the warning is not repeated next to the problem.
    later = build_report(collector, T0 + dt.timedelta(minutes=31))
    assert later.state == "unhealthy"
    assert later.degraded == []
    assert health_response(lambda: _at(collector, T0 + dt.timedelta(minutes=31)))[0] == 503


def test_a_disabled_subscription_is_degraded_with_the_way_to_start_it(
    simulator: Simulator, make_collector: CollectorFactory
) -> None:
    clock = {"now": T0}
    collector = make_collector(clock=lambda: clock["now"], O365_CONTENT_TYPES="Audit.General")
    assert run_once(collector) == 0
    simulator.disable_subscription(TID, "Audit.General")
    clock["now"] += dt.timedelta(minutes=5)
    assert run_once(collector) == 1
    report = build_report(collector)
    assert report.state == "degraded"
    (warning,) = report.degraded
    assert "the subscription is disabled (AF20023" in warning
    assert "subscriptions start --content-type Audit.General" in warning
    assert health_response(lambda: collector)[0] == 200


def test_fetch_errors_newer_than_the_last_shipped_blob_are_degraded_and_resolved_by_a_later_ship(
    make_collector: CollectorFactory,
) -> None:
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange")
    collector.status.record_runs([ok("Audit.Exchange")], T0)
    collector.status.record_shipped(task("a"), 10, T0)
    collector.status.record_fetch_error(task("b"), RuntimeError("sink refused: HTTP 401"), T0 + dt.timedelta(minutes=1))
    report = build_report(collector, T0 + dt.timedelta(minutes=2))
    assert report.state == "degraded"
    (warning,) = report.degraded
    assert warning.startswith(f"{TID} Audit.Exchange: fetching or shipping is failing: last error 60 s ago")
    assert "HTTP 401" in warning
    assert "last blob shipped 2 min ago" in warning
    stream = report.streams[0].to_dict()
    assert stream["last_error"]["resolved"] is False
    # The next success after a failure is written at once (not a minute later): the error is resolved.
    collector.status.record_shipped(task("c"), 5, T0 + dt.timedelta(minutes=1, seconds=10))
    after = build_report(collector, T0 + dt.timedelta(minutes=2))
    assert after.state == "healthy", after.degraded
    stream = after.streams[0].to_dict()
    assert stream["last_error"]["resolved"] is True
    assert stream["shipped"]["records"] == 15
    assert stream["shipped"]["blobs"] == 2
    assert "resolved: 60 s ago (fetch)" in render_table(after)


def test_an_old_listing_error_before_a_newer_success_is_resolved_not_current(make_collector: CollectorFactory) -> None:
    collector = make_collector(O365_CONTENT_TYPES="DLP.All")
    collector.status.record_runs([failed("DLP.All", "AF20023", "AF20023: disabled")], T0)
    collector.status.record_runs([ok("DLP.All")], T0 + dt.timedelta(minutes=5))
    report = build_report(collector, T0 + dt.timedelta(minutes=6))
    assert report.state == "healthy", (report.problems, report.degraded)
    assert report.streams[0].to_dict()["last_error"]["resolved"] is True
    assert "resolved: 6 min ago (listing): AF20023: disabled" in render_table(report)


def test_a_content_queue_whose_oldest_message_waits_past_the_listing_age_is_degraded(
    make_collector: CollectorFactory,
) -> None:
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange")
    collector.status.record_runs([ok("Audit.Exchange")], T0)
    collector.queue.send_message(task().to_message())
    inserted = collector.queue.peek_messages(max_messages=1)[0].inserted_on
    assert build_report(collector, inserted + dt.timedelta(minutes=29)).degraded == []
    # Recent listing success, a queue nobody drains: only the queue reading can make this degraded.
    collector.status.record_runs([ok("Audit.Exchange")], inserted + dt.timedelta(minutes=30))
    report = build_report(collector, inserted + dt.timedelta(minutes=31))
    assert report.state == "degraded"
    (warning,) = report.degraded
    assert warning.startswith(f"the content queue {collector.settings.content_queue} is not draining: 1 messages")
    assert report.to_dict()["queues"]["content"]["oldest_age_seconds"] == pytest.approx(31 * 60, abs=1)


def test_records_shipped_per_stream_are_counted_without_a_write_per_blob(
    simulator: Simulator, make_collector: CollectorFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    now = dt.datetime.now(dt.UTC)
    simulator.generate(TID, "Audit.Exchange", now - dt.timedelta(hours=4), now - dt.timedelta(minutes=10),
                       blob_every=dt.timedelta(hours=1))  # fmt: skip
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange")
    assert run_once(collector) == 0
    blobs = len(simulator.blobs(TID, "Audit.Exchange"))
    first = build_report(collector).streams[0].to_dict()["shipped"]
    assert first["blobs"] == 1  # the first success is written at once; the rest wait for the minute
    collector.close()  # shutdown writes what is pending
    shipped = build_report(collector).streams[0].to_dict()["shipped"]
    assert shipped["blobs"] == blobs
    printed = capsys.readouterr().out  # run --once's own count: "shipped 4 blobs (42 records)"
    assert f"shipped {blobs} blobs ({shipped['records']} records)" in printed
    assert shipped["records"] > 0


def test_names_from_the_registry_short_ids_and_the_tenant_and_problems_only_filters(
    make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = [
        {"tenantId": tid, "name": name, "clientId": "d0000000-0000-4000-8000-000000000000",
         "credential": "setting:O365_SECRET_0", "contentTypes": ["Audit.Exchange"]}
        for tid, name in ((TID, "Contoso"), (OTHER, "Fabrikam"))
    ]  # fmt: skip
    env = make_env(O365_TENANTS=orjson.dumps(entries).decode(), O365_SECRET_0="s")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from o365collector.config import Settings

    collector = Collector(Settings.from_env(env), sinks=[])
    collector.ensure_resources()
    now = dt.datetime.now(dt.UTC)
    collector.status.record_runs([ok("Audit.Exchange"), ok("Audit.Exchange", OTHER)], now)
    collector.status.record_fetch_error(task(), RuntimeError("HTTP 503"), now)  # Contoso degraded
    report = build_report(collector)
    labels = {s.tenant_id: s.label for s in report.streams}
    assert labels == {TID: "Contoso (1111…5555)", OTHER: "Fabrikam (9999…5555)"}
    assert [s.tenant_id for s in filter_report(report, ["fabrikam"]).streams] == [OTHER]
    assert [s.tenant_id for s in filter_report(report, ["9999…5555"]).streams] == [OTHER]
    assert filter_report(report, ["fabrikam"]).state == "healthy"
    assert [s.tenant_id for s in filter_report(report, problems_only=True).streams] == [TID]

    assert cli.main(["status"]) == 3
    table = capsys.readouterr().out
    assert "Contoso (1111…5555)" in table
    assert "Fabrikam (9999…5555)" in table
    assert " UTC" in table
    assert cli.main(["status", "--tenant", "Fabrikam"]) == 0
    assert "Contoso" not in capsys.readouterr().out
    assert cli.main(["status", "--problems-only", "--json"]) == 3
    doc = orjson.loads(capsys.readouterr().out)
    assert [(s["tenant_name"], s["state"]) for s in doc["streams"]] == [("Contoso", "degraded")]


def test_a_dry_run_shows_each_blobs_age_time_left_and_why_it_failed(make_collector: CollectorFactory) -> None:
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange")
    created = T0 - dt.timedelta(days=5)
    collector.poison_queue.send_message(task("old-blob", created).to_message())
    result = replay_poison(collector.poison_queue, collector.queue, collector.ledger, dry_run=True)
    lines = result.lines("content", "poison", now=T0)
    (line,) = [x for x in lines if "old-blob" in x]
    assert "age 5.0 d" in line
    assert "expires in 2.0 d (" in line
    assert "would move" in line
    assert "failed: no failure recorded in the ledger" in line
    assert result.to_dict()["blobs"][0]["content_id"] == "old-blob"
    assert collector.poison_queue.get_queue_properties().approximate_message_count == 1  # nothing moved


def _at(collector: Collector, moment: dt.datetime) -> Collector:
    collector.clock = lambda: moment
    return collector
