"""The committed contract and the reusable validator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox import contract
from sandbox.contract import load_contract, match_operation, validate_request

SOURCE = contract.default_source_path()
PROSE_KEYS = {"description", "title", "summary", "x-ms-summary", "example", "contact", "info"}


@pytest.mark.skipif(
    not SOURCE.is_file(), reason=f"reference definition not present at {SOURCE} (only in CI/dev)"
)
def test_committed_contract_matches_what_the_reference_generates() -> None:
    generated = contract.render(contract.generate(json.loads(SOURCE.read_text(encoding="utf-8"))))
    assert contract.CONTRACT_PATH.read_text(encoding="utf-8") == generated, (
        "sandbox/contract.json is stale: run python -m sandbox.contract --write"
    )


def _prose_keys(node: object, under_properties: bool = False) -> list[str]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in PROSE_KEYS and not under_properties:
                found.append(key)
            found.extend(_prose_keys(value, under_properties=key == "properties"))
    elif isinstance(node, list):
        for item in node:
            found.extend(_prose_keys(item))
    return found


def test_contract_carries_no_prose() -> None:
    document = load_contract().document
    assert _prose_keys(document) == []
    new_message = document["paths"]["/service/{Service}/pipelines/actions"]["post"]
    body_schema = new_message["parameters"][2]["schema"]
    # the property *named* description stays (it is required), its prose default does not
    assert body_schema["properties"]["description"] == {"type": "string"}


def test_contract_has_all_twenty_operations() -> None:
    assert len(load_contract().by_id) == 20


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/api-integrations/v1/customers", ("GetUserCustomers", {})),
        ("GET", "/whatsapp/templates/categories", ("GetWhatsappTemplateCategories", {})),
        (
            "GET",
            "/whatsapp/templates/1001",
            ("GetCustomerWhatsAppTemplates", {"Customer-Id": "1001"}),
        ),
        ("POST", "/messages/discussion/reply", ("SendDiscussionReplyMessage", {})),
        ("POST", "/messages/reply/abc", ("SendReplyMessage", {"ParentMessageId": "abc"})),
        (
            "GET",
            "/api-integrations/v1/groupcontact/1001/My%20Group/%2B358401234567?Region=FI",
            (
                "GetGroupContact",
                {"Customer": "1001", "Group Service": "My Group", "Phone": "+358401234567"},
            ),
        ),
        (
            "delete",
            "/pipelines/p1/actions/a1",
            ("DeleteTrigger", {"Pipeline-Id": "p1", "Action-Id": "a1"}),
        ),
    ],
)
def test_match_operation_decodes_path_parameters(
    method: str, path: str, expected: tuple[str, dict[str, str]]
) -> None:
    assert match_operation(method, path) == expected


def test_match_operation_returns_none_for_unknown_routes() -> None:
    assert match_operation("GET", "/nope") is None
    assert match_operation("PATCH", "/customers") is None


VALID_SEND = {
    "Sender": "S",
    "Protocol": "SMS",
    "Content": "Hi",
    "Recipients": [{"Address": "+358401234567"}],
}
SEND_HEADERS = {"Customer-Id": "1001", "Service-Id": "s"}


def test_valid_send_has_no_violations() -> None:
    assert validate_request("POST", "/messages", SEND_HEADERS, None, VALID_SEND) == []


def test_headers_are_case_insensitive_and_bodies_may_be_raw_json() -> None:
    headers = {"customer-id": "1001", "SERVICE-ID": "s"}
    assert (
        validate_request("POST", "/messages", headers, None, json.dumps(VALID_SEND).encode()) == []
    )


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"Customer-Id": "1001"}, VALID_SEND, "Missing required header parameter 'Service-Id'"),
        (SEND_HEADERS, {**VALID_SEND, "Protocol": "Fax"}, "body.Protocol must be one of"),
        (
            SEND_HEADERS,
            {**VALID_SEND, "AdMessage": "yes"},
            "body.AdMessage must be of type boolean",
        ),
        (
            SEND_HEADERS,
            {**VALID_SEND, "CustomerData": "x" * 256},
            "body.CustomerData must be at most 255",
        ),
        (
            SEND_HEADERS,
            {**VALID_SEND, "RequestId": "r" * 1001},
            "body.RequestId must be at most 1000",
        ),
        (
            SEND_HEADERS,
            {**VALID_SEND, "Recipients": [{}]},
            "body.Recipients[0].Address is required",
        ),
        (
            SEND_HEADERS,
            {**VALID_SEND, "SendDateTime": "tomorrow"},
            "body.SendDateTime is not a valid",
        ),
        (
            SEND_HEADERS,
            {"Sender": "S", "Protocol": "SMS", "Content": "Hi"},
            "body.Recipients is required",
        ),
        (SEND_HEADERS, None, "Request body is required"),
        (SEND_HEADERS, b"{not json", "Request body is not valid JSON"),
    ],
)
def test_send_violations_name_the_problem(
    headers: dict[str, str], body: object, expected: str
) -> None:
    errors = validate_request("POST", "/messages", headers, None, body)
    assert any(expected in e for e in errors), errors


def test_protocol_also_accepts_whatsapp_as_a_documented_deviation() -> None:
    body = {**VALID_SEND, "Protocol": "WhatsApp"}
    assert validate_request("POST", "/messages", SEND_HEADERS, None, body) == []


def test_boolean_header_must_be_true_or_false() -> None:
    headers = {"ServiceType": "OneWay", "AllowReplyMessage": "True"}
    assert validate_request("GET", "/services/1001", headers) == []
    errors = validate_request("GET", "/services/1001", {**headers, "AllowReplyMessage": "yes"})
    assert errors == [
        "Header parameter 'AllowReplyMessage' must be a boolean (true or false), got 'yes'"
    ]


def test_required_header_with_a_default_is_still_required() -> None:
    assert validate_request("GET", "/services/1001", {}) == [
        "Missing required header parameter 'ServiceType'"
    ]


def test_new_message_body_requires_description_as_the_definition_says() -> None:
    body = {
        "name": "n",
        "actionType": "HttpRequest",
        "options": {"endpointUrl": "http://x", "httpVerb": "POST"},
    }
    errors = validate_request(
        "POST", "/service/s/pipelines/actions", {"Customer": "1001"}, None, body
    )
    assert errors == ["body.description is required"]


def test_query_may_come_in_the_path_or_as_a_mapping() -> None:
    path = "/groupcontact/1001/g/%2B358401234567"
    assert validate_request("GET", path + "?Region=FI") == []
    assert validate_request("GET", path, {}, {"Region": ["FI"]}) == []


def test_unknown_route_is_one_violation() -> None:
    assert validate_request("GET", "/nope") == ["No operation matches GET /nope"]


@pytest.mark.skipif(not SOURCE.is_file(), reason=f"reference definition not present at {SOURCE}")
def test_contract_command_writes_and_checks(tmp_path: Path) -> None:
    output = tmp_path / "contract.json"
    assert contract.main(["--check", "--output", str(output)]) == 1  # missing counts as stale
    assert contract.main(["--write", "--output", str(output)]) == 0
    assert contract.main(["--check", "--output", str(output)]) == 0
    assert output.read_text(encoding="utf-8") == contract.CONTRACT_PATH.read_text(encoding="utf-8")
