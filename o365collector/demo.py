"""``python -m o365collector demo``: the whole pipeline on this machine, no Azure account needed.

Azurite (storage) + the simulator (Management Activity API and token endpoint, HTTPS on loopback)
+ the collector's ``run --once`` + the file sink. Prints what flowed and where it landed.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections import Counter
from pathlib import Path

from .azurite import start_azurite
from .config import Settings
from .models import CONTENT_TYPES
from .running import run_once
from .runtime import Collector
from .simulator import Simulator, SimulatorConfig, TenantSpec
from .simulator.cli import demo_environment, print_environment, storage_environment, wait_for_signal

DEMO_TENANT = TenantSpec(
    tenant_id="5b7c3a1e-8d2f-4e6a-9c0b-1a2b3c4d5e6f",
    client_id="0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
    client_secret="demo-secret-not-real",  # noqa: S106 - the simulator's own demo credential
    roles=("ActivityFeed.Read", "ActivityFeed.ReadDlp"),
    audit_enabled=True,
    subscribed=CONTENT_TYPES[:3],  # the collector starts the other two itself
)


def count_output(folder: Path) -> Counter[str]:
    """Records per content type in the file sink's folder ({tenant}/{content type}/...)."""
    counts: Counter[str] = Counter()
    for path in folder.rglob("*.ndjson"):
        content_type = path.relative_to(folder).parts[1]
        with path.open("rb") as handle:
            counts[content_type] += sum(1 for line in handle if line.strip())
    return counts


def run_demo(*, days: float, output: str, keep_running: bool = False) -> int:
    """``keep_running``: after the run, print every setting and keep Azurite and the simulator up until
    Ctrl+C, so ``check``, ``status`` and ``run`` can be explored against the demo's state."""
    out = Path(output).resolve()
    now = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="o365-demo-") as scratch:
        azurite = start_azurite(Path(scratch) / "azurite")
        sim = Simulator(SimulatorConfig(seed=7, page_size=20))
        try:
            sim.add_tenant(DEMO_TENANT)
            for content_type in CONTENT_TYPES:
                sim.generate(
                    DEMO_TENANT.tenant_id,
                    content_type,
                    now - dt.timedelta(days=days),
                    now - dt.timedelta(minutes=10),
                    blob_every=dt.timedelta(minutes=45),
                    records_per_blob=(1, 40),
                )
            sim.start()
            env = (
                demo_environment(sim, DEMO_TENANT)
                | storage_environment(azurite, out)
                | {
                    "O365_START_TIME": (now - dt.timedelta(days=days)).isoformat(),
                    "O365_RETRY_BACKOFF_SECONDS": "0.2",
                }
            )
            # requests and azure-identity read the simulator's CA bundle from the environment.
            os.environ["REQUESTS_CA_BUNDLE"] = env["REQUESTS_CA_BUNDLE"]
            print(f"demo: simulator at {sim.api_url}, Azurite on 127.0.0.1, {days:g} days of history")
            collector = Collector(Settings.from_env(env))
            try:
                code = run_once(collector)
            finally:
                collector.close()
            expected = Counter(
                {ct: sum(len(b.records) for b in sim.blobs(DEMO_TENANT.tenant_id, ct)) for ct in CONTENT_TYPES}
            )
            if keep_running:
                print_environment(env)
                print("demo: Azurite and the simulator keep running; Ctrl+C to stop", flush=True)
                wait_for_signal()
        finally:
            sim.stop()
            azurite.stop()
    shipped = count_output(out)
    print("records per content type (shipped / served by the simulator):")
    for content_type in CONTENT_TYPES:
        print(f"  {content_type:<28} {shipped[content_type]:>6} / {expected[content_type]}")
    print(f"output: {out} (NDJSON, one file per content blob)")
    return code
