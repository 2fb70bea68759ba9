"""What a list message costs in storage round trips, and its leases through a listing, on the simulator and Azurite.

A tenant's checkpoints and leases are read by one query, its free leases taken by one transaction and given
back by another, whatever the number of its streams; renewals while it lists are written together; a stream
whose lease was taken over before the hand-over is not handed to the continuation.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from azure.core.pipeline.transport import RequestsTransport

from o365collector.checkpoints import StreamLease
from o365collector.listing_queue import ListMessage, list_message
from o365collector.runtime import Collector
from o365collector.simulator import Simulator, SimulatorConfig
from o365collector.simulator.cli import demo_environment
from tests.support import TENANT, now

pytestmark = pytest.mark.integration

TYPES = ("Audit.Exchange", "Audit.SharePoint", "Audit.General", "DLP.All")
CollectorFactory = Callable[..., Collector]


def fanout(types: Sequence[str] = TYPES, **overrides: str) -> dict[str, str]:
    return {
        "O365_LIST_FANOUT": "true",
        "O365_LIST_QUEUE": f"list-{uuid.uuid4().hex[:10]}",
        "O365_CONTENT_TYPES": ",".join(types),
        "O365_START_TIME": (now() - dt.timedelta(hours=6)).isoformat(),
    } | overrides


def generate(simulator: Simulator, types: Sequence[str] = TYPES, hours: float = 5) -> None:
    for content_type in types:
        simulator.generate(
            TENANT.tenant_id, content_type, now() - dt.timedelta(hours=hours), now() - dt.timedelta(minutes=10),
            blob_every=dt.timedelta(hours=1),
        )  # fmt: skip


@pytest.fixture
def table_requests(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, str]]:
    """(table or "$batch", operation) of every table request azure-core sends while the test runs."""
    counts: Counter[tuple[str, str]] = Counter()
    original = RequestsTransport.send

    def send(transport: RequestsTransport, request: Any, **kwargs: Any) -> Any:
        path = unquote(urlsplit(request.url).path).split("/")[-1]
        name, _, keys = path.partition("(")
        if request.method == "GET":
            counts[name, "read" if "RowKey=" in keys else "query"] += 1
        else:
            counts[name, request.method] += 1
        return original(transport, request, **kwargs)

    monkeypatch.setattr(RequestsTransport, "send", send)
    return counts


def test_a_list_message_reads_and_leases_a_tenant_s_streams_in_one_query_and_two_transactions(
    simulator: Simulator, make_collector: CollectorFactory, table_requests: Counter[tuple[str, str]]
) -> None:
    generate(simulator)
    collector = make_collector(**fanout())
    table = collector.settings.checkpoint_table
    for message_id in ("first", "second"):  # the first creates the checkpoints, the second moves them
        table_requests.clear()
        outcome = list_message(collector, ListMessage(TENANT.tenant_id).to_message(), message_id=message_id)
        assert sorted(s.content_type for s in outcome.result.streams) == sorted(TYPES)
        assert all(s.error is None for s in outcome.result.streams)
        assert table_requests[table, "query"] == 1, "the tenant's checkpoints and leases: one query"
        assert table_requests[table, "read"] == 0, "no read per stream"
        # Take the leases, give them back, and the status rows' own transaction.
        assert table_requests["$batch", "POST"] == 3
        moved = "PUT" if message_id == "second" else "POST"
        assert table_requests[table, moved] == len(TYPES), "one checkpoint write per stream's window"
    rows = collector.checkpoints.read_tenant(TENANT.tenant_id)
    assert {t: rows.leases[t]["Holder"] for t in TYPES} == dict.fromkeys(TYPES, "list:second")


class RecordingLeases:
    """The collector's leases, recording each write's rows as the table holds them right after it."""

    def __init__(self, collector: Collector) -> None:
        self._leases = collector.stream_leases
        self._collector = collector
        self.writes: list[list[tuple[str, dt.datetime]]] = []

    def write_all(self, changes: Sequence[tuple[StreamLease, str, dt.datetime]]) -> list[StreamLease | None]:
        written = self._leases.write_all(changes)
        rows = self._collector.checkpoints.read_tenant(TENANT.tenant_id).leases
        self.writes.append(
            [(rows[lease.content_type]["Holder"], rows[lease.content_type]["Until"]) for lease, *_ in changes]
        )
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._leases, name)


def test_leases_are_renewed_together_while_a_slow_listing_runs(
    make_collector: CollectorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each listing call takes longer than a third of the 10-second lease: the heartbeat renews during it.
    slow = Simulator(SimulatorConfig(seed=7, latency_seconds=3.6))
    slow.add_tenant(TENANT)
    slow.start()
    try:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", slow.ca_file)
        types = ("Audit.Exchange", "DLP.All")
        generate(slow, types)
        env = demo_environment(slow, TENANT) | fanout(types, O365_LIST_LEASE_SECONDS="10")
        collector = make_collector(**env)
        recording = RecordingLeases(collector)
        collector.stream_leases = recording  # type: ignore[assignment]
        acquired = now()
        outcome = list_message(collector, ListMessage(TENANT.tenant_id).to_message(), message_id="slow")
    finally:
        slow.stop()
    assert sorted(s.content_type for s in outcome.result.streams) == sorted(types)
    *renewals, release = recording.writes
    assert renewals, "renewed while listing"
    for rows in renewals:
        assert [holder for holder, _ in rows] == ["list:slow"] * 2
        assert all(until > acquired + dt.timedelta(seconds=10) for _, until in rows), "extended past the first lease"
    assert [holder for holder, _ in release] == ["list:slow"] * 2


def test_a_stream_taken_over_before_the_hand_over_is_left_out_of_the_continuation(
    simulator: Simulator, make_collector: CollectorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    types = ("Audit.Exchange", "DLP.All")
    generate(simulator, types, hours=70)
    collector = make_collector(
        **fanout(types, O365_LIST_WINDOWS_PER_MESSAGE="1", O365_START_TIME=(now() - dt.timedelta(hours=72)).isoformat())
    )
    leases = collector.stream_leases
    stalled = "DLP.All"

    class Rival:
        """Another worker takes DLP.All (as if this one had stalled past its lease) just before the hand-over."""

        def write_all(self, changes: Sequence[tuple[StreamLease, str, dt.datetime]]) -> list[StreamLease | None]:
            if any(holder.startswith("continuation:") for _, holder, _ in changes):
                later = now() + 10 * collector.settings.listing.lease
                taken = leases.acquire(TENANT.tenant_id, stalled, "list:rival", later, collector.settings.listing.lease)
                assert isinstance(taken, StreamLease)
            return leases.write_all(changes)

        def __getattr__(self, name: str) -> Any:
            return getattr(leases, name)

    collector.stream_leases = Rival()  # type: ignore[assignment]
    sent: list[str] = []
    monkeypatch.setattr(collector.list_queue, "send_message", lambda body, **_: sent.append(body))
    outcome = list_message(collector, ListMessage(TENANT.tenant_id).to_message(), message_id="first")
    assert sorted(outcome.continued) == sorted(types), "both had windows left"
    [continuation] = [ListMessage.from_message(body) for body in sent]
    assert continuation.content_types == ("Audit.Exchange",), "the rival's chain carries DLP.All on"
    row = collector.checkpoints.read_tenant(TENANT.tenant_id).leases
    assert (row["Audit.Exchange"]["Holder"], row[stalled]["Holder"]) == (continuation.handed, "list:rival")
