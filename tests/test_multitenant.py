"""Several tenants in one deployment, on Azurite + the simulator: healthy tenants ship exactly once,
a tenant with a bad secret is reported and skipped, a hard-throttled tenant catches up, and a small
tenant's fresh content is enqueued before a big tenant's backfill gets its second window."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from azure.storage.queue import QueueClient

from o365collector.models import FetchTask
from o365collector.running import run_once
from o365collector.runtime import Collector
from o365collector.simulator import Fault, Simulator, TenantSpec
from tests.receivers import HttpReceiver
from tests.support import TENANT

HEALTHY = ["a1000000-0000-4000-8000-000000000001", "a2000000-0000-4000-8000-000000000002"]
BAD_SECRET = "b3000000-0000-4000-8000-000000000003"
THROTTLED = "c4000000-0000-4000-8000-000000000004"
TYPES = ("Audit.Exchange", "Audit.SharePoint", "Audit.General")



@pytest.fixture
def fleet(simulator: Simulator) -> Simulator:
    now = dt.datetime.now(dt.UTC)
    for index, tenant_id in enumerate([*HEALTHY, BAD_SECRET, THROTTLED]):
        simulator.add_tenant(
            TenantSpec(
                tenant_id=tenant_id,
                client_id=f"d{index}000000-0000-4000-8000-00000000000{index}",
                client_secret=f"secret-of-{index}",
                subscribed=TYPES,
            )
        )
        for content_type in TYPES:
            simulator.generate(
                tenant_id, content_type, now - dt.timedelta(days=1), now - dt.timedelta(minutes=10),
                blob_every=dt.timedelta(hours=2),
            )  # fmt: skip
    simulator.faults.add(Fault(kind="throttle", route="any", rate=0.5, tenant_id=THROTTLED))
    return simulator


def fleet_settings() -> dict[str, str]:
    entries = []
    secrets = {}
    for index, tenant_id in enumerate([*HEALTHY, BAD_SECRET, THROTTLED]):
        secret = "not-the-secret" if tenant_id == BAD_SECRET else f"secret-of-{index}"
        secrets[f"O365_SECRET_{index}"] = secret
        entries.append(
            {
                "tenantId": tenant_id,
                "clientId": f"d{index}000000-0000-4000-8000-00000000000{index}",
                "credential": f"setting:O365_SECRET_{index}",
                "contentTypes": list(TYPES),
            }
        )
    return {"O365_TENANTS": orjson.dumps(entries).decode(), "O365_LIST_CONCURRENCY": "4", **secrets}


def shipped_by_tenant(receiver: HttpReceiver) -> dict[str, Counter[str]]:
    result: dict[str, Counter[str]] = {}
    for record in receiver.records:
        result.setdefault(record["OrganizationId"], Counter())[record["Id"]] += 1
    return result


def served(sim: Simulator, tenant_id: str) -> Counter[str]:
    return Counter(r["Id"] for b in sim.blobs(tenant_id) for r in b.records)


def test_many_tenants_share_one_deployment_and_a_broken_tenant_is_skipped(
    fleet: Simulator,
    receiver: HttpReceiver,
    make_collector: Callable[..., Collector],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = fleet_settings()
    for key, value in settings.items():  # registry entries resolve secrets from the process environment
        monkeypatch.setenv(key, value)
    collector = make_collector(
        SINK_TYPE="http", SINK_URL=receiver.url, O365_RETRY_MAX_ATTEMPTS="12", O365_TENANT_ID="", **settings
    )
    with caplog.at_level(logging.INFO):
        assert run_once(collector) == 1, "the tenant with the bad secret fails the run"

    by_tenant = shipped_by_tenant(receiver)
    for tenant_id in [*HEALTHY, THROTTLED]:
        assert by_tenant.get(tenant_id) == served(fleet, tenant_id), tenant_id
    assert BAD_SECRET not in by_tenant
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lister run failed")]
    assert len(failed) == len(TYPES)
    assert all(BAD_SECRET in m and "AADSTS7000215" in m for m in failed)
    # the hint sends the admin to the entry's own secret setting, not to O365_CLIENT_SECRET
    bad_index = [*HEALTHY, BAD_SECRET, THROTTLED].index(BAD_SECRET)
    own = f"O365_SECRET_{bad_index} (named by O365_TENANTS[{bad_index}].credential)"
    assert all(own in m and "O365_CLIENT_SECRET" not in m for m in failed), failed[0]
    # the broken tenant's credentials were tried once, not once per content type
    token_calls = [e for e in fleet.stats.recent if e.route == "token" and e.tenant_id == BAD_SECRET]
    assert len(token_calls) == 1
    assert fleet.stats.faults["throttle"] > 0
    # every queue message carried its tenant, and the one queue served them all
    assert TENANT.tenant_id not in by_tenant


BIG = "e5000000-0000-4000-8000-000000000005"
SMALL = "f6000000-0000-4000-8000-000000000006"


class RecordingQueue:
    """The real Azurite queue, noting the order of the puts (which tenant's blob went first)."""

    def __init__(self, queue: QueueClient) -> None:
        self._queue = queue
        self.tenants: list[str] = []
        self._lock = threading.Lock()

    def send_message(self, content: str, **kwargs: Any) -> object:
        sent = self._queue.send_message(content, **kwargs)
        with self._lock:
            self.tenants.append(FetchTask.from_message(content).tenant_id)
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


def test_a_small_tenants_fresh_content_is_not_held_back_by_a_big_tenants_backfill(
    simulator: Simulator, make_collector: Callable[..., Collector], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = dt.datetime.now(dt.UTC)
    entries = []
    secrets: dict[str, str] = {}
    for index, (tenant_id, history) in enumerate([(BIG, dt.timedelta(days=6)), (SMALL, dt.timedelta(hours=1))]):
        simulator.add_tenant(
            TenantSpec(tenant_id=tenant_id, client_id=TENANT.client_id, client_secret=f"s-{index}", subscribed=TYPES)
        )
        simulator.generate(
            tenant_id, "Audit.General", now - history, now - dt.timedelta(minutes=10), blob_every=dt.timedelta(hours=1)
        )
        secrets[f"O365_SECRET_{index}"] = f"s-{index}"
        monkeypatch.setenv(f"O365_SECRET_{index}", f"s-{index}")  # registry entries resolve from the process
        entries.append(
            {
                "tenantId": tenant_id,
                "credential": f"setting:O365_SECRET_{index}",
                "contentTypes": ["Audit.General"],
                "startTime": (now - history).isoformat(),
            }
        )
    collector = make_collector(
        O365_TENANT_ID="",
        O365_TENANTS=orjson.dumps(entries).decode(),  # the big tenant first: it would be served first
        O365_WINDOW_MINUTES="360",  # the backfill is 24 windows of six blobs
        O365_LIST_CONCURRENCY="1",  # one worker: the order of the puts is the scheduler's order alone
        **secrets,
    )
    recording = RecordingQueue(collector.queue)
    collector.queue = recording  # type: ignore[assignment]
    result = collector.run_lister()

    assert result.ok
    order = recording.tenants
    assert order.count(SMALL) == len(simulator.blobs(SMALL)) > 0
    assert order.count(BIG) == len(simulator.blobs(BIG)) > 6 * 20
    first_small = order.index(SMALL)
    assert first_small <= 6, (
        f"the small tenant's first blob was put after {first_small} of the big tenant's: it waited for more "
        "than the big tenant's first window"
    )
