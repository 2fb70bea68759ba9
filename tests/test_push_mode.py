"""Push mode end to end: the simulator pushes to the collector's webhook listener; Azurite holds the queue.

The simulator's clock is held still and moved by hand (``deliver_notifications`` sends what became due),
so retries with backoff are driven without waiting.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import requests

from o365collector import cli
from o365collector.diagnose import Verdict, diagnose
from o365collector.health import build_report
from o365collector.push_status import push_lines
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.simulator.data import SimBlob
from o365collector.webhook_server import WebhookServer
from tests.support import TENANT, EnvFactory, host_queue_runner, now

TID = TENANT.tenant_id
AUTH = "push-" + "0f1e2d3c" * 5
TYPE = "Audit.Exchange"


class SimClock:
    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, delta: dt.timedelta) -> None:
        self.now += delta


@pytest.fixture
def env(make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = make_env(
        O365_WEBHOOK_AUTH_ID=AUTH, O365_ARRIVAL_TABLE="arr" + uuid.uuid4().hex[:10], O365_CONTENT_TYPES=TYPE
    )
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture
def collector(env: dict[str, str], make_collector: Callable[..., Collector]) -> Collector:
    return make_collector(**env)


@pytest.fixture
def clock(simulator: Simulator) -> SimClock:
    held = SimClock(now())
    simulator.set_clock(held)
    return held


@pytest.fixture
def listener(collector: Collector, simulator: Simulator) -> Iterator[WebhookServer]:
    files = simulator.cert_files
    with WebhookServer(collector.webhook_receiver(), cert_file=files.cert_file, key_file=files.key_file) as server:
        yield server


def start_webhook(listener: WebhookServer, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["subscriptions", "start", "--content-type", TYPE, "--webhook", listener.url]) == 0
    return capsys.readouterr().out


def future_blobs(simulator: Simulator, clock: SimClock, hours: int = 2) -> list[SimBlob]:
    """Blobs that become available after now (on the simulator's clock): the ones a new webhook is sent."""
    start = clock.now - dt.timedelta(hours=hours + 1)
    return simulator.generate(
        TID,
        TYPE,
        start,
        start + dt.timedelta(hours=hours),
        blob_every=dt.timedelta(minutes=15),
        listing_delay=dt.timedelta(hours=hours + 1, minutes=1),
    )


def shipped(collector: Collector) -> Counter[str]:
    return Counter(
        orjson.loads(line)["Id"]
        for path in Path(collector.settings.sinks[0].directory).rglob("*.ndjson")  # type: ignore[attr-defined]
        for line in path.read_bytes().splitlines()
    )


def served(blobs: list[SimBlob]) -> Counter[str]:
    return Counter(str(r["Id"]) for b in blobs for r in b.records)


def queued_ids(collector: Collector) -> list[str]:
    return [orjson.loads(m.content)["contentId"] for m in collector.queue.peek_messages(max_messages=32)]


def test_a_backfill_is_delivered_by_push_alone(
    simulator: Simulator,
    clock: SimClock,
    collector: Collector,
    listener: WebhookServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = start_webhook(listener, capsys)
    assert f"{TID} {TYPE}: enabled; webhook enabled {listener.url}" in out
    blobs = future_blobs(simulator, clock)
    clock.advance(dt.timedelta(hours=4))
    report = simulator.deliver_notifications()
    assert (report.delivered, report.failed_batches) == (len(blobs), 0)
    host_queue_runner(collector).drain(max_seconds=60)  # no lister run at all
    assert shipped(collector) == served(blobs)
    push = build_report(collector).streams[0].push
    assert push is not None
    assert (push["pushed_only"], push["polled_only"], push["both"], push["webhook"]) == (len(blobs), 0, 0, "enabled")


def test_a_failed_push_is_answered_503_and_the_retry_enqueues_every_blob_once(
    simulator: Simulator,
    clock: SimClock,
    collector: Collector,
    listener: WebhookServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    start_webhook(listener, capsys)
    blobs = future_blobs(simulator, clock, hours=1)
    clock.advance(dt.timedelta(hours=3))
    collector.queue.delete_queue()  # the queue is gone: the receiver cannot take the notification
    failed = simulator.deliver_notifications()
    assert failed.failed_batches >= 1
    assert failed.delivered == 0
    assert {n.status for n in failed.notifications} == {503}
    collector.ensure_resources()
    assert simulator.deliver_notifications().delivered == 0  # still backing off (simulator time)
    clock.advance(dt.timedelta(minutes=5))
    retried = simulator.deliver_notifications()
    assert retried.delivered == len(blobs)
    assert sorted(queued_ids(collector)) == sorted(b.content_id for b in blobs)


def test_push_and_poll_together_ship_every_record_once_and_status_tells_them_apart(
    simulator: Simulator,
    clock: SimClock,
    collector: Collector,
    listener: WebhookServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Available before the webhook existed: never pushed, only the lister finds them.
    earlier = clock.now - dt.timedelta(hours=6)
    before = simulator.generate(
        TID, TYPE, earlier, earlier + dt.timedelta(hours=1), blob_every=dt.timedelta(minutes=20)
    )
    start_webhook(listener, capsys)
    pushed = future_blobs(simulator, clock)
    clock.advance(dt.timedelta(hours=4))
    simulator.options.push.duplicate_every = 2  # the service repeats notifications
    assert simulator.deliver_notifications().delivered == len(pushed)
    assert run_once(collector) == 0  # lists the same span: every pushed blob again, plus the ones push missed
    assert shipped(collector) == served(before + pushed)  # once each: the ledger absorbed the doubles
    push = build_report(collector).streams[0].push
    assert push is not None
    assert (push["pushed_only"], push["polled_only"], push["both"]) == (0, len(before), len(pushed))
    assert cli.main(["status"]) in (0, 3)
    table = capsys.readouterr().out
    assert f"by poll only (push missed) {len(before)}, both {len(pushed)}" in table


def test_a_webhook_the_service_disabled_is_flagged_by_check_and_re_enabled_by_one_command(
    simulator: Simulator,
    clock: SimClock,
    env: dict[str, str],
    collector: Collector,
    listener: WebhookServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    start_webhook(listener, capsys)
    future_blobs(simulator, clock, hours=1)
    clock.advance(dt.timedelta(hours=3))
    collector.queue.delete_queue()  # every delivery fails until the service gives up
    disabled: list[tuple[str, str]] = []
    for _ in range(simulator.options.push.max_failures + 1):
        disabled += simulator.deliver_notifications().disabled
        clock.advance(simulator.options.push.backoff_max)
    assert [(tenant.lower(), content_type) for tenant, content_type in disabled] == [(TID.lower(), TYPE)]
    collector.ensure_resources()
    steps = [s for s in diagnose(env) if s.name == "webhook"]
    assert [s.verdict for s in steps] == [Verdict.FAIL]
    assert "push webhook disabled" in steps[0].detail
    assert f"subscriptions start --content-type {TYPE} --webhook <URL>" in steps[0].detail
    assert cli.main(["subscriptions", "list"]) == 0
    assert f"{TYPE}: enabled; webhook disabled" in capsys.readouterr().out
    assert any("push webhook is disabled" in d for d in build_report(collector).degraded)
    # Re-enabling is the command that set it.
    assert "webhook enabled" in start_webhook(listener, capsys)
    assert [s.verdict for s in diagnose(env) if s.name == "webhook"] == [Verdict.OK]


def test_an_expired_webhook_is_flagged_by_check_with_the_command_that_renews_it(
    simulator: Simulator,
    clock: SimClock,
    env: dict[str, str],
    collector: Collector,
    listener: WebhookServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Someone set the webhook with an expiration (the CLI never does); it passes on the simulator's clock.
    http = requests.Session()
    http.trust_env = False  # a REQUESTS_CA_BUNDLE left in the environment would override verify
    http.verify = simulator.ca_file
    token = http.post(
        f"{simulator.authority_url}/{TID}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": TENANT.client_id, "client_secret": TENANT.client_secret,
              "scope": "https://manage.office.com/.default"},
        timeout=30,
    ).json()["access_token"]  # fmt: skip
    expiration = (clock.now + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    http.post(
        f"{simulator.api_url}/api/v1.0/{TID}/activity/feed/subscriptions/start",
        params={"contentType": TYPE, "PublisherIdentifier": TID},
        json={"webhook": {"address": listener.url, "authId": AUTH, "expiration": expiration}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).raise_for_status()
    assert [s.verdict for s in diagnose(env) if s.name == "webhook"] == [Verdict.OK]

    clock.advance(dt.timedelta(hours=2))
    steps = [s for s in diagnose(env) if s.name == "webhook"]
    assert [s.verdict for s in steps] == [Verdict.FAIL]
    assert "push webhook expired (it expired" in steps[0].detail
    assert f"subscriptions start --content-type {TYPE} --webhook <URL>" in steps[0].detail
    assert cli.main(["subscriptions", "list"]) == 0  # records the state status shows
    assert f"{TYPE}: enabled; webhook expired" in capsys.readouterr().out
    assert any("push webhook is expired" in d for d in build_report(collector).degraded)

    assert "webhook enabled" in start_webhook(listener, capsys)  # the command renews it, with no expiration
    assert [s.verdict for s in diagnose(env) if s.name == "webhook"] == [Verdict.OK]


def test_the_push_demo_in_certificate_mode_ships_everything_through_the_cli_listener(tmp_path: Path) -> None:
    """``demo --push --auth-mode certificate``: the collector reads its certificate (a PFX in the simulated Key
    Vault) through the managed identity endpoint, every record ships, and the fresh blobs are pushed to the
    listener ``run --webhook-listen`` serves (its start line is logged), not to a stand-in."""
    repo = Path(__file__).resolve().parents[1]
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
    env |= {"PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "o365collector", "--log-level", "INFO", "demo", "--days", "0.1", "--push",
         "--auth-mode", "certificate", "--output", str(tmp_path / "out")],
        cwd=repo, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "certificate: a Key Vault certificate read through the identity endpoint" in result.stdout
    assert "loaded certificate o365collector-app version" in output, "read from the vault, not a file"
    counts = dict(re.findall(r"^\s+(\S+)\s+(\d+ / \d+)$", result.stdout, re.MULTILINE))
    assert len(counts) == 8, result.stdout  # every source: the Graph logs sign in with the certificate too
    for content_type, pair in counts.items():
        shipped, served = (int(n) for n in pair.split(" / "))
        assert shipped == served > 0, f"{content_type}: {pair}"
    assert "webhook listener on https://localhost:" in output, "the CLI's WebhookServer served the webhook"
    assert "push mode: 3 of 3 fresh blobs notified by webhook and shipped" in result.stdout


def test_status_has_no_push_part_when_push_mode_is_off(make_collector: Callable[..., Collector]) -> None:
    report = build_report(make_collector(O365_CONTENT_TYPES=TYPE))
    assert report.push is None
    assert [s.push for s in report.streams] == [None]
    assert push_lines(report) == []


def test_status_counts_the_refused_webhook_requests_by_status(collector: Collector) -> None:
    at = now()
    for status in (400, 401, 400):
        assert collector.arrivals.record_refused(status, f"reason {status}", at)
    lines = push_lines(build_report(collector))
    assert "webhook requests refused: 2 bad bodies (400), 1 wrong Webhook-AuthID (401); the last" in lines[-1]
    assert lines[-1].endswith("reason 400")


def test_an_unreadable_arrival_table_leaves_the_rest_of_status_standing(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(at: dt.datetime) -> None:
        raise RuntimeError("storage is down")

    monkeypatch.setattr(collector.arrivals, "counts", broken)
    report = build_report(collector)
    assert [s.content_type for s in report.streams] == [TYPE]
    assert report.push is None
