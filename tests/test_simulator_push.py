"""The simulator pushes webhook notifications like the Management Activity API ([REF] §6).

A loopback HTTPS receiver in the test stands in for the collector's listener; the simulator's clock
is injected, so backoff is crossed by moving time, and deliveries are driven by hand with
``deliver_notifications()`` (synchronous: once it returns, the receiver holds every request).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any, ClassVar

import orjson
import pytest
import requests

from o365collector.simulator import Simulator, SimulatorConfig, TenantSpec
from o365collector.simulator.push import is_loopback_https
from tests.loopback import LoopbackService, OwnedHandler
from tests.support import Clock

pytestmark = pytest.mark.integration

TENANT = "0f1e2d3c-4b5a-4697-8877-665544332211"
CLIENT = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
SECRET = "s3cret"
NOW = dt.datetime(2024, 5, 20, 12, 0, tzinfo=dt.UTC)
AUTH_ID = "o365activityapinotification"
CT = "Audit.Exchange"


class _Handler(OwnedHandler):
    def do_POST(self) -> None:
        owner = self.owner
        assert isinstance(owner, WebhookReceiver)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with owner.lock:
            status = owner.answers.popleft() if owner.answers else 200
            owner.received.append(({k.lower(): v for k, v in self.headers.items()}, orjson.loads(body), status))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class WebhookReceiver(LoopbackService):
    """Records every POST (headers, parsed body, status answered); answers the scripted statuses, then 200."""

    kind: ClassVar[str] = "webhook receiver"

    def __init__(self) -> None:
        super().__init__(_Handler, tls=True, timeout=5.0, name="webhook")
        self.lock = threading.Lock()
        self.answers: deque[int] = deque()
        self.received: list[tuple[dict[str, str], Any, int]] = []

    @property
    def url(self) -> str:
        return f"{self.base_url}/o365/"

    def notifications(self) -> list[list[dict[str, Any]]]:
        """Bodies of the notification POSTs (not the validation ones), in arrival order."""
        return [body for headers, body, _ in self.received if "webhook-validationcode" not in headers]


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as service:
        yield service


@pytest.fixture
def sim(clock: Clock, receiver: WebhookReceiver) -> Iterator[Simulator]:
    simulator = Simulator(SimulatorConfig(seed=3, now=clock))
    simulator.add_tenant(TenantSpec(TENANT, CLIENT, SECRET))
    simulator.options.push.extra_ca_file = receiver.ca_file
    simulator.start()
    yield simulator
    simulator.stop()


def _http(sim: Simulator) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = sim.ca_file
    token = session.post(
        f"{sim.authority_url}/{TENANT}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT,
            "client_secret": SECRET,
            "scope": "https://manage.office.com/.default",
        },
    ).json()["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def start(sim: Simulator, address: str, auth_id: str | None = AUTH_ID, expiration: str = "") -> requests.Response:
    hook: dict[str, Any] = {"address": address, "expiration": expiration}
    if auth_id is not None:
        hook["authId"] = auth_id
    return _http(sim).post(
        f"{sim.api_url}/api/v1.0/{TENANT}/activity/feed/subscriptions/start",
        params={"contentType": CT, "PublisherIdentifier": TENANT},
        json={"webhook": hook},
    )


def listed_webhook(sim: Simulator) -> Any:
    response = _http(sim).get(f"{sim.api_url}/api/v1.0/{TENANT}/activity/feed/subscriptions/list")
    return {s["contentType"]: s["webhook"] for s in response.json()}.get(CT)


def add_blobs(sim: Simulator, count: int, available_in: dt.timedelta = dt.timedelta(minutes=1)) -> list[str]:
    ids = []
    for i in range(count):
        created = NOW + dt.timedelta(seconds=i)
        blob = sim.add_blob(TENANT, CT, created, [{"Id": f"r{i}"}], available_at=created + available_in)
        ids.append(blob.content_id)
    return ids


def test_start_validates_the_webhook_with_a_code_and_auth_id(sim: Simulator, receiver: WebhookReceiver) -> None:
    response = start(sim, receiver.url)

    assert response.status_code == 200, response.text
    assert response.json()["webhook"] == {
        "status": "enabled", "address": receiver.url, "authId": AUTH_ID, "expiration": None,
    }  # fmt: skip
    [(headers, body, _)] = receiver.received
    assert headers["webhook-authid"] == AUTH_ID
    assert headers["content-type"].startswith("application/json")
    assert body == {"validationCode": headers["webhook-validationcode"]}
    assert listed_webhook(sim)["status"] == "enabled"


def test_refused_validation_leaves_the_subscription_unchanged(sim: Simulator, receiver: WebhookReceiver) -> None:
    receiver.answers.append(403)

    response = start(sim, receiver.url)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "AF20021"
    assert response.json()["error"]["message"].endswith("The endpoint did not return HTTP 200.")
    assert sim.subscriptions(TENANT) == []  # not created
    assert sim.deliver_notifications().batches == 0


@pytest.mark.parametrize(
    "address",
    ["https://webhook.example.com/o365/", "https://10.0.0.1/o365/", "http://127.0.0.1:9/o365/"],
)
def test_never_posts_outside_loopback_https(sim: Simulator, address: str) -> None:
    response = start(sim, address)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "AF20021"
    assert sim.subscriptions(TENANT) == []


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("https://127.0.0.1:8443/api/webhook", True),
        ("https://localhost/o365/", True),
        ("https://[::1]:9000/", True),
        ("https://127.1:8443/", False),  # resolves to loopback, but not one of the three names
        ("https://webhook.example.com/o365/", False),
        ("https://127.0.0.1.example.com/", False),
        ("http://127.0.0.1:8443/", False),
        ("https://127.0.0.1:notaport/", False),
    ],
)
def test_only_loopback_https_addresses_are_ever_posted_to(address: str, allowed: bool) -> None:
    assert is_loopback_https(address) is allowed


def test_due_blobs_are_pushed_in_batches_once_available(
    sim: Simulator, receiver: WebhookReceiver, clock: Clock
) -> None:
    assert start(sim, receiver.url).status_code == 200
    sim.options.push.batch_size = 3
    ids = add_blobs(sim, 7)
    assert sim.deliver_notifications().batches == 0  # none available yet

    clock.now = NOW + dt.timedelta(minutes=2)
    report = sim.deliver_notifications()

    batches = receiver.notifications()
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [n["contentId"] for b in batches for n in b] == ids
    first = batches[0][0]
    assert first["tenantId"] == TENANT
    assert first["clientId"] == CLIENT
    assert first["contentType"] == CT
    assert set(first) == {
        "tenantId", "clientId", "contentType", "contentId", "contentUri", "contentCreated", "contentExpiration",
    }  # fmt: skip
    assert all(h["webhook-authid"] == AUTH_ID for h, _, _ in receiver.received)
    assert (report.delivered, report.batches) == (7, 3)
    assert {n.sent_at for n in report.notifications} == {clock.now}
    assert sim.deliver_notifications().batches == 0  # acknowledged: never sent again


def test_failures_are_retried_with_exponential_backoff(sim: Simulator, receiver: WebhookReceiver, clock: Clock) -> None:
    assert start(sim, receiver.url).status_code == 200
    sim.options.push.backoff_initial = dt.timedelta(seconds=30)
    [content_id] = add_blobs(sim, 1, available_in=dt.timedelta(0))
    receiver.answers.extend([500, 503])

    assert sim.deliver_notifications().failed_batches == 1
    clock.now = NOW + dt.timedelta(seconds=29)
    assert sim.deliver_notifications().batches == 0  # still backing off
    clock.now = NOW + dt.timedelta(seconds=30)
    assert sim.deliver_notifications().failed_batches == 1  # second failure: wait doubles
    clock.now = NOW + dt.timedelta(seconds=89)
    assert sim.deliver_notifications().batches == 0
    clock.now = NOW + dt.timedelta(seconds=90)
    assert sim.deliver_notifications().delivered == 1

    assert [b[0]["contentId"] for b in receiver.notifications()] == [content_id] * 3
    assert sim.deliver_notifications().batches == 0


def test_connection_errors_count_as_failures(sim: Simulator, receiver: WebhookReceiver) -> None:
    assert start(sim, receiver.url).status_code == 200
    add_blobs(sim, 1, available_in=dt.timedelta(0))
    receiver.close()  # connections to its port are now refused

    report = sim.deliver_notifications()

    assert report.failed_batches == 1
    assert report.notifications[0].status is None


def test_repeated_failures_disable_the_webhook_until_start(
    sim: Simulator, receiver: WebhookReceiver, clock: Clock
) -> None:
    assert start(sim, receiver.url).status_code == 200
    sim.options.push.max_failures = 3
    [content_id] = add_blobs(sim, 1, available_in=dt.timedelta(0))
    receiver.answers.extend([500, 500, 500])

    for minutes in (0, 10, 30):
        clock.now = NOW + dt.timedelta(minutes=minutes)
        report = sim.deliver_notifications()
    assert report.disabled == [(TENANT, CT)]
    assert listed_webhook(sim)["status"] == "disabled"
    clock.now = NOW + dt.timedelta(days=1)
    assert sim.deliver_notifications().batches == 0  # stopped

    response = start(sim, receiver.url)
    assert response.status_code == 200
    assert response.json()["webhook"]["status"] == "enabled"
    assert sim.deliver_notifications().delivered == 1  # catches up on what it missed
    assert receiver.notifications()[-1][0]["contentId"] == content_id


def test_a_past_expiration_is_refused_with_af20003(sim: Simulator, receiver: WebhookReceiver) -> None:
    past = "2024-05-20T11:59:00Z"  # the simulator's clock reads 12:00

    response = start(sim, receiver.url, expiration=past)

    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "AF20003", "message": f"Expiration {past} provided is set to past date and time.",
    }  # fmt: skip
    assert receiver.received == [], "refused before the validation handshake"
    assert sim.subscriptions(TENANT) == []


def test_a_webhook_past_its_expiration_is_listed_expired_and_goes_quiet(
    sim: Simulator, receiver: WebhookReceiver, clock: Clock
) -> None:
    expiration = "2024-05-20T13:00:00Z"
    response = start(sim, receiver.url, expiration=expiration)
    assert response.status_code == 200, response.text
    assert response.json()["webhook"]["expiration"] == expiration
    add_blobs(sim, 1, available_in=dt.timedelta(0))
    clock.now = NOW + dt.timedelta(minutes=30)
    assert sim.deliver_notifications().delivered == 1
    assert listed_webhook(sim)["status"] == "enabled"

    clock.now = NOW + dt.timedelta(hours=1)  # the expiration, on the simulator's clock
    later = add_blobs(sim, 1, available_in=dt.timedelta(0))
    clock.now = NOW + dt.timedelta(hours=2)
    assert listed_webhook(sim)["status"] == "expired"
    assert sim.deliver_notifications().batches == 0, "an expired webhook gets no notifications"

    assert start(sim, receiver.url).status_code == 200  # renewed (no expiration this time)
    assert listed_webhook(sim)["status"] == "enabled"
    assert sim.deliver_notifications().delivered == 1
    assert receiver.notifications()[-1][0]["contentId"] == later[0]


def test_duplicates_every_kth_batch(sim: Simulator, receiver: WebhookReceiver, clock: Clock) -> None:
    assert start(sim, receiver.url).status_code == 200
    sim.options.push.batch_size = 1
    sim.options.push.duplicate_every = 2
    ids = add_blobs(sim, 4, available_in=dt.timedelta(0))
    clock.now = NOW + dt.timedelta(minutes=1)

    report = sim.deliver_notifications()

    sent = [b[0]["contentId"] for b in receiver.notifications()]
    assert sent == [ids[0], ids[1], ids[1], ids[2], ids[3], ids[3]]
    assert report.duplicates == 2
    assert report.delivered == 4


def test_shuffle_delivers_out_of_order(sim: Simulator, receiver: WebhookReceiver, clock: Clock) -> None:
    assert start(sim, receiver.url).status_code == 200
    sim.options.push.shuffle = True
    sim.options.push.batch_size = 5
    ids = add_blobs(sim, 20, available_in=dt.timedelta(0))
    clock.now = NOW + dt.timedelta(minutes=1)

    sim.deliver_notifications()

    sent = [n["contentId"] for b in receiver.notifications() for n in b]
    assert sorted(sent) == sorted(ids)
    assert sent != ids


def test_stopped_subscription_gets_no_notifications(sim: Simulator, receiver: WebhookReceiver, clock: Clock) -> None:
    assert start(sim, receiver.url).status_code == 200
    add_blobs(sim, 2, available_in=dt.timedelta(0))
    clock.now = NOW + dt.timedelta(minutes=1)
    sim.disable_subscription(TENANT, CT)

    assert sim.deliver_notifications().batches == 0


def test_background_pusher_delivers_without_being_called(clock: Clock, receiver: WebhookReceiver) -> None:
    sim = Simulator(SimulatorConfig(seed=3, now=clock, push_interval_seconds=0.05))
    sim.add_tenant(TenantSpec(TENANT, CLIENT, SECRET))
    sim.options.push.extra_ca_file = receiver.ca_file
    with sim.start():
        assert start(sim, receiver.url).status_code == 200
        [content_id] = add_blobs(sim, 1, available_in=dt.timedelta(0))
        arrived = threading.Event()
        for _ in range(200):  # bounded: at most 10 s
            if receiver.notifications():
                arrived.set()
                break
            arrived.wait(0.05)
        assert arrived.is_set()
    assert receiver.notifications()[0][0]["contentId"] == content_id
