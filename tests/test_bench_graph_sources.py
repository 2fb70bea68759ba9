"""bench/graph_sources.py, quick: the Graph sources' cost table is printed and the run passes its own checks.

The figures (calls, re-reads, storage transactions) are printed, never asserted; what is asserted is what
the bench exists to show at any size: a row per stream and phase, the overlap comparison, and PASS (every
record shipped once with an overlap at least the lateness), with exit code 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench.graph_sources import compare_ids

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_the_quick_run_prints_each_streams_cost_and_the_overlap_comparison_and_passes() -> None:
    child_env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
    done = subprocess.run(
        [sys.executable, "bench/graph_sources.py", "--quick"],
        cwd=REPO, env=child_env | {"PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for column in ("calls/day", "re-read", "storage/window"):
        assert column in out
    for phase in ("backfill", "steady O=15m"):
        for stream in ("Entra.SignIns", "Entra.DirectoryAudits", "Exchange.MessageTrace"):
            # phase, stream, windows, calls, ..., dup 0, missing 0
            row = re.search(rf"^{re.escape(phase)}\s+{re.escape(stream)}\s+(\d+)\s+(\d+)\s+.*$", out, re.MULTILINE)
            assert row is not None, f"no {phase} row for {stream}:\n{out}"
            windows, calls = int(row.group(1)), int(row.group(2))
            assert windows > 0
            assert calls >= windows, "a call per window at least"
    for overlap in (0, 15, 60):
        assert re.search(rf"^\s+{overlap} m\s+\d+", out, re.MULTILINE), f"no overlap {overlap} row:\n{out}"
    assert out.rstrip().endswith("result: PASS")


@pytest.mark.parametrize(
    ("received", "figures"),
    [
        (Counter({"a": 1, "b": 1}), (2, 0, 0)),
        (Counter({"a": 3, "b": 1, "x": 1}), (4, 1, 0)),
        (Counter({"a": 1}), (1, 0, 1)),
    ],
)
def test_records_are_compared_with_what_graph_holds_by_id(
    received: Counter[str], figures: tuple[int, int, int]
) -> None:
    """Shipped (with repeats), duplicated and missing ids are each counted: a breach cannot pass unseen."""
    assert compare_ids({"a", "b"}, received) == figures
