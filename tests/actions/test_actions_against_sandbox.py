"""Every action end to end: real function, real pipeline, real client, the sandbox over a socket.

Each test also checks that what reached SmartDialog fits its published definition.
"""

from __future__ import annotations

import json
from urllib.parse import unquote

import pytest

from tests.actions.conftest import CUSTOMER, GROUP, IDENTITY, App, call

CONTACT = {
    "phone": "040 123 4567",
    "firstName": "Ada",
    "lastName": "Lovelace",
    "gender": "Female",
    "birthYear": 1990,
    "email": "ada@example.com",
    "countryCode": "fin",
    "customContactProperties": [{"name": "tier", "value": "gold"}],
}


def create_contact(body: dict[str, object] | None = None) -> str:
    reply = call(
        "CreateGroupContact", method="POST", route={"GroupService": GROUP}, body=body or CONTACT
    )
    assert reply.status == 200, reply.body
    assert isinstance(reply.body, str)
    return reply.body


def test_get_user_customers_answers_upstream_shape(app: App) -> None:
    reply = call("GetUserCustomers", method="GET")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert {"customerId": "1001", "customerName": "Sandbox Oy"} in reply.body["customerUsers"]
    [request] = app.assert_upstream_valid()
    assert request["operationId"] == "GetUserCustomers"


def test_get_customer_services_passes_type_and_reply_filter_as_upstream_headers(app: App) -> None:
    reply = call(
        "GetCustomerServices",
        method="GET",
        params={"ServiceType": "OneWay", "AllowReplyMessage": "true"},
    )
    assert reply.status == 200
    assert reply.body == [{"id": "s-1001-reply", "name": "Notifications with replies"}]
    [request] = app.assert_upstream_valid()
    assert unquote(request["path"]).endswith(f"/services/{CUSTOMER}")
    assert request["headers"]["ServiceType"] == "OneWay"
    assert request["headers"]["AllowReplyMessage"] == "true"


def test_get_customer_services_without_a_service_type_lists_one_way_services(app: App) -> None:
    """The definition's default, as the certified connector's: leaving it out was a 400."""
    reply = call("GetCustomerServices", method="GET")
    assert reply.status == 200, reply.body
    [request] = app.assert_upstream_valid()
    assert request["headers"]["ServiceType"] == "OneWay"


def test_customer_id_header_overrides_the_default_customer(app: App) -> None:
    reply = call(
        "GetCustomerServices",
        method="GET",
        params={"ServiceType": "Group"},
        headers={"Customer-Id": "1002"},
    )
    assert reply.status == 200
    assert reply.body == [{"id": "s-1002-group", "name": "Members"}]
    assert unquote(app.assert_upstream_valid()[0]["path"]).endswith("/services/1002")


def test_get_customer_whatsapp_templates_lists_and_filters(app: App) -> None:
    everything = call("GetCustomerWhatsAppTemplates", method="GET")
    assert everything.status == 200
    assert everything.body == [
        {
            "id": "welcome",
            "displayName": "welcome",
            "extensionParameters": {"rawContent": "Hello {{1}}, welcome to Sandbox Oy!"},
        }
    ]
    none = call("GetCustomerWhatsAppTemplates", method="GET", params={"TemplateId": "nope"})
    assert none.status == 200
    assert none.body == []
    requests = app.assert_upstream_valid()
    assert requests[1]["query"] == {"TemplateId": "nope"}


def test_get_whatsapp_template_categories(app: App) -> None:
    reply = call("GetWhatsappTemplateCategories", method="GET")
    assert reply.status == 200
    assert reply.body == ["MARKETING", "UTILITY", "AUTHENTICATION"]
    app.assert_upstream_valid()


def test_get_customer_whatsapp_identities(app: App) -> None:
    reply = call("GetCustomerWhatsappIdentities", method="GET")
    assert reply.status == 200
    assert {"inputSource": {"address": IDENTITY}} in reply.body
    app.assert_upstream_valid()


def test_get_phone_number_regions(app: App) -> None:
    reply = call("GetPhoneNumberRegions", method="GET")
    assert reply.status == 200
    assert {"value": "FI", "name": "Finland"} in reply.body
    app.assert_upstream_valid()


def test_group_contact_lifecycle_sends_e164_numbers_upstream(app: App) -> None:
    contact_id = create_contact()
    route = {"GroupService": GROUP, "Phone": "0401234567"}

    got = call("GetGroupContact", method="GET", route=route)
    assert got.status == 200
    assert got.body["phone"] == "+358401234567"
    assert got.body["firstName"] == "Ada"
    assert got.body["countryCode"] == "FIN"
    assert got.body["customContactProperties"] == [{"name": "tier", "value": "gold"}]

    updated = call(
        "UpdateGroupContact", method="PUT", route=route, body={"city": "Helsinki", "active": False}
    )
    assert (updated.status, updated.body) == (200, True)
    assert call("GetGroupContact", method="GET", route=route).body["city"] == "Helsinki"

    deleted = call("DeleteGroupContact", method="DELETE", route=route)
    assert (deleted.status, deleted.body) == (200, True)
    assert call("GetGroupContact", method="GET", route=route).status == 404

    requests = app.assert_upstream_valid()
    create = requests[0]
    assert create["operationId"] == "CreateGroupContact"
    assert create["body"]["phone"] == "+358401234567"
    assert create["body"]["active"] is True
    assert create["body"]["countryCode"] == "FIN"
    assert contact_id
    for request in requests[1:]:
        assert unquote(request["path"]).endswith(f"/groupcontact/{CUSTOMER}/{GROUP}/+358401234567")


def test_contact_numbers_are_read_in_the_callers_regions(app: App) -> None:
    create_contact({"phone": "070 123 45 67", "phoneNumberRegions": ["SE"]})
    reply = call(
        "GetGroupContact",
        method="GET",
        route={"GroupService": GROUP, "Phone": "0701234567"},
        params={"Region": "se"},
    )
    assert reply.status == 200
    assert reply.body["phone"] == "+46701234567"
    requests = app.assert_upstream_valid()
    assert requests[0]["body"]["phoneNumberRegions"] == ["SE"]
    assert requests[1]["query"] == {"Region": "SE"}


def test_a_region_given_twice_is_tried_and_passed_on_once(app: App) -> None:
    create_contact({"phone": "070 123 45 67", "phoneNumberRegions": ["SE", "se", "FI", "SE"]})
    assert app.assert_upstream_valid()[0]["body"]["phoneNumberRegions"] == ["SE", "FI"]


def test_delete_all_group_contacts_empties_the_group(app: App) -> None:
    create_contact()
    reply = call("DeleteAllGroupContacts", method="DELETE", route={"GroupService": GROUP})
    assert (reply.status, reply.body) == (200, True)
    gone = call(
        "GetGroupContact", method="GET", route={"GroupService": GROUP, "Phone": "+358401234567"}
    )
    assert gone.status == 404
    app.assert_upstream_valid()


def test_create_whatsapp_template_answers_204_and_the_template_is_listed(app: App) -> None:
    body = {
        "DisplayName": "Order shipped",
        "RawContent": "Your order {{1}} is on its way.",
        "Category": "UTILITY",
        "Language": "EN",
        "Buttons": [
            {"Type": "Url", "Label": "Track", "Data": "https://example.com/track/{{1}}"},
            {"Type": "Call", "Label": "Call us", "Data": "09 1234567"},
            # 21 characters as written, 13 as sent: the limit is on what is sent
            {"Type": "Call", "Label": "Call sales", "Data": "+358 (0) 40 123 45 67"},
            {"Type": "QuickReply", "Label": "Thanks", "Data": "thanks"},
        ],
        "AttachmentUrl": "https://example.com/example.png",
    }
    reply = call(
        "CreateWhatsappTemplate",
        method="POST",
        route={"IdentityNumber": "050 1234567"},
        body=body,
    )
    assert reply.status == 204, reply.body
    assert reply.raw == b""
    listed = call(
        "GetCustomerWhatsAppTemplates", method="GET", params={"TemplateId": "order_shipped"}
    )
    assert [t["displayName"] for t in listed.body] == ["Order shipped"]
    create = app.assert_upstream_valid()[0]
    assert unquote(create["path"]).endswith(f"/whatsapp/templates/{CUSTOMER}/{IDENTITY}")
    assert create["body"]["Language"] == "en"
    assert create["body"]["Buttons"][1]["Data"] == "+35891234567"
    assert create["body"]["Buttons"][2]["Data"] == "+358401234567"


@pytest.mark.parametrize(
    ("operation_id", "method"), [("WhatsAppOptIn", "PUT"), ("WhatsAppOptOut", "DELETE")]
)
def test_whatsapp_opt_in_and_out_answer_204(app: App, operation_id: str, method: str) -> None:
    reply = call(
        operation_id,
        method=method,
        route={"Sender": IDENTITY, "Recipient": "040 1234567"},
    )
    assert reply.status == 204, reply.body
    [request] = app.assert_upstream_valid()
    assert request["operationId"] == operation_id
    assert unquote(request["path"]).endswith(f"/sender/{IDENTITY}/recipient/+358401234567")


def test_an_update_without_active_does_not_send_it_and_cannot_clear_an_email(app: App) -> None:
    """What docs/actions.md says of UpdateGroupContact: `active` goes only when given (SmartDialog's
    definition defaults it to true), and an e-mail address cannot be cleared."""
    create_contact()
    route = {"GroupService": GROUP, "Phone": "0401234567"}
    assert (
        call("UpdateGroupContact", method="PUT", route=route, body={"city": "Oulu"}).status == 200
    )
    cleared = call("UpdateGroupContact", method="PUT", route=route, body={"email": ""})
    assert cleared.status == 400
    assert cleared.fields == ["email"]
    updates = [r for r in app.upstream() if r.get("operationId") == "UpdateGroupContact"]
    assert [u["body"] for u in updates] == [{"city": "Oulu"}]


def test_an_empty_query_parameter_the_worker_drops_is_still_refused(app: App) -> None:
    """The Python worker drops a query parameter whose value is empty from ``params``
    (azure-functions-python-worker#894), so ``DeleteAllGroupContacts?Phone=`` (a flow's empty
    expression) reached the action as a bare delete-all and emptied the group in Azure, while
    the dev host, which keeps it, refused it (dev-host review). It is read from the URL."""
    import azure.functions as func

    from functions.actions import serve

    create_contact()
    request = func.HttpRequest(
        method="DELETE",
        url=f"http://localhost:7071/api/groups/{GROUP}/contacts?Phone=",
        headers={"Customer-Id": CUSTOMER},
        params={},  # as the worker gives it
        route_params={"GroupService": GROUP},
        body=b"",
    )

    reply = serve("DeleteAllGroupContacts", request)

    assert reply.status_code == 400
    assert [e["field"] for e in json.loads(reply.get_body())["errors"]] == ["Phone"]
    still = call(
        "GetGroupContact", method="GET", route={"GroupService": GROUP, "Phone": "+358401234567"}
    )
    assert still.status == 200
