"""The template's Azure Monitor workbook (the portal view) reads what the collector really logs.

The workbook is a ``Microsoft.Insights/workbooks`` resource whose ``serializedData`` the template builds
from ``variables('workbookItems')``. These tests check its shape, parse every query with Microsoft's Kusto
language service (the helper of tests/test_infra_template.py) against the ``traces`` table, and check
that each query only matches log prefixes and reads JSON fields that the code writes.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from o365collector import fetcher, lister, queue_runner, telemetry
from o365collector.fetcher import FetchResult, Outcome
from o365collector.lister import ListerResult, StreamResult
from o365collector.models import FetchTask
from tests.test_infra_template import kql_errors, resources, template, variable, walk_strings

ROOT = Path(__file__).resolve().parents[1]
RENDER_SCRIPT = ROOT / "scripts" / "render_workbook_preview.py"
PREVIEW = ROOT / "docs" / "images" / "workbook.png"
WORKBOOK_ID = "[resourceId('Microsoft.Insights/workbooks', variables('workbookName'))]"
# The Functions host's own line when it moves a message to the poison queue (the poison alert reads it too).
HOST_POISON_LINE = "Message has reached MaxDequeueCount"
PREFIX = re.compile(r'message startswith "([^"]+)"')
FIELD = re.compile(r"\brun\.(\w+)")


def workbook() -> dict[str, Any]:
    (found,) = resources("Microsoft.Insights/workbooks")
    return found


def items() -> list[dict[str, Any]]:
    return list(variable("workbookItems"))


def queries() -> dict[str, str]:
    """Item name → KQL of every query item (type 3, KqlItem)."""
    return {item["name"]: item["content"]["query"] for item in items() if item["type"] == 3}


def logged_json(caplog: pytest.LogCaptureFixture, prefix: str) -> dict[str, Any]:
    (message,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix + " ")]
    return dict(json.loads(message[len(prefix) + 1 :]))


def run_summary_fields() -> set[str]:
    """Keys of the dict the lister logs after ``RUN_SUMMARY_MESSAGE`` (read from the source: the run
    summary is only logged by a complete listing run)."""
    tree = ast.parse(Path(lister.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and any(
            isinstance(a, ast.Name) and a.id == "RUN_SUMMARY_MESSAGE" for a in node.args
        ):
            keys = {
                k.value
                for d in ast.walk(node)
                if isinstance(d, ast.Dict)
                for k in d.keys
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            }
            assert keys, "the run summary call logs no dict literal"
            return keys
    raise AssertionError("lister.py logs no RUN_SUMMARY_MESSAGE line")


def expired_fields() -> set[str]:
    """Keys of the fetcher's ``content expired before delivery`` JSON: the task's ids plus the keywords
    of the ``dict(fields, ...)`` call that builds it."""
    now = dt.datetime.now(dt.UTC)
    task = FetchTask("t", "Audit.Exchange", "c", "https://x/c", now, now)
    keys = set(fetcher._log_fields(task))
    tree = ast.parse(Path(fetcher.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "lost" for t in node.targets):
            assert isinstance(node.value, ast.Call)
            return keys | {k.arg for k in node.value.keywords if k.arg}
    raise AssertionError("fetcher.py builds no `lost` summary")


@pytest.fixture
def fields_by_prefix(caplog: pytest.LogCaptureFixture) -> dict[str, set[str]]:
    """The JSON fields each summary line carries, from the code that writes them."""
    caplog.set_level(logging.DEBUG)
    now = dt.datetime.now(dt.UTC)
    stream = StreamResult("tenant", "Audit.Exchange")
    telemetry.log_run_summary(ListerResult([stream]), telemetry.ShipTally(), 1.0)
    task = FetchTask("tenant", "Audit.Exchange", "content", "https://x/c", now, now)
    telemetry.log_fetch_result(task, FetchResult(Outcome.SHIPPED, records=3, seconds=0.5))
    lister_fields = set(stream.summary())
    return {
        lister.SUMMARY_MESSAGE: lister_fields,
        lister.FAILED_MESSAGE: lister_fields,
        lister.RUN_SUMMARY_MESSAGE: run_summary_fields(),
        telemetry.COLLECTOR_RUN_MESSAGE: set(logged_json(caplog, telemetry.COLLECTOR_RUN_MESSAGE)),
        telemetry.FETCH_RUN_MESSAGE: set(logged_json(caplog, telemetry.FETCH_RUN_MESSAGE)),
        fetcher.EXPIRED_MESSAGE: expired_fields(),
        queue_runner.POISONED_MESSAGE: set(),  # plain text: message id, attempts, reason
        HOST_POISON_LINE: set(),
    }


# --- the resource ---------------------------------------------------------------------------------------


def test_workbook_is_a_shared_workbook_of_the_application_insights_resource() -> None:
    wb = workbook()
    assert wb["apiVersion"] == "2023-06-01"
    assert wb["kind"] == "shared"
    assert wb["location"] == "[parameters('location')]"
    props = wb["properties"]
    assert props["category"] == "workbook"
    assert props["version"] == "Notebook/1.0"
    assert props["sourceId"] == "[variables('appInsightsId')]"
    assert props["displayName"] == "[variables('workbookDisplayName')]"
    assert "[variables('appInsightsId')]" in wb["dependsOn"]


def test_workbook_name_is_a_guid_fixed_by_resource_group_and_app() -> None:
    """Workbook names must be GUIDs; a deterministic one makes a redeployment update the same workbook."""
    assert workbook()["name"] == "[variables('workbookName')]"
    name = variable("workbookName")
    assert re.fullmatch(r"\[guid\(resourceGroup\(\)\.id, parameters\('appName'\), '[^']+'\)\]", name), name
    assert "parameters('appName')" in variable("workbookDisplayName")


def test_serialized_data_is_a_notebook_built_from_the_items_variable() -> None:
    assert workbook()["properties"]["serializedData"] == (
        "[string(createObject('version', 'Notebook/1.0', 'items', variables('workbookItems'), "
        "'isLocked', false(), 'fallbackResourceIds', createArray(variables('appInsightsId'))))]"
    )
    names = [item["name"] for item in items()]
    assert len(names) == len(set(names)), "two workbook items share a name"
    for item in items():
        assert item["type"] in {1, 3, 9}, item["name"]  # text, query, parameters
        if item["type"] == 3:
            content = item["content"]
            assert content["version"] == "KqlItem/1.0"
            assert content["queryType"] == 0  # Logs
            assert content["resourceType"] == "microsoft.insights/components"
            assert content["timeContextFromParameter"] == "TimeRange"
            assert content["visualization"] in {"table", "timechart", "barchart", "tiles"}
    (parameters,) = [item for item in items() if item["type"] == 9]
    assert [p["name"] for p in parameters["content"]["parameters"]] == ["TimeRange"]


def test_no_workbook_string_is_read_as_an_arm_expression() -> None:
    """ARM evaluates any string starting with '[' inside a variable: the workbook text must not."""
    for text in walk_strings(items()):
        assert not text.startswith("["), text[:60]


def test_deployment_outputs_a_portal_link_to_the_workbook() -> None:
    url = template()["outputs"]["workbookUrl"]
    assert url["type"] == "string"
    value = url["value"]
    assert value.startswith("[format('{0}/#view/AppInsightsExtension/UsageNotebookBlade/ComponentId/{1}/")
    assert "environment().portal" in value
    assert f"uriComponent({WORKBOOK_ID[1:-1]})" in value
    assert "uriComponent(variables('appInsightsId'))" in value


# --- the queries ----------------------------------------------------------------------------------------


def test_workbook_shows_every_figure_the_operators_need() -> None:
    """Records shipped, lag, throttling, failures, poisoned and lost blobs, and a per-stream table."""
    shown = queries()
    assert set(shown) == {"streams", "records", "lag", "throttling", "runs", "failures", "poisoned", "lost"}
    assert "run.records" in shown["records"]
    assert "run.lag_seconds" in shown["lag"]
    assert "run.throttled" in shown["throttling"]
    for name in ("streams", "records", "lag", "throttling", "failures", "lost"):
        # Per tenant and content type: both ids are grouping keys.
        by = shown[name].split(" by ", 1)[1]
        assert "run.tenant_id" in by, name
        assert "run.content_type" in by, name


def test_workbook_queries_are_valid_kql_against_the_traces_table() -> None:
    checked = dict(queries())
    checked["misspelt-function"] = queries()["records"].replace("sum(", "summ(")  # the checker can fail
    errors = kql_errors(checked)
    assert errors.pop("misspelt-function"), "the KQL checker reported nothing for a broken query"
    assert errors == {name: [] for name in queries()}


def test_workbook_queries_read_only_lines_and_fields_the_code_writes(fields_by_prefix: dict[str, set[str]]) -> None:
    known = set(fields_by_prefix)
    for name, query in queries().items():
        # A shorter prefix ("lister run") only sorts lines a full prefix already selected.
        prefixes = {p for p in PREFIX.findall(query) if p in known or not any(k.startswith(p) for k in known)}
        assert prefixes, f"{name}: matches no summary line"
        assert prefixes <= known, f"{name}: {prefixes - known} is not a line we log"
        available = set().union(*(fields_by_prefix[p] for p in prefixes))
        read = set(FIELD.findall(query))
        assert read <= available, f"{name} reads {read - available}, which its lines do not carry"


# --- the picture in the README --------------------------------------------------------------------------


def test_preview_picture_exists_and_its_script_draws_every_query() -> None:
    """docs/images/workbook.png is made by scripts/render_workbook_preview.py, which has one panel per query."""
    assert PREVIEW.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    tree = ast.parse(RENDER_SCRIPT.read_text())
    panels: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "PANELS":
            assert isinstance(node.value, ast.Dict)
            panels = {k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    assert panels == set(queries()), "the preview script draws other panels than the workbook's queries"
