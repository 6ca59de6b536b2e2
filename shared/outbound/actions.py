"""The send actions (202 Accepted + Location), GetMessageStatus and CancelMessage.

They run through the shared action pipeline and hand the validated request to
:class:`SendService`. See docs/sending.md."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict

from shared.actions._spec import (
    ActionContext,
    ActionInput,
    ActionResponse,
    ActionSpec,
    Body,
    Param,
    ResponseDoc,
)
from shared.actions.fields import CustomerIdHeader, NonEmptyStr, StatusToken, labelled
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
        labelled(
            "Message",
            "The message: sender, text, recipients and sending options.",
            ...,
            visibility="important",
        ),
    ]


class SendReplyMessageInput(SendMessageInput):
    service_id: ReplyServiceIdHeader
    parent_message_id: Annotated[
        NonEmptyStr,
        Param("path", "ParentMessageId"),
        labelled(
            "ParentMessage Id",
            "SmartDialog's MessageId of the message to reply to.",
            ...,
            visibility="important",
        ),
    ]


class SendDiscussionReplyInput(ActionInput):
    customer_id: DiscussionCustomerIdHeader
    idempotency_key: IdempotencyKeyHeader = None
    body: Annotated[
        DiscussionReplyBody,
        Body(),
        labelled(
            "Reply", "The reply: the discussion thread and the text.", ..., visibility="important"
        ),
    ]


class SendTemplateInput(ActionInput):
    customer_id: CustomerIdHeader
    service_id: ServiceIdHeader
    idempotency_key: IdempotencyKeyHeader = None
    body: Annotated[
        TemplateMessageBody,
        Body(),
        labelled(
            "Template message",
            "The template message: template, recipients and its parameters.",
            ...,
            visibility="important",
        ),
    ]


class MessageStatusInput(ActionInput):
    message_id: MessageIdPath
    token: StatusToken = None


class CancelMessageInput(ActionInput):
    ignored_query = ("token",)  # a DELETE on the send's Location as given (the status token)
    message_id: MessageIdPath


# --- response documents (for the connector) -------------------------------------------------------


class LastErrorDoc(BaseModel):
    code: str | None = labelled(
        "Last error code", "upstream-unavailable, rate-limited, configuration, ..."
    )
    title: str | None = labelled("Last error title", "What happened.")
    detail: str | None = labelled("Last error", "More about it (never a secret).")
    upstreamStatus: int | None = labelled(
        "Last upstream status",
        "SmartDialog's HTTP status, if it answered.",
        schema={"format": "int32"},
    )
    attempts: int | None = labelled(
        "Attempts at last error", "Attempts made when it happened.", schema={"format": "int32"}
    )


class AcceptedDoc(BaseModel):
    """202: accepted and queued; poll ``Location`` (= StatusUrl)."""

    Id: str = labelled("Id", "Our id of this send.", ...)
    Status: str = labelled(
        "Status", "accepted, queued or sending (cancelled after CancelMessage).", ...
    )
    RequestId: str | None = labelled(
        "Request Id",
        "The RequestId sent to SmartDialog: yours (such a send is never packed), or one made for "
        "you (a packed send goes with its pack's: see its status).",
    )
    EstimatedPartCount: int | None = labelled(
        "Estimated part count", "SMS parts per recipient, estimated after personalization."
    )
    Attempts: int | None = labelled("Attempts", "Sending attempts so far.")
    LastError: LastErrorDoc | None = labelled(
        "Last error",
        "Why the last attempt failed, or what the send waits for (code configuration).",
    )
    CreatedAt: str | None = labelled("Created at", "When it was accepted.")
    ValidUntil: str | None = labelled("Valid until", "It fails expired if not sent by then.")
    Connection: str | None = labelled("Connection", "The connection it is sent through.")
    StatusUrl: str | None = labelled(
        "Status URL", "Where to poll this send's status (carries its own token)."
    )


class RecipientDoc(BaseModel):
    Address: str | None = labelled("Recipient Address", "The recipient's phone number.")
    Id: str | None = labelled(
        "Recipient Id", "SmartDialog's id of this recipient (delivery reports use it)."
    )
    Status: str | None = labelled(
        "Recipient status", "pending, sent, delivered, undelivered, failed or cancelled."
    )


class _SentBase(BaseModel):
    MessageId: str | None = labelled("Message Id", "SmartDialog's MessageId.")
    MessagePartCount: int | None = labelled(
        "Message Part Count", "Message parts per recipient.", schema={"format": "int32"}
    )
    Id: str | None = labelled("Id", "Our id of this send.")
    Status: str | None = labelled("Status", "sent (our status of the send).")
    RequestId: str | None = labelled("Request Id", "The RequestId sent to SmartDialog.")
    SentAt: str | None = labelled(
        "Sent at", "When SmartDialog accepted it (with a SendDateTime: before it goes out)."
    )
    Attempts: int | None = labelled("Attempts", "Sending attempts it took.")
    Connection: str | None = labelled("Connection", "The connection it was sent through.")


class SentDoc(_SentBase):
    """200: sent; SmartDialog's answer plus our status."""

    Recipients: list[RecipientDoc] = labelled(
        "Recipients", "Each recipient, with its delivery state.", default_factory=list
    )
    ThreadId: str | None = labelled("Thread Id", "The discussion thread (discussion replies).")


_CAMEL = ConfigDict(alias_generator=lambda name: name[0].lower() + name[1:])


class TemplateRecipientDoc(RecipientDoc):
    model_config = _CAMEL


class TemplateSentDoc(_SentBase):
    """200: sent (camelCase, as SmartDialog answers WhatsApp template sends)."""

    model_config = _CAMEL
    Recipients: list[TemplateRecipientDoc] = labelled(
        "Recipients", "Each recipient, with its delivery state.", default_factory=list
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


def _accept(
    ctx: ActionContext,
    inp: SendMessageInput | SendDiscussionReplyInput | SendTemplateInput,
    operation: str,
    **envelope: str,
) -> ActionResponse:
    """Queue ``inp``'s body as an ``operation`` command; our ``Transactional`` body field moves to
    the envelope (never sent upstream). 400 naming each recipient whose values make Content too
    long once filled in."""
    if isinstance(inp.body, MessageBody):
        values = (r.Personalization for r in inp.body.Recipients)
        if errors := [
            FieldError(f"Recipients[{index}].Personalization", why)
            for index, why in filled_too_long(inp.body.Content, values)
        ]:
            raise validation_problem(errors)
    command: dict[str, Any] = {
        "operation": operation,
        "customerId": inp.customer_id,
        **envelope,
        "body": inp.body.model_dump(mode="json", exclude_none=True, exclude={"Transactional"}),
    }
    if getattr(inp.body, "Transactional", False):
        command["transactional"] = True
    parsed = OutboundMessageAdapter.validate_python(command)
    return answer(send_service(ctx.settings).accept(parsed, idempotency_key=inp.idempotency_key))


def send_message(ctx: ActionContext, inp: SendMessageInput) -> ActionResponse:
    return _accept(ctx, inp, "SendMessage", serviceId=inp.service_id)


def send_reply_message(ctx: ActionContext, inp: SendReplyMessageInput) -> ActionResponse:
    return _accept(
        ctx,
        inp,
        "SendReplyMessage",
        serviceId=inp.service_id,
        parentMessageId=inp.parent_message_id,
    )


def send_discussion_reply(ctx: ActionContext, inp: SendDiscussionReplyInput) -> ActionResponse:
    return _accept(ctx, inp, "SendDiscussionReplyMessage")


def send_template(ctx: ActionContext, inp: SendTemplateInput) -> ActionResponse:
    return _accept(ctx, inp, "SendWhatsappTemplateMessage", serviceId=inp.service_id)


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
