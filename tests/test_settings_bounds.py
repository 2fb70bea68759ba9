"""Settings that used to pass start-up and fail later are refused at start-up, all of them at once.

Huge integers (``OverflowError`` in ``timedelta``), NaN and infinity (NaN compares false with every
bound, so ``nan`` requests per minute turned pacing off), leases and visibility timeouts over the
queue's 7-day limit, a port of 99999, an unchecked timer schedule, a start time in the future.
"""

from __future__ import annotations

import ast
import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from o365collector import runtime
from o365collector.config import DEFAULT_SCHEDULE, Settings, schedule_from_env
from o365collector.envparse import InvalidSettingsError, get_float, get_int
from o365collector.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
BASE = {
    "O365_TENANT_ID": "11111111-2222-4333-8444-555555555555",
    "O365_CLIENT_ID": "66666666-7777-4888-9999-aaaaaaaaaaaa",
    "O365_CLIENT_SECRET": "very-secret-value",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
    "SINK_TYPE": "file,http,splunk,syslog,elasticsearch",
    "SINK_FILE_DIR": "/tmp/o365-out",
    "SINK_URL": "https://127.0.0.1:9/ingest",
    "SINK_SPLUNK_URL": "https://127.0.0.1:9",
    "SINK_SPLUNK_TOKEN": "5f1c0c56-8f3b-4c1e-9d55-7f6a3c1b2e90",
    "SINK_SYSLOG_HOST": "127.0.0.1",
    "SINK_ELASTICSEARCH_URL": "https://127.0.0.1:9",
    "SINK_ELASTICSEARCH_API_KEY": "es-api-key-value",
    "SINK_ELASTICSEARCH_INDEX": "logs-o365-default",
}
HUGE = "9" * 30


def parse(**overrides: str) -> Settings:
    return Settings.from_env(BASE | overrides, now=NOW)


def test_the_base_settings_parse() -> None:
    assert parse().list_schedule == DEFAULT_SCHEDULE


@pytest.mark.parametrize(
    ("setting", "value", "fragment"),
    [
        # Huge integers: timedelta(seconds=10**30) raised OverflowError long after start-up.
        ("O365_LIST_BUDGET_SECONDS", HUGE, "above the maximum"),
        ("O365_CLAIM_LEASE_SECONDS", HUGE, "above the maximum"),
        ("O365_HEALTH_LOST_DATA_HOURS", HUGE, "above the maximum"),
        ("O365_HEALTH_MAX_THROTTLED", HUGE, "above the maximum"),
        ("O365_HEALTH_MAX_POISON", HUGE, "above the maximum"),
        # The queue refuses visibility timeouts over 7 days: the runner would fail at its first message.
        ("O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS", str(7 * 24 * 3600 + 1), "above the maximum 604800"),
        ("O365_CLAIM_LEASE_SECONDS", str(7 * 24 * 3600 + 1), "above the maximum 604800"),
        # NaN passed `value < minimum`; nan requests per minute turned pacing off.
        ("O365_MAX_REQUESTS_PER_MINUTE", "nan", "not a finite number"),
        ("O365_HTTP_TIMEOUT_SECONDS", "inf", "not a finite number"),
        ("O365_RETRY_MAX_SECONDS", "-inf", "not a finite number"),
        ("O365_RETRY_BACKOFF_SECONDS", "1e400", "not a finite number"),
        ("O365_HTTP_TIMEOUT_SECONDS", "86400", "above the maximum 600"),
        ("O365_RETRY_BACKOFF_SECONDS", "3600", "above the maximum 60"),
        ("O365_MAX_REQUESTS_PER_MINUTE", "1e9", "above the maximum"),
        # A port beyond 65535 only failed at the first request.
        ("O365_API_URL", "https://127.0.0.1:99999", "invalid port"),
        ("O365_AUTHORITY_HOST", "https://login.example.com:0", "invalid port"),
        # Sinks: every float has a ceiling and refuses NaN/inf too.
        ("SINK_HTTP_TIMEOUT_SECONDS", "nan", "not a finite number"),
        ("SINK_HTTP_MAX_RETRY_SECONDS", "inf", "not a finite number"),
        ("SINK_SPLUNK_ACK_TIMEOUT_SECONDS", "1e12", "above the maximum"),
        ("SINK_SPLUNK_TIMEOUT_SECONDS", "nan", "not a finite number"),
        ("SINK_SYSLOG_MAX_IDLE_SECONDS", "inf", "not a finite number"),
        ("SINK_SYSLOG_SEND_TIMEOUT_SECONDS", "1e9", "above the maximum"),
        ("SINK_ELASTICSEARCH_MAX_RETRY_SECONDS", "nan", "not a finite number"),
        # The timer schedule: six NCRONTAB fields, and no TimeSpan on Flex Consumption.
        ("O365_LIST_SCHEDULE", "*/5 * * * *", "has 5 field(s)"),
        ("O365_LIST_SCHEDULE", "0 61 * * * *", "minute field '61'"),
        ("O365_LIST_SCHEDULE", "0 */5 * * * Funday", "day-of-week field"),
        ("O365_LIST_SCHEDULE", "00:05:00", "TimeSpan"),
        # A start in the future collected nothing while every run reported success.
        ("O365_START_TIME", "2027-01-01T00:00:00Z", "is in the future"),
    ],
)
def test_out_of_range_settings_are_refused_at_start_up_naming_the_setting(
    setting: str, value: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(**{setting: value})
    assert caught.value.setting == setting
    assert str(caught.value).startswith(f"{setting}: ")
    assert fragment in str(caught.value)


def test_sink_floats_are_refused_too_when_only_that_sink_is_configured() -> None:
    with pytest.raises(ConfigError, match="SINK_LOGANALYTICS_RETRY_BACKOFF_SECONDS: 'nan' is not a finite number"):
        Settings.from_env(
            BASE
            | {
                "SINK_TYPE": "loganalytics",
                "SINK_LOGANALYTICS_ENDPOINT": "https://dce.westeurope-1.ingest.monitor.azure.com",
                "SINK_LOGANALYTICS_DCR_ID": "dcr-00000000000000000000000000000000",
                "SINK_LOGANALYTICS_STREAM": "Custom-O365Audit_CL",
                "SINK_LOGANALYTICS_RETRY_BACKOFF_SECONDS": "nan",
            },
            now=NOW,
        )


def test_a_start_time_is_refused_only_beyond_the_clock_skew() -> None:
    near = (NOW + dt.timedelta(minutes=4)).isoformat()
    assert parse(O365_START_TIME=near).tenants[0].start_time == NOW + dt.timedelta(minutes=4)
    past = parse(O365_START_TIME="2026-11-01T00:00:00Z").tenants[0].start_time
    assert past == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    with pytest.raises(ConfigError, match="O365_START_TIME: 2026-12-05T12:06:00Z is in the future"):
        parse(O365_START_TIME=(NOW + dt.timedelta(minutes=6)).isoformat())


def test_a_future_start_time_is_refused_also_when_tenants_live_in_a_table() -> None:
    with pytest.raises(ConfigError, match="O365_START_TIME: 2027-01-01T00:00:00Z is in the future"):
        parse(O365_TENANT_TABLE="o365tenants", O365_START_TIME="2027-01-01T00:00:00Z")


def test_the_schedule_is_checked_field_by_field() -> None:
    valid = [
        DEFAULT_SCHEDULE, "0 0 * * * *", "0 30 9 * Jan Mon",
        "0 0 9-17 * * 1-5", "*/30 * * * * *", "0 0,30 * * * *",
    ]
    for schedule in valid:
        assert schedule_from_env({"O365_LIST_SCHEDULE": schedule}) == schedule
    for schedule in ["0 0 24 * * *", "0 0 * 0 * *", "0 0 * * 13 *", "0 0 * * * 7", "0 */0 * * * *", "0 5-1 * * * *"]:
        with pytest.raises(ConfigError, match=r"O365_LIST_SCHEDULE: .* field"):
            parse(O365_LIST_SCHEDULE=schedule)


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400"])
def test_get_float_refuses_nan_and_infinity(text: str) -> None:
    with pytest.raises(ConfigError, match="not a finite number"):
        get_float({"X": text}, "X", 1.0, minimum=-10.0, maximum=10.0)


def test_get_float_and_get_int_enforce_the_maximum() -> None:
    with pytest.raises(ConfigError, match="X: 11 is above the maximum 10"):
        get_float({"X": "11"}, "X", 1.0, maximum=10.0)
    with pytest.raises(ConfigError, match=r"X: 9999999999999999999999999999999999999\.\.\. is above the maximum 10"):
        get_int({"X": "9" * 4000}, "X", 1, minimum=0, maximum=10)  # not echoed whole


def test_every_bad_setting_is_reported_at_once() -> None:
    with pytest.raises(InvalidSettingsError) as caught:
        parse(
            O365_WINDOW_MINUTES=HUGE,
            O365_MAX_REQUESTS_PER_MINUTE="nan",
            O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS="999999999",
            O365_LIST_SCHEDULE="every 5 minutes",
            O365_CLIENT_ID="abc",
            O365_CONTENT_QUEUE="Bad_Queue",
            SINK_HTTP_TIMEOUT_SECONDS="inf",
            SINK_SPLUNK_MAX_RETRY_SECONDS="nan",
        )
    named = [err.setting for err in caught.value.errors]
    assert sorted(named) == sorted(
        [
            "O365_WINDOW_MINUTES",
            "O365_MAX_REQUESTS_PER_MINUTE",
            "O365_QUEUE_VISIBILITY_TIMEOUT_SECONDS",
            "O365_LIST_SCHEDULE",
            "O365_CLIENT_ID",
            "O365_CONTENT_QUEUE",
            "SINK_HTTP_TIMEOUT_SECONDS",
            "SINK_SPLUNK_MAX_RETRY_SECONDS",
        ]
    )
    lines = str(caught.value).splitlines()
    assert len(lines) == len(named)
    assert all(line.startswith(f"{err.setting}: ") for line, err in zip(lines, caught.value.errors, strict=True))


def test_run_once_prints_every_bad_setting_on_its_own_line_and_exits_2() -> None:
    env = {"PATH": "/usr/bin:/bin"} | BASE | {
        "O365_MAX_REQUESTS_PER_MINUTE": "nan",
        "O365_LIST_BUDGET_SECONDS": HUGE,
        "O365_API_URL": "https://127.0.0.1:99999",
        "SINK_SYSLOG_MAX_IDLE_SECONDS": "inf",
    }  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "o365collector", "run", "--once"], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert sorted(errors) == sorted(
        [
            "error: O365_MAX_REQUESTS_PER_MINUTE: 'nan' is not a finite number",
            f"error: O365_LIST_BUDGET_SECONDS: {HUGE} is above the maximum 3600",
            "error: O365_API_URL: has an invalid port (expected https://host[:port] with a port of 1-65535)",
            "error: SINK_SYSLOG_MAX_IDLE_SECONDS: 'inf' is not a finite number",
        ]
    )
    assert "Traceback" not in done.stderr


def test_every_numeric_setting_in_the_package_has_a_minimum_and_a_maximum() -> None:
    """A new ``get_int``/``get_float`` call without bounds is the next OverflowError or NaN waiting to happen."""
    unbounded = []
    for path in sorted((ROOT / "o365collector").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name not in {"get_int", "get_float"} or path.name == "envparse.py":
                continue
            keywords = {k.arg for k in node.keywords}
            needed = {"maximum"} if name == "get_float" else {"minimum", "maximum"}  # get_float's minimum defaults to 0
            if not needed <= keywords:
                unbounded.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert unbounded == []


def test_a_future_start_time_turns_the_health_endpoint_red_instead_of_collecting_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).replace(microsecond=0)
    for key, value in (BASE | {"O365_START_TIME": future.isoformat()}).items():
        monkeypatch.setenv(key, value)
    runtime.reset_collector()
    try:
        status, body = runtime.health()
    finally:
        runtime.reset_collector()
    assert status == 503
    assert "O365_START_TIME" in body.decode()
    assert "is in the future" in body.decode()


def test_a_message_key_too_short_to_resist_guessing_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(BASE | {"O365_MESSAGE_KEY": "short-key-0123456789"}, now=NOW)
    assert "O365_MESSAGE_KEY" in str(caught.value)
    assert "short-key" not in str(caught.value)
    assert Settings.from_env(BASE | {"O365_MESSAGE_KEY": "k" * 32}, now=NOW).message_key is not None


def test_an_unresolved_key_vault_secret_is_reported_with_the_other_bad_settings() -> None:
    env = BASE | {
        "O365_CLIENT_SECRET": "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/cs/)",
        "O365_TENANT_ID": "not-a-guid",
    }
    with pytest.raises(InvalidSettingsError) as caught:
        Settings.from_env(env, now=NOW)
    settings = [error.setting for error in caught.value.errors]
    assert settings.count("O365_CLIENT_SECRET") == 1
    assert "O365_TENANT_ID" in settings
    assert "Key Vault reference not resolved" in str(caught.value)
