"""Request and response bodies of the SmartDialog API, with the upstream's exact field names.

Field names are the wire names, casing included: PascalCase on ``/messages``, camelCase on the
WhatsApp template look-ups and group contacts. Request models refuse unknown fields (a typo fails
here, not upstream) and drop unset fields when serialised; response models keep unknown fields
and make every field optional, so a new upstream field never breaks a call, read a ``null``
list as empty (:data:`ListAnswer`) and a number where text is documented as its text.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from shared.clock import is_date_time

__all__ = [
    "BlankIsAbsent",
    "ContactProperty",
    "CustomerUser",
    "DiscussionReply",
    "DiscussionReplyResult",
    "GroupContact",
    "GroupContactUpdate",
    "InboundAttachment",
    "InboundMessage",
    "IsoDateTime",
    "ListAnswer",
    "Message",
    "MessageResult",
    "NewGroupContact",
    "NewMessageResult",
    "NewWhatsAppTemplate",
    "PersonalizationValue",
    "PhoneNumberRegion",
    "PipelineAction",
    "Recipient",
    "RecipientResult",
    "Service",
    "TemplateButton",
    "TemplateExtensionParameters",
    "TemplateMessageButton",
    "TemplateMessageRecipientResult",
    "TemplateMessageResult",
    "TemplateRecipient",
    "UserCustomers",
    "WebhookAction",
    "WebhookOptions",
    "WhatsAppIdentity",
    "WhatsAppInputSource",
    "WhatsAppTemplate",
    "WhatsAppTemplateMessage",
    "to_wire",
]

Gender = Literal["Male", "Female", "Other"]
ButtonType = Literal["Call", "QuickReply", "Url"]


def _placeholder_value(value: object) -> object:
    if value is None:  # a flow's empty column
        return ""
    if isinstance(value, dict | list) or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError("A placeholder's value must be text, a finite number or a boolean.")
    return value


#: A ``$(name)`` placeholder's value: text, a number or a boolean; ``null`` is empty text.
PersonalizationValue = Annotated[str | int | float | bool, BeforeValidator(_placeholder_value)]
Item = TypeVar("Item")


def _null_as_empty(value: object) -> object:
    return [] if value is None else value


#: A list in an answer: ``null`` reads as empty (the definition never promises a list is there).
ListAnswer = Annotated[list[Item], BeforeValidator(_null_as_empty)]


def _count_or_none(value: object) -> object:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value) if len(value.strip()) < 10 else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31:
        return value
    return None


#: A count in a send's answer (``MessagePartCount``): a whole number from 1 to 2**31 - 1 (as a
#: table stores it), else read as absent (1.5, -3, 10**20, text, an object), so an answer with
#: one odd field is still the send's answer, never outcome-unknown.
AnswerCount = Annotated[int | None, BeforeValidator(_count_or_none)]


def _iso_date_time(value: object) -> object:
    if isinstance(value, dt.datetime) or (isinstance(value, str) and is_date_time(value)):
        return value
    raise ValueError(
        "Must be an ISO 8601 date-time as text, e.g. 2025-06-01T10:00:00Z (a date alone or a "
        "number is not one)."
    )


#: A date-time a caller gives (``SendDateTime``, ``validUntil``): ISO 8601 text, with or without
#: a zone (kept as given). Refused, where pydantic alone would read them: digits or a number
#: (as a Unix time: "20250601" is 1970-08-23) and a date alone (as midnight).
IsoDateTime = Annotated[dt.datetime, BeforeValidator(_iso_date_time)]


def _blank_as_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


#: On an optional field a flow may leave empty (``SendDateTime``, ``RequestId``, ``DlrUrl``,
#: ``AttachmentUri``): blank text (the designer's ``""`` for an empty value) reads as absent.
BlankIsAbsent = BeforeValidator(_blank_as_none)


class RequestBody(BaseModel):
    """Base of request bodies: unknown fields are an error; unset fields are not sent."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ResponseBody(BaseModel):
    """Base of response bodies: unknown fields are kept (``model_extra``), every field optional;
    a number where text is documented reads as its text (an id sent as ``1001``, not ``"1001"``).
    Never on request bodies: what we send is exactly what we were given."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, coerce_numbers_to_str=True)


def to_wire(body: BaseModel) -> dict[str, Any]:
    """The JSON object sent upstream: wire names, ISO date-times, no ``null`` fields."""
    return body.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- shared -------------------------------------------------------------------------------------


class ContactProperty(ResponseBody):
    """A custom contact property (used in group-contact requests and responses)."""

    name: str | None = None
    value: str | None = None


# --- /customers, /services, /phonenumberregions ------------------------------------------------


class CustomerUser(ResponseBody):
    customerId: str | None = None
    customerName: str | None = None


class UserCustomers(ResponseBody):
    """GetUserCustomers: the customers the signed-in user may act for."""

    customerUsers: ListAnswer[CustomerUser] = Field(default_factory=list)


class Service(ResponseBody):
    """One service of a customer (GetCustomerServices)."""

    id: str | None = None
    name: str | None = None


class PhoneNumberRegion(ResponseBody):
    """A region used to parse phone numbers (``value`` is the country code, e.g. ``FI``)."""

    value: str | None = None
    name: str | None = None


# --- /messages ----------------------------------------------------------------------------------


#: What a recipient's address must be: SmartDialog's API takes any string, our queue does not.
QUEUED_ADDRESS = (
    "The recipient's phone number: E.164 (+358401234567) or a national number of region FI "
    "(0401234567). A command on the smartdialog-outbound queue with any other address is "
    "dead-lettered (reason malformed), never sent."
)


class Recipient(RequestBody):
    """A recipient of a sent message; ``Personalization`` fills ``$(name)`` placeholders."""

    Address: str = Field(description=QUEUED_ADDRESS)
    Personalization: dict[str, PersonalizationValue] | None = None


class Message(RequestBody):
    """Body of SendMessage and SendReplyMessage.

    ``RequestId`` makes the send safe to repeat: SmartDialog drops a second send with the same id
    (best effort, for 7 days). Leave it None and the client generates one per call.
    """

    Sender: str
    Content: str
    Protocol: Literal["SMS", "WhatsApp"] = "SMS"
    Recipients: list[Recipient]
    SendDateTime: Annotated[IsoDateTime | None, BlankIsAbsent] = None
    AttachmentUri: Annotated[str | None, BlankIsAbsent] = None
    CustomerData: str | None = Field(None, max_length=255)
    AdMessage: bool | None = None
    DlrUrl: Annotated[str | None, BlankIsAbsent] = None
    RequestId: Annotated[str | None, BlankIsAbsent] = Field(None, max_length=1000)


class RecipientResult(ResponseBody):
    """A recipient as accepted upstream; ``Id`` identifies it in delivery reports."""

    Address: str | None = None
    Id: str | None = None


class MessageResult(ResponseBody):
    """Result of SendMessage and SendReplyMessage."""

    MessageId: str | None = None
    MessagePartCount: AnswerCount = None
    Recipients: ListAnswer[RecipientResult] = Field(default_factory=list)


class DiscussionReply(RequestBody):
    """Body of SendDiscussionReplyMessage (a reply into an existing thread)."""

    ThreadId: str
    Content: str
    CustomerData: str | None = Field(None, max_length=255)


class DiscussionReplyResult(MessageResult):
    """Result of SendDiscussionReplyMessage."""

    ThreadId: str | None = None


# --- /service/{Service}/pipelines/actions (the New Message trigger) ---------------------------

DEFAULT_WEBHOOK_NAME = "SmartDialog Functions webhook"
DEFAULT_WEBHOOK_DESCRIPTION = (
    "Registered by SmartDialog Functions to forward inbound messages; "
    "removed with its subscription."
)


class WebhookOptions(RequestBody):
    endpointUrl: str
    httpVerb: str = "POST"


class WebhookAction(RequestBody):
    """Body of NewMessage: a pipeline action that POSTs every inbound message to ``endpointUrl``."""

    options: WebhookOptions
    name: str = DEFAULT_WEBHOOK_NAME
    actionType: str = "HttpRequest"
    description: str = DEFAULT_WEBHOOK_DESCRIPTION


class PipelineAction(ResponseBody):
    """Body of NewMessage's 201: the action id (the sandbox also sends ``pipelineId``)."""

    id: str | None = None
    pipelineId: str | None = None


class NewMessageResult(BaseModel):
    """What NewMessage returns: the created action, and where it lives.

    ``pipeline_id`` and ``action_id`` come from the body when present, else from the ``Location``
    header (``.../pipelines/{pipeline_id}/actions/{action_id}``); DeleteTrigger needs both.
    """

    action: PipelineAction
    location: str | None = None

    def _location_segment(self, after: str) -> str | None:
        if not self.location:
            return None
        parts = self.location.split("?", 1)[0].rstrip("/").split("/")
        for index, part in enumerate(parts[:-1]):
            if part == after:
                return parts[index + 1]
        return None

    @property
    def action_id(self) -> str | None:
        return self.action.id or self._location_segment("actions")

    @property
    def pipeline_id(self) -> str | None:
        return self.action.pipelineId or self._location_segment("pipelines")


class InboundAttachment(ResponseBody):
    name: str | None = None
    mimeType: str | None = None
    resourceLocation: str | None = None


class InboundMessage(ResponseBody):
    """The payload SmartDialog POSTs to a NewMessage webhook for each inbound message."""

    sender: str | None = None
    recipient: str | None = None
    content: str | None = None
    timestamp: dt.datetime | None = None
    protocol: str | None = None
    attachments: ListAnswer[InboundAttachment] = Field(default_factory=list)
    messageId: str | None = None


# --- WhatsApp -------------------------------------------------------------------------------------


class TemplateExtensionParameters(ResponseBody):
    rawContent: str | None = None


class WhatsAppTemplate(ResponseBody):
    """A WhatsApp template (GetCustomerWhatsAppTemplates); ``id`` is the template name."""

    id: str | None = None
    displayName: str | None = None
    extensionParameters: TemplateExtensionParameters | None = None


class TemplateButton(RequestBody):
    """A button of a new template; ``Data`` is a URL, phone number or reply text."""

    Type: ButtonType
    Label: str | None = None
    Data: str | None = None


class NewWhatsAppTemplate(RequestBody):
    """Body of CreateWhatsappTemplate."""

    DisplayName: str = Field(max_length=100)
    RawContent: str
    Category: str
    Language: str
    Buttons: list[TemplateButton] | None = None
    AttachmentUrl: str | None = None


class TemplateRecipient(RequestBody):
    Address: str = Field(description=QUEUED_ADDRESS)


class TemplateMessageButton(RequestBody):
    Type: ButtonType
    Data: str | None = None


class WhatsAppTemplateMessage(RequestBody):
    """Body of SendWhatsappTemplateMessage (``RequestId`` as in :class:`Message`)."""

    TemplateName: str
    Recipients: list[TemplateRecipient]
    BodyParameters: list[str] | None = None
    HeaderParameters: list[str] | None = None
    Buttons: list[TemplateMessageButton] | None = None
    SendDateTime: Annotated[IsoDateTime | None, BlankIsAbsent] = None
    AttachmentUri: Annotated[str | None, BlankIsAbsent] = None
    UseSmsFallback: bool | None = None
    DlrUrl: Annotated[str | None, BlankIsAbsent] = None
    CustomerData: str | None = Field(None, max_length=255)
    RequestId: Annotated[str | None, BlankIsAbsent] = Field(None, max_length=1000)


class TemplateMessageRecipientResult(ResponseBody):
    address: str | None = None
    id: str | None = None


class TemplateMessageResult(ResponseBody):
    """Result of SendWhatsappTemplateMessage (camelCase, unlike :class:`MessageResult`)."""

    messageId: str | None = None
    messagePartCount: AnswerCount = None
    recipients: ListAnswer[TemplateMessageRecipientResult] = Field(default_factory=list)


class WhatsAppInputSource(ResponseBody):
    address: str | None = None


class WhatsAppIdentity(ResponseBody):
    """A WhatsApp sender identity; ``inputSource.address`` is its number."""

    inputSource: WhatsAppInputSource | None = None


# --- group contacts -------------------------------------------------------------------------------


class GroupContactUpdate(RequestBody):
    """Body of UpdateGroupContact (the phone number is in the path)."""

    active: bool | None = None
    email: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    gender: Gender | None = None
    birthYear: int | None = None
    streetAddress: str | None = None
    zipCode: str | None = None
    city: str | None = None
    countryCode: str | None = None
    customContactProperties: list[ContactProperty] | None = None
    phoneNumberRegions: list[str] | None = None


class NewGroupContact(GroupContactUpdate):
    """Body of CreateGroupContact."""

    phone: str


class GroupContact(ResponseBody):
    """A group contact (GetGroupContact)."""

    phone: str | None = None
    email: str | None = None
    firstName: str | None = None
    lastName: str | None = None
    gender: str | None = None
    birthYear: int | None = None
    streetAddress: str | None = None
    zipCode: str | None = None
    city: str | None = None
    countryCode: str | None = None
    failedMessages: int | None = None
    customContactProperties: ListAnswer[ContactProperty] = Field(default_factory=list)
