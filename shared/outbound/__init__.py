"""Outbound: the path to upstream. The queue contract (send commands and the pack driver),
accepting sends, packing, the sender and its outcomes (record, announce, requeue, dead-letter).

The records and their state machine live in :mod:`shared.messages`. See docs/sending.md
("Statuses and the sender", "Crash windows, and why each is safe") and docs/architecture.md."""

from shared.outbound._fields import (
    MAX_CONTENT_CHARS,
    IdempotencyKeyHeader,
    MessageBody,
    MessageCustomerDataField,
    ProtocolField,
    RequestIdField,
    SenderField,
    SenderText,
    TemplateContentField,
    TemplateMessageBody,
)
from shared.outbound._giving_up import poisoned_command_doubt, redrive_doubt
from shared.outbound._models import (
    DeadLetter,
    DeadLetterReason,
    MessageCancelledData,
    MessageFailedData,
    MessageRedrivenData,
    MessageSentData,
    OutboundMessage,
    OutboundMessageAdapter,
    PackDriver,
    RecipientOutcome,
    SendOrigin,
    StoredCommand,
    derive_message_id,
    parse_outbound_message,
    parse_queue_message,
    request_fingerprint,
)
from shared.outbound._outcomes import OutcomeKind, SendOutcome
from shared.outbound._ports import reset_send_ports as reset_sender_cache
from shared.outbound._ports import send_ports
from shared.outbound._records import (
    command_addresses,
    held_copy,
    new_record,
    normalize,
    pack_key,
    queued_text,
)
from shared.outbound._sender import OutboundSender
from shared.outbound._service import (
    NotQueued,
    SendService,
    StatusView,
    key_reused,
    send_service,
)

__all__ = [
    "MAX_CONTENT_CHARS",
    "DeadLetter",
    "DeadLetterReason",
    "IdempotencyKeyHeader",
    "MessageBody",
    "MessageCancelledData",
    "MessageCustomerDataField",
    "MessageFailedData",
    "MessageRedrivenData",
    "MessageSentData",
    "NotQueued",
    "OutboundMessage",
    "OutboundMessageAdapter",
    "OutboundSender",
    "OutcomeKind",
    "PackDriver",
    "ProtocolField",
    "RecipientOutcome",
    "RequestIdField",
    "SendOrigin",
    "SendOutcome",
    "SendService",
    "SenderField",
    "SenderText",
    "StatusView",
    "StoredCommand",
    "TemplateContentField",
    "TemplateMessageBody",
    "command_addresses",
    "derive_message_id",
    "held_copy",
    "key_reused",
    "new_record",
    "normalize",
    "pack_key",
    "parse_outbound_message",
    "parse_queue_message",
    "poisoned_command_doubt",
    "queued_text",
    "redrive_doubt",
    "request_fingerprint",
    "reset_sender_cache",
    "send_ports",
    "send_service",
]
