"""Two collectors on one storage account at once: each record ships exactly once, checkpoints never go back.

The first test runs two ``python -m o365collector run --once`` processes side by side over the same
backfill: both list every stream, both drain the one queue, and the ledger's claims decide who ships.
The second makes the listing race deterministic: collector A, after its first put, lets collector B
list the same stream to the end, so that A's checkpoint write meets B's newer row (a
``CheckpointConflictError`` inside): A must leave the stream to B without failing, and the checkpoint
row, read from Azurite after every one of A's puts, must never move back.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from azure.storage.queue import QueueClient

from o365collector.models import CONTENT_TYPES
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory, now

TID = TENANT.tenant_id
REPO = Path(__file__).resolve().parents[1]
CollectorFactory = Callable[..., Collector]




def served(sim: Simulator) -> Counter[str]:
    return Counter(r["Id"] for b in sim.blobs(TID) for r in b.records)


def shipped(receiver: HttpReceiver) -> Counter[str]:
    return Counter(r["Id"] for r in receiver.records)


def test_two_collectors_at_once_ship_every_record_exactly_once_and_fetch_each_blob_once(
    simulator: Simulator, receiver: HttpReceiver, make_env: EnvFactory, tmp_path: Path
) -> None:
    for content_type in CONTENT_TYPES:
        simulator.generate(
            TID, content_type, now() - dt.timedelta(hours=20), now() - dt.timedelta(minutes=10),
            blob_every=dt.timedelta(minutes=30), records_per_blob=(1, 8),
        )  # fmt: skip
    env = make_env(
        SINK_TYPE="http",
        SINK_URL=receiver.url,
        O365_START_TIME=(now() - dt.timedelta(hours=21)).isoformat(),
        O365_WINDOW_MINUTES="240",  # several windows per stream: the two listers interleave their checkpoints
    )
    child_env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
    child_env |= env | {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    logs = [tmp_path / f"collector-{n}.log" for n in (1, 2)]
    processes = []
    for log in logs:
        with log.open("wb") as out:
            command = [sys.executable, "-m", "o365collector", "--log-level", "WARNING", "run", "--once"]
            processes.append(subprocess.Popen(command, cwd=REPO, env=child_env, stdout=out, stderr=subprocess.STDOUT))
    try:
        codes = [process.wait(timeout=180) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)

    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    assert shipped(receiver) == served(simulator), "every record arrived exactly once"
    assert set(simulator.stats.fetches) == {b.content_id for b in simulator.blobs(TID)}
    assert set(simulator.stats.fetches.values()) == {1}, "each blob was fetched by one collector only"
    poison = QueueClient.from_connection_string(env["AzureWebJobsStorage"], f"{env['O365_CONTENT_QUEUE']}-poison")
    assert poison.get_queue_properties().approximate_message_count == 0


class RaceQueue:
    """The real Azurite queue; after A's first put, collector B lists the stream to its end; after every
    put, the checkpoint row is read back from Azurite."""

    def __init__(self, queue: Any, rival: Callable[[], None], cursor: Callable[[], dt.datetime | None]) -> None:
        self._queue = queue
        self._rival = rival
        self._cursor = cursor
        self.cursors: list[dt.datetime | None] = []
        self.puts = 0

    def send_message(self, content: str, **kwargs: Any) -> object:
        sent = self._queue.send_message(content, **kwargs)
        self.puts += 1
        if self.puts == 1:
            self._rival()
        self.cursors.append(self._cursor())
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


def test_a_lister_that_loses_the_checkpoint_race_leaves_the_stream_and_nothing_moves_back_or_is_lost(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    content_type = "Audit.Exchange"
    simulator.generate(
        TID, content_type, now() - dt.timedelta(days=1), now() - dt.timedelta(minutes=10),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    settings = {
        "SINK_TYPE": "http",
        "SINK_URL": receiver.url,
        "O365_CONTENT_TYPES": content_type,
        "O365_START_TIME": (now() - dt.timedelta(days=1, hours=1)).isoformat(),
        "O365_LIST_CONCURRENCY": "1",
    }
    # An earlier run, twelve hours ago, left a checkpoint: A and B both start from that row.
    earlier = now() - dt.timedelta(hours=12)
    make_collector(clock=lambda: earlier, **settings).run_lister()
    rival = make_collector(**settings)
    collector = make_collector(**settings)
    rival_cursor: dict[str, dt.datetime | None] = {}

    def rival_lists_everything() -> None:
        assert rival.run_lister().ok
        rival_cursor["after"] = rival.checkpoints.get(TID, content_type).cursor

    race = RaceQueue(
        collector.queue, rival_lists_everything, lambda: collector.checkpoints.get(TID, content_type).cursor
    )
    collector.queue = race  # type: ignore[assignment]

    assert run_once(collector) == 0, "losing the race to another run is not a failure"

    assert race.puts >= 1
    assert "after" in rival_cursor, "the race happened"
    final = collector.checkpoints.get(TID, content_type).cursor
    assert final is not None
    assert final == rival_cursor["after"], "the winner's checkpoint stands"
    seen = [c for c in race.cursors if c is not None]
    assert seen == sorted(seen), f"the checkpoint moved back: {seen}"
    assert min(seen) >= rival_cursor["after"], "the loser never wrote its older cursor over the winner's"
    assert shipped(receiver) == served(simulator), "every record arrived exactly once"
