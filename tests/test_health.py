"""The ``health`` HTTP function in-process: bindings, 200 with the status report after real runs, 503 when
the collector is offline, failing or losing data, and a readable 503 when it cannot read its state."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import orjson
import pytest
from azure.functions.queue import QueueMessage as HostQueueMessage
from azure.functions.timer import TimerRequest

from o365collector import runtime
from o365collector.errors import ConfigError
from o365collector.health import health_response
from o365collector.simulator import Simulator
from tests.support import TENANT, EnvFactory
from tests.test_function_app import bindings, functions

TID = TENANT.tenant_id


@pytest.fixture
def app_env(make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    env = make_env(O365_CONTENT_TYPES="Audit.Exchange,DLP.All")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime.reset_collector()
    yield env
    runtime.reset_collector()


def call_health() -> tuple[int, dict[str, Any]]:
    request = func.HttpRequest(method="GET", url="http://localhost/api/health", body=b"", params={})
    response = functions()["health"].get_user_function()(req=request)
    assert response.mimetype == "application/json"
    assert response.headers.get("Cache-Control") == "no-store"
    return response.status_code, orjson.loads(response.get_body())


def run_timer() -> None:
    functions()["list_content"].get_user_function()(timer=TimerRequest(past_due=False))


def run_queue(dequeue_count: int = 1) -> None:
    """Hand every visible message to the queue function once, as the host would."""
    queue = runtime.collector().queue
    while batch := list(queue.receive_messages(max_messages=32, visibility_timeout=60)):
        for message in batch:
            host_message = HostQueueMessage(
                id=message.id,
                body=message.content.encode(),
                dequeue_count=dequeue_count,
                pop_receipt=message.pop_receipt,
            )
            try:
                functions()["fetch_content"].get_user_function()(msg=host_message)
            except Exception:
                # The host would move it to the poison queue after the last attempt; so do we.
                runtime.collector().poison_queue.send_message(message.content)
            queue.delete_message(message)


def generate(sim: Simulator, content_type: str) -> None:
    now = dt.datetime.now(dt.UTC)
    sim.generate(
        TID, content_type, now - dt.timedelta(hours=5), now - dt.timedelta(minutes=10), blob_every=dt.timedelta(hours=1)
    )


def test_the_health_function_is_an_http_get_behind_a_function_key() -> None:
    (trigger, output) = sorted(bindings("health"), key=lambda b: str(b["direction"]))
    assert trigger["type"] == "httpTrigger"
    assert str(trigger["authLevel"]).lower() == "function"
    assert [m.lower() for m in trigger["methods"]] == ["get"]
    assert trigger["route"] == "health"
    assert output["type"] == "http"


def test_healthy_after_real_runs_with_lag_per_stream(simulator: Simulator, app_env: dict[str, str]) -> None:
    generate(simulator, "Audit.Exchange")
    generate(simulator, "DLP.All")
    run_timer()
    run_queue()
    status, body = call_health()
    assert status == 200, body["problems"]
    assert body["healthy"] is True
    assert {s["content_type"] for s in body["streams"]} == {"Audit.Exchange", "DLP.All"}
    assert all(5 * 60 <= s["lag_seconds"] < 10 * 60 for s in body["streams"])
    assert all(s["last_success_at"] for s in body["streams"])


def test_unhealthy_with_the_last_error_when_a_stream_fails(simulator: Simulator, app_env: dict[str, str]) -> None:
    generate(simulator, "Audit.Exchange")
    simulator.disable_subscription(TID, "DLP.All")
    with pytest.raises(runtime.ListingFailedError):
        run_timer()
    status, body = call_health()
    assert status == 503
    dlp = {s["content_type"]: s for s in body["streams"]}["DLP.All"]
    assert dlp["last_error"]["code"] == "AF20023"
    assert body["problems"] == [f"{TID} DLP.All: {p}" for p in dlp["problems"]]


def test_unhealthy_when_listing_has_not_succeeded_within_the_threshold(
    simulator: Simulator, app_env: dict[str, str]
) -> None:
    generate(simulator, "Audit.Exchange")
    run_timer()
    assert call_health()[0] == 200
    active = runtime.collector()
    real_clock = active.clock
    active.clock = lambda: real_clock() + dt.timedelta(minutes=31)  # the timer stopped firing 31 minutes ago
    status, body = call_health()
    assert status == 503
    assert sorted(body["problems"]) == [
        f"{TID} Audit.Exchange: no successful listing for 31 min",
        f"{TID} DLP.All: no successful listing for 31 min",
    ]


def test_unhealthy_while_blobs_sit_in_the_poison_queue(
    simulator: Simulator, app_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    generate(simulator, "Audit.Exchange")
    run_timer()
    blobs = len(simulator.blobs(TID, "Audit.Exchange"))
    monkeypatch.setattr(runtime.Collector, "sinks_for", lambda self, tenant_id: [Refusing()])
    run_queue(dequeue_count=5)  # the last attempt: it goes to the poison queue
    status, body = call_health()
    assert status == 503
    assert body["queues"]["poison"]["messages"] == blobs
    exchange = {s["content_type"]: s for s in body["streams"]}["Audit.Exchange"]
    assert exchange["blobs_poisoned"] == blobs
    assert exchange["last_error"]["source"] == "fetch"
    assert exchange["last_error"]["message"] == "backend said no"


class Refusing:
    name = "refusing"

    def check(self) -> None: ...

    def send(self, records: object, context: object) -> None:
        raise RuntimeError("backend said no")

    def close(self) -> None: ...


def test_a_collector_that_cannot_read_its_state_answers_503_with_the_reason() -> None:
    def broken() -> runtime.Collector:
        raise ConfigError("AzureWebJobsStorage", "is required")

    status, body = health_response(broken)
    assert status == 503
    assert orjson.loads(body) == {
        "healthy": False,
        "status": "unhealthy",
        "problems": ["status unavailable: AzureWebJobsStorage: is required"],
    }
