"""The models speak the upstream's field names and tolerate what they don't know."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import httpx
import pytest
from pydantic import BaseModel, ValidationError

from shared.smartdialog import (
    GroupContact,
    InboundMessage,
    Message,
    MessageResult,
    NewMessageResult,
    PipelineAction,
    Recipient,
    SmartDialogClient,
    TemplateMessageResult,
    UserCustomers,
    WebhookAction,
    WebhookOptions,
)
from shared.smartdialog._models import to_wire


def test_message_serialises_with_upstream_casing_and_without_unset_fields() -> None:
    message = Message(
        Sender="Shop",
        Content="Hi $(name)",
        Recipients=[Recipient(Address="+358401234567", Personalization={"name": "Aino"})],
        SendDateTime=dt.datetime(2030, 1, 1, 9, 30, tzinfo=dt.UTC),
    )
    assert to_wire(message) == {
        "Sender": "Shop",
        "Content": "Hi $(name)",
        "Protocol": "SMS",
        "Recipients": [{"Address": "+358401234567", "Personalization": {"name": "Aino"}}],
        "SendDateTime": "2030-01-01T09:30:00Z",
    }


def test_request_models_refuse_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="Adress"):
        Recipient.model_validate({"Adress": "+358401234567"})


def test_request_models_check_documented_limits() -> None:
    with pytest.raises(ValidationError):
        Message(Sender="s", Content="c", Recipients=[], CustomerData="x" * 256)


def test_response_models_keep_unknown_fields() -> None:
    result = MessageResult.model_validate(
        {"MessageId": "m1", "MessagePartCount": 2, "Recipients": [], "Cost": 0.05}
    )
    assert result.MessageId == "m1"
    assert result.model_extra == {"Cost": 0.05}


def test_response_models_accept_missing_fields() -> None:
    assert TemplateMessageResult.model_validate({}).recipients == []
    assert GroupContact.model_validate({"phone": "+358401234567", "gender": "Unknown"}).gender


@pytest.mark.parametrize(
    ("model", "field"),
    [
        (UserCustomers, "customerUsers"),
        (MessageResult, "Recipients"),
        (TemplateMessageResult, "recipients"),
        (GroupContact, "customContactProperties"),
        (InboundMessage, "attachments"),
    ],
)
def test_a_null_list_in_an_answer_reads_as_empty(model: type[BaseModel], field: str) -> None:
    assert getattr(model.model_validate({field: None}), field) == []


def test_webhook_action_has_defaults_for_everything_but_the_endpoint() -> None:
    wire = to_wire(WebhookAction(options=WebhookOptions(endpointUrl="https://x.test/hook")))
    assert wire["actionType"] == "HttpRequest"
    assert wire["options"] == {"endpointUrl": "https://x.test/hook", "httpVerb": "POST"}
    assert wire["name"]
    assert wire["description"]


def test_new_message_result_reads_ids_from_the_location_when_the_body_lacks_them() -> None:
    result = NewMessageResult(
        action=PipelineAction(), location="/api-integrations/v1/pipelines/p-1/actions/a-2"
    )
    assert (result.pipeline_id, result.action_id) == ("p-1", "a-2")
    assert NewMessageResult(action=PipelineAction(id="a-9")).pipeline_id is None


def test_an_answer_with_a_number_where_text_is_documented_reads_it_as_text(
    make_client: Callable[..., SmartDialogClient],
) -> None:
    # The sandbox follows the definition (customerId is a string); SmartDialog itself may not.
    answer = {"customerUsers": [{"customerId": 1001, "customerName": "Shop"}]}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))

    customers = make_client(transport=transport).get_user_customers()

    assert [(c.customerId, c.customerName) for c in customers.customerUsers] == [("1001", "Shop")]


def test_request_models_still_refuse_a_number_for_text() -> None:
    with pytest.raises(ValidationError, match="Sender"):
        Message.model_validate({"Sender": 12345, "Content": "c", "Recipients": []})
