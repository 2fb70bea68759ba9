"""Latency: from content becoming available at the API to its records accepted by the receiver,
with polling alone and with push (webhook notifications plus polling), measured in one run.

    .venv/bin/python bench/latency.py [--quick] [--hours 3]

A live feed: every content type gets a blob every few minutes, and each blob becomes available some
time after its ``contentCreated`` (30 seconds to 45 minutes, log-uniform: the service publishes late
and irregularly). The collector runs with the default settings: the lister on ``O365_LIST_SCHEDULE``
(every 5 minutes, on the clock), windows ending ``O365_END_DELAY_MINUTES`` (5) behind now, the
60-minute overlap; the queue is shipped right after each listing, as the queue trigger does.

Push mode replays the same feed with ``O365_WEBHOOK_AUTH_ID`` set and a webhook on every subscription:
the simulator POSTs each blob's descriptor to the collector's webhook receiver (``o365collector.webhook``,
served over HTTPS on loopback with the simulator's certificate) the moment the blob becomes available,
and the queue is shipped right after, as the queue trigger would. Polling keeps running. How soon the
real service notifies is undocumented: push figures are a lower bound, service delay not included.

Time is simulated where nothing happens: the shared clock of the simulator, the collector and the
receiver jumps to the next timer tick (or, with push, the next blob becoming available); listing,
pushing, fetching and shipping take their real time. A blob's latency is the time its last batch was
accepted minus the time it became available.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from any folder

import argparse
import contextlib
import datetime as dt
import io
import logging
import math
import os
import random
import statistics
from dataclasses import dataclass

import requests

from bench.harness import TENANT, FastReceiver, SteppedClock, azurite, machine
from o365collector.azurite import Azurite
from o365collector.config import Settings
from o365collector.models import CONTENT_TYPES
from o365collector.running import queue_runner, run_once
from o365collector.runtime import Collector, quiet_sdk_loggers
from o365collector.simulator import Simulator, SimulatorConfig
from o365collector.simulator.cli import demo_environment
from o365collector.telemetry import ShipTally
from o365collector.webhook_server import WebhookServer

TICK = dt.timedelta(minutes=5)  # O365_LIST_SCHEDULE's default, "0 */5 * * * *"
BLOB_EVERY = dt.timedelta(minutes=4)
DELAY_RANGE = (30.0, 45 * 60.0)  # seconds from contentCreated to available
AUTH_ID = "bench0webhook0auth0id0not0a0secret0at0all0x48ab"  # 48 characters, as `openssl rand -hex 24` gives


@dataclass
class Outcome:
    mode: str
    latencies: list[float]  # seconds, sorted
    blobs: int
    ticks: int
    pushes: int = 0


def next_tick(when: dt.datetime) -> dt.datetime:
    """The first 5-minute boundary at or after ``when`` (NCRONTAB ``0 */5 * * * *``)."""
    floor = when.replace(second=0, microsecond=0, minute=when.minute - when.minute % 5)
    return floor if floor == when else floor + TICK


def build_feed(sim: Simulator, seed: int, start: dt.datetime, end: dt.datetime) -> dict[str, dt.datetime]:
    """The live feed (same seed, same blobs in both modes); content id -> when it becomes available."""
    rng = random.Random(seed)
    available_at: dict[str, dt.datetime] = {}
    for content_type in CONTENT_TYPES:
        created = start + dt.timedelta(seconds=rng.uniform(0, BLOB_EVERY.total_seconds()))
        while created < end:
            delay = math.exp(rng.uniform(*(math.log(x) for x in DELAY_RANGE)))
            records = [
                {"Id": f"{content_type}-{created.timestamp():.3f}-{i}", "Workload": content_type} for i in range(5)
            ]
            blob = sim.add_blob(
                TENANT.tenant_id, content_type, created, records, available_at=created + dt.timedelta(seconds=delay)
            )
            available_at[blob.content_id] = blob.available_at
            created += BLOB_EVERY + dt.timedelta(seconds=rng.uniform(-60, 60))
    return available_at


def start_webhooks(sim: Simulator, address: str) -> None:
    """``subscriptions/start`` with a webhook for every content type, as ``subscriptions start --webhook`` does."""
    http = requests.Session()
    http.trust_env = False
    http.verify = sim.ca_file
    token = http.post(
        f"{sim.authority_url}/{TENANT.tenant_id}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": TENANT.client_id,
            "client_secret": TENANT.client_secret,
            "scope": "https://manage.office.com/.default",
        },
        timeout=30,
    ).json()["access_token"]
    for content_type in CONTENT_TYPES:
        response = http.post(
            f"{sim.api_url}/api/v1.0/{TENANT.tenant_id}/activity/feed/subscriptions/start",
            params={"contentType": content_type, "PublisherIdentifier": TENANT.tenant_id},
            json={"webhook": {"address": address, "authId": AUTH_ID, "expiration": ""}},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        if response.status_code != 200:
            raise RuntimeError(f"webhook start for {content_type} refused: {response.status_code} {response.text}")


def measure(mode: str, storage: Azurite, hours: float, seed: int) -> Outcome:
    push = mode == "push"
    clock = SteppedClock()
    receiver = FastReceiver(clock=lambda: clock().timestamp()).start()
    sim = Simulator(SimulatorConfig(seed=seed, page_size=50, now=clock, token_lifetime=dt.timedelta(days=2)))
    sim.add_tenant(TENANT)
    start = next_tick(clock()) + dt.timedelta(minutes=1)
    end = start + dt.timedelta(hours=hours)
    available_at = build_feed(sim, seed, start, end)
    sim.start()
    listener: WebhookServer | None = None
    ticks = pushes = 0
    try:
        env = demo_environment(sim, TENANT) | {
            "AzureWebJobsStorage": storage.connection_string,
            "SINK_TYPE": "http",
            "SINK_URL": receiver.url,
            "O365_START_TIME": (start - dt.timedelta(minutes=30)).isoformat(),
            "O365_CONTENT_QUEUE": f"content-latency-{mode}",
            "O365_CHECKPOINT_TABLE": f"cplatency{mode}",
            "O365_LEDGER_TABLE": f"ledgerlatency{mode}",
        }
        if push:
            env |= {"O365_WEBHOOK_AUTH_ID": AUTH_ID, "O365_ARRIVAL_TABLE": "arrivalslatency"}
        os.environ["REQUESTS_CA_BUNDLE"] = sim.ca_file
        collector = Collector(Settings.from_env(env), clock=clock)
        collector.ensure_resources()
        try:
            if push:
                # The listener `run --webhook-listen` serves, with the simulator's certificate (the pusher trusts it).
                assert sim.cert_files is not None
                files = sim.cert_files
                listener = WebhookServer(
                    collector.webhook_receiver(), cert_file=str(files.cert_file), key_file=str(files.key_file)
                ).start()
                start_webhooks(sim, f"https://127.0.0.1:{listener.port}/api/webhook")
            # Each availability is an event in push mode: the service notifies as content appears.
            arrivals = sorted(set(available_at.values())) if push else []
            deadline = end + dt.timedelta(seconds=DELAY_RANGE[1]) + 3 * TICK
            while clock() < deadline and len(receiver.stats.accepted_at) < len(available_at):
                now = clock()
                tick = next_tick(now)
                upcoming = next((a for a in arrivals if a > now), None)
                if upcoming is not None and upcoming < tick:
                    clock.advance_to(upcoming)
                    if sim.deliver_notifications().delivered:
                        pushes += 1
                        queue_runner(collector, ShipTally()).drain()  # the queue trigger fires
                    continue
                clock.advance_to(tick)  # idle until the timer fires
                if push:
                    sim.deliver_notifications()  # anything due (retries) before the lister runs
                with contextlib.redirect_stdout(io.StringIO()):
                    run_once(collector)
                ticks += 1
                if tick == now:  # already on a tick: step past it
                    clock.advance(dt.timedelta(microseconds=1))
        finally:
            collector.close()
    finally:
        if listener is not None:
            listener.stop()
        receiver.stop()
        sim.stop()
    accepted = receiver.settle().accepted_at
    latencies = sorted(accepted[cid][1] - when.timestamp() for cid, when in available_at.items() if cid in accepted)
    return Outcome(mode, latencies, len(available_at), ticks, pushes)


def describe(outcome: Outcome) -> str:
    lat = outcome.latencies
    missing = outcome.blobs - len(lat)
    if not lat:
        return f"{outcome.mode:>7}: NOTHING SHIPPED"
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
    return (
        f"{outcome.mode:>7}: available -> accepted: median {statistics.median(lat) / 60:.1f} min "
        f"({statistics.median(lat):.2f} s), p95 {p95 / 60:.1f} min, worst {lat[-1] / 60:.1f} min "
        f"({lat[-1]:.2f} s), best {lat[0]:.2f} s; {missing} blobs not shipped; {outcome.ticks} timer runs"
        + (f", {outcome.pushes} notification rounds" if outcome.mode == "push" else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one hour of feed instead of three")
    parser.add_argument("--hours", type=float, default=None, help="hours of live feed (default 3)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    hours = args.hours or (1.0 if args.quick else 3.0)
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_sdk_loggers()
    print(f"machine: {machine()}")
    with azurite() as storage:
        outcomes = [measure(mode, storage, hours, args.seed) for mode in ("poll", "push")]
    print(
        f"feed: {hours:g} h, {outcomes[0].blobs} blobs of {len(CONTENT_TYPES)} content types, available "
        f"{DELAY_RANGE[0]:.0f} s to {DELAY_RANGE[1] / 60:.0f} min after contentCreated"
    )
    for outcome in outcomes:
        print(describe(outcome))
    print(
        "  poll bound: the next 5-minute tick after the blob is available and its contentCreated is 5 minutes old "
        "(O365_END_DELAY_MINUTES), plus the seconds listing and shipping take"
    )
    print("  push: notified the moment the blob is available (the real service's notification delay is not modelled)")
    complete = all(o.latencies and len(o.latencies) == o.blobs for o in outcomes)
    print("result:", "PASS" if complete else "INCOMPLETE")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
