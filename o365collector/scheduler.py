"""Fair work scheduling for the lister: round-robin over streams, a cap per tenant, a bounded pool.

Work is taken one step (one listing window) at a time and a stream with more windows goes to the back
of the line, so every tenant and content type gets its first window before any gets its second: a
tenant with a week of backlog cannot starve the others of the run's time budget. At most
``per_key_limit`` steps of one tenant run at once, so a throttled tenant (whose requests sleep in
back-off) occupies a bounded share of the workers while the others proceed.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from .invocation import TiedThreadPool


class Keyed(Protocol):
    @property
    def key(self) -> str: ...


T = TypeVar("T", bound=Keyed)


class FairScheduler(Generic[T]):
    def __init__(self, items: Iterable[T], *, per_key_limit: int) -> None:
        self._ready: deque[T] = deque(items)
        self._busy: Counter[str] = Counter()
        self._active = 0
        self._limit = per_key_limit
        self._cond = threading.Condition()

    def take(self) -> T | None:
        """The next item whose key has capacity; None once nothing is left anywhere."""
        with self._cond:
            while True:
                for index, item in enumerate(self._ready):
                    if self._busy[item.key] < self._limit:
                        del self._ready[index]
                        self._busy[item.key] += 1
                        self._active += 1
                        return item
                if not self._ready and self._active == 0:
                    return None
                self._cond.wait()

    def done(self, item: T, *, again: bool) -> None:
        """Finish a step; ``again`` puts the item at the back of the line for another step."""
        with self._cond:
            self._busy[item.key] -= 1
            self._active -= 1
            if again:
                self._ready.append(item)
            self._cond.notify_all()


def run_fairly(items: Iterable[T], step: Callable[[T], bool], *, workers: int, per_key_limit: int) -> None:
    """Run ``step(item)`` (returning True while the item has more work) on a pool of ``workers`` threads."""
    scheduler: FairScheduler[T] = FairScheduler(items, per_key_limit=per_key_limit)

    def worker() -> None:
        while (item := scheduler.take()) is not None:
            again = False
            try:
                again = step(item)
            finally:
                scheduler.done(item, again=again)

    if workers <= 1:
        worker()
        return
    # Tied: the steps log each stream's summary, which must reach Application Insights as the invocation's.
    with TiedThreadPool(max_workers=workers, thread_name_prefix="lister") as pool:
        futures = [pool.submit(worker) for _ in range(workers)]
        for future in futures:
            future.result()
