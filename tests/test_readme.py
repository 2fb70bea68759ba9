"""The README's tables name the tests that prove its promises: every test they name must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `tests/test_x.py::name`, optionally followed by `, `::other`` naming more tests of the same file.
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`((?:, `::\w+`)*)")


def test_every_test_the_readme_names_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    references = REFERENCE.findall(readme)
    assert len(references) >= 20, "the promises table is gone or no longer names its tests"
    missing = []
    for path, first, more in references:
        source = ROOT / path
        if not source.exists():
            missing.append(path)
            continue
        text = source.read_text()
        for name in ([first] if first else []) + re.findall(r"::(\w+)", more):
            if not re.search(rf"^def {name}\(", text, re.MULTILINE):
                missing.append(f"{path}::{name}")
    assert missing == []
