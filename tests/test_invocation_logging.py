"""What the collector logs from the threads it starts reaches Application Insights as the invocation's.

The Python worker forwards a record as part of an invocation only when the emitting thread carries the
invocation id in the worker's thread-local storage (``context.thread_local_storage.invocation_id``).
These tests call the functions the way the worker does (``tests.test_function_app.invoke``) with a log
handler that notes, for every record, exactly what the worker's handler would read on the emitting thread.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
import re
import textwrap
import threading
import typing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage as HostQueueMessage
from azure.functions.timer import TimerRequest

from o365collector import content, fetcher, invocation, runtime
from o365collector.leases import Heartbeat
from o365collector.lister import SUMMARY_MESSAGE
from o365collector.models import BlobContext
from o365collector.queue_runner import POISONED_MESSAGE
from o365collector.simulator import Simulator
from o365collector.sinks import compression
from o365collector.sinks.http import HttpSink, HttpSinkSettings
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory
from tests.test_function_app import WORKER_THREAD_LOCAL, bindings, functions, invoke, worker_invocation_id
from tests.test_infra_template import alert_query, kql_errors, offline_query

ROOT = Path(__file__).resolve().parents[1]
PROBE = "probe from a worker thread"


@dataclass(frozen=True)
class Seen:
    message: str
    thread: str
    invocation_id: str | None
    content_id: str | None


class WorkerView(logging.Handler):
    """Each record with the invocation id the worker would attach to it (read on the emitting thread)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("o365collector.simulator"):
            return  # the simulated Management API is the far side of the wire, not the collector
        seen = Seen(
            record.getMessage(),
            threading.current_thread().name,
            worker_invocation_id(),
            getattr(record, "content_id", None),
        )
        with self._lock:
            self.seen.append(seen)


@pytest.fixture
def worker_view() -> Iterator[WorkerView]:
    handler = WorkerView()
    logger = logging.getLogger("o365collector")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def app_env(make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    # Several streams and a pool of several workers, so the lister's steps run on pool threads.
    env = make_env(O365_CONTENT_TYPES="Audit.Exchange,Audit.SharePoint,DLP.All", O365_LIST_CONCURRENCY="4")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime.reset_collector()
    yield env
    runtime.reset_collector()


def generate(simulator: Simulator, *content_types: str) -> None:
    now = dt.datetime.now(dt.UTC)
    for content_type in content_types:
        simulator.generate(
            TENANT.tenant_id, content_type, now - dt.timedelta(hours=3), now - dt.timedelta(minutes=10),
            blob_every=dt.timedelta(hours=1),
        )  # fmt: skip


def test_the_listers_per_stream_lines_carry_the_timer_invocations_id(
    simulator: Simulator, app_env: dict[str, str], worker_view: WorkerView
) -> None:
    generate(simulator, "Audit.Exchange", "Audit.SharePoint", "DLP.All")
    invoke("list_content", invocation_id="timer-1", timer=TimerRequest(past_due=False))

    streams = [s for s in worker_view.seen if s.message.startswith(SUMMARY_MESSAGE)]
    assert len(streams) == 3
    # Belt and braces: the lines the offline alert and the deploy guide read are logged on the invocation's
    # own thread, and carry its id ...
    assert {s.thread for s in streams} == {threading.current_thread().name}
    assert [s.invocation_id for s in streams] == ["timer-1"] * 3
    # ... and what the lister's pool threads log (the first-run line of each stream) carries it too.
    pooled = [s for s in worker_view.seen if s.thread.startswith("lister")]
    assert len([s for s in pooled if s.message.startswith("first run:")]) == 3
    assert {s.invocation_id for s in worker_view.seen} == {"timer-1"}


def test_records_logged_while_fetching_carry_the_queue_invocations_id_even_two_at_once(
    simulator: Simulator, app_env: dict[str, str], worker_view: WorkerView, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two queue invocations at once (a queue batch), each validating its blob on the process-wide validator
    pool at the same moment: every record carries its own invocation's id, none the other's."""
    generate(simulator, "Audit.Exchange")
    invoke("list_content", invocation_id="timer-1", timer=TimerRequest(past_due=False))
    queue = runtime.collector().queue
    messages = list(queue.receive_messages(max_messages=2, visibility_timeout=60))
    assert len(messages) == 2

    # The validator threads log nothing today; a probe logs from there (with the blob's content id) so the
    # test sees what anything logged there would carry. The barrier holds both validations on the pool together.
    together = threading.Barrier(2, timeout=30)
    validate = content.ContentRecords._validate

    def validate_and_probe(records: content.ContentRecords) -> None:
        together.wait()
        logging.getLogger("o365collector.content").info(PROBE, extra={"content_id": records._what})
        validate(records)

    monkeypatch.setattr(content.ContentRecords, "_validate", validate_and_probe)
    worker_view.seen.clear()

    def deliver(index: int) -> None:
        message = messages[index]
        host_message = HostQueueMessage(
            id=message.id, body=message.content.encode(), dequeue_count=1, pop_receipt=message.pop_receipt
        )
        invoke("fetch_content", invocation_id=f"queue-{index}", msg=host_message)

    # The worker runs sync functions on a thread pool of its own: two invocations on two of its threads.
    with ThreadPoolExecutor(2, thread_name_prefix="worker-sync") as worker_pool:
        list(worker_pool.map(deliver, range(2)))

    probes = [s for s in worker_view.seen if s.message == PROBE]
    assert len(probes) == 2
    assert all(s.thread.startswith("content-validate") for s in probes)
    assert sorted(s.invocation_id or "" for s in probes) == ["queue-0", "queue-1"]
    bodies = [json.loads(m.content) for m in messages]
    # The fetcher's own records (content shipped ..., fetch run complete ...) name the content id;
    by_content = {s.content_id: s.invocation_id for s in worker_view.seen if s.content_id and s.message != PROBE}
    assert by_content == {body["contentId"]: f"queue-{i}" for i, body in enumerate(bodies)}
    # the probes name the blob as the API client describes it (the last segment of its URI).
    by_blob = {s.content_id: s.invocation_id for s in probes}
    assert by_blob == {
        f"content blob {body['contentUri'].rsplit('/', 1)[-1]}": f"queue-{i}" for i, body in enumerate(bodies)
    }
    assert {s.invocation_id for s in worker_view.seen} == {"queue-0", "queue-1"}


# The one line the alerts read that the Functions host logs itself (whatever the worker forwards).
HOST_LINES = ("Message has reached MaxDequeueCount",)


def read_prefixes(query: str) -> set[str]:
    return set(re.findall(r'message startswith "([^"]+)"', query))


def guide_queries() -> dict[str, str]:
    """The Kusto blocks of the deploy guide (its verification query)."""
    blocks = re.findall(r"```kusto\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), re.S)
    assert blocks, "the deploy guide has no Kusto query"
    return {f"deploy.md #{i}": textwrap.dedent(block) for i, block in enumerate(blocks, 1)}


def test_the_alerts_and_the_guide_parse_and_read_only_lines_logged_as_an_invocations(
    simulator: Simulator, app_env: dict[str, str], worker_view: WorkerView
) -> None:
    """Every line the alert rules and the deploy guide's query read is one the collector logs tied to an
    invocation (seen here, through the functions) or one the host logs itself; and every query parses."""
    queries = {
        "offline": offline_query("Audit.Exchange,Audit.SharePoint,DLP.All"),
        "poison": alert_query("poison"),
        "content-expired": alert_query("content-expired"),
        **guide_queries(),
    }
    assert kql_errors(queries) == {name: [] for name in queries}

    generate(simulator, "Audit.Exchange")
    invoke("list_content", invocation_id="timer-1", timer=TimerRequest(past_due=False))
    (message, *_) = runtime.collector().queue.receive_messages(max_messages=1, visibility_timeout=60)
    simulator.expire(json.loads(message.content)["contentId"])
    expired = HostQueueMessage(id=message.id, body=message.content.encode(), dequeue_count=1)
    invoke("fetch_content", invocation_id="queue-expired", msg=expired)
    last_try = HostQueueMessage(id="m-bad", body=b'{"v": 99}', dequeue_count=5)  # O365_MAX_DEQUEUE_COUNT
    with pytest.raises(Exception, match="version 99"):
        invoke("fetch_content", invocation_id="queue-poisoned", msg=last_try)

    for name, query in queries.items():
        for prefix in read_prefixes(query) - set(HOST_LINES):
            lines = [s for s in worker_view.seen if s.message.startswith(prefix)]
            assert lines, f"{name} reads {prefix!r}, which no function logged here"
            assert None not in {s.invocation_id for s in lines}, f"{name}: {prefix!r} logged outside an invocation"
    assert {p for q in queries.values() for p in read_prefixes(q)} >= {
        SUMMARY_MESSAGE,
        fetcher.EXPIRED_MESSAGE,
        POISONED_MESSAGE,
    }


def test_a_shared_pool_thread_keeps_no_invocation_after_its_task() -> None:
    """Process-wide pools serve one invocation after another: a task's tie ends with the task."""
    seen: list[str | None] = []
    pool = invocation.TiedThreadPool(1)
    try:
        with invocation.tied(WORKER_THREAD_LOCAL, "inv-a"):
            pool.submit(lambda: seen.append(worker_invocation_id())).result()
        pool.submit(lambda: seen.append(worker_invocation_id())).result()  # between invocations, or the CLI
        with invocation.tied(WORKER_THREAD_LOCAL, "inv-b"):
            pool.submit(lambda: seen.append(worker_invocation_id())).result()
    finally:
        pool.shutdown()
    assert seen == ["inv-a", None, "inv-b"]
    assert worker_invocation_id() is None  # and the calling thread is as it was


def test_a_pool_task_that_hands_work_on_passes_the_invocation_along() -> None:
    seen: list[str | None] = []
    outer = invocation.TiedThreadPool(1, thread_name_prefix="outer")
    inner = invocation.TiedThreadPool(1, thread_name_prefix="inner")

    def hand_on() -> None:
        inner.submit(lambda: seen.append(worker_invocation_id())).result()

    try:
        with invocation.tied(WORKER_THREAD_LOCAL, "inv-n"):
            outer.submit(hand_on).result()
    finally:
        outer.shutdown()
        inner.shutdown()
    assert seen == ["inv-n"]


def test_the_lease_heartbeat_logs_as_the_invocation_that_started_it(worker_view: WorkerView) -> None:
    beats: list[int] = []
    finished = threading.Event()

    def beat() -> bool:
        beats.append(1)
        if len(beats) == 1:
            raise RuntimeError("renewal refused")  # logged at WARNING on the heartbeat thread
        finished.set()
        return False  # nothing left to keep: the heartbeat ends

    with invocation.tied(WORKER_THREAD_LOCAL, "inv-h"):
        heartbeat = Heartbeat(beat, 0.0, name="claim renewal")
    heartbeat.start()  # after the block: the tie is taken when the heartbeat is made, inside the invocation
    assert finished.wait(30)
    heartbeat.stop()
    (warning,) = [s for s in worker_view.seen if s.message.startswith("claim renewal failed")]
    assert warning.thread == "claim renewal"
    assert warning.invocation_id == "inv-h"


@pytest.mark.integration
def test_the_http_sinks_compression_threads_log_as_the_sending_invocation(
    worker_view: WorkerView, monkeypatch: pytest.MonkeyPatch
) -> None:
    deflate = compression._deflate

    def deflate_and_probe(*args: Any) -> bytes:  # the compressors log nothing today: a probe stands in
        logging.getLogger("o365collector.sinks.compression").info(PROBE)
        return deflate(*args)

    monkeypatch.setattr(compression, "_deflate", deflate_and_probe)
    now = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    blob = BlobContext(tenant_id=TENANT.tenant_id, content_type="Audit.Exchange", content_id="c1", content_created=now)
    with HttpReceiver() as receiver:
        sink = HttpSink(HttpSinkSettings.from_env({"SINK_URL": receiver.url}), clock=now.timestamp)
        try:
            with invocation.tied(WORKER_THREAD_LOCAL, "inv-z"):
                sink.send([{"CreationTime": "2026-03-01T11:59:58", "Id": "r1"}], blob)
        finally:
            sink.close()
        assert len(receiver.requests) == 1
    probes = [s for s in worker_view.seen if s.message == PROBE]
    assert probes
    assert all(s.thread.startswith("http-sink-gzip") for s in probes)
    assert {s.invocation_id for s in probes} == {"inv-z"}


def test_no_module_starts_a_thread_that_is_not_tied() -> None:
    """Every thread pool and thread in the package is a tied one, so a new one cannot slip past the rule."""
    offenders = []
    for path in sorted((ROOT / "o365collector").rglob("*.py")):
        if "simulator" in path.parts or path.name == "invocation.py":
            continue  # the simulator is a test server, never run by the functions
        text = path.read_text()
        for match in re.finditer(r"\b(?P<kind>ThreadPoolExecutor|Thread)\((?P<args>[^)]*)", text):
            if match.group("kind") == "Thread" and "target=bind(" in match.group("args"):
                continue  # a thread tied by its target (leases.Heartbeat)
            offenders.append(f"{path.relative_to(ROOT)}: {match.group(0)[:40]}")
    assert offenders == []


def test_every_function_takes_the_invocation_context_and_no_binding_is_named_context() -> None:
    """The worker passes ``context`` to a function with a parameter of that name that is not a binding, and
    refuses to load one whose annotation (resolved with ``typing.get_type_hints``) is not ``Context``."""
    for name, function in functions().items():
        user_function = function.get_user_function()
        assert "context" in inspect.signature(user_function).parameters, name
        assert typing.get_type_hints(user_function)["context"] is func.Context, name
        assert "context" not in {b["name"] for b in bindings(name)}, name
