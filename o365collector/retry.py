"""The one retry rule for our own HTTP calls (the API client and the HTTP-based sinks).

Built on tenacity: retry only ``RetryableError``; wait what the server asked (``Retry-After``) or
else an exponential backoff with full jitter; stop after a number of attempts or before the total
time would exceed its bound, then re-raise the last error so the caller can classify it.
Azure SDK clients keep their own azure-core retry; this is not wrapped around them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import tenacity

from .errors import RetryableError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6
    max_seconds: float = 120.0
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0


class _WaitRetryAfterOrBackoff(tenacity.wait.wait_base):
    def __init__(self, policy: RetryPolicy) -> None:
        self._backoff = tenacity.wait_random_exponential(
            multiplier=policy.backoff_seconds, max=policy.max_backoff_seconds
        )

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, RetryableError) and error.retry_after is not None:
            return max(0.0, error.retry_after)
        return float(self._backoff(retry_state))


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    sleep = retry_state.next_action.sleep if retry_state.next_action else 0.0
    log.debug("attempt %d failed (%s); retrying in %.2fs", retry_state.attempt_number, error, sleep)


def retrying(
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[BaseException], None] | None = None,
) -> tenacity.Retrying:
    """A tenacity ``Retrying`` applying ``policy``; ``sleep`` is injectable so tests need no waiting."""

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        _log_retry(retry_state)
        if on_retry is not None and retry_state.outcome is not None:
            error = retry_state.outcome.exception()
            if error is not None:
                on_retry(error)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(RetryableError),
        wait=_WaitRetryAfterOrBackoff(policy),
        stop=tenacity.stop_after_attempt(policy.max_attempts) | tenacity.stop_before_delay(policy.max_seconds),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
