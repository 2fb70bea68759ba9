"""Memory of one collector process: a single 100 MB content blob, then 10,000 blobs in a row.

    .venv/bin/python bench/memory.py [--quick] [--blob-mb 100] [--blobs 10000]

1. One content blob of ``--blob-mb`` MB (records of 0.5-5 KB and a few of 100 KB+) is fetched and
   shipped through the ``http`` sink (gzip NDJSON) to a loopback receiver. The process's idle size is
   its resident set after a small warm-up blob went the same way (imports, clients, connections and
   thread pools in place); the peak is ``VmHWM`` while the big blob is handled. Target: the peak stays
   under 3x the blob size plus the idle size.
2. ``--blobs`` blobs of 1-50 records are listed and shipped by the queue runner (``run --once``); the
   resident set is sampled as it goes. Target: no growth after the first tenth.

The simulator and the receiver run in a child process, so the blobs never sit in this one.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from any folder

import argparse
import datetime as dt
import gc
import logging
import os
import time

from bench.harness import (
    TENANT,
    Services,
    azurite,
    collector_env,
    current_rss_mb,
    machine,
    reset_peak_rss,
    vm_hwm_mb,
)
from bench.workload import BlobBody, RecordMaker, make_blobs
from o365collector.config import Settings
from o365collector.models import FetchTask, TimeWindow
from o365collector.queue_runner import DrainResult, QueueRunner
from o365collector.running import Progress, list_all
from o365collector.runtime import Collector, quiet_sdk_loggers

GROWTH_TOLERANCE_MB = 5.0  # allocator noise; a leak of one object per blob would show as far more


def one_big_blob(megabytes: float, seed: int) -> list[BlobBody]:
    """A warm-up blob of 20 records, then one blob of about ``megabytes`` MB."""
    maker = RecordMaker(seed, TENANT.tenant_id)
    when = dt.datetime.now(dt.UTC)
    warm = [maker.make("Audit.Exchange", when) for _ in range(20)]
    parts: list[bytes] = []
    size = 0
    while size < megabytes * 1e6:
        parts.append(maker.make("Audit.SharePoint", when))
        size += len(parts[-1]) + 1
    return [
        BlobBody("Audit.Exchange", b"[" + b",".join(warm) + b"]", len(warm)),
        BlobBody("Audit.SharePoint", b"[" + b",".join(parts) + b"]", len(parts)),
    ]


def big_blob(args: argparse.Namespace, created: dt.datetime) -> None:
    services = Services(lambda: one_big_blob(args.blob_mb, args.seed), created=created, seed=args.seed)
    try:
        with azurite() as storage:
            env = collector_env(services.endpoints, storage, start=created - dt.timedelta(hours=2), run="big")
            os.environ["REQUESTS_CA_BUNDLE"] = env["REQUESTS_CA_BUNDLE"]
            collector = Collector(Settings.from_env(env))
            collector.ensure_resources()
            try:
                api = collector.api(TENANT.tenant_id)
                window = TimeWindow(created - dt.timedelta(hours=1), created + dt.timedelta(seconds=1))
                blobs = [b for ct in ("Audit.Exchange", "Audit.SharePoint") for b in api.list_content(ct, window)]
                warm, big = (FetchTask.for_blob(TENANT.tenant_id, b) for b in blobs)
                collector.process_message(warm.to_message(), message_id="warm-up")
                gc.collect()
                idle = current_rss_mb()
                reset_peak_rss()
                started = time.perf_counter()
                result = collector.process_message(big.to_message(), message_id="big")
                seconds = time.perf_counter() - started
                peak = vm_hwm_mb()
            finally:
                collector.close()
        received, _fetches, _requests = services.stats()
    finally:
        services.stop()
    blob_mb = args.blob_mb
    print(
        f"one {blob_mb:g} MB blob ({result.records:,} records) shipped in {seconds:.2f}s; "
        f"receiver got {received.records - 20:,} records"
    )
    print(
        f"  idle RSS {idle:.0f} MB, peak RSS {peak:.0f} MB: peak - idle = {peak - idle:.0f} MB "
        f"= {(peak - idle) / blob_mb:.2f}x the blob (target < 3x: peak < {3 * blob_mb + idle:.0f} MB)"
    )
    print("  result:", "PASS" if peak < 3 * blob_mb + idle else "ABOVE TARGET")


def many_blobs(args: argparse.Namespace, created: dt.datetime) -> None:
    count = args.blobs

    def make() -> list[BlobBody]:
        return make_blobs(args.seed, TENANT.tenant_id, count * 25, records_per_blob=(1, 49), large_every=0)

    services = Services(make, created=created, seed=args.seed)
    samples: list[tuple[int, float]] = []
    try:
        with azurite() as storage:
            env = collector_env(services.endpoints, storage, start=created - dt.timedelta(hours=2), run="many")
            os.environ["REQUESTS_CA_BUNDLE"] = env["REQUESTS_CA_BUNDLE"]
            collector = Collector(Settings.from_env(env))
            collector.ensure_resources()
            try:
                started = time.perf_counter()
                list_all(collector, Progress(logging.getLogger("bench")))
                listed_seconds = time.perf_counter() - started
                every = max(count // 20, 1)

                def sample(drained: DrainResult) -> None:
                    done = sum(drained.outcomes.values())
                    if not samples or done - samples[-1][0] >= every:
                        samples.append((done, current_rss_mb()))

                runner = QueueRunner(
                    collector.queue,
                    collector.poison_queue,
                    lambda body, message_id, _count: collector.process_message(body, message_id=message_id),
                    collector.settings.queue_runner,
                    processing_lease=collector.settings.policy.claim_lease,
                )
                started = time.perf_counter()
                drained = runner.drain(on_progress=sample)
                seconds = time.perf_counter() - started
                samples.append((sum(drained.outcomes.values()), current_rss_mb()))
            finally:
                collector.close()
        received, _fetches, _requests = services.stats()
    finally:
        services.stop()
    blobs_done = samples[-1][0]
    baseline = next((rss for done, rss in samples if done >= blobs_done // 10), samples[0][1])
    final = samples[-1][1]
    print(
        f"{blobs_done:,} blobs ({received.records:,} records) listed in {listed_seconds:.1f}s, shipped in "
        f"{seconds:.1f}s ({blobs_done / seconds:.0f} blobs/s, one at a time)"
    )
    print(
        "  RSS by blobs shipped: "
        + ", ".join(f"{done}: {rss:.0f} MB" for done, rss in samples[:: max(len(samples) // 8, 1)])
    )
    print(
        f"  RSS after a tenth of the blobs {baseline:.0f} MB, at the end {final:.0f} MB: "
        f"growth {final - baseline:+.1f} MB (tolerance {GROWTH_TOLERANCE_MB:g} MB)"
    )
    print("  result:", "PASS" if final - baseline <= GROWTH_TOLERANCE_MB else "GROWS")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 100 MB blob and 1,000 small blobs")
    parser.add_argument("--blob-mb", type=float, default=100.0, help="size of the single big blob (MB)")
    parser.add_argument("--blobs", type=int, default=None, help="small blobs in the second part (default 10,000)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=("big", "many"), default=None, help="run one part only")
    args = parser.parse_args(argv)
    args.blobs = args.blobs or (1_000 if args.quick else 10_000)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_sdk_loggers()
    print(f"machine: {machine()}")
    created = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)
    if args.only in (None, "big"):
        big_blob(args, created)
    if args.only in (None, "many"):
        many_blobs(args, created)
    return 0


if __name__ == "__main__":
    sys.exit(main())
