"""The send actions (202 Accepted + Location), GetMessageStatus and CancelMessage.

They run through the shared action pipeline (validation, phone numbers to E.164, settings
defaults, problem documents) and hand the validated request to :class:`SendService`. Bodies keep
the certified connector's field names; ``Customer-Id``/``Service-Id`` (``CustomerId`` for the
discussion reply, as upstream) are optional headers defaulting to the app settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field

from shared.actions._spec import (
    ActionContext,
    ActionInput,
    ActionResponse,
    ActionSpec,
    Body,
    Param,
    ResponseDoc,
)
from shared.actions.fields import (
    CustomerIdHeader,
    NonEmptyStr,
    ui,
)
from shared.outbound._fields import (
    DiscussionCustomerIdHeader,
    DiscussionReplyBody,
    IdempotencyKeyHeader,
    MessageBody,
    MessageIdPath,
    ReplyServiceIdHeader,
    ServiceIdHeader,
    TemplateMessageBody,
    filled_too_long,
)
from shared.outbound._models import OutboundMessageAdapter
from shared.outbound._service import send_service
from shared.problems import PROBLEM_CONTENT_TYPE, FieldError, validation_problem

if TYPE_CHECKING:
    from shared.outbound._service import StatusView

__all__ = ["ACCEPTED_HEADERS", "SPECS", "TAG", "answer"]

TAG = "Messages"

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
    service_id: ReplyServiceIdHeader
    parent_message_id: Annotated[
        NonEmptyStr,
        Param("path", "ParentMessageId"),
        Field(
            description="SmartDialog's MessageId of the message to reply to.",
            json_schema_extra=ui("ParentMessage Id", visibility="important"),
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
    ignored_query = ("token",)  # a DELETE on the send's Location as given (the status token)
    message_id: MessageIdPath


# --- response documents (for the connector) -------------------------------------------------------


class LastErrorDoc(BaseModel):
    code: str | None = Field(
        None,
        description="upstream-unavailable, rate-limited, configuration, ...",
        json_schema_extra=ui("Last error code"),
    )
    title: str | None = Field(
        None, description="What happened.", json_schema_extra=ui("Last error title")
    )
    detail: str | None = Field(
        None, description="More about it (never a secret).", json_schema_extra=ui("Last error")
    )
    upstreamStatus: int | None = Field(
        None,
        description="SmartDialog's HTTP status, if it answered.",
        json_schema_extra=ui("Last upstream status") | {"format": "int32"},
    )
    attempts: int | None = Field(
        None,
        description="Attempts made when it happened.",
        json_schema_extra=ui("Attempts at last error") | {"format": "int32"},
    )


class AcceptedDoc(BaseModel):
    """202: accepted and queued; poll ``Location`` (= StatusUrl)."""

    Id: str = Field(description="Our id of this send.", json_schema_extra=ui("Id"))
    Status: str = Field(
        description="accepted, queued or sending (cancelled after CancelMessage).",
        json_schema_extra=ui("Status"),
    )
    RequestId: str | None = Field(
        None,
        description="The RequestId sent to SmartDialog: yours (such a send is never packed), "
        "or one made for you (a packed send goes with its pack's: see its status).",
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
    LastError: LastErrorDoc | None = Field(
        None,
        description="Why the last attempt failed, or what the send waits for (code configuration).",
        json_schema_extra=ui("Last error"),
    )
    CreatedAt: str | None = Field(
        None, description="When it was accepted.", json_schema_extra=ui("Created at")
    )
    ValidUntil: str | None = Field(
        None,
        description="It fails expired if not sent by then.",
        json_schema_extra=ui("Valid until"),
    )
    Connection: str | None = Field(
        None, description="The connection it is sent through.", json_schema_extra=ui("Connection")
    )
    StatusUrl: str | None = Field(
        None,
        description="Where to poll this send's status (carries its own token).",
        json_schema_extra=ui("Status URL"),
    )


class RecipientDoc(BaseModel):
    Address: str | None = Field(
        None,
        description="The recipient's phone number.",
        json_schema_extra=ui("Recipient Address"),
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
        None,
        description="SMS parts per recipient.",
        json_schema_extra=ui("Message Part Count") | {"format": "int32"},
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
        None,
        description="When SmartDialog accepted it (with a SendDateTime: before it goes out).",
        json_schema_extra=ui("Sent at"),
    )
    Attempts: int | None = Field(
        None, description="Sending attempts it took.", json_schema_extra=ui("Attempts")
    )
    Connection: str | None = Field(
        None, description="The connection it was sent through.", json_schema_extra=ui("Connection")
    )


class TemplateRecipientDoc(BaseModel):
    address: str | None = Field(
        None,
        description="The recipient's phone number.",
        json_schema_extra=ui("Recipient Address"),
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
        None,
        description="Message parts per recipient.",
        json_schema_extra=ui("Message Part Count") | {"format": "int32"},
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
        None,
        description="When SmartDialog accepted it (with a SendDateTime: before it goes out).",
        json_schema_extra=ui("Sent at"),
    )
    attempts: int | None = Field(
        None, description="Sending attempts it took.", json_schema_extra=ui("Attempts")
    )
    connection: str | None = Field(
        None, description="The connection it was sent through.", json_schema_extra=ui("Connection")
    )


ACCEPTED_HEADERS = {
    "Location": "The status URL (carries its own token): poll it with GET.",
    "Retry-After": "Seconds to wait before polling.",
}


def _send_responses(sent: type[BaseModel]) -> tuple[ResponseDoc, ...]:
    return (
        ResponseDoc(202, "Accepted and queued; poll Location.", AcceptedDoc, ACCEPTED_HEADERS),
        ResponseDoc(200, "Sent (the final answer of the status URL).", sent),
    )


# --- handlers -------------------------------------------------------------------------------------


def answer(view: StatusView) -> ActionResponse:
    """The HTTP answer of a :class:`StatusView` (the problem content type when it is one)."""
    response = ActionResponse.json(view.body, status=view.status, headers=view.headers)
    if view.problem:
        response.content_type = PROBLEM_CONTENT_TYPE
    return response


def _accept(ctx: ActionContext, command: dict[str, Any], key: str | None) -> ActionResponse:
    parsed = OutboundMessageAdapter.validate_python(command)
    return answer(send_service(ctx.settings).accept(parsed, idempotency_key=key))


def _body(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True, exclude={"Transactional"})


def _fits_filled_in(body: MessageBody) -> None:
    """400 naming each recipient whose values make Content too long once filled in."""
    values = (r.Personalization for r in body.Recipients)
    if errors := [
        FieldError(f"Recipients[{index}].Personalization", why)
        for index, why in filled_too_long(body.Content, values)
    ]:
        raise validation_problem(errors)


def _transactional(model: MessageBody | TemplateMessageBody) -> dict[str, Any]:
    """Our ``Transactional`` body field, moved to the queue envelope (never sent upstream)."""
    return {"transactional": True} if model.Transactional else {}


def send_message(ctx: ActionContext, inp: SendMessageInput) -> ActionResponse:
    _fits_filled_in(inp.body)
    command = {
        "operation": "SendMessage",
        "customerId": inp.customer_id,
        "serviceId": inp.service_id,
        "body": _body(inp.body),
        **_transactional(inp.body),
    }
    return _accept(ctx, command, inp.idempotency_key)


def send_reply_message(ctx: ActionContext, inp: SendReplyMessageInput) -> ActionResponse:
    _fits_filled_in(inp.body)
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
    from shared.outbound._routing import expire_overdue

    return answer(send_service(ctx.settings).status(inp.message_id, inp.token, expire_overdue))


def cancel_message(ctx: ActionContext, inp: CancelMessageInput) -> ActionResponse:
    return answer(send_service(ctx.settings).cancel(inp.message_id))


SPECS: tuple[ActionSpec[Any], ...] = (
    ActionSpec(
        operation_id="SendMessage",
        method="POST",
        route="messages",
        input=SendMessageInput,
        handler=send_message,
        summary="Send Message",
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
        summary="Send Reply Message",
        description="Queues a reply to an earlier message; answers as Send Message.",
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
        summary="Send Discussion Reply Message",
        description=(
            "Queues a reply into a discussion thread; answers as Send Message. SmartDialog "
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
        summary="Send WhatsApp Message",
        description="Queues a WhatsApp template message; answers as Send Message.",
        responses=_send_responses(TemplateSentDoc),
        visibility="important",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="GetMessageStatus",
        lenient=True,  # only the settings it reads must validate
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
            ResponseDoc(202, "Still pending.", AcceptedDoc, ACCEPTED_HEADERS),
        ),
        visibility="internal",
        routed=False,
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="CancelMessage",
        method="DELETE",
        route="messages/{MessageId}",
        input=CancelMessageInput,
        handler=cancel_message,
        summary="Cancel a queued message",
        description=(
            "Cancels a message that is not being sent yet; 409 once it is. A send with a "
            "SendDateTime goes to SmartDialog at once, which holds it until then: it is sent "
            "(409) as soon as SmartDialog accepts it, and SmartDialog offers no cancel."
        ),
        responses=(ResponseDoc(200, "Cancelled.", AcceptedDoc),),
        visibility="advanced",
        routed=False,
        tags=(TAG,),
    ),
)
