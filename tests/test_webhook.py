"""The webhook receiver (push mode), POSTed to over HTTPS by hand: what it answers, enqueues, refuses and counts."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import requests

from o365collector.errors import ConfigError
from o365collector.models import FetchTask
from o365collector.push_settings import PushSettings
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.simulator.data import SimBlob
from o365collector.simulator.times import format_content_time
from o365collector.webhook_server import WebhookServer, parse_listen
from tests.support import TENANT, now

TID = TENANT.tenant_id
AUTH = "push-" + "a1b2c3d4" * 5  # 45 characters


def descriptor(blob: SimBlob, **changes: Any) -> dict[str, Any]:
    entry = {
        "tenantId": blob.tenant_id,
        "clientId": TENANT.client_id,
        "contentType": blob.content_type,
        "contentId": blob.content_id,
        "contentUri": blob.content_uri,
        "contentCreated": format_content_time(blob.created),
        "contentExpiration": format_content_time(blob.expiration),
    }
    return entry | changes


@pytest.fixture
def push_collector(make_collector: Callable[..., Collector]) -> Collector:
    table = "arr" + uuid.uuid4().hex[:10]
    return make_collector(O365_WEBHOOK_AUTH_ID=AUTH, O365_ARRIVAL_TABLE=table, O365_CONTENT_TYPES="Audit.Exchange")


@pytest.fixture
def listener(push_collector: Collector, simulator: Simulator) -> Iterator[WebhookServer]:
    # The simulator's server certificate (localhost) and CA: the same files a push demo serves with.
    files = simulator.cert_files
    with WebhookServer(push_collector.webhook_receiver(), cert_file=files.cert_file, key_file=files.key_file) as server:
        yield server


def post(server: WebhookServer, body: object, *, auth: str | None = AUTH, **headers: str) -> requests.Response:
    sent = {"Content-Type": "application/json; charset=utf-8", **headers}
    if auth is not None:
        sent["Webhook-AuthID"] = auth
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return requests.post(server.url, data=data, headers=sent, timeout=10)


def queued(collector: Collector) -> list[FetchTask]:
    return [FetchTask.from_message(m.content) for m in collector.queue.peek_messages(max_messages=32)]


def blobs(simulator: Simulator, count: int, content_type: str = "Audit.Exchange") -> list[SimBlob]:
    start = now() - dt.timedelta(hours=3)
    return [
        simulator.add_blob(TID, content_type, start + dt.timedelta(minutes=i), [{"Id": str(uuid.uuid4())}])
        for i in range(count)
    ]


def test_validation_request_is_answered_200_and_enqueues_nothing(
    listener: WebhookServer, push_collector: Collector
) -> None:
    code = "vc-" + uuid.uuid4().hex
    response = post(listener, {"validationCode": code}, **{"Webhook-ValidationCode": code})
    assert response.status_code == 200
    assert code not in response.text  # nothing from the request is echoed
    assert queued(push_collector) == []


def test_notification_enqueues_one_message_per_blob_and_a_retry_enqueues_nothing_more(
    listener: WebhookServer, push_collector: Collector, simulator: Simulator
) -> None:
    sent = blobs(simulator, 3)
    response = post(listener, [descriptor(b) for b in sent])
    assert response.status_code == 200
    assert response.json() == {"accepted": 3, "duplicates": 0, "refused": 0}
    tasks = queued(push_collector)
    assert sorted(t.content_id for t in tasks) == sorted(b.content_id for b in sent)
    assert {(t.tenant_id, t.content_type, t.content_uri) for t in tasks} == {
        (TID, "Audit.Exchange", b.content_uri) for b in sent
    }
    # The service retries and duplicates notifications: the same body again puts nothing new on the queue.
    again = post(listener, [descriptor(b) for b in reversed(sent)])
    assert again.status_code == 200
    assert again.json()["duplicates"] == 3
    assert len(queued(push_collector)) == 3


@pytest.mark.parametrize(
    ("auth", "reason"),
    [(None, "no Webhook-AuthID header"), (AUTH[:-1] + "x", "the Webhook-AuthID does not match"), ("", "does not")],
)
def test_a_wrong_or_missing_auth_id_is_refused_401_counted_and_never_enqueued(
    listener: WebhookServer, push_collector: Collector, simulator: Simulator, auth: str | None, reason: str
) -> None:
    response = post(listener, [descriptor(b) for b in blobs(simulator, 2)], auth=auth)
    assert response.status_code == 401
    assert reason in response.json()["error"]
    assert queued(push_collector) == []
    counts = push_collector.arrivals.refused()
    assert (counts.bad_auth, counts.bad_body, counts.last_status) == (1, 0, 401)


def test_forged_descriptors_are_refused_400_counted_and_their_valid_neighbour_still_enqueued(
    listener: WebhookServer, push_collector: Collector, simulator: Simulator
) -> None:
    good, foreign, other_tenant, wrong_id, not_collected = blobs(simulator, 4) + blobs(simulator, 1, "DLP.All")
    stranger = str(uuid.uuid4())
    body = [
        descriptor(good),
        descriptor(foreign, contentUri=f"https://attacker.example/api/v1.0/{TID}/activity/feed/audit/x"),
        descriptor(other_tenant, tenantId=stranger, contentUri=other_tenant.content_uri.replace(TID, stranger)),
        descriptor(wrong_id, contentUri=good.content_uri),
        descriptor(not_collected),
        {"tenantId": TID, "contentType": "Audit.Exchange"},
        "not an object",
    ]
    response = post(listener, body)
    assert response.status_code == 400
    answer = response.json()
    assert (answer["accepted"], answer["refused"]) == (1, 6)
    problems = "\n".join(answer["problems"])
    assert "not to the API host" in problems
    assert "not a tenant this deployment collects" in problems
    assert "another content id" in problems
    assert "DLP.All is not collected" in problems
    assert "contentUri is missing" in problems
    assert "attacker.example/api" not in problems  # refused values are not echoed
    assert stranger not in problems
    assert [t.content_id for t in queued(push_collector)] == [good.content_id]
    counts = push_collector.arrivals.refused()
    assert (counts.bad_body, counts.bad_auth) == (1, 0)


@pytest.mark.parametrize("body", [b"not json", b'{"some": "object"}', b"", b"[1, 2"])
def test_a_body_that_is_not_a_notification_is_refused_400(
    listener: WebhookServer, push_collector: Collector, body: bytes
) -> None:
    assert post(listener, body).status_code == 400
    assert queued(push_collector) == []
    assert push_collector.arrivals.refused().bad_body == 1


def test_without_an_auth_id_setting_the_receiver_refuses_everything(
    make_collector: Callable[..., Collector], simulator: Simulator
) -> None:
    collector = make_collector()
    answer = collector.webhook_receiver().handle(
        {"Webhook-AuthID": ""}, orjson.dumps([descriptor(blobs(simulator, 1)[0])])
    )
    assert answer.status == 503
    assert "O365_WEBHOOK_AUTH_ID" in answer.body["error"]
    assert queued(collector) == []


def test_only_post_to_the_webhook_path_is_served(listener: WebhookServer) -> None:
    assert requests.get(listener.url, timeout=10).status_code == 405
    assert requests.post(listener.url.replace("/api/webhook", "/other"), data=b"[]", timeout=10).status_code == 404


@pytest.mark.parametrize(
    ("value", "problem"),
    [("short", "32 to 256"), ("x" * 40 + " y", "without spaces"), ("@Microsoft.KeyVault(SecretUri=x)", "Key Vault")],
)
def test_auth_id_setting_is_checked_and_named(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="O365_WEBHOOK_AUTH_ID") as caught:
        PushSettings.from_env({"O365_WEBHOOK_AUTH_ID": value})
    assert problem in str(caught.value)


def test_listen_address_is_parsed_and_named() -> None:
    assert parse_listen("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ConfigError, match="--webhook-listen"):
        parse_listen("8443")


def test_the_webhook_function_is_post_only_with_a_function_key_and_answers_through_the_receiver(
    make_env: Callable[..., dict[str, str]], simulator: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import azure.functions as func

    from o365collector import runtime
    from tests.test_function_app import bindings, invoke

    (trigger,) = [b for b in bindings("webhook") if b["type"] == "httpTrigger"]
    assert (trigger["route"], trigger["methods"], trigger["authLevel"].lower()) == ("webhook", ["POST"], "function")
    env = make_env(O365_WEBHOOK_AUTH_ID=AUTH, O365_ARRIVAL_TABLE="arr" + uuid.uuid4().hex[:10])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime.reset_collector()
    try:
        blob = blobs(simulator, 1)[0]
        request = func.HttpRequest(
            method="POST",
            url="http://localhost/api/webhook",
            body=orjson.dumps([descriptor(blob)]),
            headers={"webhook-authid": AUTH, "content-type": "application/json"},
        )
        response = invoke("webhook", req=request)
        assert response.status_code == 200
        assert response.headers.get("Cache-Control") == "no-store"
        assert [t.content_id for t in queued(runtime.collector())] == [blob.content_id]
        forged = func.HttpRequest(method="POST", url="http://localhost/api/webhook", body=b"[]", headers={})
        assert invoke("webhook", req=forged).status_code == 401
    finally:
        runtime.reset_collector()
