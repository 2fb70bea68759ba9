"""The webhook receiver (push mode), POSTed to over HTTPS by hand: what it answers, enqueues, refuses and counts."""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import orjson
import pytest
import requests

from o365collector import webhook
from o365collector.arrivals import ArrivalStore
from o365collector.envparse import Secret
from o365collector.errors import ConfigError
from o365collector.models import ContentBlob, FetchTask
from o365collector.push_settings import PushSettings
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from o365collector.simulator.data import SimBlob
from o365collector.simulator.times import format_content_time
from o365collector.webhook import PollMarkingQueue, WebhookReceiver, WebhookResponse
from o365collector.webhook_cli import describe_webhook, listening, record_webhooks, webhook_body
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


# -- the receiver alone: stub tenants, queue and arrival table (no Azurite, no HTTP) ------------------------------

API = "https://api.example.test"
NOW = dt.datetime(2026, 1, 5, 12, tzinfo=dt.UTC)


@dataclass(frozen=True)
class StubTenant:
    tenant_id: str
    content_types: tuple[str, ...] = ("Audit.Exchange",)
    api_url: str = API
    sources: tuple[str, ...] = ("audit",)

    @property
    def streams(self) -> tuple[str, ...]:  # as TenantConfig.streams: the content types only with the audit feed
        return self.content_types if "audit" in self.sources else ()


class ListQueue:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[str] = []
        self.fail = fail

    def send_message(self, content: str) -> object:
        if self.fail:
            raise RuntimeError("queue is gone")
        self.sent.append(content)
        return None

    def ids(self) -> list[str]:
        return [FetchTask.from_message(m).content_id for m in self.sent]


class StubArrivals:
    """An arrival table in memory; each method can be made to fail like storage does."""

    def __init__(self, *, fail: frozenset[str] = frozenset()) -> None:
        self.fail = fail
        self.marked: dict[tuple[str, str, str], set[str]] = {}
        self.refusals: list[tuple[int, str]] = []

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            raise RuntimeError(f"{name}: storage is down")

    def seen(self, tenant_id: str, content_type: str, content_id: str) -> bool:
        self._maybe_fail("seen")
        return bool(self.marked.get((tenant_id, content_type, content_id)))

    def mark(
        self, tenant_id: str, content_type: str, content_id: str, created: dt.datetime, now: dt.datetime, *, via: str
    ) -> None:
        self._maybe_fail("mark")
        self.marked.setdefault((tenant_id, content_type, content_id), set()).add(via)

    def record_refused(self, status: int, reason: str, now: dt.datetime) -> bool:
        self._maybe_fail("record_refused")
        self.refusals.append((status, reason))
        return True


class Tenants:
    """``tenants(refresh)`` like the collector's: a registry a test can change, read only on refresh (counted)."""

    def __init__(self, *tenants: StubTenant) -> None:
        self.registry = list(tenants)
        self.cached = list(tenants)
        self.refreshes = 0

    def __call__(self, refresh: bool) -> list[StubTenant]:
        if refresh:
            self.refreshes += 1
            self.cached = list(self.registry)
        return list(self.cached)


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(
    content_id: str, *, tenant_id: str = TID, content_type: str = "Audit.Exchange", **changes: Any
) -> dict[str, Any]:
    created = NOW - dt.timedelta(hours=1)
    value = {
        "tenantId": tenant_id,
        "contentType": content_type,
        "contentId": content_id,
        "contentUri": f"{API}/api/v1.0/{tenant_id}/activity/feed/audit/{content_id}",
        "contentCreated": format_content_time(created),
        "contentExpiration": format_content_time(created + dt.timedelta(days=7)),
    }
    return value | changes


def receiver(
    tenants: Tenants | None = None,
    queue: ListQueue | None = None,
    arrivals: StubArrivals | None = None,
    ticks: Ticks | None = None,
) -> WebhookReceiver:
    return WebhookReceiver(
        auth_id=Secret(AUTH),
        tenants=tenants or Tenants(StubTenant(TID)),
        queue=queue or ListQueue(),
        arrivals=cast(ArrivalStore, arrivals or StubArrivals()),
        clock=lambda: NOW,
        monotonic=ticks or Ticks(),
    )


def handle(target: WebhookReceiver, body: object, **headers: str) -> WebhookResponse:
    return target.handle({"Webhook-AuthID": AUTH, **headers}, body if isinstance(body, bytes) else orjson.dumps(body))


@pytest.mark.parametrize(
    ("headers", "body"),
    [({"Webhook-ValidationCode": "vc-1"}, b""), ({}, {"validationCode": "vc-2"})],
    ids=["header", "body"],
)
def test_a_validation_request_by_header_alone_or_by_body_alone_is_answered_200(
    headers: dict[str, str], body: object
) -> None:
    queue = ListQueue()
    answer = handle(receiver(queue=queue), body, **headers)
    assert (answer.status, queue.sent) == (200, [])


def test_a_validation_request_with_a_wrong_auth_id_is_refused_401() -> None:
    arrivals = StubArrivals()
    answer = receiver(arrivals=arrivals).handle(
        {"Webhook-AuthID": AUTH + "x", "Webhook-ValidationCode": "vc"}, b'{"validationCode": "vc"}'
    )
    assert answer.status == 401
    assert [status for status, _ in arrivals.refusals] == [401]


def test_a_body_over_the_size_limit_is_refused_400_before_it_is_parsed() -> None:
    queue = ListQueue()
    big = orjson.dumps([entry("a" * 100)] * (webhook.MAX_BODY_BYTES // 300 + 1))
    assert len(big) > webhook.MAX_BODY_BYTES
    answer = handle(receiver(queue=queue), big)
    assert answer.status == 400
    assert "larger than" in answer.body["error"]
    assert queue.sent == []


def test_a_notification_over_the_entry_limit_is_refused_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook, "MAX_ENTRIES", 2)
    queue = ListQueue()
    target = receiver(queue=queue)
    assert handle(target, [entry("c1"), entry("c2"), entry("c3")]).status == 400
    assert queue.sent == []
    assert handle(target, [entry("c1"), entry("c2")]).status == 200  # exactly the limit is taken
    assert queue.ids() == ["c1", "c2"]


def test_every_refused_entry_is_counted_but_only_the_first_ten_are_described() -> None:
    bad = [entry(f"bad{i}", contentUri="https://elsewhere.test/x") for i in range(webhook.PROBLEMS_KEPT + 2)]
    answer = handle(receiver(), bad)
    assert answer.status == 400
    assert answer.body["refused"] == webhook.PROBLEMS_KEPT + 2
    assert len(answer.body["problems"]) == webhook.PROBLEMS_KEPT


def test_a_queue_failure_is_answered_503_so_the_service_retries() -> None:
    arrivals = StubArrivals()
    answer = handle(receiver(queue=ListQueue(fail=True), arrivals=arrivals), [entry("c1")])
    assert answer.status == 503
    assert arrivals.marked == {}  # not recorded as pushed: the retry must enqueue it


@pytest.mark.parametrize("failing", ["seen", "mark", "record_refused"])
def test_an_arrival_table_failure_never_changes_the_answer(failing: str) -> None:
    queue = ListQueue()
    target = receiver(queue=queue, arrivals=StubArrivals(fail=frozenset({failing})))
    assert handle(target, [entry("c1")]).status == 200
    assert queue.ids() == ["c1"]
    assert handle(target, [entry("c2", contentUri="https://elsewhere.test/x")]).status == 400
    assert target.handle({}, b"[]").status == 401


def test_a_pushed_blob_is_recorded_as_pushed_and_a_second_push_is_a_duplicate() -> None:
    queue, arrivals = ListQueue(), StubArrivals()
    target = receiver(queue=queue, arrivals=arrivals)
    assert handle(target, [entry("c1")]).body == {"accepted": 1, "duplicates": 0, "refused": 0}
    assert arrivals.marked == {(TID, "Audit.Exchange", "c1"): {"push"}}
    assert handle(target, [entry("c1")]).body == {"accepted": 0, "duplicates": 1, "refused": 0}
    assert queue.ids() == ["c1"]


def test_the_tenant_id_is_matched_without_case_and_enqueued_as_configured() -> None:
    configured = "abcdef01-2345-4678-9abc-def012345678"
    queue = ListQueue()
    answer = handle(receiver(Tenants(StubTenant(configured)), queue), [entry("c1", tenant_id=configured.upper())])
    assert answer.status == 200
    assert [FetchTask.from_message(m).tenant_id for m in queue.sent] == [configured]


def test_a_push_for_a_tenant_that_does_not_collect_the_audit_feed_is_refused_and_not_enqueued() -> None:
    """A tenant collecting only Graph sources: its content types are listed nowhere, so a notification for
    one is refused here, not enqueued to be poisoned by the fetcher."""
    queue = ListQueue()
    answer = handle(receiver(Tenants(StubTenant(TID, sources=("signins",))), queue), [entry("c1")])
    assert answer.status == 400
    assert "Audit.Exchange is not collected for this tenant" in answer.body["problems"][0]
    assert queue.sent == []


def test_an_unknown_tenant_rereads_the_registry_at_most_once_a_minute() -> None:
    added = str(uuid.uuid4())
    tenants, ticks, queue = Tenants(StubTenant(TID)), Ticks(), ListQueue()
    target = receiver(tenants=tenants, ticks=ticks, queue=queue)
    assert handle(target, [entry("c1", tenant_id=added)]).status == 400
    assert tenants.refreshes == 1
    tenants.registry.append(StubTenant(added))  # added to the registry just after that read
    ticks.now += webhook.TENANT_REFRESH_SECONDS - 1
    assert handle(target, [entry("c2", tenant_id=added)]).status == 400  # not re-read yet
    assert tenants.refreshes == 1
    ticks.now += 2
    assert handle(target, [entry("c3", tenant_id=added)]).status == 200  # re-read: the new tenant is found
    assert tenants.refreshes == 2
    assert queue.ids() == ["c3"]


def test_a_known_tenant_is_found_without_rereading_the_registry() -> None:
    tenants = Tenants(StubTenant(TID))
    assert handle(receiver(tenants=tenants), [entry("c1")]).status == 200
    assert tenants.refreshes == 0


def test_the_poll_marking_queue_records_polled_blobs_and_never_fails_the_send_for_the_record() -> None:
    message = FetchTask.for_blob(TID, ContentBlob.from_api(entry("c1"))).to_message()
    arrivals, queue = StubArrivals(), ListQueue()
    PollMarkingQueue(queue, cast(ArrivalStore, arrivals), lambda: NOW).send_message(message)
    assert arrivals.marked == {(TID, "Audit.Exchange", "c1"): {"poll"}}
    failing = PollMarkingQueue(queue, cast(ArrivalStore, StubArrivals(fail=frozenset({"mark"}))), lambda: NOW)
    failing.send_message(message)
    assert queue.ids() == ["c1", "c1"]


# -- settings, the listener and the command line's push flags -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("k" * 31, False),
        ("k" * 32, True),
        ("k" * 256, True),
        ("k" * 257, False),
        ("k" * 40 + "\u00e9", False),  # not ASCII: a header could not carry it
        ("k" * 20 + "\x7f" + "k" * 20, False),  # a control character
    ],
)
def test_auth_id_length_and_characters_are_bounded(value: str, accepted: bool) -> None:
    if accepted:
        assert PushSettings.from_env({"O365_WEBHOOK_AUTH_ID": value}).enabled
    else:
        with pytest.raises(ConfigError, match="O365_WEBHOOK_AUTH_ID"):
            PushSettings.from_env({"O365_WEBHOOK_AUTH_ID": value})


@pytest.mark.parametrize(
    ("name", "accepted"),
    [("abc", True), ("ab", False), ("a" * 63, True), ("a" * 64, False), ("1abc", False), ("arriv\u00e9", False)],
)
def test_arrival_table_name_is_checked_and_named(name: str, accepted: bool) -> None:
    if accepted:
        assert PushSettings.from_env({"O365_ARRIVAL_TABLE": name}).arrival_table == name
    else:
        with pytest.raises(ConfigError, match="O365_ARRIVAL_TABLE"):
            PushSettings.from_env({"O365_ARRIVAL_TABLE": name})


@pytest.mark.parametrize(("text", "port"), [("127.0.0.1:65535", 65535), ("127.0.0.1:65536", None), ("h:x", None)])
def test_listen_port_is_bounded(text: str, port: int | None) -> None:
    if port is None:
        with pytest.raises(ConfigError, match="--webhook-listen"):
            parse_listen(text)
    else:
        assert parse_listen(text)[1] == port


def test_the_listener_requires_tls_off_loopback_and_serves_plain_http_on_loopback() -> None:
    with pytest.raises(ConfigError, match="--webhook-cert"):
        WebhookServer(receiver(), host="0.0.0.0")  # noqa: S104 (refused before it binds)
    with WebhookServer(receiver(), host="localhost") as server:
        assert server.url.startswith("http://localhost:")


def test_the_listener_refuses_a_content_length_over_the_limit_without_reading_the_body() -> None:
    with WebhookServer(receiver(), host="127.0.0.1") as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.putrequest("POST", "/api/webhook")
        connection.putheader("Content-Length", str(webhook.MAX_BODY_BYTES + 1))
        connection.putheader("Webhook-AuthID", AUTH)
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        connection.close()


def test_the_listener_serves_the_root_path_too() -> None:
    queue = ListQueue()
    with WebhookServer(receiver(queue=queue), host="127.0.0.1") as server:
        root = server.url.replace("/api/webhook", "/")
        response = requests.post(root, data=orjson.dumps([entry("c1")]), headers={"Webhook-AuthID": AUTH}, timeout=10)
    assert response.status_code == 200
    assert queue.ids() == ["c1"]


def args(**values: Any) -> argparse.Namespace:
    defaults = {"action": "start", "webhook": None, "auth_id_from_setting": "O365_WEBHOOK_AUTH_ID"}
    defaults |= {"webhook_listen": None, "webhook_cert": None, "webhook_key": None}
    return argparse.Namespace(**(defaults | values))


def test_the_webhook_body_takes_the_auth_id_from_the_named_setting() -> None:
    url = "https://fn.example.net/api/webhook?code=k"
    body = webhook_body(args(webhook=url, auth_id_from_setting="OTHER_AUTH"), {"OTHER_AUTH": AUTH})
    assert body == {"address": url, "authId": AUTH, "expiration": ""}
    with pytest.raises(ConfigError, match="OTHER_AUTH"):
        webhook_body(args(webhook=url, auth_id_from_setting="OTHER_AUTH"), {"O365_WEBHOOK_AUTH_ID": AUTH})
    assert webhook_body(args(), {"O365_WEBHOOK_AUTH_ID": AUTH}) is None


@pytest.mark.parametrize(
    ("changes", "problem"),
    [({"action": "stop"}, "subscriptions start"), ({"webhook": "http://fn.example.net/api/webhook"}, "https://")],
)
def test_a_webhook_only_goes_with_start_and_an_https_address(changes: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match="--webhook") as caught:
        webhook_body(
            args(**({"webhook": "https://fn.example.net/api/webhook"} | changes)), {"O365_WEBHOOK_AUTH_ID": AUTH}
        )
    assert problem in str(caught.value)


@pytest.mark.parametrize(("status", "hint"), [("disabled", True), ("expired", True), ("enabled", False)])
def test_subscriptions_list_tells_how_to_re_enable_a_disabled_or_expired_webhook(status: str, hint: bool) -> None:
    text = describe_webhook(
        {
            "contentType": "Audit.Exchange",
            "webhook": {"address": "https://h.example/api/webhook?code=K", "status": status},
        }
    )
    assert text.startswith(f"; webhook {status} https://h.example/api/webhook")
    assert "code=K" not in text
    assert ("subscriptions start --content-type Audit.Exchange --webhook <URL>" in text) is hint


def test_the_listener_flags_need_push_mode_and_a_cert_with_its_key(
    make_collector: Callable[..., Collector], push_collector: Collector
) -> None:
    with (
        pytest.raises(ConfigError, match="O365_WEBHOOK_AUTH_ID"),
        listening(args(webhook_listen="127.0.0.1:0"), make_collector()),
    ):
        pass
    with (
        pytest.raises(ConfigError, match="--webhook-key"),
        listening(args(webhook_listen="127.0.0.1:0", webhook_cert="cert.pem"), push_collector),
    ):
        pass


def test_webhook_states_are_recorded_for_status_only_in_push_mode(
    make_collector: Callable[..., Collector], push_collector: Collector
) -> None:
    listed = [
        {"contentType": "Audit.Exchange", "webhook": {"address": "https://h.example/api/webhook", "status": "disabled"}}
    ]
    off = make_collector(O365_ARRIVAL_TABLE="arr" + uuid.uuid4().hex[:10])
    record_webhooks(off, TID, listed)
    assert off.arrivals.webhooks() == {}
    record_webhooks(push_collector, TID, listed)
    assert push_collector.arrivals.webhooks()[(TID, "Audit.Exchange")].state == "disabled"
