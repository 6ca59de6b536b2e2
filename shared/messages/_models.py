"""A message's statuses and the transition tables every write goes through.

A message moves along :data:`MESSAGE_TRANSITIONS`, a recipient slot only forward by rank
(:class:`RecipientStatus`), a batch along :data:`BATCH_TRANSITIONS`. See docs/architecture.md,
"State machines"."""

from __future__ import annotations

import enum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = [
    "BATCH_TRANSITIONS",
    "MESSAGE_ID_PATTERN",
    "MESSAGE_TRANSITIONS",
    "QUESTION_ID_PATTERN",
    "REDRIVE",
    "BatchStatus",
    "FailureFieldError",
    "FailureInfo",
    "IllegalTransition",
    "MessageStatus",
    "Operation",
    "RecipientStatus",
    "check_batch_transition",
    "check_transition",
]


#: Our message ids (and a caller's own ``messageId`` on the queue): what a Table key and a URL
#: path segment take as they are.
MESSAGE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Our question ids: their partition (``q`` and 32 hex digits), ``-``, a UUID's 32 hex digits.
QUESTION_ID_PATTERN = r"^q[0-9a-f]{32}-[0-9a-f]{32}$"


class Operation(enum.StrEnum):
    """The upstream send operations, by the certified connector's operationIds."""

    SEND_MESSAGE = "SendMessage"
    SEND_REPLY_MESSAGE = "SendReplyMessage"
    SEND_DISCUSSION_REPLY_MESSAGE = "SendDiscussionReplyMessage"
    SEND_WHATSAPP_TEMPLATE_MESSAGE = "SendWhatsappTemplateMessage"

    @property
    def carries_request_id(self) -> bool:
        """Whether upstream de-duplicates this operation on ``RequestId`` (all but discussion
        replies), i.e. whether an attempt whose outcome is unknown may be repeated."""
        return self is not Operation.SEND_DISCUSSION_REPLY_MESSAGE


class MessageStatus(enum.StrEnum):
    """A message's lifecycle; :data:`MESSAGE_TRANSITIONS` says which changes are allowed."""

    ACCEPTED = "accepted"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (MessageStatus.SENT, MessageStatus.FAILED, MessageStatus.CANCELLED)


class RecipientStatus(enum.StrEnum):
    """One recipient's state: the sender's (pending, sent, failed, cancelled), then what
    delivery reports say (delivered, undelivered). A slot never moves to a lower rank."""

    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def rank(self) -> int:
        """Order in which states may be reached; an update to a lower or equal rank is ignored."""
        return _RECIPIENT_RANK[self]

    @classmethod
    def of_message(cls, status: MessageStatus) -> RecipientStatus:
        """What a recipient's state is while its slot says nothing newer than its message."""
        return _FROM_MESSAGE.get(status, cls.PENDING)


_RECIPIENT_RANK: Final = {
    RecipientStatus.PENDING: 0,
    RecipientStatus.CANCELLED: 10,
    RecipientStatus.FAILED: 10,
    RecipientStatus.SENT: 20,
    RecipientStatus.UNDELIVERED: 30,
    RecipientStatus.DELIVERED: 40,
}
_FROM_MESSAGE: Final = {
    MessageStatus.SENT: RecipientStatus.SENT,
    MessageStatus.FAILED: RecipientStatus.FAILED,
    MessageStatus.CANCELLED: RecipientStatus.CANCELLED,
}


class BatchStatus(enum.StrEnum):
    """A bulk send's batch row: being written, then queued (its drivers are out); a request
    that stopped part-way and was not replayed in time is incomplete."""

    ACCEPTING = "accepting"
    QUEUED = "queued"
    INCOMPLETE = "incomplete"


class IllegalTransition(RuntimeError):
    """A write would move a record along an arrow its table does not have (a bug, never
    caller input: every caller checks the state before it writes)."""


_S = MessageStatus
#: Allowed status changes of a message (a write that keeps the status is always allowed).
MESSAGE_TRANSITIONS: Final[dict[MessageStatus, frozenset[MessageStatus]]] = {
    _S.ACCEPTED: frozenset({_S.QUEUED, _S.SENDING, _S.FAILED, _S.CANCELLED}),
    _S.QUEUED: frozenset({_S.SENDING, _S.FAILED, _S.CANCELLED}),
    # back to queued (transient failure, or no call made) or accepted (a bulk member handed
    # back before its pack's first call)
    _S.SENDING: frozenset({_S.SENT, _S.FAILED, _S.QUEUED, _S.ACCEPTED}),
    _S.SENT: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}
#: The one way back from a final state: an operator re-drives a failed message.
REDRIVE: Final = (MessageStatus.FAILED, MessageStatus.QUEUED)

BATCH_TRANSITIONS: Final[dict[BatchStatus, frozenset[BatchStatus]]] = {
    BatchStatus.ACCEPTING: frozenset({BatchStatus.QUEUED, BatchStatus.INCOMPLETE}),
    # a replay of the request finishes an incomplete batch
    BatchStatus.INCOMPLETE: frozenset({BatchStatus.QUEUED}),
    BatchStatus.QUEUED: frozenset(),
}


def check_transition(before: MessageStatus, after: MessageStatus, *, redrive: bool = False) -> None:
    """Raise :class:`IllegalTransition` unless a message may go from ``before`` to ``after``
    (``redrive`` admits :data:`REDRIVE` and nothing else)."""
    if before is after or after in MESSAGE_TRANSITIONS[before]:
        return
    if redrive and (before, after) == REDRIVE:
        return
    raise IllegalTransition(f"message status {before} -> {after} is not allowed")


def check_batch_transition(before: BatchStatus, after: BatchStatus) -> None:
    """Raise :class:`IllegalTransition` unless a batch may go from ``before`` to ``after``."""
    if before is after or after in BATCH_TRANSITIONS[before]:
        return
    raise IllegalTransition(f"batch status {before} -> {after} is not allowed")


# --- failure description, shared by the status record, events and dead letters ----------------


#: The longest failure title and detail kept (longer ones are cut, ending with an ellipsis).
FAILURE_TITLE_CHARS = 500
FAILURE_DETAIL_CHARS = 4_000
#: At most this many field errors are kept on a failure, each field and message cut to these.
FAILURE_FIELD_ERRORS = 20
FAILURE_FIELD_CHARS = 200
FAILURE_FIELD_MESSAGE_CHARS = 300


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "\u2026"


class FailureFieldError(BaseModel):
    """One field a refused send was refused for."""

    model_config = ConfigDict(extra="forbid")

    field: str
    message: str

    @field_validator("field", "message", mode="after")
    @classmethod
    def _bounded(cls, value: str, info: ValidationInfo) -> str:
        limit = FAILURE_FIELD_CHARS if info.field_name == "field" else FAILURE_FIELD_MESSAGE_CHARS
        return _cut(value, limit)


class FailureInfo(BaseModel):
    """Why a message failed for good."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(
        description=(
            "upstream-rejected | duplicate-request-id | rate-limited | attempts-exhausted | "
            "expired | outcome-unknown | suppressed | malformed | poisoned | connection-removed; "
            "a pending send's LastError may also be upstream-unavailable or configuration "
            "(never a failure's code)"
        )
    )
    title: str
    detail: str | None = None
    upstreamStatus: int | None = Field(None, description="HTTP status of the last upstream answer.")
    attempts: int = 0
    errors: list[FailureFieldError] | None = Field(
        None,
        description=(
            f"The fields a refused send was refused for (at most {FAILURE_FIELD_ERRORS}), "
            "if it was refused for its fields."
        ),
    )

    @field_validator("errors", mode="after")
    @classmethod
    def _few(cls, value: list[FailureFieldError] | None) -> list[FailureFieldError] | None:
        return value[:FAILURE_FIELD_ERRORS] if value else None

    @field_validator("title", "detail", mode="after")
    @classmethod
    def _bounded(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A failure rides in events, dead letters and one Table property: keep it short.
        limit = FAILURE_TITLE_CHARS if info.field_name == "title" else FAILURE_DETAIL_CHARS
        if value is None or len(value) <= limit:
            return value
        return value[: limit - 1] + "\u2026"
