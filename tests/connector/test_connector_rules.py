"""Microsoft's published connector rules, applied to the committed connector files.

The files must pass Microsoft's own JSON Schemas for connector definitions and properties
(vendored in tests/connector/vendor, see its README) and the string rules of the connector
certification guidance: an operation summary is at most 80 characters, has no slash and ends with
a letter or digit (unless it is the certified SmartDialog connector's own name for the action); a
description of more than one word ends with a period; a field label (x-ms-summary, or a schema
title) is in Title Case unless it is one of the certified SmartDialog connector's own labels,
which flows migrating from it look for. Beyond the schemas: every
dropdown passes only parameters its operation has, every 2xx answer with a body (all but 202 and
204) has a schema, and every trigger has its notification content and a DELETE to unsubscribe.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import json5
import jsonschema
import pytest
from pydantic import BaseModel, Field

from shared.actions import ActionSpec, Param, ResponseDoc
from shared.actions._spec import ActionInput, ActionResponse
from tests.actions.test_connector import CERTIFIED_SUMMARIES, REFERENCE, operations
from tools.generate_connector import (
    CONNECTION_HEADER,
    DEFINITION_PATH,
    KEPT_LABELS,
    PROPERTIES_PATH,
    build_definition,
    title_case,
)

VENDOR = Path(__file__).resolve().parent / "vendor"
#: The certified connector's labels that are not in Title Case, kept as they are for migration.
CERTIFIED_SENTENCE_CASE_LABELS = {"Recipient address", "Sender address"}
MINOR_WORDS = {"a", "an", "and", "as", "at", "by", "for", "from", "in", "nor", "of", "on", "or"}
MINOR_WORDS |= {"per", "the", "to", "via", "vs", "with"}
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@cache
def vendored_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json5.loads((VENDOR / name).read_text("utf-8"))
    return schema


def schema_errors(document: Any, name: str) -> list[str]:
    schema = vendored_schema(name)
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message[:200]}"
        for error in validator.iter_errors(document)
    ]


def definition() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DEFINITION_PATH.read_text("utf-8"))
    return document


def properties() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(PROPERTIES_PATH.read_text("utf-8"))
    return document


def nodes(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every mapping below ``node`` with a readable path to it."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from nodes(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from nodes(value, f"{where}[{index}]")


def path_operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def is_title_case(label: str) -> bool:
    for index, word in enumerate(label.split(" ")):
        if index and word in MINOR_WORDS:
            continue
        if any(part[:1].islower() for part in word.split("-")):
            return False
    return True


# --- Microsoft's JSON Schemas ---------------------------------------------------------------------


def test_definition_passes_microsofts_schema() -> None:
    assert schema_errors(definition(), "apiDefinition.swagger.schema.json") == []


def test_properties_pass_microsofts_schema() -> None:
    assert schema_errors(properties(), "paconn-apiProperties.schema.json") == []


def test_the_vendored_schemas_catch_connector_mistakes() -> None:
    # The schemas know the x-ms extensions, not only Swagger: a wrong visibility, an
    # x-ms-notification-content on an operation instead of its path, a connection
    # parameter of an unknown type all fail.
    broken = definition()
    _, _, op = next(path_operations(broken))
    op["x-ms-visibility"] = "hidden"
    op["x-ms-notification-content"] = {"description": "Misplaced.", "schema": {}}
    errors = schema_errors(broken, "apiDefinition.swagger.schema.json")
    assert any("x-ms-visibility" in e and "'hidden'" in e for e in errors), errors
    assert any("x-ms-notification-content" in e for e in errors), errors

    broken_properties = properties()
    parameters = broken_properties["properties"]["connectionParameters"]
    parameters["api_key"]["type"] = "password"
    assert schema_errors(broken_properties, "paconn-apiProperties.schema.json")


# --- string rules ---------------------------------------------------------------------------------


def test_summaries_are_short_without_slash_or_trailing_punctuation() -> None:
    for _, _, op in path_operations(definition()):
        summary = op["summary"]
        assert len(summary) <= 80, (op["operationId"], summary)
        assert "/" not in summary, (op["operationId"], summary)
        # Except the certified connector's own names ("WhatsApp Opt In (deprecated)").
        if summary != CERTIFIED_SUMMARIES.get(op["operationId"]):
            assert summary[-1].isalnum(), (op["operationId"], summary)


def test_descriptions_end_with_a_period() -> None:
    # Microsoft: "No period required if there's a single word."
    for name, document in (("definition", definition()), ("properties", properties())):
        for where, node in nodes(document, name):
            text = node.get("description")
            if isinstance(text, str) and len(text.split()) > 1:
                assert text.endswith("."), (where, text)


def labels(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Every x-ms-summary, and every schema title, of the operations and definitions."""
    for where, node in nodes({"paths": document["paths"], "definitions": document["definitions"]}):
        for key in ("x-ms-summary", "title"):
            if isinstance(node.get(key), str):
                yield f"{where}/{key}", node[key]


def test_labels_are_title_case_except_the_certified_connectors() -> None:
    found = dict(labels(definition()))
    assert found
    wrong = {where: label for where, label in found.items() if not is_title_case(label)}
    assert set(wrong.values()) <= CERTIFIED_SENTENCE_CASE_LABELS, {
        where: label
        for where, label in wrong.items()
        if label not in CERTIFIED_SENTENCE_CASE_LABELS
    }
    # The allowance is used (it is not stale) and is the generator's.
    assert set(wrong.values()) == CERTIFIED_SENTENCE_CASE_LABELS == KEPT_LABELS


@pytest.mark.skipif(not REFERENCE.is_file(), reason="the certified definition is not beside us")
def test_the_kept_labels_are_the_certified_connectors() -> None:
    certified = {label for _, label in labels(json.loads(REFERENCE.read_text("utf-8")))}
    assert certified >= CERTIFIED_SENTENCE_CASE_LABELS
    # And no other certified label escapes Title Case: the allowance lists them all.
    assert {label for label in certified if not is_title_case(label)} == (
        CERTIFIED_SENTENCE_CASE_LABELS
    )


def test_title_case_capitalises_words_but_keeps_minor_words_acronyms_and_certified_labels() -> None:
    assert title_case("Send date and time") == "Send Date and Time"
    assert title_case("Use SMS fallback") == "Use SMS Fallback"
    assert title_case("opt-in state of a WhatsApp number") == "Opt-In State of a WhatsApp Number"
    assert title_case("Delivery report URL") == "Delivery Report URL"
    assert title_case("Sender address") == "Sender address"
    assert all(is_title_case(title_case(label)) for label in ("accepted", "or else", "to do"))


# --- references, answers, triggers ---------------------------------------------------------------


def test_every_dropdown_passes_only_parameters_its_operation_has() -> None:
    references = 0
    for _, _, op in path_operations(definition()):
        own = {p["name"] for p in op["parameters"]}
        for where, node in nodes(op["parameters"], op["operationId"]):
            for key in ("x-ms-dynamic-values", "x-ms-dynamic-schema"):
                for value in node.get(key, {}).get("parameters", {}).values():
                    if isinstance(value, dict) and "parameter" in value:
                        references += 1
                        assert value["parameter"] in own, (where, value)
    assert references  # the Customer-Id references of the customer's dropdowns are checked


def test_the_unsubscribe_and_unregister_service_dropdowns_fall_back_to_the_apps_customer() -> None:
    # They have no Customer-Id of their own: the services look-up runs without one.
    ops = operations(definition())
    for operation_id in ("UnregisterInboundWebhook", "DeleteNewMessageTrigger"):
        service = next(p for p in ops[operation_id]["parameters"] if p["name"] == "Service")
        assert service["x-ms-dynamic-values"]["parameters"] == {"ServiceType": "TwoWay"}
    customer = next(
        p for p in ops["GetCustomerServices"]["parameters"] if p["name"] == "Customer-Id"
    )
    assert customer["required"] is False


def test_every_2xx_answer_with_a_body_has_a_schema() -> None:
    for _, _, op in path_operations(definition()):
        for status, response in op["responses"].items():
            if status.startswith("2") and status not in ("202", "204"):
                assert "schema" in response, (op["operationId"], status)


def test_every_action_answering_202_declares_the_200_its_step_outputs() -> None:
    """The engine polls a 202's Location to a final 200, and the designer takes a step's
    outputs (dynamic content) from the 200: an async action without one has no outputs."""
    for _, _, op in path_operations(definition()):
        if "202" in op["responses"] and op.get("x-ms-visibility") != "internal":
            assert "schema" in op["responses"].get("200", {}), op["operationId"]


def test_actions_that_need_a_status_urls_token_are_hidden_from_the_designer() -> None:
    """Their token is internal (the engine's poll carries it): in the designer they would
    always answer 401, so they are the engine's, not an action to pick."""
    for _, _, op in path_operations(definition()):
        token = [p for p in op.get("parameters", []) if p["name"] == "token" and p["in"] == "query"]
        if token and token[0].get("x-ms-visibility") == "internal":
            assert op.get("x-ms-visibility") == "internal", op["operationId"]


def test_every_trigger_has_notification_content_and_a_delete_to_unsubscribe() -> None:
    document = definition()
    triggers = [(path, op) for path, _, op in path_operations(document) if "x-ms-trigger" in op]
    assert triggers
    for path, op in triggers:
        content = document["paths"][path].get("x-ms-notification-content")
        assert content, op["operationId"]
        assert content["schema"]["properties"], op["operationId"]
        created = op["responses"]["201"]
        assert "Location" in created["headers"], op["operationId"]
        # The Location is the subscription path plus its id: a DELETE must be served there.
        unsubscribe = [
            other
            for other_path, method, other in path_operations(document)
            if method == "delete" and re.fullmatch(re.escape(path) + r"/\{[^}/]+\}", other_path)
        ]
        assert unsubscribe, f"{op['operationId']}: no DELETE {path}/{{id}}"


# --- the generator refuses what the rules forbid --------------------------------------------------


class _NoInput(ActionInput):
    pass


class _LookupInput(ActionInput):
    kind: Annotated[str, Param("query", "Kind"), Field(description="The kind.")]


class _LookupDoc(BaseModel):
    id: str = Field(description="The id.", json_schema_extra={"x-ms-summary": "Id"})


def _picked(parameters: dict[str, Any]) -> Any:
    dropdown = {"operationId": "Lookup", "value-path": "id", "parameters": parameters}
    extra = {"x-ms-summary": "Item", "x-ms-dynamic-values": dropdown}
    return Field(description="The item.", json_schema_extra=extra)


class _PickLeavingOutARequiredParameter(ActionInput):
    item: Annotated[str, Param("query", "Item"), _picked({"Kind": {"parameter": "Kind"}})]


class _PickLeavingOutAnOptionalParameter(ActionInput):
    item: Annotated[
        str, Param("query", "Item"), _picked({"Other": {"parameter": "Nope"}, "Kind": "x"})
    ]


def _spec(operation_id: str, **overrides: Any) -> ActionSpec[Any]:
    fields: dict[str, Any] = {
        "operation_id": operation_id,
        "method": "GET",
        "route": operation_id.lower(),
        "input": _NoInput,
        "handler": lambda ctx, inp: ActionResponse.empty(204),
        "summary": "Do a thing",
        "description": "Does a thing.",
        "responses": (ResponseDoc(204, "Done."),),
    }
    return ActionSpec(**{**fields, **overrides})


def test_generation_fails_on_a_2xx_answer_without_a_model() -> None:
    with pytest.raises(ValueError, match="Bodiless: its 200 answer needs a model"):
        build_definition([_spec("Bodiless", responses=(ResponseDoc(200, "Done."),))])
    build_definition([_spec("Accepted", responses=(ResponseDoc(202, "Queued."),))])


def test_generation_fails_when_a_dropdown_leaves_out_a_parameter_its_look_up_requires() -> None:
    lookup = _spec(
        "Lookup", input=_LookupInput, responses=(ResponseDoc(200, "Items.", _LookupDoc),)
    )
    with pytest.raises(ValueError, match="Pick: the Lookup dropdown needs Kind"):
        build_definition([lookup, _spec("Pick", input=_PickLeavingOutARequiredParameter)])
    # A reference the look-up can do without is dropped; constant values stay.
    document = build_definition([lookup, _spec("Pick", input=_PickLeavingOutAnOptionalParameter)])
    [item] = [p for p in operations(document)["Pick"]["parameters"] if "x-ms-dynamic-values" in p]
    assert item["x-ms-dynamic-values"]["parameters"] == {"Kind": "x"}


def test_the_connection_name_parameter_is_sent_as_the_connection_header() -> None:
    props = properties()["properties"]
    parameter = props["connectionParameters"]["connectionName"]
    assert parameter["type"] == "string"
    assert parameter["uiDefinition"]["displayName"] == "Connection name"
    assert parameter["uiDefinition"]["constraints"]["required"] == "false"
    [policy] = [p for p in props["policyTemplateInstances"] if p["templateId"] == "setheader"]
    assert policy["parameters"] == {
        "x-ms-apimTemplateParameter.name": CONNECTION_HEADER,
        "x-ms-apimTemplateParameter.value": "@connectionParameters('connectionName')",
        "x-ms-apimTemplateParameter.existsAction": "skip",  # an action's own header wins
        "x-ms-apimTemplate-policySection": "Request",
    }
    assert CONNECTION_HEADER == "X-SmartDialog-Connection"
    # The policy's @connectionParameters reference names a parameter the connection has.
    for instance in props["policyTemplateInstances"]:
        for value in instance["parameters"].values():
            for name in re.findall(r"@connectionParameters\('([^']+)'\)", str(value)):
                assert name in props["connectionParameters"], name
