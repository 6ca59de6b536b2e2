"""Hostile and careless input on every action: a 400 (or 413) naming what is wrong, never a
500, and nothing taken: no upstream call, no quota token, nothing queued."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from shared.actions import all_specs
from tests.actions.conftest import GROUP, App, call, wire

#: Values json.loads accepts but nothing downstream can use, as raw JSON text.
HOSTILE_VALUES = {
    "out-of-range float": "1e999",
    "NaN": "NaN",
    "Infinity": "-Infinity",
    "integer over 4,300 digits": "9" * 5000,
    "lone surrogate": '"\\ud800"',
}


def json_actions() -> list[tuple[str, str, dict[str, str]]]:
    """(operationId, method, route params) of every action that takes a JSON body."""
    from shared.actions._spec import Body

    found = []
    for spec in all_specs():
        if any(
            isinstance(m, Body) for info in spec.input.model_fields.values() for m in info.metadata
        ):
            route = dict.fromkeys(spec.path_params, "x1")
            found.append((spec.operation_id, spec.method, route))
    return found


JSON_ACTIONS = json_actions()


def test_there_are_json_actions_to_check() -> None:
    names = {op for op, _, _ in JSON_ACTIONS}
    assert {"SendMessage", "CreateGroupContact", "SendBulkMessages"} <= names


@pytest.mark.parametrize("text", HOSTILE_VALUES.values(), ids=HOSTILE_VALUES.keys())
@pytest.mark.parametrize(
    ("operation_id", "method", "route"), JSON_ACTIONS, ids=[a[0] for a in JSON_ACTIONS]
)
def test_unusable_json_values_are_400_naming_the_field_on_every_json_action(
    app: App, operation_id: str, method: str, route: dict[str, str], text: str
) -> None:
    body = ('{"Content": ' + text + ', "Sender": "Acme"}').encode()

    reply = call(operation_id, method=method, route=route, body=body)

    assert reply.status == 400, reply.body
    assert reply.body["type"] == "urn:smartdialog-functions:problem:validation"
    assert "Content" in reply.fields
    assert app.upstream() == []


def test_a_non_finite_personalization_value_is_named_by_its_json_path(app: App) -> None:
    body = b'{"Sender": "Acme", "Content": "Hi $(n)", "Recipients": [{"Address": "+358401234567"},'
    body += b'{"Address": "+358401234568", "Personalization": {"n": 1e999, "m": NaN}}]}'

    reply = call("SendMessage", method="POST", headers={"Service-Id": "s-1001-oneway"}, body=body)

    assert reply.status == 400, reply.body
    assert sorted(reply.fields) == [
        "Recipients[1].Personalization.m",
        "Recipients[1].Personalization.n",
    ]
    assert app.upstream() == []


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_json_is_400_not_500(app: App, depth: int) -> None:
    body = b'{"firstName": ' + b"[" * depth + b"]" * depth + b', "phone": "+358401234567"}'

    reply = call("CreateGroupContact", method="POST", route={"GroupService": GROUP}, body=body)

    assert reply.status == 400, reply.body
    assert reply.fields in (["firstName"], ["body"])
    assert app.upstream() == []


def test_a_lone_surrogate_in_a_field_name_is_400_and_the_answer_is_valid_json(app: App) -> None:
    body = b'{"\\udc00name": "x", "phone": "+358401234567"}'

    reply = call("CreateGroupContact", method="POST", route={"GroupService": GROUP}, body=body)

    assert reply.status == 400
    json.loads(reply.raw.decode("utf-8"))  # strict UTF-8: the answer itself must encode
    assert app.upstream() == []


# --- upstream paths and headers -------------------------------------------------------------


PATH_AND_HEADER_CASES: list[tuple[str, str, str, dict[str, str], dict[str, str], Any, str]] = [
    (
        "Customer-Id .. would climb to /messages",
        "DeleteAllGroupContacts",
        "DELETE",
        {"GroupService": "messages"},
        {"Customer-Id": ".."},
        None,
        "Customer-Id",
    ),
    (
        "Customer-Id .",
        "GetCustomerWhatsappIdentities",
        "GET",
        {},
        {"Customer-Id": "."},
        None,
        "Customer-Id",
    ),
    (
        "group service ..",
        "DeleteAllGroupContacts",
        "DELETE",
        {"GroupService": ".."},
        {},
        None,
        "GroupService",
    ),
    (
        "control character in a header",
        "GetCustomerWhatsappIdentities",
        "GET",
        {},
        {"Customer-Id": "10\x0001"},
        None,
        "Customer-Id",
    ),
    (
        "control character in a path",
        "DeleteAllGroupContacts",
        "DELETE",
        {"GroupService": "s-1\x7f"},
        {},
        None,
        "GroupService",
    ),
    (
        "non-ASCII header",
        "GetCustomerWhatsappIdentities",
        "GET",
        {},
        {"Customer-Id": "1001é"},
        None,
        "Customer-Id",
    ),
]


@pytest.mark.parametrize(
    ("operation_id", "method", "route", "headers", "body", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in PATH_AND_HEADER_CASES],
)
def test_values_that_would_change_the_upstream_request_are_400(
    app: App,
    operation_id: str,
    method: str,
    route: dict[str, str],
    headers: dict[str, str],
    body: Any,
    field: str,
) -> None:
    reply = call(operation_id, method=method, route=route, headers=headers, body=body)

    assert reply.status == 400, reply.body
    assert reply.fields == [field]
    assert app.upstream() == []


def test_customer_categories_on_the_templates_look_up_is_400_naming_it_not_a_502(
    app: App,
) -> None:
    """Its path would be GetWhatsappTemplateCategories': that answer failed as templates."""
    headers = {"Customer-Id": "categories"}
    reply = call("GetCustomerWhatsAppTemplates", method="GET", headers=headers)
    assert reply.status == 400, reply.body
    assert reply.fields == ["Customer-Id"]
    assert app.upstream() == []


def test_a_non_ascii_service_type_is_400_before_any_quota_token(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire(monkeypatch, app.sandbox, SMARTDIALOG_QUOTA_PERIOD_SECONDS="86400")
    used_before = app.quota_used()

    reply = call("GetCustomerServices", method="GET", params={"ServiceType": "TwoWäy"})

    assert reply.status == 400, reply.body
    assert reply.fields == ["ServiceType"]
    assert app.upstream() == []
    assert app.quota_used() == used_before


def test_more_service_types_than_a_few_is_400_before_any_call(app: App) -> None:
    """Each listed type is a SmartDialog call of the shared quota: a long list is refused."""
    reply = call("GetCustomerServices", method="GET", params={"ServiceType": "A,B,C,D"})

    assert reply.status == 400, reply.body
    assert reply.fields == ["ServiceType"]
    assert app.upstream() == []
    few = call("GetCustomerServices", method="GET", params={"ServiceType": "OneWay,TwoWay,OneWay"})
    assert few.status == 200, few.body
    assert [r["headers"]["ServiceType"] for r in app.upstream()] == ["OneWay", "TwoWay"]


# --- the body cap ---------------------------------------------------------------------------


def test_a_body_over_the_cap_is_413_before_it_is_parsed(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire(monkeypatch, app.sandbox, SMARTDIALOG_MAX_REQUEST_BYTES="2048")
    body = b'{"phone": "+358401234567", "firstName": "' + b"a" * 3000 + b'"}'

    reply = call("CreateGroupContact", method="POST", route={"GroupService": GROUP}, body=body)

    assert reply.status == 413, reply.body
    assert reply.headers["Content-Type"] == "application/problem+json"
    assert reply.body["type"] == "urn:smartdialog-functions:problem:too-large"
    assert "SMARTDIALOG_MAX_REQUEST_BYTES" in reply.body["detail"]
    assert app.upstream() == []


def test_an_announced_content_length_over_the_cap_is_413(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire(monkeypatch, app.sandbox, SMARTDIALOG_MAX_REQUEST_BYTES="2048")

    reply = call(
        "CreateGroupContact",
        method="POST",
        route={"GroupService": GROUP},
        headers={"Content-Length": "23000000"},
        body={"phone": "+358401234567"},
    )

    assert reply.status == 413


@pytest.mark.parametrize("announced", ["\u00b2", "9" * 5000])
def test_an_unreadable_content_length_is_not_a_500(app: App, announced: str) -> None:
    """'²' is a digit to str.isdigit() but not to int(); int() refuses 4,301 digits."""
    reply = call("GetPhoneNumberRegions", method="GET", headers={"Content-Length": announced})
    assert reply.status != 500, reply.body


def test_the_default_cap_is_5_mib_and_a_body_under_it_is_read(app: App) -> None:
    from shared.settings import get_settings

    assert get_settings().max_request_bytes == 5 * 1024 * 1024
    reply = call(
        "CreateGroupContact",
        method="POST",
        route={"GroupService": GROUP},
        body={"phone": "+358401234567", "firstName": "a" * 100_000},
    )
    assert reply.status == 400  # over the field's own limit: read and validated, not 413
    assert reply.fields == ["firstName"]


def test_a_value_the_client_refuses_is_a_400_naming_it_not_a_500() -> None:
    from shared.actions import upstream_problem
    from shared.smartdialog import InvalidParameterError

    refused = InvalidParameterError(
        operation_id="DeleteTrigger", parameter="Pipeline-Id", location="path", reason="is .."
    )

    problem = upstream_problem(refused)

    assert problem.status == 400
    assert [e.field for e in problem.errors] == ["Pipeline-Id"]


def test_a_field_name_cannot_forge_or_flood_a_log_line(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """Unknown field names are logged with the refusal: a line break in one forged a second
    line (alerts match on such text), and a 3,000-character one was logged whole."""
    forged = "x\nsmartdialog.actions ERROR SendMessage failed unexpectedly: dead-lettered"
    with caplog.at_level(logging.INFO):
        reply = call(
            "CreateGroupContact",
            method="POST",
            route={"GroupService": GROUP},
            body={"phone": "+358401234567", forged: 1, "y" * 3000: 2},
        )
    assert reply.status == 400
    [line] = [
        r.getMessage() for r in caplog.records if "CreateGroupContact answered" in r.getMessage()
    ]
    assert "\n" not in line
    assert len(line) < 400


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("Sender", "S" * 34, "Should have at most 20 characters, not 34."),
        ("Content", "x" * 5000, "Should have at most 4096 characters, not 5000."),
    ],
)
def test_a_text_over_its_length_is_counted_in_characters_not_items(
    app: App, field: str, value: str, message: str
) -> None:
    """A bound put on a text after its own validator (not blank) was reported as a list's:
    "at most 20 items after validation"."""
    body = {"Sender": "Acme", "Content": "Hi", field: value,
            "Recipients": [{"Address": "+358401234567"}]}  # fmt: skip

    reply = call("SendMessage", method="POST", headers={"Service-Id": "s-1001-oneway"}, body=body)

    assert reply.status == 400, reply.body
    assert reply.body["errors"] == [{"field": field, "message": message}]
    assert app.upstream() == []


@pytest.mark.parametrize(
    ("operation_id", "method", "route"), JSON_ACTIONS, ids=[a[0] for a in JSON_ACTIONS]
)
def test_an_unknown_body_field_is_named_on_every_json_action(
    app: App, operation_id: str, method: str, route: dict[str, str]
) -> None:
    """A misspelt field is named, not dropped in silence (PutRecipientList and the rules' dry
    run took ``{"Recipients": 5}`` and named only the missing ``Numbers``)."""
    reply = call(operation_id, method=method, route=route, body={"Surely-Not-A-Field": 1})

    assert reply.status == 400, reply.body
    assert "Surely-Not-A-Field" in reply.fields
    assert app.upstream() == []
