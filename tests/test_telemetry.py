"""Run summaries for Application Insights: stable prefixes, JSON fields that add up to what really flowed,
and log levels as STYLE.md says (retries DEBUG, recovered degradation WARNING, loss or action ERROR)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from o365collector import runtime
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Fault, Simulator
from tests.support import TENANT, EnvFactory

TID = TENANT.tenant_id
CollectorFactory = Callable[..., Collector]

LISTER_FIELDS = {
    "tenant_id", "content_type", "source", "windows", "windows_left", "blobs_listed", "blobs_enqueued",
    "blobs_already_queued", "cursor", "lag_seconds", "throttled", "error_code", "error", "seconds",
    "late_blobs", "max_lateness_seconds", "sweep_windows", "late_sweep", "refused_entries",
}  # fmt: skip
RUN_FIELDS = {
    "tenant_id", "content_type", "source", "windows", "blobs_listed", "blobs_enqueued", "blobs_shipped",
    "blobs_skipped", "blobs_lost", "blobs_refused", "blobs_deferred", "records", "failures", "throttled", "lag_seconds",
    "seconds", "error_code",
}  # fmt: skip


def summaries(caplog: pytest.LogCaptureFixture, prefix: str) -> list[dict[str, Any]]:
    """The JSON of every line starting with ``prefix``, parsed the way the README's Kusto queries do."""
    found = []
    for record in caplog.records:
        message = record.getMessage()
        if message.startswith(prefix + " {"):
            found.append(orjson.loads(message[message.index("{") :]))
    return found


def generate(sim: Simulator, content_type: str, hours: float = 4) -> None:
    now = dt.datetime.now(dt.UTC)
    sim.generate(
        TID, content_type, now - dt.timedelta(hours=hours), now - dt.timedelta(minutes=10),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip


def test_the_lister_logs_one_summary_per_stream_with_stable_fields(
    simulator: Simulator, make_collector: CollectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    generate(simulator, "Audit.Exchange")
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange,Audit.General")
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="o365collector"):
        collector.run_lister()
    took = time.monotonic() - started
    lines = sorted(summaries(caplog, "lister run complete"), key=lambda line: str(line["content_type"]))
    assert [line["content_type"] for line in lines] == ["Audit.Exchange", "Audit.General"]  # streams run in parallel
    for line in lines:
        assert set(line) == LISTER_FIELDS
        assert line["source"] == "audit"  # the catalog's name: the workbook and alerts group by it
        assert line["seconds"] > 0
        # The cursor is the end delay (5 min) behind the time the run planned; the lag is measured at the end.
        assert 5 * 60 <= line["lag_seconds"] <= 5 * 60 + took + 1
    assert lines[0]["blobs_enqueued"] == len(simulator.blobs(TID, "Audit.Exchange"))


def test_a_command_line_run_logs_listing_and_shipping_per_stream(
    simulator: Simulator, make_collector: CollectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    generate(simulator, "Audit.Exchange")
    generate(simulator, "DLP.All", hours=2)
    simulator.faults.add(Fault(kind="throttle", route="list", count=2))
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange,DLP.All")
    with caplog.at_level(logging.INFO, logger="o365collector"):
        assert run_once(collector) == 0
    lines = {line["content_type"]: line for line in summaries(caplog, "collector run complete")}
    assert set(lines) == {"Audit.Exchange", "DLP.All"}
    for content_type, line in lines.items():
        blobs = simulator.blobs(TID, content_type)
        assert set(line) == RUN_FIELDS
        assert line["blobs_listed"] == line["blobs_shipped"] == len(blobs)
        assert line["records"] == sum(len(b.records) for b in blobs)
        assert line["failures"] == line["blobs_lost"] == 0
    assert sum(line["throttled"] for line in lines.values()) == 2


@pytest.fixture
def app_env(make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    for key, value in make_env(O365_CONTENT_TYPES="Audit.Exchange").items():
        monkeypatch.setenv(key, value)
    runtime.reset_collector()
    yield {}
    runtime.reset_collector()


def test_each_queue_trigger_run_logs_what_it_shipped(
    simulator: Simulator, app_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    generate(simulator, "Audit.Exchange")
    runtime.run_lister()
    queue = runtime.collector().queue
    with caplog.at_level(logging.INFO, logger="o365collector"):
        for message in list(queue.receive_messages(max_messages=32)):
            runtime.process_message(body=message.content, message_id=message.id, dequeue_count=1)
            # the same blob again (a redelivery): skipped, so no throughput line
            runtime.process_message(body=message.content, message_id="another-delivery", dequeue_count=1)
    lines = summaries(caplog, "fetch run complete")
    blobs = {b.content_id: b for b in simulator.blobs(TID)}
    assert sorted(line["content_id"] for line in lines) == sorted(blobs)
    for line in lines:
        assert line["tenant_id"] == TID
        assert line["content_type"] == "Audit.Exchange"
        assert line["blobs_shipped"] == 1
        assert line["records"] == len(blobs[line["content_id"]].records)


def test_retries_that_recover_log_one_warning_per_pass_and_the_rest_at_debug(
    simulator: Simulator, make_collector: CollectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    generate(simulator, "Audit.Exchange")
    simulator.faults.add(Fault(kind="throttle", route="list", count=3))  # the client's retries absorb these
    # Every attempt of every blob's first delivery fails (4 blobs x 4 attempts), whichever order the queue
    # runner's threads take them in: each blob needs a redelivery, and none fails 5 deliveries.
    simulator.faults.add(Fault(kind="server_error", route="fetch", count=16))
    collector = make_collector(O365_CONTENT_TYPES="Audit.Exchange", O365_RETRY_MAX_ATTEMPTS="4")
    with caplog.at_level(logging.DEBUG, logger="o365collector"):
        assert run_once(collector) == 0
    ours = [r for r in caplog.records if r.name.startswith("o365collector")]
    debug = [r.getMessage() for r in ours if r.levelno == logging.DEBUG]
    assert any(m.startswith("attempt ") and "retrying" in m for m in debug), "the client's retries"
    assert any(m.startswith("message ") and "retrying" in m for m in debug), "the queue's redelivery"
    # The first failure of a pass is a WARNING with its cause (a sink or API that is down is not silent);
    # everything else that recovered stays at DEBUG.
    loud = [(r.name, r.levelname, r.getMessage()) for r in ours if r.levelno >= logging.WARNING]
    assert [(name, level) for name, level, _ in loud] == [("o365collector.queue_runner", "WARNING")], loud
    assert "AF50000" in loud[0][2] or "500" in loud[0][2], loud
