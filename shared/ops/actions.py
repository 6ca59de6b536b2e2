"""The dead-letter actions (function key): list, show, re-drive and purge, one or by filter.

Every answer about a dead letter uses the same document (:class:`DeadLetterDoc`); a re-drive or
purge answers what happened to each letter. Bulk actions take the list's filters and need at
least one (so that "everything" is never one forgotten parameter away), and handle at most
:data:`BULK_LIMIT` letters per call: ``more`` says to call again.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import replace
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, Field

from shared.actions._spec import (
    ActionContext,
    ActionInput,
    ActionResponse,
    ActionSpec,
    Param,
    ResponseDoc,
)
from shared.actions.fields import ui
from shared.clock import utcnow
from shared.ops._deadletters import (
    KEPT_PASSED_OVER,
    PEEK_LIMIT,
    POISON_QUEUES,
    DeadLetterDesk,
    DeadLetterView,
    Handled,
    HandledKind,
)
from shared.ops._params import KNOWN_QUEUES, DeadLetterIdPath, Filtered
from shared.problems import FieldError, Problem, ProblemType, validation_problem
from shared.signing import TokenPurpose, secrets_problem, sign, verify

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["BULK_LIMIT", "KNOWN_QUEUES", "SPECS", "desk", "letter_doc"]

TAG = "Operations"
#: Dead letters one bulk call handles at most.
BULK_LIMIT = 200
_MICROSECOND = dt.timedelta(microseconds=1)  # the finest a dead letter's time is kept to


class ListInput(Filtered):
    top: Annotated[
        int,
        Param("query", "top"),
        Field(
            50,
            ge=1,
            le=200,
            description="Most dead letters per page (poison messages come on the first page).",
            json_schema_extra=ui("Page Size", visibility="advanced"),
        ),
    ] = 50
    continuation_token: Annotated[
        str | None,
        Param("query", "continuationToken"),
        Field(
            None,
            max_length=2000,
            description="The previous page's continuationToken.",
            json_schema_extra=ui("Continuation Token", visibility="advanced"),
        ),
    ] = None


class OneInput(ActionInput):
    dead_letter_id: DeadLetterIdPath


ForceQuery = Annotated[
    bool,
    Param("query", "force"),
    Field(
        False,
        description=(
            "Re-drive even a send that failed outcome-unknown (it may have been sent already: "
            "check its delivery reports first). Without it such a letter is kept."
        ),
        json_schema_extra=ui("Force", visibility="advanced"),
    ),
]


class RedriveOneInput(OneInput):
    force: ForceQuery = False


# --- documents ------------------------------------------------------------------------------------


class DeadLetterDoc(BaseModel):
    id: str = Field(description="Its id.", json_schema_extra=ui("Id"))
    queue: str = Field(description="The queue it is on.", json_schema_extra=ui("Queue"))
    sourceQueue: str = Field(
        description="Where a re-drive puts it back.", json_schema_extra=ui("Source Queue")
    )
    reason: str = Field(
        description="Why it was dead-lettered (poison: the host gave up; no reason recorded).",
        json_schema_extra=ui("Reason"),
    )
    code: str | None = Field(
        None, description="The failure's code, for a failed send.", json_schema_extra=ui("Code")
    )
    detail: str | None = Field(None, description="What went wrong.", json_schema_extra=ui("Detail"))
    messageId: str | None = Field(
        None, description="Our message id, when it has one.", json_schema_extra=ui("Message Id")
    )
    deadLetteredAt: dt.datetime = Field(
        description="When it was dead-lettered.", json_schema_extra=ui("Dead-Lettered At")
    )
    ageSeconds: int = Field(description="Its age now.", json_schema_extra=ui("Age in Seconds"))
    dequeueCount: int | None = Field(
        None,
        description="How often the host delivered it (poison messages).",
        json_schema_extra=ui("Dequeue Count"),
    )


class DeadLetterDetailDoc(DeadLetterDoc):
    text: str = Field(description="The dead letter as stored.", json_schema_extra=ui("Text"))
    original: str | None = Field(
        None,
        description=(
            "The message a re-drive puts back on its source queue (a subscriber delivery with "
            "its attempt count reset). Absent when the letter kept it in a blob that is gone: "
            "it cannot be re-driven."
        ),
        json_schema_extra=ui("Original"),
    )


class DeadLetterPageDoc(BaseModel):
    value: list[DeadLetterDoc] = Field(
        description="The dead letters of this page.", json_schema_extra=ui("Dead Letters")
    )
    continuationToken: str | None = Field(
        None,
        description="Pass it as continuationToken for the next page; absent on the last.",
        json_schema_extra=ui("Continuation Token"),
    )
    poisonTruncated: bool = Field(
        False,
        description="A poison queue holds more than the 32 messages a peek shows.",
        json_schema_extra=ui("Poison Truncated"),
    )


class HandledDoc(BaseModel):
    id: str = Field(description="The dead letter's id.", json_schema_extra=ui("Id"))
    outcome: HandledKind = Field(
        description=(
            "redriven, skipped (already sent or cancelled: nothing sent), kept (not sent, the "
            "letter stays: a recipient still opts out; or, unless force is true, it failed "
            "outcome-unknown (it may have been sent) or is a poison send command naming no message;"
            " or it is a poison send command not its message's own as recorded (another message's "
            "that reused its id, or a notification rule's send made again after the rule was "
            "edited): purge it; or its connection is unsure now (settings): re-drive it later), "
            "original-gone (its stored original is gone: nothing sent, the letter stays; purge it),"
            " in-progress (another call is re-driving it: nothing sent by this one) or purged."
        ),
        json_schema_extra=ui("Outcome"),
    )
    detail: str | None = Field(
        None, description="Why skipped or kept.", json_schema_extra=ui("Detail")
    )


class HandledManyDoc(BaseModel):
    redriven: int = Field(
        0, description="Put back on their queue.", json_schema_extra=ui("Redriven")
    )
    skipped: int = Field(
        0, description="Nothing to send again; removed.", json_schema_extra=ui("Skipped")
    )
    kept: int = Field(
        0,
        description=(
            "Not sent, they stay: a recipient opts out (STOP); without force, outcome-unknown "
            "or a poison send command naming no message; a poison send command not its "
            "message's own as recorded (another message's that reused its id, a rule's send "
            "made again after the rule was edited) or whose connection is unsure now (settings)."
        ),
        json_schema_extra=ui("Kept"),
    )
    originalGone: int = Field(
        0,
        description="Not sent: their stored original is gone (they stay; purge them).",
        json_schema_extra=ui("Original Gone"),
    )
    inProgress: int = Field(
        0,
        description="Being re-driven by another call: nothing sent by this one.",
        json_schema_extra=ui("In Progress"),
    )
    purged: int = Field(0, description="Deleted.", json_schema_extra=ui("Purged"))
    more: bool = Field(
        False,
        description=(
            f"More may match: call again, passing continuationToken, for the rest (this call "
            f"stopped at its {BULK_LIMIT} or after looking at {BULK_LIMIT * KEPT_PASSED_OVER} "
            "letters, or a poison queue holds more). A loop passing it until more is false "
            "looks once at each letter that matched when the loop began (one filed under an "
            "earlier time meanwhile, a kept poison message or a poll-expired send, may be "
            "passed) and ends; one written meanwhile waits for the next loop."
        ),
        json_schema_extra=ui("More"),
    )
    continuationToken: str | None = Field(
        None,
        description=(
            "Pass it as continuationToken to the next call, with the same filters: it goes on "
            "after the letters this one looked at, so letters that stay (kept, original-gone) "
            "are not seen again. Signed: another call's filters or an altered token are a 400."
        ),
        json_schema_extra=ui("Continuation Token"),
    )
    items: list[HandledDoc] = Field(
        default_factory=list, description="Each letter handled.", json_schema_extra=ui("Items")
    )


def letter_doc(view: DeadLetterView, now: dt.datetime) -> DeadLetterDoc:
    """The document of one dead letter."""
    return DeadLetterDoc(
        id=view.id,
        queue=view.queue,
        sourceQueue=view.source_queue,
        reason=view.reason,
        code=view.code,
        detail=view.detail,
        messageId=view.message_id,
        deadLetteredAt=view.dead_lettered_at,
        ageSeconds=max(0, int((now - view.dead_lettered_at).total_seconds())),
        dequeueCount=view.dequeue_count,
    )


def handled_many(done: list[Handled], more: bool, token: str | None) -> HandledManyDoc:
    """The answer of a bulk re-drive or purge (``token``: where the next call goes on)."""
    counts = {kind: sum(1 for h in done if h.kind is kind) for kind in HandledKind}
    return HandledManyDoc(
        redriven=counts[HandledKind.REDRIVEN],
        skipped=counts[HandledKind.SKIPPED],
        kept=counts[HandledKind.KEPT],
        originalGone=counts[HandledKind.ORIGINAL_GONE],
        inProgress=counts[HandledKind.IN_PROGRESS],
        purged=counts[HandledKind.PURGED],
        more=more,
        continuationToken=token,
        items=[HandledDoc(id=h.id, outcome=h.kind, detail=h.detail) for h in done],
    )


# --- handlers -------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def desk(settings: Settings) -> DeadLetterDesk:
    """The dead-letter desk for ``settings`` (cached per settings object)."""
    return DeadLetterDesk.from_settings(settings)


def _one(ctx: ActionContext, inp: OneInput, *, acting: bool = False) -> DeadLetterView:
    """The dead letter an action names (``acting``: a re-drive or purge, which also reaches a
    poison message not among the peeked); 404 otherwise."""
    ops = desk(ctx.settings)
    view = ops.target(inp.dead_letter_id) if acting else ops.get(inp.dead_letter_id)
    if view is None:
        detail = f"No dead letter has id {inp.dead_letter_id} (handled already?)."
        queue = inp.dead_letter_id.partition("~")[0]
        if queue in POISON_QUEUES:
            detail = (
                f"No message {inp.dead_letter_id} among the first {PEEK_LIMIT} visible on "
                f"{queue} (handled already, held by a call handling it, or further back: only "
                "those are looked at). The PoisonKeeper timer (every 6 hours) moves poison "
                "messages into the indexed dead letters, found by id wherever they are; "
                "RedriveDeadLetters and PurgeDeadLetters with this queue reach them now (call "
                "again while they answer more)."
            )
        raise Problem(404, "No such dead letter", detail, type=ProblemType.NOT_FOUND)
    return view


def list_dead_letters(ctx: ActionContext, inp: ListInput) -> ActionResponse:
    now = utcnow()
    try:
        items, token, truncated = desk(ctx.settings).page(
            inp.dead_letter_filter(now), top=inp.top, continuation=inp.continuation_token
        )
    except ValueError as exc:
        raise validation_problem([FieldError("continuationToken", str(exc))]) from exc
    return ActionResponse.json(
        DeadLetterPageDoc(
            value=[letter_doc(v, now) for v in items],
            continuationToken=token,
            poisonTruncated=truncated,
        )
    )


def get_dead_letter(ctx: ActionContext, inp: OneInput) -> ActionResponse:
    view = _one(ctx, inp)
    base = letter_doc(view, utcnow())
    original = desk(ctx.settings).redrive_text(view)
    return ActionResponse.json(
        DeadLetterDetailDoc(**base.model_dump(), text=view.text, original=original)
    )


def redrive_dead_letter(ctx: ActionContext, inp: RedriveOneInput) -> ActionResponse:
    done = desk(ctx.settings).redrive(_one(ctx, inp, acting=True), force=inp.force)
    return ActionResponse.json(HandledDoc(id=done.id, outcome=done.kind, detail=done.detail))


def purge_dead_letter(ctx: ActionContext, inp: OneInput) -> ActionResponse:
    done = desk(ctx.settings).purge(_one(ctx, inp, acting=True))
    return ActionResponse.json(HandledDoc(id=done.id, outcome=done.kind, detail=done.detail))


def _require_filter(inp: Filtered) -> None:
    if not inp.has_filter:
        raise validation_problem(
            [
                FieldError(
                    "reason",
                    "give at least one of reason, queue, errorCode, minAgeSeconds, maxAgeSeconds "
                    "(a bulk action never means 'everything' by default)",
                )
            ]
        )


def _token_subject(action: str, inp: BulkInput, start: dt.datetime, after: str | None) -> str:
    """What a ``continuationToken`` signs: its action and filters, its loop's start and place."""
    fields = (action, inp.queue, inp.reason, inp.min_age, inp.max_age, start.isoformat(), after,
              *([inp.error_code] if inp.error_code else []))  # fmt: skip
    return json.dumps(fields, ensure_ascii=False)


def _resumed(settings: Settings, action: str, inp: BulkInput) -> tuple[dt.datetime, str | None]:
    """The start and place of the loop ``inp``'s token goes on with: ``<place>.<signature>``,
    place the base64url JSON of [start, the last letter looked at]. A 400 naming it, nothing
    done, unless a call of ``action`` with the same filters answered it."""
    place, _, signed = (inp.continuation_token or "").partition(".")
    try:
        start_text, after = json.loads(base64.urlsafe_b64decode(place + "=" * (-len(place) % 4)))
        start = dt.datetime.fromisoformat(start_text)
        subject: str | None = _token_subject(action, inp, start, after)
    except (ValueError, TypeError, RecursionError):
        subject = None
    secrets = settings.callback_secret_list
    if subject is None or not verify(signed, TokenPurpose.DEAD_LETTERS, subject, secrets=secrets):
        why = (f"not a continuationToken a {action} call with these filters (queue, reason, "
               "errorCode, minAgeSeconds, maxAgeSeconds) answered: pass the same filters, or "
               "start again without it")  # fmt: skip
        raise validation_problem([FieldError("continuationToken", why)])
    return start, after


def _bulk(ctx: ActionContext, inp: BulkInput, force: bool | None = None) -> ActionResponse:
    """A bulk re-drive (``force`` as for it) or purge (None) of the letters passing ``inp``'s
    filters as they were when its loop began (the first call) and written before: one written
    meanwhile (a re-driven send that failed again) waits for the next loop, so a loop ends."""
    _require_filter(inp)
    if (problem := secrets_problem(ctx.settings.callback_secret_list)) is not None:
        raise problem  # before anything is done: its continuationToken is signed
    action = "PurgeDeadLetters" if force is None else "RedriveDeadLetters"
    start, after = (
        _resumed(ctx.settings, action, inp) if inp.continuation_token else (utcnow(), None)
    )
    ops, where, ceiling = desk(ctx.settings), inp.dead_letter_filter(start), start - _MICROSECOND
    where = replace(where, before=min(where.before or ceiling, ceiling))
    done, more, last = (
        ops.purge_matching(where, limit=BULK_LIMIT, after=after) if force is None
        else ops.redrive_matching(where, limit=BULK_LIMIT, force=force, after=after)
    )  # fmt: skip
    token = None
    if more:
        subject = _token_subject(action, inp, start, last)
        signed = sign(TokenPurpose.DEAD_LETTERS, subject, secrets=ctx.settings.callback_secret_list)
        place = json.dumps([start.isoformat(), last], ensure_ascii=False).encode()
        token = f"{base64.urlsafe_b64encode(place).decode().rstrip('=')}.{signed}"
    return ActionResponse.json(handled_many(done, more, token))


def redrive_dead_letters(ctx: ActionContext, inp: RedriveManyInput) -> ActionResponse:
    return _bulk(ctx, inp, force=inp.force)


def purge_dead_letters(ctx: ActionContext, inp: BulkInput) -> ActionResponse:
    return _bulk(ctx, inp)


class BulkInput(Filtered):
    continuation_token: Annotated[
        str | None,
        Param("query", "continuationToken"),
        Field(
            None,
            max_length=2000,
            description=(
                "The previous call's continuationToken (with the same filters): go on after "
                "what it looked at, among the letters that matched when the loop began."
            ),
            json_schema_extra=ui("Continuation Token", visibility="advanced"),
        ),
    ] = None


class RedriveManyInput(BulkInput):
    force: ForceQuery = False


SPECS: tuple[
    ActionSpec[ListInput]
    | ActionSpec[OneInput]
    | ActionSpec[RedriveOneInput]
    | ActionSpec[BulkInput]
    | ActionSpec[RedriveManyInput],
    ...,
] = (
    ActionSpec(
        operation_id="ListDeadLetters",
        lenient=True,  # only the settings it reads must validate
        method="GET",
        route="deadletters",
        input=ListInput,
        handler=list_dead_letters,
        summary="List dead letters",
        description=(
            "Dead letters with their reasons, oldest first, paged; the host's poison messages "
            "(no reason, with their dequeue count) come on the first page."
        ),
        responses=(ResponseDoc(200, "A page of dead letters.", DeadLetterPageDoc),),
        visibility="advanced",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="GetDeadLetter",
        lenient=True,  # only the settings it reads must validate
        method="GET",
        route="deadletters/{DeadLetterId}",
        input=OneInput,
        handler=get_dead_letter,
        summary="Get a dead letter",
        description="One dead letter with its stored text and the message a re-drive sends.",
        responses=(ResponseDoc(200, "The dead letter.", DeadLetterDetailDoc),),
        visibility="advanced",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="RedriveDeadLetter",
        method="POST",
        route="deadletters/{DeadLetterId}/redrive",
        input=RedriveOneInput,
        handler=redrive_dead_letter,
        summary="Re-drive a dead letter",
        description=(
            "Puts the message back on its queue with its original message id; a send that was "
            "sent meanwhile is not sent again (skipped); one that may have been sent already "
            "(outcome-unknown) is kept unless force is true."
        ),
        responses=(ResponseDoc(200, "What happened.", HandledDoc),),
        visibility="advanced",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="PurgeDeadLetter",
        method="DELETE",
        route="deadletters/{DeadLetterId}",
        input=OneInput,
        handler=purge_dead_letter,
        summary="Purge a dead letter",
        description="Deletes one dead letter for good.",
        responses=(ResponseDoc(200, "Purged.", HandledDoc),),
        visibility="advanced",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="RedriveDeadLetters",
        method="POST",
        route="deadletters/redrive",
        input=RedriveManyInput,
        handler=redrive_dead_letters,
        summary="Re-drive matching dead letters",
        description=f"Re-drives up to {BULK_LIMIT} dead letters matching the filters.",
        responses=(ResponseDoc(200, "What happened to each.", HandledManyDoc),),
        visibility="advanced",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="PurgeDeadLetters",
        method="POST",
        route="deadletters/purge",
        input=BulkInput,
        handler=purge_dead_letters,
        summary="Purge matching dead letters",
        description=f"Deletes up to {BULK_LIMIT} dead letters matching the filters.",
        responses=(ResponseDoc(200, "What happened to each.", HandledManyDoc),),
        visibility="advanced",
        tags=(TAG,),
    ),
)
