"""The command line explains itself: every command's --help renders as plain text, shows each option's
default, the version is one flag away, and the README's command table lists every command and flag.

The commands and flags are read from the parser itself, so a flag added later without its README row,
or with a help text in markdown, fails here.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import o365collector
from o365collector import cli

ROOT = Path(__file__).resolve().parents[1]
PROGS = ("python -m o365collector", "o365collector")


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser under ``parser`` with its command path: (), ("run",), ("tenants", "add"), ..."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, (*path, name))


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


PARSER = cli.build_parser(prog="python -m o365collector")
COMMANDS = list(walk(PARSER))


def render_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    """What `python -m o365collector ... --help` prints, through main() as a user runs it."""
    with pytest.raises(SystemExit) as exited:
        cli.main([*path, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def help_entry(text: str, action: argparse.Action) -> str:
    """The lines of ``text`` that describe ``action``, joined into one line."""
    lines = text.splitlines()
    first = next(
        i for i, line in enumerate(lines) if re.match(rf"\s+{re.escape(', '.join(action.option_strings))}\b", line)
    )
    entry = [lines[first]]
    for line in lines[first + 1 :]:
        if not line.startswith(" " * 6) or line.lstrip().startswith("-"):
            break
        entry.append(line)
    return " ".join(" ".join(entry).split())


def test_every_command_is_walked() -> None:
    paths = {" ".join(p) for p, _ in COMMANDS}
    assert {"", "run", "subscriptions", "check", "status", "replay-poison", "simulate", "tenants", "demo"} <= paths
    assert {"tenants add", "tenants list", "tenants remove"} <= paths


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "top")
def test_help_is_plain_text_and_shows_every_default(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    text = render_help(path, capsys)
    assert text.startswith(f"usage: python -m o365collector {' '.join(path)}".rstrip())
    for markup in ("`", "*", "**", "__"):
        assert markup not in text, f"markdown {markup!r} in the help of {' '.join(path) or 'the top level'}"
    parser = dict(COMMANDS)[path]
    assert parser.description, "each command's --help says what it does"
    for action in options(parser):
        if not cli.shows_default(action):
            continue
        entry = help_entry(text, action)
        assert "default" in entry.lower(), f"{action.option_strings[0]} does not show its default: {entry}"
        if "default" not in (action.help or "").lower():
            assert f"(default: {action.default})" in entry or f"default: {action.default}" in entry, entry


def test_help_formatter_shows_zero_defaults_and_hides_flag_defaults() -> None:
    parser = cli.Parser(prog="x")
    parser.add_argument("--rate", type=float, default=0.0, help="a rate")
    parser.add_argument("--flag", action="store_true", help="a flag")
    parser.add_argument("--said", default=5, help="five (default 5)")
    parser.add_argument("--bare", default="b")
    parser.add_argument("--many", action="append", default=[], help="repeatable")
    text = " ".join(parser.format_help().split())
    assert "a rate (default: 0.0)" in text
    assert "a flag (default" not in text
    assert "five (default 5) (default" not in text
    assert "--bare BARE default: b" in text
    assert "repeatable (default" not in text


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"python -m o365collector {o365collector.__version__}"


def test_the_console_script_calls_itself_o365collector(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/venv/bin/o365collector", "--help"])
    assert cli.build_parser().prog == "o365collector"
    monkeypatch.setattr(sys, "argv", ["/src/o365collector/__main__.py"])
    assert cli.build_parser().prog == "python -m o365collector"


@pytest.mark.parametrize(
    ("module", "command"),
    [("o365collector.simulator.cli", ["simulate", "--port", "8443", "--days", "1"]), ("o365collector.demo", ["demo"])],
)
def test_left_out_modules_make_their_command_say_so(
    module: str, command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As in the deployment zip: the import fails, and the command explains instead of a usage error or traceback."""
    monkeypatch.setitem(sys.modules, module, None)  # `import` now raises ModuleNotFoundError naming it
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert f"'{command[0]}' is not part of this install" in err
    assert "Traceback" not in err


def test_other_missing_modules_are_not_mistaken_for_left_out_ones() -> None:
    assert cli.left_out(ModuleNotFoundError("x", name="o365collector.simulator"))
    assert cli.left_out(ModuleNotFoundError("x", name="o365collector.demo"))
    assert not cli.left_out(ModuleNotFoundError("x", name="orjson"))
    assert not cli.left_out(ModuleNotFoundError("x", name=None))


# README's command table


def readme_rows(readme: str) -> list[list[str]]:
    """The tokens of each row's first cell in the table under "## Running it", program name removed."""
    section = readme.split("\n## Running it\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cell = re.split(r"(?<!\\)\|", line)[1].strip().strip("`").replace("\\|", "|")
        for prog in PROGS:
            if cell.startswith(prog + " ") or cell == prog:
                tokens = [t for t in re.split(r"[\s\[\]|{},=`]+", cell[len(prog) :]) if t]
                rows.append(tokens)
                break
    return rows


def missing_from_table(rows: list[list[str]]) -> list[str]:
    """Each command path and each flag or choice that no row of its command names."""
    missing = []
    for path, parser in COMMANDS:
        mine = [r for r in rows if not path or (r[:1] == [path[0]] and all(p in r for p in path[1:]))]
        if path and not mine:
            missing.append(" ".join(path))
            continue
        words = {t for r in mine for t in r}
        for action in options(parser):
            if not any(flag in words for flag in action.option_strings):
                missing.append(f"{' '.join(path)} {action.option_strings[-1]}".strip())
        for action in parser._actions:
            if not action.option_strings and action.choices and not isinstance(action, argparse._SubParsersAction):
                missing += [f"{' '.join(path)} {c}" for c in action.choices if c not in words]
    return missing


def test_the_table_check_catches_a_missing_flag_and_command() -> None:
    rows = [["run", "--once"]]
    missing = missing_from_table(rows)
    assert "run --interval" in missing
    assert "check" in missing
    assert "run --once" not in missing


def test_readme_command_table_lists_every_command_and_flag() -> None:
    rows = readme_rows((ROOT / "README.md").read_text())
    assert rows, 'no command table under "## Running it"'
    assert missing_from_table(rows) == []
