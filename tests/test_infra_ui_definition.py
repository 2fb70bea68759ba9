"""The portal form (infra/createUiDefinition.json) fills the template's parameters and nothing else.

The "Deploy to Azure" button opens the template with this form instead of the portal's generic one (every
parameter of every sink at once). No portal is reachable here, so these tests read the form as data:
its outputs are template parameters, every required parameter is produced, every ``steps()``/``basics()``
reference names an element that exists, the element types are ones the CreateUiDefinition docs list,
secrets come from password boxes, and only the chosen sink's fields are shown and passed on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from o365collector.models import CONTENT_TYPES
from o365collector.sinks import SINK_TYPES
from tests.test_infra_template import secure_parameters, template, walk_strings

ROOT = Path(__file__).resolve().parents[1]
UI_DEFINITION = ROOT / "infra" / "createUiDefinition.json"
STEPS = ["auth", "tenants", "sink", "network", "monitoring"]
# Microsoft.Common.* and the other element types listed under "Elements" in the CreateUiDefinition docs.
DOCUMENTED_TYPES = {
    "Microsoft.Common.CheckBox",
    "Microsoft.Common.DropDown",
    "Microsoft.Common.EditableGrid",
    "Microsoft.Common.FileUpload",
    "Microsoft.Common.InfoBox",
    "Microsoft.Common.OptionsGroup",
    "Microsoft.Common.PasswordBox",
    "Microsoft.Common.Section",
    "Microsoft.Common.ServicePrincipalSelector",
    "Microsoft.Common.Slider",
    "Microsoft.Common.TagsByResource",
    "Microsoft.Common.TextBlock",
    "Microsoft.Common.TextBox",
    "Microsoft.Compute.CredentialsCombo",
    "Microsoft.Compute.SizeSelector",
    "Microsoft.Compute.UserNameTextBox",
    "Microsoft.KeyVault.KeyVaultCertificateSelector",
    "Microsoft.ManagedIdentity.IdentitySelector",
    "Microsoft.Network.PublicIpAddressCombo",
    "Microsoft.Network.VirtualNetworkCombo",
    "Microsoft.Solutions.ArmApiControl",
    "Microsoft.Solutions.ResourceSelector",
    "Microsoft.Storage.MultiStorageAccountCombo",
    "Microsoft.Storage.StorageAccountSelector",
    "Microsoft.Storage.StorageBlobSelector",
}
# Parameters the form leaves at the template's default, and why. A parameter added to the template must be
# put in the form or here (test_every_template_parameter_is_asked_or_left_at_its_default).
LEFT_AT_DEFAULT: dict[str, str] = {}
# Sinks the form offers: every sink the code knows except `file`, which writes to the instance's disk.
FORM_SINKS = set(SINK_TYPES) - {"file"}
# A reference to an element: steps('step').a.b... or basics('name').
REFERENCE = re.compile(r"\b(steps|basics)\('([^']+)'\)((?:\.\w+)*)")
# An output that passes a sink's field on only when that sink is chosen, with the same fallback otherwise:
# [if(equals(steps('sink').sinkType, '<sink>'), coalesce(steps('sink').<sink>.<field>, <fallback>), <fallback>)]
CHOSEN = re.compile(
    r"^\[if\(equals\(steps\('sink'\)\.sinkType, '(\w+)'\), "
    r"coalesce\(steps\('sink'\)\.(\w+)\.(\w+), (.+)\), (.+)\)\]$"
)
Path_ = tuple[str, ...]  # element names from the step (or "basics") down


@cache
def ui() -> dict[str, Any]:
    return dict(json.loads(UI_DEFINITION.read_text()))


def outputs() -> dict[str, str]:
    return dict(ui()["parameters"]["outputs"])


def walk_elements(elements: list[dict[str, Any]], path: Path_ = ()) -> Iterator[tuple[Path_, dict[str, Any]]]:
    """(path of names, element) for every element, sections' children included."""
    for element in elements:
        here = (*path, element["name"])
        yield here, element
        yield from walk_elements(element.get("elements", []), here)


def all_elements() -> dict[tuple[str, ...], dict[str, Any]]:
    """Elements by path: ("basics", name, ...) or (step, name, ...)."""
    found = {("basics", *p): e for p, e in walk_elements(ui()["parameters"]["basics"])}
    for step in ui()["parameters"]["steps"]:
        found.update({(step["name"], *p): e for p, e in walk_elements(step["elements"])})
    return found


def element_of_output(name: str) -> dict[str, Any]:
    """The element whose value an output passes on (its first reference other than the sink choice that guards
    it); a stand-in for the location."""
    found = [r for r in REFERENCE.findall(outputs()[name]) if r != ("steps", "sink", ".sinkType") or name == "sinkType"]
    if not found:
        assert outputs()[name] == "[location()]", f"{name} reads no element"
        return {"type": "location"}
    kind, first, rest = found[0]
    path = ("basics", first) if kind == "basics" else (first, *rest.strip(".").split("."))
    return all_elements()[path]


def literal(expression: str) -> Any:
    """A CreateUiDefinition literal ('text', a number, true/false) as a Python value."""
    if expression.startswith("'") and expression.endswith("'"):
        return expression[1:-1]
    return json.loads(expression)


# --- shape --------------------------------------------------------------------------------------------


def test_form_is_a_create_ui_definition_with_the_documented_handler_and_version() -> None:
    form = ui()
    assert form["handler"] == "Microsoft.Azure.CreateUIDef"
    assert form["version"] == "0.1.2-preview"
    assert form["$schema"] == "https://schema.management.azure.com/schemas/0.1.2-preview/CreateUIDefinition.MultiVm.json#"
    assert set(form["parameters"]) <= {"config", "basics", "steps", "outputs", "resourceTypes"}


def test_form_steps_follow_the_deployment_story() -> None:
    assert [step["name"] for step in ui()["parameters"]["steps"]] == STEPS
    for step in ui()["parameters"]["steps"]:
        assert step["label"], step["name"]
        assert step["elements"], step["name"]


def test_element_types_are_documented_and_names_unique_where_they_are_referenced() -> None:
    for path, element in all_elements().items():
        assert element["type"] in DOCUMENTED_TYPES, f"{'/'.join(path)}: {element['type']}"
        if element["type"] != "Microsoft.Common.InfoBox":
            assert element.get("label"), f"{'/'.join(path)} has no label"
        if element["type"] == "Microsoft.Common.PasswordBox":
            assert "defaultValue" not in element, "a password box takes no defaultValue"
        if element["type"] == "Microsoft.Common.Section":
            assert all(c["type"] != "Microsoft.Common.Section" for c in element["elements"]), "sections do not nest"
    for elements in [ui()["parameters"]["basics"], *(s["elements"] for s in ui()["parameters"]["steps"])]:
        names = [e["name"] for e in elements]
        assert len(names) == len(set(names)), names


# --- outputs against the template ----------------------------------------------------------------------


def test_every_output_is_a_template_parameter() -> None:
    assert set(outputs()) - set(template()["parameters"]) == set()


def test_every_required_template_parameter_is_produced() -> None:
    required = {n for n, p in template()["parameters"].items() if "defaultValue" not in p}
    assert required, "the template has no required parameter: the test would prove nothing"
    assert required - set(outputs()) == set()


def test_every_template_parameter_is_asked_or_left_at_its_default() -> None:
    parameters = set(template()["parameters"])
    assert set(LEFT_AT_DEFAULT) <= parameters, "a parameter left at its default is gone from the template"
    assert set(outputs()) & set(LEFT_AT_DEFAULT) == set()
    assert parameters - set(outputs()) - set(LEFT_AT_DEFAULT) == set(), "a new parameter is missing from the form"


def test_every_reference_names_an_element_that_exists() -> None:
    """steps('x').a.b and basics('y') in outputs, visibility rules and defaults point at real elements."""
    elements = all_elements()
    steps = {s["name"] for s in ui()["parameters"]["steps"]}
    references = 0
    for text in walk_strings(ui()["parameters"]):
        for kind, first, rest in REFERENCE.findall(text):
            references += 1
            if kind == "basics":
                assert ("basics", first) in elements, f"basics('{first}') does not exist"
                continue
            assert first in steps, f"no step {first}"
            path = (first, *rest.strip(".").split("."))
            assert path in elements, f"steps('{first}'){rest} does not exist"
    assert references >= len(outputs()), "fewer references than outputs: the pattern misses some"


def test_secrets_come_from_password_boxes_and_password_boxes_only_fill_secrets() -> None:
    secrets = secure_parameters() & set(outputs())
    assert secrets == secure_parameters(), "a secret parameter is not asked"
    for name in outputs():
        kind = element_of_output(name)["type"]
        if name in secrets:
            assert kind == "Microsoft.Common.PasswordBox", name
        else:
            assert kind != "Microsoft.Common.PasswordBox", f"{name} is not a securestring but comes from a password box"


def test_choices_are_values_the_template_accepts() -> None:
    parameters = template()["parameters"]
    for name in outputs():
        element = element_of_output(name)
        allowed = parameters[name].get("allowedValues")
        if element["type"] == "Microsoft.Common.DropDown" and allowed:
            values = [v["value"] for v in element["constraints"]["allowedValues"]]
            assert set(values) <= set(allowed), name
            labels = [v["label"] for v in element["constraints"]["allowedValues"]]
            assert element["defaultValue"] in labels, f"{name}: the default is a label of the list"


def test_defaults_in_the_form_equal_the_template_defaults() -> None:
    """A form default or fallback that drifted from the template would deploy something else than documented."""
    parameters = template()["parameters"]
    checked = 0
    for name, expression in outputs().items():
        element = element_of_output(name)
        default = parameters[name].get("defaultValue")
        if default is None or (isinstance(default, str) and default.startswith("[")):
            continue
        if element["type"] in {"Microsoft.Common.TextBox", "Microsoft.Common.Slider"} and "defaultValue" in element:
            assert element["defaultValue"] == default, name
            checked += 1
        if element["type"] == "Microsoft.Common.DropDown":
            choices = element["constraints"]["allowedValues"]
            (chosen,) = [v["value"] for v in choices if v["label"] == element["defaultValue"]]
            if name != "sinkType":  # the form starts from the sink most people pick
                assert chosen == default, name
                checked += 1
        match = CHOSEN.match(expression)
        if match:
            assert literal(match.group(4)) == literal(match.group(5)) == default, name
            checked += 1
    assert checked >= 10


def test_content_types_box_accepts_the_code_content_types_only() -> None:
    (element,) = [e for p, e in all_elements().items() if p == ("tenants", "contentTypes")]
    pattern = re.compile(element["constraints"]["regex"])
    assert pattern.fullmatch(",".join(CONTENT_TYPES))
    assert pattern.fullmatch(element["defaultValue"])
    assert not pattern.fullmatch("Audit.Exchange,Audit.Foo")
    assert not pattern.fullmatch("Audit.Exchange, DLP.All")  # the template strips spaces; the form keeps it simple


# --- the sink step ---------------------------------------------------------------------------------------


def sink_sections() -> dict[str, dict[str, Any]]:
    (step,) = [s for s in ui()["parameters"]["steps"] if s["name"] == "sink"]
    return {e["name"]: e for e in step["elements"] if e["type"] == "Microsoft.Common.Section"}


def test_one_sink_is_chosen_from_a_drop_down_of_the_sinks_the_code_has() -> None:
    (step,) = [s for s in ui()["parameters"]["steps"] if s["name"] == "sink"]
    (chooser,) = [e for e in step["elements"] if e["name"] == "sinkType"]
    assert chooser["type"] == "Microsoft.Common.DropDown"
    assert chooser["constraints"].get("multiselect") is not True
    assert {v["value"] for v in chooser["constraints"]["allowedValues"]} == FORM_SINKS
    assert outputs()["sinkType"] == "[steps('sink').sinkType]"
    assert set(sink_sections()) == FORM_SINKS


@pytest.mark.parametrize("sink", sorted(FORM_SINKS))
def test_a_sink_fields_are_shown_and_passed_on_only_when_it_is_chosen(sink: str) -> None:
    section = sink_sections()[sink]
    assert section["visible"] == f"[equals(steps('sink').sinkType, '{sink}')]"
    own = {n for n, e in outputs().items() if f"steps('sink').{sink}." in e}
    assert own, f"no output reads the {sink} section"
    for name in own:
        expression = outputs()[name]
        guarded = CHOSEN.match(expression)
        if guarded:
            assert guarded.group(1) == guarded.group(2) == sink, name
        else:  # a fallback that is not a literal (the Log Analytics tenant defaults to the subscription's)
            assert expression.startswith(f"[if(and(equals(steps('sink').sinkType, '{sink}'), "), name
    fields = {e["name"] for e in section["elements"] if e["type"] != "Microsoft.Common.InfoBox"}
    read = {m.group(3) for m in (CHOSEN.match(outputs()[n]) for n in own) if m}
    assert fields - read - {"tenantId"} == set(), f"{sink} asks for fields no output passes on"


def test_every_sink_parameter_belongs_to_one_sink_section() -> None:
    """The template's sink parameters (sink<Name>..., sinkUrl for http) are each read from one section."""
    sink_parameters = {n for n in template()["parameters"] if n.startswith("sink") and n != "sinkType"}
    for name in sink_parameters:
        sections = set(re.findall(r"steps\('sink'\)\.(\w+)\.", outputs()[name]))
        assert len(sections) == 1, name
        (section,) = sections
        # sinkUrl predates the sink<Name> naming and belongs to http.
        owner = "http" if name == "sinkUrl" else next(s for s in FORM_SINKS if name.lower().startswith("sink" + s))
        assert section == owner, f"{name} is read from the {section} section"


# --- the button ------------------------------------------------------------------------------------------


def deploy_button_url(template_url: str, form_url: str) -> str:
    """The portal's custom deployment link with a form: both URLs percent-encoded, joined by createUIDefinitionUri."""
    return (
        "https://portal.azure.com/#create/Microsoft.Template/uri/"
        + quote(template_url, safe="")
        + "/createUIDefinitionUri/"
        + quote(form_url, safe="")
    )


def test_deploy_button_url_encodes_both_files() -> None:
    base = "https://raw.githubusercontent.com/<owner>/<repo>/main/infra/"
    url = deploy_button_url(base + "azuredeploy.json", base + "createUiDefinition.json")
    assert url == (
        "https://portal.azure.com/#create/Microsoft.Template/uri/"
        "https%3A%2F%2Fraw.githubusercontent.com%2F%3Cowner%3E%2F%3Crepo%3E%2Fmain%2Finfra%2Fazuredeploy.json"
        "/createUIDefinitionUri/"
        "https%3A%2F%2Fraw.githubusercontent.com%2F%3Cowner%3E%2F%3Crepo%3E%2Fmain%2Finfra%2FcreateUiDefinition.json"
    )
    assert (ROOT / "infra" / "createUiDefinition.json").name in url
