"""Inbound replies that answer a question (Send a message and wait for a reply).

The processor hands every inbound message here (one SmartDialog delivers twice comes twice).
One partition query
(:meth:`QuestionStore.for_reply`) finds the open question of the service + sender (none: the
message only goes to New Message, as before; none either when this very message already ended a
question: a redelivery by SmartDialog changes nothing, nor a copy of a message written before
the question was asked). One read of the question's send follows: a send that ended unsent
(:func:`send_ended_unsent`: cancelled, or failed before it may have gone out) leaves its
question answered by nothing (it ends ``failed``), unless the timeout cancelled it (the question
times out, or ends with a STOP received in time); one unreadable (``DamagedRecordError``, a
status another release wrote) is taken as gone out, with a warning, never an error that would
hold up the event. Then:

- STOP ends it ``opted_out`` (the suppression itself is the processor's, as before);
- a message before the question's text may have gone out (:func:`send_may_have_gone_out`)
  does nothing more;
- an accepted answer (or any reply, without options: one with only an attachment too, its
  ``Reply`` empty) ends it ``answered``;
- another reply re-prompts once, while the re-prompt's ``validUntil`` is ahead of both its
  receipt and the processor's clock: a SendMessage command goes on ``smartdialog-outbound`` (the one
  send path; built here as JSON because the inbound package may not import the outbound one),
  then the question is marked re-prompted. Its ``messageId`` and ``RequestId`` derive from the
  question id, so a processor that crashes in between and runs again queues the same command,
  which the sender sends once (or cancels: its question ended before it got to it).

The message is published to New Message whatever happened here (nothing accepted is lost).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Literal

from shared.clock import utcnow
from shared.logs import loggable_id, redacted
from shared.messages import (
    DamagedRecordError,
    MessageRecord,
    MessageStore,
    QuestionRecord,
    QuestionStore,
    match_answer,
    reprompt_message_id,
    send_ended_unsent,
    send_may_have_gone_out,
)
from shared.names import OUTBOUND_QUEUE
from shared.storage import QueueLike, ensured_queue
from shared.suppressions import reported_key
from shared.telemetry import current_traceparent

if TYPE_CHECKING:
    from shared.inbound._models import NewMessagePayload
    from shared.settings import Settings

__all__ = [
    "CLOCK_SKEW",
    "AnswerOutcome",
    "QuestionAnswers",
    "read_send",
    "reprompt_command",
    "reprompt_message_id",
    "written_at",
]

log = logging.getLogger("shared.inbound.answers")

AnswerOutcome = Literal["none", "answered", "opted_out", "reprompted", "not_matched"]
#: How far SmartDialog's clock may be behind ours: a reply it timestamps up to this long before
#: its question was asked still answers it (one written earlier is a late or repeated copy).
CLOCK_SKEW = dt.timedelta(seconds=5)
#: How long after SmartDialog got a message a copy of it may still reach our webhook: its
#: retries of a call that failed (an outage of ours, a lost 202; it publishes no schedule) span
#: hours, so a day covers them. A timestamp further behind our receipt is not when it got the
#: message (0001-01-01, .NET's unset value; a wrong date) and would make every reply look
#: written before its question: the receipt time stands in.
REDELIVERY = dt.timedelta(hours=24)


def written_at(payload: NewMessagePayload, received_at: dt.datetime) -> dt.datetime:
    """When SmartDialog got the message: its ``timestamp`` (the same in every copy it delivers;
    ``received_at`` is this copy's own), unless it has none or is no plausible one: ahead of
    ``received_at`` by more than :data:`CLOCK_SKEW` (a local time without its zone, read as UTC)
    or behind it by more than :data:`REDELIVERY`; then this copy's receipt time."""
    written = payload.utc_timestamp
    if written is not None and -REDELIVERY <= written - received_at <= CLOCK_SKEW:
        return written
    return received_at


def read_send(
    messages: MessageStore, message_id: str, question_id: str
) -> tuple[MessageRecord | None, bool]:
    """The record of a send of question ``question_id``, and whether it was unreadable
    (``DamagedRecordError``: a status another release wrote); that one is None, with a warning,
    never an error that holds the question up."""
    try:
        return messages.get(message_id), False
    except DamagedRecordError as exc:
        log.warning("the send %s of question %s is unreadable: %s", loggable_id(message_id),
                    question_id, redacted(str(exc)))  # fmt: skip
        return None, True


def reprompt_command(question: QuestionRecord) -> str:
    """The SendMessage command (queue JSON) of ``question``'s re-prompt, in the current trace
    (the reply's), valid by its question's rule from when it was asked (no later than its text,
    so it never reaches the recipient after the flow's timeout; the same command every time)."""
    message_id = reprompt_message_id(question.question_id)
    body: dict[str, object] = {
        "Sender": question.sender,
        "Content": question.reprompt,
        "Protocol": question.protocol,
        "Recipients": [{"Address": question.address}],  # RequestId: the sender fills ours in
        "CustomerData": question.customer_data,  # as its text's (None from an earlier release)
    }
    command = {
        "operation": "SendMessage",
        "messageId": message_id,
        "questionId": question.question_id,
        "customerId": question.customer_id,
        "serviceId": question.service_id,
        "Connection": question.connection,  # as it was asked (None: by its customer's claim)
        "validUntil": question.send_by(question.created_at).isoformat(),
        "traceparent": current_traceparent(),
        "body": {k: v for k, v in body.items() if v is not None},
    }
    return json.dumps({k: v for k, v in command.items() if v is not None}, ensure_ascii=False)


class QuestionAnswers:
    """Matches inbound messages to open questions (host-independent)."""

    def __init__(
        self,
        questions: QuestionStore,
        outbound: QueueLike | None = None,
        settings: Settings | None = None,
        messages: MessageStore | None = None,
    ) -> None:
        self.questions = questions
        self._outbound = outbound
        self._settings = settings
        self.messages = messages or MessageStore.from_settings(settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> QuestionAnswers:
        return cls(QuestionStore.from_settings(settings), None, settings)

    def _queue(self) -> QueueLike:
        if self._outbound is None:  # made on first re-prompt: most messages need none
            self._outbound = ensured_queue(OUTBOUND_QUEUE, self._settings)
        return self._outbound

    def handle(
        self,
        service: str,
        key: str,
        payload: NewMessagePayload,
        keyword: Literal["stop", "start"] | None,
        received_at: dt.datetime,
        *,
        now: dt.datetime | None = None,
    ) -> AnswerOutcome:
        """What ``payload`` (inbound message ``key`` on ``service``), received at
        ``received_at`` and handled at ``now`` (the processor's clock), did to an open question."""
        # E.164, as the question's address: a sender written without its '+' is the same number
        question = self.questions.for_reply(service, reported_key(payload.sender), key)
        if question is None or question.expired(received_at):
            return "none"  # an expired one is ended by its status URL
        written = written_at(payload, received_at)
        if written < question.created_at - CLOCK_SKEW:
            return "none"  # written before it was asked (a late or repeated copy of a message)
        # One read, for a message that may answer; unreadable, it has gone out (was asked).
        send, unreadable = read_send(self.messages, question.message_id, question.question_id)
        if send_ended_unsent(send, question):
            return "none"  # cancelled or failed unsent: the question ends so (its status URL)
        if keyword == "stop":  # before its text went out too: it never will (suppressed)
            self.questions.opt_out(question, at=received_at, reply_key=key)
            return "opted_out"
        if not (unreadable or send_may_have_gone_out(send)):
            return "none"  # its text has not gone out: this is no reply to it
        got = min(received_at, written)  # this copy's receipt, or SmartDialog's
        if send and send.claimed_at and got < send.claimed_at - CLOCK_SKEW:
            return "none"  # received before its text could go out, handled after (held up)
        matched, option = match_answer(question.options, payload.content)
        if matched or (not question.options and payload.attachments):  # a photo is a reply too
            done = self.questions.answer(
                question,
                reply=payload.content,
                matched_option=option,
                replied_at=received_at,
                reply_key=key,
            )
            log.info("question %s answered: %s", question.question_id, done is not None)
            return "answered"
        # one that could only go out expired is not queued (the question just stays open): one
        # received in time may be processed late (a backlog, the host's retries, a poison replay)
        send_by = question.send_by(question.created_at)
        if (
            question.reprompt
            and not question.reprompted
            and max(received_at, now or utcnow()) < send_by
        ):
            self._queue().send_message(reprompt_command(question))
            self.questions.mark_reprompted(question)
            return "reprompted"
        return "not_matched"
