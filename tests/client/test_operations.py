"""Every operation of the published definition, called through the client against the sandbox.

Each test ends by checking every request the client sent against the definition itself.
"""

from __future__ import annotations

import datetime as dt
import inspect
import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from sandbox.contract import load_contract, validate_request
from sandbox.server import SandboxServer
from shared.smartdialog import (
    ContactProperty,
    DiscussionReply,
    GroupContact,
    GroupContactUpdate,
    Message,
    MessageResult,
    NewGroupContact,
    NewWhatsAppTemplate,
    Recipient,
    SmartDialogClient,
    TemplateButton,
    TemplateMessageButton,
    TemplateRecipient,
    WebhookAction,
    WebhookOptions,
    WhatsAppTemplateMessage,
)
from tests.client.conftest import SentRequest

CUSTOMER = "1001"
ONE_WAY = "s-1001-oneway"
REPLY = "s-1001-reply"
TWO_WAY = "s-1001-twoway"
GROUP = "s-1001-group"
IDENTITY = "+358501234567"
DELIVERED = "+358400000001"
LIFECYCLE = {"close", "from_settings", "ready"}  # ready: the token in hand before a quota grant


def snake_case(operation_id: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id).lower()


def test_client_has_exactly_one_method_per_operation_of_the_definition() -> None:
    expected = {snake_case(op_id) for op_id in load_contract().by_id}
    public = {
        name
        for name, member in inspect.getmembers(SmartDialogClient, inspect.isfunction)
        if not name.startswith("_")
    }
    assert len(expected) == 20
    assert public - LIFECYCLE == expected


@pytest.fixture
def client(
    make_client: Callable[..., SmartDialogClient], captured: list[SentRequest]
) -> Iterator[SmartDialogClient]:
    yield make_client()
    assert captured, "the test sent nothing"
    for sent in captured:
        problems = validate_request(sent.method, sent.raw_path, sent.headers, None, sent.body)
        assert problems == [], f"{sent.method} {sent.raw_path}: {problems}"


def test_get_user_customers(client: SmartDialogClient) -> None:
    customers = client.get_user_customers()
    assert {c.customerId for c in customers.customerUsers} == {"1001", "1002"}
    assert customers.customerUsers[0].customerName == "Sandbox Oy"


def test_get_customer_services_filters_by_type_and_reply_flag(client: SmartDialogClient) -> None:
    one_way = client.get_customer_services(customer_id=CUSTOMER, service_type="OneWay")
    assert {s.id for s in one_way} == {ONE_WAY, REPLY}
    replying = client.get_customer_services(
        customer_id=CUSTOMER, service_type="OneWay", allow_reply_message=True
    )
    assert [s.id for s in replying] == [REPLY]


def test_get_phone_number_regions(client: SmartDialogClient) -> None:
    regions = client.get_phone_number_regions()
    assert ("FI", "Finland") in {(r.value, r.name) for r in regions}


def test_send_message_fills_a_request_id_and_parses_the_pascal_case_result(
    client: SmartDialogClient, captured: list[SentRequest]
) -> None:
    message = Message(
        Sender="Sandbox",
        Content="Hello $(name)",
        Recipients=[Recipient(Address=DELIVERED, Personalization={"name": "Aino"})],
        SendDateTime=dt.datetime(2030, 1, 1, 9, 0, tzinfo=dt.UTC),
        CustomerData="invoice-42",
    )
    result = client.send_message(message, customer_id=CUSTOMER, service_id=ONE_WAY)
    assert isinstance(result, MessageResult)
    assert result.MessageId
    assert result.MessagePartCount == 1
    assert [r.Address for r in result.Recipients] == [DELIVERED]
    sent = captured[-1]
    assert sent.headers["customer-id"] == CUSTOMER
    assert sent.headers["service-id"] == ONE_WAY
    assert uuid.UUID(sent.body["RequestId"])
    assert sent.body["Protocol"] == "SMS"
    assert "AdMessage" not in sent.body  # None fields are not sent
    assert message.RequestId is None  # the caller's model is not changed


def test_send_message_keeps_the_callers_request_id(
    client: SmartDialogClient, captured: list[SentRequest]
) -> None:
    message = Message(
        Sender="Sandbox",
        Content="Hi",
        Recipients=[Recipient(Address=DELIVERED)],
        RequestId="outbox-7",
    )
    client.send_message(message, customer_id=CUSTOMER, service_id=ONE_WAY)
    assert captured[-1].request_id == "outbox-7"


def test_send_reply_message(client: SmartDialogClient, captured: list[SentRequest]) -> None:
    message = Message(Sender="Sandbox", Content="Thanks", Recipients=[Recipient(Address=DELIVERED)])
    result = client.send_reply_message(
        message, parent_message_id=str(uuid.uuid4()), customer_id=CUSTOMER, service_id=REPLY
    )
    assert result.MessageId
    assert captured[-1].request_id is not None


def test_send_discussion_reply_message(client: SmartDialogClient) -> None:
    thread = str(uuid.uuid4())
    result = client.send_discussion_reply_message(
        DiscussionReply(ThreadId=thread, Content="On it"), customer_id=CUSTOMER
    )
    assert result.ThreadId == thread
    assert result.MessageId


def test_send_whatsapp_template_message_parses_the_camel_case_result(
    client: SmartDialogClient, captured: list[SentRequest]
) -> None:
    message = WhatsAppTemplateMessage(
        TemplateName="welcome",
        Recipients=[TemplateRecipient(Address=DELIVERED)],
        BodyParameters=["Aino"],
        Buttons=[TemplateMessageButton(Type="QuickReply", Data="Yes")],
        UseSmsFallback=True,
    )
    result = client.send_whatsapp_template_message(
        message, customer_id=CUSTOMER, service_id=ONE_WAY
    )
    assert result.messageId
    assert [r.address for r in result.recipients] == [DELIVERED]
    assert captured[-1].request_id is not None


def test_new_message_and_delete_trigger(client: SmartDialogClient, sd: SandboxServer) -> None:
    created = client.new_message(
        WebhookAction(options=WebhookOptions(endpointUrl="https://example.test/hook?sig=abc")),
        customer=CUSTOMER,
        service=TWO_WAY,
    )
    assert created.action_id
    assert created.pipeline_id
    assert created.location == (
        f"/api-integrations/v1/pipelines/{created.pipeline_id}/actions/{created.action_id}"
    )
    assert created.action_id is not None
    assert created.pipeline_id is not None
    client.delete_trigger(pipeline_id=created.pipeline_id, action_id=created.action_id)


def test_whatsapp_templates_create_list_and_categories(client: SmartDialogClient) -> None:
    categories = client.get_whatsapp_template_categories()
    assert "UTILITY" in categories
    client.create_whatsapp_template(
        NewWhatsAppTemplate(
            DisplayName="Order shipped",
            RawContent="Your order {{1}} is on its way",
            Category="UTILITY",
            Language="en",
            Buttons=[TemplateButton(Type="Url", Label="Track", Data="https://example.test/t")],
        ),
        customer_id=CUSTOMER,
        identity_number=IDENTITY,
    )
    templates = client.get_customer_whats_app_templates(customer_id=CUSTOMER)
    assert {t.id for t in templates} >= {"welcome", "order_shipped"}
    only = client.get_customer_whats_app_templates(customer_id=CUSTOMER, template_id="welcome")
    assert [t.id for t in only] == ["welcome"]
    assert only[0].extensionParameters is not None
    assert only[0].extensionParameters.rawContent


def test_get_customer_whatsapp_identities(client: SmartDialogClient) -> None:
    identities = client.get_customer_whatsapp_identities(customer_id=CUSTOMER)
    addresses = [i.inputSource.address for i in identities if i.inputSource]
    assert IDENTITY in addresses


def test_whats_app_opt_in_and_opt_out_encode_the_plus_sign(
    client: SmartDialogClient, captured: list[SentRequest]
) -> None:
    client.whats_app_opt_in(sender=IDENTITY, recipient=DELIVERED)
    client.whats_app_opt_out(sender=IDENTITY, recipient=DELIVERED)
    assert "/sender/%2B358501234567/recipient/%2B358400000001" in captured[0].raw_path


def test_group_contact_lifecycle(client: SmartDialogClient) -> None:
    contact_id = client.create_group_contact(
        NewGroupContact(
            phone="0401234567",
            firstName="Aino",
            gender="Female",
            birthYear=1990,
            customContactProperties=[ContactProperty(name="tier", value="gold")],
            phoneNumberRegions=["FI"],
        ),
        customer=CUSTOMER,
        group_service=GROUP,
    )
    assert uuid.UUID(contact_id)
    contact = client.get_group_contact(
        customer=CUSTOMER, group_service=GROUP, phone="+358401234567"
    )
    assert isinstance(contact, GroupContact)
    assert (contact.firstName, contact.birthYear, contact.failedMessages) == ("Aino", 1990, 0)
    assert client.update_group_contact(
        GroupContactUpdate(lastName="Virtanen", city="Helsinki"),
        customer=CUSTOMER,
        group_service=GROUP,
        phone="+358401234567",
    )
    found = client.get_group_contact(
        customer=CUSTOMER, group_service=GROUP, phone="0401234567", region="FI"
    )
    assert (found.lastName, found.city) == ("Virtanen", "Helsinki")
    assert client.delete_group_contact(
        customer=CUSTOMER, group_service=GROUP, phone="+358401234567"
    )
    assert client.delete_all_group_contacts(customer=CUSTOMER, group_service=GROUP) is True
