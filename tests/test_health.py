"""The ``health`` HTTP function in-process: bindings, 200 with the status report after real runs, 503 when
the collector is offline, failing or losing data, and a readable 503 when it cannot read its state.

The functions run in-process; the queue is drained by the real ``QueueRunner`` (host.json's
``maxDequeueCount`` and poison queue) handing each message to the ``fetch_content`` function, and the
sink is a loopback HTTP receiver. The thresholds ``O365_HEALTH_MAX_POISON`` and
``O365_HEALTH_LOST_DATA_HOURS`` are tested on both sides, by the status code the function answers."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from typing import Any

import azure.functions as func
import orjson
import pytest
from azure.functions.queue import QueueMessage as HostQueueMessage
from azure.functions.timer import TimerRequest

from o365collector import certificate_expiry, runtime, secret_expiry
from o365collector.errors import ConfigError
from o365collector.fetcher import FetchResult, Outcome
from o365collector.health import health_response
from o365collector.queue_runner import DrainResult, QueueRunner
from o365collector.simulator import Simulator
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory
from tests.test_function_app import bindings, invoke

TID = TENANT.tenant_id
Configure = Callable[..., dict[str, str]]


@pytest.fixture
def configure(make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Configure]:
    """Set the app settings the functions read (same queues and tables on every call) and start afresh."""

    def apply(**overrides: str) -> dict[str, str]:
        env = make_env(**({"O365_CONTENT_TYPES": "Audit.Exchange,DLP.All"} | overrides))
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        runtime.reset_collector()
        return env

    yield apply
    runtime.reset_collector()


@pytest.fixture
def app_env(configure: Configure) -> dict[str, str]:
    return configure()


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as server:
        yield server


def call_health() -> tuple[int, dict[str, Any]]:
    request = func.HttpRequest(method="GET", url="http://localhost/api/health", body=b"", params={})
    response = invoke("health", req=request)
    assert response.mimetype == "application/json"
    assert response.headers.get("Cache-Control") == "no-store"
    return response.status_code, orjson.loads(response.get_body())


def run_timer() -> None:
    invoke("list_content", timer=TimerRequest(past_due=False))


def run_queue() -> DrainResult:
    """Drain the content queue as the host would: the real ``QueueRunner`` (redelivery, then the poison
    queue after ``O365_MAX_DEQUEUE_COUNT`` failed deliveries) hands each message to ``fetch_content``."""
    active = runtime.collector()

    def trigger(body: str, message_id: str, dequeue_count: int) -> FetchResult:
        message = HostQueueMessage(id=message_id, body=body.encode(), dequeue_count=dequeue_count)
        invoke("fetch_content", msg=message)
        return FetchResult(Outcome.SHIPPED)  # the function returns nothing: it raises or it is done

    runner = QueueRunner(
        active.queue,
        active.poison_queue,
        trigger,
        active.settings.queue_runner,
        processing_lease=active.settings.policy.claim_lease,
    )
    return runner.drain(max_seconds=120)


def health_at(moment: dt.datetime) -> tuple[int, dict[str, Any]]:
    """The health function's answer as if called at ``moment`` (the collector's injected clock)."""
    runtime.collector().clock = lambda: moment
    return call_health()


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
    started = time.monotonic()
    run_timer()
    run_queue()
    status, body = call_health()
    took = time.monotonic() - started
    assert status == 200, body["problems"]
    assert body["healthy"] is True
    assert {s["content_type"] for s in body["streams"]} == {"Audit.Exchange", "DLP.All"}
    # the end delay (5 min) plus at most the time this test took: no guess at the machine's speed
    assert all(5 * 60 <= s["lag_seconds"] <= 5 * 60 + took + 1 for s in body["streams"])
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


def test_unhealthy_while_more_blobs_than_allowed_sit_in_the_poison_queue(
    simulator: Simulator, configure: Configure, receiver: HttpReceiver
) -> None:
    generate(simulator, "Audit.Exchange")
    blobs = len(simulator.blobs(TID, "Audit.Exchange"))
    receiver.require_bearer("right-token")  # the backend refuses every post: 401
    sink = {"SINK_TYPE": "http", "SINK_URL": receiver.url, "SINK_HTTP_BEARER_TOKEN": "wrong-token"}
    configure(**sink, O365_MAX_DEQUEUE_COUNT="2")
    run_timer()
    drained = run_queue()
    assert drained.poisoned == blobs
    assert [r.status for r in receiver.requests] == [401] * (2 * blobs)  # two deliveries each

    status, body = call_health()
    assert status == 503
    assert body["thresholds"]["max_poison"] == 0
    assert body["queues"]["poison"]["messages"] == blobs
    exchange = {s["content_type"]: s for s in body["streams"]}["Audit.Exchange"]
    assert exchange["blobs_poisoned"] == blobs
    assert exchange["last_error"]["source"] == "fetch"
    assert "401" in exchange["last_error"]["message"]
    assert body["problems"] == [
        f"{blobs} messages in the poison queue {body['queues']['poison']['name']}: fix the cause (see the last "
        "errors), then run `python -m o365collector replay-poison`"
    ]

    # O365_HEALTH_MAX_POISON on both sides of the count: as many as allowed is healthy, one more is not.
    configure(**sink, O365_HEALTH_MAX_POISON=str(blobs))
    assert call_health()[0] == 200
    configure(**sink, O365_HEALTH_MAX_POISON=str(blobs - 1))
    status, body = call_health()
    assert status == 503
    assert [p.split(" messages in the poison queue")[0] for p in body["problems"]] == [str(blobs)]


def test_content_lost_at_the_source_is_unhealthy_for_exactly_the_lookback(
    simulator: Simulator, configure: Configure
) -> None:
    generate(simulator, "Audit.Exchange")
    victim = simulator.blobs(TID, "Audit.Exchange")[1]
    simulator.expire(victim.content_id)
    # Only the loss can make it unhealthy here: the listing-age threshold is set to its maximum.
    configure(O365_HEALTH_LOST_DATA_HOURS="2", O365_HEALTH_MAX_LISTING_AGE_MINUTES=str(7 * 24 * 60))
    run_timer()
    assert run_queue().poisoned == 0
    (lost,) = runtime.collector().status.list_lost()
    assert lost.content_id == victim.content_id
    assert lost.lost_at is not None
    lookback, epsilon = dt.timedelta(hours=2), dt.timedelta(seconds=1)

    status, body = health_at(lost.lost_at + lookback - epsilon)
    assert status == 503
    assert body["problems"] == [
        f"{TID} Audit.Exchange: 1 content blobs expired at the source before delivery in the last 2 h"
    ]
    assert health_at(lost.lost_at + lookback + epsilon)[0] == 200

    configure(O365_HEALTH_LOST_DATA_HOURS="0", O365_HEALTH_MAX_LISTING_AGE_MINUTES=str(7 * 24 * 60))
    assert health_at(lost.lost_at)[0] == 200  # 0: losses never make it unhealthy


def test_a_collector_that_cannot_read_its_state_answers_503_with_the_reason() -> None:
    def broken() -> runtime.Collector:
        raise ConfigError("AzureWebJobsStorage", "is required")

    status, body = health_response(broken)
    assert status == 503
    doc = orjson.loads(body)
    assert {k: doc[k] for k in ("healthy", "status")} == {"healthy": False, "status": "unhealthy"}
    (problem,) = doc["problems"]
    # The reason names the setting at fault (an error-type prefix may lead it).
    assert problem.startswith("status unavailable: ")
    assert problem.endswith("AzureWebJobsStorage: is required")


EXPIRES = dt.datetime(2027, 6, 30, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("before_expiry", "expected"),
    [
        (dt.timedelta(days=31), None),  # outside the 30-day warning: all is well
        (dt.timedelta(days=30), (False, "in 30 days")),  # the warning starts on the day itself
        (dt.timedelta(days=2), (False, "in 2 days")),
        (dt.timedelta(days=1), (False, "in 1 day,")),
        (dt.timedelta(hours=5), (False, "today")),
        (dt.timedelta(0), (True, "expired on")),  # at the instant it ends, sign-in fails: unhealthy
        (-DAY, (True, "expired on")),
    ],
)
def test_secret_and_certificate_expiry_warn_within_the_window_and_fail_from_the_end(
    before_expiry: dt.timedelta, expected: tuple[bool, str] | None
) -> None:
    now = EXPIRES - before_expiry
    verdicts = [
        secret_expiry.expiry_verdict(EXPIRES, 30 * DAY, now),
        certificate_expiry.expiry_verdict("certificate 'app'", EXPIRES, "renew it", 30 * DAY, now),
    ]
    for verdict in verdicts:
        if expected is None:
            assert verdict is None
        else:
            assert verdict is not None
            assert verdict[0] is expected[0], verdict
            assert expected[1] in verdict[1], verdict
