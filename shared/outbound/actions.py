"""The send actions (202 Accepted + Location), GetMessageStatus and CancelMessage.

They run through the shared action pipeline (validation, phone numbers to E.164, settings
defaults, problem documents) and hand the validated request to :class:`SendService`. Bodies keep
the certified connector's field names; ``Customer-Id``/``Service-Id`` (``CustomerId`` for the
discussion reply, as upstream) are optional headers defaulting to the app settings.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.actions._spec import (
    ActionContext,
    ActionInput,
    ActionResponse,
    ActionSpec,
    Body,
    Param,
    ResponseDoc,
    SettingDefault,
)
from shared.actions.fields import (
    CUSTOMER_DROPDOWN,
    CustomerIdHeader,
    HttpUrl,
    NonEmptyStr,
    PhoneNumber,
    service_dropdown,
    template_dropdown,
    ui,
)
from shared.actions.fields import (
    CustomerData as CustomerDataText,
)
from shared.outbound._models import OUTBOUND_MESSAGE_ID_PATTERN, OutboundMessageAdapter
from shared.problems import PROBLEM_CONTENT_TYPE

if TYPE_CHECKING:
    from shared.outbound._service import SendService, StatusView
    from shared.settings import Settings

__all__ = ["SPECS"]

TAG = "Messages"
MAX_RECIPIENTS = 1000

# --- parameters -----------------------------------------------------------------------------------

ServiceIdHeader = Annotated[
    str,
    Param("header", "Service-Id", SettingDefault("service_id", "SMARTDIALOG_SERVICE_ID")),
    Field(
        description=(
            "The SmartDialog service to send with. Leave empty to use the app setting "
            "SMARTDIALOG_SERVICE_ID."
        ),
        json_schema_extra=ui("Service", dynamic_values=service_dropdown("OneWay")),
    ),
]
DiscussionCustomerIdHeader = Annotated[
    str,
    Param("header", "CustomerId", SettingDefault("customer_id", "SMARTDIALOG_CUSTOMER_ID")),
    Field(
        description=(
            "The SmartDialog customer to act for. Leave empty to use the app setting "
            "SMARTDIALOG_CUSTOMER_ID."
        ),
        json_schema_extra=ui("Customer", dynamic_values=CUSTOMER_DROPDOWN),
    ),
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Param("header", "Idempotency-Key"),
    Field(
        None,
        min_length=1,
        max_length=255,
        description=(
            "Any unique text: a repeated request with the same key returns the first answer and "
            "sends nothing again. Without it, the body's RequestId plays this role."
        ),
        json_schema_extra=ui("Idempotency key", visibility="advanced"),
    ),
]
MessageIdPath = Annotated[
    str,
    Param("path", "MessageId"),
    Field(
        pattern=OUTBOUND_MESSAGE_ID_PATTERN,
        description="The Id from the send's answer (the last segment of its status URL).",
        json_schema_extra=ui("Message Id", visibility="important"),
    ),
]
RequestIdField = Annotated[
    str | None,
    Field(
        None,
        min_length=1,
        max_length=1000,
        description=(
            "Unique id of this send: a repeat with the same RequestId is not sent again. "
            "Leave empty and one is generated."
        ),
        json_schema_extra=ui("Request Id", visibility="advanced"),
    ),
]
SendDateTimeField = Annotated[
    dt.datetime | None,
    Field(
        None,
        description="When SmartDialog should send it; leave empty to send at once.",
        json_schema_extra=ui("Send date and time", visibility="advanced"),
    ),
]
DlrUrlField = Annotated[
    HttpUrl | None,
    Field(
        None,
        description="Your own delivery-report URL (HTTP GET); its query string is kept.",
        json_schema_extra=ui("Delivery report URL", visibility="advanced"),
    ),
]

# The message fields a send and a bulk send's template share.
SenderField = Annotated[
    NonEmptyStr,
    Field(
        max_length=20,
        description="Alphanumeric sender (at most 11 characters), long code or short code.",
        json_schema_extra=ui("Sender", visibility="important"),
    ),
]
TemplateContentField = Annotated[
    NonEmptyStr,
    Field(
        description="The text; $(name) placeholders are filled from each recipient.",
        json_schema_extra=ui("Content", visibility="important"),
    ),
]
ProtocolField = Annotated[
    Literal["SMS", "WhatsApp"],
    Field("SMS", description="SMS, or WhatsApp.", json_schema_extra=ui("Protocol")),
]
AttachmentUriField = Annotated[
    HttpUrl | None,
    Field(
        None,
        description="WhatsApp only: the address of an attachment.",
        json_schema_extra=ui("Attachment URI", visibility="advanced"),
    ),
]
MessageCustomerDataField = Annotated[
    CustomerDataText | None,
    Field(None, description="Billing or grouping data.", json_schema_extra=ui("Customer data")),
]
AdMessageField = Annotated[
    bool | None,
    Field(None, description="Mark it as an advertisement.", json_schema_extra=ui("Ad message")),
]


def check_attachment(attachment: object, protocol: str) -> None:
    """An attachment goes only with WhatsApp (raises ValueError otherwise)."""
    if attachment is not None and protocol != "WhatsApp":
        raise ValueError("AttachmentUri needs Protocol WhatsApp.")


TransactionalField = Annotated[
    bool,
    Field(
        False,
        description=(
            "Yes: send even to recipients who opted out of this service (replied STOP), for "
            "messages they must get regardless, such as a security code. No (the default): a "
            "send to an opted-out recipient is refused. Not sent to SmartDialog."
        ),
        json_schema_extra=ui("Transactional", visibility="advanced"),
    ),
]

# --- bodies ---------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipientIn(_Body):
    Address: PhoneNumber = Field(
        description="The recipient's phone number.", json_schema_extra=ui("Address")
    )
    Personalization: dict[str, str | int | float | bool] | None = Field(
        None,
        description='Values for the $(name) placeholders of Content, e.g. {"name": "Ada"}.',
        json_schema_extra=ui("Personalization"),
    )


class MessageBody(_Body):
    """SendMessage and SendReplyMessage (the certified connector's fields)."""

    Sender: SenderField
    Content: TemplateContentField
    Protocol: ProtocolField
    SendDateTime: SendDateTimeField
    Recipients: list[RecipientIn] = Field(
        min_length=1,
        max_length=MAX_RECIPIENTS,
        description="Who gets it.",
        json_schema_extra=ui("Recipients", visibility="important"),
    )
    AttachmentUri: AttachmentUriField
    CustomerData: MessageCustomerDataField
    AdMessage: AdMessageField
    DlrUrl: DlrUrlField
    RequestId: RequestIdField
    Transactional: TransactionalField

    @model_validator(mode="after")
    def _attachment_needs_whatsapp(self) -> MessageBody:
        check_attachment(self.AttachmentUri, self.Protocol)
        return self


class DiscussionReplyBody(_Body):
    """SendDiscussionReplyMessage."""

    ThreadId: NonEmptyStr = Field(
        description="The discussion thread to reply to.",
        json_schema_extra=ui("Thread Id", visibility="important"),
    )
    Content: NonEmptyStr = Field(
        description="The reply text.", json_schema_extra=ui("Content", visibility="important")
    )
    CustomerData: CustomerDataText | None = Field(
        None, description="Billing or grouping data.", json_schema_extra=ui("Customer data")
    )


class TemplateRecipientIn(_Body):
    Address: PhoneNumber = Field(
        description="The recipient's phone number.", json_schema_extra=ui("Address")
    )


class TemplateButtonIn(_Body):
    Type: Literal["Call", "QuickReply", "Url"] = Field(
        description="The kind of the template's button: Call, QuickReply or Url.",
        json_schema_extra=ui("Button type"),
    )
    Data: str | None = Field(
        None,
        description="The value for this button: its text, phone number or URL suffix.",
        json_schema_extra=ui("Button text"),
    )


class TemplateMessageBody(_Body):
    """SendWhatsappTemplateMessage."""

    TemplateName: NonEmptyStr = Field(
        description="The WhatsApp template to send.",
        json_schema_extra=ui(
            "WhatsApp template", visibility="important", dynamic_values=template_dropdown()
        ),
    )
    Recipients: list[TemplateRecipientIn] = Field(
        min_length=1,
        max_length=MAX_RECIPIENTS,
        description="Who gets it.",
        json_schema_extra=ui("Recipients", visibility="important"),
    )
    BodyParameters: list[str] | None = Field(
        None,
        description="Values for the template body's placeholders, in order.",
        json_schema_extra=ui("Body parameters"),
    )
    HeaderParameters: list[str] | None = Field(
        None,
        description="Values for the template header's placeholders, in order.",
        json_schema_extra=ui("Header parameters"),
    )
    Buttons: list[TemplateButtonIn] | None = Field(
        None,
        description="Values for the template's buttons, in the template's order.",
        json_schema_extra=ui("Buttons"),
    )
    SendDateTime: SendDateTimeField
    AttachmentUri: HttpUrl | None = Field(
        None,
        description="The address of a media file for a template with a media header.",
        json_schema_extra=ui("Attachment URI"),
    )
    UseSmsFallback: bool | None = Field(
        None,
        description="Send it as an SMS to recipients WhatsApp cannot reach.",
        json_schema_extra=ui("Use SMS fallback"),
    )
    DlrUrl: DlrUrlField
    CustomerData: CustomerDataText | None = Field(
        None, description="Billing or grouping data.", json_schema_extra=ui("Customer data")
    )
    RequestId: RequestIdField
    Transactional: TransactionalField


# --- inputs ---------------------------------------------------------------------------------------


class SendMessageInput(ActionInput):
    customer_id: CustomerIdHeader
    service_id: ServiceIdHeader
    idempotency_key: IdempotencyKeyHeader = None
    body: Annotated[
        MessageBody,
        Body(),
        Field(
            description="The message: sender, text, recipients and sending options.",
            json_schema_extra=ui("Message", visibility="important"),
        ),
    ]


class SendReplyMessageInput(SendMessageInput):
    parent_message_id: Annotated[
        NonEmptyStr,
        Param("path", "ParentMessageId"),
        Field(
            description="SmartDialog's MessageId of the message to reply to.",
            json_schema_extra=ui("Parent message Id", visibility="important"),
        ),
    ]


class SendDiscussionReplyInput(ActionInput):
    customer_id: DiscussionCustomerIdHeader
    idempotency_key: IdempotencyKeyHeader = None
    body: Annotated[
        DiscussionReplyBody,
        Body(),
        Field(
            description="The reply: the discussion thread and the text.",
            json_schema_extra=ui("Reply", visibility="important"),
        ),
    ]


class SendTemplateInput(ActionInput):
    customer_id: CustomerIdHeader
    service_id: ServiceIdHeader
    idempotency_key: IdempotencyKeyHeader = None
    body: Annotated[
        TemplateMessageBody,
        Body(),
        Field(
            description="The template message: template, recipients and its parameters.",
            json_schema_extra=ui("Template message", visibility="important"),
        ),
    ]


class MessageStatusInput(ActionInput):
    message_id: MessageIdPath
    token: Annotated[
        str | None,
        Param("query", "token"),
        Field(
            None,
            max_length=200,
            description="The token of the status URL (the send's Location carries it).",
            json_schema_extra=ui("Token", visibility="internal"),
        ),
    ] = None


class CancelMessageInput(ActionInput):
    message_id: MessageIdPath


# --- response documents (for the connector) -------------------------------------------------------


class AcceptedDoc(BaseModel):
    """202: accepted and queued; poll ``Location`` (= StatusUrl)."""

    Id: str = Field(description="Our id of this send.", json_schema_extra=ui("Id"))
    Status: str = Field(
        description="accepted, queued or sending (cancelled after CancelMessage).",
        json_schema_extra=ui("Status"),
    )
    RequestId: str | None = Field(
        None,
        description="The RequestId sent to SmartDialog (yours, or one made for you).",
        json_schema_extra=ui("Request Id"),
    )
    EstimatedPartCount: int | None = Field(
        None,
        description="SMS parts per recipient, estimated after personalization.",
        json_schema_extra=ui("Estimated part count"),
    )
    Attempts: int | None = Field(
        None, description="Sending attempts so far.", json_schema_extra=ui("Attempts")
    )
    StatusUrl: str | None = Field(
        None,
        description="Where to poll this send's status (carries its own token).",
        json_schema_extra=ui("Status URL"),
    )


class RecipientDoc(BaseModel):
    Address: str | None = Field(
        None, description="The recipient's phone number.", json_schema_extra=ui("Address")
    )
    Id: str | None = Field(
        None,
        description="SmartDialog's id of this recipient (delivery reports use it).",
        json_schema_extra=ui("Recipient Id"),
    )
    Status: str | None = Field(
        None,
        description="pending, sent, delivered, undelivered, failed or cancelled.",
        json_schema_extra=ui("Recipient status"),
    )


class SentDoc(BaseModel):
    """200: sent; SmartDialog's answer plus our status."""

    MessageId: str | None = Field(
        None, description="SmartDialog's MessageId.", json_schema_extra=ui("Message Id")
    )
    MessagePartCount: int | None = Field(
        None, description="SMS parts per recipient.", json_schema_extra=ui("Message part count")
    )
    Recipients: list[RecipientDoc] = Field(
        default_factory=list,
        description="Each recipient, with its delivery state.",
        json_schema_extra=ui("Recipients"),
    )
    ThreadId: str | None = Field(
        None,
        description="The discussion thread (discussion replies).",
        json_schema_extra=ui("Thread Id"),
    )
    Id: str | None = Field(None, description="Our id of this send.", json_schema_extra=ui("Id"))
    Status: str | None = Field(
        None, description="sent (our status of the send).", json_schema_extra=ui("Status")
    )
    RequestId: str | None = Field(
        None, description="The RequestId sent to SmartDialog.", json_schema_extra=ui("Request Id")
    )
    SentAt: str | None = Field(
        None, description="When SmartDialog accepted it.", json_schema_extra=ui("Sent at")
    )


class TemplateRecipientDoc(BaseModel):
    address: str | None = Field(
        None, description="The recipient's phone number.", json_schema_extra=ui("Address")
    )
    id: str | None = Field(
        None,
        description="SmartDialog's id of this recipient (delivery reports use it).",
        json_schema_extra=ui("Recipient Id"),
    )
    status: str | None = Field(
        None,
        description="pending, sent, delivered, undelivered, failed or cancelled.",
        json_schema_extra=ui("Recipient status"),
    )


class TemplateSentDoc(BaseModel):
    """200: sent (camelCase, as SmartDialog answers WhatsApp template sends)."""

    messageId: str | None = Field(
        None, description="SmartDialog's MessageId.", json_schema_extra=ui("Message Id")
    )
    messagePartCount: int | None = Field(
        None, description="Message parts per recipient.", json_schema_extra=ui("Part count")
    )
    recipients: list[TemplateRecipientDoc] = Field(
        default_factory=list,
        description="Each recipient, with its delivery state.",
        json_schema_extra=ui("Recipients"),
    )
    id: str | None = Field(None, description="Our id of this send.", json_schema_extra=ui("Id"))
    status: str | None = Field(
        None, description="sent (our status of the send).", json_schema_extra=ui("Status")
    )
    requestId: str | None = Field(
        None, description="The RequestId sent to SmartDialog.", json_schema_extra=ui("Request Id")
    )
    sentAt: str | None = Field(
        None, description="When SmartDialog accepted it.", json_schema_extra=ui("Sent at")
    )


_ACCEPTED_HEADERS = {
    "Location": "The status URL (carries its own token): poll it with GET.",
    "Retry-After": "Seconds to wait before polling.",
}


def _send_responses(sent: type[BaseModel]) -> tuple[ResponseDoc, ...]:
    return (
        ResponseDoc(202, "Accepted and queued; poll Location.", AcceptedDoc, _ACCEPTED_HEADERS),
        ResponseDoc(200, "Sent (the final answer of the status URL).", sent),
    )


# --- handlers -------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _service(settings: Settings) -> SendService:
    from shared.outbound._service import SendService

    return SendService(settings)


def _answer(view: StatusView) -> ActionResponse:
    response = ActionResponse.json(view.body, status=view.status, headers=view.headers)
    if view.problem:
        response.content_type = PROBLEM_CONTENT_TYPE
    return response


def _accept(ctx: ActionContext, command: dict[str, Any], key: str | None) -> ActionResponse:
    parsed = OutboundMessageAdapter.validate_python(command)
    return _answer(_service(ctx.settings).accept(parsed, idempotency_key=key))


def _body(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True, exclude={"Transactional"})


def _transactional(model: MessageBody | TemplateMessageBody) -> dict[str, Any]:
    """Our ``Transactional`` body field, moved to the queue envelope (never sent upstream)."""
    return {"transactional": True} if model.Transactional else {}


def send_message(ctx: ActionContext, inp: SendMessageInput) -> ActionResponse:
    command = {
        "operation": "SendMessage",
        "customerId": inp.customer_id,
        "serviceId": inp.service_id,
        "body": _body(inp.body),
        **_transactional(inp.body),
    }
    return _accept(ctx, command, inp.idempotency_key)


def send_reply_message(ctx: ActionContext, inp: SendReplyMessageInput) -> ActionResponse:
    command = {
        "operation": "SendReplyMessage",
        "customerId": inp.customer_id,
        "serviceId": inp.service_id,
        "parentMessageId": inp.parent_message_id,
        "body": _body(inp.body),
        **_transactional(inp.body),
    }
    return _accept(ctx, command, inp.idempotency_key)


def send_discussion_reply(ctx: ActionContext, inp: SendDiscussionReplyInput) -> ActionResponse:
    command = {
        "operation": "SendDiscussionReplyMessage",
        "customerId": inp.customer_id,
        "body": _body(inp.body),
    }
    return _accept(ctx, command, inp.idempotency_key)


def send_template(ctx: ActionContext, inp: SendTemplateInput) -> ActionResponse:
    command = {
        "operation": "SendWhatsappTemplateMessage",
        "customerId": inp.customer_id,
        "serviceId": inp.service_id,
        "body": _body(inp.body),
        **_transactional(inp.body),
    }
    return _accept(ctx, command, inp.idempotency_key)


def get_message_status(ctx: ActionContext, inp: MessageStatusInput) -> ActionResponse:
    return _answer(_service(ctx.settings).status(inp.message_id, inp.token))


def cancel_message(ctx: ActionContext, inp: CancelMessageInput) -> ActionResponse:
    return _answer(_service(ctx.settings).cancel(inp.message_id))


_ASYNC = {"x-ms-async-pattern": True}  # informational; the 202 + Location pattern is native

SPECS: tuple[ActionSpec[Any], ...] = (
    ActionSpec(
        operation_id="SendMessage",
        method="POST",
        route="messages",
        input=SendMessageInput,
        handler=send_message,
        summary="Send a message",
        description=(
            "Queues an SMS (or WhatsApp message) to one or more recipients and answers 202 with "
            "a status URL; the flow waits there for SmartDialog's MessageId."
        ),
        responses=_send_responses(SentDoc),
        visibility="important",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="SendReplyMessage",
        method="POST",
        route="messages/{ParentMessageId}/replies",
        input=SendReplyMessageInput,
        handler=send_reply_message,
        summary="Send a reply message",
        description="Queues a reply to an earlier message; answers as Send a message.",
        responses=_send_responses(SentDoc),
        visibility="important",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="SendDiscussionReplyMessage",
        method="POST",
        route="discussions/replies",
        input=SendDiscussionReplyInput,
        handler=send_discussion_reply,
        summary="Send a discussion reply",
        description=(
            "Queues a reply into a discussion thread; answers as Send a message. SmartDialog "
            "cannot de-duplicate these, so one whose outcome is unknown is not repeated."
        ),
        responses=_send_responses(SentDoc),
        visibility="important",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="SendWhatsappTemplateMessage",
        method="POST",
        route="whatsapp/messages",
        input=SendTemplateInput,
        handler=send_template,
        summary="Send a WhatsApp template message",
        description="Queues a WhatsApp template message; answers as Send a message.",
        responses=_send_responses(TemplateSentDoc),
        visibility="important",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="GetMessageStatus",
        method="GET",
        route="messages/{MessageId}",
        input=MessageStatusInput,
        handler=get_message_status,
        summary="Get a message's status",
        description=(
            "202 while it is queued or being sent, 200 with SmartDialog's answer once sent, a "
            "problem document (422) once it failed for good, 410 when cancelled. Needs the "
            "token of the status URL, not a function key."
        ),
        responses=(
            ResponseDoc(200, "Sent.", SentDoc),
            ResponseDoc(202, "Still pending.", AcceptedDoc, _ACCEPTED_HEADERS),
        ),
        visibility="advanced",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="CancelMessage",
        method="DELETE",
        route="messages/{MessageId}",
        input=CancelMessageInput,
        handler=cancel_message,
        summary="Cancel a queued message",
        description="Cancels a message that is not being sent yet; 409 once it is.",
        responses=(ResponseDoc(200, "Cancelled.", AcceptedDoc),),
        visibility="advanced",
        tags=(TAG,),
    ),
)
