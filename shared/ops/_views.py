"""What the dead-letter desk shows and answers: a dead letter as operators see it (an indexed
one, or a message of a host ``-poison`` queue), and what happened to one it handled."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any

from shared.deadletters import DeadLetterEntry

__all__ = ["POISON", "DeadLetterView", "Handled", "HandledKind", "view_of_entry"]

#: The reason shown for a message the host moved to a ``-poison`` queue.
POISON = "poison"


@dataclass(frozen=True)
class DeadLetterView:
    """A dead letter as operators see it: an indexed one, or a poison queue's message."""

    id: str
    queue: str
    source_queue: str
    reason: str
    code: str | None
    detail: str | None
    message_id: str | None
    dead_lettered_at: dt.datetime
    text: str
    dequeue_count: int | None = None
    entry: DeadLetterEntry | None = None
    queue_message_id: str | None = None
    #: A poison message already re-sent for good and indexed by :meth:`DeadLetterDesk.keep_poison`.
    kept: bool = False

    def letter(self) -> dict[str, Any]:
        """The letter we wrote; {} for a poison message, kept or not (its text is the message
        as it came, whatever fields it has)."""
        return self.entry.letter() if self.entry is not None and self.reason != POISON else {}

    def original(self) -> tuple[str, str | None]:
        """The message as the letter carries it (its ``original``, or a poison message as it
        came), and the blob holding a letter's original when it was too large for the letter
        (None otherwise: then the first is it). Reads the letter once."""
        letter = self.letter()
        original, blob = letter.get("original"), letter.get("originalBlob")
        return (
            original if isinstance(original, str) else self.text,
            blob if isinstance(blob, str) and "original" not in letter else None,
        )


def view_of_entry(entry: DeadLetterEntry) -> DeadLetterView:
    """The view of an indexed dead letter."""
    return DeadLetterView(
        id=entry.id,
        queue=entry.queue,
        source_queue=entry.source_queue,
        reason=entry.reason,
        code=entry.code,
        detail=entry.detail,
        message_id=entry.message_id,
        dead_lettered_at=entry.dead_lettered_at,
        text=entry.text,
        dequeue_count=_count(entry.dequeue_count, entry.letter().get("dequeueCount")),
        entry=entry,
        queue_message_id=entry.queue_message_id,
    )


def _count(*candidates: object) -> int | None:
    """The first whole non-negative count among ``candidates`` (an entry's, then its letter's,
    which may be any JSON a foreign message carried)."""
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


class HandledKind(enum.StrEnum):
    REDRIVEN = "redriven"  # its message is back on its queue
    SKIPPED = "skipped"  # nothing to send again (already sent or cancelled); the letter is gone
    KEPT = "kept"  # not sent again while a recipient opts out (STOP); the letter stays
    ORIGINAL_GONE = "original-gone"  # its original's blob is gone: nothing to send; it stays
    IN_PROGRESS = "in-progress"  # another call is re-driving it (or just did): nothing sent
    PURGED = "purged"

    @property
    def stays(self) -> bool:
        """Whether this call left the letter as it was (nothing sent)."""
        return self in (HandledKind.KEPT, HandledKind.ORIGINAL_GONE, HandledKind.IN_PROGRESS)


@dataclass(frozen=True)
class Handled:
    """What happened to one dead letter."""

    id: str
    kind: HandledKind
    detail: str | None = None
