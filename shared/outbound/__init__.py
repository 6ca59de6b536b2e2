"""Outbound sends: the queue contract, the status store, the sender and the send service.

State machine of a message (the record in ``SmartDialogMessages``; every arrow is an ETag
compare-and-swap, so two workers never both claim one message)::

    accepted --enqueued--> queued --claimed (lease, attempts+1)--> sending --> sent
        |                    ^  |                                    |  |
        |                    |  +--> cancelled (CancelMessage)       |  +--> failed
        +--> cancelled       +------ transient failure, re-enqueued -+

- ``accepted``: recorded by a send action, not yet known to be on the queue.
- ``queued``: on the queue (or re-enqueued after a transient failure, ``next_attempt_at``).
- ``sending``: claimed by one worker until ``lease_until``; a copy of the queue message that
  arrives meanwhile is re-enqueued until the lease ends.
- ``sent``/``failed``/``cancelled``: final; a re-delivered queue message is acknowledged.

A bulk member (SendBulkMessages) has no queue message of its own: it stays ``accepted`` until
its pack's driver claims it (``accepted -> sending``), and goes back to ``queued`` only after a
call that did not get through (see ``shared/outbound/_drive.py``).

See ``docs/sending.md`` for the crash windows and why each is safe.
"""

from shared.outbound._models import (
    DeadLetter,
    DeadLetterReason,
    FailureInfo,
    MessageCancelledData,
    MessageFailedData,
    MessageSentData,
    MessageStatus,
    Operation,
    OutboundMessage,
    OutboundMessageAdapter,
    RecipientOutcome,
    SendDiscussionReplyMessageCommand,
    SendMessageCommand,
    SendReplyMessageCommand,
    SendWhatsappTemplateMessageCommand,
    derive_message_id,
    parse_outbound_message,
    request_fingerprint,
)
from shared.outbound._records import command_text, new_record, normalize, recipient_slots
from shared.outbound._sender import OutboundSender, OutcomeKind, SendOutcome, reset_sender_cache
from shared.outbound._store import (
    RECIPIENT_STATUS_RANK,
    DamagedRecordError,
    IdempotencyEntry,
    IdempotencyStore,
    MessageRecord,
    MessageStore,
    RecipientSlot,
    idempotency_key_hash,
)

__all__ = [
    "RECIPIENT_STATUS_RANK",
    "DamagedRecordError",
    "DeadLetter",
    "DeadLetterReason",
    "FailureInfo",
    "IdempotencyEntry",
    "IdempotencyStore",
    "MessageCancelledData",
    "MessageFailedData",
    "MessageRecord",
    "MessageSentData",
    "MessageStatus",
    "MessageStore",
    "Operation",
    "OutboundMessage",
    "OutboundMessageAdapter",
    "OutboundSender",
    "OutcomeKind",
    "RecipientOutcome",
    "RecipientSlot",
    "SendDiscussionReplyMessageCommand",
    "SendMessageCommand",
    "SendOutcome",
    "SendReplyMessageCommand",
    "SendWhatsappTemplateMessageCommand",
    "command_text",
    "derive_message_id",
    "idempotency_key_hash",
    "new_record",
    "normalize",
    "parse_outbound_message",
    "recipient_slots",
    "request_fingerprint",
    "reset_sender_cache",
]
