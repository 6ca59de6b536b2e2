"""A question and its send (SendMessageAndWaitForReply through the real action, Azurite and the
sandbox): its text goes out in time or not at all, a reply answers it only once its text may have
gone out, and a question whose send is cancelled or expired ends failed (410/422), never timed
out or answered, and blocks no new question."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import pytest
from azure.data.tables import UpdateMode

from shared.clock import ManualClock, utcnow
from shared.inbound import InboundProcessor
from shared.inbound._answers import reprompt_command, reprompt_message_id
from shared.messages import MessageStatus, MessageStore, QuestionStatus, QuestionStore
from shared.names import EVENTS_QUEUE, INBOUND_QUEUE, MESSAGES_TABLE, OUTBOUND_QUEUE
from shared.outbound import OutboundMessageAdapter, SendService
from shared.settings import get_settings
from shared.storage import queue_client, table_client
from tests.crash import crash_once
from tests.fixtures.clock import manual_clock
from tests.inbound.conftest import ONE_WAY, TWO_WAY, HttpAnswer, Inbound, intake_text

__all__ = ["manual_clock"]


@pytest.fixture(autouse=True)
def _webhook(inbound: Inbound) -> None:
    """Questions are asked on a service whose replies reach us."""
    inbound.register_webhook()


def _ask(env: Inbound, number: str, **extra: Any) -> HttpAnswer:
    body = {"Sender": "Clinic", "Content": "Reply YES or NO", "Recipient": number,
            "Options": ["Yes", "No"], **extra}  # fmt: skip
    asked = env.call(
        "SendMessageAndWaitForReply", "POST", headers={"Service-Id": TWO_WAY}, body=body
    )
    assert asked.status == 202, asked.body
    return asked


def _poll(env: Inbound, asked: HttpAnswer) -> HttpAnswer:
    token = asked.headers["Location"].split("token=")[1]
    route = {"QuestionId": asked.body["QuestionId"]}
    return env.call("GetQuestionStatus", "GET", route_params=route, params={"token": token})


def _sends(env: Inbound) -> int:
    return sum(r["operationId"] == "SendMessage" for r in env.sandbox.state.snapshot("requests"))


def _reply(content: str, number: str) -> None:
    InboundProcessor.from_settings(get_settings()).process(intake_text(content, number))


def test_a_question_whose_send_is_held_past_its_timeout_is_never_sent_and_ends_failed(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """Its send was valid for 24 h: the question was reported timed out (the flow took its no
    answer branch), then the backlog drained and the patient got the question anyway."""
    number = "+358401234599"
    asked = _ask(inbound, number, TimeoutSeconds=60)
    message_id = asked.body["MessageId"]
    store = MessageStore.from_settings()
    record = store.get(message_id)
    assert record is not None
    expires = dt.datetime.fromisoformat(asked.body["ExpiresAt"])
    assert record.valid_until == expires - dt.timedelta(seconds=30)  # half its timeout to reply
    # The send is held up (a quota backlog, an outage) past its validity, and past ExpiresAt
    # + a minute; the sender's lease after its validity has not passed.
    manual_clock.advance((expires - utcnow()).total_seconds() + 70)
    assert utcnow() < record.valid_until + dt.timedelta(seconds=get_settings().send_lease_seconds)

    waiting = _poll(inbound, asked)
    assert (waiting.status, waiting.body["Status"]) == (202, "open"), waiting.body  # not timed out
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)  # the backlog drains
    ended = _poll(inbound, asked)

    assert _sends(inbound) == 0
    expired = store.get(message_id)
    assert expired is not None
    assert expired.failure is not None
    assert (expired.status, expired.failure.code) == (MessageStatus.FAILED, "expired")
    assert ended.status == 422, ended.body  # the failed send's answer: the flow's failed branch
    assert (ended.body["code"], ended.body["questionId"]) == ("expired", asked.body["QuestionId"])
    question = QuestionStore.from_settings().get(asked.body["QuestionId"])
    assert question is not None
    assert (question.status, question.failure_code) == (QuestionStatus.FAILED, "expired")
    _ask(inbound, number)  # nothing blocks the number


def test_a_question_whose_send_no_queue_message_reaches_times_out_after_its_validity_and_lease(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """Its queue message is gone (purged; a copy an earlier release wrote, dropped after 7 days):
    nothing sends or expires its send, which stays queued, and the question blocked its number
    with 409 for ever. It waits for its send only until the send's validity and the sender's
    lease (a claim taken as the validity ends) have passed."""
    number = "+358401234594"
    asked = _ask(inbound, number, TimeoutSeconds=60)
    queue_client(OUTBOUND_QUEUE).clear_messages()
    send = MessageStore.from_settings().get(asked.body["MessageId"])
    assert send is not None
    lease = dt.timedelta(seconds=get_settings().send_lease_seconds)
    until = send.valid_until + lease  # later than ExpiresAt + a minute: the send may still go
    assert until > dt.datetime.fromisoformat(asked.body["ExpiresAt"]) + dt.timedelta(seconds=60)
    manual_clock.advance((until - utcnow()).total_seconds() - 1)
    assert _poll(inbound, asked).status == 202
    refused = inbound.call(
        "SendMessageAndWaitForReply", "POST", headers={"Service-Id": TWO_WAY},
        body={"Sender": "Clinic", "Content": "Again?", "Recipient": number},
    )  # fmt: skip
    assert refused.status == 409, refused.body
    assert f"up to {lease.seconds} s after" in refused.body["detail"]
    manual_clock.advance(2)

    ended = _poll(inbound, asked)

    assert (ended.status, ended.body["Status"], ended.body["TimedOut"]) == (200, "timed_out", True)
    _ask(inbound, number)  # the number is free


def _as_the_previous_release_queued(store: MessageStore, message_id: str) -> None:
    """Make ``message_id``'s send what the previous release (ec7daff) queued: valid for
    SMARTDIALOG_SEND_VALIDITY_SECONDS (24 h), not bounded by its question, its command without
    ``validUntil`` on the queue."""
    record = store.get(message_id)
    assert record is not None
    command = json.loads(record.command)
    command.pop("validUntil", None)
    valid = record.created_at + dt.timedelta(seconds=get_settings().send_validity_seconds)
    assert store.swap(record, valid_until=valid, command=json.dumps(command)) is not None
    queue_client(OUTBOUND_QUEUE).clear_messages()
    queue_client(OUTBOUND_QUEUE).send_message(json.dumps(command))


def test_a_question_of_the_previous_release_times_out_and_its_held_send_is_never_sent(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """Its send (valid 24 h) was held past the timeout (a paused sender during the upgrade, a
    backlog): the question was reported timed out (the flow took its no-answer branch), then
    the sender sent its text all the same. Now the timeout cancels it."""
    number = "+358401234598"
    asked = _ask(inbound, number, TimeoutSeconds=60)
    store = MessageStore.from_settings()
    _as_the_previous_release_queued(store, asked.body["MessageId"])
    manual_clock.advance(200)

    ended = _poll(inbound, asked)
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)  # the sender runs again

    assert (ended.status, ended.body["Status"], ended.body["TimedOut"]) == (200, "timed_out", True)
    assert _sends(inbound) == 0
    send = store.get(asked.body["MessageId"])
    assert send is not None
    assert send.status is MessageStatus.CANCELLED
    assert _poll(inbound, asked).body["Status"] == "timed_out"  # still: not the cancel's 410


def test_a_timeouts_cancel_whose_event_failed_is_announced_by_the_next_poll(
    inbound: Inbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timeout's cancel wrote the send cancelled, then its message.cancelled event failed
    (the poll answered 500); the next poll ended the question and skipped the send as final, so
    nothing announced it (its queue copy gone, nobody polls its own status URL). It does now,
    and a poll that meets our storage failing answers 503 with Retry-After, not 500."""
    from azure.core.exceptions import ServiceRequestError
    from azure.storage.queue import QueueClient

    from tests.crash import crash_once

    number = "+358401234597"
    asked = _ask(inbound, number, TimeoutSeconds=60)
    store = MessageStore.from_settings()
    _as_the_previous_release_queued(store, asked.body["MessageId"])
    queue_client(OUTBOUND_QUEUE).clear_messages()  # its copy dropped (the queue's 7 days)
    manual_clock.advance(200)
    cancelled = "message.cancelled"
    crash_once(monkeypatch, QueueClient, "send_message", "events queue down",
               when=lambda content, **_: cancelled in str(content),
               error=ServiceRequestError)  # fmt: skip

    refused = _poll(inbound, asked)
    assert (refused.status, refused.headers.get("Retry-After")) == (503, "5"), refused.body
    ended = _poll(inbound, asked)

    assert (ended.status, ended.body["Status"]) == (200, "timed_out")
    send = store.get(asked.body["MessageId"])
    assert send is not None
    assert (send.status, send.announced) == (MessageStatus.CANCELLED, True)
    events = [e["type"] for e in inbound.read(EVENTS_QUEUE) if e["type"].endswith(cancelled)]
    assert len(events) == 1


def test_a_timed_out_question_whose_late_send_is_going_out_waits_for_it(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """The cancel loses to the sender (its text is being sent now): the question is not
    reported timed out while its text may still reach the recipient, and is once it went."""
    number = "+358401234593"
    asked = _ask(inbound, number, TimeoutSeconds=60)
    store = MessageStore.from_settings()
    _as_the_previous_release_queued(store, asked.body["MessageId"])
    record = store.get(asked.body["MessageId"])
    assert record is not None
    manual_clock.advance(200)
    lease = dt.timedelta(seconds=get_settings().send_lease_seconds)
    sending = store.swap(  # the sender claimed it just now
        record, status=MessageStatus.SENDING, attempts=1, lease_until=utcnow() + lease
    )
    assert sending is not None

    waiting = _poll(inbound, asked)
    assert (waiting.status, waiting.body["Status"]) == (202, "open"), waiting.body
    assert store.swap(sending, status=MessageStatus.SENT) is not None
    ended = _poll(inbound, asked)

    assert (ended.status, ended.body["Status"], ended.body["TimedOut"]) == (200, "timed_out", True)


def test_a_timed_out_question_whose_send_waits_for_a_retry_is_not_held_open_by_it(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """Its send (the previous release's, valid 24 h) was attempted once and waits out a 429's
    long Retry-After: the cancel loses (the attempt may have reached SmartDialog), and every
    poll answered 202 until it went or its 24 h passed, the number refused new questions (409)
    and a late reply answered it. Only a send being sent right now holds the question."""
    number = "+358401234587"
    asked = _ask(inbound, number, TimeoutSeconds=60)
    store = MessageStore.from_settings()
    _as_the_previous_release_queued(store, asked.body["MessageId"])
    record = store.get(asked.body["MessageId"])
    assert record is not None
    retry_at = utcnow() + dt.timedelta(hours=6)
    backing_off = store.swap(record, attempts=1, next_attempt_at=retry_at)
    assert backing_off is not None
    manual_clock.advance(200)

    ended = _poll(inbound, asked)

    assert (ended.status, ended.body["Status"]) == (200, "timed_out"), ended.body
    left = store.get(record.message_id)
    assert left is not None
    assert left.status is MessageStatus.QUEUED  # attempted: not cancellable
    _ask(inbound, number)  # the number is free


def test_a_question_whose_timeout_cancelled_its_send_but_did_not_end_it_still_times_out(
    inbound: Inbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timing-out poll cancels the waiting send, then ends the question: two writes. Lost
    in between (a crash, or another reader first), the question read a cancelled send and
    ended failed with the cancel's 410, and Power Automate failed the action instead of taking
    its timed-out branch."""
    number = "+358401234586"
    asked = _ask(inbound, number, TimeoutSeconds=60)
    store = MessageStore.from_settings()
    _as_the_previous_release_queued(store, asked.body["MessageId"])
    manual_clock.advance(200)
    crash_once(monkeypatch, QuestionStore, "end", "storage timed out")  # after the cancel

    crashed = _poll(inbound, asked)
    assert crashed.status == 500, crashed.body
    send = store.get(asked.body["MessageId"])
    assert send is not None
    assert send.status is MessageStatus.CANCELLED
    ended = _poll(inbound, asked)

    assert (ended.status, ended.body["Status"], ended.body["TimedOut"]) == (200, "timed_out", True)


def test_a_stop_received_in_time_and_handled_after_the_timeouts_cancel_opts_the_question_out(
    inbound: Inbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A STOP received before the timeout, handled (a backlog) after the timeout's cancel and
    before its question ended: the reply path read the send as cancelled and did nothing, and
    the question ended failed. The timeout's cancel is no unsent send: STOP ends it opted out,
    as it did while the send waited."""
    number = "+358401234585"
    asked = _ask(inbound, number, TimeoutSeconds=60)
    store = MessageStore.from_settings()
    _as_the_previous_release_queued(store, asked.body["MessageId"])
    manual_clock.advance(30)
    received = intake_text("STOP", number)  # received in time
    manual_clock.advance(170)
    crash_once(monkeypatch, QuestionStore, "end", "storage timed out")  # after the cancel
    assert _poll(inbound, asked).status == 500  # cancelled, not ended

    InboundProcessor.from_settings(get_settings()).process(received)
    ended = _poll(inbound, asked)

    assert (ended.status, ended.body["Status"], ended.body["OptedOut"]) == (200, "opted_out", True)


def test_a_question_opted_out_before_its_text_went_out_never_sends_its_text(
    inbound: Inbound,
) -> None:
    """STOP while the question's text waited on the queue ends the question opted out, and its
    text then fails ``suppressed`` when the sender comes to it: it used to go out all the same."""
    number = "+358401234584"
    asked = _ask(inbound, number)
    _reply("Stop!", number)  # before the sender drained the queue
    ended = _poll(inbound, asked)
    assert (ended.status, ended.body["Status"], ended.body["OptedOut"]) == (200, "opted_out", True)

    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)

    assert _sends(inbound) == 0
    send = MessageStore.from_settings().get(asked.body["MessageId"])
    assert send is not None
    assert send.status is MessageStatus.FAILED
    assert send.failure is not None
    assert send.failure.code == "suppressed"
    assert _poll(inbound, asked).body["Status"] == "opted_out"


def test_a_timed_out_questions_re_prompt_of_the_previous_release_is_cancelled(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """The previous release queued re-prompts valid 24 h: one held up past the timeout went out
    after the flow was told the question timed out."""
    number = "+358401234592"
    asked = _ask(inbound, number, TimeoutSeconds=60, RepromptContent="Please reply YES or NO")
    questions, store = QuestionStore.from_settings(), MessageStore.from_settings()
    question = questions.open_question(TWO_WAY, number)
    assert question is not None
    text = store.get(asked.body["MessageId"])
    assert text is not None
    assert store.swap(text, status=MessageStatus.SENDING) is not None  # its text went out
    assert store.swap(store.get(text.message_id), status=MessageStatus.SENT) is not None
    queue_client(OUTBOUND_QUEUE).clear_messages()
    command = json.loads(reprompt_command(question))
    del command["validUntil"]  # as the previous release queued it
    accepted = SendService(get_settings()).accept(  # recorded, queued: held up past the timeout
        OutboundMessageAdapter.validate_python(command),
        idempotency_key=None,
        message_id=reprompt_message_id(question.question_id),
    )
    assert accepted.status == 202
    assert questions.mark_reprompted(question) is not None
    manual_clock.advance(200)

    ended = _poll(inbound, asked)
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)

    assert (ended.status, ended.body["Status"]) == (200, "timed_out"), ended.body
    assert _sends(inbound) == 0
    cancelled = store.get(reprompt_message_id(question.question_id))
    assert cancelled is not None
    assert cancelled.status is MessageStatus.CANCELLED


def test_a_cancelled_question_is_answered_by_nothing_ends_410_and_blocks_no_new_question(
    inbound: Inbound,
) -> None:
    number = "+358401234597"
    asked = _ask(inbound, number)
    cancelled = inbound.call(
        "CancelMessage", "DELETE", route_params={"MessageId": asked.body["MessageId"]}
    )
    assert cancelled.status == 200, cancelled.body
    _reply("Yes", number)  # to something else: the question never reached the number

    ended = _poll(inbound, asked)

    assert ended.status == 410, ended.body
    assert ended.body["questionId"] == asked.body["QuestionId"]
    question = QuestionStore.from_settings().get(asked.body["QuestionId"])
    assert question is not None
    assert (question.status, question.reply) == (QuestionStatus.FAILED, None)


def test_a_new_question_ends_an_open_one_whose_send_was_cancelled_instead_of_a_409(
    inbound: Inbound,
) -> None:
    number = "+358401234596"
    first = _ask(inbound, number)
    inbound.call("CancelMessage", "DELETE", route_params={"MessageId": first.body["MessageId"]})

    second = _ask(inbound, number)  # was 409: "waits for a reply"

    assert second.body["QuestionId"] != first.body["QuestionId"]
    assert _poll(inbound, first).status == 410


def test_a_replaced_questions_text_not_yet_sent_is_cancelled_and_never_reaches_the_number(
    inbound: Inbound,
) -> None:
    """Found in review: the replaced question's queued text still went out after it ended
    ``replaced``, so a "No" to the Monday booking's text answered the Tuesday one."""
    number = "+358401234597"
    monday = _ask(inbound, number, Content="Monday at 9: reply YES or NO")
    tuesday = _ask(inbound, number, Content="Tuesday at 9: reply YES or NO",
                   ReplaceOpenQuestion=True)  # fmt: skip
    store = MessageStore.from_settings()
    withdrawn = store.get(monday.body["MessageId"])
    assert withdrawn is not None
    assert withdrawn.status is MessageStatus.CANCELLED

    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=90)

    sent = [r["body"]["Content"] for r in inbound.sandbox.state.snapshot("requests")
            if r["operationId"] == "SendMessage"]  # fmt: skip
    assert sent == ["Tuesday at 9: reply YES or NO"]
    assert _poll(inbound, monday).body["Status"] == "replaced"
    assert _poll(inbound, tuesday).body["Status"] == "open"


def test_a_reply_before_the_question_went_out_answers_nothing_and_is_not_re_prompted(
    inbound: Inbound,
) -> None:
    """The first question of a service is held ~35 s; a "Yes" the number sent meanwhile (to
    something else) is no answer to it. Once its text went out, a reply answers it."""
    number = "+358401234595"
    asked = _ask(inbound, number, RepromptContent="Please reply YES or NO")
    _reply("Yes", number)
    _reply("maybe", number)
    store = QuestionStore.from_settings()
    waiting = store.open_question(TWO_WAY, number)
    assert waiting is not None
    assert (waiting.question_id, waiting.reprompted) == (asked.body["QuestionId"], False)
    assert inbound.count(OUTBOUND_QUEUE) == 1  # the question alone: no re-prompt

    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=90)
    _reply("Yes.", number)

    answered = _poll(inbound, asked)
    assert (answered.status, answered.body["MatchedOption"]) == (200, "Yes"), answered.body


@pytest.mark.parametrize("options", [[], ["Yes", "No"]], ids=["any-reply", "re-prompted"])
def test_a_message_received_before_the_text_went_out_but_handled_after_it_answers_nothing(
    inbound: Inbound, manual_clock: ManualClock, options: list[str]
) -> None:
    """Found in review: whether the text may have gone out was read when the message was
    handled, not when it was received. A message the webhook took while the send was still
    queued, handled after it went out (a backlog of the intake queue, the host's retries),
    answered the question (any reply accepted) or had it re-prompted."""
    number = "+358401234594"
    asked = _ask(inbound, number, Options=options, RepromptContent="Please reply YES or NO")
    unrelated = intake_text("Running 10 min late, sorry", number)  # received now, held up
    manual_clock.advance(40)
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=90)  # the text goes out
    assert _sends(inbound) == 1

    InboundProcessor.from_settings(get_settings()).process(unrelated)

    assert _poll(inbound, asked).body["Status"] == "open"
    question = QuestionStore.from_settings().get(asked.body["QuestionId"])
    assert question is not None
    assert not question.reprompted
    assert inbound.count(OUTBOUND_QUEUE) == 0
    _reply("Yes", number)  # a reply received after it went out answers
    assert _poll(inbound, asked).body["Status"] == "answered"


def test_a_question_whose_send_failed_but_may_have_gone_out_is_answered_by_the_reply(
    inbound: Inbound,
) -> None:
    """Every attempt got a 500 (SmartDialog may have sent it all the same): the send fails
    ``outcome-unknown``. Queued again after such an attempt it counted as possibly sent; failed,
    it counted as unsent: the patient's genuine reply answered nothing and the flow got 422."""
    number = "+358400000006"  # the sandbox answers 500 on every attempt
    asked = _ask(inbound, number)
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)
    send = MessageStore.from_settings().get(asked.body["MessageId"])
    assert send is not None
    assert send.failure is not None
    assert (send.status, send.failure.code) == (MessageStatus.FAILED, "outcome-unknown")
    assert _poll(inbound, asked).status == 202  # it waits for the reply, as for one sent

    _reply("yes", number)

    answered = _poll(inbound, asked)
    assert (answered.status, answered.body["MatchedOption"]) == (200, "Yes"), answered.body


def test_a_re_prompt_held_up_past_its_questions_validity_is_never_sent(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """The re-prompt was valid for 24 h: in a backlog it reached the patient after the flow had
    taken its no-answer branch. It is valid as its question's text is."""
    number = "+358401234593"
    asked = _ask(inbound, number, TimeoutSeconds=60, RepromptContent="Please reply YES or NO")
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)
    assert _sends(inbound) == 1
    _reply("maybe", number)  # re-prompted: its command is queued
    manual_clock.advance(200)  # a backlog holds it up until the question has timed out

    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)

    assert _sends(inbound) == 1  # the question alone
    assert _poll(inbound, asked).body["Status"] == "timed_out"


def test_a_wrong_reply_too_late_for_a_re_prompt_queues_none_and_the_question_stays_open(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """From 30 s on in a 60 s question its re-prompt could only go out expired: it was queued
    all the same and failed ``expired`` (a dead letter, message.failed, the alert)."""
    number = "+358401234592"
    asked = _ask(inbound, number, TimeoutSeconds=60, RepromptContent="Please reply YES or NO")
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)
    manual_clock.advance(30)  # the re-prompt's validUntil: half the timeout

    _reply("maybe", number)

    assert inbound.count(OUTBOUND_QUEUE) == 0  # no re-prompt to fail
    waiting = QuestionStore.from_settings().open_question(TWO_WAY, number)
    assert waiting is not None
    assert (waiting.question_id, waiting.reprompted) == (asked.body["QuestionId"], False)
    _reply("no", number)
    answered = _poll(inbound, asked)
    assert (answered.status, answered.body["MatchedOption"]) == (200, "No"), answered.body


def test_a_wrong_reply_received_in_time_but_handled_after_the_re_prompts_validity_queues_none(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """The reply came in 20 s into a 60 s question; its intake message was handled at 40 s (a
    backlog, the host's retries, a poison replay), past the re-prompt's validUntil (30 s): the
    re-prompt was queued all the same and could only fail ``expired`` (a dead letter,
    message.failed, a send-failed trigger under an id the flow never saw)."""
    number = "+358401234594"
    asked = _ask(inbound, number, TimeoutSeconds=60, RepromptContent="Please reply YES or NO")
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)
    manual_clock.advance(20)
    received = intake_text("maybe", number)  # received now, in time for a re-prompt
    manual_clock.advance(20)  # handled past the re-prompt's validUntil

    InboundProcessor.from_settings(get_settings()).process(received)

    assert inbound.count(OUTBOUND_QUEUE) == 0  # no re-prompt to fail
    waiting = QuestionStore.from_settings().open_question(TWO_WAY, number)
    assert waiting is not None
    assert (waiting.question_id, waiting.reprompted) == (asked.body["QuestionId"], False)


def test_a_reply_whose_questions_send_record_is_damaged_still_reaches_its_event(
    inbound: Inbound, caplog: pytest.LogCaptureFixture
) -> None:
    """The send's row holds a status this release cannot read (written by another one during a
    rollback): the reply's processing raised before the event was put, so every message from the
    number went to intake-poison, New Message deliveries and the smartdialog-inbound event too."""
    number = "+358401234595"
    asked = _ask(inbound, number)
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)
    message_id = asked.body["MessageId"]
    messages = table_client(MESSAGES_TABLE)
    row = {"PartitionKey": message_id, "RowKey": "message"}
    messages.update_entity({**row, "Status": "scheduled"}, mode=UpdateMode.MERGE)
    try:
        with caplog.at_level(logging.WARNING, logger="shared.inbound.answers"):
            _reply("yes", number)
    finally:  # the suite shares one Azurite: a damaged row must not reach tests that list rows
        messages.update_entity({**row, "Status": "sent"}, mode=UpdateMode.MERGE)

    [event] = inbound.read(INBOUND_QUEUE)
    assert event["data"]["content"] == "yes"
    assert message_id in caplog.text
    assert number not in caplog.text  # the unreadable row's text is logged redacted
    # Taken as gone out (the question was asked): the reply answers it, never lost for good.
    assert QuestionStore.from_settings().open_question(TWO_WAY, number) is None
    answered = QuestionStore.from_settings().get(asked.body["QuestionId"])
    assert answered is not None
    assert answered.reply == "yes"


def test_a_question_whose_send_record_is_damaged_is_polled_and_replaced_without_a_5xx(
    inbound: Inbound,
) -> None:
    """The same unreadable send row: the question's status URL, and every new question to the
    number (ReplaceOpenQuestion too, the documented way out), answered 500 (found in review)."""
    number = "+358401239683"
    asked = _ask(inbound, number)
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)
    messages = table_client(MESSAGES_TABLE)
    row = {"PartitionKey": asked.body["MessageId"], "RowKey": "message"}
    messages.update_entity({**row, "Status": "scheduled"}, mode=UpdateMode.MERGE)
    try:
        polled = _poll(inbound, asked)
        replaced = inbound.call(
            "SendMessageAndWaitForReply", "POST", headers={"Service-Id": TWO_WAY},
            body={"Sender": "Clinic", "Content": "Another question", "Recipient": number,
                  "ReplaceOpenQuestion": True},
        )  # fmt: skip
        after = _poll(inbound, asked)
    finally:
        messages.update_entity({**row, "Status": "sent"}, mode=UpdateMode.MERGE)

    assert (polled.status, polled.body["Status"]) == (202, "open")  # read as gone out
    assert replaced.status == 202, replaced.body
    assert (after.status, after.body["Status"]) == (200, "replaced"), after.body


@pytest.mark.parametrize("later", [0, 8 * 86400], ids=["replay", "after-its-claim-expired"])
def test_a_keyed_question_whose_send_record_is_damaged_is_asked_again_without_a_5xx(
    inbound: Inbound, manual_clock: ManualClock, later: int
) -> None:
    """Its request again under its key: a replay re-accepted its send (reading the row), and a
    30-day question's request after its key's 7-day claim expired looked for an unsent send to
    adopt (reading it too): both answered 500 (found in a second read of the fix above)."""
    number = "+358401239684" if later else "+358401239685"
    key = f"damaged-{later}"
    body = {"Sender": "Clinic", "Content": "Reply YES or NO", "Recipient": number,
            "Options": ["Yes", "No"], "TimeoutSeconds": 30 * 86400}  # fmt: skip
    headers = {"Service-Id": TWO_WAY, "Idempotency-Key": key}
    asked = inbound.call("SendMessageAndWaitForReply", "POST", headers=headers, body=body)
    assert asked.status == 202, asked.body
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)
    manual_clock.advance(later)
    messages = table_client(MESSAGES_TABLE)
    row = {"PartitionKey": asked.body["MessageId"], "RowKey": "message"}
    messages.update_entity({**row, "Status": "scheduled"}, mode=UpdateMode.MERGE)
    try:
        again = inbound.call("SendMessageAndWaitForReply", "POST", headers=headers, body=body)
    finally:
        messages.update_entity({**row, "Status": "sent"}, mode=UpdateMode.MERGE)

    # A replay answers its question; past its key's claim, the open question is a 409.
    assert again.status == (409 if later else 202), again.body
    assert inbound.count(OUTBOUND_QUEUE) == 0  # nothing sent again


def test_a_questions_blank_optional_fields_are_left_out_and_a_blank_answer_is_refused(
    inbound: Inbound,
) -> None:
    """The designer writes "" for an empty dynamic value: RepromptContent "" and Protocol ""
    were a 400 though blank optional fields are left out (docs/actions.md). A blank accepted
    answer is no answer anyone can give: a 400 naming it, nothing asked."""
    number = "+358401234591"
    asked = _ask(inbound, number, RepromptContent=" ", Protocol="")
    question = QuestionStore.from_settings().get(asked.body["QuestionId"])
    assert question is not None
    assert (question.reprompt, question.protocol) == (None, "SMS")
    sent = inbound.call(
        "SendMessage", "POST", headers={"Service-Id": TWO_WAY},
        body={"Sender": "Clinic", "Content": "Hi", "Protocol": " ",
              "Recipients": [{"Address": "+358401234590"}]},
    )  # fmt: skip
    assert sent.status == 202, sent.body

    refused = inbound.call(
        "SendMessageAndWaitForReply", "POST", headers={"Service-Id": TWO_WAY},
        body={"Sender": "Clinic", "Content": "Reply YES or NO", "Recipient": "+358401234589",
              "Options": ["Yes", " "]},
    )  # fmt: skip

    assert refused.status == 400, refused.body
    assert [e["field"] for e in refused.body["errors"]] == ["Options[1]"]
    assert QuestionStore.from_settings().open_question(TWO_WAY, "+358401234589") is None


@pytest.mark.parametrize(
    ("customer", "service"), [("1002", "s-1002-twoway"), ("1001", ONE_WAY)], ids=["2-way", "1-way"]
)
def test_a_question_on_a_service_whose_replies_do_not_reach_us_is_refused(
    inbound: Inbound, customer: str, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No New Message webhook on the service (none can be on a 1-way one): the flow got 202,
    the patient's reply never reached us, and the question timed out. A 400 naming Service-Id
    instead, nothing asked or queued; its problem has its request's ``instance`` and the log
    line names the field (a refusal answered rather than raised was logged "(ok)")."""
    number = "+358401234588"
    with caplog.at_level(logging.INFO, "smartdialog.actions"):
        refused = inbound.call(
            "SendMessageAndWaitForReply", "POST",
            headers={"Customer-Id": customer, "Service-Id": service, "x-request-id": "ask-1"},
            body={"Sender": "Clinic", "Content": "Reply YES or NO", "Recipient": number},
        )  # fmt: skip

    assert refused.status == 400, refused.body
    assert refused.body["instance"] == "urn:smartdialog-functions:request:ask-1"
    [line] = [r.getMessage() for r in caplog.records if "request ask-1" in r.getMessage()]
    assert "answered 400" in line
    assert "(invalid fields: Service-Id)" in line
    assert [e["field"] for e in refused.body["errors"]] == ["Service-Id"]
    assert "RegisterInboundWebhook" in refused.body["detail"]
    assert QuestionStore.from_settings().open_question(service, number) is None
    assert inbound.count(OUTBOUND_QUEUE) == 0


def test_a_question_past_the_content_cap_is_400_naming_content_and_nothing_is_queued(
    inbound: Inbound,
) -> None:
    from shared.outbound import MAX_CONTENT_CHARS

    body = {
        "Sender": "Clinic",
        "Content": "?" * (MAX_CONTENT_CHARS + 1),
        "Recipient": "+358401234567",
    }
    asked = inbound.call(
        "SendMessageAndWaitForReply", "POST", headers={"Service-Id": TWO_WAY}, body=body
    )

    assert asked.status == 400, asked.body
    assert [e["field"] for e in asked.body["errors"]] == ["Content"]
    assert queue_client(OUTBOUND_QUEUE).get_queue_properties().approximate_message_count == 0
    assert _sends(inbound) == 0


def _cancelled_reprompt(store: MessageStore, question_id: str) -> None:
    record = store.get(reprompt_message_id(question_id))
    assert record is not None
    assert record.status is MessageStatus.CANCELLED
    events = [json.loads(m.content) for m in queue_client(EVENTS_QUEUE).peek_messages(32)]
    assert f"{record.message_id}:cancelled" in {e["id"] for e in events}


def test_a_re_prompt_carries_its_questions_customer_data(inbound: Inbound) -> None:
    """Found in review: the re-prompt carried ``question=<id>`` as its CustomerData (our marker),
    which SmartDialog keeps and the delivery-report and send-failed triggers hand a flow, in
    place of the question's own (a flow reading ``reminders:17`` got the marker)."""
    number = "+358401234776"
    _ask(inbound, number, CustomerData="reminders:17", RepromptContent="Sorry, reply YES or NO")
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)
    _reply("maybe", number)
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)

    sent = [(r["body"]["Content"], r["body"].get("CustomerData"))
            for r in inbound.sandbox.state.snapshot("requests")
            if r["operationId"] == "SendMessage"]  # fmt: skip
    assert sent == [("Reply YES or NO", "reminders:17"), ("Sorry, reply YES or NO", "reminders:17")]


def test_a_re_prompt_still_queued_when_the_right_reply_answers_is_cancelled_not_sent(
    inbound: Inbound,
) -> None:
    """'maybe' queued the re-prompt; the sender was behind; 'Yes' answered: the flow went on,
    then the patient got 'please reply YES or NO' (and may have answered the next question)."""
    number = "+358401234777"
    asked = _ask(inbound, number, RepromptContent="Sorry, please reply YES or NO.")
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)  # the question goes out
    _reply("maybe", number)  # re-prompt queued; the sender is behind
    _reply("Yes", number)

    ended = _poll(inbound, asked)
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)

    assert (ended.status, ended.body["Status"], ended.body["MatchedOption"]) == (
        200, "answered", "Yes"
    )  # fmt: skip
    assert _sends(inbound) == 1  # the question alone
    _cancelled_reprompt(MessageStore.from_settings(), asked.body["QuestionId"])


def _as_queued_by_the_release_before(command: str) -> str:
    """A re-prompt's command as the release before queued it: no ``questionId``, its
    CustomerData ``question=<id>`` in place of the question's."""
    value = json.loads(command)
    value["body"]["CustomerData"] = f"question={value.pop('questionId')}"
    return json.dumps(value)


@pytest.mark.parametrize("release", ["this", "before"])
def test_a_re_prompt_queued_while_another_worker_answers_its_question_is_never_sent(
    inbound: Inbound, release: str
) -> None:
    """'maybe' and 'Yes' handled at once (the intake runs 16 at a time): 'maybe' found the
    question open and queued its re-prompt; 'Yes' ended it before 'maybe' could mark it."""
    number = "+358401234778"
    asked = _ask(inbound, number, RepromptContent="Sorry, please reply YES or NO.")
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)
    question = QuestionStore.from_settings().open_question(TWO_WAY, number)
    assert question is not None
    command = reprompt_command(question)
    if release == "before":
        command = _as_queued_by_the_release_before(command)
    queue_client(OUTBOUND_QUEUE).send_message(command)  # 'maybe's
    _reply("Yes", number)
    done = QuestionStore.from_settings().get(question.question_id)
    assert done is not None
    assert (done.status, done.reprompted) == (QuestionStatus.ANSWERED, False)

    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)

    assert _sends(inbound) == 1
    _cancelled_reprompt(MessageStore.from_settings(), asked.body["QuestionId"])


def test_a_re_prompt_whose_first_attempt_certainly_failed_is_cancelled_once_answered(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """Its first attempt was throttled (429: nothing sent) and it waited out the backoff; 'Yes'
    answered meanwhile: the retry sent 'please reply YES or NO' all the same."""
    from sandbox.faults import FaultKind, FaultPlan

    number = "+358401234779"
    asked = _ask(inbound, number, RepromptContent="Sorry, please reply YES or NO.")
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)
    _reply("maybe", number)
    inbound.sandbox.app.faults.configure(
        FaultPlan(rate=1.0, kinds=(FaultKind.THROTTLED,), retry_after=1)
    )
    outbound = queue_client(OUTBOUND_QUEUE)
    [message] = outbound.receive_messages(messages_per_page=1)  # the re-prompt: 429
    inbound.queue_function("OutboundSender", message.content, message.dequeue_count, message.id)
    outbound.delete_message(message)
    inbound.sandbox.app.faults.configure(FaultPlan())
    record = MessageStore.from_settings().get(reprompt_message_id(asked.body["QuestionId"]))
    assert record is not None
    assert (record.status, record.attempts, record.maybe_sent) == (MessageStatus.QUEUED, 1, False)
    _reply("Yes", number)
    manual_clock.advance(31)

    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=60)

    assert _sends(inbound) == 1
    _cancelled_reprompt(MessageStore.from_settings(), asked.body["QuestionId"])


def test_a_re_prompt_is_never_packed_with_another_questions() -> None:
    """Found in a second read: once re-prompts carried their question's CustomerData in place
    of a marker unique to each, two questions' re-prompts of the same text shared a pack key.
    A leader then took another's re-prompt into its pack after that question had ended (the
    sender checks only its own), and "please reply YES or NO" went out after the answer."""
    from shared.messages._questions import QuestionRecord, new_question_id
    from shared.outbound import normalize, pack_key, parse_outbound_message

    now = utcnow()

    def reprompt_of(number: str) -> str:
        question = QuestionRecord(
            question_id=new_question_id(TWO_WAY, number), service_id=TWO_WAY, address=number,
            message_id=f"m{number[-3:]}", created_at=now, expires_at=now + dt.timedelta(hours=1),
            options=("Yes", "No"), reprompt="Please reply YES or NO", sender="Clinic",
            protocol="SMS", customer_id="1001",
        )  # fmt: skip
        return reprompt_command(question)

    def key(text: str) -> str | None:
        command = parse_outbound_message(text)
        return pack_key(normalize(command, message_id=command.messageId, customer_id=None,
                                  service_id=None))  # fmt: skip

    numbers = ("+358401239101", "+358401239102")
    assert [key(reprompt_of(n)) for n in numbers] == [None, None]  # each goes alone
    # the release before's (its marker in CustomerData): a key of its own each, as before
    before = {key(_as_queued_by_the_release_before(reprompt_of(n))) for n in numbers}
    assert len(before) == 2


def _take_outbound(inbound: Inbound) -> str:
    """Run the sender once on the visible outbound queue message (deleted); its text."""
    client = queue_client(OUTBOUND_QUEUE)
    [message] = client.receive_messages(messages_per_page=1, visibility_timeout=30)
    inbound.queue_function("OutboundSender", message.content, message.dequeue_count, message.id)
    client.delete_message(message)
    return str(message.content)


def test_a_claim_handed_back_unsent_is_no_time_its_text_could_have_gone_out(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """Found in a second read: the first claim recorded ClaimedAt also when it was handed back
    without a call (the quota full), so a message received after that and before the text went
    out (pushing the quota is when it happens) still answered the question."""
    from shared import quota
    from shared.quota import QuotaDenied
    from tests.outbound.conftest import clear_quota

    number = "+358401234593"
    asked = _ask(inbound, number, Options=[])  # any reply answers
    manual_clock.advance(40)  # past the first question's hold
    inbound.configure(QUOTA_CALLS=1, QUOTA_PERIOD_SECONDS=60, SEND_QUOTA_WAIT_SECONDS=0)
    while not isinstance(quota.from_settings(get_settings()).try_acquire(), QuotaDenied):
        pass  # the quota is full
    command = _take_outbound(inbound)  # claimed, no slot: handed back, nothing sent
    send = MessageStore.from_settings().get(asked.body["MessageId"])
    assert send is not None
    assert (send.status, send.attempts, send.claimed_at) == (MessageStatus.QUEUED, 0, None)

    manual_clock.advance(10)
    unrelated = intake_text("Running 10 min late, sorry", number)  # the text has not gone out
    manual_clock.advance(30)
    clear_quota()  # slots free
    inbound.configure(QUOTA_CALLS=2000)
    queue_client(OUTBOUND_QUEUE).clear_messages()  # its copy, run here at once
    inbound.queue_function("OutboundSender", command)
    assert _sends(inbound) == 1
    InboundProcessor.from_settings(get_settings()).process(unrelated)  # handled after

    assert _poll(inbound, asked).body["Status"] == "open"


def test_a_message_smartdialog_got_before_the_text_went_out_redelivered_after_answers_nothing(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """Found in a second read: the rule compared this copy's receipt time, so a message that
    SmartDialog got before the text went out, its webhook call retried (our outage, a lost
    answer) and delivered after, answered. SmartDialog's timestamp counts too."""
    import uuid

    from shared.inbound._models import InboundIntake, NewMessagePayload

    number = "+358401234592"
    asked = _ask(inbound, number, Options=[])
    manual_clock.advance(20)
    written = utcnow()  # SmartDialog gets it now; our webhook does not answer
    manual_clock.advance(20)
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=90)  # the text goes out
    manual_clock.advance(60)  # SmartDialog's retry reaches us
    payload = NewMessagePayload.model_validate({
        "sender": number, "recipient": "Clinic", "content": "Running 10 min late, sorry",
        "timestamp": written.isoformat(), "messageId": str(uuid.uuid4()),
    })  # fmt: skip
    intake = InboundIntake(service=TWO_WAY, messageKey=str(payload.messageId),
                           receivedAt=utcnow(), payload=payload)  # fmt: skip
    InboundProcessor.from_settings(get_settings()).process(intake.model_dump_json())

    assert _poll(inbound, asked).body["Status"] == "open"


def _lost_answer(monkeypatch: pytest.MonkeyPatch, times: int = 1) -> None:
    """SmartDialog takes the next ``times`` sends; a gateway's 502 comes back for each."""
    from shared.outbound._attempt import Upstream
    from shared.smartdialog import InternalServerError
    from tests.bulk.test_driver_partial_writes import _answer

    real_send, left = Upstream.send, [times]

    def send(self: Upstream, command: Any) -> Any:
        answer = real_send(self, command)  # the text goes out...
        if left[0] > 0:
            left[0] -= 1
            raise _answer(InternalServerError, 502, "Bad Gateway")  # ...its answer is lost
        return answer

    monkeypatch.setattr(Upstream, "send", send)


@pytest.mark.parametrize("handed_back", [False, True], ids=["sent", "handed-back-first"])
def test_a_reply_to_a_text_that_went_out_before_a_forced_redrive_answers(
    inbound: Inbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch, handed_back: bool
) -> None:
    """Found in a second read: a re-drive sets attempts to 0, so a hand-back of its first claim
    after it read as a first claim's and forgot ClaimedAt; the repeat then set a later one, and
    a reply to the text that had gone out before the re-drive, handled after, answered nothing."""
    from shared import quota
    from shared.quota import QuotaDenied
    from tests.outbound.conftest import clear_quota

    number = "+358401234581"
    asked = _ask(inbound, number, Options=[])
    manual_clock.advance(40)
    inbound.configure(SEND_MAX_ATTEMPTS=1)
    _lost_answer(monkeypatch)
    command = _take_outbound(inbound)  # it went out; failed outcome-unknown
    store = MessageStore.from_settings()
    failed = store.get(asked.body["MessageId"])
    assert failed is not None
    manual_clock.advance(10)
    reply = intake_text("Yes, see you then", number)  # the answer, held up in our queue
    manual_clock.advance(60)
    later = utcnow() + dt.timedelta(hours=1)
    assert store.redrive(failed, now=utcnow(), valid_until=later) is not None  # forced
    inbound.configure(QUOTA_CALLS=1, QUOTA_PERIOD_SECONDS=60, SEND_QUOTA_WAIT_SECONDS=0)
    if handed_back:
        while not isinstance(quota.from_settings(get_settings()).try_acquire(), QuotaDenied):
            pass  # the quota is full
        inbound.queue_function("OutboundSender", command)  # claimed, no slot: handed back
    manual_clock.advance(30)
    clear_quota()
    inbound.configure(QUOTA_CALLS=2000)
    queue_client(OUTBOUND_QUEUE).clear_messages()
    inbound.queue_function("OutboundSender", command)  # the repeat: 409, sent
    again = store.get(asked.body["MessageId"])
    assert again is not None
    assert (again.status, again.claimed_at) == (MessageStatus.SENT, failed.claimed_at)
    InboundProcessor.from_settings(get_settings()).process(reply)

    assert _poll(inbound, asked).body["Status"] == "answered"


def test_a_reply_to_a_text_the_previous_release_tried_answers_after_the_retry(
    inbound: Inbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in a second read: a row the release before wrote has no ClaimedAt; its first claim
    after the upgrade stamped its own time although the text may have gone out at the earlier
    attempt, so a reply received between the two, handled after, answered nothing."""
    number = "+358401234582"
    asked = _ask(inbound, number, Options=[])
    manual_clock.advance(40)
    _lost_answer(monkeypatch)
    command = _take_outbound(inbound)  # it went out; backs off, maybe sent
    store = MessageStore.from_settings()
    tried = store.get(asked.body["MessageId"])
    assert tried is not None
    assert store.swap(tried, claimed_at=None) is not None  # as the release before wrote it
    manual_clock.advance(5)
    reply = intake_text("Yes, see you then", number)  # held up across the deployment
    manual_clock.advance(120)  # past the back-off
    inbound.queue_function("OutboundSender", command)
    InboundProcessor.from_settings(get_settings()).process(reply)

    assert _poll(inbound, asked).body["Status"] == "answered"
