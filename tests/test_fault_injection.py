"""Fault injection: the delivery guarantee under process kills, API storms, backend outages and bad input.

The guarantee (README): every record the API lists is shipped at least once, and only the blob a
worker was shipping when it died can arrive twice. These tests break things on purpose and check it:

* the collector process (``python -m o365collector run --once``) is SIGKILLed at seeded random moments
  of a backfill, many times, then run to completion: no record lost, duplicates only from blobs that
  were in flight at a kill (at most one per kill: the queue runner ships one message at a time);
* a fifth of all API calls fail (403 AF429, 500 AF50000, 503, 408, client timeouts, dropped
  connections): everything ships, once;
* the backend refuses for longer than the sink's in-process retries, then recovers within the queue's
  redelivery window: everything ships, nothing is poisoned;
* bad input (a malformed blob, a blob with non-UTF-8 bytes, a record over 1 MB, an unknown content type
  or a tenant id that is not a GUID in the settings) gives an error naming the item, and nothing else
  is lost.

The simulator and the receiver live in the test process, so they outlive every kill. Kill moments
are chosen by events (API calls served, content fetched, batches received), never by sleeping.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from azure.data.tables import TableClient

from o365collector.cli import main as cli_main
from o365collector.cli import run_once
from o365collector.models import CONTENT_TYPES, FetchTask
from o365collector.queue_runner import QueueRunner
from o365collector.runtime import Collector
from o365collector.simulator import Fault, Simulator
from o365collector.simulator.faults import FaultKind
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory

pytestmark = pytest.mark.integration

TID = TENANT.tenant_id
REPO = Path(__file__).resolve().parents[1]
CollectorFactory = Callable[..., Collector]

KILLS = 20
KILL_SEED = 20260301


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as server:
        yield server


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def backfill(sim: Simulator, *, hours: float, every_minutes: int, records: tuple[int, int] = (1, 12)) -> None:
    for content_type in CONTENT_TYPES:
        sim.generate(
            TID,
            content_type,
            now() - dt.timedelta(hours=hours),
            now() - dt.timedelta(minutes=10),
            blob_every=dt.timedelta(minutes=every_minutes),
            records_per_blob=records,
        )


def served_ids(sim: Simulator) -> Counter[str]:
    return Counter(r["Id"] for b in sim.blobs(TID) for r in b.records)


def shipped_ids(receiver: HttpReceiver) -> Counter[str]:
    return Counter(r["Id"] for r in receiver.records)


def drain(collector: Collector) -> QueueRunner:
    return QueueRunner(
        collector.queue,
        collector.poison_queue,
        lambda body, message_id, _count: collector.process_message(body, message_id=message_id),
        collector.settings.queue_runner,
        processing_lease=collector.settings.policy.claim_lease,
    )


# -- randomised kill points ----------------------------------------------------------------------


class Child:
    """``python -m o365collector run --once`` with the given settings, output to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        child_env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
        child_env |= env | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "o365collector", "--log-level", "WARNING", "run", "--once"],
                cwd=REPO,
                env=child_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill_when(self, reached: Callable[[], bool], timeout: float) -> bool:
        """SIGKILL as soon as ``reached()`` (polled every few ms); False if the run ended first."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if reached():
                self.process.send_signal(signal.SIGKILL)
                self.process.wait(10)
                return True
            if time.monotonic() > deadline:
                self.process.kill()
                self.process.wait(10)
                pytest.fail(f"the collector neither reached the kill point nor ended in {timeout:.0f}s; see {self.log}")
            time.sleep(0.002)
        return False

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"the collector did not finish in {timeout:.0f}s; see {self.log}")


def new_records(rng: random.Random, content_type: str) -> list[dict[str, object]]:
    return [
        {"Id": f"live-{rng.getrandbits(64):016x}", "CreationTime": now().strftime("%Y-%m-%dT%H:%M:%S"), "Seq": i}
        for i in range(rng.randint(1, 9))
    ]


def reached(count: Callable[[], int], target: int) -> Callable[[], bool]:
    return lambda: count() >= target


def done_content_ids(env: dict[str, str]) -> set[str]:
    ledger = TableClient.from_connection_string(env["AzureWebJobsStorage"], table_name=env["O365_LEDGER_TABLE"])
    return {str(e["ContentId"]) for e in ledger.query_entities("State eq 'done'", select=["ContentId"])}


def test_sigkill_at_random_moments_loses_nothing_and_duplicates_only_blobs_in_flight(
    simulator: Simulator, receiver: HttpReceiver, make_env: EnvFactory, tmp_path: Path
) -> None:
    backfill(simulator, hours=20, every_minutes=20)
    env = make_env(
        SINK_TYPE="http",
        SINK_URL=receiver.url,
        SINK_HTTP_BATCH_MAX_RECORDS="4",  # several POSTs per blob: kills land between a blob's batches too
        O365_START_TIME=(now() - dt.timedelta(hours=21)).isoformat(),
        O365_CLAIM_LEASE_SECONDS="2",  # a killed worker's message (and claim) comes back after 2 s
        O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS="0",
    )
    rng = random.Random(KILL_SEED)
    log = tmp_path / "collector.log"
    stats = simulator.stats
    kills: list[tuple[str, int, set[str]]] = []  # (event, threshold, blobs in flight at the kill)
    limits = {"list": 4, "fetch": 8, "ship": 10}  # below what any run does while work is left
    for _ in range(KILLS):
        # New content keeps arriving during the backfill, so every run has work to be killed in.
        for content_type in CONTENT_TYPES:
            simulator.add_blob(TID, content_type, now() - dt.timedelta(minutes=8), new_records(rng, content_type))
        event = rng.choice(["list", "fetch", "fetch", "ship", "ship"])
        threshold = rng.randint(1, limits[event])
        fetched_before = Counter(stats.fetches)
        counters: dict[str, Callable[[], int]] = {
            "list": lambda: stats.requests["list"],
            "fetch": lambda: sum(stats.fetches.values()),
            "ship": lambda: len(receiver.requests),
        }
        count = counters[event]
        target = count() + threshold
        child = Child(env, log)
        if not child.kill_when(reached(count, target), timeout=60):
            continue  # the run finished before the kill point: nothing was left to do
        fetched = {cid for cid, n in stats.fetches.items() if n > fetched_before.get(cid, 0)}
        in_flight = fetched - done_content_ids(env)
        assert len(in_flight) <= 1, f"one worker ships one blob at a time, yet {len(in_flight)} were in flight"
        kills.append((event, threshold, in_flight))

    assert Child(env, log).wait(timeout=120) == 0, log.read_text()[-3000:]
    assert len(kills) >= KILLS * 3 // 4, f"only {len(kills)} of {KILLS} runs were killed before they ended"
    assert {event for event, _, _ in kills} == {"list", "fetch", "ship"}
    assert any(in_flight for _, _, in_flight in kills), "some kills hit a blob between its fetch and its ledger entry"

    served, shipped = served_ids(simulator), shipped_ids(receiver)
    assert set(shipped) == set(served), "every served record arrived, and nothing else"
    in_flight_ids = {
        r["Id"] for b in simulator.blobs(TID) if any(b.content_id in f for _, _, f in kills) for r in b.records
    }
    twice = {record_id for record_id, n in shipped.items() if n > 1}
    assert twice <= in_flight_ids, "only the blobs in flight at a kill may arrive twice"
    duplicated_blobs = {b.content_id for b in simulator.blobs(TID) if any(r["Id"] in twice for r in b.records)}
    assert len(duplicated_blobs) <= len(kills)


# -- API storm -------------------------------------------------------------------------------------


def test_a_fifth_of_api_calls_failing_still_ships_everything_once(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    backfill(simulator, hours=16, every_minutes=40)
    # Each fault draws on its own, in turn: 1 - (0.95 * 0.96 * 0.96 * 0.97 * 0.97 * 0.985) ~ 0.19 of calls fail.
    rates: dict[FaultKind, float] = {
        "throttle": 0.05,  # 403 AF429
        "server_error": 0.04,  # 500 AF50000
        "unavailable": 0.04,  # 503
        "drop": 0.03,  # the connection closes without an answer
        "request_timeout": 0.03,  # 408
        "slow": 0.015,  # answers after the client's 1 s timeout
    }
    for kind, rate in rates.items():
        for route in ("list", "fetch"):
            simulator.faults.add(Fault(kind=kind, route=route, rate=rate, delay_seconds=1.5 if kind == "slow" else 0))
    collector = make_collector(
        SINK_TYPE="http",
        SINK_URL=receiver.url,
        O365_RETRY_MAX_ATTEMPTS="10",
        O365_HTTP_TIMEOUT_SECONDS="1",
    )
    assert run_once(collector) == 0
    assert shipped_ids(receiver) == served_ids(simulator)  # all of them, each once

    stats = simulator.stats
    api_calls = stats.requests["list"] + stats.requests["fetch"]
    assert 0.12 <= stats.faults_injected / api_calls <= 0.3, (stats.faults_injected, api_calls)
    assert len(stats.faults) >= 4, stats.faults
    assert all(stats.responses[status] for status in (403, 500, 503))
    assert collector.poison_queue.get_queue_properties().approximate_message_count == 0


# -- backend outage --------------------------------------------------------------------------------


def test_a_backend_outage_longer_than_the_sink_retries_ships_everything_and_poisons_nothing(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    backfill(simulator, hours=6, every_minutes=30)
    attempts, max_deliveries = 2, 5
    collector = make_collector(
        SINK_TYPE="http",
        SINK_URL=receiver.url,
        SINK_HTTP_MAX_ATTEMPTS=str(attempts),
        SINK_HTTP_MAX_RETRY_SECONDS="2",
        O365_MAX_DEQUEUE_COUNT=str(max_deliveries),
        O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS="0",
    )
    collector.run_lister()
    # The outage outlasts every in-process retry of three deliveries, and ends before any message has
    # used up its deliveries (the redelivery window is O365_MAX_DEQUEUE_COUNT deliveries).
    refusals = attempts * (max_deliveries - 2)
    receiver.refuse(True)

    def recover() -> None:
        deadline = time.monotonic() + 60
        while sum(r.status == 503 for r in receiver.requests) < refusals and time.monotonic() < deadline:
            time.sleep(0.005)
        receiver.refuse(False)

    watcher = threading.Thread(target=recover, daemon=True)
    watcher.start()
    result = drain(collector).drain(max_seconds=120)
    watcher.join(5)

    assert result.failures >= max_deliveries - 2, "deliveries failed during the outage and were redelivered"
    assert result.poisoned == 0
    assert collector.poison_queue.get_queue_properties().approximate_message_count == 0
    assert shipped_ids(receiver) == served_ids(simulator)


# -- bad input ---------------------------------------------------------------------------------------


def test_bad_blobs_are_named_and_poisoned_and_a_huge_record_ships_alone_while_everything_else_ships(
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: CollectorFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backfill(simulator, hours=4, every_minutes=60)
    when = now() - dt.timedelta(hours=2)
    malformed = simulator.add_blob(
        TID, "Audit.Exchange", when, b'[{"Id": "m-1", "Operation": "Send"}, {"Id": "m-2", "Oper',
        content_id="malformed0001$malformed0001$audit_exchange$Audit_Exchange",
    )  # fmt: skip
    latin1 = simulator.add_blob(
        TID, "Audit.SharePoint", when, b'[{"Id": "l-1", "SourceFileName": "r\xe9sum\xe9.docx"}]',
        content_id="notutf8000001$notutf8000001$audit_sharepoint$Audit_SharePoint",
    )  # fmt: skip
    huge_record = {
        "CreationTime": when.strftime("%Y-%m-%dT%H:%M:%S"),
        "Id": "huge-0001",
        "Operation": "Set-TransportRule",
        "RecordType": 1,
        "Workload": "Exchange",
        "Parameters": [{"Name": f"Condition{i}", "Value": f"{i:06d}" + "é" * 3000} for i in range(200)],
    }
    assert len(orjson.dumps(huge_record)) > 1024 * 1024
    neighbour = {"CreationTime": huge_record["CreationTime"], "Id": "huge-neighbour", "Operation": "Send"}
    big = simulator.add_blob(TID, "Audit.Exchange", when + dt.timedelta(minutes=1), [neighbour, huge_record])
    collector = make_collector(
        SINK_TYPE="http",
        SINK_URL=receiver.url,
        SINK_HTTP_BATCH_MAX_BYTES=str(1024 * 1024),
        O365_MAX_DEQUEUE_COUNT="2",
    )
    with caplog.at_level(logging.WARNING):
        assert run_once(collector) == 1, "poisoned messages make the run fail"

    poisoned = [
        FetchTask.from_message(m.content).content_id for m in collector.poison_queue.peek_messages(max_messages=32)
    ]
    assert sorted(poisoned) == sorted([malformed.content_id, latin1.content_id])
    errors = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    for blob in (malformed, latin1):
        assert f"content blob {blob.content_id} is not valid JSON (or not UTF-8)" in errors

    good = Counter(r["Id"] for b in simulator.blobs(TID) if b not in (malformed, latin1) for r in b.records)
    assert shipped_ids(receiver) == good, "everything else arrived, once"
    (alone,) = [r for r in receiver.requests if r.records and any(x.get("Id") == "huge-0001" for x in r.records)]
    assert alone.records == [huge_record], "the record over the batch limit travels alone, intact"
    assert alone.headers["x-o365-content-id"] == big.content_id


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("O365_CONTENT_TYPES", "Audit.Exchange,Audit.Foo", "O365_CONTENT_TYPES: unknown content type 'Audit.Foo'"),
        ("O365_TENANT_ID", "contoso.onmicrosoft.com", "O365_TENANT_ID: 'contoso.onmicrosoft.com' is not a GUID"),
    ],
)
def test_a_bad_setting_stops_the_run_before_anything_is_touched_and_names_the_setting(
    simulator: Simulator,
    make_env: EnvFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    setting: str,
    value: str,
    named: str,
) -> None:
    backfill(simulator, hours=2, every_minutes=60)
    for key, item in make_env(**{setting: value}).items():
        monkeypatch.setenv(key, item)
    assert cli_main(["run", "--once"]) == 2
    err = capsys.readouterr().err
    assert f"error: {named}" in err
    assert sum(simulator.stats.requests.values()) == 0, "nothing was listed or fetched: nothing can be half done"
