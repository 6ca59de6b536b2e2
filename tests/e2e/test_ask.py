"""Send a message and wait for a reply, end to end: the action through the dev host, the send to
the sandbox, the recipient's reply from the sandbox's ``/sandbox/inbound`` to our webhook, the
processor matching it, and the question's status URL (as a flow polls it)."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

from shared.clock import ManualClock
from shared.messages import MessageRecord, MessageStore
from tests.crash import crash_once
from tests.e2e.conftest import TWO_WAY_SERVICE, Stack, poll
from tests.fixtures.clock import manual_clock

__all__ = ["manual_clock"]

REJECTED_NUMBER = "+358400000002"  # the sandbox refuses sends to it (400)


def _number() -> str:
    """A recipient of its own (questions are one per service + number)."""
    return f"+35840{random.randint(1_000_000, 9_999_999)}"


_registered: set[int] = set()


def _register(stack: Stack) -> None:
    """Our webhook, registered once per stack (each registration gets every reply)."""
    if id(stack) in _registered:
        return
    response = stack.http.post(f"{stack.api}/inbound/webhooks/{TWO_WAY_SERVICE}")
    assert response.status_code in (200, 201), response.text
    _registered.add(id(stack))


def _ask(stack: Stack, number: str, **extra: Any) -> httpx.Response:
    _register(stack)  # a question needs it: refused without
    body = {
        "Sender": "Clinic",
        "Content": "Your appointment is tomorrow at 10. Reply YES to confirm or NO to cancel.",
        "Recipient": number,
        "Options": ["Yes", "No"],
        **extra,
    }
    response = stack.http.post(
        f"{stack.api}/questions", json=body, headers={"Service-Id": TWO_WAY_SERVICE}
    )
    if response.status_code == 202:  # a reply answers a question once its text went out
        store, message_id = MessageStore.from_settings(), response.json()["MessageId"]
        poll(lambda: _final(store.get(message_id)), what="the question's send")
    return response


def _final(record: MessageRecord | None) -> bool:
    return record is not None and record.status.is_final


def _reply(stack: Stack, number: str, content: str) -> dict[str, Any]:
    response = stack.http.post(
        f"{stack.sandbox.url}/sandbox/inbound",
        json={
            "sender": number,
            "recipient": "Clinic",
            "content": content,
            "service": TWO_WAY_SERVICE,
        },
    )
    assert response.status_code == 200, response.text
    delivered = dict(response.json())
    assert [d["status"] for d in delivered["deliveries"]] == [202], delivered
    return delivered


def _ended(stack: Stack, location: str) -> httpx.Response:
    def probe() -> httpx.Response | None:
        response = stack.http.get(location)
        assert response.status_code != 500, response.text
        return response if response.status_code != 202 else None

    return poll(probe, what="the question to end")


def _sends_to(stack: Stack, number: str) -> list[dict[str, Any]]:
    return [
        m
        for m in stack.sandbox_get("/sandbox/messages")
        if m.get("direction") == "outbound" and number in str(m)
    ]


def test_an_answer_ends_the_question_with_the_reply_and_the_option_it_matched(
    stack: Stack,
) -> None:
    _register(stack)
    number = _number()
    asked = _ask(stack, number)
    assert asked.status_code == 202, asked.text
    location = asked.headers["Location"]
    assert location.startswith(f"{stack.api}/questions/q")
    waiting = stack.http.get(location)
    assert waiting.status_code == 202
    assert waiting.headers["Retry-After"] == "60"  # SMARTDIALOG_QUESTION_POLL_SECONDS
    poll(lambda: _sends_to(stack, number), what="the question's send")

    _reply(stack, number, "  yés ")  # accents, case and spaces do not matter

    answer = _ended(stack, location)
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["Status"] == "answered"
    assert doc["Reply"] == "  yés "
    assert doc["MatchedOption"] == "Yes"
    assert doc["RepliedAt"]
    assert doc["TimedOut"] is False
    assert doc["OptedOut"] is False


def test_a_wrong_answer_is_re_prompted_once_then_the_right_one_ends_it(stack: Stack) -> None:
    _register(stack)
    number = _number()
    reprompt = "Sorry, please reply YES or NO."
    location = _ask(stack, number, RepromptContent=reprompt).headers["Location"]
    poll(lambda: _sends_to(stack, number), what="the question's send")

    _reply(stack, number, "maybe")
    poll(
        lambda: [m for m in _sends_to(stack, number) if reprompt in str(m)],
        what="the re-prompt",
    )
    _reply(stack, number, "perhaps")  # a second wrong answer: no second re-prompt
    assert stack.http.get(location).status_code == 202
    _reply(stack, number, "NO")

    doc = _ended(stack, location).json()
    assert (doc["Status"], doc["MatchedOption"], doc["Reply"]) == ("answered", "No", "NO")
    assert len([m for m in _sends_to(stack, number) if reprompt in str(m)]) == 1


def test_without_a_reply_the_question_times_out(stack: Stack, manual_clock: ManualClock) -> None:
    number = _number()
    location = _ask(stack, number, TimeoutSeconds=120).headers["Location"]
    manual_clock.advance(119)
    assert stack.http.get(location).status_code == 202
    manual_clock.advance(2)
    # A reply received before the timeout may still be in the intake queue: a minute's grace.
    assert stack.http.get(location).status_code == 202
    manual_clock.advance(60)

    answer = stack.http.get(location)
    assert answer.status_code == 200, answer.text
    assert answer.json()["TimedOut"] is True
    assert answer.json()["Status"] == "timed_out"
    # A reply after the timeout changes nothing.
    _register(stack)
    _reply(stack, number, "yes")
    assert stack.http.get(location).json()["Status"] == "timed_out"


def test_stop_ends_the_question_as_opted_out(stack: Stack) -> None:
    _register(stack)
    number = _number()
    location = _ask(stack, number).headers["Location"]
    _reply(stack, number, "stop")
    doc = _ended(stack, location).json()
    assert doc["OptedOut"] is True
    assert doc["Status"] == "opted_out"
    # The number opted out: a new question is refused (422 naming it) and leaves nothing open.
    for _ in range(2):
        refused = _ask(stack, number)
        assert refused.status_code == 422, refused.text
        assert [e["field"] for e in refused.json()["errors"]] == ["Recipient"]


def test_a_question_whose_send_fails_ends_with_the_failure_not_a_timeout(stack: Stack) -> None:
    location = _ask(stack, REJECTED_NUMBER, ReplaceOpenQuestion=True).headers["Location"]
    failed = _ended(stack, location)
    assert failed.status_code == 422, failed.text
    assert failed.headers["content-type"].startswith("application/problem+json")
    assert failed.json()["questionId"] in location
    assert "TimedOut" not in failed.json()


def test_a_second_question_is_409_naming_the_open_one_unless_it_replaces_it(
    stack: Stack,
) -> None:
    _register(stack)
    number = _number()
    first = _ask(stack, number)
    first_id = first.json()["QuestionId"]

    second = _ask(stack, number, Content="Another question?")
    assert second.status_code == 409, second.text
    assert second.json()["openQuestionId"] == first_id
    assert first_id in second.json()["detail"]

    third = _ask(stack, number, ReplaceOpenQuestion=True)
    assert third.status_code == 202, third.text
    replaced = stack.http.get(first.headers["Location"]).json()
    assert replaced["Status"] == "replaced"
    assert replaced["ReplacedBy"] == third.json()["QuestionId"]
    _reply(stack, number, "yes")
    assert _ended(stack, third.headers["Location"]).json()["MatchedOption"] == "Yes"


def test_a_reply_delivered_twice_ends_one_question_once(stack: Stack) -> None:
    _register(stack)
    number = _number()
    first = _ask(stack, number).headers["Location"]
    delivered = _reply(stack, number, "yes")
    assert _ended(stack, first).json()["Status"] == "answered"

    # The next question is asked; SmartDialog now retries the first reply (same messageId):
    # the processor de-duplicates it, so it does not answer the new question.
    second = _ask(stack, number)
    assert second.status_code == 202, second.text
    again = stack.http.post(delivered["deliveries"][0]["endpointUrl"], json=delivered["payload"])
    assert again.status_code == 202
    poll(
        lambda: (
            stack.queue("smartdialog-inbound-intake")
            .get_queue_properties()
            .approximate_message_count
            == 0
        ),
        what="the intake queue to drain",
    )
    assert stack.http.get(second.headers["Location"]).status_code == 202


def test_bad_input_is_a_400_naming_the_field_and_asks_nothing(stack: Stack) -> None:
    number = _number()
    for extra, field in (
        ({"TimeoutSeconds": 2_592_001}, "TimeoutSeconds"),
        ({"Options": ["Yes", ""]}, "Options"),
        ({"Recipient": "not a number"}, "Recipient"),
    ):
        refused = _ask(stack, number, **extra)
        assert refused.status_code == 400, refused.text
        assert field in refused.text
    assert _sends_to(stack, number) == []
    # Nothing was left open: a valid question to the number is asked at once.
    assert _ask(stack, number).status_code == 202


def test_a_replayed_request_answers_the_same_question_and_sends_once(stack: Stack) -> None:
    number = _number()
    key = {"RequestId": f"booking-{random.randint(1, 10**12)}"}
    first = _ask(stack, number, **key)
    again = _ask(stack, number, **key)
    assert first.status_code == again.status_code == 202
    assert again.json()["QuestionId"] == first.json()["QuestionId"]
    poll(lambda: _sends_to(stack, number), what="the question's send")
    assert len(_sends_to(stack, number)) == 1


def test_a_different_request_under_a_questions_key_is_422_and_gets_no_status_url(
    stack: Stack,
) -> None:
    """Whoever knows (or guesses) the key must not get the open question's status URL, which
    shows the recipient's reply for 30 days, by sending anything under it."""
    number = _number()
    key = {"RequestId": f"booking-{random.randint(1, 10**12)}"}
    first = _ask(stack, number, **key)
    other = _ask(stack, number, Content="Something else?", **key)

    assert first.status_code == 202, first.text
    assert other.status_code == 422, other.text
    assert "Location" not in other.headers
    assert first.json()["QuestionId"] not in other.text


def test_two_questions_asked_at_once_send_one_and_the_other_is_409(stack: Stack) -> None:
    from concurrent.futures import ThreadPoolExecutor

    number = _number()
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda text: _ask(stack, number, Content=text), ["A?", "B?"]))
    assert sorted(a.status_code for a in answers) == [202, 409], [a.text for a in answers]
    poll(lambda: _sends_to(stack, number), what="the question's send")
    assert len(_sends_to(stack, number)) == 1


def test_a_retry_after_a_failed_first_try_waits_for_the_send_that_was_queued(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first try dies after its send is on the queue, before its record is written (500);
    # the caller retries with the same RequestId: the new question waits for that send.
    crash_once(monkeypatch, MessageStore, "create", "storage failed after the enqueue")
    number = _number()
    key = {"RequestId": f"retry-{random.randint(1, 10**12)}"}
    first = _ask(stack, number, **key)
    assert first.status_code == 500, first.text
    retried = _ask(stack, number, **key)
    assert retried.status_code == 202, retried.text
    message_id = retried.json()["MessageId"]
    store = MessageStore.from_settings()
    poll(lambda: store.get(message_id), what="the send's record (the sender records it)")
    assert len(poll(lambda: _sends_to(stack, number), what="the send")) == 1
