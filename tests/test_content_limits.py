"""Blobs the fetcher cannot ship as served, across Azurite and the simulator.

A blob that is not a JSON array of finite JSON records (NaN, Infinity, 1e999, scalars) or that
decompresses beyond ``O365_MAX_CONTENT_MB`` is refused: its message goes to the poison queue at once
with a reason naming the blob, its claim is given back, and every other blob ships. A content GET
answered 404 without an AF code is retried, not recorded as lost.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import pytest

from o365collector.config import HttpPolicy, Settings
from o365collector.errors import MalformedContentError
from o365collector.fetcher import Outcome
from o365collector.management_api import ManagementApiClient
from o365collector.models import FetchTask
from o365collector.queue_runner import POISONED_MESSAGE
from o365collector.runtime import Collector
from o365collector.simulator import Fault, Simulator
from tests.receivers import HttpReceiver
from tests.support import TENANT, EnvFactory, host_queue_runner, now

TID = TENANT.tenant_id
CollectorFactory = Callable[..., Collector]
HUGE = b'"Big":123456789012345678901234567890'  # sends the blob to the exact-integer (stdlib) parser





def record(name: str, extra: bytes = b"") -> bytes:
    return b'{"CreationTime":"2026-03-01T11:59:58","Id":"' + name.encode() + b'"' + extra + b"}"


def task_of(blob: object) -> FetchTask:
    return FetchTask(TID, blob.content_type, blob.content_id, blob.content_uri, blob.created, blob.expiration)  # type: ignore[attr-defined]


def test_malformed_and_oversized_blobs_are_refused_with_a_reason_and_the_rest_ship(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    simulator.options.gzip_content = True  # the normal blobs ship compressed, the bomb expands
    simulator.generate(
        TID, "Audit.General", now() - dt.timedelta(hours=4), now() - dt.timedelta(hours=1),
        blob_every=dt.timedelta(hours=1), records_per_blob=(2, 6),
    )  # fmt: skip
    good = simulator.blobs(TID)
    created = now() - dt.timedelta(hours=2)
    bad_bodies = {
        "NaN is not a JSON number": b"[" + record("nan", b"," + HUGE + b',"V":NaN') + b"]",
        "beyond the range of a double": b"[" + record("inf", b"," + HUGE + b',"V":1e999') + b"]",
        "element 0 is a number, not an object": b"[1,2,3]",
        # 16 MiB of one record, a few KiB once gzipped: well beyond the 1 MB cap below.
        "larger than O365_MAX_CONTENT_MB (1 MB)": b"[" + record("bomb", b',"Pad":"' + b"A" * (16 << 20) + b'"') + b"]",
    }
    bad = {
        why: simulator.add_blob(TID, "Audit.General", created + dt.timedelta(seconds=i), body)
        for i, (why, body) in enumerate(bad_bodies.items())
    }
    collector = make_collector(
        SINK_TYPE="http", SINK_URL=receiver.url, O365_MAX_CONTENT_MB="1", O365_CONTENT_TYPES="Audit.General"
    )

    with caplog.at_level(logging.INFO):
        collector.run_lister()
        result = host_queue_runner(collector).drain()

    assert result.count(Outcome.REFUSED) == len(bad)
    assert result.failures == 0, "a blob that can never ship is not fetched again and again"
    assert result.count(Outcome.SHIPPED) == len(good)
    assert {r["Id"] for r in receiver.records} == {r["Id"] for b in good for r in b.records}
    poison = [m.content for m in collector.poison_queue.peek_messages(max_messages=32)]
    assert sorted(FetchTask.from_message(m).content_id for m in poison) == sorted(b.content_id for b in bad.values())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    for why, blob in bad.items():
        (line,) = [e for e in errors if blob.content_id in e]
        assert line.startswith(POISONED_MESSAGE)
        assert why in line
        assert f"content blob {blob.content_id}" in line
        row = collector.ledger.get(task_of(blob))
        assert row is not None
        assert row["State"] == "failed", "the claim is given back, never marked done"
        assert why in row["Error"]


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_the_size_cap_applies_to_the_decompressed_body(
    gzip: bool, simulator: Simulator, make_env: EnvFactory
) -> None:
    simulator.options.gzip_content = gzip
    created = now() - dt.timedelta(hours=2)
    pad = b"x" * (1 << 20)  # one record of just over 1 MiB
    small_body = b"[" + record("small", b',"Pad":"' + pad[:900_000] + b'"') + b"]"
    small = simulator.add_blob(TID, "Audit.General", created, small_body)
    big = simulator.add_blob(TID, "Audit.General", created, b"[" + record("big", b',"Pad":"' + pad + b'"') + b"]")
    tenant = Settings.from_env(make_env()).tenants[0]
    api = ManagementApiClient(tenant, policy=HttpPolicy(backoff_seconds=0.01, max_content_mb=1))

    assert [r["Id"] for r in api.fetch_content(small.content_uri)] == ["small"]
    with pytest.raises(MalformedContentError, match=r"O365_MAX_CONTENT_MB \(1 MB\)") as refused:
        api.fetch_content(big.content_uri)
    assert f"content blob {big.content_id}" in str(refused.value)
    assert api.stats.retries == 0, "a blob over the cap is not fetched again"


def test_a_bare_404_on_a_content_get_is_redelivered_and_the_blob_ships(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory
) -> None:
    records = [{"CreationTime": "2026-03-01T11:59:58", "Id": f"r{i}", "Operation": "Send"} for i in range(3)]
    blob = simulator.add_blob(TID, "Audit.Exchange", now() - dt.timedelta(hours=2), records)
    # Two attempts per delivery: the first delivery sees only 404s, the second one more, then the blob.
    simulator.faults.add(Fault(kind="bare_404", route="fetch", count=3))
    collector = make_collector(
        SINK_TYPE="http", SINK_URL=receiver.url, O365_RETRY_MAX_ATTEMPTS="2", O365_CONTENT_TYPES="Audit.Exchange"
    )

    collector.run_lister()
    result = host_queue_runner(collector).drain()

    assert result.count(Outcome.LOST) == 0
    assert result.failures == 1
    assert result.count(Outcome.SHIPPED) == 1
    assert [r["Id"] for r in receiver.records] == [r["Id"] for r in blob.records]
    row = collector.ledger.get(task_of(blob))
    assert row is not None
    assert row["State"] == "done"
    assert collector.poison_queue.get_queue_properties().approximate_message_count == 0
