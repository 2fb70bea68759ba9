"""Fair scheduling: round-robin by step, a per-tenant cap, every item finished, bounded pool."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass

import pytest

from o365collector.ratelimit import RateLimiter
from o365collector.scheduler import run_fairly


@dataclass(eq=False)
class Item:
    key: str
    steps: int
    done: int = 0


def test_every_item_gets_a_step_before_any_gets_a_second() -> None:
    items = [Item("big", 5), Item("a", 1), Item("b", 2), Item("c", 1)]
    order: list[str] = []

    def step(item: Item) -> bool:
        order.append(item.key)
        item.done += 1
        return item.done < item.steps

    run_fairly(items, step, workers=1, per_key_limit=1)
    assert order[:4] == ["big", "a", "b", "c"]
    assert order == ["big", "a", "b", "c", "big", "b", "big", "big", "big"]


def test_the_per_key_cap_holds_under_concurrency_and_all_work_finishes() -> None:
    items = [Item(f"t{i % 3}", 4) for i in range(12)]
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    lock = threading.Lock()
    gate = threading.Barrier(2, timeout=5)

    def step(item: Item) -> bool:
        with lock:
            running[item.key] += 1
            peak[item.key] = max(peak[item.key], running[item.key])
        if item.key == "t0" and item.done == 0:
            try:
                gate.wait()  # two t0 steps must overlap for the cap of 2 to be reached
            except threading.BrokenBarrierError:
                pass
        with lock:
            running[item.key] -= 1
        item.done += 1
        return item.done < item.steps

    run_fairly(items, step, workers=6, per_key_limit=2)
    assert all(item.done == 4 for item in items)
    assert max(peak.values()) <= 2
    assert peak["t0"] == 2


# Run in a child process: a wedged scheduler leaves a pool thread waiting forever, which would also
# keep the test process from exiting; the child is killed at the bound instead.
_FAILING_STEP_RUN = """
import json
from o365collector.scheduler import run_fairly

class Item:
    def __init__(self, key, steps):
        self.key, self.steps, self.done = key, steps, 0

items = [Item("a", 3), Item("bad", 2), Item("c", 3), Item("d", 2)]

def step(item):
    item.done += 1
    if item.key == "bad":
        raise RuntimeError("listing failed")
    return item.done < item.steps

try:
    run_fairly(items, step, workers=2, per_key_limit=1)
    error = None
except RuntimeError as err:
    error = str(err)
print(json.dumps({"error": error, "done": [[i.key, i.done] for i in items]}))
"""


def test_a_failing_step_does_not_wedge_the_scheduler() -> None:
    """A step that raises ends its worker, but frees its place: the other worker finishes every other
    item and the run returns with the error, instead of waiting forever for the failed step."""
    try:
        child = subprocess.run(
            [sys.executable, "-c", _FAILING_STEP_RUN], capture_output=True, text=True, timeout=20, check=True
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the scheduler is wedged: a worker waits forever for a step that failed")
    outcome = json.loads(child.stdout)
    assert outcome["error"] == "listing failed", "the failure reaches the caller"
    assert outcome["done"] == [["a", 3], ["bad", 1], ["c", 3], ["d", 2]], "every other item finished"


def test_rate_limiter_paces_to_the_rate_after_the_burst() -> None:
    clock = {"t": 0.0}
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock["t"] += seconds

    limiter = RateLimiter(10.0, burst=5, sleep=sleep, monotonic=lambda: clock["t"])
    for _ in range(25):
        limiter.acquire()
    assert len(waits) == 20  # the first 5 pass at once
    assert abs(clock["t"] - 2.0) < 1e-9  # 20 more at 10 per second
