"""The optional private-network deployment of the ARM template (parameter ``privateNetworking``).

Off (the default), the template deploys no network resource and every endpoint stays public, as before.
On, the app is integrated with a subnet delegated to ``Microsoft.App/environments``, storage (blob, queue,
table) and Key Vault are reached through private endpoints whose DNS records live in private DNS zones
linked to the network, and storage, Key Vault and the app refuse public traffic.

No ARM engine runs here, so :func:`configuration` renders the template for one value of the switch: it
keeps or drops the resources whose ``condition`` is the switch and picks a branch of every
``if(parameters('privateNetworking'), a, b)``. The tests read the rendered template as data, and
tests/test_infra_checkov.py scans both renderings with checkov, which evaluates neither ``condition``
nor ``if()``.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "infra" / "azuredeploy.json"

SWITCH = "parameters('privateNetworking')"
SWITCH_CONDITION = f"[{SWITCH}]"
IF_SWITCH_PREFIX = f"[if({SWITCH}, "
FLEX_SUBNET_DELEGATION = "Microsoft.App/environments"
# Public-cloud zone of each private-link sub-resource (group id).
PRIVATE_DNS_ZONES = {
    "blob": "privatelink.blob.core.windows.net",
    "queue": "privatelink.queue.core.windows.net",
    "table": "privatelink.table.core.windows.net",
    "vault": "privatelink.vaultcore.azure.net",
}
STORAGE_ID = "[variables('storageId')]"
KEY_VAULT_ID = "[variables('keyVaultId')]"


# --- rendering one configuration ---------------------------------------------------------------------


def split_arguments(arguments: str) -> list[str]:
    """Top-level comma-separated arguments of an ARM function call (quotes and nested calls respected)."""
    parts: list[str] = []
    depth = 0
    in_quote = False
    start = 0
    for index, char in enumerate(arguments):
        if char == "'":
            in_quote = not in_quote  # a doubled '' (an escaped quote) toggles twice
        elif in_quote:
            continue
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(arguments[start:index].strip())
            start = index + 1
    if depth or in_quote:
        raise ValueError(f"unbalanced expression: {arguments}")
    parts.append(arguments[start:].strip())
    return parts


_DROP = object()  # a branch that is null(): ARM then leaves the property out


def resolve_switch(value: str, private: bool) -> Any:
    """The branch of ``[if(parameters('privateNetworking'), a, b)]`` the deployment would use."""
    if not value.endswith(")]"):
        raise ValueError(f"the switch must be the whole expression: {value}")
    branches = split_arguments(value[len(IF_SWITCH_PREFIX) : -2])
    if len(branches) != 2:
        raise ValueError(f"if() takes two branches: {value}")
    chosen = branches[0] if private else branches[1]
    if chosen == "null()":
        return _DROP
    if re.fullmatch(r"'(?:[^']|'')*'", chosen):
        return chosen[1:-1].replace("''", "'")
    return f"[{chosen}]"  # still an expression (resourceId(...) and the like), unrelated to the switch


def _render(node: Any, private: bool) -> Any:
    if isinstance(node, str) and node.startswith(IF_SWITCH_PREFIX):
        return resolve_switch(node, private)
    if isinstance(node, dict):
        rendered = {key: _render(value, private) for key, value in node.items()}
        return {key: value for key, value in rendered.items() if value is not _DROP}
    if isinstance(node, list):
        return [_render(item, private) for item in node]
    return node


@cache
def raw_template() -> dict[str, Any]:
    return dict(json.loads(TEMPLATE.read_text()))


@cache
def _configuration(private: bool) -> str:
    arm = copy.deepcopy(raw_template())
    arm["parameters"]["privateNetworking"]["defaultValue"] = private
    kept = []
    for resource in arm["resources"]:
        if resource.get("condition") == SWITCH_CONDITION:
            if not private:
                continue
            del resource["condition"]
        kept.append(resource)
    arm["resources"] = kept
    rendered = _render(arm, private)
    leftovers = [text for text in _strings(rendered["resources"]) if SWITCH in text]
    if leftovers:
        raise ValueError(f"privateNetworking used in a form the renderer cannot resolve: {leftovers}")
    return json.dumps(rendered, indent=2)


def configuration(private: bool) -> dict[str, Any]:
    """The template as deployed with ``privateNetworking`` set to ``private`` (a fresh copy)."""
    return dict(json.loads(_configuration(private)))


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in (key, *_strings(value))]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def of_type(arm: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in arm["resources"] if r["type"] == kind]


def one_of_type(arm: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = of_type(arm, kind)
    return found


def expression(value: str) -> str:
    """``[variables('x').y]`` -> ``variables('x').y``, to compose names the way the template does."""
    if not (value.startswith("[") and value.endswith("]")):
        raise ValueError(f"not an expression: {value}")
    return value[1:-1]


def private_endpoints(arm: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Private endpoints by the one sub-resource (group id) each connects to."""
    found: dict[str, dict[str, Any]] = {}
    for endpoint in of_type(arm, "Microsoft.Network/privateEndpoints"):
        (connection,) = endpoint["properties"]["privateLinkServiceConnections"]
        (group,) = connection["properties"]["groupIds"]
        assert group not in found, f"two private endpoints for {group}"
        found[group] = endpoint
    return found


def zone_name_expressions(arm: dict[str, Any]) -> dict[str, str]:
    """Private DNS zones: name expression -> zone name."""
    zones = arm["variables"]["privateDnsZones"]
    names = {}
    for zone in of_type(arm, "Microsoft.Network/privateDnsZones"):
        match = re.fullmatch(r"\[variables\('privateDnsZones'\)\.(\w+)\]", zone["name"])
        assert match, f"zone named outside variables('privateDnsZones'): {zone['name']}"
        names[expression(zone["name"])] = zones[match.group(1)]
    return names


# --- the renderer itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "private", "expected"),
    [
        ("[if(parameters('privateNetworking'), 'Disabled', 'Enabled')]", True, "Disabled"),
        ("[if(parameters('privateNetworking'), 'Disabled', 'Enabled')]", False, "Enabled"),
        ("[if(parameters('privateNetworking'), 'it''s', 'b')]", True, "it's"),
        (
            "[if(parameters('privateNetworking'), resourceId('T/s', variables('a'), 'x, y'), null())]",
            True,
            "[resourceId('T/s', variables('a'), 'x, y')]",
        ),
        ("[if(parameters('privateNetworking'), resourceId('T/s', 'a'), null())]", False, _DROP),
    ],
)
def test_the_renderer_picks_the_branch_arm_would(value: str, private: bool, expected: Any) -> None:
    assert resolve_switch(value, private) == expected


def test_the_renderer_refuses_a_switch_it_cannot_resolve() -> None:
    with pytest.raises(ValueError, match="whole expression"):
        resolve_switch("[if(parameters('privateNetworking'), 'a', 'b')].x]", True)
    with pytest.raises(ValueError, match="two branches"):
        resolve_switch("[if(parameters('privateNetworking'), 'a')]", True)
    with pytest.raises(ValueError, match="unbalanced"):
        resolve_switch("[if(parameters('privateNetworking'), 'a, 'b')]", True)


def test_every_use_of_the_switch_is_a_resource_condition_or_a_whole_if() -> None:
    """Anything else would be deployed one way and scanned (by checkov, by these tests) another."""
    for resource in raw_template()["resources"]:
        for text in _strings({k: v for k, v in resource.items() if k != "condition"}):
            if SWITCH in text:
                assert text.startswith(IF_SWITCH_PREFIX), text
                assert text.count(SWITCH) == 1, text
    configuration(True)  # raises when a use is left unresolved
    configuration(False)


# --- the default deployment stays as simple as it was ------------------------------------------------


def test_private_networking_is_off_by_default_and_adds_only_conditional_resources() -> None:
    assert raw_template()["parameters"]["privateNetworking"] == {
        "type": "bool",
        "defaultValue": False,
        "metadata": raw_template()["parameters"]["privateNetworking"]["metadata"],
    }
    network = [r for r in raw_template()["resources"] if r["type"].startswith("Microsoft.Network/")]
    assert len(network) == 17  # 1 network, 4 zones, 4 links, 4 endpoints, 4 zone groups
    assert all(r.get("condition") == SWITCH_CONDITION for r in network)
    assert not [r for r in configuration(False)["resources"] if r["type"].startswith("Microsoft.Network/")]


def test_default_deployment_keeps_every_endpoint_public() -> None:
    arm = configuration(False)
    storage = one_of_type(arm, "Microsoft.Storage/storageAccounts")["properties"]
    assert storage["publicNetworkAccess"] == "Enabled"
    assert storage["networkAcls"] == {"bypass": "AzureServices", "defaultAction": "Allow"}
    vault = one_of_type(arm, "Microsoft.KeyVault/vaults")["properties"]
    assert vault["publicNetworkAccess"] == "Enabled"
    assert vault["networkAcls"]["defaultAction"] == "Allow"
    site = one_of_type(arm, "Microsoft.Web/sites")["properties"]
    assert site["publicNetworkAccess"] == "Enabled"
    assert "virtualNetworkSubnetId" not in site


# --- the private deployment --------------------------------------------------------------------------


def test_private_storage_key_vault_and_app_refuse_public_traffic() -> None:
    arm = configuration(True)
    storage = one_of_type(arm, "Microsoft.Storage/storageAccounts")["properties"]
    assert storage["publicNetworkAccess"] == "Disabled"
    assert storage["networkAcls"]["defaultAction"] == "Deny"
    assert storage["allowSharedKeyAccess"] is False
    vault = one_of_type(arm, "Microsoft.KeyVault/vaults")["properties"]
    assert vault["publicNetworkAccess"] == "Disabled"
    assert vault["networkAcls"]["defaultAction"] == "Deny"
    assert {"ipRules", "virtualNetworkRules"} & set(vault["networkAcls"]) == set()
    assert one_of_type(arm, "Microsoft.Web/sites")["properties"]["publicNetworkAccess"] == "Disabled"


def test_app_is_integrated_with_its_own_subnet_delegated_to_microsoft_app_environments() -> None:
    arm = configuration(True)
    network = one_of_type(arm, "Microsoft.Network/virtualNetworks")
    subnet_names = arm["variables"]["subnetNames"]
    subnets = {s["name"]: s["properties"] for s in network["properties"]["subnets"]}
    assert set(subnets) == {"[variables('subnetNames').app]", "[variables('subnetNames').privateEndpoints]"}
    app_subnet = subnets["[variables('subnetNames').app]"]
    assert [d["properties"]["serviceName"] for d in app_subnet["delegations"]] == [FLEX_SUBNET_DELEGATION]
    assert "_" not in subnet_names["app"], "Flex Consumption rejects subnet names with an underscore"
    endpoint_subnet = subnets["[variables('subnetNames').privateEndpoints]"]
    assert "delegations" not in endpoint_subnet, "a delegated subnet cannot hold private endpoints"
    assert endpoint_subnet["privateEndpointNetworkPolicies"] == "Disabled"

    site = one_of_type(arm, "Microsoft.Web/sites")
    assert site["properties"]["virtualNetworkSubnetId"] == (
        "[resourceId('Microsoft.Network/virtualNetworks/subnets', variables('vnetName'), variables('subnetNames').app)]"
    )
    assert network["name"] == "[variables('vnetName')]"
    assert "[variables('vnetId')]" in site["dependsOn"]


def test_app_subnet_is_large_enough_and_the_subnets_fit_the_network_without_overlap() -> None:
    parameters = raw_template()["parameters"]
    network = ipaddress.ip_network(parameters["vnetAddressPrefix"]["defaultValue"])
    app = ipaddress.ip_network(parameters["appSubnetPrefix"]["defaultValue"])
    endpoints = ipaddress.ip_network(parameters["privateEndpointSubnetPrefix"]["defaultValue"])
    assert app.subnet_of(network)  # type: ignore[arg-type]
    assert endpoints.subnet_of(network)  # type: ignore[arg-type]
    assert not app.overlaps(endpoints)
    assert app.prefixlen <= 27, "/27 is the smallest subnet Flex Consumption supports"
    assert endpoints.num_addresses - 5 >= len(PRIVATE_DNS_ZONES), "Azure reserves five addresses per subnet"


def test_private_endpoints_reach_blob_queue_table_and_the_vault_from_the_endpoint_subnet() -> None:
    endpoints = private_endpoints(configuration(True))
    assert set(endpoints) == set(PRIVATE_DNS_ZONES)
    for group, endpoint in endpoints.items():
        (connection,) = endpoint["properties"]["privateLinkServiceConnections"]
        target = KEY_VAULT_ID if group == "vault" else STORAGE_ID
        assert connection["properties"]["privateLinkServiceId"] == target, group
        assert target in endpoint["dependsOn"], group
        assert endpoint["properties"]["subnet"]["id"] == (
            "[resourceId('Microsoft.Network/virtualNetworks/subnets', variables('vnetName'), "
            "variables('subnetNames').privateEndpoints)]"
        ), group


def test_every_private_endpoint_has_a_dns_zone_group_pointing_at_its_service_zone() -> None:
    arm = configuration(True)
    zones = zone_name_expressions(arm)
    groups = {g["name"]: g for g in of_type(arm, "Microsoft.Network/privateEndpoints/privateDnsZoneGroups")}
    for service, endpoint in private_endpoints(arm).items():
        name = f"[format('{{0}}/default', {expression(endpoint['name'])})]"
        assert name in groups, f"the {service} private endpoint has no DNS zone group"
        (config,) = groups.pop(name)["properties"]["privateDnsZoneConfigs"]
        zone_id = config["properties"]["privateDnsZoneId"]
        match = re.fullmatch(r"\[resourceId\('Microsoft\.Network/privateDnsZones', (.+)\)\]", zone_id)
        assert match, zone_id
        assert zones[match.group(1)] == PRIVATE_DNS_ZONES[service], service
    assert not groups, f"zone groups of no private endpoint: {sorted(groups)}"


def test_every_private_dns_zone_is_linked_to_the_network() -> None:
    arm = configuration(True)
    zones = zone_name_expressions(arm)
    assert sorted(zones.values()) == sorted(PRIVATE_DNS_ZONES.values())
    links = {link["name"]: link for link in of_type(arm, "Microsoft.Network/privateDnsZones/virtualNetworkLinks")}
    for zone_expression, zone in zones.items():
        name = f"[format('{{0}}/{{1}}', {zone_expression}, variables('vnetName'))]"
        assert name in links, f"{zone} is not linked to the network: the app would resolve public addresses"
        link = links.pop(name)
        assert link["properties"] == {"registrationEnabled": False, "virtualNetwork": {"id": "[variables('vnetId')]"}}
        assert link["location"] == "global"
    assert not links, f"links of no zone: {sorted(links)}"
    for zone_resource in of_type(arm, "Microsoft.Network/privateDnsZones"):
        assert zone_resource["location"] == "global"


def test_the_app_starts_only_once_private_dns_answers_for_storage_and_the_vault() -> None:
    """Its first start, and one-deploy writing the package, must already go through the endpoints."""
    arm = configuration(True)
    depends = set(one_of_type(arm, "Microsoft.Web/sites")["dependsOn"])
    for endpoint in private_endpoints(arm).values():
        group_type = "Microsoft.Network/privateEndpoints/privateDnsZoneGroups"
        group = f"[resourceId('{group_type}', {expression(endpoint['name'])}, 'default')]"
        assert group in depends, group
    for zone_expression in zone_name_expressions(arm):
        link_type = "Microsoft.Network/privateDnsZones/virtualNetworkLinks"
        link = f"[resourceId('{link_type}', {zone_expression}, variables('vnetName'))]"
        assert link in depends, link
    (deploy,) = of_type(arm, "Microsoft.Web/sites/extensions")
    assert "[resourceId('Microsoft.Web/sites', parameters('appName'))]" in deploy["dependsOn"]


def test_no_route_all_setting_flex_consumption_ignores() -> None:
    """Flex Consumption routes all outbound traffic through the integrated network by itself."""
    site = one_of_type(configuration(True), "Microsoft.Web/sites")["properties"]
    for properties in (site, site["siteConfig"]):
        assert {"vnetRouteAllEnabled", "outboundVnetRouting", "vnetContentShareEnabled"} & set(properties) == set()
    settings = {s["name"] for s in site["siteConfig"]["appSettings"]}
    assert {"WEBSITE_VNET_ROUTE_ALL", "WEBSITE_CONTENTOVERVNET", "WEBSITE_DNS_SERVER"} & settings == set()
