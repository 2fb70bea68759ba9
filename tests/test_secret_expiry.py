"""The client secret's written-down expiry (``O365_CLIENT_SECRET_EXPIRES``): ``status`` and the health function
warn ``O365_HEALTH_SECRET_EXPIRY_DAYS`` ahead of it (degraded, still 200) and report it once passed (503).

The health function is called in-process after a real listing run against the simulator and Azurite, with the
collector's clock moved to each side of the thresholds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import pytest

from o365collector import runtime
from o365collector.config import health_from_env
from o365collector.errors import ConfigError
from o365collector.health import judge, render_table
from o365collector.secret_expiry import expiry_verdict
from o365collector.simulator import Simulator
from o365collector.status_report import StatusReport
from tests.support import EnvFactory
from tests.test_health import call_health, generate, run_timer

EXPIRES = "2027-06-30"
EXPIRES_AT = dt.datetime(2027, 6, 30, tzinfo=dt.UTC)


@pytest.fixture
def configure(make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set the app settings with this expiry date and start the collector afresh (same queues and tables)."""
    env = make_env(O365_CONTENT_TYPES="Audit.Exchange")
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    def apply(expires: str) -> None:
        monkeypatch.setenv("O365_CLIENT_SECRET_EXPIRES", expires)
        runtime.reset_collector()

    yield apply
    runtime.reset_collector()


def test_health_warns_ahead_of_the_expiry_and_fails_once_it_passed(
    simulator: Simulator, configure: Callable[[str], None]
) -> None:
    today = dt.datetime.now(dt.UTC).date()
    configure("")
    generate(simulator, "Audit.Exchange")
    run_timer()
    assert call_health()[1]["status"] == "healthy"
    configure((today + dt.timedelta(days=45)).isoformat())
    far_status, far = call_health()
    assert (far_status, far["status"]) == (200, "healthy"), far
    near_day = (today + dt.timedelta(days=4)).isoformat()
    configure(near_day)
    near_status, near = call_health()
    assert (near_status, near["status"]) == (200, "degraded")
    (warning,) = near["degraded"]
    assert warning.startswith(f"the client secret expires in 3 days, on {near_day} (O365_CLIENT_SECRET_EXPIRES)")
    assert near["thresholds"]["secret_expiry_days"] == 30
    past_day = (today - dt.timedelta(days=1)).isoformat()
    configure(past_day)
    past_status, past = call_health()
    assert past_status == 503
    assert f"the client secret expired on {past_day} (O365_CLIENT_SECRET_EXPIRES)" in "\n".join(past["problems"])


@pytest.mark.parametrize(
    ("days_left", "warning_days", "expected"),
    [
        (31.0, 30, "healthy"),
        (29.5, 30, "degraded"),
        (0.5, 30, "degraded"),
        (0.5, 0, "healthy"),
        (-0.01, 0, "unhealthy"),
        (-400.0, 30, "unhealthy"),
    ],
)
def test_the_verdict_follows_the_threshold(days_left: float, warning_days: int, expected: str) -> None:
    env = {"O365_CLIENT_SECRET_EXPIRES": EXPIRES, "O365_HEALTH_SECRET_EXPIRY_DAYS": str(warning_days)}
    policy = health_from_env(env)
    now = EXPIRES_AT - dt.timedelta(days=days_left)
    report = StatusReport(now, policy, "o365-content", "o365-content-poison")
    judge(report, now)
    assert report.state == expected
    if expected != "healthy":
        assert "O365_CLIENT_SECRET_EXPIRES" in render_table(report)


def test_no_date_no_warning() -> None:
    policy = health_from_env({})
    assert policy.client_secret_expires is None
    report = StatusReport(EXPIRES_AT, policy, "q", "q-poison")
    judge(report, EXPIRES_AT)
    assert report.state == "healthy"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2027-06-30", EXPIRES_AT),
        ("2027-06-30T12:00:00Z", EXPIRES_AT + dt.timedelta(hours=12)),
        ("2027-06-30T12:00:00+02:00", EXPIRES_AT + dt.timedelta(hours=10)),
        ("2027-06-30T12:00:00", EXPIRES_AT + dt.timedelta(hours=12)),  # no offset: UTC, as the portal shows
    ],
)
def test_the_date_is_read_as_written(value: str, expected: dt.datetime) -> None:
    assert health_from_env({"O365_CLIENT_SECRET_EXPIRES": value}).client_secret_expires == expected


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"O365_CLIENT_SECRET_EXPIRES": "30/06/2027"}, "O365_CLIENT_SECRET_EXPIRES"),
        ({"O365_HEALTH_SECRET_EXPIRY_DAYS": "1000"}, "O365_HEALTH_SECRET_EXPIRY_DAYS"),
    ],
)
def test_a_bad_value_names_its_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        health_from_env(env)


@pytest.mark.parametrize(
    ("left", "warning_days", "expected"),
    [
        (dt.timedelta(0), 30, "expired on 2027-06-30"),  # the expiry instant itself: sign-in already fails
        (dt.timedelta(days=30), 30, "expires in 30 days"),  # exactly the warning: warned
        (dt.timedelta(days=30, seconds=1), 30, None),
        (dt.timedelta(days=2, hours=12), 30, "expires in 2 days"),
        (dt.timedelta(days=1, hours=12), 30, "expires in 1 day,"),
        (dt.timedelta(hours=12), 30, "expires today"),
    ],
)
def test_the_secret_verdict_at_each_edge(left: dt.timedelta, warning_days: int, expected: str | None) -> None:
    verdict = expiry_verdict(EXPIRES_AT, dt.timedelta(days=warning_days), EXPIRES_AT - left)
    if expected is None:
        assert verdict is None
        return
    assert verdict is not None
    assert verdict[0] is (left <= dt.timedelta(0))
    assert expected in verdict[1], verdict[1]
