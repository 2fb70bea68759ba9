"""What a person running ``run --once`` or ``run --interval`` sees, and how the run ends on a signal.

Each test runs ``python -m o365collector run`` as a child process against the simulator, Azurite and a
loopback receiver (the helpers of tests/test_run_loop.py). Signals are sent when the child's output or
the receiver shows the run is at the point the test is about, never after a sleep.
"""

from __future__ import annotations

import datetime as dt
import os
import pty
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from o365collector.simulator import Simulator
from tests.receivers import HttpReceiver, refusing_url
from tests.support import TENANT, EnvFactory
from tests.test_run_loop import BATCH, REPO, SignallingReceiver, child_env, now, wait_for

TID = TENANT.tenant_id
CONTENT_TYPE = "Audit.General"
FAILURE_WARNING = re.compile(r"WARNING o365collector\.queue_runner: message \S+ failed \(attempt \d+ of 50\)")
JSON_PREFIXES = ("lister run complete {", "collector run complete {")


@pytest.fixture
def receiver() -> Iterator[SignallingReceiver]:
    with SignallingReceiver() as server:
        yield server


@pytest.fixture
def refusing() -> Iterator[HttpReceiver]:
    """A receiver that answers 401 to everything: a permanent sink error, retried by the queue, never deferred."""
    with HttpReceiver() as server:
        server.require_bearer("a token the collector was never given")
        yield server


def generate(simulator: Simulator, blobs: int) -> int:
    """About ``blobs`` hourly blobs of the past hours; returns how many there are."""
    return len(simulator.generate(
        TID, CONTENT_TYPE, now() - dt.timedelta(hours=blobs + 1), now() - dt.timedelta(hours=1),
        blob_every=dt.timedelta(hours=1),
    ))  # fmt: skip


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "o365collector", *args],
            cwd=REPO,
            env=child_env(env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def finish(process: subprocess.Popen[bytes], log: Path) -> int:
    try:
        return process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        pytest.fail(f"the collector did not stop within 90 s of the signal: {log.read_text()[-2000:]}")


def sink_env(make_env: EnvFactory, url: str, **overrides: str) -> dict[str, str]:
    """One content type to an HTTP receiver; the sink does not retry by itself, the queue does."""
    return make_env(
        SINK_TYPE="http",
        SINK_URL=url,
        SINK_HTTP_MAX_ATTEMPTS="1",
        O365_CONTENT_TYPES=CONTENT_TYPE,
        O365_MAX_DEQUEUE_COUNT="50",
        O365_START_TIME=(now() - dt.timedelta(hours=7)).isoformat(),
        **overrides,
    )


def test_run_once_with_a_failing_receiver_warns_once_with_the_cause_then_progress_shows_the_last_error_and_the_wait(
    simulator: Simulator, make_env: EnvFactory, refusing: HttpReceiver, tmp_path: Path
) -> None:
    """Ctrl-C then stops the run: the partial summary is printed and the exit code is 130."""
    blobs = generate(simulator, blobs=3)
    env = sink_env(make_env, refusing.url, O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS="2")
    log = tmp_path / "run.log"
    process = start(["run", "--once"], env, log)
    waiting = re.compile(
        rf"shipping: 0/{blobs} blobs \(0%\).*; \d+ failures, last error: .+; {blobs} messages in flight, "
        r"visible again at \d\d:\d\d:\d\d"
    )
    try:
        # Past the second attempt of a message: its failures after the first stay at DEBUG.
        wait_for(lambda: len(waiting.findall(log.read_text())) >= 2, process, "a progress line about the wait", log)
        process.send_signal(signal.SIGINT)
        code = finish(process, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    output = log.read_text()
    assert code == 130, f"exit code {code}: {output[-1500:]}"
    warnings = FAILURE_WARNING.findall(output)
    assert len(warnings) == 1, f"one WARNING for the pass, not one per failure: {output[-3000:]}"
    warning = next(line for line in output.splitlines() if FAILURE_WARNING.search(line))
    assert re.search(r"retrying in 2s: \w+", warning), f"the warning says why: {warning}"
    assert re.search(r"SinkPermanentError.*401", warning), warning
    assert "signal 2 received" in output
    assert re.search(r"^shipped 0 blobs", output, re.MULTILINE), "the partial summary"
    assert re.search(r"\d+ failures; the last error: SinkPermanentError", output)
    assert f"STOPPED by signal 2: 0 of {blobs} blobs handled" in output


def test_run_interval_prints_a_banner_a_human_line_per_pass_and_one_warning_per_pass(
    simulator: Simulator, make_env: EnvFactory, refusing: HttpReceiver, tmp_path: Path
) -> None:
    """Not on a terminal (a service, a container): the JSON summary lines stay, for Application Insights."""
    generate(simulator, blobs=2)
    env = sink_env(make_env, refusing.url, O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS="1")
    log = tmp_path / "run.log"
    process = start(["run", "--interval", "2"], env, log)
    try:
        wait_for(lambda: "pass 2 done" in log.read_text(), process, "the end of the second pass", log)
        process.send_signal(signal.SIGTERM)
        code = finish(process, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    output = log.read_text()
    assert code == 0, f"exit code {code}: {output[-1500:]}"
    assert re.search(
        rf"collector starting: 1 tenant \({TID}\); content types {CONTENT_TYPE}; sinks \S+; a pass every 2 s", output
    ), output[:2000]
    passes = re.findall(r"pass (\d+) done in [\d.]+ s: 1 stream listed, \d+ blobs enqueued; shipped 0 blobs", output)
    assert passes[:2] == ["1", "2"], output[-3000:]
    assert re.search(
        r"pass 1 done .*\d+ failures \(last error: SinkPermanentError.+\); next pass (in \d+ s|now)", output
    )
    first_two = output[: output.index("pass 2 done")]
    assert len(FAILURE_WARNING.findall(first_two)) == 2, f"one WARNING per pass: {first_two[-3000:]}"
    for prefix in JSON_PREFIXES:
        assert prefix in output, f"{prefix!r} is written when stderr is not a terminal"


def test_run_once_with_the_receiver_down_says_in_the_progress_line_why_blobs_were_deferred(
    simulator: Simulator, make_env: EnvFactory, tmp_path: Path
) -> None:
    blobs = generate(simulator, blobs=3)
    with refusing_url() as url:
        env = sink_env(make_env, url)
        result = subprocess.run(
            [sys.executable, "-m", "o365collector", "run", "--once"],
            cwd=REPO,
            env=child_env(env),
            capture_output=True,
            text=True,
            timeout=120,
        )
    output = result.stdout + result.stderr
    assert re.search(
        rf"shipping: 0/{blobs} blobs \(0%\).*[;,] {blobs} deferred, last error: waiting for sink \S+: "
        r"SinkTransientError: .*refused",
        output,
    ), output[-3000:]
    assert re.search(rf"{blobs} deferred; the last error: waiting for sink", output), output[-3000:]


def run_on_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the command line with a pseudo-terminal as stdout and stderr; return its exit code and what it showed."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "o365collector", *args],
        cwd=REPO,
        env=child_env(env),
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=120)
        reader.join(30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(controller)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_the_json_summary_lines_are_hidden_on_a_terminal_unless_json_logs_asks_for_them(
    simulator: Simulator, make_env: EnvFactory, tmp_path: Path
) -> None:
    blobs = generate(simulator, blobs=2)
    with HttpReceiver() as receiver:
        env = make_env(SINK_TYPE="http", SINK_URL=receiver.url, O365_CONTENT_TYPES=CONTENT_TYPE)
        code, shown = run_on_terminal(["run", "--once"], env)
        assert code == 0, shown[-2000:]
        assert re.search(rf"^shipped {blobs} blobs", shown, re.MULTILINE), shown[-2000:]
        for prefix in JSON_PREFIXES:
            assert prefix not in shown, f"{prefix!r} is not shown to a person at a terminal"

        code, shown = run_on_terminal(["--json-logs", "run", "--once"], env)
        assert code == 0, shown[-2000:]
        for prefix in JSON_PREFIXES:
            assert prefix in shown, f"--json-logs shows {prefix!r} on a terminal too"


def test_sigterm_during_run_once_finishes_the_blob_in_flight_prints_the_summary_and_exits_143(
    simulator: Simulator, receiver: SignallingReceiver, make_env: EnvFactory, tmp_path: Path
) -> None:
    blobs = [
        simulator.add_blob(
            TID,
            CONTENT_TYPE,
            now() - dt.timedelta(hours=2) + dt.timedelta(minutes=i),
            [{"Id": f"r-{i:03d}", "Operation": "Op", "Workload": "General"}],
        )
        for i in range(40)
    ]
    receiver.trigger = frozenset(b.content_id for b in blobs)
    env = make_env(
        SINK_TYPE="http",
        SINK_URL=receiver.url,
        O365_CONTENT_TYPES=CONTENT_TYPE,
        O365_START_TIME=(now() - dt.timedelta(hours=3)).isoformat(),
    )
    log = tmp_path / "run.log"
    process = start(["run", "--once"], env, log)
    receiver.pid = process.pid
    try:
        code = finish(process, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)

    output = log.read_text()
    assert receiver.signalled is not None, output[-2000:]
    assert code == 143, f"exit code {code}: {output[-1500:]}"
    assert "signal 15 received" in output
    ledger = TableClient.from_connection_string(env["AzureWebJobsStorage"], table_name=env["O365_LEDGER_TABLE"])
    rows = {str(e["ContentId"]): str(e["State"]) for e in ledger.list_entities()}
    # The blobs in flight when the signal came (the runner handles up to host.json batchSize at once)
    # were finished; none was begun after it.
    assert receiver.signalled in rows, rows
    assert set(rows.values()) == {"done"}, rows
    handled = len(rows)
    assert 1 <= handled <= BATCH, f"{handled} blobs handled after SIGTERM: more than were in flight"
    assert re.search(rf"^shipped {handled} blobs \({handled} records\)", output, re.MULTILINE), output[-2000:]
    assert f"STOPPED by signal 15: {handled} of 40 blobs handled" in output
    queue = QueueClient.from_connection_string(env["AzureWebJobsStorage"], env["O365_CONTENT_QUEUE"])
    left = 40 - handled
    assert queue.get_queue_properties().approximate_message_count == left, "the rest wait on the queue, visible"
    visible = len(queue.peek_messages(max_messages=32))
    assert visible == min(left, 32), "released at once, not held until a lease runs out"
