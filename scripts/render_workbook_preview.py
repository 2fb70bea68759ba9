"""Draw docs/images/workbook.png: what the template's workbook shows, computed from the demo's own log lines.

There is no Azure here, so this is not a portal screenshot. The script runs ``python -m o365collector demo``
(Azurite + simulator + collector, on loopback), keeps the summary lines it logs, evaluates each workbook
query's aggregation in Python over them (one function per query item of ``variables('workbookItems')`` in
infra/azuredeploy.json, written to mirror its KQL), and draws one panel per item with the item's title.

The demo is one short run, so the time bins are seconds wide instead of the workbook's 15 minutes.

    .venv/bin/python scripts/render_workbook_preview.py               # runs the demo (about 20 s)
    .venv/bin/python scripts/render_workbook_preview.py --log FILE    # a saved demo log (its stderr)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: write the file only
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "azuredeploy.json"
OUTPUT = ROOT / "docs" / "images" / "workbook.png"
# The demo's log format: "%(asctime)s %(levelname)s %(name)s: %(message)s".
LOG_LINE = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}) (\w+) ([\w.]+): (.*)$")
# Application Insights' severityLevel for Python's levels.
SEVERITY = {"DEBUG": 0, "INFO": 1, "WARNING": 2, "ERROR": 3, "CRITICAL": 4}
POISONED = "message moved to poison queue"
HOST_POISONED = "Message has reached MaxDequeueCount"


@dataclass(frozen=True)
class Trace:
    """One row of the ``traces`` table, as far as the queries read it."""

    timestamp: dt.datetime
    severity: int
    message: str

    def starts(self, *prefixes: str) -> bool:
        return any(self.message.startswith(p) for p in prefixes)

    @property
    def run(self) -> dict[str, Any]:
        """``parse_json(substring(message, indexof(message, "{")))``; {} when the line has no JSON."""
        brace = self.message.find("{")
        if brace < 0:
            return {}
        try:
            value = json.loads(self.message[brace:])
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass
class Table:
    columns: list[str]
    rows: list[list[object]]


Series = dict[str, dict[dt.datetime, float]]  # series name → time bin → value
Result = Table | Series


def read_traces(lines: Iterable[str]) -> list[Trace]:
    traces = []
    for line in lines:
        match = LOG_LINE.match(line.rstrip("\n"))
        if match:
            stamp = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            traces.append(Trace(stamp, SEVERITY.get(match.group(2), 1), match.group(4)))
    return traces


def num(value: object) -> float:
    """``toint``/``todouble`` with null as 0, as ``sum()`` skips nulls."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def stream(run: dict[str, Any]) -> str:
    """``strcat(tenant_id, " ", content_type)``, the tenant shortened so the legend fits."""
    return f"{str(run.get('tenant_id', ''))[:8]}… {run.get('content_type', '')}"


class Panels:
    """One method per workbook query item; each mirrors that item's KQL."""

    def __init__(self, traces: list[Trace], bin_seconds: float) -> None:
        self.traces = traces
        self.bin_seconds = bin_seconds
        start = min((t.timestamp for t in traces), default=dt.datetime(2000, 1, 1))
        self.origin = start.replace(microsecond=0)

    def bin(self, stamp: dt.datetime) -> dt.datetime:
        steps = (stamp - self.origin).total_seconds() // self.bin_seconds
        return self.origin + dt.timedelta(seconds=steps * self.bin_seconds)

    def series(self, lines: Iterable[Trace], name: Callable[[Trace], str], value: Callable[[Trace], float],
               combine: Callable[[float, float], float]) -> Series:
        out: Series = defaultdict(dict)
        for t in lines:
            key, when = name(t), self.bin(t.timestamp)
            out[key][when] = combine(out[key][when], value(t)) if when in out[key] else value(t)
        return dict(out)

    def streams(self) -> Table:
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        prefixes = ("lister run complete", "lister run failed", "fetch run complete", "collector run complete",
                    "content expired before delivery")
        for t in (t for t in self.traces if t.starts(*prefixes)):
            run, listing = t.run, t.starts("lister run")
            row = rows.setdefault((str(run.get("tenant_id")), str(run.get("content_type"))), {
                "records": 0.0, "blobs_shipped": 0.0, "max_lag_minutes": None, "throttled": 0.0,
                "failures": 0.0, "blobs_lost": 0, "last_listed": None})
            if not listing:
                row["records"] += num(run.get("records"))
                row["blobs_shipped"] += num(run.get("blobs_shipped"))
            if t.starts("lister run complete"):
                lag = num(run.get("lag_seconds")) / 60
                row["max_lag_minutes"] = round(max(lag, row["max_lag_minutes"] or 0.0), 1)
                row["last_listed"] = max(t.timestamp, row["last_listed"] or t.timestamp)
            if listing:
                row["throttled"] += num(run.get("throttled"))
            row["failures"] += 1 if t.starts("lister run failed") else 0
            row["failures"] += num(run.get("failures")) if t.starts("collector run complete") else 0
            row["blobs_lost"] += 1 if t.starts("content expired before delivery") else 0
        columns = ["tenant_id", "content_type", "records", "blobs_shipped", "max_lag_minutes", "throttled",
                   "failures", "blobs_lost", "last_listed"]
        return Table(columns, [[tenant[:8] + "…", ct, *(_cell(row[c]) for c in columns[2:])]
                               for (tenant, ct), row in sorted(rows.items())])

    def records(self) -> Series:
        lines = [t for t in self.traces if t.starts("fetch run complete", "collector run complete")]
        return self.series(lines, lambda t: stream(t.run), lambda t: num(t.run.get("records")), lambda a, b: a + b)

    def lag(self) -> Series:
        lines = [t for t in self.traces if t.starts("lister run complete")]
        return self.series(lines, lambda t: stream(t.run), lambda t: round(num(t.run.get("lag_seconds")) / 60, 1), max)

    def throttling(self) -> Series:
        lines = [t for t in self.traces if t.starts("lister run complete", "lister run failed")]
        return self.series(lines, lambda t: stream(t.run), lambda t: num(t.run.get("throttled")), lambda a, b: a + b)

    def runs(self) -> Series:
        lines = [t for t in self.traces if t.starts("lister run summary")]
        out: Series = {}
        columns: list[tuple[str, str | None, Callable[[float, float], float]]] = [
            ("runs", None, _add),
            ("failed_streams", "failed", _add),
            ("throttled", "throttled", _add),
            ("windows_left", "windows_left", max),
            ("late_blobs", "late_blobs", _add),
        ]
        for column, field, combine in columns:
            out.update(self.series(lines, _named(column), _field_or_one(field), combine))
        return out

    def failures(self) -> Table:
        groups: dict[tuple[str, str, str, str], list[Any]] = {}
        for t in (t for t in self.traces if t.starts("lister run failed", "collector run complete")):
            run = t.run
            count = 1.0 if t.starts("lister run failed") else num(run.get("failures"))
            if count <= 0:
                continue
            side = "listing" if t.starts("lister") else "shipping"
            key = (side, str(run.get("tenant_id"))[:8] + "…", str(run.get("content_type")), str(run.get("error_code")))
            group = groups.setdefault(key, [0.0, t.timestamp, str(run.get("error"))[:40]])
            group[0] += count
            group[1] = max(group[1], t.timestamp)
        return Table(["side", "tenant_id", "content_type", "error_code", "failures", "last_seen", "example"],
                     [[*key, _cell(v[0]), _cell(v[1]), v[2]] for key, v in groups.items()])

    def poisoned(self) -> Series:
        lines = [t for t in self.traces if t.starts(POISONED) or (t.starts(HOST_POISONED)
                                                                 and "'o365-content-poison'" in t.message)]
        return self.series(lines, lambda t: "collector" if t.starts(POISONED) else "Functions host",
                           lambda t: 1.0, lambda a, b: a + b)

    def lost(self) -> Table:
        groups: dict[tuple[str, str], list[Any]] = {}
        for t in (t for t in self.traces if t.starts("content expired before delivery")):
            run = t.run
            key = (str(run.get("tenant_id"))[:8] + "…", str(run.get("content_type")))
            group = groups.setdefault(key, [0, t.timestamp, t.timestamp, str(run.get("content_id"))[:24]])
            group[0] += 1
            group[1], group[2] = min(group[1], t.timestamp), max(group[2], t.timestamp)
        return Table(["tenant_id", "content_type", "blobs_lost", "first_seen", "last_seen", "example_content_id"],
                     [[*key, v[0], _cell(v[1]), _cell(v[2]), v[3]] for key, v in groups.items()])


# The workbook's query items, by name, and how each is evaluated (tests/test_infra_workbook.py keeps the keys
# equal to the template's query items, so a new query needs a panel here).
PANELS: dict[str, Callable[[Panels], Result]] = {
    "streams": Panels.streams,
    "records": Panels.records,
    "lag": Panels.lag,
    "throttling": Panels.throttling,
    "runs": Panels.runs,
    "failures": Panels.failures,
    "poisoned": Panels.poisoned,
    "lost": Panels.lost,
}


def _add(a: float, b: float) -> float:
    return a + b


def _named(name: str) -> Callable[[Trace], str]:
    return lambda _t: name


def _days(when: dt.datetime) -> float:
    """matplotlib's date unit: days since its default epoch, 1970-01-01."""
    return (when - dt.datetime(1970, 1, 1)).total_seconds() / 86400


def _field_or_one(field: str | None) -> Callable[[Trace], float]:
    """The run's numeric field, or 1 per line (``count()``) when there is no field."""
    return (lambda t: num(t.run.get(field))) if field else (lambda t: 1.0)


def _cell(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.strftime("%H:%M:%S")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return "" if value is None else value


def workbook_items() -> list[dict[str, Any]]:
    return [i for i in json.loads(TEMPLATE.read_text())["variables"]["workbookItems"] if i["type"] == 3]


def draw(ax: Axes, item: dict[str, Any], result: Result, bin_seconds: float) -> None:
    content = item["content"]
    ax.set_title(content["title"], loc="left", fontsize=10, fontweight="bold")
    empty = not result.rows if isinstance(result, Table) else not result
    if empty:
        ax.axis("off")
        ax.text(0.5, 0.5, "no rows: none in the demo run", ha="center", va="center", color="#666666")
        return
    if isinstance(result, Table):
        ax.axis("off")
        table = ax.table(cellText=[[str(c) for c in row] for row in result.rows], colLabels=result.columns,
                         loc="upper center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        table.scale(1, 1.3)
        return
    bins = sorted({when for points in result.values() for when in points})
    if len(bins) == 1:
        # One time bin (the demo is one run): a bar per series reads better than lone points.
        names = sorted(result)
        ax.bar(range(len(names)), [result[n][bins[0]] for n in names], color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), [n.split(" ")[-1] for n in names], rotation=15, fontsize=7)
        ax.set_xlabel(f"at {bins[0]:%H:%M:%S}", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="y")
        return
    width = bin_seconds / 86400 * 0.8 / max(1, len(result))  # in days, matplotlib's date unit
    for index, (name, points) in enumerate(sorted(result.items())):
        times = sorted(points)
        values = [points[when] for when in times]
        if content["visualization"] == "barchart":
            ax.bar([_days(when) + width * index for when in times], values, width=width, label=name, align="edge")
        else:
            ax.plot([_days(when) for when in times], values, marker="o", label=name)
    ax.xaxis_date()
    ax.legend(fontsize=6, loc="upper left")
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


def render(traces: list[Trace], output: Path) -> None:
    span = (max(t.timestamp for t in traces) - min(t.timestamp for t in traces)).total_seconds() if traces else 0
    bin_seconds = max(1.0, round(span / 8))
    panels = Panels(traces, bin_seconds)
    items = {item["name"]: item for item in workbook_items()}
    # The workbook's layout: full-width tables first and last, the charts two by two between them.
    layout = [["streams"], ["records", "lag"], ["throttling", "runs"], ["failures", "poisoned"], ["lost"]]
    figure = plt.figure(figsize=(14, 15))
    grid = figure.add_gridspec(len(layout), 2, hspace=0.6, wspace=0.15, height_ratios=[0.8, 1, 1, 0.6, 0.45])
    for row, names in enumerate(layout):
        for col, name in enumerate(names):
            ax = figure.add_subplot(grid[row, :] if len(names) == 1 else grid[row, col])
            draw(ax, items[name], PANELS[name](panels), bin_seconds)
    figure.suptitle("Office 365 collector workbook: a preview rendered from the demo's own log lines "
                    f"(not a portal screenshot; {bin_seconds:g} s bins instead of 15 min)", fontsize=12)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=80, bbox_inches="tight")
    plt.close(figure)


def demo_log(days: float) -> list[str]:
    """Run the demo and return what it logged (stderr)."""
    with tempfile.TemporaryDirectory(prefix="workbook-preview-") as scratch:
        result = subprocess.run(
            [sys.executable, "-m", "o365collector", "demo", "--days", str(days), "--output", scratch],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=600,
        )
    return result.stderr.splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--log", type=Path, help="a saved demo log instead of running the demo")
    parser.add_argument("--days", type=float, default=2.0, help="days of simulated history for the demo")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    lines = args.log.read_text().splitlines() if args.log else demo_log(args.days)
    traces = read_traces(lines)
    if not any(t.starts("lister run complete") for t in traces):
        parser.error("the log holds no 'lister run complete' line: is it the demo's stderr?")
    render(traces, args.output)
    print(f"wrote {args.output} from {len(traces)} log lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
