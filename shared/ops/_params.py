"""The dead-letter actions' parameters: the filters the list and the bulk actions share."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import AfterValidator, Field

from shared.actions._spec import ActionInput, Param
from shared.actions.fields import ui
from shared.deadletters import DEAD_LETTER_QUEUES, ID_MAX_LENGTH, DeadLetterFilter
from shared.ops._deadletters import POISON_QUEUES

__all__ = ["KNOWN_QUEUES", "DeadLetterIdPath", "Filtered"]

#: The queues a dead letter may be on: ours, then the host's poison queues.
KNOWN_QUEUES: tuple[str, ...] = (
    *DEAD_LETTER_QUEUES,
    *POISON_QUEUES,
)


def _known_queue(value: str | None) -> str | None:
    if value is not None and value not in KNOWN_QUEUES:
        raise ValueError("not a dead-letter or poison queue: " + ", ".join(KNOWN_QUEUES))
    return value


QueueQuery = Annotated[
    str | None,
    AfterValidator(_known_queue),
    Param("query", "queue"),
    Field(
        None,
        description="Only the dead letters of this queue.",
        json_schema_extra={**ui("Queue", visibility="advanced"), "enum": list(KNOWN_QUEUES)},
    ),
]
ReasonQuery = Annotated[
    str | None,
    Param("query", "reason"),
    Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[a-z][a-z-]*$",
        description="Only this reason (failed, malformed, attempts-exhausted, rejected, poison).",
        json_schema_extra=ui("Reason", visibility="important"),
    ),
]
ErrorCodeQuery = Annotated[
    str | None,
    Param("query", "errorCode"),
    Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[a-z][a-z0-9-]*$",
        description="Only dead letters with this error code (expired, upstream-rejected, ...).",
        json_schema_extra=ui("Error Code", visibility="advanced"),
    ),
]
MinAgeQuery = Annotated[
    int | None,
    Param("query", "minAgeSeconds"),
    Field(
        None,
        ge=0,
        le=10 * 365 * 86400,
        description="Only dead letters at least this many seconds old.",
        json_schema_extra=ui("Minimum Age in Seconds", visibility="advanced"),
    ),
]
MaxAgeQuery = Annotated[
    int | None,
    Param("query", "maxAgeSeconds"),
    Field(
        None,
        ge=0,
        le=10 * 365 * 86400,
        description="Only dead letters at most this many seconds old.",
        json_schema_extra=ui("Maximum Age in Seconds", visibility="advanced"),
    ),
]
DeadLetterIdPath = Annotated[
    str,
    Param("path", "DeadLetterId"),
    Field(
        min_length=3,
        max_length=ID_MAX_LENGTH,
        description="The dead letter's id, as the list answered it.",
        json_schema_extra=ui("Dead Letter Id", visibility="important"),
    ),
]


class Filtered(ActionInput):
    queue: QueueQuery = None
    reason: ReasonQuery = None
    error_code: ErrorCodeQuery = None
    min_age: MinAgeQuery = None
    max_age: MaxAgeQuery = None

    def dead_letter_filter(self, now: dt.datetime) -> DeadLetterFilter:
        return DeadLetterFilter(
            queue=self.queue,
            reason=self.reason,
            code=self.error_code,
            before=None if self.min_age is None else now - dt.timedelta(seconds=self.min_age),
            after=None if self.max_age is None else now - dt.timedelta(seconds=self.max_age),
        )

    @property
    def has_filter(self) -> bool:
        filters = (self.queue, self.reason, self.error_code, self.min_age, self.max_age)
        return any(v is not None for v in filters)
