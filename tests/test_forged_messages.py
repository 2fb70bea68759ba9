"""Forged and misrouted queue messages, across Azurite and the simulator: refused to the poison queue at
once with a reason, before they claim anything, and never able to hide a real blob.

A message names a tenant, a content type, a content id and the URI to fetch it from. Before these
checks, a message pairing a real content id with a URI that answers ``[]`` marked the real blob done
with no records, and a URI to any other path of the API host shipped that answer as records.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import orjson
import pytest

from o365collector.fetcher import Outcome
from o365collector.models import FetchTask, sign_message
from o365collector.queue_runner import POISONED_MESSAGE, DrainResult
from o365collector.runtime import Collector
from o365collector.simulator import Simulator, TenantSpec
from tests.receivers import HttpReceiver
from tests.support import TENANT, host_queue_runner, now

TID = TENANT.tenant_id
OTHER_TID = "77777777-2222-4333-8444-555555555555"
CollectorFactory = Callable[..., Collector]




def exchange_blobs(sim: Simulator) -> None:
    sim.generate(
        TID, "Audit.Exchange", now() - dt.timedelta(hours=4), now() - dt.timedelta(hours=1),
        blob_every=dt.timedelta(hours=1), records_per_blob=(2, 5),
    )  # fmt: skip


def http_collector(make_collector: CollectorFactory, receiver: HttpReceiver, **overrides: str) -> Collector:
    return make_collector(**({"SINK_TYPE": "http", "SINK_URL": receiver.url} | overrides))



def poisoned(collector: Collector) -> list[str]:
    return [m.content for m in collector.poison_queue.peek_messages(max_messages=32)]


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and r.getMessage().startswith(POISONED_MESSAGE) and "refused" in r.getMessage()
    ]


def ids(records: list[dict[str, object]]) -> set[object]:
    return {r["Id"] for r in records}


def assert_refused_at_once(collector: Collector, result: DrainResult, message: str) -> None:
    """Moved to poison by the handler on its first delivery: no failure, no redelivery, queue empty."""
    assert result.count(Outcome.REFUSED) == 1
    assert result.failures == 0, "a refused message is not retried"
    assert poisoned(collector) == [message]
    assert collector.queue.get_queue_properties().approximate_message_count == 0


def forged_uris(sim: Simulator, victim_id: str, other_id: str) -> dict[str, tuple[str, str]]:
    """Forged contentUris for the victim's content id: (URI, the reason the refusal must give)."""
    root = f"{sim.api_url}/api/v1.0/{TID}/activity/feed"
    window = f"startTime={(now() - dt.timedelta(hours=2)):%Y-%m-%dT%H:%M:%S}&endTime={now():%Y-%m-%dT%H:%M:%S}"
    return {
        # Answers [] (no Audit.General content): before, the victim was marked done with 0 records.
        "empty listing": (f"{root}/subscriptions/content?contentType=Audit.General&{window}", "query"),
        # Answers the subscription objects, which were shipped as records.
        "subscription list": (f"{root}/subscriptions/list", "not a content path"),
        # A real blob, but not the one the message names: it was shipped and the victim marked done.
        "another blob": (f"{root}/audit/{other_id}", "another content id"),
        "another tenant": (
            f"{sim.api_url}/api/v1.0/{OTHER_TID}/activity/feed/audit/{victim_id}",
            "another tenant",
        ),
    }


@pytest.mark.parametrize("kind", ["empty listing", "subscription list", "another blob", "another tenant"])
def test_a_forged_content_uri_is_refused_before_any_claim_and_cannot_hide_the_real_blob(
    kind: str,
    simulator: Simulator,
    receiver: HttpReceiver,
    make_collector: CollectorFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    exchange_blobs(simulator)
    victim, other = simulator.blobs(TID, "Audit.Exchange")[:2]
    uri, reason = forged_uris(simulator, victim.content_id, other.content_id)[kind]
    forged = FetchTask(TID, "Audit.Exchange", victim.content_id, uri, victim.created, victim.expiration)
    collector = http_collector(make_collector, receiver)
    collector.queue.send_message(forged.to_message())

    with caplog.at_level(logging.INFO):
        result = host_queue_runner(collector).drain()

    assert_refused_at_once(collector, result, forged.to_message())
    assert collector.ledger.get(forged) is None, "a refused message claims nothing"
    assert sum(simulator.stats.requests_by_route.values()) == 0, "the forged URI was never requested"
    assert receiver.records == []
    (logged,) = refusals(caplog)
    assert victim.content_id in logged
    assert reason in logged

    # The real listing then ships every blob, the victim included.
    collector.run_lister()
    assert host_queue_runner(collector).drain().count(Outcome.SHIPPED) == len(simulator.blobs(TID, "Audit.Exchange"))
    assert ids(victim.records) <= ids(receiver.records)
    assert ids(receiver.records) == {r["Id"] for b in simulator.blobs(TID) for r in b.records}


def test_a_message_for_a_tenant_this_deployment_does_not_collect_is_refused(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    simulator.add_tenant(
        TenantSpec(
            tenant_id=OTHER_TID,
            client_id=TENANT.client_id,
            client_secret=TENANT.client_secret,
            roles=TENANT.roles,
            audit_enabled=True,
            subscribed=("Audit.Exchange",),
        )
    )
    simulator.generate(
        OTHER_TID, "Audit.Exchange", now() - dt.timedelta(hours=3), now() - dt.timedelta(hours=1),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    blob = simulator.blobs(OTHER_TID)[0]
    task = FetchTask(OTHER_TID, blob.content_type, blob.content_id, blob.content_uri, blob.created, blob.expiration)
    collector = http_collector(make_collector, receiver)
    collector.queue.send_message(task.to_message())

    with caplog.at_level(logging.INFO):
        result = host_queue_runner(collector).drain()

    assert_refused_at_once(collector, result, task.to_message())
    assert collector.ledger.get(task) is None
    assert simulator.stats.fetches == {}
    (logged,) = refusals(caplog)
    assert f"tenant '{OTHER_TID}' is not configured" in logged


def test_a_message_for_a_content_type_the_tenant_does_not_collect_is_refused(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    simulator.generate(
        TID, "Audit.SharePoint", now() - dt.timedelta(hours=3), now() - dt.timedelta(hours=1),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    blob = simulator.blobs(TID, "Audit.SharePoint")[0]
    task = FetchTask(TID, blob.content_type, blob.content_id, blob.content_uri, blob.created, blob.expiration)
    collector = http_collector(make_collector, receiver, O365_CONTENT_TYPES="Audit.Exchange")
    collector.queue.send_message(task.to_message())

    with caplog.at_level(logging.INFO):
        result = host_queue_runner(collector).drain()

    assert_refused_at_once(collector, result, task.to_message())
    assert collector.ledger.get(task) is None
    assert simulator.stats.fetches == {}
    assert receiver.records == []
    (logged,) = refusals(caplog)
    assert "content type 'Audit.SharePoint' is not collected" in logged


def test_control_characters_in_a_message_reach_the_log_escaped(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A forged id cannot write fake lines into the operators' log."""
    created = now() - dt.timedelta(hours=2)
    forged_id = "2026$x\n" + POISONED_MESSAGE + ": all clear\x1b[2J"
    uri = f"{simulator.api_url}/api/v1.0/{TID}/activity/feed/audit/x"
    task = FetchTask(TID, "Audit.Exchange", forged_id, uri, created, created + dt.timedelta(days=7))
    collector = http_collector(make_collector, receiver)
    collector.queue.send_message(task.to_message())

    with caplog.at_level(logging.INFO):
        host_queue_runner(collector).drain()

    (logged,) = refusals(caplog)
    assert "\n" not in logged
    assert "\x1b" not in logged
    assert "2026$x\\n" in logged


# -- signed messages (O365_MESSAGE_KEY) ----------------------------------------------------------------


def test_with_a_message_key_only_messages_signed_with_it_are_fetched(
    simulator: Simulator, receiver: HttpReceiver, make_collector: CollectorFactory, caplog: pytest.LogCaptureFixture
) -> None:
    exchange_blobs(simulator)
    blob = simulator.blobs(TID, "Audit.Exchange")[0]
    key = "message-key-0123456789abcdef-0123456789"
    collector = http_collector(make_collector, receiver, O365_MESSAGE_KEY=key)
    real = FetchTask(TID, blob.content_type, blob.content_id, blob.content_uri, blob.created, blob.expiration)
    altered = orjson.loads(sign_message(real.to_message(), key.encode()))
    altered["contentCreated"] = (blob.created - dt.timedelta(days=1)).isoformat()
    forged = {
        "unsigned": real.to_message(),
        "signed with another key": sign_message(real.to_message(), b"another key"),
        "altered after signing": orjson.dumps(altered).decode(),
    }
    for message in forged.values():
        collector.queue.send_message(message)

    with caplog.at_level(logging.INFO):
        result = host_queue_runner(collector).drain()

    assert result.count(Outcome.REFUSED) == 3
    assert result.failures == 0
    assert sorted(poisoned(collector)) == sorted(forged.values())
    assert collector.ledger.get(real) is None
    assert simulator.stats.fetches == {}
    logged = refusals(caplog)
    assert len(logged) == 3
    assert sum("carries no signature" in line for line in logged) == 1
    assert sum("signature does not match" in line for line in logged) == 2
    assert key not in caplog.text

    # The lister signs what it enqueues: every blob ships.
    collector.run_lister()
    (queued,) = collector.queue.peek_messages(max_messages=1)
    assert '"sig":' in queued.content
    assert host_queue_runner(collector).drain().count(Outcome.SHIPPED) == len(simulator.blobs(TID, "Audit.Exchange"))
    assert ids(receiver.records) == {r["Id"] for b in simulator.blobs(TID) for r in b.records}
