"""Keeping leases alive while work runs: a heartbeat thread, and the renewal of a ledger claim.

The Functions host keeps a queue message invisible while its function runs by extending the
message's visibility every half lease. ``Heartbeat`` is that timer, for the command-line runner's
messages (``o365collector.queue_runner``) and for the fetcher's claim on a blob (``ClaimRenewal``),
so that a slow sink never lets a message or a claim lapse while this worker is still on it, and no
other delivery ships the same blob meanwhile.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from .checkpoints import Claim, Ledger
from .invocation import bind
from .redaction import redact

log = logging.getLogger(__name__)


class Heartbeat:
    """Calls ``beat`` every ``every`` seconds on a daemon thread, from ``start()`` until ``stop()``.

    ``beat`` returns False when there is nothing left to keep, which ends the heartbeat. A beat that
    raises is logged at WARNING and tried again next time: a lease renewed at half its length has the
    other half to run. ``stop()`` waits for a beat in progress, so nothing is renewed after it returns.
    As a context manager it starts on entry and stops on exit, whatever the exit.
    """

    def __init__(self, beat: Callable[[], bool], every: float, *, name: str) -> None:
        self._beat = beat
        self._every = every
        self._name = name
        self._stopped = threading.Event()
        # Tied to the invocation that creates it (if any): its warnings must reach Application Insights.
        self._thread = threading.Thread(target=bind(self._run), name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopped.wait(self._every):
            try:
                if not self._beat():
                    return
            except Exception as err:
                log.warning("%s failed, trying again in %.0f s: %s", self._name, self._every, redact(str(err)))


class ClaimRenewal:
    """Moves a ledger claim's ``ClaimedUntil`` to now + lease every half lease while its blob is worked on.

    Each renewal is conditional on the claim's ETag (``Ledger.renew``): once the claim was released,
    finished or taken over, renewing stops. ``stop()`` ends the renewal and returns the claim with the
    ETag of the last renewal, which is what ``Ledger.release`` needs.
    """

    def __init__(
        self,
        ledger: Ledger,
        claim: Claim,
        lease: dt.timedelta,
        clock: Callable[[], dt.datetime],
        *,
        content_id: str,
    ) -> None:
        self._ledger = ledger
        self._claim = claim
        self._lease = lease
        self._clock = clock
        self._content_id = content_id
        self._heartbeat = Heartbeat(self._renew, lease.total_seconds() / 2, name="claim renewal")

    def __enter__(self) -> Self:
        self._heartbeat.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._heartbeat.stop()

    def stop(self) -> Claim:
        self._heartbeat.stop()
        return self._claim

    def _renew(self) -> bool:
        renewed = self._ledger.renew(self._claim, self._clock() + self._lease)
        if renewed is None:
            # Another delivery took the blob over (our lease had lapsed): it may ship the blob too.
            log.warning(
                "content %s: the claim was taken over while this delivery still works on it",
                self._content_id,
                extra={"content_id": self._content_id},
            )
            return False
        self._claim = renewed
        return True
