"""Settings that change behaviour, proven by the behaviour across real boundaries, on both sides of each threshold.

- ``O365_PUBLISHER_ID``: the ``PublisherIdentifier`` value the simulator receives on every feed call (the tenant
  id when unset);
- ``O365_LIST_BUDGET_SECONDS``: a run stops starting windows once its budget is spent (an injected clock that
  advances with each listing call the simulator answers);
- ``O365_MAX_REQUESTS_PER_MINUTE``: the pace each tenant's calls reach the simulator at, per tenant;
- ``O365_MAX_DEQUEUE_COUNT``: how many deliveries a blob that always fails gets (fetches the simulator served,
  posts the receiver refused) before it sits in the poison queue.

The health thresholds (``O365_HEALTH_MAX_POISON``, ``O365_HEALTH_LOST_DATA_HOURS``) are in tests/test_health.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import orjson
import pytest

from o365collector.lister import Lister
from o365collector.models import FetchTask
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Simulator, TenantSpec
from tests.receivers import HttpReceiver
from tests.support import TENANT, now

TID = TENANT.tenant_id
CollectorFactory = Callable[..., Collector]
FEED_ROUTES = {"list", "fetch", "subscriptions", "resources"}




# -- PublisherIdentifier --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        (None, TID),  # unset: the tenant's own id, so the quota is the tenant's
        ("AAAAAAAA-0000-4000-8000-000000000001", "aaaaaaaa-0000-4000-8000-000000000001"),
    ],
)
def test_every_feed_call_carries_the_configured_publisher_identifier_value(
    simulator: Simulator, make_collector: CollectorFactory, configured: str | None, expected: str
) -> None:
    simulator.generate(
        TID, "Audit.Exchange", now() - dt.timedelta(hours=3), now() - dt.timedelta(minutes=10),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    overrides = {"O365_CONTENT_TYPES": "Audit.Exchange"}
    if configured is not None:
        overrides["O365_PUBLISHER_ID"] = configured
    assert run_once(make_collector(**overrides)) == 0
    sent = [(r.route, r.publisher_id) for r in simulator.stats.recent if r.route in FEED_ROUTES]
    assert {route for route, _ in sent} >= {"list", "fetch"}
    # GUIDs compare case-insensitively (the service treats the value so).
    assert {(route, (value or "").lower()) for route, value in sent} == {(route, expected) for route, _ in sent}


# -- O365_LIST_BUDGET_SECONDS -------------------------------------------------------------------------------

LIST_CALL_SECONDS = 25.0  # what each listing call "costs" on the injected clock


@pytest.mark.parametrize(("budget", "windows"), [(75, 3), (76, 4)])
def test_a_run_stops_starting_windows_once_the_list_budget_is_spent(
    simulator: Simulator, make_collector: CollectorFactory, budget: int, windows: int
) -> None:
    """Windows start at 0, 25, 50, 75 ... s (one listing call each): a 75 s budget lists 3, 76 s lists 4."""
    simulator.generate(
        TID, "Audit.Exchange", now() - dt.timedelta(hours=8), now() - dt.timedelta(minutes=10),
        blob_every=dt.timedelta(hours=1),
    )  # fmt: skip
    start = now() - dt.timedelta(hours=8, minutes=30)
    collector = make_collector(
        O365_CONTENT_TYPES="Audit.Exchange",
        O365_WINDOW_MINUTES="60",
        O365_START_TIME=start.isoformat(),
        O365_LIST_BUDGET_SECONDS=str(budget),
    )
    lister = Lister(
        tenants=collector.tenants(),
        policy=collector.settings.policy,
        client_for=collector.client,
        checkpoints=collector.checkpoints,
        queue=collector.queue,
        clock=collector.clock,
        monotonic=lambda: LIST_CALL_SECONDS * simulator.stats.requests["list"],
    )
    result = lister.run()

    assert simulator.stats.requests["list"] == windows
    (stream,) = result.streams
    assert stream.ok
    assert stream.windows == windows
    assert stream.windows_left > 0
    # Across the boundary: the checkpoint stands at the end of the last window listed, and only the
    # blobs created before it are on the queue.
    cursor = collector.checkpoints.get(TID, "Audit.Exchange").cursor
    assert cursor is not None
    assert cursor - start == dt.timedelta(hours=windows)
    queued = [FetchTask.from_message(m.content) for m in collector.queue.peek_messages(max_messages=32)]
    expected = [b.content_id for b in simulator.blobs(TID, "Audit.Exchange") if b.created < cursor]
    assert sorted(t.content_id for t in queued) == sorted(expected)
    assert expected, "the listed windows held blobs"


# -- O365_MAX_REQUESTS_PER_MINUTE ---------------------------------------------------------------------------

OTHER = TenantSpec(
    tenant_id="e5000000-0000-4000-8000-000000000005",
    client_id="f6000000-0000-4000-8000-000000000006",
    client_secret="other-secret",
    subscribed=("Audit.Exchange", "Audit.General"),
)
PER_MINUTE = 600  # 10 per second per tenant, in bursts of one second's worth (10)
RATE, BURST = PER_MINUTE / 60, PER_MINUTE / 60
SLACK = 2  # arrival times jitter by a few ms between the limiter and the simulator


def test_each_tenant_calls_the_api_no_faster_than_the_configured_pace_and_independently(
    simulator: Simulator, make_collector: CollectorFactory
) -> None:
    """Two tenants, two streams each, one-minute windows over 25 minutes: about 40 cheap listing calls per
    tenant, which the machine would make in well under a second unpaced; paced, they take about 3 s."""
    simulator.add_tenant(OTHER)
    tenants = [
        {"tenantId": spec.tenant_id, "clientId": spec.client_id, "credential": f"setting:O365_SECRET_{i}",
         "contentTypes": ["Audit.Exchange", "Audit.General"]}
        for i, spec in enumerate((TENANT, OTHER))
    ]  # fmt: skip
    collector = make_collector(
        O365_TENANTS=orjson.dumps(tenants).decode(),
        O365_SECRET_0=TENANT.client_secret,
        O365_SECRET_1=OTHER.client_secret,
        O365_MAX_REQUESTS_PER_MINUTE=str(PER_MINUTE),
        O365_WINDOW_MINUTES="1",
        O365_START_TIME=(now() - dt.timedelta(minutes=25)).isoformat(),
    )
    assert run_once(collector) == 0

    calls = {
        tenant_id: sorted(r.at for r in simulator.stats.recent if r.route in FEED_ROUTES and r.tenant_id == tenant_id)
        for tenant_id in (TID, OTHER.tenant_id)
    }
    for tenant_id, times in calls.items():
        assert len(times) >= 30, (tenant_id, len(times))
        # A token bucket: any n consecutive calls of a tenant span at least (n - burst) / rate seconds.
        worst = max(
            (j - i + 1) - (BURST + RATE * (times[j] - times[i]))
            for i in range(len(times))
            for j in range(i, len(times))
        )
        assert worst <= SLACK, f"{tenant_id}: {worst:.1f} calls more than the pace allows"
    # One tenant's pace does not slow the other's: together they went faster than one tenant's pace allows
    # (a limiter shared by the tenants would need twice the time).
    together = sorted(calls[TID] + calls[OTHER.tenant_id])
    assert len(together) > BURST + RATE * (together[-1] - together[0]) + SLACK


# -- O365_MAX_DEQUEUE_COUNT ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_deliveries", [1, 3])
def test_a_blob_that_always_fails_is_delivered_max_dequeue_count_times_then_poisoned(
    simulator: Simulator, make_collector: CollectorFactory, receiver: HttpReceiver, max_deliveries: int
) -> None:
    blob = simulator.add_blob(
        TID, "Audit.General", now() - dt.timedelta(hours=1), [{"Id": "r-1", "Operation": "Op", "RecordType": 1}]
    )
    receiver.require_bearer("right-token")  # every post is refused with 401
    collector = make_collector(
        O365_CONTENT_TYPES="Audit.General", SINK_TYPE="http", SINK_URL=receiver.url,
        SINK_HTTP_BEARER_TOKEN="wrong-token", O365_MAX_DEQUEUE_COUNT=str(max_deliveries),
    )  # fmt: skip
    assert run_once(collector) == 1

    assert simulator.stats.fetches[blob.content_id] == max_deliveries
    posts = [r for r in receiver.requests if r.headers.get("x-o365-content-id") == blob.content_id]
    assert [r.status for r in posts] == [401] * max_deliveries
    poisoned = [FetchTask.from_message(m.content).content_id for m in collector.poison_queue.peek_messages()]
    assert poisoned == [blob.content_id]
    assert collector.queue.get_queue_properties().approximate_message_count == 0
