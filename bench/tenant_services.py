"""Several tenants for the throughput bench: an MSSP's content queue, each tenant paced on its own.

The API's quota is per tenant (``PublisherIdentifier``), so the collector paces each tenant's calls
on its own (``O365_MAX_REQUESTS_PER_MINUTE``). With one tenant, tiny blobs measure that cap (one GET
per blob: 25 blobs/s at the default 1,500/min); spread over N tenants, each at the default pacing,
they measure the collector. Each tenant has its own app registration, its secret referenced from
``O365_TENANTS`` as a setting, as ``bench/multitenant.py`` does.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import multiprocessing.connection
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import orjson

from bench.harness import Endpoints, FastReceiver, Services
from bench.workload import BlobBody, make_blobs
from o365collector.models import CONTENT_TYPES
from o365collector.simulator import Simulator, SimulatorConfig, TenantSpec

# The single-tenant settings collector_env writes: O365_TENANTS replaces them.
_SINGLE_TENANT_SETTINGS = ("O365_TENANT_ID", "O365_CLIENT_ID", "O365_CLIENT_SECRET")


def tenant_specs(count: int) -> list[TenantSpec]:
    """``count`` tenants with deterministic ids and secrets, every content type subscribed."""
    return [
        TenantSpec(
            tenant_id=f"{i:08x}-0000-4000-8000-00000000b001",
            client_id=f"{i:08x}-0000-4000-8000-00000000c001",
            client_secret=f"bench-secret-{i}-not-real",
            subscribed=CONTENT_TYPES,
        )
        for i in range(1, count + 1)
    ]


@dataclass(frozen=True)
class TenantBlob:
    tenant_id: str
    blob: BlobBody


def spread_blobs(
    seed: int, tenants: Sequence[TenantSpec], total_records: int, *, records_per_blob: tuple[int, int], spread: str
) -> list[TenantBlob]:
    """``total_records`` shared evenly between the tenants, each tenant's blobs made for its id."""
    share, extra = divmod(total_records, len(tenants))
    blobs: list[TenantBlob] = []
    for index, tenant in enumerate(tenants):
        records = share + (1 if index < extra else 0)
        if records:
            made = make_blobs(seed + index, tenant.tenant_id, records, records_per_blob=records_per_blob, spread=spread)
            blobs.extend(TenantBlob(tenant.tenant_id, b) for b in made)
    return blobs


def tenants_env(env: Mapping[str, str], tenants: Sequence[TenantSpec]) -> dict[str, str]:
    """``env`` (``collector_env``'s) collecting ``tenants`` through ``O365_TENANTS`` instead of the one tenant."""
    out = {k: v for k, v in env.items() if k not in _SINGLE_TENANT_SETTINGS}
    entries = []
    for index, tenant in enumerate(tenants):
        name = f"O365_SECRET_TENANT_{index}"
        out[name] = tenant.client_secret
        entries.append({"tenantId": tenant.tenant_id, "clientId": tenant.client_id, "credential": f"setting:{name}"})
    out["O365_TENANTS"] = orjson.dumps(entries).decode()
    return out


def _serve(
    conn: multiprocessing.connection.Connection,
    tenants: Sequence[TenantSpec],
    blobs: Sequence[TenantBlob],
    created: dt.datetime,
    seed: int,
) -> None:
    sim = Simulator(SimulatorConfig(seed=seed, page_size=100))
    for tenant in tenants:
        sim.add_tenant(tenant)
    for index, item in enumerate(blobs):
        # contentCreated a millisecond apart, ending at ``created``.
        when = created - dt.timedelta(milliseconds=len(blobs) - index)
        sim.add_blob(item.tenant_id, item.blob.content_type, when, item.blob.body)
    sim.start()
    receiver = FastReceiver().start()
    conn.send(Endpoints(sim.api_url, sim.ca_file, receiver.url))
    while conn.recv() == "stats":
        conn.send((receiver.settle(), dict(sim.stats.fetches), dict(sim.stats.requests)))
    receiver.stop()
    sim.stop()
    conn.send(None)


class TenantServices(Services):
    """``harness.Services`` for several tenants: the simulator serving each tenant's blobs, and a receiver."""

    def __init__(
        self, tenants: Sequence[TenantSpec], blobs: Sequence[TenantBlob], *, created: dt.datetime, seed: int = 1
    ) -> None:
        self._start(_serve, (tenants, blobs, created, seed))
