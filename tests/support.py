"""Constants and helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from o365collector.models import CONTENT_TYPES
from o365collector.queue_runner import QueueRunner
from o365collector.running import queue_runner
from o365collector.runtime import Collector
from o365collector.simulator import TenantSpec
from o365collector.telemetry import ShipTally

EnvFactory = Callable[..., dict[str, str]]

TENANT = TenantSpec(
    tenant_id="11111111-2222-4333-8444-555555555555",
    client_id="66666666-7777-4888-9999-aaaaaaaaaaaa",
    client_secret="test-secret-Xq7!",
    roles=("ActivityFeed.Read", "ActivityFeed.ReadDlp"),
    audit_enabled=True,
    subscribed=CONTENT_TYPES,
)


class Clock:
    """A clock the test moves by hand (``clock.now = …``), never by sleeping; shared by simulator and collector."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def now() -> dt.datetime:
    """The time now, in UTC (what the collector's clock reads)."""
    return dt.datetime.now(dt.UTC)


def host_queue_runner(collector: Collector) -> QueueRunner:
    """The queue runner ``run`` uses (the host's rules from host.json, the same handler), for tests that drain."""
    return queue_runner(collector, ShipTally())
