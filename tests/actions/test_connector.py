"""The committed connector is a fresh generation, valid Swagger 2.0, and faithful to the names
of the certified SmartDialog connector."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator.validation import OpenAPIV2SpecValidator

from tools.generate_connector import (
    DEFINITION_PATH,
    PROPERTIES_PATH,
    build_definition,
    build_properties,
    render,
)

REFERENCE = (
    Path(__file__).resolve().parents[3]
    / "shared/reference/smartdialog-connector/apiDefinition.swagger.json"
)
IMPLEMENTED_HERE = {
    "GetGroupContact",
    "CreateGroupContact",
    "UpdateGroupContact",
    "DeleteGroupContact",
    "DeleteAllGroupContacts",
    "CreateWhatsappTemplate",
    "WhatsAppOptIn",
    "WhatsAppOptOut",
    "GetUserCustomers",
    "GetCustomerServices",
    "GetCustomerWhatsAppTemplates",
    "GetWhatsappTemplateCategories",
    "GetCustomerWhatsappIdentities",
    "GetPhoneNumberRegions",
}


def operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        op["operationId"]: op
        for item in document["paths"].values()
        for method, op in item.items()
        if isinstance(op, dict) and "operationId" in op
    }


def walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DEFINITION_PATH.read_text("utf-8"))
    return document


def test_committed_files_equal_a_fresh_generation() -> None:
    stale = "stale: run python -m tools.generate_connector (make connector)"
    assert DEFINITION_PATH.read_text("utf-8") == render(build_definition()), stale
    assert PROPERTIES_PATH.read_text("utf-8") == render(build_properties()), stale


def test_definition_is_valid_swagger_2(committed: dict[str, Any]) -> None:
    errors = [e.message for e in OpenAPIV2SpecValidator(committed).iter_errors()]
    assert errors == []


def test_operation_ids_are_the_certified_connectors(committed: dict[str, Any]) -> None:
    assert set(operations(committed)) >= IMPLEMENTED_HERE
    if REFERENCE.is_file():  # beside the clone in the team's workspace
        upstream = operations(json.loads(REFERENCE.read_text("utf-8")))
        assert set(upstream) >= IMPLEMENTED_HERE, IMPLEMENTED_HERE - set(upstream)


def test_every_dropdown_points_at_an_operation_we_serve(committed: dict[str, Any]) -> None:
    ours = operations(committed)
    dropdowns = [n["x-ms-dynamic-values"] for n in walk(committed) if "x-ms-dynamic-values" in n]
    assert dropdowns
    for dropdown in dropdowns:
        target = ours[dropdown["operationId"]]
        names = {p["name"] for p in target["parameters"]}
        assert set(dropdown.get("parameters", {})) <= names, dropdown


def test_customer_service_template_category_and_region_dropdowns_are_wired(
    committed: dict[str, Any],
) -> None:
    targets = {
        n["x-ms-dynamic-values"]["operationId"]
        for n in walk(committed)
        if "x-ms-dynamic-values" in n
    }
    assert {
        "GetUserCustomers",
        "GetCustomerServices",
        "GetWhatsappTemplateCategories",
        "GetPhoneNumberRegions",
        "GetCustomerWhatsappIdentities",
    } <= targets
    customer = next(
        p
        for p in operations(committed)["GetGroupContact"]["parameters"]
        if p["name"] == "Customer-Id"
    )
    assert customer["in"] == "header"
    assert customer["required"] is False
    assert customer["x-ms-dynamic-values"]["value-collection"] == "customerUsers"


def test_operations_and_fields_carry_texts_for_the_flow_designer(committed: dict[str, Any]) -> None:
    for operation_id, op in operations(committed).items():
        if operation_id not in IMPLEMENTED_HERE:
            continue  # the send actions have their own tests
        assert op["summary"], operation_id
        assert op["description"], operation_id
        for param in op["parameters"]:
            described = param.get("schema", param)
            assert described.get("x-ms-summary") or param["in"] == "body", (operation_id, param)
            assert param.get("description") or param["in"] == "body", (operation_id, param)
            for prop in described.get("properties", {}).values():
                assert prop.get("x-ms-summary"), (operation_id, prop)
                assert prop.get("description"), (operation_id, prop)


def test_opt_in_and_out_are_deprecated_like_upstream(committed: dict[str, Any]) -> None:
    ours = operations(committed)
    assert ours["WhatsAppOptIn"]["deprecated"] is True
    assert ours["WhatsAppOptOut"]["deprecated"] is True
    assert "deprecated" not in ours["CreateGroupContact"]


def test_auth_is_a_function_key_header_and_the_connection_is_api_key(
    committed: dict[str, Any],
) -> None:
    assert committed["securityDefinitions"] == {
        "function_key": {"type": "apiKey", "in": "header", "name": "x-functions-key"}
    }
    assert committed["basePath"] == "/api"
    assert committed["host"] == "your-function-app.azurewebsites.net"
    properties = json.loads(PROPERTIES_PATH.read_text("utf-8"))["properties"]
    assert properties["connectionParameters"]["api_key"]["type"] == "securestring"
    assert "oAuthSettings" not in json.dumps(properties)


def test_body_fields_keep_the_certified_connectors_names(committed: dict[str, Any]) -> None:
    ours = operations(committed)
    contact = next(p for p in ours["CreateGroupContact"]["parameters"] if p["in"] == "body")[
        "schema"
    ]
    assert {
        "phone",
        "firstName",
        "birthYear",
        "phoneNumberRegions",
        "customContactProperties",
    } <= set(contact["properties"])
    template = next(p for p in ours["CreateWhatsappTemplate"]["parameters"] if p["in"] == "body")[
        "schema"
    ]
    assert set(template["required"]) == {"DisplayName", "RawContent", "Category", "Language"}
    assert set(template["properties"]["Buttons"]["items"]["properties"]) == {
        "Type",
        "Label",
        "Data",
    }
