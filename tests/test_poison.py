"""``replay-poison`` on Azurite: poisoned blobs go back to the content queue once the cause is fixed and each
is shipped exactly once; content already shipped is dropped, unreadable messages (not base64, not a task) stay
as they are without stopping the others; ``--dry-run`` changes nothing."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable

import orjson
import pytest
from azure.storage.queue import QueueClient

from o365collector import cli
from o365collector.azurite import Azurite
from o365collector.models import FetchTask
from o365collector.poison import replay_poison
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory

TID = TENANT.tenant_id
CollectorFactory = Callable[..., Collector]



def poisoned(simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory) -> tuple[Collector, int]:
    """Content whose every delivery the backend refused (a wrong token): it all ends in the poison queue."""
    now = dt.datetime.now(dt.UTC)
    simulator.generate(
        TID, "Audit.General", now - dt.timedelta(hours=5), now - dt.timedelta(minutes=10),
        blob_every=dt.timedelta(hours=1), records_per_blob=(2, 6),
    )  # fmt: skip
    receiver.require_bearer("right-token")
    broken = make_collector(
        O365_CONTENT_TYPES="Audit.General", SINK_TYPE="http", SINK_URL=receiver.url,
        SINK_HTTP_BEARER_TOKEN="wrong-token", O365_MAX_DEQUEUE_COUNT="2",
    )  # fmt: skip
    assert run_once(broken) == 1
    blobs = len(simulator.blobs(TID, "Audit.General"))
    assert count(broken.poison_queue) == blobs
    assert receiver.records == []
    fixed = make_collector(
        O365_CONTENT_TYPES="Audit.General", SINK_TYPE="http", SINK_URL=receiver.url,
        SINK_HTTP_BEARER_TOKEN="right-token", O365_MAX_DEQUEUE_COUNT="2",
    )  # fmt: skip
    return fixed, blobs


def count(queue: object) -> int:
    return int(queue.get_queue_properties().approximate_message_count)  # type: ignore[attr-defined]


def served(simulator: Simulator) -> Counter[str]:
    return Counter(r["Id"] for b in simulator.blobs(TID) for r in b.records)


def test_replay_recovers_every_poisoned_blob_and_ships_each_exactly_once(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    collector, blobs = poisoned(simulator, receiver, make_collector)
    result = replay_poison(collector.poison_queue, collector.queue, collector.ledger)
    assert result.moved == Counter({(TID, "Audit.General"): blobs})
    assert result.total_done == result.unreadable == 0
    assert count(collector.poison_queue) == 0
    assert count(collector.queue) == blobs
    assert run_once(collector) == 0
    assert Counter(r["Id"] for r in receiver.records) == served(simulator)
    assert max(Counter(r["Id"] for r in receiver.records).values()) == 1

    again = replay_poison(collector.poison_queue, collector.queue, collector.ledger)
    assert again.total_moved == 0


def test_dry_run_reports_what_would_move_and_changes_nothing(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    collector, blobs = poisoned(simulator, receiver, make_collector)
    result = replay_poison(collector.poison_queue, collector.queue, collector.ledger, dry_run=True)
    assert result.total_moved == blobs
    assert count(collector.poison_queue) == blobs
    assert count(collector.queue) == 0
    # the messages are visible again at once: a real replay right after sees all of them
    assert len(collector.poison_queue.peek_messages(max_messages=32)) == blobs
    assert replay_poison(collector.poison_queue, collector.queue, collector.ledger).total_moved == blobs


def test_content_already_shipped_is_dropped_not_shipped_again(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    collector, blobs = poisoned(simulator, receiver, make_collector)
    copies = [m.content for m in collector.poison_queue.peek_messages(max_messages=32)]
    assert replay_poison(collector.poison_queue, collector.queue, collector.ledger).total_moved == blobs
    assert run_once(collector) == 0
    shipped = len(receiver.records)
    for body in copies[:2]:  # e.g. a redelivered copy that was poisoned after another copy shipped
        collector.poison_queue.send_message(body)
    result = replay_poison(collector.poison_queue, collector.queue, collector.ledger)
    assert result.already_done == Counter({(TID, "Audit.General"): 2})
    assert result.total_moved == 0
    assert count(collector.poison_queue) == 0
    assert count(collector.queue) == 0
    assert len(receiver.records) == shipped


def test_unreadable_messages_stay_in_the_poison_queue(make_collector: CollectorFactory) -> None:
    collector = make_collector()
    collector.poison_queue.send_message('{"v": 99, "something": "else"}')
    result = replay_poison(collector.poison_queue, collector.queue, collector.ledger)
    assert result.unreadable == 1
    assert result.total_moved == 0
    assert [m.content for m in collector.poison_queue.peek_messages()] == ['{"v": 99, "something": "else"}']


def test_a_message_that_is_not_base64_stays_as_it_is_and_its_neighbours_are_replayed(
    make_collector: CollectorFactory, azurite: Azurite
) -> None:
    collector = make_collector()
    # A client without base64 encoding stores the text as given: what a foreign writer may leave behind.
    raw = QueueClient.from_connection_string(azurite.connection_string, collector.settings.poison_queue)
    raw.send_message("not base64, not a task")
    now = dt.datetime.now(dt.UTC)
    task = FetchTask(TID, "Audit.General", "c1", "https://127.0.0.1/c1", now, now + dt.timedelta(days=7))
    collector.poison_queue.send_message(task.to_message())
    result = replay_poison(collector.poison_queue, collector.queue, collector.ledger)
    assert (result.unreadable, result.total_moved) == (1, 1)
    assert [m.content for m in raw.peek_messages(max_messages=32)] == ["not base64, not a task"]
    assert [FetchTask.from_message(m.content) for m in collector.queue.peek_messages(max_messages=32)] == [task]


def test_replay_with_no_poison_queue_moves_nothing(make_collector: CollectorFactory) -> None:
    collector = make_collector()
    collector.poison_queue.delete_queue()
    assert replay_poison(collector.poison_queue, collector.queue, collector.ledger).total_moved == 0


def test_the_command_reports_per_stream(
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: CollectorFactory,
    make_env: EnvFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _collector, blobs = poisoned(simulator, receiver, make_collector)
    for key, value in make_env(O365_CONTENT_TYPES="Audit.General").items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    assert cli.main(["replay-poison", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"would move {blobs} messages from ")
    assert out[1] == f"  {TID} Audit.General: {blobs}"
    assert cli.main(["replay-poison", "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["moved"] == blobs
    assert doc["moved_by_stream"] == [{"tenant_id": TID, "content_type": "Audit.General", "messages": blobs}]
