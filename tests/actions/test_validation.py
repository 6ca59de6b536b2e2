"""Bad input: 400 problem+json naming every offending field, no upstream call, no quota token."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import pytest
from pydantic import AfterValidator, BaseModel, ConfigDict

from shared.actions._pipeline import parse_input
from shared.actions._spec import ActionInput, ActionRequest, Body
from shared.actions.fields import require_http_url
from shared.phone import MAX_REGIONS
from shared.problems import Problem
from shared.settings import get_settings
from tests.actions.conftest import CUSTOMER, GROUP, IDENTITY, App, call, wire

CONTACT_ROUTE = {"GroupService": GROUP, "Phone": "+358401234567"}
TEMPLATE = {
    "DisplayName": "Order shipped",
    "RawContent": "Your order {{1}} is on its way.",
    "Category": "UTILITY",
    "Language": "en",
}


def template(**changes: Any) -> dict[str, Any]:
    return {**TEMPLATE, **changes}


def button(kind: str, data: str | None) -> dict[str, Any]:
    return {"Type": kind, "Label": "Go", **({"Data": data} if data is not None else {})}


# (id, operationId, method, route params, query, headers, body, expected fields)
Case = tuple[str, str, str, dict[str, str], dict[str, str], dict[str, str], Any, list[str]]
CASES: list[Case] = [
    ("invalid phone", "CreateGroupContact", "POST", {"GroupService": GROUP}, {}, {},
     {"phone": "12"}, ["phone"]),
    ("letters as phone", "CreateGroupContact", "POST", {"GroupService": GROUP}, {}, {},
     {"phone": "call me"}, ["phone"]),
    ("missing phone", "CreateGroupContact", "POST", {"GroupService": GROUP}, {}, {},
     {"firstName": "Ada"}, ["phone"]),
    ("every bad contact field at once", "CreateGroupContact", "POST", {"GroupService": GROUP},
     {}, {},
     {"phone": "0401234567", "gender": "Robot", "birthYear": 1850, "email": "nope",
      "countryCode": "FI", "active": "sometimes", "customContactProperties": [{"value": "x"}],
      "phoneNumberRegions": ["ZZ"], "nickname": "Ada"},
     ["gender", "birthYear", "email", "countryCode", "active", "customContactProperties[0].name",
      "phoneNumberRegions[0]", "nickname"]),
    ("birth year in the future", "CreateGroupContact", "POST", {"GroupService": GROUP}, {}, {},
     {"phone": "0401234567", "birthYear": 3000}, ["birthYear"]),
    ("birth year as text", "UpdateGroupContact", "PUT", CONTACT_ROUTE, {}, {},
     {"birthYear": "nineteen"}, ["birthYear"]),
    ("body not JSON", "CreateGroupContact", "POST", {"GroupService": GROUP}, {}, {},
     b"{phone: 040}", ["body"]),
    ("body an array", "UpdateGroupContact", "PUT", CONTACT_ROUTE, {}, {}, [1, 2], ["body"]),
    ("body missing", "CreateGroupContact", "POST", {"GroupService": GROUP}, {}, {}, None,
     ["body"]),
    ("body not UTF-8", "CreateGroupContact", "POST", {"GroupService": GROUP}, {}, {},
     b"\xff\xfe{}", ["body"]),
    ("bad body and bad path together", "UpdateGroupContact", "PUT",
     {"GroupService": GROUP, "Phone": "x"}, {}, {}, b"nope", ["body", "Phone"]),
    ("invalid path phone", "GetGroupContact", "GET", {"GroupService": GROUP, "Phone": "abc"},
     {}, {}, None, ["Phone"]),
    ("unknown region", "GetGroupContact", "GET", CONTACT_ROUTE, {"Region": "XX"}, {}, None,
     ["Region"]),
    ("number invalid in the given region", "DeleteGroupContact", "DELETE",
     {"GroupService": GROUP, "Phone": "040123"}, {"Region": "SE"}, {}, None, ["Phone"]),
    ("blank group service", "DeleteAllGroupContacts", "DELETE", {"GroupService": " "}, {}, {},
     None, ["GroupService"]),
    ("reply filter not a boolean", "GetCustomerServices", "GET", {},
     {"ServiceType": "OneWay", "AllowReplyMessage": "maybe"}, {}, None, ["AllowReplyMessage"]),
    ("invalid identity number", "CreateWhatsappTemplate", "POST", {"IdentityNumber": "12"}, {},
     {}, TEMPLATE, ["IdentityNumber"]),
    ("template fields missing", "CreateWhatsappTemplate", "POST", {"IdentityNumber": IDENTITY},
     {}, {}, {"Buttons": []}, ["DisplayName", "RawContent", "Category", "Language"]),
    ("display name too long", "CreateWhatsappTemplate", "POST", {"IdentityNumber": IDENTITY},
     {}, {}, template(DisplayName="x" * 101), ["DisplayName"]),
    ("language not 2 letters", "CreateWhatsappTemplate", "POST", {"IdentityNumber": IDENTITY},
     {}, {}, template(Language="eng"), ["Language"]),
    ("language with digits", "CreateWhatsappTemplate", "POST", {"IdentityNumber": IDENTITY},
     {}, {}, template(Language="e1"), ["Language"]),
    ("every bad button at once", "CreateWhatsappTemplate", "POST",
     {"IdentityNumber": IDENTITY}, {}, {},
     template(Buttons=[
         button("Url", "ftp://example.com"),
         button("Url", "https://example.com/" + "a" * 1990),
         button("Url", None),
         button("Call", "+358 40 123 4567 890 1"),
         button("Call", "12"),
         button("Call", None),
         button("QuickReply", "x" * 21),
         button("Hangup", "x"),
     ]),
     ["Buttons[0].Data", "Buttons[1].Data", "Buttons[2].Data", "Buttons[3].Data",
      "Buttons[4].Data", "Buttons[5].Data", "Buttons[6].Data", "Buttons[7].Type"]),
    ("relative attachment URL", "CreateWhatsappTemplate", "POST", {"IdentityNumber": IDENTITY},
     {}, {}, template(AttachmentUrl="/img.png"), ["AttachmentUrl"]),
    ("attachment URL with a control character", "CreateWhatsappTemplate", "POST",
     {"IdentityNumber": IDENTITY}, {}, {}, template(AttachmentUrl="https://example.com/\u0001"),
     ["AttachmentUrl"]),
    ("URLs with a space in the host or path", "CreateWhatsappTemplate", "POST",
     {"IdentityNumber": IDENTITY}, {}, {},
     template(AttachmentUrl="https://exa mple.com/x",
              Buttons=[button("Url", "https://example.com/a b")]),
     ["AttachmentUrl", "Buttons[0].Data"]),
    ("blank customer header, even with a default customer", "GetCustomerWhatsappIdentities",
     "GET", {}, {}, {"Customer-Id": "   "}, None, ["Customer-Id"]),
    ("blank customer header on a contact", "DeleteGroupContact", "DELETE", CONTACT_ROUTE, {},
     {"Customer-Id": "\t "}, None, ["Customer-Id"]),
    ("blank service type", "GetCustomerServices", "GET", {}, {"ServiceType": "   "}, {}, None,
     ["ServiceType"]),
    ("blank template id", "GetCustomerWhatsAppTemplates", "GET", {}, {"TemplateId": "  "}, {},
     None, ["TemplateId"]),
    ("service type of commas only", "GetCustomerServices", "GET", {}, {"ServiceType": ","}, {},
     None, ["ServiceType"]),
    ("service type of blanks and commas", "GetCustomerServices", "GET", {},
     {"ServiceType": " , ,"}, {}, None, ["ServiceType"]),
    ("service type over 200 characters", "GetCustomerServices", "GET", {},
     {"ServiceType": "z" * 201}, {}, None, ["ServiceType"]),
    ("template id over 200 characters", "GetCustomerWhatsAppTemplates", "GET", {},
     {"TemplateId": "y" * 201}, {}, None, ["TemplateId"]),
    *[(f"group service over 200 characters: {op}", op, method, {**route, "GroupService": "x" * 201},
       {}, {}, body, ["GroupService"])
      for op, method, route, body in [
          ("GetGroupContact", "GET", CONTACT_ROUTE, None),
          ("CreateGroupContact", "POST", {}, {"phone": "+358401234567"}),
          ("UpdateGroupContact", "PUT", CONTACT_ROUTE, {"firstName": "Ada"}),
          ("DeleteGroupContact", "DELETE", CONTACT_ROUTE, None),
          ("DeleteAllGroupContacts", "DELETE", {}, None)]],
    ("blank button data", "CreateWhatsappTemplate", "POST", {"IdentityNumber": IDENTITY}, {},
     {}, template(Buttons=[button("QuickReply", None), button("QuickReply", ""),
                           button("QuickReply", "  "), button("Url", " "), button("Call", "")]),
     ["Buttons[0].Data", "Buttons[1].Data", "Buttons[2].Data", "Buttons[3].Data",
      "Buttons[4].Data"]),
    ("update that changes nothing", "UpdateGroupContact", "PUT", CONTACT_ROUTE, {}, {}, {},
     ["body"]),
    ("update with only phone regions", "UpdateGroupContact", "PUT", CONTACT_ROUTE, {}, {},
     {"phoneNumberRegions": ["FI"]}, ["body"]),
    ("update with only nulls", "UpdateGroupContact", "PUT", CONTACT_ROUTE, {}, {},
     {"active": None, "email": None}, ["body"]),
    ("both opt-in numbers invalid", "WhatsAppOptIn", "PUT",
     {"Sender": "sender", "Recipient": "123"}, {}, {}, None, ["Sender", "Recipient"]),
    ("opt-out recipient invalid", "WhatsAppOptOut", "DELETE",
     {"Sender": IDENTITY, "Recipient": "+1"}, {}, {}, None, ["Recipient"]),
    ("e-mail with a control character", "CreateGroupContact", "POST", {"GroupService": GROUP},
     {}, {}, {"phone": "+358401234567", "email": "a\u0000@b.example"}, ["email"]),
    ("phone with an extension", "CreateGroupContact", "POST", {"GroupService": GROUP},
     {}, {}, {"phone": "+358401234567 ext. 5"}, ["phone"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("operation_id", "method", "route", "params", "headers", "body", "fields"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_input_is_400_naming_every_field_without_any_upstream_call(
    app: App,
    operation_id: str,
    method: str,
    route: dict[str, str],
    params: dict[str, str],
    headers: dict[str, str],
    body: Any,
    fields: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A day-long quota period: no earlier grant leaves the window while the test runs, so the
    # count can only stay equal (nothing taken) or grow (a token taken).
    wire(monkeypatch, app.sandbox, SMARTDIALOG_QUOTA_PERIOD_SECONDS="86400")
    used_before = app.quota_used()
    reply = call(
        operation_id, method=method, route=route, params=params, headers=headers, body=body
    )
    assert reply.status == 400, reply.body
    assert reply.headers["Content-Type"] == "application/problem+json"
    assert reply.body["type"] == "urn:smartdialog-functions:problem:validation"
    assert reply.body["status"] == 400
    assert sorted(set(reply.fields)) == sorted(fields)
    assert all(e["message"] for e in reply.body["errors"])
    assert app.upstream() == []
    assert app.quota_used() == used_before


def test_missing_customer_names_the_header_and_the_setting(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire(monkeypatch, app.sandbox, SMARTDIALOG_CUSTOMER_ID="")
    reply = call("GetCustomerWhatsappIdentities", method="GET", headers={"Customer-Id": ""})
    assert reply.status == 400
    [error] = reply.body["errors"]
    assert error["field"] == "Customer-Id"
    assert "SMARTDIALOG_CUSTOMER_ID" in error["message"]
    assert app.upstream() == []


def test_problem_detail_lists_the_fields_and_instance_carries_the_tracking_id(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """The log line's text names the tracking id too: it was only in ``extra``, which the
    Python worker does not forward, so in Azure ``traces | where message has "run-42"`` found
    nothing."""
    with caplog.at_level(logging.INFO, logger="smartdialog.actions"):
        reply = call(
            "CreateGroupContact",
            method="POST",
            route={"GroupService": GROUP},
            headers={"x-ms-client-tracking-id": "run-42"},
            body={"phone": "1"},
        )
    assert reply.body["instance"] == "urn:smartdialog-functions:request:run-42"
    assert "phone" in reply.body["detail"]
    [line] = [r.getMessage() for r in caplog.records if "answered 400" in r.getMessage()]
    assert "run-42" in line


def test_a_handlers_unexpected_failure_is_logged_under_its_tracking_id(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """Its cause (the traceback) and its answered line both name the tracking id in their
    text, as docs/actions.md promises for a 500."""
    from dataclasses import replace

    from shared.actions._pipeline import run_action
    from shared.actions.catalog import get_spec

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    spec = replace(get_spec("GetUserCustomers"), handler=broken)
    request = ActionRequest("GET", headers={"x-ms-client-tracking-id": "run-500"})
    with caplog.at_level(logging.INFO, logger="smartdialog.actions"):
        assert run_action(spec, request).status == 500
    lines = [r.getMessage() for r in caplog.records if "GetUserCustomers" in r.getMessage()]
    assert len(lines) == 2  # the cause, then the answered line
    assert all("run-500" in line for line in lines), lines


@pytest.mark.parametrize(
    ("headers", "logged"),
    [
        ({}, "12345678-9abc-4def-8123-456789abcdef"),  # generated
        ({"x-ms-client-tracking-id": "12345678-9abc-4def-8123-456789abcdef"}, None),
        ({"x-request-id": "0401234567"}, "***4567"),  # a caller's number stays masked
        # ... also joined to the rest by a dash or an underscore (it was logged whole)
        ({"x-request-id": "run-358401234567-x"}, "run-***4567-x"),
        ({"x-ms-client-tracking-id": "flow_0401234567"}, "flow_***4567"),
        # ... but not a hex id's digits between its letters (about half of uuid4().hex ids)
        ({"x-request-id": "0b358bc966c24334a3fbb044644756d9"}, None),
    ],
)
def test_a_tracking_id_of_a_uuids_shape_is_logged_whole_even_if_it_starts_with_digits(
    app: App,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    headers: dict[str, str],
    logged: str | None,
) -> None:
    """A UUID whose first 8 hex digits are all digits (about 2 % of generated ones) read as a
    phone number and was logged masked, while the problem's instance kept it whole: the
    operator's ``traces | where message has "<id>"`` found no line of the 500."""
    import types
    import uuid
    from dataclasses import replace

    from shared.actions import _spec
    from shared.actions._pipeline import run_action
    from shared.actions.catalog import get_spec

    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    generated = uuid.UUID("12345678-9abc-4def-8123-456789abcdef")
    spec = replace(get_spec("GetUserCustomers"), handler=broken)
    with monkeypatch.context() as scoped, caplog.at_level(logging.INFO, "smartdialog.actions"):
        # No port generates the id: only the tracking-id module's own `uuid` name is replaced,
        # for this one request (the process's uuid.uuid4 is left alone).
        scoped.setattr(_spec, "uuid", types.SimpleNamespace(uuid4=lambda: generated))
        answer = run_action(spec, ActionRequest("GET", headers=dict(headers)))
    tracking_id = answer.body["instance"].rsplit(":", 1)[1]
    assert tracking_id == next(iter(headers.values()), str(generated))
    records = [r for r in caplog.records if "GetUserCustomers" in r.getMessage()]
    lines = [r.getMessage() for r in records]
    assert len(lines) == 2
    assert all(f"request {logged or tracking_id}" in line for line in lines), lines
    # The record's trackingId extra (what the worker ships as a custom dimension) is masked as
    # its text is: a caller's number-like id went out whole there.
    assert [getattr(r, "trackingId", None) for r in records] == [logged or tracking_id] * 2


def test_blank_customer_setting_counts_as_missing(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire(monkeypatch, app.sandbox, SMARTDIALOG_CUSTOMER_ID="   ")
    reply = call("GetCustomerWhatsappIdentities", method="GET")
    assert reply.status == 400
    assert reply.fields == ["Customer-Id"]
    assert app.upstream() == []


def test_empty_customer_header_uses_the_app_setting_and_padding_is_stripped(app: App) -> None:
    empty = call("GetCustomerWhatsappIdentities", method="GET", headers={"Customer-Id": ""})
    assert empty.status == 200
    assert (
        call("GetCustomerWhatsappIdentities", method="GET", headers={"Customer-Id": " 1001 "})
    ).status == 200
    paths = [entry["path"] for entry in app.assert_upstream_valid()]
    assert paths == ["/api-integrations/v1/whatsapp/identities/1001"] * 2


@pytest.mark.parametrize("tail", ["/", "/?Region=FI", "//"])
def test_a_delete_with_an_empty_phone_is_a_400_naming_it_never_a_delete_of_all(
    app: App, tail: str
) -> None:
    """The host ignores a trailing slash, so ".../contacts/" (a flow's empty Phone) matched
    DeleteAllGroupContacts' route: every contact of the group was deleted."""
    from devhost import DevHost, load_app

    repo = Path(__file__).resolve().parents[2]
    with DevHost(
        load_app("function_app:app", repo), repo / "host.json", port=0, queues=False
    ) as host:
        response = httpx.delete(
            f"{host.url}/api/groups/{GROUP}/contacts{tail}",
            headers={"Customer-Id": CUSTOMER},
            timeout=10,
        )
    assert response.status_code == 400, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["Phone"]
    assert app.upstream() == []  # nothing reached SmartDialog


def _dev_host_call(method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request through the dev host (real HTTP, the host's routing and query parsing)."""
    from devhost import DevHost, load_app

    repo = Path(__file__).resolve().parents[2]
    with DevHost(
        load_app("function_app:app", repo), repo / "host.json", port=0, queues=False
    ) as host:
        headers = {"Customer-Id": CUSTOMER, **kwargs.pop("headers", {})}
        return httpx.request(method, f"{host.url}/api/{path}", headers=headers, timeout=10,
                             **kwargs)  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "extra", "field"),
    [
        ("DELETE", f"groups/{GROUP}/contacts?Phone=%2B358401234567", {}, "Phone"),
        ("DELETE", f"groups/{GROUP}/contacts", {"json": {"phone": "+358401234567"}}, "body"),
        ("PUT", f"groups/{GROUP}/contacts/0401234567?Region=SE",
         {"json": {"firstName": "Changed"}}, "Region"),
        ("GET", f"groups/{GROUP}/contacts/0701234567?region=SE", {}, "region"),
        ("GET", "services?serviceType=OneWay", {}, "serviceType"),
        # Where the certified connector puts them: the one-way list answered, the header dropped.
        ("GET", "services", {"headers": {"ServiceType": "Group"}}, "ServiceType"),
        ("GET", "services?ServiceType=TwoWay", {"headers": {"allowreplymessage": "true"}},
         "AllowReplyMessage"),
    ],
)  # fmt: skip
def test_input_an_action_does_not_read_is_a_400_naming_it_never_dropped(
    app: App, method: str, path: str, extra: dict[str, Any], field: str
) -> None:
    """A phone in the query or the body of DeleteAllGroupContacts was dropped and the whole
    group emptied; a Region on UpdateGroupContact (regions come from its body) was dropped and
    the number read in FI changed another contact. Query names are read as declared: a
    ``region`` was dropped as well, and so was a query parameter given as a header."""
    response = _dev_host_call(method, path, **extra)
    assert response.status_code == 400, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert app.upstream() == []  # nothing reached SmartDialog


def test_the_function_key_in_the_query_is_the_hosts_never_refused(app: App) -> None:
    for code in ("code", "Code"):
        params = {code: "function-key", "ServiceType": "OneWay"}
        reply = call("GetCustomerServices", method="GET", params=params)
        assert reply.status == 200, reply.body
    long = call("GetCustomerServices", method="GET", params={"x" * 5000: "1"})
    assert (long.status, long.fields) == (400, ["x" * 100 + "..."])  # not echoed whole
    typo = call("GetCustomerServices", method="GET", params={"code": "k", "servicetype": "OneWay"})
    assert typo.status == 400
    assert typo.fields == ["servicetype"]
    assert "ServiceType" in typo.body["errors"][0]["message"]


def test_an_empty_body_on_an_action_without_one_is_taken(app: App) -> None:
    """Tools send ``{}`` or ``null`` with a DELETE: nothing in them is dropped."""
    from tests.actions.test_actions_against_sandbox import CONTACT, create_contact

    route = {"GroupService": GROUP, "Phone": str(CONTACT["phone"])}
    for body in (b" { } ", b"null", b"\n"):
        create_contact()
        reply = call("DeleteGroupContact", method="DELETE", route=route, body=body)
        assert reply.status == 200, reply.body  # deleted: the body carried nothing
    deletes = [r for r in app.upstream() if r["operationId"] == "DeleteGroupContact"]
    assert len(deletes) == 3
    refused = call("DeleteGroupContact", method="DELETE", route=route, body=b'{"x": 1}')
    assert (refused.status, refused.fields) == (400, ["body"])
    assert len(app.upstream()) == 6  # three creates, three deletes: the refused one made none


def test_a_long_region_list_is_a_400_naming_it_with_a_short_answer(app: App) -> None:
    """["FI"] * 860000 took 23 s to refuse, with a 3.4 MB answer naming every entry."""
    route = {"GroupService": GROUP}
    body = {"phone": "0401234567", "phoneNumberRegions": ["FI"] * (MAX_REGIONS + 1)}
    over = call("CreateGroupContact", method="POST", route=route, body=body)
    assert (over.status, over.fields) == (400, ["phoneNumberRegions"])
    assert str(MAX_REGIONS) in over.body["errors"][0]["message"]
    body = {"phone": "0401", "phoneNumberRegions": ["FI"] * 100_000}
    huge = call("CreateGroupContact", method="POST", route=route, body=body)
    assert huge.status == 400
    assert "phoneNumberRegions" in huge.fields
    assert len(huge.raw) < 2000
    assert app.upstream() == []


class _Either(BaseModel):
    model_config = ConfigDict(extra="forbid")
    Kind: Literal["either"]
    Size: int


class _Or(BaseModel):
    model_config = ConfigDict(extra="forbid")
    Kind: Literal["or"]
    Name: str


class _UnionBody(BaseModel):
    Value: int | bool | Annotated[str, AfterValidator(str.strip)]
    Shapes: list[_Either | _Or]


class _UnionInput(ActionInput):
    body: Annotated[_UnionBody, Body()]


def test_an_error_in_a_union_names_the_callers_field_once_never_a_branch() -> None:
    # Pydantic puts each union branch's tag in the error's location (Value.int, Value.bool,
    # Value.function-after[strip(), str], Shapes[0]._Either.Size): the caller wrote no such field.
    body = {"Value": {"x": 1}, "Shapes": [{"Kind": "either"}, {"Kind": "or", "Name": ["x"]}]}
    request = ActionRequest("POST", body=json.dumps(body).encode())

    with pytest.raises(Problem) as refused:
        parse_input(_UnionInput, request, get_settings())

    fields = [e.field for e in refused.value.errors]
    assert fields == [
        "Value",  # once, not once a branch
        "Shapes[0].Size", "Shapes[0].Kind", "Shapes[0].Name",  # missing fields are named
        "Shapes[1].Kind", "Shapes[1].Size", "Shapes[1].Name",
    ]  # fmt: skip


#: Absolute http(s) URLs as real attachments and links have them: percent-encoded characters,
#: non-ASCII paths and host names (IRIs), ports, IP literals, surrounding blanks (stripped).
GOOD_URLS = [
    "https://example.com/x.png",
    "http://example.com",
    "HTTPS://EXAMPLE.COM/A.PNG",
    "https://example.com/a%20b.png?x=%C3%A4#top",
    "https://example.com/kuvä.png",
    "https://bücher.example/tiedosto.pdf",
    "https://xn--bcher-kva.example/",
    "https://example.com./x",
    "https://example.com:8443/x",
    "https://user:secret@example.com/x",
    "http://192.0.2.1/x",
    "http://[2001:db8::1]:8080/x",
    "https://localhost/x",
    "https://my_bucket.example.com/x",  # no IDNA host name, but browsers and DNS take it
    "https://ab--cd.s3.eu-north-1.amazonaws.com/img.png",  # a valid S3 bucket
    "https://r3---sn-4g5e6nz7.googlevideo.com/x",  # a real CDN host
    "https://my-bucket-.s3.amazonaws.com/x",
    "https://xn--i-7iq.ws/x",  # i\u2764.ws as DNS knows it
    "  https://example.com/x\t",
]
#: Not an absolute http(s) URL: the scheme or host missing, a blank or an invisible character
#: anywhere, a host that is no host name, a port out of range.
BAD_URLS = [
    "/img.png",
    "ftp://example.com/x",
    "https:///x",
    "https://exa mple.com/x",
    "https://example.com/a b",
    "https://example.com/a\u0001b",
    "https://example.com/\u0001",
    "https://example.com/x\u007f",
    "https://example.com/x\u200by",  # zero-width space (Cf)
    "https://example.com/x\u00a0y",  # no-break space (Zs)
    "https://example.com/x\u2028y",  # line separator (Zl)
    "https://example.com\u200b/x",
    "https://exa%20mple.com/x",
    "https://exa!mple.com/x",
    "https://a..b/x",
    "https://" + "a" * 64 + ".com/x",
    "https://example.com:99999/x",
    "https://xn--/x",  # an A-label with no Punycode
    "https://xn--a.com/x",
    "https://xn--a-/x",  # Punycode of plain "a": no A-label
    "https://xn--ss-/x",
    "https://example.com:port/x",
    "http://[2001:db8::zz]/x",
    "http://[2001:db8::1/x",
]


@pytest.mark.parametrize("url", GOOD_URLS)
def test_an_absolute_http_url_is_taken_stripped_and_otherwise_as_given(url: str) -> None:
    assert require_http_url(url) == url.strip()


def test_a_refused_url_says_what_is_wrong_with_it() -> None:
    """Every refusal said only "Must be an absolute http or https URL": a SharePoint path with a
    space (an absolute https URL) left the flow's author nothing to act on."""
    for url, why in (
        ("https://contoso.sharepoint.com/Shared Documents/x.pdf", "percent-encode a space"),
        ("https://exa!mple.com/x", "its host is not a host name"),
        ("https://example.com:99999/x", "port out of range"),
    ):
        with pytest.raises(ValueError, match="absolute http or https URL") as refused:
            require_http_url(url)
        assert why in str(refused.value)


@pytest.mark.parametrize("url", BAD_URLS)
def test_what_is_no_absolute_http_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="absolute http or https URL"):
        require_http_url(url)
