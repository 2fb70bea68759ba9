"""The two orders the delivery guarantee rests on, each broken at its own boundary, deterministically.

1. *Every blob of a window is on the queue before the checkpoint moves past the window.* The lister
   runs against the real Azurite queue, wrapped so that the process "dies" (a ``BaseException``
   nothing in the collector catches) instead of the (N+1)th put. The checkpoint row is then read back
   from Azurite: every blob created before its cursor must be on the queue. Putting the checkpoint
   before the puts fails this for every N below the total, the N = 0 case (before the first put) included.
2. *A blob is marked done only after every sink accepted it.* With ``SINK_TYPE=file,http`` the file
   sink accepts first; when the blob's POST reaches the loopback receiver, the receiver reads the
   blob's ledger row from Azurite (it must not be done: the http sink has not answered yet) and then
   refuses, or drops the connection. The row must still not be done afterwards, and the next
   delivery must ship the blob.

Everything is observed across the real boundaries: queue messages and table rows in Azurite,
requests at the receiver. Nothing here depends on how the lister or fetcher are built inside.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytest
from azure.data.tables import TableClient
from azure.storage.queue import QueueClient

from o365collector.azurite import Azurite
from o365collector.models import FetchTask
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from tests.loopback import LoopbackService, OwnedHandler
from tests.support import TENANT, now

TID = TENANT.tenant_id
CONTENT_TYPE = "Audit.Exchange"
CollectorFactory = Callable[..., Collector]


class Crash(BaseException):
    """Stands for the process being killed: not an Exception, so no handler in the collector sees it."""



class DyingQueue:
    """The real Azurite queue, except that the process dies instead of making put number ``puts + 1``."""

    def __init__(self, queue: QueueClient, puts: int) -> None:
        self._queue = queue
        self._left = puts

    def send_message(self, content: str, **kwargs: Any) -> object:
        if self._left == 0:
            raise Crash
        self._left -= 1
        return self._queue.send_message(content, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


def take_queued_ids(queue: QueueClient) -> Counter[str]:
    """Content ids of the messages now visible on the queue (received, so a second call sees only newer ones)."""
    ids: Counter[str] = Counter()
    for message in queue.receive_messages(messages_per_page=32, visibility_timeout=600):
        ids[FetchTask.from_message(message.content).content_id] += 1
    return ids


@pytest.mark.parametrize("puts", [0, 1, 7, 20], ids=lambda n: f"dies-after-put-{n}")
def test_the_checkpoint_never_passes_a_blob_that_is_not_on_the_queue(
    simulator: Simulator, make_collector: CollectorFactory, puts: int
) -> None:
    start = now() - dt.timedelta(days=1)
    blobs = simulator.generate(
        TID, CONTENT_TYPE, start, now() - dt.timedelta(minutes=10), blob_every=dt.timedelta(minutes=30)
    )
    assert len(blobs) > puts + 12, "the crash must land before the last window"
    collector = make_collector(
        O365_CONTENT_TYPES=CONTENT_TYPE,
        O365_START_TIME=start.isoformat(),
        O365_WINDOW_MINUTES="360",  # four windows of about twelve blobs
        O365_LIST_CONCURRENCY="1",
    )
    real_queue = collector.queue
    collector.queue = DyingQueue(real_queue, puts)  # type: ignore[assignment]
    with pytest.raises(Crash):
        collector.run_lister()
    collector.queue = real_queue

    cursor = collector.checkpoints.get(TID, CONTENT_TYPE).cursor
    queued = take_queued_ids(real_queue)
    assert sum(queued.values()) == puts
    passed = [b.content_id for b in blobs if cursor is not None and b.created < cursor]
    missing = [content_id for content_id in passed if content_id not in queued]
    assert not missing, f"the checkpoint ({cursor}) moved past {len(missing)} blob(s) that were never enqueued"
    if puts == 0:
        assert cursor is None, "nothing was enqueued, so nothing may be checkpointed"

    # The restarted lister picks up from that checkpoint: every blob ends up on the queue.
    collector.run_lister()
    queued += take_queued_ids(real_queue)
    assert set(queued) == {b.content_id for b in blobs}


# -- a blob is done only after every sink accepted it -----------------------------------------------

Answer = Literal["accept", "refuse", "drop"]


class LedgerProbe(LoopbackService):
    """An ingest endpoint that, when the victim blob's POST arrives, reads its ledger row and then answers."""

    kind = "receiver"

    def __init__(self, ledger: TableClient, victim: str, first_answer: Answer) -> None:
        self.ledger = ledger
        self.victim = victim
        self.first_answer = first_answer
        self.states_seen: list[str | None] = []
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        super().__init__(_ProbeHandler, tls=False, timeout=10.0, name="ledger-probe")

    @property
    def url(self) -> str:
        return f"{self.base_url}/ingest"

    def decide(self, content_id: str, records: list[dict[str, Any]]) -> Answer:
        answer: Answer = "accept"
        if content_id == self.victim:
            rows = list(self.ledger.query_entities("ContentId eq @id", parameters={"id": content_id}))
            with self._lock:
                self.states_seen.append(str(rows[0]["State"]) if rows else None)
                if len(self.states_seen) == 1:
                    answer = self.first_answer
        if answer == "accept":
            with self._lock:
                self.records.extend(records)
        return answer


class _ProbeHandler(OwnedHandler):
    def do_POST(self) -> None:
        probe: LedgerProbe = self.owner  # type: ignore[assignment]
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = gzip.decompress(raw) if self.headers.get("Content-Encoding", "").lower() == "gzip" else raw
        records = [json.loads(line) for line in body.splitlines() if line.strip()]
        answer = probe.decide(self.headers.get("X-O365-Content-Id", ""), records)
        if answer == "drop":
            self.close_connection = True
            return  # no status line: the client sees the connection close before any answer
        status, text = (200, b"{}") if answer == "accept" else (503, b"refused")
        self.send_response(status)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)


@pytest.fixture
def three_blobs(simulator: Simulator) -> list[Any]:
    return simulator.generate(
        TID, CONTENT_TYPE, now() - dt.timedelta(hours=3), now() - dt.timedelta(minutes=30),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip


@pytest.fixture
def probe_factory(
    make_collector: CollectorFactory, azurite: Azurite, names: dict[str, str]
) -> Iterator[Callable[[str, Answer], tuple[Collector, LedgerProbe]]]:
    probes: list[LedgerProbe] = []

    def factory(victim: str, first_answer: Answer) -> tuple[Collector, LedgerProbe]:
        ledger = TableClient.from_connection_string(azurite.connection_string, table_name=names["O365_LEDGER_TABLE"])
        probe = LedgerProbe(ledger, victim, first_answer).__enter__()
        probes.append(probe)
        collector = make_collector(
            O365_CONTENT_TYPES=CONTENT_TYPE,
            SINK_TYPE="file,http",  # the file sink accepts every blob before the http sink is asked
            SINK_URL=probe.url,
            SINK_HTTP_MAX_ATTEMPTS="1",
            SINK_HTTP_GZIP="false",
        )
        return collector, probe

    yield factory
    for probe in probes:
        probe.close()


@pytest.mark.parametrize("first_answer", ["refuse", "drop"])
def test_a_blob_is_not_done_until_every_sink_accepted_it_and_the_next_delivery_ships_it(
    simulator: Simulator,
    three_blobs: list[Any],
    probe_factory: Callable[[str, Answer], tuple[Collector, LedgerProbe]],
    first_answer: Answer,
) -> None:
    victim = three_blobs[1]
    collector, probe = probe_factory(victim.content_id, first_answer)
    assert run_once(collector) == 0

    assert "done" not in probe.states_seen, (
        f"the ledger said done while the http sink had not accepted the blob: {probe.states_seen}"
    )
    assert len(probe.states_seen) == 2, "the refused delivery and the redelivery that shipped it"
    assert probe.states_seen[0] == "claimed", "the first POST found the blob claimed (the file sink had it already)"
    shipped = Counter(r["Id"] for r in probe.records)
    assert shipped == Counter(r["Id"] for b in three_blobs for r in b.records), "each record accepted exactly once"
    row = collector.ledger.get(FetchTask(TID, CONTENT_TYPE, victim.content_id, victim.content_uri, victim.created,
                                         victim.expiration))  # fmt: skip
    assert row is not None
    assert (row["State"], row["Attempts"]) == ("done", 2)
