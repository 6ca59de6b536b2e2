"""Inbound contracts: the webhook payload we accept, the event data we emit, the queue messages
of the subscriber dispatcher and its dead letters."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from shared.clock import as_utc, is_date_time
from shared.deadletters import KeptOriginal
from shared.messages import RecipientStatus
from shared.names import DEFAULT_CONNECTION

__all__ = [
    "DELIVERY_REPORTED",
    "MESSAGE_RECEIVED",
    "DeliveryReportData",
    "InboundAttachmentData",
    "InboundIntake",
    "InboundMessageData",
    "NewMessagePayload",
    "SubscriberDeadLetter",
    "SubscriberDelivery",
]

#: An inbound message arrived (data: :class:`InboundMessageData`), on ``smartdialog-inbound``.
MESSAGE_RECEIVED = "fi.arena.smartdialog.message.received"
#: A delivery report moved a recipient's state (data: :class:`DeliveryReportData`), on
#: ``smartdialog-events``.
DELIVERY_REPORTED = "fi.arena.smartdialog.message.delivery"


class InboundAttachmentData(BaseModel):
    """One attachment of an inbound (WhatsApp) message, as SmartDialog describes it."""

    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    mimeType: str | None = None
    resourceLocation: str | None = Field(None, description="Where SmartDialog keeps the file.")


_LOOSE_TIME: TypeAdapter[dt.datetime] = TypeAdapter(dt.datetime)


def _hashed_as(raw: Any) -> str:
    """How the message's id hashes an unread ``timestamp``: as the releases before the date-time
    check read it where they could (a date alone as a midnight, digits as a Unix time), so a
    retry that spans the deploy keeps its id; else as its text (a number or object as JSON)."""
    try:
        loose = _LOOSE_TIME.validate_python(raw)
        as_utc(loose)
    except (ValidationError, OverflowError):
        return raw if isinstance(raw, str) else json.dumps(raw)
    return str(_LOOSE_TIME.dump_python(loose, mode="json"))


class NewMessagePayload(BaseModel):
    """What SmartDialog POSTs to our webhook (the definition's New Message notification content).

    Tolerant on purpose, as the definition sets no limits and requires nothing: unknown fields
    are ignored, ``content`` may be empty (an attachment-only message), an optional field that
    is ``""`` is absent, and so is a ``timestamp`` that is no time we can read (the webhook's
    receive time stands in, as for a missing one). Strict on what we need: ``sender`` and
    ``recipient``; and bounded where every part of a large event repeats a field.
    """

    model_config = ConfigDict(extra="ignore")

    sender: str = Field(min_length=1, max_length=64)
    recipient: str = Field(min_length=1, max_length=64)
    content: str = Field("", max_length=20_000)
    timestamp: dt.datetime | None = None
    protocol: str | None = Field(None, max_length=256)
    attachments: list[InboundAttachmentData] = Field(default_factory=list, max_length=50)
    messageId: str | None = Field(None, max_length=256)

    @field_validator("messageId", "protocol", mode="before")
    @classmethod
    def _empty_is_absent(cls, value: Any) -> Any:
        return None if value == "" else value

    #: A ``timestamp`` we could not read, as the message's id hashes it (:func:`_hashed_as`: it
    #: still tells this message's retries, which carry the same, from another message).
    _unread_timestamp: str | None = PrivateAttr(None)

    @field_validator("timestamp", mode="wrap")
    @classmethod
    def _readable_timestamp(
        cls, value: Any, handler: ValidatorFunctionWrapHandler
    ) -> dt.datetime | None:
        """As written (its zone, or none: the message's id hashes it as the previous release
        did); absent if it is no date-time we can read ("", "15.01.2024 10:30:00"; a date
        alone, digits or a number, which pydantic reads as a midnight or a Unix time: as in
        delivery reports, :func:`~shared.clock.is_date_time`) or none UTC can hold.
        :attr:`utc_timestamp` is the one events carry."""
        if not isinstance(value, dt.datetime | str) or (
            isinstance(value, str) and not is_date_time(value)
        ):
            return None
        try:
            parsed = handler(value)
            if parsed is not None:
                as_utc(parsed)  # raises OverflowError for one UTC cannot hold
            return parsed  # type: ignore[no-any-return]
        except (ValidationError, OverflowError):
            return None

    @model_validator(mode="wrap")
    @classmethod
    def _keep_unread_timestamp(
        cls, data: Any, handler: ValidatorFunctionWrapHandler
    ) -> NewMessagePayload:
        payload: NewMessagePayload = handler(data)
        raw = data.get("timestamp") if isinstance(data, dict) else None
        if payload.timestamp is None and raw is not None and raw != "":  # a number, an object
            payload._unread_timestamp = _hashed_as(raw)
        return payload

    @property
    def utc_timestamp(self) -> dt.datetime | None:
        """``timestamp`` in UTC (one without a zone is UTC), so an event's ``time`` is RFC 3339."""
        return None if self.timestamp is None else as_utc(self.timestamp)

    @field_validator("content", mode="before")
    @classmethod
    def _null_content_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @field_validator("attachments", mode="before")
    @classmethod
    def _null_attachments_are_none(cls, value: Any) -> Any:
        return [] if value is None else value


class InboundIntake(BaseModel):
    """One message on the internal ``smartdialog-inbound-intake`` queue: a webhook call that
    passed the token and payload checks, as the webhook received it. ``InboundProcessor`` turns
    it into the event (de-duplication, opt-out, publication, fan-out)."""

    model_config = ConfigDict(extra="forbid")

    schemaVersion: Literal[1] = 1
    service: str = Field(min_length=1, description="The 2-way service whose webhook was called.")
    connection: str = Field(
        DEFAULT_CONNECTION,
        min_length=1,
        description="The SmartDialog connection whose webhook URL was called (signed in it).",
    )
    messageKey: str = Field(
        min_length=1,
        description="SmartDialog's messageId, or the payload hash when it sent none.",
    )
    receivedAt: dt.datetime = Field(description="When the webhook accepted this call (UTC).")
    traceparent: str | None = Field(None, description="W3C trace context of the webhook call.")
    payload: NewMessagePayload | None = Field(
        None, description="The validated payload; absent when it is in `payloadBlob`."
    )
    payloadBlob: str | None = Field(
        None,
        pattern=r"^inbound/[0-9a-f]{64}$",
        description=(
            "A payload too large for a queue message, by reference: the blob in container "
            "`smartdialog-payloads` that holds its JSON."
        ),
    )

    @model_validator(mode="after")
    def _one_payload(self) -> InboundIntake:
        if (self.payload is None) == (self.payloadBlob is None):
            raise ValueError("give exactly one of payload and payloadBlob")
        return self


class InboundMessageData(BaseModel):
    """``data`` of ``fi.arena.smartdialog.message.received``, and the body a New Message
    trigger subscriber receives.

    The first seven fields are SmartDialog's New Message payload with its names, so a flow built
    on the certified connector's trigger reads the same outputs; the rest are ours.
    """

    model_config = ConfigDict(extra="forbid")

    sender: str = Field(description="Who sent it (as SmartDialog gives it, usually E.164).")
    recipient: str = Field(description="The number or short code it was sent to.")
    content: str = Field(description="The text (empty for an attachment-only message).")
    timestamp: dt.datetime | None = Field(None, description="When SmartDialog received it.")
    protocol: str | None = Field(None, description="SMS or WhatsApp.")
    attachments: list[InboundAttachmentData] = Field(default_factory=list)
    messageId: str = Field(
        description=(
            "SmartDialog's message id; when SmartDialog sent none, a hash of the payload "
            "(stable across its retries), and of when it was received if it has no timestamp "
            "either."
        )
    )
    service: str = Field(description="The 2-way service whose webhook received it.")
    connection: str = Field(
        DEFAULT_CONNECTION, description="The SmartDialog connection whose webhook received it."
    )
    receivedAt: dt.datetime = Field(
        description=(
            "When our webhook accepted it (UTC); a message SmartDialog delivered more than once "
            "comes again with the same id and the later delivery's time."
        )
    )
    optOut: Literal["stop", "start"] | None = Field(
        None,
        description=(
            "stop: the content was a stop keyword and the sender is now suppressed for the "
            "service; start: a start keyword lifted that (or it was lifted already). Absent "
            "otherwise: a start keyword received before a stop that stands lifts nothing."
        ),
    )
    part: int = Field(
        1,
        ge=1,
        description=(
            "Which part of the message this event is (1-based). A message too large for one "
            "queue message comes as `parts` events (ids `<id>:<part>`), each with every field, "
            "but `content` and each attachment's `name`, `mimeType` and `resourceLocation` "
            "split: concatenate them in `part` order to get the whole message."
        ),
    )
    parts: int = Field(1, ge=1, description="How many events the message came in.")


class DeliveryReportData(BaseModel):
    """``data`` of ``fi.arena.smartdialog.message.delivery``: one recipient's state moved."""

    model_config = ConfigDict(extra="forbid")

    messageId: str = Field(description="Our message id (the send's Id).")
    upstreamMessageId: str | None = Field(None, description="SmartDialog's MessageId.")
    recipientIndex: int = Field(description="The recipient's position in the send (from 0).")
    recipient: str | None = Field(None, description="The recipient's address.")
    recipientId: str | None = Field(None, description="SmartDialog's recipient id.")
    status: RecipientStatus = Field(description="The recipient's state after this report.")
    previousStatus: str | None = Field(
        None, description="What GetMessageStatus showed for it before this report."
    )
    statusCode: str | None = Field(None, description="The report's status code, as sent.")
    reportedAt: dt.datetime | None = Field(None, description="The report's own timestamp.")
    receivedAt: dt.datetime = Field(description="When our DLR endpoint received it.")
    connection: str = Field(
        DEFAULT_CONNECTION, description="The SmartDialog connection the message was sent on."
    )
    raw: dict[str, str] = Field(
        default_factory=dict,
        description="Every query parameter of the report (the upstream's names are unpublished).",
    )


class SubscriberDelivery(BaseModel):
    """One message on ``smartdialog-inbound-deliveries``: deliver one event, whole, to one
    subscriber.

    The event travels in ``event``, or, when it is too large for a queue message (a
    ``message.received`` that ``smartdialog-inbound`` carries in parts), by reference in
    ``eventBlob``: the subscriber still receives it in one POST. The callback URL is not on the
    queue (it is a credential); the dispatcher reads it from the subscription, so an unsubscribed
    flow receives nothing more.
    """

    model_config = ConfigDict(extra="forbid")

    service: str
    subscriptionId: str
    event: dict[str, Any] | None = Field(
        None,
        description=(
            "The CloudEvent as put on smartdialog-inbound; absent when it is in `eventBlob`."
        ),
    )
    eventBlob: str | None = Field(
        None,
        pattern=r"^event/[0-9a-f]{64}$",
        description=(
            "An event too large for a queue message, by reference: the blob in container "
            "`smartdialog-payloads` that holds the whole CloudEvent's JSON (one event with "
            "`part` = `parts` = 1, id `{service}:{messageId}`)."
        ),
    )
    attempts: int = Field(0, ge=0, description="POSTs made so far.")
    firstQueuedAt: dt.datetime

    @model_validator(mode="after")
    def _one_event(self) -> SubscriberDelivery:
        if (self.event is None) == (self.eventBlob is None):
            raise ValueError("give exactly one of event and eventBlob")
        return self

    def to_json(self) -> str:
        """The queue message text: without the absent one of ``event`` and ``eventBlob`` (so a
        delivery that carries its event has the shape it always had)."""
        return self.model_dump_json(exclude={"eventBlob"} if self.eventBlob is None else {"event"})


class SubscriberDeadLetter(KeptOriginal):
    """One message on ``smartdialog-inbound-deadletter``: a delivery that failed for good."""

    model_config = ConfigDict(extra="forbid")

    schemaVersion: Literal[1] = 1
    reason: Literal["attempts-exhausted", "rejected", "refused", "malformed"]
    detail: str
    service: str | None = None
    subscriptionId: str | None = None
    attempts: int = 0
    lastStatus: int | None = Field(None, description="HTTP status of the last POST, if any.")
    deadLetteredAt: dt.datetime
