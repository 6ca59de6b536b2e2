"""Send a message and wait for a reply: the action's input, its answers, and the service behind it.

The question is recorded (``QuestionStore``), then sent as a SendMessage. Its status URL answers
202 while it is open, then 200 with how it ended: by the reply or STOP (the inbound processor),
or here when it times out or its send ended unsent."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import AzureError

from shared.callback_urls import (
    poll_link,
    require_callback_settings,
    require_status_token,
    status_link,
)
from shared.clock import utcnow
from shared.conversations._inputs import AskBody
from shared.inbound import WebhookRegistry
from shared.inbound._answers import read_send, reprompt_message_id
from shared.logs import redacted
from shared.messages import (
    ANSWER_GRACE,
    UNSENT,
    DamagedRecordError,
    IdempotencyEntry,
    MessageRecord,
    MessageStatus,
    QuestionConflict,
    QuestionRecord,
    QuestionStatus,
    QuestionStore,
    idempotency_key_hash,
    new_question_id,
    send_ended_unsent,
)
from shared.outbound import (
    NotQueued,
    OutboundMessage,
    OutboundMessageAdapter,
    StatusView,
    key_reused,
    request_fingerprint,
)
from shared.problems import FieldError, Problem, ProblemType, storage_unavailable
from shared.triggers import TriggerNotifier

if TYPE_CHECKING:
    from shared.outbound import SendService
    from shared.settings import Settings

log = logging.getLogger("shared.conversations")

__all__ = ["AskService"]

#: What a question asks beyond its send: in the fingerprint a replay of its key must match (not
#: ReplaceOpenQuestion: it is not what is asked, so a retry that got 409 may set it).
QUESTION_TERMS = {"Options", "TimeoutSeconds", "RepromptContent"}
#: What of the question its send carries, beside its Recipient.
SEND_TERMS = {"Sender", "Content", "Protocol", "CustomerData", "RequestId"}
#: How a question ends failed when its request answered the refusal (422) or a 500 before its
#: send was queued: the caller got no question, so a replay under its key asks it anew.
REFUSED, NOT_ACCEPTED = "refused", "not-accepted"
#: The longest wait before a question's timeout starts (TriggerNotifier.mark_asking's, under it).
ASKED_LATER = dt.timedelta(seconds=60)
NOT_ASKED = (REFUSED, NOT_ACCEPTED)


class AskService:
    """Asks questions and answers their status URLs (one per settings object)."""

    def __init__(
        self,
        settings: Settings,
        send: SendService,
        *,
        questions: QuestionStore | None = None,
        index: TriggerNotifier | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.send = send
        self.questions = questions or QuestionStore.from_settings(settings)
        self.index = index or TriggerNotifier.for_settings(settings)
        self.webhooks = WebhookRegistry.from_settings(settings)
        self._clock = clock

    # --- ask -------------------------------------------------------------------------------

    def ask(
        self, customer: str, service: str, body: AskBody, *, idempotency_key: str | None
    ) -> StatusView:
        """Check that replies reach us (400 without the service's New Message webhook on this
        customer) and that no question is open (409 naming it, unless replacing; another
        customer's is neither named nor replaced), record the question,
        send it, answer 202 + Location. A replay (the same request under the same key or
        RequestId) asks nothing: it answers as its status URL does now; another request under
        the key is a 422, after the 409 for another request's question open to its number."""
        require_callback_settings(self.settings)
        now = self._clock()
        key = idempotency_key or body.RequestId
        address = body.Recipient
        named = self.settings.named_connection
        sent = body.model_dump(include=SEND_TERMS, exclude_none=True)
        command = OutboundMessageAdapter.validate_python(
            {
                "operation": "SendMessage",
                "customerId": customer,
                "serviceId": service,
                "body": {**sent, "Recipients": [{"Address": address}]},
                **({"Connection": named} if named else {}),  # as it is sent (and fingerprinted)
            }
        )
        claim: IdempotencyEntry | None = None
        message_id = str(uuid.uuid4())
        if key:
            key_hash = idempotency_key_hash(customer, key, named)
            # One query: the open question, and the questions this key asked (a replay's).
            open_one, asked = self.questions.asked_under(service, address, key_hash)
            theirs = all(q.failure_code in NOT_ASKED for q in asked)  # this key asked none
            if (
                open_one
                and _asked_by(open_one, customer)
                and not body.ReplaceOpenQuestion
                and theirs
            ):  # 409, without a claim
                open_one = self._settled(open_one, now)  # read once: ended, it is final below
                if open_one.status is QuestionStatus.OPEN:
                    return _conflict(open_one, self.settings, customer)
            claim, replayed = self._claim(key_hash, command, body, message_id, asked, now)
            if replayed is not None:
                return self._replayed(replayed, command, idempotency_key, claim)
            message_id = claim.message_id  # new, or its first request asked nothing
        else:
            open_one = self.questions.open_question(service, address)
        own = open_one is not None and open_one.message_id == message_id
        if open_one is not None and not own and self._settled(open_one, now).status.is_final:
            # Another request's, ended (timed out, its send failed). Open now may be this one's.
            open_one = self.questions.open_question(service, address)
        if open_one is not None and open_one.message_id == message_id:  # its first, meanwhile
            return self._replayed(open_one, command, idempotency_key, claim)
        mine = open_one is None or _asked_by(open_one, customer)
        if open_one is not None and mine and not body.ReplaceOpenQuestion:
            return self._refused(claim, _conflict(open_one, self.settings, customer))
        # Registered for this customer (through any connection: it may have moved since), in one
        # partition query; a replay needs none. Another customer's service is not this one's.
        if not any(w.customer_id in ("", customer) for w in self.webhooks.list(service)):
            return self._refused(claim, _no_webhook(service))
        if open_one is not None and not mine:  # another customer's: never named nor replaced
            return self._refused(claim, _conflict(open_one, self.settings, customer))
        # Marked as asking before its first question is stored, sent once every instance knows
        # (a message to a service that never asked is published without a look: shared.triggers)
        known_everywhere = self.index.mark_asking(service)
        # The question is recorded (the one open question of service + number) before its send
        # is queued: two requests at the same time send one question, the other answers 409.
        record = QuestionRecord(
            question_id=new_question_id(service, address),
            service_id=service,
            address=address,
            message_id=message_id,
            created_at=now,
            # The recipient has the whole timeout from when the question may go out.
            expires_at=max(now, known_everywhere) + dt.timedelta(seconds=body.TimeoutSeconds),
            options=tuple(body.Options),
            reprompt=body.RepromptContent,
            sender=body.Sender,
            protocol=body.Protocol,
            customer_id=customer,
            customer_data=body.CustomerData,
            connection=named,  # its re-prompt goes out as it does
            request_key=claim.key_hash if claim else None,
        )
        try:
            created = self.questions.create(record, replacing=open_one)
        except QuestionConflict as conflict:  # another question was asked meanwhile
            if conflict.open_question.message_id == message_id:  # by this request's first
                return self._replayed(conflict.open_question, command, idempotency_key, claim)
            return self._refused(claim, _conflict(conflict.open_question, self.settings, customer))
        self._send(created, command, idempotency_key, claim, not_before=known_everywhere)
        if open_one is not None:  # replaced: its text, unless on its way (or unreadable),
            # never goes (a reply to it would answer this one)
            with contextlib.suppress(Problem, AzureError, DamagedRecordError):
                self.send.cancel(open_one.message_id)
        return self._open_view(created, status=202)

    def _claim(
        self,
        key_hash: str,
        command: OutboundMessage,
        body: AskBody,
        message_id: str,
        asked: list[QuestionRecord],
        now: dt.datetime,
    ) -> tuple[IdempotencyEntry, QuestionRecord | None]:
        """Claim ``key_hash`` for a new question's send ``message_id``: the send's fingerprint
        (an earlier release's replay compares it) and one with the question's terms. Claimed
        before: the claim and the question its first request asked, of those ``asked`` under the
        key (None: none, or on its way); a 422 for another request. Claimed now: :meth:`_adopt`."""
        fingerprint = request_fingerprint(command)
        asks = request_fingerprint(command, body.model_dump(include=QUESTION_TERMS))
        ttl = dt.timedelta(seconds=self.settings.idempotency_ttl_seconds)
        claims = self.send.idempotency
        claim = claims.claim(key_hash, message_id, fingerprint, now=now, ttl=ttl, asks=asks)
        if claim.new:
            return self._adopt(claim, body, asked, now)
        first = [question for question in asked if question.message_id == claim.message_id]
        if claim.asks:  # this release's claim
            same = claim.fingerprint == fingerprint and claim.asks == asks
        else:  # an earlier release's: the terms in its fingerprint, or (the one before) its
            # send's alone, for the question it asked (else a plain send's)
            same = claim.fingerprint == asks or (bool(first) and claim.fingerprint == fingerprint)
        if not same:
            raise key_reused()
        return claim, next((q for q in first if q.failure_code not in NOT_ASKED), None)

    def _adopt(
        self, claim: IdempotencyEntry, body: AskBody, asked: list[QuestionRecord], now: dt.datetime
    ) -> tuple[IdempotencyEntry, QuestionRecord | None]:
        """The new ``claim``, and the question asked under its key that this request sends, if
        any: b75f77e recorded a question before it claimed the key, so one whose request died in
        between is open, unsent, its key free (the claim moves to its send in one write). Not one
        sent (409) or past its timeout (ended, asked anew); one another request asked is a 422."""
        own = next((q for q in reversed(asked) if q.status is QuestionStatus.OPEN), None)
        if own is None or own.expired(now - ANSWER_GRACE):
            return claim, None
        if any(read_send(self.send.store, own.message_id, own.question_id)):  # (unreadable: sent)
            return claim, None
        if not _asks_as(own, body):
            self.send.idempotency.release(claim.key_hash, claim.message_id)
            raise key_reused()
        moved = self.send.idempotency.move(claim, own.message_id)
        return (claim, None) if moved is None else (moved, own)

    def _replayed(
        self,
        question: QuestionRecord,
        command: OutboundMessage,
        idempotency_key: str | None,
        claim: IdempotencyEntry | None,
    ) -> StatusView:
        """A replay's answer: its question as the status URL answers now. An open one's send is
        accepted again (nothing is queued once it is recorded): its first request may have died
        before it; under a new claim (:meth:`_adopt`) a refused send ends it, as a new one's."""
        if question.status is QuestionStatus.OPEN:
            since = self.index.mark_asking(question.service_id)
            first = claim is not None and claim.new
            with contextlib.suppress(DamagedRecordError):  # recorded (unreadable): not again
                self._send(question, command, idempotency_key, claim, not_before=since, first=first)
        return self._current(question)

    def _send(
        self,
        question: QuestionRecord,
        command: OutboundMessage,
        idempotency_key: str | None,
        claim: IdempotencyEntry | None,
        *,
        not_before: dt.datetime,
        first: bool = True,
    ) -> None:
        """Accept the send of ``question``, valid until its ``send_by(not_before)``. Refused (422)
        or failed before its command was queued (500), the question this request asked ends
        failed; any other 500 may follow the enqueue: it stays open, as a replay's (may be sent)."""
        try:
            self.send.accept(
                command.model_copy(update={"validUntil": question.send_by(not_before)}),
                idempotency_key=idempotency_key,
                message_id=question.message_id,
                not_before=not_before,
                claim=claim,
            )
        except (Problem, NotQueued) as refused:
            code = REFUSED if isinstance(refused, Problem) else NOT_ACCEPTED
            if first:
                failed, at = QuestionStatus.FAILED, self._clock()
                self.questions.end(question.question_id, failed, at=at, failure_code=code)
            if isinstance(refused, Problem):
                raise _in_ask_terms(refused) from None
            raise

    def _refused(self, claim: IdempotencyEntry | None, refusal: StatusView) -> StatusView:
        """``refusal`` (nothing asked), a key this request claimed free again (a claim left by a
        failed release is harmless: its replay finds no question and asks)."""
        if claim is not None and claim.new:
            try:
                self.send.idempotency.release(claim.key_hash, claim.message_id)
            except Exception as exc:
                log.warning("key of a refused ask not released: %s", redacted(str(exc)))
        return refusal

    # --- status ----------------------------------------------------------------------------

    def status(self, question_id: str, token: str | None) -> StatusView:
        """202 while open (long Retry-After); 200 once ended; the send's problem when its send
        failed; 404 unknown. The token is checked before anything is looked up."""
        require_status_token(
            self.settings,
            question_id,
            token,
            missing="Use the status URL from the Location header; it carries its token.",
            denied="The token does not open this question's status (wrong, expired or revoked).",
        )
        record = self.questions.get(question_id)
        if record is None:
            detail = f"There is no question {question_id}."
            raise Problem(404, "No such question", detail, type=ProblemType.NOT_FOUND)
        return self._current(record)

    def _current(self, record: QuestionRecord) -> StatusView:
        """What the status URL of ``record`` answers now (ended first if it is :meth:`_settled`)."""
        record = self._settled(record, self._clock())
        if record.status is QuestionStatus.OPEN:
            return self._open_view(record, status=202)
        if record.status is QuestionStatus.FAILED:
            message, _ = read_send(self.send.store, record.message_id, record.question_id)
            # Its send's problem while it stands; re-driven since: the question's own answer.
            if message is not None and message.status in UNSENT:
                view = self.send.view(message)
                return replace(
                    view, body={**view.body, "questionId": record.question_id}, headers={}
                )
        return _ended_view(record)

    def _settled(self, record: QuestionRecord, now: dt.datetime) -> QuestionRecord:
        """The open ``record``, ended ``failed`` if its send ended unsent, or ``timed_out``
        :data:`ANSWER_GRACE` past its ExpiresAt unless it :meth:`_waits`; else as it is."""
        if record.status.is_final:
            return record
        message, _ = read_send(self.send.store, record.message_id, record.question_id)
        if message is not None and send_ended_unsent(message, record):
            code = message.failure.code if message.failure else str(message.status)
            status = QuestionStatus.FAILED
        elif record.expired(now - ANSWER_GRACE) and not self._waits(record, message, now):
            code, status = None, QuestionStatus.TIMED_OUT
        else:
            return record
        return self.questions.end(record.question_id, status, at=now, failure_code=code) or record

    def _waits(
        self, record: QuestionRecord, message: MessageRecord | None, now: dt.datetime
    ) -> bool:
        """Whether the timed-out ``record`` waits for its text ``message`` or re-prompt (not final,
        in validity and lease): one valid by ExpiresAt goes out in time or expires; a later one (an
        earlier release's) is cancelled, or waited for only while a sender's claim holds it."""
        lease = dt.timedelta(seconds=self.settings.send_lease_seconds)  # the sender's: ours
        again = reprompt_message_id(record.question_id) if record.reprompted else None
        try:  # our storage failing: 503, and the next poll does it again
            reprompt = read_send(self.send.store, again, record.question_id)[0] if again else None
            for send in (message, reprompt):
                if send and send.status is MessageStatus.CANCELLED and not send.announced:
                    self.send.cancel(send.message_id)  # a cancel whose event failed: finish it
                if send is None or send.status.is_final or now >= send.valid_until + lease:
                    continue
                if send.valid_until <= record.expires_at:
                    return True
                try:
                    self.send.cancel(send.message_id)
                except Problem:  # claimed, or attempted: read again (it may have changed since)
                    if (held := self.send.store.get(send.message_id)) and held.held_until(now):
                        return True
        except AzureError as exc:
            raise storage_unavailable("The question cannot be settled now", cause=exc) from exc
        return False

    def _open_view(self, record: QuestionRecord, *, status: int) -> StatusView:
        qid = record.question_id
        url = poll_link(lambda: status_link(self.settings, "questions", qid, qid))
        body = {
            "QuestionId": qid,
            "MessageId": record.message_id,
            "Status": str(record.status),
            "ExpiresAt": record.expires_at.isoformat(),
        }
        headers = {"Retry-After": str(self.settings.question_poll_seconds)}
        if url is not None:
            body["StatusUrl"] = headers["Location"] = url
        return StatusView(status, body, headers)


def _ended_view(record: QuestionRecord) -> StatusView:
    body: dict[str, Any] = {
        "QuestionId": record.question_id,
        "MessageId": record.message_id,
        "Status": str(record.status),
        "Reply": record.reply,
        "MatchedOption": record.matched_option,
        "RepliedAt": record.replied_at.isoformat() if record.replied_at else None,
        "TimedOut": record.status is QuestionStatus.TIMED_OUT,
        "OptedOut": record.status is QuestionStatus.OPTED_OUT,
        "ReplacedBy": record.replaced_by,
    }
    return StatusView(200, {k: v for k, v in body.items() if v is not None}, {})


def _asks_as(question: QuestionRecord, body: AskBody) -> bool:
    """Whether ``question`` asks what ``body`` does, as its row tells (not its text: an unsent
    one's is nowhere): sender, protocol, answers, re-prompt, a timeout :data:`ASKED_LATER` late."""
    late = question.expires_at - question.created_at - dt.timedelta(seconds=body.TimeoutSeconds)
    asked = (question.sender, question.protocol, question.options, question.reprompt)
    wanted = (body.Sender, body.Protocol, tuple(body.Options), body.RepromptContent)
    return dt.timedelta(0) <= late <= ASKED_LATER and asked == wanted


def _in_ask_terms(problem: Problem) -> Problem:
    """The send's ``problem`` with its fields as the ask names them (``Recipient``)."""
    problem.errors = tuple(
        FieldError("Recipient", e.message) if e.field.startswith("Recipients[") else e
        for e in problem.errors
    )
    return problem


def _no_webhook(service: str) -> StatusView:
    """400: no reply on ``service`` would reach us (none on a 1-way one): it could only time out."""
    detail = (
        f"Service {service} has no New Message webhook of this app, so no reply would reach the "
        "question: register one on a 2-way service (RegisterInboundWebhook, New Message trigger)."
    )
    field = FieldError("Service-Id", "No inbound webhook is registered for this service.")
    title = "No webhook receives this service's replies"
    problem = Problem(400, title, detail, type=ProblemType.VALIDATION, errors=[field])
    return StatusView(400, problem.to_dict(), {}, True)


def _asked_by(question: QuestionRecord, customer: str) -> bool:
    """Whether ``question`` was asked for ``customer`` (None: before that was recorded)."""
    return question.customer_id in (None, customer)


def _conflict(open_one: QuestionRecord, settings: Settings, customer: str) -> StatusView:
    """409: a question is open to the number on the service; only one asked for the same
    customer is named (and may be replaced)."""
    more = int(max(ANSWER_GRACE.total_seconds(), settings.send_lease_seconds))  # on their way
    ours = _asked_by(open_one, customer)
    problem = Problem(
        409,
        "A question to this recipient is still open",
        f"Question {open_one.question_id} to this recipient on this service waits for a reply "
        f"until {open_one.expires_at.isoformat()} (and up to {more} s after, for a reply or its "
        "send still on its way). Set ReplaceOpenQuestion to replace it."
        if ours
        else "A question of another customer to this recipient on this service "
        "waits for a reply; it cannot be replaced from here.",
        type=ProblemType.CONFLICT,
        errors=[
            FieldError("ReplaceOpenQuestion" if ours else "Recipient", "Another question is open.")
        ],
    )
    named = {"openQuestionId": open_one.question_id} if ours else {}
    return StatusView(409, {**problem.to_dict(), **named}, {}, True)
