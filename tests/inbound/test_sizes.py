"""Inbound sizes: a webhook body up to 1 MB is accepted and published whole (its intake message
by reference, its event on smartdialog-inbound in parts that each fit a queue message, and to
each New Message subscriber in one POST, its delivery by reference); above 1 MB, 413, no trace."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from shared import names
from shared.inbound import MESSAGE_RECEIVED, new_nonce, webhook_url
from shared.payloads import QUEUE_MESSAGE_LIMIT, PayloadStore, queue_message_bytes
from shared.settings import get_settings
from shared.storage import ensured_queue, queue_client
from tests.fixtures.sandbox import CallbackReceiver
from tests.inbound.conftest import TWO_WAY, Inbound
from tests.inbound.test_subscriptions import simulate_inbound, subscribe
from tests.inbound.test_webhook import assert_no_trace, payload, post, token_for

EMOJI = "\U0001f600"


def texts(queue: str) -> list[str]:
    """Every message on ``queue``, left there."""
    client = queue_client(queue)
    return [m.content for m in client.peek_messages(max_messages=32)]


def taken(queue: str) -> list[str]:
    """Every message on ``queue``, taken off it (more than a peek's 32)."""
    client = queue_client(queue)
    out: list[str] = []
    while batch := list(client.receive_messages(messages_per_page=32, visibility_timeout=60)):
        for message in batch:
            out.append(message.content)
            client.delete_message(message)
    return out


def whole(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """A message put back together from its parts (the data of its events or deliveries)."""
    ordered = sorted(parts, key=lambda p: p["part"])
    assert [p["part"] for p in ordered] == list(range(1, len(ordered) + 1))
    assert {p["parts"] for p in ordered} == {len(ordered)}
    first = ordered[0]
    joined = dict(first)
    joined["content"] = "".join(p["content"] for p in ordered)
    joined["attachments"] = [
        {
            key: "".join(p["attachments"][index].get(key, "") for p in ordered)
            for key in first["attachments"][index]
        }
        for index in range(len(first["attachments"]))
    ]
    return joined


def test_20000_emoji_from_smartdialog_are_accepted_and_reach_the_queue_and_a_subscriber_whole(
    served: Inbound, callback_receiver: CallbackReceiver
) -> None:
    subscribe(served, f"{callback_receiver.url}/flow")
    content = EMOJI * 20_000  # 80,000 bytes of UTF-8

    result = simulate_inbound(served, content)  # SmartDialog's POST, through the dev host
    [delivery] = result["deliveries"]  # type: ignore[misc]
    assert delivery["status"] == 202  # was 500: the intake message was too large
    [intake] = texts(names.INBOUND_INTAKE_QUEUE)
    assert queue_message_bytes(intake) <= QUEUE_MESSAGE_LIMIT
    assert "payloadBlob" in json.loads(intake)

    assert served.process_intake() == 1
    events = taken(names.INBOUND_QUEUE)
    assert len(events) >= 2
    assert max(queue_message_bytes(e) for e in events) <= QUEUE_MESSAGE_LIMIT
    parsed = [json.loads(e) for e in events]
    assert {e["type"] for e in parsed} == {MESSAGE_RECEIVED}
    assert len({e["id"] for e in parsed}) == len(parsed)
    assert whole([e["data"] for e in parsed])["content"] == content

    [delivery_text] = texts(names.INBOUND_DELIVERIES_QUEUE)  # one, not one per part
    assert queue_message_bytes(delivery_text) <= QUEUE_MESSAGE_LIMIT
    assert "event" not in json.loads(delivery_text)  # by reference
    assert served.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher") == 1
    # One invocation made every POST before it returned (the answer comes after the body).
    [call] = callback_receiver.calls
    data = json.loads(call.body)
    assert data["content"] == content
    assert (data["part"], data["parts"]) == (1, 1)
    assert call.headers["ce-id"] == f"{TWO_WAY}:{data['messageId']}"  # the message's, no part


@pytest.mark.parametrize(
    "attachments",
    [
        [{"name": "n" * 100_000, "mimeType": "image/jpeg", "resourceLocation": "x"}],
        [{"name": f"{i:02d}" + "\u00e9" * 9_900, "mimeType": "text/plain"} for i in range(50)],
    ],
    ids=["one-100-KB-name", "almost-1-MB-of-names"],
)
def test_a_large_body_up_to_1_mb_is_accepted_and_published_whole(
    inbound: Inbound, callback_receiver: CallbackReceiver, attachments: list[dict[str, str]]
) -> None:
    subscribe(inbound, f"{callback_receiver.url}/flow")
    body = payload(content='See attached "files" <here> & there', attachments=attachments)
    raw = json.dumps(body, ensure_ascii=False).encode()
    assert len(raw) <= 1024 * 1024

    answer = post(inbound, raw, token=token_for())

    assert answer.status == 202, answer.body
    [intake] = texts(names.INBOUND_INTAKE_QUEUE)
    assert queue_message_bytes(intake) <= QUEUE_MESSAGE_LIMIT
    assert inbound.process_intake() == 1
    events = taken(names.INBOUND_QUEUE)
    assert max(queue_message_bytes(e) for e in events) <= QUEUE_MESSAGE_LIMIT
    data = whole([json.loads(e)["data"] for e in events])
    assert data["content"] == body["content"]
    assert data["attachments"] == attachments
    assert data["messageId"] == body["messageId"]

    assert inbound.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher") == 1
    [call] = callback_receiver.calls
    posted = json.loads(call.body)
    assert posted["attachments"] == attachments  # the 100 KB name whole, in one POST
    assert posted["content"] == body["content"]
    assert (posted["part"], posted["parts"]) == (1, 1)


def test_a_body_over_1_mb_is_refused_413_with_its_reason_and_leaves_no_trace(
    served: Inbound,
) -> None:
    body = payload(attachments=[{"name": "n" * 1_100_000}])

    response = httpx.post(webhook_url(get_settings(), TWO_WAY, new_nonce()), json=body, timeout=30)

    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 413
    assert "1,048,576" in problem["detail"]
    assert_no_trace(served)


def test_an_over_1_mb_body_with_a_forged_token_is_still_401(inbound: Inbound) -> None:
    body = json.dumps(payload(content="x", messageId=str(uuid.uuid4()))).encode() + b" " * 2**20
    assert post(inbound, body, token="v1.0.forged").status == 401
    assert_no_trace(inbound)


def test_a_refused_delivery_of_20000_quotes_makes_one_dead_letter_that_fits(
    inbound: Inbound, callback_receiver: CallbackReceiver
) -> None:
    callback_receiver.status = 404  # the subscriber refuses: the delivery is dead-lettered
    subscribe(inbound, f"{callback_receiver.url}/flow")
    content = '"' * 20_000  # 40,000 bytes once in JSON, 80,000 quoted again

    assert post(inbound, payload(content=content), token=token_for()).status == 202
    assert inbound.process_intake() == 1
    assert inbound.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher") == 1

    [letter] = taken(names.INBOUND_DEAD_LETTER_QUEUE)
    assert queue_message_bytes(letter) <= QUEUE_MESSAGE_LIMIT
    assert json.loads(letter)["reason"] == "rejected"
    delivery = json.loads(json.loads(letter)["original"])
    stored = PayloadStore.from_settings().get(delivery["eventBlob"])  # what replay would POST
    assert stored is not None
    assert json.loads(stored)["data"]["content"] == content
    assert json.loads(callback_receiver.calls[0].body)["content"] == content


@pytest.mark.parametrize(
    ("content", "name"),
    [
        ("<&>" * 6_000, None),  # XML escaping: 4 to 5 bytes a character
        ("\u0001" * 20_000, None),  # JSON escaping: 6 bytes a character, 7 quoted again
        ("a", "\U0001f600" * 200_000),  # 800 KB of emoji in one attachment name
    ],
    ids=["markup", "control-characters", "emoji-name"],
)
def test_message_received_parts_fit_and_put_back_together_whatever_the_characters(
    content: str, name: str | None
) -> None:
    import datetime as dt

    from shared.inbound import InboundAttachmentData, InboundMessageData
    from shared.inbound._webhook import received_events

    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    data = InboundMessageData(
        sender="+358401234567",
        recipient="+358501234567",
        content=content,
        attachments=[InboundAttachmentData(name=name, mimeType="image/png")] if name else [],
        messageId="m-1",
        service=TWO_WAY,
        receivedAt=now,
    )

    events = [e.to_json() for e in received_events(data, event_id="s:m-1", subject="m-1", time=now)]

    assert len(events) >= 2
    assert max(queue_message_bytes(json.dumps(e, ensure_ascii=False)) for e in events) <= (
        QUEUE_MESSAGE_LIMIT
    )
    joined = whole([json.loads(e)["data"] for e in events])
    assert joined["content"] == content
    assert [a.get("name") for a in joined["attachments"]] == ([name] if name else [])


@pytest.mark.parametrize(
    ("function", "dead_letters"),
    [
        ("InboundDispatcher", names.INBOUND_DEAD_LETTER_QUEUE),
        ("DlrForwarder", names.DLR_FORWARD_DEAD_LETTER_QUEUE),
        ("CloudEventsQueue", names.CLOUD_EVENTS_DEAD_LETTER_QUEUE),
    ],
)
def test_a_malformed_message_too_large_once_escaped_is_dead_lettered_by_reference(
    inbound: Inbound, function: str, dead_letters: str
) -> None:
    ensured_queue(dead_letters)
    taken(dead_letters)  # not every dead-letter queue is emptied between tests
    text = '"' * 40_000  # fits its own queue; quoted in a letter, it would not fit that one
    inbound.queue_function(function, text)  # was RequestBodyTooLarge on every attempt

    [letter] = taken(dead_letters)
    assert queue_message_bytes(letter) <= QUEUE_MESSAGE_LIMIT
    parsed = json.loads(letter)
    assert "original" not in parsed
    assert parsed["originalBytes"] == len(text)
    assert PayloadStore.from_settings().get(parsed["originalBlob"]) == text


@pytest.mark.parametrize(
    ("function", "dead_letters"),
    [
        ("OutboundSender", names.OUTBOUND_DEAD_LETTER_QUEUE),
        ("InboundDispatcher", names.INBOUND_DEAD_LETTER_QUEUE),
        ("DlrForwarder", names.DLR_FORWARD_DEAD_LETTER_QUEUE),
        ("CloudEventsQueue", names.CLOUD_EVENTS_DEAD_LETTER_QUEUE),
    ],
)
def test_a_message_nested_deeper_than_the_parser_follows_is_dead_lettered_not_raised(
    inbound: Inbound, function: str, dead_letters: str
) -> None:
    ensured_queue(dead_letters)
    taken(dead_letters)
    text = "[" * 30_000 + "]" * 30_000  # json.loads raises RecursionError, not ValueError
    inbound.queue_function(function, text)  # raised: the host retried it into poison, no reason

    [letter] = taken(dead_letters)
    assert json.loads(letter)["reason"] == "malformed"
