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
  is lost;
* hostile peers, all at once, over three ``run --once`` processes at DEBUG: a token endpoint and an API
  that echo our credentials, an API that serves malformed entries and lists blobs 3 h and 20 h late,
  a receiver that echoes its credentials, a forged and a non-base64 queue message, a registry row naming
  AzureWebJobsStorage as a secret: every served record arrives once, both messages are poisoned (the real
  blob the forged one names still ships), the bad row is reported, and no secret, in any encoding, is in
  stdout, stderr, any log record, the status table, ``status``, ``status --json`` or the health body.

The simulator and the receiver live in the test process, so they outlive every kill. Kill moments
are chosen by events (API calls served, content fetched, batches received), never by sleeping.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import pytest
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from o365collector import runtime
from o365collector.azurite import Azurite
from o365collector.cli import main as cli_main
from o365collector.config import QueueRunnerConfig
from o365collector.models import CONTENT_TYPES, FetchTask
from o365collector.redaction import printable
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Fault, Simulator, TenantSpec
from o365collector.simulator.faults import FaultKind
from o365collector.sources.catalog import GRAPH_STREAMS
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory, host_queue_runner, now

pytestmark = pytest.mark.integration

TID = TENANT.tenant_id
REPO = Path(__file__).resolve().parents[1]
CollectorFactory = Callable[..., Collector]

KILLS = 20
BATCH = QueueRunnerConfig().batch_size  # deliveries one worker handles at once (host.json batchSize)
KILL_SEED = 20260301


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
    return Counter(r.get("Id") or r["id"] for r in receiver.records)  # audit records' Id, Graph records' id


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


def graph_units_in_flight(env: dict[str, str]) -> list[tuple[dt.datetime, dt.datetime]]:
    """The Graph windows claimed and not done (a killed worker's): their records may arrive twice."""
    ledger = TableClient.from_connection_string(env["AzureWebJobsStorage"], table_name=env["O365_LEDGER_TABLE"])
    windows = []
    for row in ledger.query_entities("State ne 'done' and State ne 'lost'", select=["ContentId", "ContentType"]):
        if row.get("ContentType") in GRAPH_STREAMS:
            _, start, end = str(row["ContentId"]).rsplit("_", 2)
            windows.append((unit_time(start), unit_time(end)))
    return windows


def unit_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)


def test_sigkill_at_random_moments_loses_nothing_and_duplicates_only_blobs_in_flight(
    simulator: Simulator, receiver: HttpReceiver, make_env: EnvFactory, tmp_path: Path
) -> None:
    """With every source on: the audit feed's blobs and the Graph logs' windows are killed in flight alike."""
    backfill(simulator, hours=20, every_minutes=20)
    for stream in GRAPH_STREAMS:
        simulator.generate_graph(TID, stream, now() - dt.timedelta(hours=20), now() - dt.timedelta(minutes=10))
    env = make_env(
        O365_SOURCES="audit,signins,directoryaudits,messagetrace",
        O365_GRAPH_URL=simulator.api_url,
        SINK_TYPE="http",
        SINK_URL=receiver.url,
        SINK_HTTP_BATCH_MAX_RECORDS="4",  # several POSTs per blob: kills land between a blob's batches too
        O365_START_TIME=(now() - dt.timedelta(hours=21)).isoformat(),
        O365_CLAIM_LEASE_SECONDS="60",  # the shortest allowed: a killed worker's message (and claim) come back after it
        O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS="0",
    )
    rng = random.Random(KILL_SEED)
    log = tmp_path / "collector.log"
    stats = simulator.stats
    kills: list[tuple[str, int, set[str]]] = []  # (event, threshold, blobs in flight at the kill)
    graph_in_flight: list[tuple[dt.datetime, dt.datetime]] = []  # Graph windows claimed, not done, at a kill
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
        assert len(in_flight) <= BATCH, f"a worker ships {BATCH} blobs at once at most, yet {len(in_flight)} were"
        kills.append((event, threshold, in_flight))
        graph_in_flight += graph_units_in_flight(env)

    assert Child(env, log).wait(timeout=120) == 0, log.read_text()[-3000:]
    assert len(kills) >= KILLS * 3 // 4, f"only {len(kills)} of {KILLS} runs were killed before they ended"
    assert {event for event, _, _ in kills} == {"list", "fetch", "ship"}
    assert any(in_flight for _, _, in_flight in kills), "some kills hit a blob between its fetch and its ledger entry"

    served, shipped = served_ids(simulator), shipped_ids(receiver)
    graph = Counter(r.id for r in simulator.graph_records(TID))
    assert set(shipped) == set(served) | set(graph), "every served record arrived, and nothing else"
    # Per record: one delivery, plus one more for each kill that caught its blob in flight.
    allowed = Counter(
        r["Id"]
        for b in simulator.blobs(TID)
        for _, _, in_flight in kills
        if b.content_id in in_flight
        for r in b.records
    )
    overlap = dt.timedelta(minutes=15)  # O365_GRAPH_OVERLAP_MINUTES: a window reads that much before it too
    allowed += Counter(
        r.id for r in simulator.graph_records(TID) for start, end in graph_in_flight if start - overlap <= r.time < end
    )
    over = {record_id: n for record_id, n in shipped.items() if n > 1 + allowed[record_id]}
    assert not over, f"records delivered more often than the kills during their blob or window allow: {over}"
    poison = QueueClient.from_connection_string(env["AzureWebJobsStorage"], f"{env['O365_CONTENT_QUEUE']}-poison")
    assert poison.get_queue_properties().approximate_message_count == 0, "no message was poisoned by the kills"


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
        O365_QUEUE_BATCH_SIZE="1",  # one delivery at a time: the refusals fall on one message's deliveries
    )
    collector.run_lister()
    # The outage outlasts every in-process retry of three deliveries, and ends before any message has
    # used up its deliveries (the redelivery window is O365_MAX_DEQUEUE_COUNT deliveries). The receiver
    # itself ends it after exactly that many refusals: no watcher, no deadline that could end it early.
    refusals = attempts * (max_deliveries - 2)
    receiver.fail_next(refusals, status=503)
    result = host_queue_runner(collector).drain(max_seconds=120)

    assert not result.timed_out
    assert sum(r.status == 503 for r in receiver.requests) == refusals, "the whole outage was met"
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
    # Served as the service writes it (compact, every record opening with CreationTime) but spelled as
    # no serializer of ours would: escaped non-ASCII and slashes, a float with a trailing zero. A record
    # parsed and written again would differ from these bytes.
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S").encode()
    parameters = b",".join(b'{"Name":"Condition%d","Value":"%06d%s"}' % (i, i, b"\\u00e9" * 1000) for i in range(200))
    huge_bytes = (
        b'{"CreationTime":"%s","Id":"huge-0001","Operation":"Set-TransportRule","RecordType":1,'
        b'"Score":1.50,"Path":"\\/o365\\/rules","Workload":"Exchange","Parameters":[%s]}' % (stamp, parameters)
    )
    neighbour_bytes = b'{"CreationTime":"%s","Id":"huge-neighbour","Operation":"Send"}' % stamp
    assert len(huge_bytes) > 1024 * 1024
    assert orjson.dumps(orjson.loads(huge_bytes)) != huge_bytes
    big = simulator.add_blob(
        TID, "Audit.Exchange", when + dt.timedelta(minutes=1), b"[" + neighbour_bytes + b"," + huge_bytes + b"]"
    )
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

    good = Counter(r["Id"] for b in simulator.blobs(TID) if b not in (malformed, latin1, big) for r in b.records)
    good.update(["huge-neighbour", "huge-0001"])
    assert shipped_ids(receiver) == good, "everything else arrived, once"
    (alone,) = [r for r in receiver.requests if r.records and any(x.get("Id") == "huge-0001" for x in r.records)]
    assert alone.body == huge_bytes + b"\n", "the record over the batch limit travels alone, byte for byte as served"
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


# -- hostile peers -----------------------------------------------------------------------------------

MAIN_SECRET_SETTING, CANARY_SECRET_SETTING = "O365_SECRET_MAIN", "O365_SECRET_CANARY"
CANARY_TID = "c0000000-0000-4000-8000-00000000000c"
BROKEN_TID = "b0000000-0000-4000-8000-00000000000b"
HOSTILE_TYPES = ("Audit.Exchange", "Audit.SharePoint")
NOT_BASE64 = 'this is {"not": "base64"} at all'
SINK_ATTEMPTS = 2


def canary(label: str) -> str:
    return f"canary-{label}-{uuid.uuid4().hex[:12]}"


def secret_forms(secrets: dict[str, str]) -> dict[str, str]:
    """Every secret, and each line of a multi-line one, in every encoding a leak could take."""
    found: dict[str, str] = {}
    for name, value in secrets.items():
        pieces = {name: value} | {f"{name} line {i}": line for i, line in enumerate(value.splitlines())}
        for piece_name, piece in pieces.items():
            for encoding, form in {
                "raw": piece,
                "percent": quote(piece, safe=""),
                "form": quote_plus(piece, safe=""),
                "json": json.dumps(piece)[1:-1],
                "escaped": printable(piece),
                "base64": base64.b64encode(piece.encode()).decode().rstrip("="),
            }.items():
                found[f"{piece_name} ({encoding})"] = form
    return found


def leaks(secrets: dict[str, str], outputs: dict[str, str]) -> list[str]:
    forms = secret_forms(secrets)
    return [f"{form_name} in {where}" for where, text in outputs.items() for form_name, form in forms.items()
            if form in text]  # fmt: skip


def cli(env: dict[str, str], *argv: str, timeout: float = 120) -> tuple[int, str, str]:
    """``python -m o365collector --log-level DEBUG <argv>``: every logger at DEBUG, the SDKs' too.

    No crash: the command's own catch-all (``unexpected failure``) never fired. (Tracebacks may appear:
    azure-identity logs a refused sign-in at DEBUG with its traceback, redacted.)"""
    child_env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
    child_env |= env | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "o365collector", "--log-level", "DEBUG", *argv],
        cwd=REPO, env=child_env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert "unexpected failure" not in done.stderr, done.stderr[-3000:]
    return done.returncode, done.stdout, done.stderr


@pytest.fixture
def all_loggers_at_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Root and every named logger at DEBUG and propagating, whatever earlier tests set; restored after."""
    # caplog first: it restores the root level it finds at teardown, which must be the original one.
    caplog.set_level(logging.DEBUG)
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    saved = [(lg, lg.level, lg.propagate, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG if lg is logging.root else logging.NOTSET)
        lg.propagate, lg.disabled = True, False
    yield caplog
    for lg, level, propagate, disabled in saved:
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled


def test_hostile_peers_lose_no_record_leak_no_secret_and_crash_nothing(
    simulator: Simulator,
    receiver: HttpReceiver,
    make_env: EnvFactory,
    azurite: Azurite,
    names: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    all_loggers_at_debug: pytest.LogCaptureFixture,
) -> None:
    """Three ``run --once`` processes against peers that misbehave at once, then the state seen from outside.

    Run 1: the token endpoint refuses the second tenant's sign-in quoting its form (client secret
    included); the API answers a listing and two fetches with 500s quoting our bearer token; the
    listing holds malformed entries carrying secrets; the receiver refuses the first posts quoting our
    token and key; the registry holds a row that names AzureWebJobsStorage as a client secret.
    Run 2: sign-in works; the API now lists blobs created 3 h and 20 h ago; the queue holds a forged
    message (a real content id, a contentUri to another API path) and a message that is not base64.
    Run 3: nothing new. Then every record the API served arrived once, and no secret is anywhere.
    """
    secrets = {
        "main client secret": TENANT.client_secret,
        "canary client secret": f"{canary('cs')}\r\n{canary('cs2')}",  # a line break: each half is a secret too
        "sink bearer token": canary("bearer"),
        "sink api key": canary("apikey"),
        "storage account key": azurite.connection_string.split("AccountKey=")[1].split(";")[0],
    }
    simulator.add_tenant(
        TenantSpec(
            tenant_id=CANARY_TID, client_id=TENANT.client_id, client_secret=secrets["canary client secret"],
            roles=TENANT.roles, audit_enabled=True, subscribed=TENANT.subscribed,
        )
    )  # fmt: skip
    for tenant_id in (TID, CANARY_TID):
        for content_type in HOSTILE_TYPES:
            simulator.generate(
                tenant_id, content_type, now() - dt.timedelta(hours=5), now() - dt.timedelta(minutes=10),
                blob_every=dt.timedelta(minutes=30), records_per_blob=(1, 8),
            )  # fmt: skip
    # Malformed listing entries, two of them carrying secrets: refused and reported, their values never echoed.
    rewrites: list[Callable[[dict[str, Any]], object]] = [
        lambda e: {k: v for k, v in e.items() if k != "contentUri"},
        lambda e: e | {"contentId": "evil\nFAKE LOG LINE", "contentCreated": secrets["canary client secret"]},
        lambda e: f"Bearer {secrets['sink bearer token']}",
    ]
    refused = [
        simulator.add_blob(
            TID, "Audit.Exchange", now() - dt.timedelta(hours=2, minutes=i),
            [{"Id": f"refused-entry-{i}", "Operation": "Send"}], listing_entry=rewrite,
        )
        for i, rewrite in enumerate(rewrites)
    ]  # fmt: skip

    registry = f"tn{uuid.uuid4().hex[:10]}"
    env = make_env(
        O365_TENANT_TABLE=registry,
        O365_CONTENT_TYPES=",".join(HOSTILE_TYPES),
        O365_START_TIME=(now() - dt.timedelta(hours=26)).isoformat(),
        O365_LATE_SWEEP_MINUTES="0",  # every run sweeps the last 24 h for late content
        **{MAIN_SECRET_SETTING: TENANT.client_secret, CANARY_SECRET_SETTING: secrets["canary client secret"]},
        SINK_TYPE="http",
        SINK_URL=receiver.url,
        SINK_HTTP_BEARER_TOKEN=secrets["sink bearer token"],
        SINK_HTTP_HEADERS=json.dumps({"X-Api-Key": secrets["sink api key"]}),
        SINK_HTTP_MAX_ATTEMPTS=str(SINK_ATTEMPTS),
        O365_QUEUE_BATCH_SIZE="1",  # one delivery at a time: the receiver's echoes fail one delivery whole
    )
    for key in ("O365_TENANT_ID", "O365_CLIENT_SECRET"):
        env.pop(key)
    table = TableClient.from_connection_string(azurite.connection_string, table_name=registry)
    table.create_table()
    for tenant_id, credential in (
        (TID, f"setting:{MAIN_SECRET_SETTING}"),
        (CANARY_TID, f"setting:{CANARY_SECRET_SETTING}"),
        (BROKEN_TID, "setting:AzureWebJobsStorage"),  # a row trying to send the storage key to a login host
    ):
        table.create_entity({"PartitionKey": "tenant", "RowKey": tenant_id, "tenantId": tenant_id,
                             "credential": credential})  # fmt: skip
    status_table = TableClient.from_connection_string(azurite.connection_string, names["O365_STATUS_TABLE"])
    raw_queue = QueueClient.from_connection_string(azurite.connection_string, names["O365_CONTENT_QUEUE"])
    raw_poison = QueueClient.from_connection_string(azurite.connection_string, f"{names['O365_CONTENT_QUEUE']}-poison")

    def status_rows() -> str:
        return "\n".join(json.dumps(dict(e), default=str) for e in status_table.list_entities())

    outputs: dict[str, str] = {}

    # Run 1 --------------------------------------------------------------------------------------
    token_echo = simulator.faults.add(Fault(kind="echo", route="token", tenant_id=CANARY_TID))
    api_echoes = [
        simulator.faults.add(Fault(kind="echo", route="list", count=1)),
        simulator.faults.add(Fault(kind="echo", route="fetch", count=2)),
    ]
    receiver.echo_next(SINK_ATTEMPTS + 1)  # one delivery fails whole (and is redelivered), one retry passes
    code, out, err = cli(env, "run", "--once")
    outputs |= {"run 1 stdout": out, "run 1 stderr": err}
    assert code == 1, "the second tenant could not sign in: the run reports it"
    assert out.startswith("listed 4 streams (2 failed)"), "it ended with its summary; the broken row is not a stream"
    assert f"FAILED {CANARY_TID} Audit.Exchange" in err
    assert f"FAILED {TID}" not in err
    # The peers did echo our secrets, and the echoes reached the collector's outputs: a leak would show.
    assert token_echo.echoed
    assert leaks({"canary client secret": secrets["canary client secret"]}, {"echo": "\n".join(token_echo.echoed)})
    bearers = {m for f in api_echoes for quote_ in f.echoed for m in re.findall(r"Bearer (\S+)", quote_)}
    assert [f.injected for f in api_echoes] == [f.count for f in api_echoes]
    assert len(bearers) == 1, "the API echoed our bearer token"
    secrets["api bearer token"] = bearers.pop()
    assert "AADSTS50000: There was an error issuing a token. Request received" in err, "the token echo was logged"
    assert "Request received: GET /api/v1.0/" in err, "the API's echo was logged"
    echoed = [r for r in receiver.requests if r.status == 503]
    assert len(echoed) == SINK_ATTEMPTS + 1
    outputs["status table after run 1"] = rows = status_rows()
    assert "AADSTS50000" in rows, "the token endpoint's echo (redacted) reached the status table"
    assert "answered 503" in rows, "the receiver's echo (redacted) reached the status table"
    code, out, err = cli(env, "status", "--json")
    outputs |= {"status --json after run 1": out + err}
    assert code == 1
    simulator.faults.remove(token_echo)

    # Run 2 --------------------------------------------------------------------------------------
    late = [
        simulator.add_blob(TID, "Audit.Exchange", now() - dt.timedelta(hours=hours),
                           [{"Id": f"late-{hours}h-{i}", "Operation": "Send"} for i in range(3)],
                           available_at=now())  # listable only from now on: hours after its contentCreated
        for hours in (3, 20)
    ]  # fmt: skip
    victim = simulator.blobs(CANARY_TID, "Audit.Exchange")[0]  # not shipped yet: its tenant could not sign in
    forged = FetchTask(
        CANARY_TID, "Audit.Exchange", victim.content_id,
        f"{simulator.api_url}/api/v1.0/{CANARY_TID}/activity/feed/subscriptions/list",  # answers objects, not records
        victim.created, victim.expiration,
    )  # fmt: skip
    forged_raw = base64.b64encode(forged.to_message().encode()).decode()
    raw_queue.send_message(forged_raw)  # ahead of the real message for the victim
    raw_queue.send_message(NOT_BASE64)
    subscription_calls = simulator.stats.requests_by_route.get("subscriptions", 0)
    code, out, err = cli(env, "run", "--once")
    outputs |= {"run 2 stdout": out, "run 2 stderr": err}
    assert code == 1, "two messages were poisoned this run: an operator has to look, so the run fails"
    assert "poisoned 2" in out
    assert "FAILED" not in err, "every stream listed"
    assert sorted(m.content for m in raw_poison.peek_messages(max_messages=32)) == sorted([forged_raw, NOT_BASE64])
    assert f"refused (content {victim.content_id} of tenant {CANARY_TID}): the contentUri is not a content path" in err
    assert "not base64" in err
    assert simulator.stats.requests_by_route.get("subscriptions", 0) == subscription_calls, (
        "the forged URI never called"
    )

    # Run 3 --------------------------------------------------------------------------------------
    shipped_before = len(receiver.records)
    code, out, err = cli(env, "run", "--once")
    outputs |= {"run 3 stdout": out, "run 3 stderr": err}
    assert code == 0, "everything listed was shipped and nothing new was poisoned"
    assert len(receiver.records) == shipped_before

    # Every record the API served arrived exactly once; the refused entries' blobs were never served.
    served = Counter(
        r["Id"] for t in (TID, CANARY_TID) for b in simulator.blobs(t) if b not in refused for r in b.records
    )
    assert Counter(r.get("Id") for r in receiver.records) == served
    assert {r["Id"] for b in [victim, *late] for r in b.records} <= set(served)

    # Seen from outside: status (table and JSON), the status table and the health function.
    outputs["status table"] = status_rows()
    code, out, err = cli(env, "status")
    outputs["status"] = out + err
    assert code == 1
    code, out, err = cli(env, "status", "--json")
    outputs["status --json"] = out + err
    assert code == 1, "unhealthy: poisoned messages and a skipped registry row"
    report = json.loads(out)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime.reset_collector()
    try:
        health_status, body = runtime.health()
    finally:
        runtime.reset_collector()
    outputs["health"] = body.decode()
    assert health_status == 503
    for problems in (report["problems"], json.loads(body)["problems"]):
        (row_problem,) = [p for p in problems if p.startswith("tenant registry row skipped")]
        assert f"O365_TENANT_TABLE[{BROKEN_TID}].credential: app setting 'AzureWebJobsStorage' is not allowed" in (
            row_problem
        )
    assert {(s["tenant_id"], s["content_type"]) for s in report["streams"]} == {
        (t, c) for t in (TID, CANARY_TID) for c in HOSTILE_TYPES
    }, "the good tenants are collected, the broken row's is not"
    assert all(s["last_outcome"] == "ok" for s in report["streams"])
    assert (report["queues"]["poison"]["messages"], report["queues"]["poison"]["unreadable"]) == (2, 1)
    (exchange,) = [s for s in report["streams"] if (s["tenant_id"], s["content_type"]) == (TID, "Audit.Exchange")]
    assert exchange["refused_entries"]["count"] == len(refused)
    assert exchange["late_content"]["blobs"] == len(late)
    assert exchange["late_content"]["max_lateness_seconds"] >= 20 * 3600

    outputs["receiver bodies"] = "\n".join(r.body.decode("utf-8", "replace") for r in receiver.requests)
    outputs["logs"] = "\n".join(
        [all_loggers_at_debug.text, *(f"{r.getMessage()} {r.exc_text or ''}" for r in all_loggers_at_debug.records)]
    )
    assert leaks(secrets, outputs) == []
