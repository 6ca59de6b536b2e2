"""What question matching costs the inbound processor, in storage round trips per event
(counted by shared.storage's counter against Azurite), and what it does once per reply."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import Counter
from dataclasses import replace

import pytest

from shared import storage
from shared.clock import ManualClock, utcnow
from shared.inbound import InboundProcessor
from shared.inbound import actions as inbound_actions
from shared.inbound._answers import QuestionAnswers, reprompt_command, reprompt_message_id
from shared.inbound._models import InboundIntake, NewMessagePayload
from shared.messages import (
    MessageRecord,
    MessageStatus,
    MessageStore,
    Operation,
    QuestionRecord,
    QuestionStatus,
    QuestionStore,
    new_question_id,
)
from shared.names import OUTBOUND_QUEUE
from shared.outbound import OutboundMessageAdapter, send_service
from shared.settings import get_settings
from shared.storage import StorageOp
from tests.fixtures.clock import manual_clock
from tests.inbound.conftest import CUSTOMER, TWO_WAY, Inbound, intake_text

__all__ = ["manual_clock"]

NUMBER = "+358401112233"


def _intake(content: str, sender: str = NUMBER, service: str = TWO_WAY) -> str:
    return intake_text(content, sender, service)


def _ask(
    number: str, service: str = TWO_WAY, *, sent: bool = True, **extra: object
) -> QuestionRecord:
    """An open question to ``number``, stored as the ask action stores one (the service is not
    marked as asking: as the previous release left its questions), and its send, ``sent``
    (else not recorded: a reply answers a question only once its text may have gone out)."""
    now = utcnow()
    record = QuestionRecord(
        question_id=new_question_id(service, number),
        service_id=service,
        address=number,
        message_id=str(uuid.uuid4()),
        created_at=now,
        expires_at=now + dt.timedelta(hours=1),
        sender="Clinic",
        protocol="SMS",
        **{"options": ("Yes", "No"), **extra},  # type: ignore[arg-type]
    )
    if sent:
        command = {"operation": "SendMessage", "messageId": record.message_id, "body": {}}
        send = MessageRecord(
            message_id=record.message_id,
            status=MessageStatus.SENT,
            operation=Operation.SEND_MESSAGE,
            customer_id=CUSTOMER,
            service_id=service,
            request_id=None,
            command=json.dumps(command),
            fingerprint="",
            created_at=now,
            updated_at=now,
            valid_until=record.expires_at,
            recipient_count=1,
            part_count=1,
        )
        MessageStore.from_settings().create(send, [])
    return QuestionStore.from_settings().create(record)


def _calls(counter: storage.RoundTrips, before: Counter[tuple[StorageOp, str]]) -> int:
    after = counter.snapshot()
    return sum((after - before).values())


@pytest.fixture
def counted(inbound: Inbound, monkeypatch: pytest.MonkeyPatch) -> storage.RoundTrips:
    monkeypatch.setattr(storage, "_round_trips", None)  # counting is off again afterwards
    QuestionStore.from_settings().table  # noqa: B018 - the table exists before counting
    return storage.count_round_trips()


def test_round_trips_per_event_with_and_without_question_matching(
    counted: storage.RoundTrips, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = get_settings()
    plain = InboundProcessor.from_settings(settings)
    plain.answers = None  # the processor as it was before questions
    matching = InboundProcessor.from_settings(settings)
    plain.process(_intake("warm up"))
    matching.process(_intake("warm up", sender="+358401112299"))

    costs: dict[str, int] = {}
    for name, processor, content in (
        ("before (no matching)", plain, "hello"),
        ("no question open", matching, "hello"),
    ):
        before = counted.snapshot()
        processor.process(_intake(content))
        costs[name] = _calls(counted, before)
    _ask(NUMBER)
    before = counted.snapshot()
    matching.process(_intake("yes"))
    costs["answers a question"] = _calls(counted, before)
    with capsys.disabled():
        print(f"\nprocessor storage round trips per inbound event: {costs}")

    assert costs["no question open"] == costs["before (no matching)"] + 1  # one query
    # + the question's send (was its text sent?) + one transaction
    assert costs["answers a question"] == costs["before (no matching)"] + 3
    assert costs["no question open"] <= 2  # the targets (+ the send's read)
    assert costs["answers a question"] <= 4
    question = QuestionStore.from_settings()
    assert question.open_question(TWO_WAY, NUMBER) is None


def _ask_action(env: Inbound, number: str, key: str | None = None) -> int:
    """SendMessageAndWaitForReply to ``number`` (under ``key``); its status."""
    headers = {"Service-Id": TWO_WAY, **({"Idempotency-Key": key} if key else {})}
    body = {"Sender": "Clinic", "Content": "Reply YES or NO", "Recipient": number,
            "Options": ["Yes", "No"]}  # fmt: skip
    return env.call("SendMessageAndWaitForReply", "POST", headers=headers, body=body).status


def test_round_trips_of_an_ask_answered_409_with_and_without_a_key(
    inbound: Inbound, counted: storage.RoundTrips, capsys: pytest.CaptureFixture[str]
) -> None:
    """A question refused because another is open reads that one (a key's ask in the same
    query also reads the questions its key asked, so a replay still answers its own) and its
    send (cancelled or failed, it no longer blocks): the key is claimed only when the ask goes
    on, so nothing is written or released."""
    inbound.configure()  # the app's cached clients are rebuilt, counted
    send_service.cache_clear()  # (settings equal by value would give an earlier test's back)
    inbound_actions._registry.cache_clear()  # (likewise)
    inbound.register_webhook()
    assert _ask_action(inbound, NUMBER) == 202  # the question the others find open
    costs: dict[str, int] = {}
    for name, key in (("no key", None), ("keyed", f"k-{uuid.uuid4().hex}")):
        before = counted.snapshot()
        assert _ask_action(inbound, NUMBER, key) == 409, name
        costs[name] = _calls(counted, before)
    with capsys.disabled():
        print(f"\nstorage round trips of an ask answered 409: {costs}")

    # a point read or a partition query; the send (the webhook's registrations are read only
    # for a question about to be asked)
    assert costs == {"no key": 2, "keyed": 2}


def test_a_reply_delivered_twice_ends_its_question_once_and_never_answers_the_next_one(
    inbound: Inbound,
) -> None:
    number = "+358401112266"
    first = _ask(number)
    processor = InboundProcessor.from_settings(get_settings())
    reply = _intake("Yes", sender=number)
    processor.process(reply)
    store = QuestionStore.from_settings()
    answered = store.get(first.question_id)
    assert answered is not None
    assert answered.status is QuestionStatus.ANSWERED
    second = _ask(number)  # the flow asks its next question
    processor.process(reply)  # SmartDialog delivers the first reply again
    assert store.get(first.question_id) == answered  # ended once
    still = store.open_question(TWO_WAY, number)
    assert still is not None
    assert still.question_id == second.question_id
    assert still.status is QuestionStatus.OPEN
    processor.process(_intake("No", sender=number))  # a new reply answers it
    done = store.get(second.question_id)
    assert done is not None
    assert (done.status, done.reply) == (QuestionStatus.ANSWERED, "No")


def test_a_reply_received_before_its_question_was_asked_does_not_answer_it(
    inbound: Inbound,
) -> None:
    """SmartDialog delivers again (or late) a reply the number sent before the flow asked its
    question: it is not that question's answer."""
    number = "+358401112277"
    payload = NewMessagePayload.model_validate(
        {"sender": number, "recipient": "Clinic", "content": "Yes", "messageId": "early-1"}
    )
    early = InboundIntake(service=TWO_WAY, messageKey="early-1", payload=payload,
                          receivedAt=utcnow() - dt.timedelta(minutes=1))  # fmt: skip
    asked = _ask(number)

    InboundProcessor.from_settings(get_settings()).process(early.model_dump_json())

    still = QuestionStore.from_settings().open_question(TWO_WAY, number)
    assert still is not None
    assert (still.question_id, still.status) == (asked.question_id, QuestionStatus.OPEN)


def test_a_copy_smartdialog_delivers_again_after_a_question_was_asked_does_not_answer_it(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """Each webhook copy has a receivedAt of its own; SmartDialog's timestamp, the message's own,
    tells a repeat of a message sent before the question (its answer to the first copy lost)."""
    number = "+358401112211"
    message = {"sender": number, "recipient": "Clinic", "content": "Book me for Tuesday"}
    payload = NewMessagePayload.model_validate(
        {**message, "messageId": str(uuid.uuid4()), "timestamp": utcnow().isoformat()}
    )

    def copy(of: NewMessagePayload) -> str:
        return InboundIntake(service=TWO_WAY, messageKey=str(of.messageId), receivedAt=utcnow(),
                             payload=of).model_dump_json(exclude_none=True)  # fmt: skip

    processor = InboundProcessor.from_settings(get_settings())
    processor.process(copy(payload))  # no question open yet
    manual_clock.advance(10)
    asked = _ask(number, options=())  # e.g. the New Message flow this message started asks
    manual_clock.advance(50)
    processor.process(copy(payload))  # SmartDialog's retry of the same message
    store = QuestionStore.from_settings()
    assert store.get(asked.question_id) == replace(asked, etag=None)  # still open, unanswered

    # A reply SmartDialog timestamps a moment before our clock (their clocks differ) answers; so
    # does one stamped in the future (a zone read wrong): its receipt time stands in.
    ahead = utcnow() + dt.timedelta(hours=2)
    for stamped, content in ((asked.created_at - dt.timedelta(seconds=2), "Sure"), (ahead, "Ok")):
        reply = payload.model_copy(
            update={"messageId": str(uuid.uuid4()), "timestamp": stamped, "content": content}
        )
        processor.process(copy(reply))
        done = store.get(asked.question_id)
        assert done is not None
        assert (done.status, done.reply) == (QuestionStatus.ANSWERED, content)
        asked = _ask(number, options=())


def test_a_reply_smartdialog_timestamps_far_behind_our_receipt_answers_its_question(
    inbound: Inbound,
) -> None:
    """A timestamp more than a day behind when the webhook got the copy (.NET's unset
    0001-01-01, a wrong date) is not when SmartDialog got it: every genuine reply looked
    written before its question, answered nothing, and the question timed out."""
    number = "+358401112212"
    processor = InboundProcessor.from_settings(get_settings())
    for stamp in ("0001-01-01T00:00:00", (utcnow() - dt.timedelta(days=2)).isoformat()):
        asked = _ask(number, options=())
        payload = NewMessagePayload.model_validate(
            {"sender": number, "recipient": "Clinic", "content": stamp,
             "messageId": str(uuid.uuid4()), "timestamp": stamp}
        )  # fmt: skip
        assert payload.utc_timestamp is not None  # read, not dropped as unreadable
        processor.process(
            InboundIntake(service=TWO_WAY, messageKey=str(payload.messageId), receivedAt=utcnow(),
                          payload=payload).model_dump_json(exclude_none=True)
        )  # fmt: skip
        done = QuestionStore.from_settings().get(asked.question_id)
        assert done is not None
        assert (done.status, done.reply) == (QuestionStatus.ANSWERED, stamp)


def test_a_reply_from_the_number_written_without_its_plus_answers_its_question(
    inbound: Inbound,
) -> None:
    number = "+358401112288"
    asked = _ask(number)
    InboundProcessor.from_settings(get_settings()).process(_intake("Yes", sender=number[1:]))
    done = QuestionStore.from_settings().get(asked.question_id)
    assert done is not None
    assert (done.status, done.reply) == (QuestionStatus.ANSWERED, "Yes")


def test_the_re_prompt_is_a_valid_send_command_queued_once_per_question(inbound: Inbound) -> None:
    number = "+358401112244"
    asked = _ask(number, reprompt="Please reply YES or NO")
    processor = InboundProcessor.from_settings(get_settings())
    for content in ("maybe", "perhaps"):
        processor.process(_intake(content, sender=number))
    commands = [c for c in inbound.read(OUTBOUND_QUEUE) if c.get("messageId")]
    assert len(commands) == 1
    assert commands[0]["messageId"] == reprompt_message_id(asked.question_id)
    parsed = OutboundMessageAdapter.validate_python(commands[0])
    assert parsed.body.Content == "Please reply YES or NO"  # type: ignore[union-attr]
    assert parsed.validUntil == asked.expires_at - dt.timedelta(minutes=5)  # as its text's
    # A processor that crashed after queueing and runs again queues the very same command
    # (in its own run's trace).
    queued = {k: v for k, v in commands[0].items() if k != "traceparent"}
    assert json.loads(reprompt_command(asked)) == queued
    current = QuestionStore.from_settings().open_question(TWO_WAY, number)
    assert current is not None
    assert current.reprompted
    assert current.status is QuestionStatus.OPEN


def test_matching_is_skipped_for_an_expired_question(inbound: Inbound) -> None:
    number = "+358401112255"
    _ask(number)
    answers = QuestionAnswers.from_settings(get_settings())
    payload = NewMessagePayload.model_validate(
        {"sender": number, "recipient": "Clinic", "content": "yes"}
    )
    late = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    assert answers.handle(TWO_WAY, "k", payload, None, late) == "none"
    assert answers.handle(TWO_WAY, "k", payload, None, dt.datetime.now(dt.UTC)) == "answered"


def test_a_photo_without_text_answers_a_question_that_accepts_any_reply(inbound: Inbound) -> None:
    """A WhatsApp photo has no content: it was no reply, so the question was re-prompted and
    waited for its timeout although 'accept any reply' was asked."""
    number = "+358401112255"
    asked = _ask(number, options=(), reprompt="Please send the photo")
    photo = {"name": "photo.jpg", "mimeType": "image/jpeg", "resourceLocation": "https://x/y"}
    message = {"sender": number, "recipient": "Clinic", "messageId": str(uuid.uuid4())}
    payload = NewMessagePayload.model_validate({**message, "attachments": [photo]})
    intake = InboundIntake(service=TWO_WAY, messageKey=str(payload.messageId),
                           receivedAt=utcnow(), payload=payload)  # fmt: skip
    InboundProcessor.from_settings(get_settings()).process(intake.model_dump_json())

    done = QuestionStore.from_settings().get(asked.question_id)
    assert done is not None
    assert (done.status, done.reply) == (QuestionStatus.ANSWERED, "")
    assert not [c for c in inbound.read(OUTBOUND_QUEUE) if c.get("messageId")]  # no re-prompt
