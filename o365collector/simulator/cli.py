"""``python -m o365collector simulate``: run the simulator with a demo tenant until SIGINT/SIGTERM.

It starts Azurite too (unless ``--no-azurite``) and prints every setting a collector needs, storage
and a file sink included (``export NAME=value`` lines, ready for ``eval``), so that ``check``,
``status`` and ``run`` can be tried against it from another shell; then it keeps serving.
History is generated for ``--days`` back and one day ahead; future blobs become listable as
their time comes, so a running collector sees a live feed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from ..azurite import Azurite, find_azurite, start_azurite
from .auth_setup import AUTH_MODES, auth_environment
from .core import Simulator
from .data import CONTENT_TYPES
from .faults import Fault
from .options import SimulatorConfig
from .store import TenantSpec

# Fixed demo identities: obviously fake, stable across runs so local settings can be reused.
DEMO_TENANT_ID = "0d5e1c7a-3f2b-4a69-9e84-5c1d2b3a4f60"
DEMO_CLIENT_ID = "a7c3e9f1-6b2d-4e85-8f10-2d4c6e8a0b13"
DEMO_CLIENT_SECRET = "simulator-demo-secret"  # noqa: S105 - a published demo value, guards only 127.0.0.1
# One Graph record per stream about every N minutes in the demo history.
DEMO_GRAPH_EVERY_MINUTES = {"Entra.SignIns": 10, "Entra.DirectoryAudits": 30, "Exchange.MessageTrace": 10}


def demo_environment(sim: Simulator, spec: TenantSpec) -> dict[str, str]:
    """The settings that point a collector at a running simulator for ``spec``'s tenant."""
    return {
        "O365_API_URL": sim.api_url,
        "O365_AUTHORITY_HOST": sim.authority_url,
        "REQUESTS_CA_BUNDLE": sim.ca_file,
        "O365_TENANT_ID": spec.tenant_id,
        "O365_CLIENT_ID": spec.client_id,
        "O365_CLIENT_SECRET": spec.client_secret,
    }


def storage_environment(azurite: Azurite, output: Path) -> dict[str, str]:
    """The settings for Azurite's storage and a file sink in ``output``: with ``demo_environment``, all a
    collector needs. Azurite was started with the flags the pinned storage SDKs need (``--skipApiVersionCheck``:
    they speak a newer API version than Azurite knows; ``--loose``)."""
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "SINK_TYPE": "file",
        "SINK_FILE_DIR": str(output),
    }


def print_environment(env: dict[str, str]) -> None:
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")
    print("# then: python -m o365collector check | status | run --once", file=sys.stderr)
    sys.stdout.flush()


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (the handlers are restored afterwards)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a rate between 0 and 1")
    return value


def _quota(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{text} is not a quota between 0 (off) and 1000000 calls per minute")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free port)")
    parser.add_argument("--days", type=_positive, default=3.0, help="days of history to generate (default 3)")
    parser.add_argument(
        "--blob-every-minutes", type=_positive, default=15.0, help="one blob per content type every N minutes"
    )
    parser.add_argument("--records-per-blob", type=int, default=20, help="at most this many records per blob")
    parser.add_argument("--listing-delay-minutes", type=float, default=0.0, help="delay before a blob is listable")
    parser.add_argument("--page-size", type=int, default=50, help="content descriptors per listing page")
    parser.add_argument("--seed", type=int, default=1, help="seed for generated data and fault rates")
    parser.add_argument("--tenant-id", default=DEMO_TENANT_ID)
    parser.add_argument("--client-id", default=DEMO_CLIENT_ID)
    parser.add_argument("--client-secret", default=DEMO_CLIENT_SECRET)
    parser.add_argument(
        "--auth-mode",
        choices=AUTH_MODES,
        default="clientSecret",
        help="how the printed settings sign in: managedIdentity and federated serve the App Service identity "
        "endpoint (IDENTITY_ENDPOINT/IDENTITY_HEADER) and need no secret; certificate: a PFX in the simulated "
        "Key Vault, read through that endpoint",
    )
    parser.add_argument("--throttle-rate", type=_rate, default=0.0, help="share of API calls answered 403 AF429")
    parser.add_argument("--error-rate", type=_rate, default=0.0, help="share of API calls answered 500 AF50000")
    parser.add_argument(
        "--quota-per-minute",
        type=_quota,
        default=2000,
        help="API calls per PublisherIdentifier per minute before 403 AF429 (default 2000, the real baseline; 0 = off)",
    )
    parser.add_argument("--cert-dir", type=Path, default=None, help="where to write ca.pem (default: a temp folder)")
    parser.add_argument(
        "--no-azurite", action="store_true", help="do not start Azurite (storage settings are then yours to set)"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("demo-output"), help="the file sink's folder in the printed settings"
    )


def build(args: argparse.Namespace, now: dt.datetime) -> tuple[Simulator, TenantSpec]:
    """The simulator ``run`` serves, with the demo tenant, its data and faults (not started)."""
    sim = Simulator(SimulatorConfig(seed=args.seed, page_size=args.page_size, port=args.port, cert_dir=args.cert_dir))
    spec = TenantSpec(
        tenant_id=args.tenant_id, client_id=args.client_id, client_secret=args.client_secret, subscribed=CONTENT_TYPES
    )
    sim.add_tenant(spec)
    every = dt.timedelta(minutes=args.blob_every_minutes)
    # Align on the blob interval so repeated runs with the same arguments produce the same slots.
    epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    start = now - dt.timedelta(days=args.days)
    start -= (start - epoch) % every
    for content_type in CONTENT_TYPES:
        sim.generate(
            spec.tenant_id,
            content_type,
            start,
            now + dt.timedelta(days=1),
            blob_every=every,
            records_per_blob=(1, max(1, args.records_per_blob)),
            listing_delay=dt.timedelta(minutes=args.listing_delay_minutes),
        )
    # Microsoft Graph logs for the Graph sources (graph.py): served from their time + a few minutes' lag.
    for stream, minutes in DEMO_GRAPH_EVERY_MINUTES.items():
        graph_every = dt.timedelta(minutes=minutes)
        sim.generate_graph(spec.tenant_id, stream, start, now + dt.timedelta(days=1), every=graph_every)
    sim.options.quota_per_minute = args.quota_per_minute
    for route in ("list", "fetch", "subscriptions"):
        if args.throttle_rate:
            sim.faults.add(Fault(kind="throttle", route=route, rate=args.throttle_rate))
        if args.error_rate:
            sim.faults.add(Fault(kind="server_error", route=route, rate=args.error_rate))
    return sim, spec


def run(args: argparse.Namespace) -> int:
    sim, spec = build(args, dt.datetime.now(dt.UTC))
    azurite: Azurite | None = None
    if not args.no_azurite:
        if find_azurite() is None:
            print("# Azurite not found (run `npm ci`): storage settings are not printed", file=sys.stderr)
        else:
            scratch = Path(tempfile.mkdtemp(prefix="o365-simulate-"))
            azurite = start_azurite(scratch / "azurite")
    sim.start()
    try:
        env = demo_environment(sim, spec)
        env |= auth_environment(sim, spec.tenant_id, spec.client_id, args.auth_mode)
        if azurite is not None:
            env |= storage_environment(azurite, args.output.resolve())
        print_environment(env)
        blobs = sim.blobs(spec.tenant_id)
        records = sum(len(b.records) for b in blobs)
        graph = len(sim.graph_records(spec.tenant_id))
        print(
            f"# simulator on {sim.api_url}: {len(blobs)} blobs, {records} records, {graph} Graph records "
            f"(some become listable over the next day); Ctrl+C to stop",
            file=sys.stderr,
        )
        wait_for_signal()
    finally:
        sim.stop()
        if azurite is not None:
            azurite.stop()
    print(f"# stopped; requests served: {dict(sim.stats.requests)}", file=sys.stderr)
    return 0
