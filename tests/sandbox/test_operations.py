"""Every operation's happy path over real sockets, with responses checked against the contract."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from sandbox.server import SandboxServer
from tests.sandbox.helpers import (
    CUSTOMER,
    GROUP,
    IDENTITY,
    ONEWAY,
    REPLY,
    SEND_HEADERS,
    TWOWAY,
    assert_matches_contract,
    client,
    sms,
    template_message,
)


@pytest.fixture
def api(sandbox_server: SandboxServer) -> Iterator[httpx.Client]:
    with client(sandbox_server) as c:
        yield c


def test_get_user_customers_lists_the_seed_customers(api: httpx.Client) -> None:
    body = assert_matches_contract("GetUserCustomers", api.get("/customers"))
    assert body["customerUsers"][0] == {"customerId": CUSTOMER, "customerName": "Sandbox Oy"}
    assert len(body["customerUsers"]) == 2


def test_get_customer_services_filters_by_type_and_reply_flag(api: httpx.Client) -> None:
    oneway = api.get(f"/services/{CUSTOMER}", headers={"ServiceType": "OneWay"})
    assert [s["id"] for s in assert_matches_contract("GetCustomerServices", oneway)] == [
        ONEWAY,
        REPLY,
    ]
    replies = api.get(
        f"/services/{CUSTOMER}", headers={"ServiceType": "OneWay", "AllowReplyMessage": "true"}
    )
    assert [s["id"] for s in replies.json()] == [REPLY]
    twoway = api.get(f"/services/{CUSTOMER}", headers={"ServiceType": "TwoWay"})
    assert twoway.json() == [{"id": TWOWAY, "name": "Customer chat"}]
    assert (
        api.get(f"/services/{CUSTOMER}", headers={"ServiceType": "SMS"}).json()[0]["id"]
        == "s-1001-sms"
    )


def test_unknown_customer_is_404_and_forbidden_customer_is_403(api: httpx.Client) -> None:
    missing = api.get("/services/nobody", headers={"ServiceType": "OneWay"})
    assert missing.status_code == 404
    assert "nobody" in missing.json()["errorMessage"]
    forbidden = api.get("/whatsapp/identities/forbidden")
    assert forbidden.status_code == 403
    assert "errorMessage" in forbidden.json()


def test_look_ups_come_from_the_seed(api: httpx.Client) -> None:
    regions = assert_matches_contract("GetPhoneNumberRegions", api.get("/phonenumberregions"))
    assert {"value": "FI", "name": "Finland"} in regions
    categories = api.get("/whatsapp/templates/categories")
    assert assert_matches_contract("GetWhatsappTemplateCategories", categories) == [
        "MARKETING",
        "UTILITY",
        "AUTHENTICATION",
    ]
    identities = api.get(f"/whatsapp/identities/{CUSTOMER}")
    assert assert_matches_contract("GetCustomerWhatsappIdentities", identities)[0] == {
        "inputSource": {"address": IDENTITY}
    }


def test_created_whatsapp_template_is_listed_and_filterable(api: httpx.Client) -> None:
    created = api.post(
        f"/whatsapp/templates/{CUSTOMER}/%2B358501234567",
        json={
            "DisplayName": "Order Shipped",
            "RawContent": "Your order {{1}} has shipped",
            "Category": "UTILITY",
            "Language": "en",
            "Buttons": [{"Type": "Url", "Label": "Track", "Data": "https://example.com"}],
        },
    )
    assert created.status_code == 204
    assert created.content == b""
    listed = assert_matches_contract(
        "GetCustomerWhatsAppTemplates", api.get(f"/whatsapp/templates/{CUSTOMER}")
    )
    assert [t["id"] for t in listed] == ["welcome", "order_shipped"]
    filtered = api.get(f"/whatsapp/templates/{CUSTOMER}", params={"TemplateId": "order_shipped"})
    assert filtered.json() == [
        {
            "id": "order_shipped",
            "displayName": "Order Shipped",
            "extensionParameters": {"rawContent": "Your order {{1}} has shipped"},
        }
    ]
    duplicate = api.post(
        f"/whatsapp/templates/{CUSTOMER}/{IDENTITY}",
        json={
            "DisplayName": "order shipped",
            "RawContent": "x",
            "Category": "UTILITY",
            "Language": "fi",
        },
    )
    assert duplicate.status_code == 400


def test_create_template_checks_identity_and_category(api: httpx.Client) -> None:
    body = {"DisplayName": "t", "RawContent": "x", "Category": "UTILITY", "Language": "en"}
    assert api.post(f"/whatsapp/templates/{CUSTOMER}/%2B358409999999", json=body).status_code == 404
    wrong = api.post(
        f"/whatsapp/templates/{CUSTOMER}/{IDENTITY}", json={**body, "Category": "SPAM"}
    )
    assert wrong.status_code == 400
    assert "SPAM" in wrong.json()["errorMessage"]


def test_whatsapp_opt_in_and_out_answer_204(
    api: httpx.Client, sandbox_server: SandboxServer
) -> None:
    path = f"/whatsapp/opt-in/sender/{IDENTITY}/recipient/%2B358401234567"
    assert api.post(path).status_code == 204
    assert (IDENTITY, "+358401234567") in sandbox_server.state.opt_ins
    assert api.delete(path).status_code == 204
    assert sandbox_server.state.opt_ins == set()


def test_send_message_answers_pascal_case_ids(api: httpx.Client) -> None:
    response = api.post("/messages", headers=SEND_HEADERS, json=sms("+358401234567", "0407654321"))
    body = assert_matches_contract("SendMessage", response)
    uuid.UUID(body["MessageId"])
    assert body["MessagePartCount"] == 1
    assert [r["Address"] for r in body["Recipients"]] == ["+358401234567", "+358407654321"]
    assert all(r["Id"] for r in body["Recipients"])


def test_send_reply_message_needs_a_service_that_allows_replies(api: httpx.Client) -> None:
    ok = api.post(
        "/messages/reply/parent-1",
        headers={"Customer-Id": CUSTOMER, "Service-Id": REPLY},
        json=sms("+358401234567"),
    )
    assert assert_matches_contract("SendReplyMessage", ok)["MessagePartCount"] == 1
    refused = api.post("/messages/reply/parent-1", headers=SEND_HEADERS, json=sms("+358401234567"))
    assert refused.status_code == 400
    assert "reply" in refused.json()["errorMessage"]


def test_send_discussion_reply_echoes_the_thread(api: httpx.Client) -> None:
    response = api.post(
        "/messages/discussion/reply",
        headers={"CustomerId": CUSTOMER},
        json={"ThreadId": "thread-9", "Content": "Thanks!"},
    )
    body = assert_matches_contract("SendDiscussionReplyMessage", response)
    assert body["ThreadId"] == "thread-9"
    assert body["MessagePartCount"] == 1


def test_send_whatsapp_template_message_answers_camel_case(api: httpx.Client) -> None:
    response = api.post(
        "/messages/templates/whatsapp", headers=SEND_HEADERS, json=template_message("+358401234567")
    )
    body = assert_matches_contract("SendWhatsappTemplateMessage", response)
    assert set(body) == {"messageId", "messagePartCount", "recipients"}
    assert body["recipients"][0]["address"] == "+358401234567"
    unknown = api.post(
        "/messages/templates/whatsapp",
        headers=SEND_HEADERS,
        json={**template_message("+358401234567"), "TemplateName": "nope"},
    )
    assert unknown.status_code == 400


def test_send_to_unknown_service_is_404(api: httpx.Client) -> None:
    response = api.post(
        "/messages",
        headers={"Customer-Id": CUSTOMER, "Service-Id": "nope"},
        json=sms("+358401234567"),
    )
    assert response.status_code == 404


def test_group_contact_lifecycle(api: httpx.Client) -> None:
    base = f"/groupcontact/{CUSTOMER}/{GROUP}"
    created = api.post(
        base,
        json={"phone": "040 1234567", "firstName": "Ada", "gender": "Female", "birthYear": 1990},
    )
    contact_id = assert_matches_contract("CreateGroupContact", created)
    uuid.UUID(contact_id)

    fetched = assert_matches_contract("GetGroupContact", api.get(f"{base}/%2B358401234567"))
    assert fetched["phone"] == "+358401234567"
    assert fetched["firstName"] == "Ada"
    assert fetched["failedMessages"] == 0
    # national format with a Region query finds the same contact
    assert api.get(f"{base}/0401234567", params={"Region": "FI"}).json()["phone"] == "+358401234567"

    updated = api.put(f"{base}/%2B358401234567", json={"city": "Helsinki", "active": False})
    assert assert_matches_contract("UpdateGroupContact", updated) is True
    assert api.get(f"{base}/%2B358401234567").json()["city"] == "Helsinki"

    again = api.post(base, json={"phone": "+358401234567"})
    assert again.status_code == 400
    assert "already exists" in again.json()["errorMessage"]

    deleted = api.delete(f"{base}/%2B358401234567")
    assert assert_matches_contract("DeleteGroupContact", deleted) is True
    missing = api.get(f"{base}/%2B358401234567")
    assert missing.status_code == 404
    assert "not found" in missing.json()["errorMessage"]
    assert api.put(f"{base}/%2B358401234567", json={"city": "x"}).status_code == 404
    assert api.delete(f"{base}/%2B358401234567").status_code == 404


def test_group_contact_regions_parse_national_numbers(api: httpx.Client) -> None:
    base = f"/groupcontact/{CUSTOMER}/{GROUP}"
    created = api.post(base, json={"phone": "070 123 45 67", "phoneNumberRegions": ["SE"]})
    assert created.status_code == 200
    assert api.get(f"{base}/%2B46701234567").status_code == 200


def test_delete_all_group_contacts_empties_the_group(api: httpx.Client) -> None:
    base = f"/groupcontact/{CUSTOMER}/{GROUP}"
    for phone in ("+358401111111", "+358402222222"):
        assert api.post(base, json={"phone": phone}).status_code == 200
    assert assert_matches_contract("DeleteAllGroupContacts", api.delete(base)) is True
    assert api.get(f"{base}/%2B358401111111").status_code == 404


def test_group_contacts_need_a_group_service_and_a_phone_number(api: httpx.Client) -> None:
    assert (
        api.post(f"/groupcontact/{CUSTOMER}/{ONEWAY}", json={"phone": "+358401234567"}).status_code
        == 400
    )
    assert (
        api.post(f"/groupcontact/{CUSTOMER}/nope", json={"phone": "+358401234567"}).status_code
        == 404
    )
    bad = api.post(f"/groupcontact/{CUSTOMER}/{GROUP}", json={"phone": "not a number"})
    assert bad.status_code == 400
    assert "phone" in bad.json()["errorMessage"]


def test_pipeline_action_is_created_and_deleted(api: httpx.Client) -> None:
    created = api.post(
        f"/service/{TWOWAY}/pipelines/actions",
        headers={"Customer": CUSTOMER},
        json={
            "name": "flow",
            "actionType": "HttpRequest",
            "description": "test hook",
            "options": {"endpointUrl": "http://127.0.0.1:9/hook", "httpVerb": "POST"},
        },
    )
    body = assert_matches_contract("NewMessage", created)
    assert created.headers["Location"] == (
        f"/api-integrations/v1/pipelines/{body['pipelineId']}/actions/{body['id']}"
    )
    path = created.headers["Location"].removeprefix("/api-integrations/v1")
    assert api.delete(path).status_code == 204
    assert api.delete(path).status_code == 404


def test_pipeline_needs_a_two_way_service(api: httpx.Client) -> None:
    response = api.post(
        f"/service/{ONEWAY}/pipelines/actions",
        headers={"Customer": CUSTOMER},
        json={
            "name": "flow",
            "actionType": "HttpRequest",
            "description": "d",
            "options": {"endpointUrl": "http://127.0.0.1:9/hook", "httpVerb": "POST"},
        },
    )
    assert response.status_code == 400
    assert "TwoWay" in response.json()["errorMessage"]
