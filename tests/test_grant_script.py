"""scripts/grant-api-access.sh grants the Office 365 Management APIs' app roles (and, with --sources, the Microsoft
Graph roles of the Graph sources) to the collector's managed identity, or adds a federated identity credential to
an app registration, through Microsoft Graph (az rest).

A fake `az` on PATH plays Microsoft Graph over a small state file and records every call. Its app role ids are
made up for each test, so the script can only pass by finding the roles by their value.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "grant-api-access.sh"
O365_MANAGEMENT_APP_ID = "c5393580-f805-4401-95e8-94b7a6ef2fc2"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
MESSAGE_TRACE_APP_ID = "8bd644d1-64a1-4d4b-ae52-2e0cbf64e373"
TENANT = "22222222-2222-2222-2222-222222222222"
PRINCIPAL = "33333333-3333-3333-3333-333333333333"
APP = "44444444-4444-4444-4444-444444444444"
UAMI = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-o365"

FAKE_AZ = """\
#!{python}
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
state_path = Path(os.environ["FAKE_AZ_STATE"])
state = json.loads(state_path.read_text())
with open(os.environ["FAKE_AZ_LOG"], "a") as log:
    log.write(json.dumps(argv) + "\\n")
def opt(name):
    return argv[argv.index(name) + 1]
if argv[:2] == ["account", "show"]:
    print(json.dumps({{"tenantId": state["tenant"]}}))
elif argv[:2] == ["identity", "show"]:
    assert opt("--ids") == state["uami"], argv
    print(json.dumps({{"principalId": state["principal"], "tenantId": state["tenant"]}}))
elif argv[:1] == ["rest"]:
    method, url = opt("--method"), opt("--url")
    key, reply = None, None
    assert url.startswith(opt("--resource") + "/v1.0/"), argv
    if "servicePrincipals?$filter=appId%20eq%20'{app_id}'" in url:
        reply = {{"value": state["resource"]}}
    elif "servicePrincipals?$filter=appId%20eq%20'{graph_app_id}'" in url:
        reply = {{"value": state["graph_resource"]}}
    elif "servicePrincipals?$filter=appId%20eq%20'{trace_app_id}'" in url:
        key = "trace_principals"
    elif url.endswith("/v1.0/servicePrincipals"):
        assert method == "post", argv
        key = "trace_principals"
    elif url.endswith("/servicePrincipals/" + state["principal"] + "/appRoleAssignments"):
        key = "assignments"
    elif url.endswith("/applications(appId='" + state["app"] + "')/federatedIdentityCredentials"):
        key = "credentials"
    else:
        print("fake az: unknown url", url, file=sys.stderr)
        sys.exit(3)
    if key is not None:
        if method == "get":
            reply = {{"value": state[key]}}
        else:
            state[key].append(json.loads(opt("--body")))
            state_path.write_text(json.dumps(state))
            reply = None
    if reply is not None and "--output" in argv and opt("--output") == "json":
        print(json.dumps(reply))
else:
    print("fake az: unexpected command", argv, file=sys.stderr)
    sys.exit(3)
"""


class Graph:
    """The fake az and the directory state it serves."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        az = self.bin / "az"
        az.write_text(
            FAKE_AZ.format(
                python=sys.executable,
                app_id=O365_MANAGEMENT_APP_ID,
                graph_app_id=GRAPH_APP_ID,
                trace_app_id=MESSAGE_TRACE_APP_ID,
            )
        )
        az.chmod(az.stat().st_mode | stat.S_IXUSR)
        self.log = tmp_path / "az.log"
        self.state_path = tmp_path / "state.json"
        values = ("ActivityFeed.Read", "ActivityFeed.ReadDlp", "ServiceHealth.Read")
        self.roles = {value: str(uuid.uuid4()) for value in values}
        self.resource_id = str(uuid.uuid4())
        resource = {
            "id": self.resource_id,
            "appId": O365_MANAGEMENT_APP_ID,
            "appRoles": [
                {"id": role_id, "value": value, "allowedMemberTypes": ["Application"]}
                for value, role_id in self.roles.items()
            ],
        }
        # Microsoft Graph's roles, also made up per test; a delegated-only scope of the same value must not match.
        graph_values = ("AuditLog.Read.All", "ExchangeMessageTrace.Read.All", "Directory.Read.All")
        self.graph_roles = {value: str(uuid.uuid4()) for value in graph_values}
        self.graph_resource_id = str(uuid.uuid4())
        graph_resource = {
            "id": self.graph_resource_id,
            "appId": GRAPH_APP_ID,
            "appRoles": [
                {"id": str(uuid.uuid4()), "value": "AuditLog.Read.All", "allowedMemberTypes": ["User"]},
                *(
                    {"id": role_id, "value": value, "allowedMemberTypes": ["Application"]}
                    for value, role_id in self.graph_roles.items()
                ),
            ],
        }
        self.write({
            "tenant": TENANT,
            "principal": PRINCIPAL,
            "uami": UAMI,
            "app": APP,
            "resource": [resource],
            "graph_resource": [graph_resource],
            "trace_principals": [],
            "assignments": [],
            "credentials": [],
        })

    def write(self, state: dict[str, Any]) -> None:
        self.state_path.write_text(json.dumps(state))

    @property
    def state(self) -> dict[str, Any]:
        return dict(json.loads(self.state_path.read_text()))

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def writes(self) -> list[list[str]]:
        return [c for c in self.calls() if c[0] == "rest" and c[c.index("--method") + 1] != "get"]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        self.log.unlink(missing_ok=True)
        env = {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_AZ_STATE": str(self.state_path),
            "FAKE_AZ_LOG": str(self.log),
        }
        return subprocess.run(
            ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )


@pytest.fixture
def graph(tmp_path: Path) -> Graph:
    return Graph(tmp_path)


def test_dry_run_reads_but_writes_nothing(graph: Graph) -> None:
    result = graph.run("--identity", PRINCIPAL, "--dlp", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert graph.calls(), "the dry run still looks the roles up"
    assert graph.writes() == []
    assert graph.state["assignments"] == []
    assert result.stdout.count("would POST") == 2
    assert graph.roles["ActivityFeed.ReadDlp"] in result.stdout


def test_roles_are_found_by_value_and_assigned_once(graph: Graph) -> None:
    first = graph.run("--identity", PRINCIPAL)
    assert first.returncode == 0, first.stderr
    assert graph.state["assignments"] == [
        {"principalId": PRINCIPAL, "resourceId": graph.resource_id, "appRoleId": graph.roles["ActivityFeed.Read"]}
    ]
    second = graph.run("--identity", PRINCIPAL)
    assert second.returncode == 0, second.stderr
    assert graph.writes() == [], "a second run assigns nothing new"
    assert len(graph.state["assignments"]) == 1
    assert "already granted" in second.stdout


def test_dlp_adds_activity_feed_read_dlp_only(graph: Graph) -> None:
    graph.run("--identity", PRINCIPAL)
    result = graph.run("--identity", PRINCIPAL, "--dlp")
    assert result.returncode == 0, result.stderr
    assert len(graph.writes()) == 1
    granted = {a["appRoleId"] for a in graph.state["assignments"]}
    assert granted == {graph.roles["ActivityFeed.Read"], graph.roles["ActivityFeed.ReadDlp"]}


def test_a_user_assigned_identity_resource_id_is_resolved_to_its_principal(graph: Graph) -> None:
    result = graph.run("--identity", UAMI)
    assert result.returncode == 0, result.stderr
    assert ["identity", "show", "--ids", UAMI, "--output", "json"] in graph.calls()
    assert graph.state["assignments"][0]["principalId"] == PRINCIPAL


def test_missing_resource_service_principal_says_how_to_create_it(graph: Graph) -> None:
    graph.write({**graph.state, "resource": []})
    result = graph.run("--identity", PRINCIPAL)
    assert result.returncode == 2
    assert f"az ad sp create --id {O365_MANAGEMENT_APP_ID}" in result.stderr
    assert graph.writes() == []


@pytest.mark.parametrize(
    ("cloud", "graph_host", "login", "audience"),
    [
        ("Enterprise", "https://graph.microsoft.com", "https://login.microsoftonline.com", "api://AzureADTokenExchange"),
        ("GCCHigh", "https://graph.microsoft.us", "https://login.microsoftonline.us", "api://AzureADTokenExchangeUSGov"),
        ("DoD", "https://dod-graph.microsoft.us", "https://login.microsoftonline.us", "api://AzureADTokenExchangeUSGov"),
    ],
)
def test_federated_adds_one_credential_trusting_the_identity(
    graph: Graph, cloud: str, graph_host: str, login: str, audience: str
) -> None:
    args = ("--federated", "--app-id", APP, "--identity", UAMI, "--cloud", cloud)
    result = graph.run(*args)
    assert result.returncode == 0, result.stderr
    ((write,),) = [[c] for c in graph.writes()]
    assert write[write.index("--url") + 1].startswith(f"{graph_host}/v1.0/applications(appId='{APP}')")
    (credential,) = graph.state["credentials"]
    assert credential["issuer"] == f"{login}/{TENANT}/v2.0"
    assert credential["subject"] == PRINCIPAL
    assert credential["audiences"] == [audience]
    assert f"{login}/<customer tenant id>/adminconsent?client_id={APP}" in result.stdout
    again = graph.run(*args)
    assert again.returncode == 0, again.stderr
    assert graph.writes() == [], "the credential is looked up before it is created"
    assert graph.state["assignments"] == [], "federated mode grants no role to the identity itself"


def test_federated_dry_run_writes_nothing(graph: Graph) -> None:
    result = graph.run("--federated", "--app-id", APP, "--identity", PRINCIPAL, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert graph.writes() == []
    assert "would POST" in result.stdout
    assert "AzureADTokenExchange" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--identity is required"),
        (("--identity", "not-an-id"), "neither a principal object id"),
        (("--identity", PRINCIPAL, "--federated"), "--federated needs --app-id"),
        (("--identity", PRINCIPAL, "--cloud", "Mooncake"), "--cloud must be"),
    ],
)
def test_bad_arguments_are_refused_before_any_call(graph: Graph, args: tuple[str, ...], message: str) -> None:
    result = graph.run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert graph.calls() == []


# --- --sources: the Microsoft Graph sources ------------------------------------------------------------


def test_sources_grant_the_graph_roles_found_by_value_and_create_the_trace_principal_once(graph: Graph) -> None:
    args = ("--identity", PRINCIPAL, "--sources", "audit,signins,directoryaudits,messagetrace")
    first = graph.run(*args)
    assert first.returncode == 0, first.stderr
    assert graph.state["assignments"] == [
        {"principalId": PRINCIPAL, "resourceId": graph.resource_id, "appRoleId": graph.roles["ActivityFeed.Read"]},
        {
            "principalId": PRINCIPAL,
            "resourceId": graph.graph_resource_id,
            "appRoleId": graph.graph_roles["AuditLog.Read.All"],
        },
        {
            "principalId": PRINCIPAL,
            "resourceId": graph.graph_resource_id,
            "appRoleId": graph.graph_roles["ExchangeMessageTrace.Read.All"],
        },
    ], "AuditLog.Read.All once for both Entra sources; nothing more than the sources need"
    assert graph.state["trace_principals"] == [{"appId": MESSAGE_TRACE_APP_ID}]
    assert "several hours" in first.stdout
    again = graph.run(*args)
    assert again.returncode == 0, again.stderr
    assert graph.writes() == [], "a second run assigns and creates nothing"
    assert again.stdout.count("already granted") == 3
    assert "already in tenant" in again.stdout


def test_graph_sources_alone_grant_no_audit_feed_role(graph: Graph) -> None:
    result = graph.run("--identity", PRINCIPAL, "--sources", "signins")
    assert result.returncode == 0, result.stderr
    assert [a["appRoleId"] for a in graph.state["assignments"]] == [graph.graph_roles["AuditLog.Read.All"]]
    assert graph.state["trace_principals"] == [], "only messagetrace needs the trace service principal"


def test_sources_dry_run_writes_nothing(graph: Graph) -> None:
    result = graph.run("--identity", PRINCIPAL, "--sources", "signins,messagetrace", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert graph.writes() == []
    assert graph.state["assignments"] == []
    assert graph.state["trace_principals"] == []
    assert result.stdout.count("would POST") == 3  # two Graph roles and the trace service principal
    assert graph.graph_roles["ExchangeMessageTrace.Read.All"] in result.stdout
    assert MESSAGE_TRACE_APP_ID in result.stdout


def test_federated_with_sources_names_the_graph_permissions_and_the_trace_principal_step(graph: Graph) -> None:
    result = graph.run("--federated", "--app-id", APP, "--identity", PRINCIPAL, "--sources", "audit,messagetrace")
    assert result.returncode == 0, result.stderr
    assert "Microsoft Graph application permissions: ExchangeMessageTrace.Read.All" in result.stdout
    assert f"az ad sp create --id {MESSAGE_TRACE_APP_ID}" in result.stdout
    assert graph.state["assignments"] == []
    assert graph.state["trace_principals"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--sources", "audit,signin"), "unknown source 'signin'"),
        (("--sources", "signins,signins"), "lists 'signins' twice"),
        (("--sources", ","), "--sources is empty"),
        (("--sources", "messagetrace", "--cloud", "GCCHigh"), "global service only"),
        (("--sources", "signins", "--dlp"), "add audit to --sources"),
    ],
)
def test_bad_sources_are_refused_before_any_call(graph: Graph, args: tuple[str, ...], message: str) -> None:
    result = graph.run("--identity", PRINCIPAL, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert graph.calls() == []
