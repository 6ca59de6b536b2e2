"""The two-way flow actions: SendMessageAndWaitForReply (202 Accepted + Location) and
GetQuestionStatus, through the shared action pipeline like the send actions they sit beside in the
connector."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from shared.actions._spec import ActionContext, ActionResponse, ActionSpec, ResponseDoc
from shared.conversations._ask import AskService
from shared.conversations._inputs import (
    AskInput,
    QuestionAcceptedDoc,
    QuestionAnswerDoc,
    QuestionStatusInput,
)
from shared.outbound import send_service
from shared.outbound.actions import ACCEPTED_HEADERS, TAG, answer

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["SPECS", "reset_asker_cache"]


@lru_cache(maxsize=32)
def _asker(settings: Settings) -> AskService:
    return AskService(settings, send_service(settings))


def reset_asker_cache() -> None:
    """Forget cached services (tests reset the send service and the subscriber index between
    cases; settings equal by value would otherwise give the old ones back)."""
    _asker.cache_clear()


def send_message_and_wait(ctx: ActionContext, inp: AskInput) -> ActionResponse:
    view = _asker(ctx.settings).ask(
        inp.customer_id, inp.service_id, inp.body, idempotency_key=inp.idempotency_key
    )
    return answer(view)


def get_question_status(ctx: ActionContext, inp: QuestionStatusInput) -> ActionResponse:
    return answer(_asker(ctx.settings).status(inp.question_id, inp.token))


SPECS: tuple[ActionSpec[Any], ...] = (
    ActionSpec(
        operation_id="SendMessageAndWaitForReply",
        method="POST",
        route="questions",
        input=AskInput,
        handler=send_message_and_wait,
        summary="Send a message and wait for a reply",
        description=(
            "Sends a message to one recipient through a 2-way service and waits (up to 30 days) "
            "for the reply: it matches it against the accepted answers, re-prompts once, and "
            "ends with the reply, a timeout or an opt-out. The service needs the app's inbound "
            "webhook (Register the inbound webhook, or a New Message trigger)."
        ),
        responses=(
            ResponseDoc(202, "Sent; waiting for the reply.", QuestionAcceptedDoc, ACCEPTED_HEADERS),
            ResponseDoc(
                200, "The question ended (the final answer of Location).", QuestionAnswerDoc
            ),
        ),
        visibility="important",
        tags=(TAG,),
    ),
    ActionSpec(
        operation_id="GetQuestionStatus",
        lenient=True,  # only the settings it reads must validate
        method="GET",
        route="questions/{QuestionId}",
        input=QuestionStatusInput,
        handler=get_question_status,
        summary="Get a question's status",
        description=(
            "202 while the question waits for its reply, 200 once answered, timed out, opted out "
            "or replaced, the send's problem document when its send failed. Needs the token of "
            "the status URL, not a function key."
        ),
        responses=(
            ResponseDoc(200, "Ended.", QuestionAnswerDoc),
            ResponseDoc(202, "Still waiting.", QuestionAcceptedDoc, ACCEPTED_HEADERS),
        ),
        visibility="internal",
        routed=False,
        tags=(TAG,),
    ),
)
