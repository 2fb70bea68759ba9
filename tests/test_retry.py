"""The retry rule: retryable errors only, Retry-After honoured, bounded by attempts and total time."""

from __future__ import annotations

import pytest

from o365collector.errors import ApiPermanentError, ApiTransientError
from o365collector.retry import RetryPolicy, parse_retry_after, retrying


class Flaky:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def run(policy: RetryPolicy, fn: Flaky, sleeps: list[float]) -> str:
    for attempt in retrying(policy, sleep=sleeps.append):
        with attempt:
            return fn()
    raise AssertionError("unreachable")


def test_retryable_errors_are_retried_until_success() -> None:
    sleeps: list[float] = []
    fn = Flaky([ApiTransientError("503"), ApiTransientError("AF429", code="AF429")])
    assert run(RetryPolicy(max_attempts=5, backoff_seconds=0.5, max_backoff_seconds=4), fn, sleeps) == "ok"
    assert fn.calls == 3
    assert len(sleeps) == 2
    assert all(0 <= s <= 4 for s in sleeps)


def test_retry_after_is_honoured() -> None:
    sleeps: list[float] = []
    fn = Flaky([ApiTransientError("throttled", retry_after=7.0)])
    run(RetryPolicy(max_attempts=3, max_seconds=60), fn, sleeps)
    assert sleeps == [7.0]


def test_permanent_errors_are_not_retried() -> None:
    fn = Flaky([ApiPermanentError("AF10001", code="AF10001")])
    with pytest.raises(ApiPermanentError):
        run(RetryPolicy(max_attempts=5), fn, [])
    assert fn.calls == 1


def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    fn = Flaky([ApiTransientError(f"fail {i}") for i in range(10)])
    with pytest.raises(ApiTransientError, match="fail 3"):
        run(RetryPolicy(max_attempts=4, backoff_seconds=0.01), fn, [])
    assert fn.calls == 4


def test_total_time_is_bounded_a_long_retry_after_stops_retrying() -> None:
    fn = Flaky([ApiTransientError("throttled", retry_after=3600.0), ApiTransientError("again")])
    with pytest.raises(ApiTransientError, match="throttled"):
        run(RetryPolicy(max_attempts=5, max_seconds=30), fn, [])
    assert fn.calls == 1


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("12", 12.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        ("Sun, 22 Nov 2026 00:00:30 GMT", 30.0),
        ("not a date", None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = 1795305600.0  # Sun, 22 Nov 2026 00:00:00 GMT
    assert parse_retry_after(header, now=now) == expected
