"""The committed connector is a fresh generation, valid Swagger 2.0, and faithful to the names
of the certified SmartDialog connector."""

from __future__ import annotations

import json
import re
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
#: The certified connector's action names (its ``summary``) by operationId: a flow author looks
#: for the action under this name, so ours is the same, word for word. (Its DeleteTrigger, the
#: hidden unsubscribe of New Message, is DeleteNewMessageTrigger here.)
CERTIFIED_SUMMARIES = {
    "GetUserCustomers": "Get User Customers",
    "SendMessage": "Send Message",
    "SendReplyMessage": "Send Reply Message",
    "SendDiscussionReplyMessage": "Send Discussion Reply Message",
    "NewMessage": "New Message",
    "GetCustomerServices": "Get Customer Services",
    "GetCustomerWhatsAppTemplates": "Get Customer WhatsApp Templates",
    "CreateWhatsappTemplate": "Create WhatsApp template",
    "GetWhatsappTemplateCategories": "GetWhatsappTemplateCategories",
    "SendWhatsappTemplateMessage": "Send WhatsApp Message",
    "GetCustomerWhatsappIdentities": "Get Customer WhatsApp Identities",
    "WhatsAppOptOut": "WhatsApp Opt Out (deprecated)",
    "WhatsAppOptIn": "WhatsApp Opt In (deprecated)",
    "GetGroupContact": "Get Group Contact",
    "DeleteGroupContact": "Delete Group Contact",
    "UpdateGroupContact": "Update Group Contact",
    "DeleteAllGroupContacts": "Delete All Group Contacts",
    "CreateGroupContact": "Create group contact",
    "GetPhoneNumberRegions": "GetPhoneNumberRegions",
}
#: Field labels of the certified connector (``x-ms-summary``, or a schema's ``title``) that a
#: flow author knows, by operationId and field: ``param.<name>``, ``body.<path>``,
#: ``<status>.<path>`` (an answer) or ``notification.<path>`` (what a trigger receives).
CERTIFIED_LABELS = {
    **{
        (operation_id, f"body.{field}"): label
        for operation_id in ("SendMessage", "SendReplyMessage")
        for field, label in {
            "Sender": "Message Sender",
            "Content": "Message Content",
            "Protocol": "Message Protocol",
            "SendDateTime": "Send Datetime",
            "AttachmentUri": "Attachment Uri",
            "DlrUrl": "Dlr Url",
            "Recipients[].Address": "Address",
        }.items()
    },
    **{
        (operation_id, "200.Recipients[].Address"): "Recipient Address"
        for operation_id in ("SendMessage", "SendReplyMessage", "SendDiscussionReplyMessage")
    },
    ("SendReplyMessage", "param.ParentMessageId"): "ParentMessage Id",
    ("SendDiscussionReplyMessage", "body.Content"): "Message Content",
    ("SendWhatsappTemplateMessage", "body.Buttons[].Type"): "Type",
    ("SendWhatsappTemplateMessage", "body.Buttons[].Data"): "Text",
    ("SendWhatsappTemplateMessage", "body.SendDateTime"): "Send Datetime",
    ("SendWhatsappTemplateMessage", "body.AttachmentUri"): "Attachment Uri",
    ("SendWhatsappTemplateMessage", "body.DlrUrl"): "Dlr Url",
    ("SendWhatsappTemplateMessage", "200.messagePartCount"): "Message Part Count",
    ("SendWhatsappTemplateMessage", "200.recipients[].address"): "Recipient Address",
    ("GetPhoneNumberRegions", "200[].value"): "Region Country Code",
    ("GetCustomerServices", "200[].id"): "Service Id",
    ("GetUserCustomers", "200.customerUsers[].customerId"): "Customer Id",
    ("GetCustomerWhatsAppTemplates", "200[].displayName"): "Displayname",
    ("CreateGroupContact", "200"): "Contact Id",
    ("GetWhatsappTemplateCategories", "200[]"): "Category",
    ("SendWhatsappTemplateMessage", "body.BodyParameters[]"): "Template Body Parameters",
    ("SendWhatsappTemplateMessage", "body.HeaderParameters[]"): "Template Header Parameters",
    ("NewMessage", "notification.sender"): "Message Sender",
    ("NewMessage", "notification.protocol"): "Message Protocol",
}
#: Fields the certified connector shows among the important ones (``x-ms-visibility``); ours are
#: no less visible, though ours may be optional (they default from the app's settings).
CERTIFIED_IMPORTANT = {
    *(
        (operation_id, f"param.{name}")
        for operation_id in ("SendMessage", "SendReplyMessage", "SendWhatsappTemplateMessage")
        for name in ("Customer-Id", "Service-Id")
    ),
    ("SendDiscussionReplyMessage", "param.CustomerId"),
    ("CreateWhatsappTemplate", "param.Customer-Id"),
    ("CreateGroupContact", "param.Customer-Id"),
    ("NewMessage", "param.Customer-Id"),
    ("NewMessage", "param.Service"),
    *(
        (operation_id, f"body.{field}")
        for operation_id in ("SendMessage", "SendReplyMessage")
        for field in ("Protocol", "SendDateTime", "Recipients[].Address")
    ),
    *(
        ("NewMessage", f"notification.{field}")
        for field in ("recipient", "timestamp", "protocol", "messageId")
    ),
}


def operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        op["operationId"]: op
        for item in document["paths"].values()
        for method, op in item.items()
        if isinstance(op, dict) and "operationId" in op
    }


def operation_items(document: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each operation by operationId, with the path item it is in."""
    return {
        op["operationId"]: (item, op)
        for item in document["paths"].values()
        for method, op in item.items()
        if isinstance(op, dict) and "operationId" in op
    }


def _fields_below(schema: Any, where: str) -> Any:
    if not isinstance(schema, dict):
        return
    for name, prop in schema.get("properties", {}).items():
        yield f"{where}.{name}", prop
        yield from _fields_below(prop, f"{where}.{name}")
    if isinstance(schema.get("items"), dict):
        yield f"{where}[]", schema["items"]
        yield from _fields_below(schema["items"], f"{where}[]")


def fields(item: dict[str, Any], op: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An operation's labelled fields by the keys of :data:`CERTIFIED_LABELS`: its non-body
    parameters, its body's and answers' properties, and what its trigger sends."""
    found: dict[str, dict[str, Any]] = {}
    for param in op.get("parameters", []):
        if param["in"] == "body":
            found.update(_fields_below(param["schema"], "body"))
        else:
            found[f"param.{param['name']}"] = param
    for status, response in op.get("responses", {}).items():
        if isinstance(response.get("schema"), dict):
            found[status] = response["schema"]  # an answer that is one value: its title
        found.update(_fields_below(response.get("schema"), status))
    notification = item.get("x-ms-notification-content", {}).get("schema")
    found.update(_fields_below(notification, "notification"))
    return found


def label(node: dict[str, Any]) -> str | None:
    text = node.get("x-ms-summary") or node.get("title")
    return str(text) if text else None


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


def schema_properties(node: Any, where: str) -> Any:
    """Every (path, property schema) below ``node``, nested objects and array items included."""
    if isinstance(node, dict):
        for name, prop in node.get("properties", {}).items():
            yield f"{where}.{name}", prop
        for key, value in node.items():
            yield from schema_properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from schema_properties(value, f"{where}[{index}]")


def test_operations_and_fields_carry_texts_for_the_flow_designer(committed: dict[str, Any]) -> None:
    # Every operation we serve: the look-ups and contacts, the sends, the inbound actions.
    assert set(operations(committed)) > IMPLEMENTED_HERE | {"SendMessage", "NewMessage"}
    for operation_id, op in operations(committed).items():
        assert op["summary"], operation_id
        assert op["description"], operation_id
        for param in op["parameters"]:  # the body parameter too
            assert param.get("x-ms-summary"), (operation_id, param["name"])
            assert param.get("description"), (operation_id, param["name"])
        for where, prop in schema_properties(
            {"parameters": op["parameters"], "responses": op["responses"]}, operation_id
        ):
            assert prop.get("x-ms-summary"), where
            assert prop.get("description"), where


def reference_labels(op: dict[str, Any]) -> tuple[set[str], dict[str, str]]:
    """A certified operation's parameter labels (its name where it has none), and its body
    properties' labels by path."""
    params = {
        p.get("x-ms-summary") or p["name"] for p in op.get("parameters", []) if p["in"] != "body"
    }
    body = next((p["schema"] for p in op.get("parameters", []) if p["in"] == "body"), {})
    labels = {
        where: prop.get("x-ms-summary") or prop["title"]
        for where, prop in schema_properties(body, "body")
        if prop.get("x-ms-summary") or prop.get("title")
    }
    return params, labels


@pytest.mark.skipif(not REFERENCE.is_file(), reason="the certified definition is not beside us")
def test_every_certified_field_label_is_found_on_ours(committed: dict[str, Any]) -> None:
    # A flow author looks for the label they know; renamed parameters keep it as x-ms-summary.
    upstream = operations(json.loads(REFERENCE.read_text("utf-8")))
    ours = operations(committed)
    for operation_id in sorted(IMPLEMENTED_HERE):
        params, body = reference_labels(upstream[operation_id])
        our_params = {p.get("x-ms-summary") for p in ours[operation_id]["parameters"]}
        our_params |= {p["name"] for p in ours[operation_id]["parameters"]}
        assert params <= our_params, (operation_id, params - our_params)
        our_body = next(
            (p["schema"] for p in ours[operation_id]["parameters"] if p["in"] == "body"), {}
        )
        our_labels = {w: p.get("x-ms-summary") for w, p in schema_properties(our_body, "body")}
        for where, label in body.items():
            assert our_labels.get(where) == label, (operation_id, where, our_labels.get(where))


def titled(node: Any, where: str) -> Any:
    """Every (path, label) of a schema: itself, its properties and its array items, nested."""
    if not isinstance(node, dict):
        return
    if label(node):
        yield where, label(node)
    for name, prop in node.get("properties", {}).items():
        yield from titled(prop, f"{where}.{name}")
    yield from titled(node.get("items"), f"{where}[]")


def body_and_answer_labels(op: dict[str, Any]) -> dict[str, str]:
    """An operation's body and answer labels by path (``body...``, ``<status>...``)."""
    found = {}
    for param in op.get("parameters", []):
        if param["in"] == "body":
            found.update(titled(param["schema"], "body"))
    for status, response in op.get("responses", {}).items():
        found.update(titled(response.get("schema"), status))
    return found


@pytest.mark.skipif(not REFERENCE.is_file(), reason="the certified definition is not beside us")
def test_every_certified_answer_and_item_label_is_ours(committed: dict[str, Any]) -> None:
    """The flow designer shows an answer's fields and a list's items by these titles too (the
    test above compares the request's labels only): CreateGroupContact's "Contact Id", the
    category names' "Category", a template's "Template Body Parameters" had slipped."""
    upstream = operations(json.loads(REFERENCE.read_text("utf-8")))
    ours = operations(committed)
    # New Message's body is its subscription, ours by design (docs/actions.md).
    for operation_id in sorted(set(upstream) & set(ours) - {"NewMessage"}):
        theirs = body_and_answer_labels(upstream[operation_id])
        mine = body_and_answer_labels(ours[operation_id])
        differ = {w: (t, mine.get(w)) for w, t in theirs.items() if mine.get(w) != t}
        assert not differ, (operation_id, differ)


def formats(node: Any, where: str) -> Any:
    """Every (path, format) of a schema's properties and array items, nested."""
    if not isinstance(node, dict):
        return
    if "format" in node:
        yield where, node["format"]
    for name, prop in node.get("properties", {}).items():
        yield from formats(prop, f"{where}.{name}")
    yield from formats(node.get("items"), f"{where}[]")


@pytest.mark.skipif(not REFERENCE.is_file(), reason="the certified definition is not beside us")
def test_every_certified_answer_fields_format_is_ours(committed: dict[str, Any]) -> None:
    """The send answers' MessagePartCount / messagePartCount had lost the certified int32."""
    upstream = operations(json.loads(REFERENCE.read_text("utf-8")))
    ours = operations(committed)
    for operation_id in sorted(set(upstream) & set(ours) - {"NewMessage"}):
        for status, response in upstream[operation_id].get("responses", {}).items():
            mine = ours[operation_id].get("responses", {}).get(status, {}).get("schema")
            found = dict(formats(mine, status))
            theirs = dict(formats(response.get("schema"), status))
            differ = {w: (f, found.get(w)) for w, f in theirs.items() if found.get(w) != f}
            assert not differ, (operation_id, differ)


def test_renamed_parameters_carry_the_certified_display_names(committed: dict[str, Any]) -> None:
    ours = operations(committed)

    def label(operation_id: str, name: str) -> tuple[str, str]:
        param = next(p for p in ours[operation_id]["parameters"] if p["name"] == name)
        return param["in"], param["x-ms-summary"]

    assert label("CreateGroupContact", "Customer-Id") == ("header", "Customer")  # path Customer
    assert label("CreateGroupContact", "GroupService") == ("path", "Group Service")
    assert label("GetCustomerServices", "ServiceType") == ("query", "Service Type")
    assert label("GetCustomerServices", "AllowReplyMessage") == ("query", "Allow Reply Message")


def test_button_data_is_required_in_the_connector(committed: dict[str, Any]) -> None:
    template = next(
        p
        for p in operations(committed)["CreateWhatsappTemplate"]["parameters"]
        if p["in"] == "body"
    )["schema"]
    assert set(template["properties"]["Buttons"]["items"]["required"]) == {"Type", "Data"}


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


def test_an_idempotency_key_says_what_a_request_without_one_does(committed: dict[str, Any]) -> None:
    """A send without a RequestId in its body is sent again when repeated without a key: the
    key's description must not promise that a RequestId covers it."""
    for operation_id, op in operations(committed).items():
        [key] = [p for p in op.get("parameters", []) if p.get("name") == "Idempotency-Key"] or [
            None
        ]
        if key is None:
            continue
        [body] = [p for p in op["parameters"] if p.get("in") == "body"]
        if "RequestId" not in body["schema"].get("properties", {}):
            assert "with neither" in key["description"], operation_id


def test_actions_have_the_certified_connectors_names(committed: dict[str, Any]) -> None:
    ours = operations(committed)
    names = {operation_id: ours[operation_id]["summary"] for operation_id in CERTIFIED_SUMMARIES}
    assert names == CERTIFIED_SUMMARIES
    # Our own actions keep their own names, none of them taken from a certified action.
    own = {op["summary"] for op_id, op in ours.items() if op_id not in CERTIFIED_SUMMARIES}
    assert not own & set(CERTIFIED_SUMMARIES.values())


def test_fields_have_the_certified_connectors_labels(committed: dict[str, Any]) -> None:
    ours = operation_items(committed)
    found = {
        (op_id, where): label(fields(*ours[op_id])[where]) for op_id, where in CERTIFIED_LABELS
    }
    assert found == CERTIFIED_LABELS


def test_fields_the_certified_connector_shows_as_important_are_important(
    committed: dict[str, Any],
) -> None:
    ours = operation_items(committed)
    visibility = {
        (op_id, where): fields(*ours[op_id])[where].get("x-ms-visibility")
        for op_id, where in CERTIFIED_IMPORTANT
    }
    assert visibility == dict.fromkeys(CERTIFIED_IMPORTANT, "important")
    # Still optional where they default from the app's settings.
    send = fields(*ours["SendMessage"])
    assert send["param.Customer-Id"]["required"] is False
    assert send["param.Service-Id"]["required"] is False


def test_service_and_template_dropdowns_ask_what_the_certified_ones_ask(
    committed: dict[str, Any],
) -> None:
    ours = operation_items(committed)

    def service(operation_id: str) -> dict[str, Any]:
        parameters = fields(*ours[operation_id])["param.Service-Id"]["x-ms-dynamic-values"]
        return dict(parameters["parameters"])

    customer = {"Customer-Id": {"parameter": "Customer-Id"}}
    one_way = {**customer, "ServiceType": "OneWay"}
    assert service("SendMessage") == {**one_way, "AllowReplyMessage": False}
    assert service("SendReplyMessage") == {**one_way, "AllowReplyMessage": True}
    assert service("SendWhatsappTemplateMessage") == {**one_way, "AllowReplyMessage": False}
    template = fields(*ours["SendWhatsappTemplateMessage"])["body.TemplateName"]
    assert template["x-ms-dynamic-values"]["value-path"] == "id"
    assert template["x-ms-dynamic-values"]["value-title"] == "extensionParameters/rawContent"
    # The path is in the look-up's answer.
    assert "200[].extensionParameters.rawContent" in fields(*ours["GetCustomerWhatsAppTemplates"])


@pytest.mark.skipif(not REFERENCE.is_file(), reason="the certified definition is not beside us")
def test_same_named_actions_and_fields_have_the_certified_names(committed: dict[str, Any]) -> None:
    upstream = operation_items(json.loads(REFERENCE.read_text("utf-8")))
    ours = operation_items(committed)
    both = sorted(set(upstream) & set(ours))
    assert {op_id: upstream[op_id][1]["summary"] for op_id in both} == CERTIFIED_SUMMARIES
    wrong = []
    for op_id in both:
        if ours[op_id][1]["summary"] != upstream[op_id][1]["summary"]:
            wrong.append((op_id, "summary", ours[op_id][1]["summary"]))
        theirs, mine = fields(*upstream[op_id]), fields(*ours[op_id])
        for where in sorted(set(theirs) & set(mine)):
            if label(theirs[where]) and label(mine[where]) != label(theirs[where]):
                wrong.append((op_id, where, label(mine[where]), label(theirs[where])))
        # Important there, important here: same-named fields, and parameters we renamed that
        # kept the certified label (the group contacts' Customer, NewMessage's Customer).
        mine_by_label = {label(p): p for w, p in mine.items() if w.startswith("param.")}
        for where, node in theirs.items():
            if node.get("x-ms-visibility") != "important":
                continue
            match = mine.get(where) or mine_by_label.get(label(node))
            if match is None or match.get("x-ms-visibility") != "important":
                wrong.append((op_id, where, "not important"))
        # Shown there, not behind "Show advanced options" here (the sends' RequestId, DlrUrl
        # and AttachmentUri were).
        for where in sorted(set(theirs) & set(mine)):
            hidden = mine[where].get("x-ms-visibility") in ("advanced", "internal")
            if "x-ms-visibility" not in theirs[where] and hidden:
                wrong.append((op_id, where, mine[where]["x-ms-visibility"]))
        # A same-named dropdown lists the same things, asked for in the same terms.
        for where in sorted(set(theirs) & set(mine)):
            their_dropdown = theirs[where].get("x-ms-dynamic-values")
            if their_dropdown and dropdown(mine[where]) != dropdown(theirs[where]):
                wrong.append((op_id, where, dropdown(mine[where]), dropdown(theirs[where])))
    assert wrong == []


def dropdown(node: dict[str, Any]) -> dict[str, Any]:
    """A field's dropdown without the references to other parameters (those may be renamed)."""
    values = dict(node.get("x-ms-dynamic-values", {}))
    values["parameters"] = {
        name: value
        for name, value in values.get("parameters", {}).items()
        if not isinstance(value, dict)
    }
    return values


def test_cancel_says_a_scheduled_send_cannot_be_cancelled(committed: dict[str, Any]) -> None:
    """A send with a SendDateTime is sent (SmartDialog holds it) before its time: CancelMessage
    answers 409, and the designer's text must say so, as docs/sending.md "Cancel" does."""
    cancel = operations(committed)["CancelMessage"]["description"]
    assert "SendDateTime" in cancel
    assert "no cancel" in cancel


def test_a_group_contacts_custom_properties_require_no_name_in_the_answer(
    committed: dict[str, Any],
) -> None:
    """SmartDialog's answer may leave a property's name out (shared/smartdialog's ContactProperty);
    the answer's schema was the input's, whose name is required; a request's still is."""
    ours = operations(committed)
    answer = ours["GetGroupContact"]["responses"]["200"]["schema"]
    item = answer["properties"]["customContactProperties"]["items"]
    assert set(item["properties"]) == {"name", "value"}
    assert "required" not in item
    body = next(p for p in ours["CreateGroupContact"]["parameters"] if p["in"] == "body")
    assert body["schema"]["properties"]["customContactProperties"]["items"]["required"] == ["name"]


def test_no_summary_says_a_before_a_vowel(committed: dict[str, Any]) -> None:
    """DeleteOptOutTrigger's read 'Remove a opt-out subscription'."""
    summaries = {op_id: op.get("summary", "") for op_id, op in operations(committed).items()}
    assert {k: s for k, s in summaries.items() if re.search(r"\b[Aa] [aeioAEIO]", s)} == {}


@pytest.mark.parametrize("operation_id", ["GetMessageStatus", "GetBulkStatus", "GetQuestionStatus"])
def test_a_status_operation_declares_its_pending_answer(
    committed: dict[str, Any], operation_id: str
) -> None:
    """Each answers 202 with Location and Retry-After while anything is pending. GetBulkStatus
    declared only its 200 (found in review: its pending answers matched no declared status, so
    a flow calling it had no schema for them)."""
    pending = operations(committed)[operation_id]["responses"].get("202")
    assert pending is not None, operation_id
    assert {"Location", "Retry-After"} <= set(pending.get("headers", {})), operation_id
    assert pending.get("schema"), operation_id
