"""A faithful local Office 365 Management Activity API and Entra token endpoint, with fault injection.

::

    sim = Simulator(SimulatorConfig(seed=1)).start()        # https://127.0.0.1:PORT
    sim.add_tenant(TenantSpec(tenant_id=..., client_id=..., client_secret=..., subscribed=("Audit.Exchange",)))
    sim.generate(tenant_id, "Audit.Exchange", start, end, blob_every=timedelta(minutes=10))
    sim.faults.add(Fault(kind="throttle", route="fetch", count=2))
    ...                                                    # point a collector at sim.api_url / sim.authority_url
    sim.blobs(tenant_id)                                   # ground truth;  sim.stats: what the client did
    sim.stop()

Modules: ``core`` (the facade and request pipeline), ``store`` (tenants, subscriptions, blobs),
``data`` (blobs and generated records), ``feed`` (the API routes), ``tokens`` (Entra), ``faults``,
``stats``, ``server`` (HTTPS plumbing), ``certs``, ``times``, ``wire`` (request/response/error shapes),
``options`` and ``cli``. Facts and their sources: management-activity-api.md; "INF" marks inferences.
The package never imports ``azure.functions`` and only ever binds 127.0.0.1.
"""

from .cli import demo_environment
from .core import Simulator
from .data import CONTENT_TYPES, SimBlob
from .faults import Fault, FaultInjector
from .options import SimulatorConfig, SimulatorOptions
from .stats import RequestLog, SimulatorStats
from .store import TenantSpec

__all__ = [
    "CONTENT_TYPES",
    "Fault",
    "FaultInjector",
    "RequestLog",
    "SimBlob",
    "Simulator",
    "SimulatorConfig",
    "SimulatorOptions",
    "SimulatorStats",
    "TenantSpec",
    "demo_environment",
]
