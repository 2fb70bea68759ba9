"""``subscriptions list|start|stop`` against the simulator: what each prints, what it changes, its exit code."""

from __future__ import annotations

import pytest

from o365collector import cli
from o365collector.simulator import Simulator
from tests.support import TENANT, EnvFactory

TID = TENANT.tenant_id


@pytest.fixture
def env(make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in make_env(O365_CONTENT_TYPES="Audit.Exchange,DLP.All").items():
        monkeypatch.setenv(key, value)


def states(simulator: Simulator) -> dict[str, str]:
    return {str(s["contentType"]): str(s["status"]) for s in simulator.subscriptions(TID)}


def test_list_shows_each_configured_type_and_how_to_start_a_disabled_one(
    simulator: Simulator, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    simulator.disable_subscription(TID, "DLP.All")
    assert cli.main(["subscriptions", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{TID} Audit.Exchange: enabled"
    assert lines[1] == (
        f"{TID} DLP.All: disabled: start it with `python -m o365collector subscriptions start --content-type DLP.All`"
    )
    # subscribed but not configured here: listed, and said so
    assert f"{TID} Audit.General: enabled (not collected by this deployment)" in lines


def test_start_and_stop_change_the_subscription_and_say_what_it_means(
    simulator: Simulator, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["subscriptions", "stop", "--content-type", "audit.exchange", "--yes"]) == 0
    assert states(simulator)["Audit.Exchange"] == "disabled"
    out = capsys.readouterr().out
    assert out.startswith(f"{TID} Audit.Exchange: stopped;")
    assert "can never be retrieved" in out
    assert cli.main(["subscriptions", "start"]) == 0  # all configured types; DLP.All is already enabled
    assert states(simulator)["Audit.Exchange"] == "enabled"
    assert capsys.readouterr().out.splitlines() == [f"{TID} Audit.Exchange: enabled", f"{TID} DLP.All: enabled"]


def test_an_unknown_content_type_is_refused_before_any_call(
    simulator: Simulator, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = simulator.stats.requests_by_route.copy()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["subscriptions", "start", "--content-type", "Audit.Foo"])
    assert exit_info.value.code == 2
    assert "unknown content type 'Audit.Foo'" in capsys.readouterr().err
    assert simulator.stats.requests_by_route == requests


def test_a_refused_call_is_reported_per_type_and_fails_the_command(
    simulator: Simulator, make_env: EnvFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in make_env(O365_CLIENT_SECRET="wrong").items():
        monkeypatch.setenv(key, value)
    assert cli.main(["subscriptions", "start", "--content-type", "Audit.Exchange"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{TID} Audit.Exchange: start failed: AADSTS7000215")


class _Stdin:
    """A stand-in for ``sys.stdin`` that is (or is not) a terminal."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_stop_without_a_terminal_and_without_yes_is_refused_and_stops_nothing(
    simulator: Simulator, env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", _Stdin(tty=False))
    assert cli.main(["subscriptions", "stop", "--content-type", "Audit.Exchange"]) == 2
    assert states(simulator)["Audit.Exchange"] == "enabled"
    err = capsys.readouterr().err
    assert "can never be retrieved" in err
    assert "pass --yes" in err


@pytest.mark.parametrize(("answer", "code", "state"), [("n", 1, "enabled"), ("", 1, "enabled"), ("y", 0, "disabled")])
def test_stop_at_a_terminal_asks_and_only_yes_stops(
    simulator: Simulator,
    env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    answer: str,
    code: int,
    state: str,
) -> None:
    asked: list[str] = []
    monkeypatch.setattr("sys.stdin", _Stdin(tty=True))
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or answer)
    assert cli.main(["subscriptions", "stop", "--content-type", "Audit.Exchange"]) == code
    assert states(simulator)["Audit.Exchange"] == state
    assert len(asked) == 1
    assert "Stop Audit.Exchange for 1 tenant(s)?" in asked[0]
