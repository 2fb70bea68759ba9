"""The Log Analytics table is shaped like Sentinel's ``OfficeActivity``, so its Microsoft 365 content runs on it.

Kusto's own analyzer (the JavaScript build of Kusto.Language, as in tests/test_infra_template.py) runs the DCR
transformation of infra/logs-ingestion.json over the stream it declares, then analyzes queries written the way
Sentinel's Microsoft 365 rules are written over the table that transformation produces, and over the workspace
function the template saves. Nothing here talks to Azure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from o365collector.simulator.data import sample_records
from o365collector.sinks.loganalytics import RECORD_COLUMN, with_record_column
from tests.test_infra_template import kusto_language_service

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "logs-ingestion.json"
SAVED_SEARCHES = "Microsoft.OperationalInsights/workspaces/savedSearches"

# The Kusto scalar type of each column type a DCR stream or a table declares.
KUSTO_TYPES = {"string": "string", "int": "int", "long": "long", "real": "real", "boolean": "bool",
               "datetime": "datetime", "dynamic": "dynamic"}  # fmt: skip

ANALYZE = r"""
const service = process.env.KUSTO_LANGUAGE_SERVICE;
global.Bridge = require(service + "/bridge.js");
require(service + "/Kusto.Language.Bridge.js");
const K = global.Kusto.Language, S = K.Symbols;
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const types = {string: S.ScalarTypes.String, int: S.ScalarTypes.Int, long: S.ScalarTypes.Long,
  real: S.ScalarTypes.Real, bool: S.ScalarTypes.Bool, datetime: S.ScalarTypes.DateTime, dynamic: S.ScalarTypes.Dynamic};
const tables = Object.entries(input.tables).map(([name, columns]) =>
  new S.TableSymbol.$ctor4(name, columns.map(c => new S.ColumnSymbol(c[0], types[c[1]]))));
const globals = K.GlobalState.Default.WithDatabase(new S.DatabaseSymbol.ctor("workspace", tables));
const out = {};
for (const [name, query] of Object.entries(input.queries)) {
  const code = K.KustoCode.ParseAndAnalyze(query, globals);
  const diagnostics = code.GetDiagnostics(), errors = [], columns = [];
  for (let i = 0; i < diagnostics.Count; i++) {
    const d = diagnostics.getItem(i);
    if (d.Severity === "Error") errors.push(d.Message);
  }
  const result = code.ResultType;
  for (let i = 0; result && result.Columns && i < result.Columns.Count; i++) {
    const c = result.Columns.getItem(i);
    columns.push([c.Name, c.Type.Name]);
  }
  out[name] = {errors, columns};
}
console.log(JSON.stringify(out));
"""

Columns = list[tuple[str, str]]


def analyze(queries: dict[str, str], tables: dict[str, Columns]) -> dict[str, Any]:
    """Errors and result columns of each query over a database holding ``tables`` (name: (column, Kusto type))."""
    result = subprocess.run(
        ["node", "-e", ANALYZE],
        env={**os.environ, "KUSTO_LANGUAGE_SERVICE": str(kusto_language_service())},
        input=json.dumps({"queries": queries, "tables": tables}),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return dict(json.loads(result.stdout))


@cache
def template() -> dict[str, Any]:
    return dict(json.loads(TEMPLATE.read_text()))


def declared(kind: str) -> Columns:
    return [(c["name"], KUSTO_TYPES[c["type"].lower()]) for c in template()["variables"][kind]]


def table_name() -> str:
    return str(template()["parameters"]["tableName"]["defaultValue"])


def function_name() -> str:
    return str(template()["parameters"]["functionName"]["defaultValue"])


def saved_function() -> dict[str, Any]:
    (saved,) = [r for r in template()["resources"] if r["type"] == SAVED_SEARCHES]
    return dict(saved)


def function_query() -> str:
    """The saved function's body, with the template's format() applied to the default table name."""
    saved = saved_function()
    assert saved["properties"]["query"] == "[format(variables('functionQuery'), parameters('tableName'))]"
    return str(template()["variables"]["functionQuery"]).format(table_name())


@cache
def transformed() -> Columns:
    """The columns the DCR transformation produces from the stream, as Kusto's analyzer computes them."""
    analysis = analyze({"transform": template()["variables"]["transformKql"]}, {"source": declared("streamColumns")})
    assert analysis["transform"]["errors"] == []
    return [(name, kind) for name, kind in analysis["transform"]["columns"]]


# What Sentinel's Microsoft 365 content reads, with OfficeActivity's names and types (siem-conventions.md).
OFFICEACTIVITY_COLUMNS = {
    "TimeGenerated": "datetime", "OfficeWorkload": "string", "Operation": "string", "UserId": "string",
    "UserType": "string", "RecordType": "string", "OfficeObjectId": "string", "OfficeId": "string",
    "Site_Url": "string", "SourceRecordId": "string", "Start_Time": "datetime", "ClientIP": "string",
    "Client_IPAddress": "string", "ResultStatus": "string", "Parameters": "string", "ExtendedProperties": "dynamic",
    "ModifiedProperties": "dynamic", "Members": "dynamic", "TeamName": "string", "TeamGuid": "string",
    "MachineId": "string", "MachineDomainInfo": "string", "SourceFileName": "string", "SourceFileExtension": "string",
    "SourceRelativeUrl": "string", "UserAgent": "string", "OrganizationId": "string", "OfficeTenantId": "string",
    "ElevationTime": "datetime", "Actor": "string", "AffectedItems": "string", "Site_": "string",
    "Event_Data": "string", "Source_Name": "string", "Logon_Type": "int", "AzureActiveDirectory_EventType": "string",
    "OriginatingServer": "string", "ExternalAccess": "bool", "MailboxOwnerUPN": "string", "ClientInfoString": "string",
}  # fmt: skip


def test_the_transformation_gives_the_table_officeactivity_column_names_and_types() -> None:
    columns = dict(transformed())
    assert {name: columns.get(name) for name in OFFICEACTIVITY_COLUMNS} == OFFICEACTIVITY_COLUMNS
    # The API's own names of renamed fields are gone, so content never reads an empty look-alike column.
    assert not {"Id", "Workload", "ObjectId", "SiteUrl", "ClientIPAddress", "Site", "EventData"} & set(columns)
    assert columns[RECORD_COLUMN] == "dynamic"


def case_pairs(column: str) -> dict[int, str]:
    match = re.search(rf"\b{column} = case\((.*?), tostring\({column}\)\)", template()["variables"]["transformKql"])
    assert match, f"{column} is not mapped with case(..., tostring({column}))"
    pairs = re.findall(rf'{column} == (\d+), "(\w+)"', match.group(1))
    numbers = [int(number) for number, _ in pairs]
    assert len(numbers) == len(set(numbers)), f"a {column} number is mapped twice"
    return {int(number): name for number, name in pairs}


def test_record_and_user_type_numbers_become_the_names_officeactivity_holds() -> None:
    record_types = case_pairs("RecordType")
    expected = {1: "ExchangeAdmin", 2: "ExchangeItem", 4: "SharePoint", 6: "SharePointFileOperation",
                8: "AzureActiveDirectory", 14: "SharePointSharingOperation", 15: "AzureActiveDirectoryStsLogon",
                20: "PowerBIAudit", 25: "MicrosoftTeams", 50: "ExchangeItemAggregated"}  # fmt: skip
    assert {number: record_types.get(number) for number in expected} == expected
    emitted = {orjson.loads(raw)["RecordType"] for raws in sample_records().values() for raw in raws}
    assert emitted <= set(record_types), "a record type the simulator serves has no name"
    user_types = ["Regular", "Reserved", "Admin", "DcAdmin", "System", "Application", "ServicePrincipal",
                  "CustomPolicy", "SystemPolicy"]  # fmt: skip
    assert case_pairs("UserType") == dict(enumerate(user_types))


def test_every_field_the_simulated_api_sends_is_a_stream_column_and_the_whole_record_is_one_too() -> None:
    stream = dict(declared("streamColumns"))
    fields = {field for raws in sample_records().values() for raw in raws for field in orjson.loads(raw)}
    assert sorted(fields - set(stream)) == [], "the DCR drops these fields from their own columns"
    assert stream[RECORD_COLUMN] == "dynamic"
    assert dict(declared("tableColumns"))[RECORD_COLUMN] == "dynamic"


def test_a_field_the_stream_does_not_declare_still_reaches_the_table_inside_the_whole_record() -> None:
    """What the service does to an upload: keep the declared columns, drop the rest."""
    record = {"Id": "1", "CreationTime": "2026-03-01T11:59:58", "Workload": "MicrosoftTeams", "FieldOfTomorrow": [1]}
    stream = {name for name, _ in declared("streamColumns")}
    uploaded = with_record_column(record)
    kept = {name: value for name, value in uploaded.items() if name in stream}
    assert "FieldOfTomorrow" not in kept
    assert kept[RECORD_COLUMN] == record
    assert record == {"Id": "1", "CreationTime": "2026-03-01T11:59:58", "Workload": "MicrosoftTeams",
                      "FieldOfTomorrow": [1]}, "the caller's record was modified"  # fmt: skip


def test_the_template_saves_a_function_that_reads_officeactivity_and_the_table_together() -> None:
    saved = saved_function()
    assert saved["properties"]["functionAlias"] == "[parameters('functionName')]"
    assert saved["name"] == "[format('{0}/{1}', parameters('workspaceName'), parameters('functionName'))]"
    assert "[variables('tableId')]" in saved["dependsOn"], "the function reads the table: create it first"
    assert function_query() == f"union isfuzzy=true OfficeActivity, {table_name()}"
    assert template()["outputs"]["functionName"]["value"] == "[parameters('functionName')]"


# Queries written the way Sentinel's Microsoft 365 analytics rules are: string comparisons on RecordType,
# OfficeWorkload and UserType, Parameters grouped as a string and parsed with todynamic(), Teams' Members.
RULES = {
    "exchange-mailbox-forwarding": """
OfficeActivity
| where OfficeWorkload =~ "Exchange"
| where Operation in~ ("Set-Mailbox", "New-InboxRule", "Set-InboxRule")
| where Parameters has_any ("ForwardingSmtpAddress", "ForwardTo", "RedirectTo", "ForwardingAddress")
| mv-expand Parameter = todynamic(Parameters)
| extend Name = tostring(Parameter.Name), Value = tostring(Parameter.Value)
| where Name in~ ("ForwardingSmtpAddress", "ForwardTo", "RedirectTo", "ForwardingAddress") and isnotempty(Value)
| extend Destination = tostring(split(Value, "@")[1])
| summarize StartTime = min(TimeGenerated), EndTime = max(TimeGenerated), Count = count()
    by UserId, ClientIP, Operation, Destination, Parameters
""",
    "inbox-rule-hiding-mail": """
let keywords = dynamic(["password", "invoice", "payment", "hacked"]);
OfficeActivity
| where RecordType =~ "ExchangeAdmin" and Operation in~ ("New-InboxRule", "Set-InboxRule")
| where Parameters has_any (keywords)
| mv-apply Event = todynamic(Parameters) on (
    summarize RuleParameters = make_bag(pack(tostring(Event.Name), tostring(Event.Value))))
| extend RuleName = tostring(RuleParameters.Name), DeletesMessage = tobool(RuleParameters.DeleteMessage)
| extend ClientAddress = case(ClientIP has ".", tostring(split(ClientIP, ":")[0]),
    ClientIP has "[", tostring(trim_start(@"[[]", tostring(split(ClientIP, "]")[0]))), ClientIP)
| project TimeGenerated, UserId, UserType, ClientAddress, RuleName, DeletesMessage, OriginatingServer,
    ResultStatus, OfficeId, Parameters
""",
    "sharepoint-downloads-from-a-new-ip": """
let lookback = 14d;
let recent = 1d;
let known = OfficeActivity
    | where TimeGenerated between (ago(lookback) .. ago(recent))
    | where RecordType =~ "SharePointFileOperation" and Operation in~ ("FileDownloaded", "FileUploaded")
    | summarize by ClientIP;
OfficeActivity
| where TimeGenerated >= ago(recent)
| where RecordType =~ "SharePointFileOperation" and Operation in~ ("FileDownloaded", "FileSyncDownloadedFull")
| join kind=leftanti known on ClientIP
| extend UnmanagedSync = isnotempty(MachineId) and isempty(MachineDomainInfo)
| summarize Files = dcount(OfficeObjectId), FileNames = make_set(SourceFileName, 100), Sites = make_set(Site_Url, 20),
    Extensions = make_set(SourceFileExtension, 20), UnmanagedSync = max(toint(UnmanagedSync))
    by ClientIP, UserId, UserAgent, OfficeWorkload
| where Files > 10
""",
    "teams-external-user-added-then-removed": """
let added = OfficeActivity
    | where OfficeWorkload =~ "MicrosoftTeams" and Operation =~ "MemberAdded"
    | extend Member = tostring(todynamic(Members)[0].UPN)
    | where Member has "#EXT#"
    | project AddedAt = TimeGenerated, Member, AddedBy = UserId, TeamName, TeamGuid;
let removed = OfficeActivity
    | where OfficeWorkload =~ "MicrosoftTeams" and Operation =~ "MemberRemoved"
    | extend Member = tostring(Members[0].UPN)
    | project RemovedAt = TimeGenerated, Member, RemovedBy = UserId, TeamName;
added
| join kind=inner removed on Member, TeamName
| where RemovedAt between (AddedAt .. (AddedAt + 1h))
| project AddedAt, RemovedAt, Member, AddedBy, RemovedBy, TeamName, TeamGuid
""",
    "exchange-audit-logging-disabled": """
OfficeActivity
| where RecordType =~ "ExchangeAdmin" and UserType in~ ("Admin", "DcAdmin")
| where Operation =~ "Set-AdminAuditLogConfig"
| extend Setting = todynamic(Parameters)
| mv-expand Setting
| where tostring(Setting.Name) =~ "AdminAuditLogEnabled" and tostring(Setting.Value) =~ "False"
| summarize StartTime = min(TimeGenerated), EndTime = max(TimeGenerated), Count = count()
    by Operation, UserType, UserId, OriginatingServer, ResultStatus, Parameters
| extend AccountName = tostring(split(UserId, "@")[0]), AccountUPNSuffix = tostring(split(UserId, "@")[1])
""",
}


def over(source: str, rule: str) -> str:
    """The rule with its table ``OfficeActivity`` replaced, as the docs tell users to point a rule elsewhere."""
    return re.sub(r"\bOfficeActivity\b", source, rule)


def test_rules_written_for_officeactivity_run_over_the_table_and_the_saved_function() -> None:
    table = transformed()
    # A workspace with Sentinel's Office 365 connector too: its OfficeActivity has the columns content reads.
    officeactivity = [(name, kind) for name, kind in table if name in OFFICEACTIVITY_COLUMNS]
    function = f"let {function_name()} = view () {{ {function_query()} }};\n"
    queries = {}
    for name, rule in RULES.items():
        queries[f"{name} over {table_name()}"] = over(table_name(), rule)
        queries[f"{name} over {function_name()}"] = function + over(function_name(), rule)
    # The checker itself must be able to fail: the same rules over the API's own shape (the stream as it is).
    for name, rule in RULES.items():
        queries[f"{name} over the API shape"] = over("ApiShaped_CL", rule)
    analysis = analyze(
        queries,
        {
            table_name(): table,
            "OfficeActivity": officeactivity,
            "ApiShaped_CL": [("TimeGenerated", "datetime"), *declared("streamColumns")],
        },
    )
    errors = {name: result["errors"] for name, result in analysis.items()}
    for name in RULES:
        assert errors.pop(f"{name} over the API shape"), f"{name}: no error over the API's shape"
    assert errors == {name: [] for name in errors}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_a_rule_over_the_function_returns_the_columns_it_projects(rule: str) -> None:
    """The union keeps the rule's typed columns: a rule's output over the function equals its output over the table."""
    function = f"let {function_name()} = view () {{ {function_query()} }};\n"
    table = transformed()
    officeactivity = [(name, kind) for name, kind in table if name in OFFICEACTIVITY_COLUMNS]
    analysis = analyze(
        {"table": over(table_name(), RULES[rule]), "function": function + over(function_name(), RULES[rule])},
        {table_name(): table, "OfficeActivity": officeactivity},
    )
    assert analysis["function"]["errors"] == []
    assert analysis["function"]["columns"] == analysis["table"]["columns"]
