"""The command line's long-running modes, run as an operator runs them: ``run --interval N`` and ``demo``.

``run`` is a child process (``python -m o365collector run --interval 5``) against the simulator, Azurite
and a loopback receiver that live in the test process. The receiver sends the SIGTERM itself, from
inside the POST of a blob that only a later pass of the loop could have listed: the signal lands while
a blob is being shipped, at a moment chosen by an event, never by sleeping.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from o365collector.simulator import Simulator
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory, now

TID = TENANT.tenant_id
REPO = Path(__file__).resolve().parents[1]
CONTENT_TYPE = "Audit.General"
BATCH = 16  # messages one receive takes (host.json batchSize; the runner's batch): the "current step" at most



class SignallingReceiver(HttpReceiver):
    """Accepts everything; the first POST of a blob in ``trigger`` sends SIGTERM to ``pid`` before it is answered."""

    def __init__(self) -> None:
        super().__init__()
        self.pid: int | None = None
        self.trigger: frozenset[str] = frozenset()
        self.signalled: str | None = None
        self._signal_lock = threading.Lock()

    def _decide(self, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes, bool]:
        content_id = headers.get("x-o365-content-id", "")
        with self._signal_lock:
            if self.signalled is None and content_id in self.trigger and self.pid is not None:
                self.signalled = content_id
                os.kill(self.pid, signal.SIGTERM)
        return super()._decide(headers)


@pytest.fixture
def receiver() -> Iterator[SignallingReceiver]:
    with SignallingReceiver() as server:
        yield server


def child_env(env: dict[str, str]) -> dict[str, str]:
    inherited = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
    return inherited | env | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Poll for an event the child causes; fail (never carry on) if it ends first or does not come in time."""
    deadline = time.monotonic() + 90
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the collector exited ({process.returncode}) before {what}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within 90 s: {log.read_text()[-2000:]}")
        time.sleep(0.01)


def test_run_loop_lists_again_every_interval_and_sigterm_finishes_the_blob_in_flight_then_exits(
    simulator: Simulator, receiver: SignallingReceiver, make_env: EnvFactory, tmp_path: Path
) -> None:
    first = simulator.generate(
        TID, CONTENT_TYPE, now() - dt.timedelta(hours=6), now() - dt.timedelta(hours=1),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    env = make_env(
        SINK_TYPE="http",
        SINK_URL=receiver.url,
        O365_CONTENT_TYPES=CONTENT_TYPE,
        O365_START_TIME=(now() - dt.timedelta(hours=7)).isoformat(),
    )
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "o365collector", "run", "--interval", "5"],
            cwd=REPO,
            env=child_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    receiver.pid = process.pid
    try:
        first_ids = Counter(r["Id"] for b in first for r in b.records)
        wait_for(lambda: Counter(r["Id"] for r in receiver.records) == first_ids, process, "the first pass", log)

        # Content the first pass could not see: only a later pass of the loop lists it. Many blobs, so
        # that a pass would still be shipping them for seconds if the signal did not stop it.
        since = now() - dt.timedelta(minutes=40)
        later = [
            simulator.add_blob(
                TID,
                CONTENT_TYPE,
                since + dt.timedelta(seconds=5 * i),
                [{"Id": f"later-{i:03d}-{n}", "Operation": "Op", "Workload": "General"} for n in range(3)],
            )
            for i in range(200)
        ]
        receiver.trigger = frozenset(b.content_id for b in later)
        try:
            code = process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the collector did not stop within 90 s of SIGTERM: {log.read_text()[-2000:]}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    output = log.read_text()
    assert code == 0, f"exit code {code}; log tail: {output[-1500:]}"
    assert receiver.signalled is not None, "a later pass listed and shipped new content"
    assert re.search(r"signal 15 received", output)

    ledger = TableClient.from_connection_string(env["AzureWebJobsStorage"], table_name=env["O365_LEDGER_TABLE"])
    rows = {str(e["ContentId"]): str(e["State"]) for e in ledger.list_entities()}
    assert rows[receiver.signalled] == "done", "the blob being shipped when the signal came was finished"
    assert set(rows.values()) == {"done"}, f"a blob was left half-shipped: {rows}"
    shipped = Counter(r["Id"] for r in receiver.records)
    assert max(shipped.values()) == 1
    later_shipped = {b.content_id for b in later} & set(rows)
    assert 1 <= len(later_shipped) <= BATCH, (
        f"after SIGTERM the loop shipped {len(later_shipped)} more blobs: more than the step it was in"
    )
    queue = QueueClient.from_connection_string(env["AzureWebJobsStorage"], env["O365_CONTENT_QUEUE"])
    waiting = queue.get_queue_properties().approximate_message_count or 0
    assert waiting >= len(later) - BATCH, "the rest waits on the queue"


def test_demo_collects_every_simulated_record_into_ndjson_files(tmp_path: Path) -> None:
    output = tmp_path / "demo-output"
    # What an earlier demo run left in the same folder must not count as this run's, and nothing else goes.
    stale = output / "5b7c3a1e-8d2f-4e6a-9c0b-1a2b3c4d5e6f" / "Audit.Exchange" / "earlier-run.ndjson"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b'{"Id":"from an earlier run"}\n' * 50)
    mine = output / "notes.txt"
    mine.write_text("not the demo's")
    env = child_env({})
    env.pop("REQUESTS_CA_BUNDLE", None)
    result = subprocess.run(
        [sys.executable, "-m", "o365collector", "--log-level", "WARNING", "demo", "--days", "0.25", "--output", output],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    counts = dict(re.findall(r"^\s+(\S+)\s+(\d+ / \d+)$", result.stdout, re.MULTILINE))
    assert len(counts) == 8, result.stdout  # the audit feed's five content types and the three Graph logs
    for content_type, pair in counts.items():
        shipped, served = (int(n) for n in pair.split(" / "))
        assert shipped == served > 0, f"{content_type}: {pair}"
    files = list(output.rglob("*.ndjson"))
    records = sum(1 for path in files for line in path.read_bytes().splitlines() if line.strip())
    assert records == sum(int(pair.split(" / ")[0]) for pair in counts.values())
    assert re.search(r"^shipped (\d+) blobs", result.stdout, re.MULTILINE)
    assert f"shipped {len(files)} blobs" in result.stdout, "one file per content blob"
    assert not stale.exists()
    assert mine.read_text() == "not the demo's"


def test_demo_keep_running_prints_settings_that_status_can_use_then_stops_on_ctrl_c(tmp_path: Path) -> None:
    """``demo --keep-running`` leaves Azurite and the simulator up and prints ``export`` lines: with exactly
    those settings, ``status --json`` reads the demo's own state (every stream listed); Ctrl-C then ends it."""
    env = child_env({})
    env.pop("REQUESTS_CA_BUNDLE", None)
    log = tmp_path / "demo.log"
    command = [sys.executable, "-m", "o365collector", "--log-level", "WARNING", "demo", "--days", "0.1",
               "--output", str(tmp_path / "out"), "--keep-running"]  # fmt: skip
    with log.open("wb") as out:
        demo = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"keep running" in log.read_bytes(), demo, "the keep-running line", log)
        exported = dict(re.findall(r"^export (\w+)=(.*)$", log.read_text(), re.MULTILINE))
        settings = {name: shlex.split(value)[0] if value else "" for name, value in exported.items()}
        assert {"AzureWebJobsStorage", "O365_TENANT_ID", "O365_API_URL", "REQUESTS_CA_BUNDLE"} <= set(settings)
        status = subprocess.run(
            [sys.executable, "-m", "o365collector", "--log-level", "WARNING", "status", "--json"],
            cwd=REPO, env=child_env(settings), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert status.returncode == 0, status.stdout[-2000:] + status.stderr[-2000:]
        report = json.loads(status.stdout)
        assert len(report["streams"]) == 8  # every source: the audit feed's five and the three Graph logs
        assert all(stream["last_success_at"] for stream in report["streams"])
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(60)
    assert code == 0, log.read_text()[-2000:]
    assert "records per stream" in log.read_text()
