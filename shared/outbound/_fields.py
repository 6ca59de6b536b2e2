"""The send actions' parameters and bodies, with the certified connector's field names (shared by
the single sends and SendBulkMessages's template)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
)

from shared.actions._spec import (
    Param,
    SettingDefault,
)
from shared.actions.fields import (
    CUSTOMER_DROPDOWN,
    HttpUrl,
    NonEmptyStr,
    PhoneNumber,
    UpstreamId,
    service_dropdown,
    template_dropdown,
    ui,
)
from shared.actions.fields import (
    CustomerData as CustomerDataText,
)
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
#: The longest Content, placeholder value, and Content with a recipient's values filled in, in
#: characters: WhatsApp's limit for a text. As an SMS that is 27 GSM-7 parts or 62 UCS-2 parts,
#: well within the 255 parts a concatenated SMS can have. Checked when a send is accepted only:
#: a command an older release queued with a longer text is still sent.
MAX_CONTENT_CHARS = 4096

# --- parameters -----------------------------------------------------------------------------------

_ServiceIdParam = Annotated[
    UpstreamId,
    Param("header", "Service-Id", SettingDefault("service_id", "SMARTDIALOG_SERVICE_ID")),
]


def _service_field(*, allow_reply: bool) -> Any:
    """The Service header's field: its dropdown asks for services that take replies on
    SendReplyMessage and for the others elsewhere, as the certified connector's do."""
    return Field(
        description=(
            "The SmartDialog service to send with. Leave empty to use the app setting "
            "SMARTDIALOG_SERVICE_ID."
        ),
        json_schema_extra=ui(
            "Service",
            visibility="important",
            dynamic_values=service_dropdown("OneWay", allow_reply=allow_reply),
        ),
    )


ServiceIdHeader = Annotated[_ServiceIdParam, _service_field(allow_reply=False)]
ReplyServiceIdHeader = Annotated[_ServiceIdParam, _service_field(allow_reply=True)]
DiscussionCustomerIdHeader = Annotated[
    UpstreamId,
    Param("header", "CustomerId", SettingDefault("customer_id", "SMARTDIALOG_CUSTOMER_ID")),
    Field(
        description=(
            "The SmartDialog customer to act for. Leave empty to use the app setting "
            "SMARTDIALOG_CUSTOMER_ID."
        ),
        json_schema_extra=ui("Customer", visibility="important", dynamic_values=CUSTOMER_DROPDOWN),
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
            "sends nothing again. Without it, the body's RequestId plays this role; a request "
            "with neither (a discussion reply, a bulk send) is sent again when repeated."
        ),
        json_schema_extra=ui("Idempotency key", visibility="advanced"),
    ),
]
MessageIdPath = Annotated[
    str,
    Param("path", "MessageId"),
    Field(
        pattern=MESSAGE_ID_PATTERN,
        description="The Id from the send's answer (the last segment of its status URL).",
        json_schema_extra=ui("Message Id", visibility="important"),
    ),
]


def _no_control(value: str | None) -> str | None:
    """A RequestId without control characters: one stood for a separator where keys are told
    apart (found in review: a RequestId ``bulk\nK`` took a bulk send's Idempotency-Key K)."""
    if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain a control character (a line break, a tab)")
    return value


RequestIdField = Annotated[
    str | None,
    Field(
        None,
        max_length=1000,
        description=(
            "Unique id of this send: a repeat with the same RequestId is not sent again. "
            "Leave empty (or blank) and one is generated, new for each send."
        ),
        json_schema_extra=ui("Request Id"),
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
    Field(
        None,
        description=(
            "When SmartDialog should send it: an ISO 8601 date-time, e.g. "
            "2025-06-01T10:00:00Z. Leave empty to send at once."
        ),
        json_schema_extra=ui("Send Datetime", visibility="important"),
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
    Field(
        None,
        description=(
            "Your own delivery-report URL (HTTP GET); its query string is kept. Leave empty "
            "for none."
        ),
        json_schema_extra=ui("Dlr Url"),
    ),
    BlankIsAbsent,
]

# The message fields a send and a bulk send's template share.
#: A sender's bounds (also a notification rule's ``Sender``): not blank, at most 20 characters.
SenderText = Annotated[NonEmptyStr, Field(max_length=20)]
SenderField = Annotated[
    SenderText,
    Field(
        description="Alphanumeric sender (at most 11 characters), long code or short code.",
        json_schema_extra=ui("Message Sender", visibility="important"),
    ),
]
TemplateContentField = Annotated[
    NonEmptyStr,
    Field(
        max_length=MAX_CONTENT_CHARS,
        description=(
            f"The text (at most {MAX_CONTENT_CHARS:,} characters, also once a recipient's "
            "values are filled in); $(name) placeholders are filled from each recipient."
        ),
        json_schema_extra=ui("Message Content", visibility="important"),
    ),
]
ProtocolField = Annotated[
    Literal["SMS", "WhatsApp"],
    Field(
        "SMS",
        description="SMS, or WhatsApp (empty: SMS).",
        json_schema_extra=ui("Message Protocol", visibility="important"),
    ),
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
    Field(
        None,
        description="WhatsApp only: the address of an attachment. Leave empty for none.",
        json_schema_extra=ui("Attachment Uri"),
    ),
    BlankIsAbsent,
    AfterValidator(_needs_whatsapp),
]
MessageCustomerDataField = Annotated[
    CustomerDataText | None,
    Field(None, description="Billing or grouping data.", json_schema_extra=ui("Customer data")),
]
AdMessageField = Annotated[
    bool | None,
    Field(None, description="Mark it as an advertisement.", json_schema_extra=ui("Ad message")),
]


def filled_too_long(
    content: str, personalizations: Iterable[Mapping[str, object] | None]
) -> Iterator[tuple[int, str]]:
    """The index of each of ``personalizations`` that makes ``content`` longer than
    :data:`MAX_CONTENT_CHARS` once filled in, with why (counted, never filled in)."""
    for index, length in enumerate(personalized_lengths(content, personalizations)):
        if length > MAX_CONTENT_CHARS:
            yield (
                index,
                (
                    f"Content with these values filled in is {length:,} characters; at most "
                    f"{MAX_CONTENT_CHARS:,}."
                ),
            )


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


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _value_fits(value: str | float | bool) -> str | float | bool:
    if isinstance(value, str) and len(value) > MAX_CONTENT_CHARS:
        raise ValueError(f"At most {MAX_CONTENT_CHARS:,} characters.")
    return value


PersonalizationField = Annotated[
    dict[str, Annotated[PersonalizationValue, AfterValidator(_value_fits)]] | None,
    Field(
        None,
        description=(
            'Values for the $(name) placeholders of Content, e.g. {"name": "Ada"}; each at '
            f"most {MAX_CONTENT_CHARS:,} characters."
        ),
        json_schema_extra=ui("Personalization"),
    ),
]


class TemplateRecipientIn(StrictBody):
    Address: PhoneNumber = Field(
        description="The recipient's phone number.",
        json_schema_extra=ui("Address", visibility="important"),
    )


class RecipientIn(TemplateRecipientIn):
    Personalization: PersonalizationField


class MessageBody(StrictBody):
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


class DiscussionReplyBody(StrictBody):
    """SendDiscussionReplyMessage."""

    ThreadId: NonEmptyStr = Field(
        max_length=UPSTREAM_ID_CHARS,
        description="The discussion thread to reply to.",
        json_schema_extra=ui("Thread Id", visibility="important"),
    )
    Content: NonEmptyStr = Field(
        description="The reply text.",
        json_schema_extra=ui("Message Content", visibility="important"),
    )
    CustomerData: MessageCustomerDataField


class TemplateButtonIn(StrictBody):
    Type: Literal["Call", "QuickReply", "Url"] = Field(
        description="The kind of the template's button: Call, QuickReply or Url.",
        json_schema_extra=ui("Type"),
    )
    Data: str | None = Field(
        None,
        description="The value for this button: its text, phone number or URL suffix.",
        json_schema_extra=ui("Text"),
    )


#: A template's placeholder values; each item titled as in the certified connector (the label
#: the flow designer shows for it).
BodyParameter = Annotated[
    NonEmptyStr,
    Field(description="A value for the template body's next placeholder.",
          json_schema_extra=ui("Template Body Parameters")),
]  # fmt: skip
HeaderParameter = Annotated[
    NonEmptyStr,
    Field(description="A value for the template header's next placeholder.",
          json_schema_extra=ui("Template Header Parameters")),
]  # fmt: skip


class TemplateMessageBody(StrictBody):
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
    BodyParameters: list[BodyParameter] | None = Field(
        None,
        description="Values for the template body's placeholders, in order (none blank).",
        json_schema_extra=ui("Body parameters"),
    )
    HeaderParameters: list[HeaderParameter] | None = Field(
        None,
        description="Values for the template header's placeholders, in order (none blank).",
        json_schema_extra=ui("Header parameters"),
    )
    Buttons: list[TemplateButtonIn] | None = Field(
        None,
        description="Values for the template's buttons, in the template's order.",
        json_schema_extra=ui("Buttons"),
    )
    SendDateTime: SendDateTimeField
    AttachmentUri: Annotated[HttpUrl | None, BlankIsAbsent] = Field(
        None,
        description=(
            "The address of a media file for a template with a media header. Leave empty for none."
        ),
        json_schema_extra=ui("Attachment Uri"),
    )
    UseSmsFallback: bool | None = Field(
        None,
        description="Send it as an SMS to recipients WhatsApp cannot reach.",
        json_schema_extra=ui("Use SMS fallback"),
    )
    DlrUrl: DlrUrlField
    CustomerData: MessageCustomerDataField
    RequestId: RequestIdField
    Transactional: TransactionalField
