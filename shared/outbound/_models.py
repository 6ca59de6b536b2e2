"""The outbound queue message (a public contract, ``schemas/outbound-message.json``), message
statuses, event data, dead letters. The envelope is camelCase; its ``body`` is exactly the
upstream request body of the named operation. See docs/sending.md, "Enqueue directly (no HTTP)"."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    TypeAdapter,
    field_validator,
)

from shared.actions.fields import UPSTREAM_ID_MAX_LENGTH
from shared.connections import (
    FIELD_PATTERN,
    NAME_MAX_LENGTH,
    ConnectionNotConfigured,
    claimed_by,
    connection_name,
    is_default,
    name_error,
)
from shared.deadletters import KeptOriginal
from shared.messages import (
    MESSAGE_ID_PATTERN,
    QUESTION_ID_PATTERN,
    FailureInfo,
    Operation,
    reprompted_question,
    text_connection,
)
from shared.names import DEFAULT_CONNECTION, named_connection
from shared.smartdialog import DiscussionReply, IsoDateTime, Message, WhatsAppTemplateMessage

__all__ = [
    "DEAD_LETTER_SCHEMA_VERSION",
    "DeadLetter",
    "DeadLetterReason",
    "MessageCancelledData",
    "MessageFailedData",
    "MessageRedrivenData",
    "MessageSentData",
    "OutboundMessage",
    "OutboundMessageAdapter",
    "OutboundQueueMessage",
    "PackDriver",
    "RecipientOutcome",
    "SendDiscussionReplyMessageCommand",
    "SendMessageCommand",
    "SendOrigin",
    "SendReplyMessageCommand",
    "SendWhatsappTemplateMessageCommand",
    "StoredCommand",
    "command_connection",
    "command_origin",
    "derive_message_id",
    "parse_outbound_message",
    "parse_queue_message",
    "readable_message_id",
    "request_fingerprint",
    "request_message_id",
    "text_connection",
    "with_claimed_connection",
]

DEAD_LETTER_SCHEMA_VERSION: Literal[1] = 1
# Namespace of ids derived from a caller's key (uuid5), fixed forever: changing it changes ids.
_ID_NAMESPACE = uuid.UUID("0b8a3c55-7c0e-4f0e-9a51-6a2f6f1f2d10")
#: Longer than any W3C ``traceparent`` (55 characters in version 00): a longer one is dropped.
TRACEPARENT_MAX_LENGTH = 512


def _sane_traceparent(value: object) -> object:
    """None for an absurdly long ``traceparent``: its send starts a new trace, as one with a
    malformed (short) one does, rather than failing (the record's column could not hold it)."""
    return None if isinstance(value, str) and len(value) > TRACEPARENT_MAX_LENGTH else value


#: A queue message's ``traceparent``.
Traceparent = Annotated[
    str | None,
    BeforeValidator(_sane_traceparent),
    Field(
        description=(
            "W3C trace context of the trace this message belongs to (optional; set by us, kept "
            f"on every copy). One longer than {TRACEPARENT_MAX_LENGTH} characters is ignored, "
            "as a malformed one is: the message starts a new trace."
        )
    ),
]


def _connection_name(value: str) -> str:
    if value.strip(" \t\n\r") and (wrong := name_error(value)):
        raise ValueError(wrong)
    return value


#: A queue message's ``Connection``: a name as the settings' (messages of older releases, all
#: written from configured names, still read), or only whitespace: the default, as ever.
ConnectionName = Annotated[
    str, AfterValidator(_connection_name), Field(json_schema_extra={"pattern": FIELD_PATTERN})
]


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    #: Set by ``normalize`` when it filled ``body.RequestId`` in (ours: packable). Never written: a
    #: copy put back leaves that RequestId out (``Outcomes.requeue``) to be filled and marked again.
    _request_id_filled: bool = PrivateAttr(False)

    messageId: str | None = Field(
        None,
        pattern=MESSAGE_ID_PATTERN,
        description=(
            "Our id for the message: poll and cancel by it. Omit it and one is derived from "
            "body.RequestId (same RequestId, same message) or, failing that, from the queue "
            "message's own id."
        ),
    )
    customerId: str | None = Field(
        None,
        min_length=1,
        max_length=UPSTREAM_ID_MAX_LENGTH,
        description="SmartDialog customer; default SMARTDIALOG_CUSTOMER_ID.",
    )
    validUntil: IsoDateTime | None = Field(
        None,
        description=(
            "Give up (status failed, reason expired) if not sent by then. Default: first seen "
            "+ SMARTDIALOG_SEND_VALIDITY_SECONDS. ISO 8601 text with a time zone."
        ),
    )
    attempts: int = Field(
        0, ge=0, description="Set by the sender when it re-enqueues: upstream attempts so far."
    )
    deferrals: int = Field(
        0, ge=0, description="Set by the sender when it re-enqueues: quota deferrals so far."
    )
    traceparent: Traceparent = None
    Connection: ConnectionName | None = Field(
        None,
        min_length=1,
        max_length=NAME_MAX_LENGTH,
        description=(
            "The named connection (SmartDialog account) to send through: 1-64 letters, digits, "
            "'-' or '_', starting with a letter or digit, in any case (whitespace around it "
            "ignored); only whitespace: the default connection; absent: the customer's "
            "connection, else the default. Set by the send actions from the "
            "X-SmartDialog-Connection header or the customer's connection. Given with "
            "customerId on a command first seen on the queue, it must serve that customer (a "
            "named connection claims it; default serves one no other claims), else the command "
            "is dead-lettered malformed."
        ),
    )

    @field_validator("validUntil")
    @classmethod
    def _storable(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a time zone (e.g. a trailing Z)")
        if value is not None and not _STORABLE[0] <= value <= _STORABLE[1]:
            raise ValueError(
                "must be, in UTC, between 1601-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z"
            )
        return value


#: The times Table storage keeps, compared as instants (9999-12-31T23:59:59-01:00 is out).
_STORABLE = (
    dt.datetime(1601, 1, 1, tzinfo=dt.UTC),
    dt.datetime.max.replace(tzinfo=dt.UTC),
)


class SendOrigin(BaseModel):
    """What made a send, when a notification rule did (our extension, never sent upstream)."""

    model_config = ConfigDict(extra="forbid")

    ruleId: str = Field(min_length=1, description="The notification rule.")
    eventId: str = Field(min_length=1, description="The id of the event it matched.")
    eventSource: str = Field("", description="The source of that event.")

    def message_id(self, address: str) -> str:
        """The message id of this rule's send for this event to ``address``: the same on every
        delivery of the event, whatever the rule says by then."""
        return derive_message_id(
            RULE_SEND_SCOPE, f"{self.ruleId}\n{self.eventSource}\n{self.eventId}\n{address}"
        )


#: The scope of a notification rule's message ids (:meth:`SendOrigin.message_id`).
RULE_SEND_SCOPE = "notification-rule"


def command_origin(text: str) -> SendOrigin | None:
    """The ``origin`` of a recorded command's JSON text, if it has a valid one."""
    try:
        value = json.loads(text).get("origin")
        return SendOrigin.model_validate(value) if isinstance(value, dict) else None
    except (ValueError, AttributeError):
        return None


class _ServiceEnvelope(_Envelope):
    serviceId: str | None = Field(
        None,
        min_length=1,
        max_length=UPSTREAM_ID_MAX_LENGTH,
        description="SmartDialog service; default SMARTDIALOG_SERVICE_ID.",
    )
    transactional: bool = Field(
        False,
        description=(
            "Our extension, never sent upstream: true sends even to recipients who opted out "
            "of the service (STOP), for messages they must get regardless, e.g. a security "
            "code. False (the default): a message to an opted-out recipient fails (code "
            "suppressed) and is dead-lettered."
        ),
    )
    origin: SendOrigin | None = Field(
        None, description="Set by notification rules: the rule and event that made this send."
    )


class SendMessageCommand(_ServiceEnvelope):
    """SendMessage: an SMS (or a WhatsApp message, ``Protocol`` WhatsApp)."""

    operation: Literal["SendMessage"]
    questionId: str | None = Field(
        None,
        pattern=QUESTION_ID_PATTERN,
        description="Ours, on a question's re-prompt: its question (never sent upstream).",
    )
    body: Message


class SendReplyMessageCommand(_ServiceEnvelope):
    """SendReplyMessage: a reply to ``parentMessageId``."""

    operation: Literal["SendReplyMessage"]
    parentMessageId: str = Field(min_length=1)
    body: Message


class SendDiscussionReplyMessageCommand(_Envelope):
    """SendDiscussionReplyMessage: a reply into a discussion thread (no service, no RequestId)."""

    operation: Literal["SendDiscussionReplyMessage"]
    body: DiscussionReply


class SendWhatsappTemplateMessageCommand(_ServiceEnvelope):
    """SendWhatsappTemplateMessage: a WhatsApp template message."""

    operation: Literal["SendWhatsappTemplateMessage"]
    body: WhatsAppTemplateMessage


OutboundMessage = Annotated[
    SendMessageCommand
    | SendReplyMessageCommand
    | SendDiscussionReplyMessageCommand
    | SendWhatsappTemplateMessageCommand,
    Field(discriminator="operation"),
]
"""One send command on ``smartdialog-outbound``, discriminated by ``operation``."""

OutboundMessageAdapter: TypeAdapter[OutboundMessage] = TypeAdapter(OutboundMessage)


def _queue_message_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("kind")
        return kind if kind in ("pack", "stored") else value.get("operation")
    return getattr(value, "kind", None) or getattr(value, "operation", None)


class PackDriver(BaseModel):
    """The queue message that drives a bulk send's pack (``smartdialog-outbound``; internal:
    put there by SendBulkMessages, never by callers). Schema: ``schemas/pack-driver.json``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["pack"] = "pack"
    packId: str = Field(pattern=r"^pack-[0-9a-f]{32}$")
    batchId: str | None = None
    deferrals: int = Field(0, ge=0)
    traceparent: Traceparent = None
    Connection: ConnectionName | None = Field(
        None, min_length=1, max_length=NAME_MAX_LENGTH, description="The pack's connection."
    )

    def text(self) -> str:
        return self.model_dump_json(exclude_none=True)


class StoredCommand(BaseModel):
    """A send command too large for a queue message, by reference (``smartdialog-outbound``;
    internal: put there by the send actions, the sender and the notification rules, never by
    callers). The command's text is the blob ``payload`` in ``smartdialog-payloads``;
    ``attempts`` and ``deferrals`` replace the stored command's. Schema:
    ``schemas/stored-command.json``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["stored"] = "stored"
    messageId: str = Field(pattern=MESSAGE_ID_PATTERN)
    payload: str = Field(pattern=r"^command/[0-9a-f]{64}$", description="The blob's name.")
    attempts: int = Field(0, ge=0)
    deferrals: int = Field(0, ge=0)


OutboundQueueMessage = Annotated[
    Annotated[SendMessageCommand, Tag("SendMessage")]
    | Annotated[SendReplyMessageCommand, Tag("SendReplyMessage")]
    | Annotated[SendDiscussionReplyMessageCommand, Tag("SendDiscussionReplyMessage")]
    | Annotated[SendWhatsappTemplateMessageCommand, Tag("SendWhatsappTemplateMessage")]
    | Annotated[PackDriver, Tag("pack")]
    | Annotated[StoredCommand, Tag("stored")],
    Discriminator(
        _queue_message_tag,
        custom_error_type="queue_message_kind",
        custom_error_message=(
            'a JSON object with a known "operation" (a send command), "kind": "pack" '
            '(a pack driver) or "kind": "stored" (a large send command by reference)'
        ),
    ),
]
"""Anything on ``smartdialog-outbound``: a send command, a pack driver or a stored command."""

OutboundQueueMessageAdapter: TypeAdapter[OutboundQueueMessage] = TypeAdapter(OutboundQueueMessage)


def parse_outbound_message(text: str | bytes) -> OutboundMessage:
    """The send command in ``text``; raises ``pydantic.ValidationError`` or ``ValueError``."""
    return OutboundMessageAdapter.validate_json(text)


def parse_queue_message(text: str | bytes) -> OutboundMessage | PackDriver | StoredCommand:
    """A message on ``smartdialog-outbound``: a send command, a bulk pack's driver (tagged
    ``kind: "pack"``) or a large command by reference (``kind: "stored"``); raises
    ``pydantic.ValidationError`` or ``ValueError``."""
    return OutboundQueueMessageAdapter.validate_json(text)


def command_connection(command: OutboundMessage | PackDriver) -> str | None:
    """The named connection of a queue message; None for the default connection."""
    name = command.Connection
    return None if name is None or is_default(name) else connection_name(name)


def with_claimed_connection(
    message: OutboundMessage | PackDriver,
) -> OutboundMessage | PackDriver:
    """A send command that names no connection, as the connection claiming its ``customerId``
    (the queue's routing, as an HTTP action's without the header); anything else unchanged.
    Raises ``ConnectionNotConfigured`` while the claims are uncertain (:func:`claimed_by`)."""
    if isinstance(message, PackDriver) or message.Connection is not None or not message.customerId:
        return message
    name = claimed_by(message.customerId)
    return message if name is None else message.model_copy(update={"Connection": name})


def serves(connection: str, customer_id: str | None) -> bool:
    """Whether ``connection`` is the one claiming ``customer_id`` now (False while the claims
    are uncertain): a sweep leads only its own customers' lanes (one moved since follows it)."""
    try:
        return (claimed_by(customer_id or "") or DEFAULT_CONNECTION) == connection
    except ConnectionNotConfigured:
        return False


def derive_message_id(scope: str, key: str) -> str:
    """A message id that is the same whenever the same ``key`` is used in the same ``scope``."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{scope}\n{key}"))


def named_command(text: str, queue_message_id: str | None) -> tuple[str, str] | None:
    """A queued send command that names no message (no ``messageId``, no ``RequestId``: the
    sender takes its id from its queue message) as that id and the command with it written in,
    so that a copy put back on the queue (a new queue message) stays the same message, never
    sent again as a new one. None for any other (one naming its message, a pack driver, a
    stored command, one that cannot be read) or without ``queue_message_id``."""
    try:
        message = parse_queue_message(text)
    except ValueError:  # a ValidationError too: the sender dead-letters it
        return None
    if not queue_message_id or isinstance(message, PackDriver | StoredCommand):
        return None
    if message.messageId or getattr(message.body, "RequestId", None):
        return None
    mid = derive_message_id("queue-message", queue_message_id)
    written = {**json.loads(text), "messageId": mid}
    return mid, json.dumps(written, ensure_ascii=False, separators=(",", ":"))


def reprompt_of(command: OutboundMessage) -> str | None:
    """The question whose re-prompt ``command`` is (:func:`reprompted_question`), else None."""
    asked, data = getattr(command, "questionId", None), getattr(command.body, "CustomerData", None)
    return reprompted_question(command.messageId, asked, data)


def request_message_id(customer: str, request_id: str, connection: str | None = None) -> str:
    """The message id of a queued command without ``messageId``: the same RequestId of the
    same customer (and named connection: the default's ids predate connections) is the same
    message."""
    scope = f"request-id\n{customer}" + (f"\n{connection}" if connection else "")
    return derive_message_id(scope, request_id)


def readable_message_id(text: str, *, customer_id: str | None) -> str | None:
    """The message id of a queue message that may not parse as a command: its ``messageId``
    if it has one of our shape, else the one its ``body.RequestId`` gives (as the sender
    derives it, with ``customer_id`` as the default customer), else None."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # nested deeper than the parser follows: not ours
        return None
    if not isinstance(value, dict):
        return None
    found = value.get("messageId")
    if isinstance(found, str) and re.match(MESSAGE_ID_PATTERN, found):
        return found
    body = value.get("body")
    request_id = body.get("RequestId") if isinstance(body, dict) else None
    customer = value.get("customerId") or customer_id or ""
    if found is None and isinstance(request_id, str) and request_id and isinstance(customer, str):
        named = named_connection(text_connection(text))
        return request_message_id(customer, request_id, named)
    return None


def request_fingerprint(command: OutboundMessage, terms: Mapping[str, Any] | None = None) -> str:
    """A hash of what is sent (operation, customer, service, parent, body) and of ``terms``, what
    the request asks beyond its send (a question's answers, timeout, re-prompt): two requests
    with the same idempotency key must have the same fingerprint."""
    material = command.model_dump(
        mode="json", by_alias=True, exclude_none=True, include={"operation", "body"}
    )
    for name in ("customerId", "serviceId", "parentMessageId"):
        material[name] = getattr(command, name, None)
    if getattr(command, "transactional", False):  # only when set: older fingerprints stay valid
        material["transactional"] = True
    if command.Connection:  # likewise
        material["connection"] = command.Connection
    if terms is not None:  # likewise: a plain send's is not an ask's
        material["terms"] = dict(terms)
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- failure description, shared by the status record, events and dead letters ----------------


class RecipientOutcome(BaseModel):
    """A recipient as upstream accepted it: ``id`` identifies it in delivery reports."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    id: str | None = None


class _MessageData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messageId: str
    operation: Operation
    customerId: str | None = None
    serviceId: str | None = None


class _ConnectionData(_MessageData):
    connection: str = Field(
        DEFAULT_CONNECTION, description="The connection it was to be sent through."
    )


class MessageSentData(_ConnectionData):
    """``data`` of ``fi.arena.smartdialog.message.sent``."""

    messageId: str = Field(description="Our message id.")
    connection: str = Field(DEFAULT_CONNECTION, description="The connection it was sent through.")
    requestId: str | None = Field(None, description="The RequestId sent upstream.")
    upstreamMessageId: str | None = Field(None, description="SmartDialog's MessageId.")
    messagePartCount: int | None = None
    threadId: str | None = None
    recipients: list[RecipientOutcome] = Field(default_factory=list)
    attempts: int = 0
    duplicate: bool = Field(
        False, description="True when upstream reported an earlier attempt had already sent it."
    )
    part: int = Field(
        1,
        ge=1,
        description=(
            "Which part of the message's sent event this is (1-based): a recipient list too "
            "large for one queue message is split across `parts` events, each with the same "
            "data but its own share of `recipients` (event ids `<messageId>:sent:<part>`)."
        ),
    )
    parts: int = Field(1, ge=1, description="How many sent events the message has.")
    origin: SendOrigin | None = Field(None, description="The rule and event that made it.")


class MessageFailedData(_ConnectionData):
    """``data`` of ``fi.arena.smartdialog.message.failed``."""

    requestId: str | None = None
    error: FailureInfo
    origin: SendOrigin | None = Field(None, description="The rule and event that made it.")


class MessageCancelledData(_ConnectionData):
    """``data`` of ``fi.arena.smartdialog.message.cancelled``."""


class MessageRedrivenData(_ConnectionData):
    """``data`` of ``fi.arena.smartdialog.message.redriven``: a failed send queued again by an
    operator (the dead-letter actions or the operations page), with the failure it had."""

    previousError: FailureInfo | None = Field(None, description="Why it had failed.")
    validUntil: dt.datetime = Field(
        description="Its new validity: it is sent before then or fails."
    )


class DeadLetterReason(enum.StrEnum):
    """Why a queue message ended up on ``smartdialog-outbound-deadletter``."""

    MALFORMED = "malformed"
    """Not a valid outbound message (bad JSON or schema violation): never processed."""
    FAILED = "failed"
    """Processed, and failed for good (``error`` says why)."""


class DeadLetter(KeptOriginal):
    """One message on ``smartdialog-outbound-deadletter``: the reason and the original text."""

    model_config = ConfigDict(extra="forbid")

    schemaVersion: Literal[1] = DEAD_LETTER_SCHEMA_VERSION
    id: str | None = Field(
        None,
        description=(
            "Stable id of this dead letter: the same on every copy of it. A crash between "
            "writing it and recording that it was written writes it again; consumers "
            "de-duplicate on this id. `<messageId>:failed` (the id of the message's `failed` "
            "event too) for a failed message (`<messageId>:failed:<re-drive time>` for a "
            "failure after a re-drive), `malformed:<queueMessageId>` for a malformed one."
        ),
    )
    reason: DeadLetterReason
    detail: str = Field(description="Human-readable: what was wrong or why it failed.")
    errors: list[dict[str, Any]] = Field(
        default_factory=list, description="Schema violations ({field, message}) when malformed."
    )
    error: FailureInfo | None = None
    messageId: str | None = None
    connection: str | None = Field(None, description="The failed message's connection.")
    queue: str
    queueMessageId: str | None = None
    dequeueCount: int | None = None
    deadLetteredAt: dt.datetime
