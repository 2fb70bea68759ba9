"""The function app in-process through the azure-functions package: bindings match the settings, and
the timer and queue functions move real data between the simulator, Azurite and the sink.

``invoke`` calls a function the way the Python worker does: with the invocation ``context`` it builds
(its process-wide thread-local storage, the invocation id set on the running thread for the call)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage as HostQueueMessage
from azure.functions.timer import TimerRequest

import function_app
from o365collector import runtime
from o365collector.config import DEFAULT_QUEUE, DEFAULT_SCHEDULE, QueueRunnerConfig
from o365collector.simulator import Simulator
from tests.support import TENANT, EnvFactory

ROOT = Path(__file__).resolve().parents[1]


@cache
def functions() -> dict[str, Any]:
    # app.get_functions() may be called only once per FunctionApp (a second call fails on duplicate names).
    return {f.get_function_name(): f for f in function_app.app.get_functions()}


# The worker's one thread-local storage for the whole process (``_invocation_id_local`` in
# azure_functions_worker.dispatcher): every Context hands out this same object, and the worker's log
# handler reads ``invocation_id`` from it on the thread that emits a record.
WORKER_THREAD_LOCAL = threading.local()


def worker_invocation_id() -> str | None:
    """What the worker's log handler reads to tie a record to an invocation (None: not tied)."""
    value = getattr(WORKER_THREAD_LOCAL, "invocation_id", None)
    return str(value) if value is not None else None


class WorkerContext(func.Context):
    """The invocation context as the worker builds it (azure.functions exposes only the abstract class)."""

    def __init__(self, function_name: str, invocation_id: str) -> None:
        self._function_name = function_name
        self._invocation_id = invocation_id

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return WORKER_THREAD_LOCAL

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return str(ROOT)

    @property
    def trace_context(self) -> Any:
        raise NotImplementedError("the collector's functions do not read it")

    @property
    def retry_context(self) -> Any:
        raise NotImplementedError("the collector's functions do not read it")


def invoke(name: str, invocation_id: str | None = None, **bindings: Any) -> Any:
    """Call a function's user code as the worker does for a sync function (its ``_run_sync_func``): the
    invocation id set in the thread-local storage on the calling thread for the call, cleared after."""
    context = WorkerContext(name, invocation_id or str(uuid.uuid4()))
    WORKER_THREAD_LOCAL.invocation_id = context.invocation_id
    try:
        return functions()[name].get_user_function()(**bindings, context=context)
    finally:
        WORKER_THREAD_LOCAL.invocation_id = None


def bindings(name: str) -> list[dict[str, Any]]:
    return list(json.loads(functions()[name].get_function_json())["bindings"])


def sample_settings() -> dict[str, str]:
    return dict(json.loads((ROOT / "local.settings.sample.json").read_text())["Values"])


def test_timer_schedule_comes_from_a_declared_setting() -> None:
    (timer,) = bindings("list_content")
    assert timer["type"] == "timerTrigger"
    assert timer["schedule"] == "%O365_LIST_SCHEDULE%"
    assert timer["runOnStartup"] is False
    assert sample_settings()["O365_LIST_SCHEDULE"] == DEFAULT_SCHEDULE


def test_queue_binding_uses_the_declared_queue_setting_and_connection() -> None:
    (trigger,) = bindings("fetch_content")
    assert trigger["type"] == "queueTrigger"
    assert trigger["queueName"] == "%O365_CONTENT_QUEUE%"
    settings = sample_settings()
    assert settings["O365_CONTENT_QUEUE"] == DEFAULT_QUEUE
    assert trigger["connection"] in settings


def test_host_json_queue_rules_match_the_cli_runner_defaults() -> None:
    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    defaults = QueueRunnerConfig()
    assert queues["maxDequeueCount"] == defaults.max_dequeue_count
    hours, minutes, seconds = (int(part) for part in queues["visibilityTimeout"].split(":"))
    assert dt.timedelta(hours=hours, minutes=minutes, seconds=seconds) == defaults.visibility_timeout
    assert queues["batchSize"] == defaults.batch_size
    settings = sample_settings()
    assert int(settings["O365_MAX_DEQUEUE_COUNT"]) == defaults.max_dequeue_count
    assert int(settings["O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS"]) == defaults.visibility_timeout.total_seconds()


def test_every_setting_the_code_reads_is_in_the_sample() -> None:
    import re

    source = "\n".join(p.read_text() for p in (ROOT / "o365collector").rglob("*.py") if "simulator" not in p.parts)
    # Settings are read through envparse helpers: get_int(env, "NAME", ...), or a `name: str = "NAME"` default.
    read = set(re.findall(r'(?:env, |name: str = )"((?:O365|SINK)_[A-Z0-9_]+)"', source))
    assert len(read) > 20
    read |= {"AzureWebJobsStorage"}
    missing = read - set(sample_settings())
    assert not missing, f"settings read by the code but missing from local.settings.sample.json: {sorted(missing)}"


@pytest.fixture
def app_env(make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    env = make_env(O365_CONTENT_TYPES="Audit.Exchange,DLP.All")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime.reset_collector()
    yield env
    runtime.reset_collector()


def test_timer_then_queue_functions_ship_the_records(simulator: Simulator, app_env: dict[str, str]) -> None:
    now = dt.datetime.now(dt.UTC)
    for content_type in ("Audit.Exchange", "DLP.All"):
        simulator.generate(
            TENANT.tenant_id, content_type, now - dt.timedelta(hours=8), now - dt.timedelta(minutes=10),
            blob_every=dt.timedelta(hours=1),
        )  # fmt: skip
    invoke("list_content", timer=TimerRequest(past_due=False))

    queue = runtime.collector().queue
    handled = 0
    while True:
        batch = list(queue.receive_messages(max_messages=32, visibility_timeout=60))
        if not batch:
            break
        for message in batch:
            host_message = HostQueueMessage(
                id=message.id,
                body=message.content.encode(),
                dequeue_count=message.dequeue_count,
                pop_receipt=message.pop_receipt,
            )
            invoke("fetch_content", msg=host_message)
            queue.delete_message(message)
            handled += 1
    assert handled == len(simulator.blobs(TENANT.tenant_id))
    out = Path(app_env["SINK_FILE_DIR"])
    lines = [line for path in out.rglob("*.ndjson") for line in path.read_text().splitlines() if line]
    assert sorted(json.loads(line)["Id"] for line in lines) == sorted(
        r["Id"] for b in simulator.blobs(TENANT.tenant_id) for r in b.records
    )


def test_a_failing_stream_fails_the_timer_run_but_the_others_are_listed(
    simulator: Simulator, app_env: dict[str, str]
) -> None:
    simulator.disable_subscription(TENANT.tenant_id, "DLP.All")
    now = dt.datetime.now(dt.UTC)
    simulator.generate(
        TENANT.tenant_id, "Audit.Exchange", now - dt.timedelta(hours=4), now - dt.timedelta(minutes=10),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    with pytest.raises(runtime.ListingFailedError, match=r"DLP\.All.*AF20023"):
        invoke("list_content", timer=TimerRequest(past_due=True))
    queued = runtime.collector().queue.get_queue_properties().approximate_message_count
    assert queued == len(simulator.blobs(TENANT.tenant_id, "Audit.Exchange"))


def test_the_queue_function_raises_so_the_host_redelivers(app_env: dict[str, str]) -> None:
    message = func.QueueMessage(id="m1", body=b'{"v": 99}')
    with pytest.raises(Exception, match="version 99 is not supported"):
        invoke("fetch_content", msg=message)
