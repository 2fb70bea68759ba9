"""Listing fanned out through the list queue (o365collector.listing_queue), on the simulator and Azurite.

The timer only enqueues one list message per tenant; workers list them, one worker per stream at a time
(a lease beside the checkpoint), a bounded share of windows per message; a duplicate message costs no
API call while the lease is held; workers killed mid-listing lose nothing, another lists their streams.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from azure.data.tables import TableClient

from o365collector import runtime
from o365collector.checkpoints import Checkpoint, RecentBlobs
from o365collector.fetcher import FetchResult, Outcome
from o365collector.listing_queue import ListMessage, ListMessageError, enqueue_listing, list_message, run_timer
from o365collector.models import FetchTask
from o365collector.queue_runner import QueueRunner
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator, TenantSpec
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory, now

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
TYPES = ("Audit.Exchange", "DLP.All")
FLEET = [f"{i}a000000-0000-4000-8000-00000000000{i}" for i in range(4)]
CollectorFactory = Callable[..., Collector]


def fanout(**overrides: str) -> dict[str, str]:
    return {"O365_LIST_FANOUT": "true", "O365_LIST_QUEUE": f"list-{uuid.uuid4().hex[:10]}"} | overrides


def fleet_env(simulator: Simulator, types: tuple[str, ...] = TYPES, hours: float = 20) -> dict[str, str]:
    """Four tenants with ``hours`` of content in each of ``types``, as O365_TENANTS."""
    entries, secrets = [], {}
    for index, tenant_id in enumerate(FLEET):
        client_id = f"e{index}000000-0000-4000-8000-00000000000{index}"
        simulator.add_tenant(TenantSpec(tenant_id, client_id, f"secret-{index}", subscribed=types))
        for content_type in types:
            simulator.generate(
                tenant_id, content_type, now() - dt.timedelta(hours=hours), now() - dt.timedelta(minutes=10),
                blob_every=dt.timedelta(hours=2), records_per_blob=(1, 3),
            )  # fmt: skip
        secrets[f"O365_SECRET_{index}"] = f"secret-{index}"
        entries.append(
            {"tenantId": tenant_id, "clientId": client_id, "credential": f"setting:O365_SECRET_{index}",
             "contentTypes": list(types)}
        )  # fmt: skip
    return {"O365_TENANTS": orjson.dumps(entries).decode(), **secrets}


def host_handler(collector: Collector) -> Callable[[str, str, int], FetchResult]:
    """What the list queue trigger does (busy streams are skipped, not waited for)."""

    def handle(body: str, message_id: str, _count: int) -> FetchResult:
        list_message(collector, body, message_id=message_id)
        return FetchResult(Outcome.SHIPPED)

    return handle


def drain_list_queue(collector: Collector) -> None:
    QueueRunner(
        collector.list_queue,
        collector.list_poison_queue,
        host_handler(collector),
        collector.settings.queue_runner,
        processing_lease=collector.settings.listing.lease,
    ).drain(max_seconds=120)


def enqueued_content_ids(collector: Collector) -> Counter[str]:
    ids: Counter[str] = Counter()
    for _ in range(1000):  # bounded: 32 a round
        batch = list(collector.queue.receive_messages(max_messages=32, visibility_timeout=300))
        if not batch:
            return ids
        ids.update(FetchTask.from_message(m.content).content_id for m in batch)
    raise AssertionError("the content queue did not run dry")


def served_blob_ids(simulator: Simulator, tenants: list[str]) -> Counter[str]:
    return Counter(b.content_id for t in tenants for b in simulator.blobs(t))


@pytest.fixture
def app_env(make_env: EnvFactory, simulator: Simulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    env = make_env(**fleet_env(simulator), **fanout())
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runtime.reset_collector()
    yield env
    runtime.reset_collector()


def test_the_timer_enqueues_one_list_message_per_tenant_and_lists_nothing(
    simulator: Simulator, app_env: dict[str, str]
) -> None:
    assert run_timer() == len(FLEET)
    active = runtime.collector()
    bodies = [ListMessage.from_message(m.content) for m in active.list_queue.peek_messages(max_messages=32)]
    assert sorted(b.tenant_id for b in bodies) == sorted(FLEET)
    assert simulator.stats.requests["list"] == 0, "the timer made no listing call"
    assert active.queue.get_queue_properties().approximate_message_count == 0


def test_two_runners_draining_the_list_queue_list_every_stream_and_enqueue_each_blob_once(
    simulator: Simulator, make_collector: CollectorFactory
) -> None:
    env = fleet_env(simulator) | fanout(O365_LIST_WINDOWS_PER_MESSAGE="1", O365_WINDOW_MINUTES="240")
    first, second = make_collector(**env), make_collector(**env)
    assert enqueue_listing(first) == len(FLEET)
    assert enqueue_listing(second) == len(FLEET)  # a second timer run at once: every message twice
    runners = [threading.Thread(target=drain_list_queue, args=(c,)) for c in (first, second)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join(150)
    assert not any(r.is_alive() for r in runners)

    assert enqueued_content_ids(first) == Counter(set(served_blob_ids(simulator, FLEET)))
    for tenant_id in FLEET:
        for content_type in TYPES:
            cursor = first.checkpoints.get(tenant_id, content_type).cursor
            assert cursor is not None, (tenant_id, content_type)
            assert cursor > now() - dt.timedelta(minutes=30), (tenant_id, content_type)
    assert first.list_queue.get_queue_properties().approximate_message_count == 0


def test_a_duplicate_list_message_makes_no_api_call_while_the_lease_is_held_and_lists_once_it_lapsed(
    simulator: Simulator, make_collector: CollectorFactory
) -> None:
    simulator.generate(
        TENANT.tenant_id, "Audit.Exchange", now() - dt.timedelta(hours=5), now() - dt.timedelta(minutes=10),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    env = fanout(O365_CONTENT_TYPES="Audit.Exchange", O365_START_TIME=(now() - dt.timedelta(hours=6)).isoformat())
    collector = make_collector(**env)
    held = collector.stream_leases.acquire(
        TENANT.tenant_id, "Audit.Exchange", "list:the-first-delivery", now(), collector.settings.listing.lease
    )
    assert held is not None
    assert not isinstance(held, dt.datetime)
    outcome = list_message(collector, ListMessage(TENANT.tenant_id).to_message(), message_id="a-duplicate")
    assert list(outcome.busy) == ["Audit.Exchange"]
    assert outcome.result.streams == []
    assert sum(simulator.stats.requests.values()) == 0, "no token, no listing call"

    later = make_collector(clock=lambda: now() + dt.timedelta(seconds=31), **env)  # the holder died: lease lapsed
    outcome = list_message(later, ListMessage(TENANT.tenant_id).to_message(), message_id="the-next-one")
    assert outcome.busy == {}
    assert [s.blobs_enqueued for s in outcome.result.streams] == [len(simulator.blobs(TENANT.tenant_id))]


def test_a_message_lists_only_the_types_it_names_frees_them_when_done_and_drops_what_is_not_its_own(
    simulator: Simulator, make_collector: CollectorFactory
) -> None:
    for content_type in TYPES:
        simulator.generate(
            TENANT.tenant_id, content_type, now() - dt.timedelta(hours=5), now() - dt.timedelta(minutes=10),
            blob_every=dt.timedelta(hours=1),
        )  # fmt: skip
    env = fanout(
        O365_CONTENT_TYPES=",".join(TYPES),
        O365_START_TIME=(now() - dt.timedelta(hours=6)).isoformat(),
        O365_LIST_WINDOWS_PER_MESSAGE="100",  # every stream is finished in one message: nothing is handed on
    )
    collector = make_collector(**env)
    exchange, dlp = TYPES
    named = list_message(collector, ListMessage(TENANT.tenant_id, (dlp,)).to_message(), message_id="one")
    assert [s.content_type for s in named.result.streams] == [dlp]
    assert (named.busy, named.continued) == ({}, [])
    assert collector.checkpoints.get(TENANT.tenant_id, exchange).cursor is None, "a type it did not name is untouched"

    # Its leases were released, not left to lapse: the next message lists at once.
    listed = simulator.stats.requests["list"]
    every = list_message(collector, ListMessage(TENANT.tenant_id).to_message(), message_id="two")
    assert every.busy == {}
    assert sorted(s.content_type for s in every.result.streams) == sorted(TYPES)
    assert simulator.stats.requests["list"] > listed

    # A continuation whose handed lease another worker took over is dropped, and lists nothing.
    other = collector.stream_leases.acquire(TENANT.tenant_id, exchange, "list:other", now(), dt.timedelta(minutes=5))
    assert not isinstance(other, (dt.datetime, type(None)))
    listed = simulator.stats.requests["list"]
    gone = ListMessage(TENANT.tenant_id, (exchange,), "continuation:superseded").to_message()
    late = list_message(collector, gone, message_id="three")
    assert (late.superseded, late.busy, late.result.streams) == ([exchange], {}, [])
    assert simulator.stats.requests["list"] == listed

    # A tenant no longer configured: dropped, nothing listed.
    unknown = list_message(collector, ListMessage(FLEET[0]).to_message(), message_id="four")
    assert (unknown.tenant_id, unknown.result.streams, unknown.busy) == (FLEET[0], [], {})
    assert simulator.stats.requests["list"] == listed


def test_the_command_line_sends_a_busy_stream_again_visible_when_its_lease_lapses(
    simulator: Simulator, make_collector: CollectorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = make_collector(**fanout(O365_CONTENT_TYPES=",".join(TYPES)))
    exchange, dlp = TYPES
    for content_type, hold in ((exchange, 10), (dlp, 4)):
        lease = collector.stream_leases.acquire(
            TENANT.tenant_id, content_type, "list:holder", now(), dt.timedelta(seconds=hold)
        )
        assert not isinstance(lease, (dt.datetime, type(None)))
    sent: list[tuple[str, int | None]] = []

    def record(body: str, visibility_timeout: int | None = None) -> None:
        sent.append((body, visibility_timeout))

    monkeypatch.setattr(collector.list_queue, "send_message", record)
    outcome = list_message(collector, ListMessage(TENANT.tenant_id).to_message(), message_id="cli", wait_for_busy=True)
    assert sorted(outcome.busy) == sorted(TYPES)
    [(body, delay)] = sent
    assert ListMessage.from_message(body) == ListMessage(TENANT.tenant_id, (exchange, dlp))
    assert delay == 11, "visible a second after the later lease lapses"
    assert sum(simulator.stats.requests.values()) == 0

    sent.clear()  # a lease held far beyond its length (a clock ahead): wait at most one lease length
    far = make_collector(clock=lambda: now() - dt.timedelta(minutes=10), **fanout(O365_CONTENT_TYPES=exchange))
    monkeypatch.setattr(far.list_queue, "send_message", record)
    list_message(far, ListMessage(TENANT.tenant_id).to_message(), message_id="cli-2", wait_for_busy=True)
    assert [delay for _, delay in sent] == [31]
    sent.clear()
    list_message(collector, ListMessage(TENANT.tenant_id).to_message(), message_id="host")
    assert sent == [], "the host drops busy streams: their holder lists them"


def test_a_week_long_backfill_does_not_hold_back_the_small_tenants_first_pass(
    simulator: Simulator, make_collector: CollectorFactory
) -> None:
    env = fleet_env(simulator, types=("Audit.Exchange",), hours=1) | fanout(O365_START_TIME="")
    big, *small = FLEET
    simulator.generate(
        big, "Audit.Exchange", now() - dt.timedelta(days=6, hours=23), now() - dt.timedelta(hours=2),
        blob_every=dt.timedelta(hours=3),
    )  # fmt: skip
    collector = make_collector(**env)
    for tenant_id in small:  # collected until an hour ago; the big tenant was never collected
        fresh = Checkpoint(tenant_id, "Audit.Exchange", None, RecentBlobs(), None)
        collector.checkpoints.advance(fresh, now() - dt.timedelta(hours=1, minutes=30), RecentBlobs(), now())
    enqueue_listing(collector)

    first_pass = list(collector.list_queue.receive_messages(max_messages=len(FLEET), visibility_timeout=300))
    assert sorted(ListMessage.from_message(m.content).tenant_id for m in first_pass) == sorted(FLEET)
    for message in first_pass:
        list_message(collector, message.content, message_id=message.id)
        collector.list_queue.delete_message(message)

    listed = enqueued_content_ids(collector)
    for tenant_id in small:
        fresh_ids = {b.content_id for b in simulator.blobs(tenant_id)}
        assert fresh_ids <= set(listed), "every small tenant's fresh content is on the queue after one pass"
    budget = collector.settings.listing.windows_per_message
    big_cursor = collector.checkpoints.get(big, "Audit.Exchange").cursor
    assert big_cursor is not None
    assert big_cursor < now() - dt.timedelta(days=5), "the backfill yielded after its share"
    assert simulator.stats.requests["list"] <= budget + len(small) * 2, "the big tenant listed only its share"

    drain_list_queue(collector)  # its continuations carry the backfill through
    listed += enqueued_content_ids(collector)
    assert listed == Counter(set(served_blob_ids(simulator, FLEET)))


# -- kills -----------------------------------------------------------------------------------------------------


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    child_env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
    child_env |= env | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "o365collector", "--log-level", "WARNING", "run", "--once"],
            cwd=REPO, env=child_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def live_leases(env: dict[str, str]) -> list[str]:
    table = TableClient.from_connection_string(env["AzureWebJobsStorage"], table_name=env["O365_CHECKPOINT_TABLE"])
    rows = table.list_entities()
    return [str(e["RowKey"]) for e in rows if str(e["RowKey"]).startswith("lease:") and e["Until"] > now()]


def test_workers_killed_mid_listing_lose_nothing_another_lists_their_streams(
    simulator: Simulator, receiver: HttpReceiver, make_env: EnvFactory, make_collector: CollectorFactory, tmp_path: Path
) -> None:
    for content_type in ("Audit.Exchange", "Audit.SharePoint", "DLP.All"):
        simulator.generate(
            TENANT.tenant_id, content_type, now() - dt.timedelta(hours=11), now() - dt.timedelta(minutes=10),
            blob_every=dt.timedelta(minutes=40), records_per_blob=(1, 4),
        )  # fmt: skip
    settings = fanout(
        O365_CONTENT_TYPES="Audit.Exchange,Audit.SharePoint,DLP.All",
        O365_START_TIME=(now() - dt.timedelta(hours=12)).isoformat(),
        O365_WINDOW_MINUTES="60",  # 12 windows a stream, one per message: listing lasts long enough to be killed in
        O365_LIST_WINDOWS_PER_MESSAGE="1",
        O365_LIST_LEASE_SECONDS="10",
        O365_CLAIM_LEASE_SECONDS="60",
        SINK_TYPE="http",
        SINK_URL=receiver.url,
    )
    env = make_env(**settings)
    log = tmp_path / "workers.log"
    workers = [start_worker(env, log), start_worker(env, log)]  # two instances at once
    deadline = time.monotonic() + 60
    while simulator.stats.requests["list"] < 8 and all(w.poll() is None for w in workers):
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.002)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    assert all(w.returncode == -signal.SIGKILL for w in workers), "both were killed, neither had finished"
    assert live_leases(env), "killed while holding listing leases"
    assert receiver.records == [], "killed before anything was shipped"

    assert run_once(make_collector(**settings)) == 0  # another worker: waits out the dead leases, lists, ships
    shipped = Counter(r["Id"] for r in receiver.records)
    served = Counter(r["Id"] for b in simulator.blobs(TENANT.tenant_id) for r in b.records)
    assert shipped == served, "every record shipped once, none lost"


def test_with_a_message_key_list_messages_are_signed_and_a_forged_one_lists_nothing(
    simulator: Simulator, make_collector: CollectorFactory
) -> None:
    key = "k" * 40
    collector = make_collector(**fleet_env(simulator), **fanout(O365_MESSAGE_KEY=key))
    assert enqueue_listing(collector, collector.tenants()[:1]) == 1
    [sent] = collector.list_queue.receive_messages(max_messages=32, visibility_timeout=300)
    assert "sig" in orjson.loads(sent.content), "the timer signs what it sends"

    forged = ListMessage(FLEET[0]).to_message()  # what anyone with queue access could send: unsigned
    with pytest.raises(ListMessageError, match="no signature"):
        list_message(collector, forged, message_id="forged")
    altered = orjson.loads(sent.content) | {"tenantId": FLEET[1]}
    with pytest.raises(ListMessageError, match="does not match"):
        list_message(collector, orjson.dumps(altered).decode(), message_id="altered")
    assert simulator.stats.requests["list"] == 0, "a refused message makes no API call"

    outcome = list_message(collector, sent.content, message_id="signed")
    assert outcome.tenant_id == FLEET[0]
    assert outcome.result.streams, "the signed message was listed"
    assert simulator.stats.requests["list"] > 0
