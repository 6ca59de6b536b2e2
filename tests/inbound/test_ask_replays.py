"""A repeated SendMessageAndWaitForReply (the same Idempotency-Key or RequestId), through the real
action against Azurite: a replay answers its own question and asks nothing; another request under
the key (other terms, a plain send) is a 422; a question whose request died before its send was
accepted is sent by a keyed retry, and never ended by the next question (it may still be sent)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from shared.clock import ManualClock, utcnow
from shared.inbound import InboundProcessor, WebhookRegistry
from shared.messages import (
    IdempotencyStore,
    MessageStatus,
    MessageStore,
    QuestionRecord,
    QuestionStatus,
    QuestionStore,
    idempotency_key_hash,
    new_question_id,
)
from shared.names import OUTBOUND_QUEUE
from shared.outbound import (
    OutboundMessage,
    OutboundMessageAdapter,
    SendService,
    request_fingerprint,
    send_service,
)
from shared.outbound._service import outbound_queue
from shared.settings import get_settings
from tests.crash import crash_once
from tests.fixtures.clock import manual_clock
from tests.inbound.conftest import CUSTOMER, TWO_WAY, HttpAnswer, Inbound, intake_text

__all__ = ["manual_clock"]

NUMBER = "+358401234567"
QUESTION = {"Sender": "Clinic", "Content": "Reply YES or NO", "Recipient": NUMBER}


@pytest.fixture(autouse=True)
def _webhook(inbound: Inbound) -> None:
    """Questions are asked on a service whose replies reach us."""
    inbound.register_webhook()


def _ask(env: Inbound, key: str | None = None, **extra: Any) -> HttpAnswer:
    headers = {"Service-Id": TWO_WAY, **({"Idempotency-Key": key} if key else {})}
    body = {**QUESTION, "Options": ["Yes", "No"], **extra}
    return env.call("SendMessageAndWaitForReply", "POST", headers=headers, body=body)


def _send(env: Inbound, key: str) -> HttpAnswer:
    """A plain SendMessage of the question's text to its number."""
    body = {"Sender": "Clinic", "Content": QUESTION["Content"], "Recipients": [{"Address": NUMBER}]}
    headers = {"Service-Id": TWO_WAY, "Idempotency-Key": key}
    return env.call("SendMessage", "POST", headers=headers, body=body)


def _went_out(env: Inbound) -> None:
    """The sender sends what is queued: a reply answers a question only once its text went out."""
    env.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=90)


def _reply(content: str) -> None:
    InboundProcessor.from_settings(get_settings()).process(intake_text(content, NUMBER))


def _open() -> QuestionRecord | None:
    return QuestionStore.from_settings().open_question(TWO_WAY, NUMBER)


@pytest.mark.parametrize("header", [True, False], ids=["Idempotency-Key", "RequestId"])
def test_a_replay_after_its_question_ended_answers_that_question_and_asks_nothing(
    inbound: Inbound, header: bool
) -> None:
    key = f"booking-{uuid.uuid4().hex}"
    ask = (lambda: _ask(inbound, key)) if header else (lambda: _ask(inbound, RequestId=key))
    first = ask()
    assert first.status == 202, first.body
    _went_out(inbound)
    _reply("yes")
    queued = inbound.count(OUTBOUND_QUEUE)

    again = ask()

    assert again.status == 200, again.body
    assert again.body["QuestionId"] == first.body["QuestionId"]
    assert (again.body["Status"], again.body["MatchedOption"]) == ("answered", "Yes")
    assert _open() is None  # nothing waits, so the next reply answers nothing
    assert inbound.count(OUTBOUND_QUEUE) == queued


def test_a_replay_answers_its_ended_question_while_another_request_s_is_open(
    inbound: Inbound,
) -> None:
    """The 409 for another open question comes before any claim, but not for a key that asked
    a question: its replay still answers that question."""
    key = f"booking-{uuid.uuid4().hex}"
    first = _ask(inbound, key)
    _went_out(inbound)
    _reply("yes")
    assert _ask(inbound).status == 202  # another flow asks the number meanwhile

    again = _ask(inbound, key)

    assert again.status == 200, again.body
    assert (again.body["QuestionId"], again.body["MatchedOption"]) == (
        first.body["QuestionId"],
        "Yes",
    )
    assert _ask(inbound, key, Options=["A", "B"]).status == 422
    assert _ask(inbound, f"other-{uuid.uuid4().hex}").status == 409


def test_a_replay_while_its_question_is_open_answers_it_and_queues_nothing(
    inbound: Inbound,
) -> None:
    key = f"booking-{uuid.uuid4().hex}"
    first = _ask(inbound, key)
    queued = inbound.count(OUTBOUND_QUEUE)

    replays = [_ask(inbound, key) for _ in range(2)]

    assert [r.status for r in replays] == [202, 202]
    assert {r.body["QuestionId"] for r in replays} == {first.body["QuestionId"]}
    # (its token is signed anew, with an expiry a second later once the clock ticks on)
    status_url = first.headers["Location"].split("?")[0]
    assert {r.headers["Location"].split("?")[0] for r in replays} == {status_url}
    assert inbound.count(OUTBOUND_QUEUE) == queued


@pytest.mark.parametrize(
    "other",
    [
        {"Options": ["A", "B"]},
        {"TimeoutSeconds": 60},
        {"RepromptContent": "Please reply YES or NO."},
    ],
    ids=lambda other: next(iter(other)),
)
def test_the_key_of_a_question_with_other_terms_is_422(
    inbound: Inbound, other: dict[str, Any]
) -> None:
    key = f"booking-{uuid.uuid4().hex}"
    first = _ask(inbound, key)
    queued = inbound.count(OUTBOUND_QUEUE)

    refused = _ask(inbound, key, **other)

    assert refused.status == 422, refused.body
    assert [e["field"] for e in refused.body["errors"]] == ["Idempotency-Key"]
    assert "Location" not in refused.headers
    still = _open()
    assert still is not None
    assert still.question_id == first.body["QuestionId"]
    assert inbound.count(OUTBOUND_QUEUE) == queued


def test_a_retry_refused_409_after_a_500_may_replace_the_open_question(
    inbound: Inbound,
) -> None:
    """ReplaceOpenQuestion says how to treat another open question, not what is asked: the
    retry of a 500 that got 409 (another question was asked meanwhile) replaces it under the
    same key, and a replay of that question with or without it answers it."""
    key = f"booking-{uuid.uuid4().hex}"

    with pytest.MonkeyPatch.context() as patch:
        crash_once(patch, outbound_queue(get_settings()), "send_message", "the queue is down",
                   error=_refused_by_the_service)  # fmt: skip
        # our storage failed (503), nothing queued: its question ended, key kept
        assert _ask(inbound, key).status == 503
    other = _ask(inbound)
    assert other.status == 202, other.body
    assert _ask(inbound, key).status == 409

    replacing = _ask(inbound, key, ReplaceOpenQuestion=True)

    assert replacing.status == 202, replacing.body
    replaced = QuestionStore.from_settings().get(other.body["QuestionId"])
    assert replaced is not None
    assert replaced.replaced_by == replacing.body["QuestionId"]
    assert MessageStore.from_settings().get(replacing.body["MessageId"]) is not None
    for flag in (False, True):
        again = _ask(inbound, key, ReplaceOpenQuestion=flag)
        assert (again.status, again.body["QuestionId"]) == (202, replacing.body["QuestionId"])


def _refused_by_the_service(message: str) -> HttpResponseError:
    """A 403 from the queue service: it stored nothing."""
    refused = HttpResponseError(message)
    refused.status_code = 403
    return refused


@pytest.mark.parametrize("error", [ServiceResponseError, ServiceRequestError])
def test_an_enqueue_whose_answer_was_lost_leaves_its_question_open(
    inbound: Inbound, error: type[Exception]
) -> None:
    """The queue service may have stored a message whose answer never came, also when the last
    of the storage SDK's own tries did not reach it (an earlier one may have): the 500 ended
    the question, and the text the sender then found and sent answered nothing, while a
    keyless retry asked a second question."""
    with pytest.MonkeyPatch.context() as patch:
        crash_once(patch, outbound_queue(get_settings()), "send_message", "no answer came",
                   error=error)  # fmt: skip
        failed = _ask(inbound)
    retry = _ask(inbound)

    assert failed.status == 503, failed.body
    assert failed.body["type"].endswith(":storage-unavailable")
    still = _open()
    assert still is not None
    assert still.status is QuestionStatus.OPEN
    assert retry.status == 409, retry.body  # the open one is named, nothing asked twice
    assert retry.body["openQuestionId"] == still.question_id


def test_a_key_used_by_a_plain_send_is_422_for_a_question_and_the_other_way_round(
    inbound: Inbound,
) -> None:
    sent_key, asked_key = f"send-{uuid.uuid4().hex}", f"ask-{uuid.uuid4().hex}"
    assert _send(inbound, sent_key).status == 202
    queued = inbound.count(OUTBOUND_QUEUE)

    refused = _ask(inbound, sent_key)

    assert refused.status == 422, refused.body
    assert _open() is None
    assert inbound.count(OUTBOUND_QUEUE) == queued
    asked = _ask(inbound, asked_key)
    assert asked.status == 202, asked.body
    assert _send(inbound, asked_key).status == 422


def _question_send() -> OutboundMessage:
    """The send of QUESTION, as the previous release's ask made it (and fingerprinted it)."""
    body = {"Sender": "Clinic", "Content": QUESTION["Content"], "Protocol": "SMS"}
    return OutboundMessageAdapter.validate_python(
        {
            "operation": "SendMessage",
            "customerId": CUSTOMER,
            "serviceId": TWO_WAY,
            "body": {**body, "Recipients": [{"Address": NUMBER}]},
        }
    )


def _asked_by_the_previous_release(key: str, message_id: str | None = None) -> QuestionRecord:
    """QUESTION recorded under ``key`` as the previous release recorded it: before it claimed
    the key (which it did when it accepted the question's send; ec7daff claimed it before, for
    ``message_id``)."""
    now = utcnow()
    return QuestionStore.from_settings(get_settings()).create(
        QuestionRecord(
            question_id=new_question_id(TWO_WAY, NUMBER),
            service_id=TWO_WAY,
            address=NUMBER,
            message_id=message_id or str(uuid.uuid4()),
            created_at=now,
            expires_at=now + dt.timedelta(days=1),  # _ask's default TimeoutSeconds
            options=("Yes", "No"),
            sender="Clinic",
            protocol="SMS",
            customer_id=CUSTOMER,
            request_key=idempotency_key_hash(CUSTOMER, key),
        )
    )


def test_a_replay_of_a_question_asked_before_the_upgrade_answers_that_question(
    inbound: Inbound,
) -> None:
    """The previous release recorded the question, then accepted its send under the key (the
    claim has the send's fingerprint): a replay after the deploy answers that question."""
    key = f"booking-{uuid.uuid4().hex}"
    asked = _asked_by_the_previous_release(key)
    send_service(get_settings()).accept(
        _question_send(), idempotency_key=key, message_id=asked.message_id
    )
    queued = inbound.count(OUTBOUND_QUEUE)

    again = _ask(inbound, key)

    assert again.status == 202, again.body
    assert (again.body["QuestionId"], again.body["MessageId"]) == (
        asked.question_id,
        asked.message_id,
    )
    assert inbound.count(OUTBOUND_QUEUE) == queued
    assert _ask(inbound, key, Content="Something else?").status == 422
    _went_out(inbound)
    _reply("no")
    assert _ask(inbound, key).body["MatchedOption"] == "No"


def _dies_before_its_send(env: Inbound, key: str | None) -> str:
    """Ask, the process dying between recording the question and accepting its send; the
    question left open."""

    def die(*args: Any, **kwargs: Any) -> None:
        raise SystemExit("the worker died")  # not an Exception: nothing ends the question

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SendService, "accept", die)
        with pytest.raises(SystemExit):
            _ask(env, key)
    orphan = _open()
    assert orphan is not None
    return orphan.question_id


def _sends(env: Inbound, message_id: str) -> int:
    """SendMessage calls of our message ``message_id`` the sandbox has answered so far."""
    requests = env.sandbox.state.snapshot("requests")
    return sum(
        1
        for r in requests
        if r["operationId"] == "SendMessage"
        and (r.get("body") or {}).get("RequestId") == message_id
    )


def test_a_question_whose_send_was_queued_but_not_recorded_is_never_ended_by_the_next_one(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """The send's command is queued before its record is written, and the sender records one it
    finds unrecorded: a question with no send record, however old, may still be sent (a queue
    backed up; a request still running after the platform gave up on it), so the next question
    to the number is a 409, not a second question."""

    def die(*args: Any, **kwargs: Any) -> None:
        raise SystemExit("the worker died after queueing the send, before recording it")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MessageStore, "create", die)
        with pytest.raises(SystemExit):
            _ask(inbound)
    orphan = _open()
    assert orphan is not None
    manual_clock.advance(10 * 60)  # the sender has not come to it yet

    blocked = _ask(inbound)

    assert blocked.status == 409, blocked.body
    assert blocked.body["openQuestionId"] == orphan.question_id
    inbound.run_queue(OUTBOUND_QUEUE, "OutboundSender", timeout=90)
    assert _sends(inbound, orphan.message_id) == 1  # the one question, once
    record = MessageStore.from_settings().get(orphan.message_id)
    assert record is not None
    assert record.status is MessageStatus.SENT
    still = _open()
    assert still is not None
    assert still.question_id == orphan.question_id  # its reply answers it
    replaced = _ask(inbound, ReplaceOpenQuestion=True)  # docs/flows.md: the way out
    assert replaced.status == 202, replaced.body


def test_a_keyed_retry_of_a_question_never_sent_sends_it(inbound: Inbound) -> None:
    key = f"booking-{uuid.uuid4().hex}"
    orphan = _dies_before_its_send(inbound, key)
    queued = inbound.count(OUTBOUND_QUEUE)

    retried = _ask(inbound, key)

    assert retried.status == 202, retried.body
    assert retried.body["QuestionId"] == orphan
    assert MessageStore.from_settings().get(retried.body["MessageId"]) is not None
    assert inbound.count(OUTBOUND_QUEUE) == queued + 1


@pytest.mark.parametrize("key", [None, "booking-500"], ids=["no key", "Idempotency-Key"])
def test_a_500_after_its_send_was_queued_leaves_its_question_open_and_sends_it_once(
    inbound: Inbound, manual_clock: ManualClock, key: str | None
) -> None:
    """The send's command was queued, then its record could not be written (500): the sender
    records and sends it, so its question stays open for the reply to that text. A retry
    without a key gets the 409 naming it (it used to ask a second question, and send a second
    text, which the reply then answered); one with the key answers it as a replay."""
    key = key and f"{key}-{uuid.uuid4().hex}"
    with pytest.MonkeyPatch.context() as patch:
        crash_once(patch, MessageStore, "create", "the table failed after the enqueue")
        assert _ask(inbound, key).status == 500
    asked = _open()
    assert asked is not None

    retried = _ask(inbound, key)

    if key is None:
        assert (retried.status, retried.body["openQuestionId"]) == (409, asked.question_id)
    else:
        assert (retried.status, retried.body["QuestionId"]) == (202, asked.question_id)
    _went_out(inbound)
    assert _sends(inbound, asked.message_id) == 1
    _reply("yes")
    answered = QuestionStore.from_settings().get(asked.question_id)
    assert answered is not None
    assert (answered.status, answered.matched_option) == (QuestionStatus.ANSWERED, "Yes")


@pytest.mark.parametrize("replace", [False, True], ids=["409", "ReplaceOpenQuestion"])
def test_a_replay_that_ends_an_expired_question_answers_the_one_its_first_request_asked(
    inbound: Inbound, manual_clock: ManualClock, replace: bool
) -> None:
    """A replay read the number's partition while another flow's question, past its timeout,
    was open; its first request then ended that one and asked its own before the replay
    claimed the key. The replay ends the expired one too and reads the open one again: its
    own, which it answers (it used to answer 409 naming it, or replace it)."""
    stale = _ask(inbound, TimeoutSeconds=60)
    _went_out(inbound)  # (a send still on its way would keep it open until it is final)
    manual_clock.advance(600)  # past its timeout and grace, still open: nobody polled it
    key = f"booking-{uuid.uuid4().hex}"
    real = IdempotencyStore.claim
    started, first = [], []

    def claim(self: IdempotencyStore, *args: Any, **kwargs: Any) -> Any:
        if not started:  # the replay read the partition; its first request runs whole now
            started.append(True)
            first.append(_ask(inbound, key, ReplaceOpenQuestion=replace))
        return real(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(IdempotencyStore, "claim", claim)
        replay = _ask(inbound, key, ReplaceOpenQuestion=replace)

    assert first[0].status == 202, first[0].body
    asked = first[0].body["QuestionId"]
    assert (replay.status, replay.body.get("QuestionId")) == (202, asked), replay.body
    now_open = _open()
    assert now_open is not None
    assert now_open.question_id == asked
    ended = QuestionStore.from_settings().get(stale.body["QuestionId"])
    assert ended is not None
    assert ended.status is QuestionStatus.TIMED_OUT


def test_a_key_reused_for_another_number_is_that_number_s_409_first_else_422(
    inbound: Inbound,
) -> None:
    """The 409 for another request's open question reads only the asked number's partition
    (one round trip): a key that asked another number is not known there (docs/flows.md)."""
    key = f"booking-{uuid.uuid4().hex}"
    assert _ask(inbound, key).status == 202
    busy, free = "+358401234568", "+358401234569"
    assert _ask(inbound, Recipient=busy).status == 202  # another flow's question is open there

    assert _ask(inbound, key, Recipient=busy).status == 409
    assert _ask(inbound, key, Recipient=free).status == 422


def test_a_retry_that_reaches_an_instance_of_the_previous_release_is_its_replay(
    inbound: Inbound,
) -> None:
    """During a deploy a flow's retry may reach an instance of the previous release, which
    finds its question open and accepts its send again under the key: a replay only if the
    claim's fingerprint is its send's (else a 422). The question's terms are kept beside it,
    and still tell another question under the key."""
    key = f"booking-{uuid.uuid4().hex}"
    first = _ask(inbound, key)
    assert first.status == 202, first.body

    sends = request_fingerprint(_question_send())
    now = dt.datetime.now(dt.UTC)
    claim = IdempotencyStore.from_settings().claim(  # as the previous release's accept claims
        idempotency_key_hash(CUSTOMER, key), str(uuid.uuid4()), sends,
        now=now, ttl=dt.timedelta(days=1),
    )  # fmt: skip
    assert (claim.new, claim.message_id) == (False, first.body["MessageId"])
    assert claim.fingerprint == sends
    assert _ask(inbound, key).status == 202
    assert _ask(inbound, key, TimeoutSeconds=600).status == 422
    assert _send(inbound, key).status == 422


def test_a_retry_of_a_question_the_previous_release_recorded_but_never_sent_sends_it(
    inbound: Inbound,
) -> None:
    """The previous release's request died between recording its question and accepting its
    send (which claimed the key): the retry is that question's request, and sends it once."""
    key = f"booking-{uuid.uuid4().hex}"
    asked = _asked_by_the_previous_release(key)
    queued = inbound.count(OUTBOUND_QUEUE)

    retried = _ask(inbound, key)

    assert retried.status == 202, retried.body
    assert (retried.body["QuestionId"], retried.body["MessageId"]) == (
        asked.question_id,
        asked.message_id,
    )
    assert MessageStore.from_settings().get(asked.message_id) is not None
    assert inbound.count(OUTBOUND_QUEUE) == queued + 1
    assert _ask(inbound, key).status == 202  # a replay now: nothing more is queued
    assert inbound.count(OUTBOUND_QUEUE) == queued + 1


def test_a_retry_of_a_question_whose_claim_has_its_terms_in_its_fingerprint_is_its_replay(
    inbound: Inbound,
) -> None:
    """The release deployed before (ec7daff) claimed an ask's key with the question's terms in
    its Fingerprint and no AskFingerprint, then recorded the question and accepted its send:
    after the deploy the flow's exact retry is its replay; other terms, or a plain send, 422."""
    key = f"booking-{uuid.uuid4().hex}"
    terms = {"Options": ["Yes", "No"], "TimeoutSeconds": 86_400, "RepromptContent": None}
    claim = IdempotencyStore.from_settings().claim(  # as ec7daff's AskService._claim did
        idempotency_key_hash(CUSTOMER, key), str(uuid.uuid4()),
        request_fingerprint(_question_send(), terms),
        now=dt.datetime.now(dt.UTC), ttl=dt.timedelta(days=7),
    )  # fmt: skip
    asked = _asked_by_the_previous_release(key, claim.message_id)
    send_service(get_settings()).accept(
        _question_send(), idempotency_key=key, message_id=asked.message_id, claim=claim
    )
    queued = inbound.count(OUTBOUND_QUEUE)

    retried = _ask(inbound, key)

    assert retried.status == 202, retried.body
    assert (retried.body["QuestionId"], retried.body["MessageId"]) == (
        asked.question_id,
        asked.message_id,
    )
    assert inbound.count(OUTBOUND_QUEUE) == queued
    assert _ask(inbound, key, TimeoutSeconds=600).status == 422
    assert _send(inbound, key).status == 422


@pytest.mark.parametrize(
    "other",
    [
        {"Options": ["A", "B"]},
        {"TimeoutSeconds": 600},
        {"RepromptContent": "Please reply YES or NO."},
        {"Sender": "Dentist"},
    ],
    ids=lambda other: next(iter(other)),
)
def test_another_request_under_the_key_of_a_question_never_sent_does_not_take_it_over(
    inbound: Inbound, other: dict[str, Any]
) -> None:
    """A question recorded under the key and never sent is the key's request: another request
    under it (what the question's row records differs: not its text) is a 422, and sends
    nothing (it used to send its text as that question). The exact retry still sends it."""
    key = f"booking-{uuid.uuid4().hex}"
    asked = _asked_by_the_previous_release(key)
    queued = inbound.count(OUTBOUND_QUEUE)

    refused = _ask(inbound, key, **other)

    assert refused.status == 422, refused.body
    assert MessageStore.from_settings().get(asked.message_id) is None
    assert inbound.count(OUTBOUND_QUEUE) == queued
    retried = _ask(inbound, key)  # the key is free again for its own request
    assert (retried.status, retried.body.get("QuestionId")) == (202, asked.question_id)
    assert inbound.count(OUTBOUND_QUEUE) == queued + 1


def test_a_question_sent_whose_key_is_forgotten_is_the_409_of_a_new_request(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """A question may wait 30 days, its key is remembered 7: a request with the key after that
    is a new request (docs/flows.md), and the open question it did not ask is its 409 (it used
    to be taken for that question's, and its send queued again)."""
    key = f"booking-{uuid.uuid4().hex}"
    first = _ask(inbound, key, TimeoutSeconds=2_592_000, Content="Reply YES or NO by May")
    assert first.status == 202, first.body
    manual_clock.advance(get_settings().idempotency_ttl_seconds + 60)
    queued = inbound.count(OUTBOUND_QUEUE)

    later = _ask(inbound, key, TimeoutSeconds=2_592_000)

    assert (later.status, later.body.get("openQuestionId")) == (409, first.body["QuestionId"])
    assert inbound.count(OUTBOUND_QUEUE) == queued


def test_a_retry_of_a_question_never_sent_and_past_its_timeout_asks_anew(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """Nothing ends a question nobody polls: one past its timeout (and the grace for a reply on
    its way) is ended timed out by the retry, which asks anew; its text never goes out."""
    key = f"booking-{uuid.uuid4().hex}"
    dead = _asked_by_the_previous_release(key)
    manual_clock.advance((dead.expires_at - dead.created_at).total_seconds() + 120)

    retried = _ask(inbound, key)

    assert retried.status == 202, retried.body
    assert retried.body["QuestionId"] != dead.question_id
    ended = QuestionStore.from_settings().get(dead.question_id)
    assert ended is not None
    assert ended.status is QuestionStatus.TIMED_OUT
    assert MessageStore.from_settings().get(dead.message_id) is None


def test_a_question_never_sent_whose_retry_is_refused_ends_failed(inbound: Inbound) -> None:
    """The number opted out (STOP) before the retry sends the question the earlier release
    recorded: the retry's 422 ends it, as a new question's refused send does, and frees the
    key; it used to stay open, with no send, until its timeout."""
    key = f"booking-{uuid.uuid4().hex}"
    _reply("STOP")
    asked = _asked_by_the_previous_release(key)  # recorded while the STOP was on its way

    refused = _ask(inbound, key)

    assert refused.status == 422, refused.body
    assert [e["field"] for e in refused.body["errors"]] == ["Recipient"]
    ended = QuestionStore.from_settings().get(asked.question_id)
    assert ended is not None
    assert (ended.status, ended.failure_code) == (QuestionStatus.FAILED, "refused")
    assert _open() is None
    _reply("START")
    assert _ask(inbound, key).status == 202  # asked anew under its key


def test_a_duplicate_during_the_retry_s_handover_does_not_send_the_question_twice(
    inbound: Inbound,
) -> None:
    """The retry that sends a question never sent moves its new claim to that question's send
    in one write: the key is never free meanwhile, so a duplicate cannot take it over too (it
    used to be released, then claimed again: both requests queued the send)."""
    key = f"booking-{uuid.uuid4().hex}"
    asked = _asked_by_the_previous_release(key)
    queued = inbound.count(OUTBOUND_QUEUE)
    duplicate: list[HttpAnswer] = []

    def handing_over(real: Any, *, before: bool) -> Any:
        def hook(self: IdempotencyStore, *args: Any, **kwargs: Any) -> Any:
            if duplicate:
                return real(self, *args, **kwargs)
            duplicate.append(HttpAnswer(0, {}, {}))  # runs once, not again from within
            result = None if before else real(self, *args, **kwargs)
            duplicate[0] = _ask(inbound, key)
            return real(self, *args, **kwargs) if before else result

        return hook

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(IdempotencyStore, "release", handing_over(IdempotencyStore.release,
                                                               before=False))  # fmt: skip
        if hasattr(IdempotencyStore, "move"):
            patch.setattr(IdempotencyStore, "move", handing_over(IdempotencyStore.move,
                                                                 before=True))  # fmt: skip
        retried = _ask(inbound, key)

    assert (retried.status, retried.body.get("QuestionId")) == (202, asked.question_id)
    assert duplicate[0].status in (202, 409), duplicate[0].body
    assert inbound.count(OUTBOUND_QUEUE) == queued + 1


def test_a_replay_after_the_webhook_was_unregistered_answers_its_open_question(
    inbound: Inbound,
) -> None:
    """The 400 for a service without a New Message webhook came before the replay lookup: a
    retry of an accepted ask (its 202 lost) after the webhook was unregistered got 400 while
    its question stayed open. Only a new question is refused, and its key is free again."""
    key = f"k-{uuid.uuid4().hex}"
    first = _ask(inbound, key)
    assert first.status == 202, first.body
    for registration in WebhookRegistry.from_settings().list(TWO_WAY):
        route = {"Service": TWO_WAY, "ActionId": registration.action_id}
        gone = inbound.call("UnregisterInboundWebhook", "DELETE", route_params=route)
        assert gone.status in (200, 204), gone.body

    again = _ask(inbound, key)
    other = f"k-{uuid.uuid4().hex}"
    refused = _ask(inbound, other, ReplaceOpenQuestion=True)

    assert (again.status, again.body["QuestionId"]) == (202, first.body["QuestionId"])
    assert refused.status == 400, refused.body
    assert [e["field"] for e in refused.body["errors"]] == ["Service-Id"]
    still = _open()
    assert still is not None
    assert still.question_id == first.body["QuestionId"]
    inbound.register_webhook()
    asked = _ask(inbound, other, ReplaceOpenQuestion=True, Options=["Yes", "No", "Maybe"])
    assert asked.status == 202, asked.body  # its key was released: not another request's 422
