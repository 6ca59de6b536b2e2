"""The send actions' parameters and bodies, with the certified connector's field names (shared by
the single sends and SendBulkMessages's template)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo

from shared.actions._spec import Param, SettingDefault
from shared.actions.fields import (
    CUSTOMER_DROPDOWN,
    HttpUrl,
    NonEmptyStr,
    PhoneNumber,
    UpstreamId,
    labelled,
    service_dropdown,
    template_dropdown,
)
from shared.actions.fields import CustomerData as CustomerDataText
from shared.clock import as_utc
from shared.messages import MESSAGE_ID_PATTERN, UPSTREAM_ID_CHARS
from shared.smartdialog import BlankIsAbsent, IsoDateTime, PersonalizationValue
from shared.sms import personalized_lengths

__all__ = [
    "MAX_CONTENT_CHARS",
    "MAX_RECIPIENTS",
    "DiscussionReplyBody",
    "MessageBody",
    "SenderText",
    "TemplateMessageBody",
    "filled_too_long",
]

MAX_RECIPIENTS = 1000
#: The longest Content, placeholder value and filled-in Content (WhatsApp's), checked at accept.
MAX_CONTENT_CHARS = 4096


# --- parameters -----------------------------------------------------------------------------------

_ServiceIdParam = Annotated[
    UpstreamId,
    Param("header", "Service-Id", SettingDefault("service_id", "SMARTDIALOG_SERVICE_ID")),
]


def _service_field(*, allow_reply: bool) -> Any:
    """The Service header's field: its dropdown asks for services that take replies on
    SendReplyMessage and for the others elsewhere, as the certified connector's do."""
    return labelled(
        "Service",
        "The SmartDialog service to send with. Leave empty to use the app setting "
        "SMARTDIALOG_SERVICE_ID.",
        ...,
        visibility="important",
        dynamic_values=service_dropdown("OneWay", allow_reply=allow_reply),
    )


ServiceIdHeader = Annotated[_ServiceIdParam, _service_field(allow_reply=False)]
ReplyServiceIdHeader = Annotated[_ServiceIdParam, _service_field(allow_reply=True)]
DiscussionCustomerIdHeader = Annotated[
    UpstreamId,
    Param("header", "CustomerId", SettingDefault("customer_id", "SMARTDIALOG_CUSTOMER_ID")),
    labelled(
        "Customer",
        "The SmartDialog customer to act for. Leave empty to use the app setting "
        "SMARTDIALOG_CUSTOMER_ID.",
        ...,
        visibility="important",
        dynamic_values=CUSTOMER_DROPDOWN,
    ),
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Param("header", "Idempotency-Key"),
    labelled(
        "Idempotency key",
        "Any unique text: a repeated request with the same key returns the first answer and sends "
        "nothing again. Without it, the body's RequestId plays this role; a request with neither "
        "(a discussion reply, a bulk send) is sent again when repeated.",
        visibility="advanced",
        min_length=1,
        max_length=255,
    ),
]
MessageIdPath = Annotated[
    str,
    Param("path", "MessageId"),
    labelled(
        "Message Id",
        "The Id from the send's answer (the last segment of its status URL).",
        ...,
        visibility="important",
        pattern=MESSAGE_ID_PATTERN,
    ),
]


def _no_control(value: str | None) -> str | None:
    """A RequestId without control characters, which could pose as separators in stored keys."""
    if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain a control character (a line break, a tab)")
    return value


RequestIdField = Annotated[
    str | None,
    labelled(
        "Request Id",
        "Unique id of this send: a repeat with the same RequestId is not sent again. Leave empty "
        "(or blank) and one is generated, new for each send.",
        max_length=1000,
    ),
    BlankIsAbsent,
    AfterValidator(_no_control),
]


def _in_utc(value: dt.datetime | None) -> dt.datetime | None:
    """A time that exists in UTC (year 1 at +01:00 and year 9999 at -01:00 are none)."""
    if value is not None:
        try:
            as_utc(value)
        except OverflowError:
            raise ValueError("Must be a time that exists in UTC (years 1 to 9999 there).") from None
    return value


SendDateTimeField = Annotated[
    IsoDateTime | None,
    labelled(
        "Send Datetime",
        "When SmartDialog should send it: an ISO 8601 date-time, e.g. 2025-06-01T10:00:00Z. Leave "
        "empty to send at once.",
        visibility="important",
    ),
    BlankIsAbsent,
    AfterValidator(_in_utc),
]


def _callable_url(value: str | None) -> str | None:
    """Refuse at accept time what the guarded client would refuse without DNS."""
    from shared.guarded_http import check_callback_url
    from shared.settings import get_settings

    return None if value is None else check_callback_url(value, get_settings())


DlrUrlField = Annotated[
    HttpUrl | None,
    AfterValidator(_callable_url),
    labelled(
        "Dlr Url",
        "Your own delivery-report URL (HTTP GET); its query string is kept. Leave empty for none.",
    ),
    BlankIsAbsent,
]

# The message fields a send and a bulk send's template share.
#: A sender's bounds (also a notification rule's ``Sender``): not blank, at most 20 characters.
SenderText = Annotated[NonEmptyStr, Field(max_length=20)]
SenderField = Annotated[
    SenderText,
    labelled(
        "Message Sender",
        "Alphanumeric sender (at most 11 characters), long code or short code.",
        ...,
        visibility="important",
    ),
]
TemplateContentField = Annotated[
    NonEmptyStr,
    labelled(
        "Message Content",
        f"The text (at most {MAX_CONTENT_CHARS:,} characters, also once a recipient's values are "
        "filled in); $(name) placeholders are filled from each recipient.",
        ...,
        visibility="important",
        max_length=MAX_CONTENT_CHARS,
    ),
]
ProtocolField = Annotated[
    Literal["SMS", "WhatsApp"],
    labelled("Message Protocol", "SMS, or WhatsApp (empty: SMS).", "SMS", visibility="important"),
    BeforeValidator(lambda value: "SMS" if value is None else value),  # absent: the default
    BlankIsAbsent,  # (runs first)
]


def _needs_whatsapp(attachment: str | None, info: ValidationInfo) -> str | None:
    """An attachment goes only with WhatsApp: read from the model's Protocol, which must come
    before it (absent when Protocol itself is invalid: reported there)."""
    if attachment is not None and info.data.get("Protocol", "WhatsApp") != "WhatsApp":
        raise ValueError("AttachmentUri needs Protocol WhatsApp.")
    return attachment


AttachmentUriField = Annotated[
    HttpUrl | None,
    labelled(
        "Attachment Uri", "WhatsApp only: the address of an attachment. Leave empty for none."
    ),
    BlankIsAbsent,
    AfterValidator(_needs_whatsapp),
]
MessageCustomerDataField = Annotated[
    CustomerDataText | None,
    labelled("Customer data", "Billing or grouping data."),
]
AdMessageField = Annotated[
    bool | None,
    labelled("Ad message", "Mark it as an advertisement."),
]


def filled_too_long(
    content: str, personalizations: Iterable[Mapping[str, object] | None]
) -> Iterator[tuple[int, str]]:
    """The index of each of ``personalizations`` that makes ``content`` longer than
    :data:`MAX_CONTENT_CHARS` once filled in, with why (counted, never filled in)."""
    for index, length in enumerate(personalized_lengths(content, personalizations)):
        if length > MAX_CONTENT_CHARS:
            why = f"Content with these values filled in is {length:,} characters"
            yield index, f"{why}; at most {MAX_CONTENT_CHARS:,}."


TransactionalField = Annotated[
    bool,
    labelled(
        "Transactional",
        "Yes: send even to recipients who opted out of this service (replied STOP), for messages "
        "they must get regardless, such as a security code. No (the default): a send to an "
        "opted-out recipient is refused. Not sent to SmartDialog.",
        False,
        visibility="advanced",
    ),
]

# --- bodies ---------------------------------------------------------------------------------------


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _value_fits(value: str | float | bool) -> str | float | bool:
    if isinstance(value, str) and len(value) > MAX_CONTENT_CHARS:
        raise ValueError(f"At most {MAX_CONTENT_CHARS:,} characters.")
    return value


PersonalizationField = Annotated[
    dict[str, Annotated[PersonalizationValue, AfterValidator(_value_fits)]] | None,
    labelled(
        "Personalization",
        f'Values for the $(name) placeholders of Content, e.g. {{"name": "Ada"}}; each at most '
        f"{MAX_CONTENT_CHARS:,} characters.",
    ),
]


class TemplateRecipientIn(StrictBody):
    Address: PhoneNumber = labelled(
        "Address", "The recipient's phone number.", ..., visibility="important"
    )


class RecipientIn(TemplateRecipientIn):
    Personalization: PersonalizationField


class MessageBody(StrictBody):
    """SendMessage and SendReplyMessage (the certified connector's fields)."""

    Sender: SenderField
    Content: TemplateContentField
    Protocol: ProtocolField
    SendDateTime: SendDateTimeField
    Recipients: list[RecipientIn] = labelled(
        "Recipients",
        "Who gets it.",
        ...,
        visibility="important",
        min_length=1,
        max_length=MAX_RECIPIENTS,
    )
    AttachmentUri: AttachmentUriField
    CustomerData: MessageCustomerDataField
    AdMessage: AdMessageField
    DlrUrl: DlrUrlField
    RequestId: RequestIdField
    Transactional: TransactionalField


class DiscussionReplyBody(StrictBody):
    """SendDiscussionReplyMessage."""

    ThreadId: NonEmptyStr = labelled(
        "Thread Id",
        "The discussion thread to reply to.",
        ...,
        visibility="important",
        max_length=UPSTREAM_ID_CHARS,
    )
    Content: NonEmptyStr = labelled(
        "Message Content", "The reply text.", ..., visibility="important"
    )
    CustomerData: MessageCustomerDataField


class TemplateButtonIn(StrictBody):
    Type: Literal["Call", "QuickReply", "Url"] = labelled(
        "Type", "The kind of the template's button: Call, QuickReply or Url.", ...
    )
    Data: str | None = labelled(
        "Text", "The value for this button: its text, phone number or URL suffix."
    )


#: A template's placeholder value, titled as the certified connector's (the designer shows it).
BodyParameter = Annotated[
    NonEmptyStr,
    labelled("Template Body Parameters", "A value for the template body's next placeholder.", ...),
]
HeaderParameter = Annotated[
    NonEmptyStr,
    labelled(
        "Template Header Parameters", "A value for the template header's next placeholder.", ...
    ),
]


class TemplateMessageBody(StrictBody):
    """SendWhatsappTemplateMessage."""

    TemplateName: NonEmptyStr = labelled(
        "WhatsApp template",
        "The WhatsApp template to send.",
        ...,
        visibility="important",
        dynamic_values=template_dropdown(),
    )
    Recipients: list[TemplateRecipientIn] = labelled(
        "Recipients",
        "Who gets it.",
        ...,
        visibility="important",
        min_length=1,
        max_length=MAX_RECIPIENTS,
    )
    BodyParameters: list[BodyParameter] | None = labelled(
        "Body parameters", "Values for the template body's placeholders, in order (none blank)."
    )
    HeaderParameters: list[HeaderParameter] | None = labelled(
        "Header parameters", "Values for the template header's placeholders, in order (none blank)."
    )
    Buttons: list[TemplateButtonIn] | None = labelled(
        "Buttons", "Values for the template's buttons, in the template's order."
    )
    SendDateTime: SendDateTimeField
    AttachmentUri: Annotated[HttpUrl | None, BlankIsAbsent] = labelled(
        "Attachment Uri",
        "The address of a media file for a template with a media header. Leave empty for none.",
    )
    UseSmsFallback: bool | None = labelled(
        "Use SMS fallback", "Send it as an SMS to recipients WhatsApp cannot reach."
    )
    DlrUrl: DlrUrlField
    CustomerData: MessageCustomerDataField
    RequestId: RequestIdField
    Transactional: TransactionalField
