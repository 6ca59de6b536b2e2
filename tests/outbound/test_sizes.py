"""Sizes are ours to handle: every queue message, event and dead letter fits 64 KiB after
encoding, large parts go by reference, and a dead letter of a message fails its record.

Through Azurite (queues, tables and the blob container ``smartdialog-payloads``), the sandbox
and the app's real functions, as the rest of tests/outbound.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from shared.deadletters import DeadLetterFilter, DeadLetterIndex
from shared.messages import MessageStatus, MessageStore
from shared.names import EVENTS_QUEUE, OUTBOUND_DEAD_LETTER_QUEUE, OUTBOUND_QUEUE
from shared.outbound._models import request_message_id
from shared.payloads import QUEUE_MESSAGE_LIMIT, PayloadStore, queue_message_bytes
from shared.storage import queue_client
from tests.outbound.conftest import (
    CUSTOMER,
    ERROR,
    REJECTED,
    TEMPORARY,
    Outbound,
    call_http,
    padding,
    sms,
    status_of,
)


def addresses(count: int) -> list[str]:
    """``count`` distinct ordinary Finnish mobile numbers (none of the sandbox's magic ones)."""
    return [f"+35840{2_000_000 + i:07d}" for i in range(count)]


def personalised(count: int, note: str = "") -> dict[str, Any]:
    """A SendMessage body to ``count`` recipients, each with values of their own (and
    ``note``, when given, as a value too)."""
    body = sms(*addresses(count), content="Hello $(name), your code is $(code)")
    for index, recipient in enumerate(body["Recipients"]):
        recipient["Personalization"] = {"name": f"Customer {index}", "code": f"{index:06d}"}
        if note:
            recipient["Personalization"]["note"] = note
    return body


def all_messages(queue: str) -> list[str]:
    """Every message text on ``queue`` (taken off it: the queue is read to the end)."""
    client = queue_client(queue)
    texts: list[str] = []
    while True:
        batch = list(client.receive_messages(messages_per_page=32, visibility_timeout=60))
        if not batch:
            return texts
        for message in batch:
            texts.append(message.content)
            client.delete_message(message)


def largest(texts: list[str]) -> int:
    return max((queue_message_bytes(t) for t in texts), default=0)


def record(message_id: str) -> Any:
    found = MessageStore.from_settings().get(message_id)
    assert found is not None
    return found


def test_a_thousand_recipient_send_is_sent_with_every_event_under_64_kib_and_all_recipients(
    outbound: Outbound,
) -> None:
    to = addresses(1_000)
    body = sms(*to, content="Hello")
    for recipient in body["Recipients"]:
        recipient.pop("Personalization")
    accepted = call_http("SendMessage", "POST", body=body)
    assert accepted.status == 202, accepted.body

    outbound.drain(timeout=60)

    assert status_of(accepted.headers["Location"]).status == 200
    events = all_messages(EVENTS_QUEUE)
    assert largest(events) <= QUEUE_MESSAGE_LIMIT
    sent = [json.loads(e) for e in events]
    assert {e["type"] for e in sent} == {"fi.arena.smartdialog.message.sent"}
    assert len(sent) >= 2  # one event could not hold them all
    parts = sorted(sent, key=lambda e: e["data"]["part"])
    assert [e["data"]["part"] for e in parts] == list(range(1, len(parts) + 1))
    assert {e["data"]["parts"] for e in parts} == {len(parts)}
    assert len({e["id"] for e in parts}) == len(parts)
    assert {e["subject"] for e in parts} == {accepted.body["Id"]}
    covered = [r["address"] for e in parts for r in e["data"]["recipients"]]
    assert covered == to
    assert all(r["id"] for e in parts for r in e["data"]["recipients"])


def test_a_thousand_personalised_recipients_are_accepted_queued_by_reference_and_sent(
    outbound: Outbound,
) -> None:
    to = addresses(1_000)
    accepted = call_http("SendMessage", "POST", body=personalised(1_000))
    assert accepted.status == 202, accepted.body  # was 400: "too large to queue"

    queued = [m.content for m in queue_client(OUTBOUND_QUEUE).peek_messages(max_messages=32)]
    assert len(queued) == 1
    assert queue_message_bytes(queued[0]) <= QUEUE_MESSAGE_LIMIT
    stored = json.loads(queued[0])
    assert stored["kind"] == "stored"
    assert stored["messageId"] == accepted.body["Id"]
    whole = PayloadStore.from_settings().get(stored["payload"])
    assert whole is not None
    assert len(json.loads(whole)["body"]["Recipients"]) == 1_000

    outbound.drain(timeout=60)

    assert status_of(accepted.headers["Location"]).status == 200
    [call] = outbound.upstream()
    recipients = call["body"]["Recipients"]
    assert [r["Address"] for r in recipients] == to
    assert recipients[999]["Personalization"] == {"name": "Customer 999", "code": "000999"}
    assert largest(all_messages(EVENTS_QUEUE)) <= QUEUE_MESSAGE_LIMIT


def test_a_rejected_send_of_50_kb_of_quotes_makes_a_dead_letter_that_fits_and_fails_its_record(
    outbound: Outbound,
) -> None:
    body = sms(REJECTED, content="Hi")
    body["Recipients"][0]["Personalization"] = padding('"' * 50_000)
    accepted = call_http("SendMessage", "POST", body=body)
    assert accepted.status == 202, accepted.body

    outbound.drain(timeout=30)

    failed = record(accepted.body["Id"])
    assert failed.status is MessageStatus.FAILED
    assert failed.failure.code == "upstream-rejected"
    letters = all_messages(OUTBOUND_DEAD_LETTER_QUEUE)
    assert largest(letters) <= QUEUE_MESSAGE_LIMIT
    [letter] = [json.loads(t) for t in letters]
    assert letter["reason"] == "failed"
    assert "original" not in letter
    original = PayloadStore.from_settings().get(letter["originalBlob"])
    assert original is not None
    assert original == failed.command
    assert letter["originalBytes"] == len(original.encode())
    assert json.loads(original)["body"]["Recipients"] == body["Recipients"]
    [event] = [json.loads(t) for t in all_messages(EVENTS_QUEUE)]
    assert event["type"] == "fi.arena.smartdialog.message.failed"
    assert event["data"]["messageId"] == accepted.body["Id"]


def test_a_rejected_send_of_ascii_and_emoji_fails_with_its_dead_letter_and_event(
    outbound: Outbound,
) -> None:
    """The letter (its 45 kB command inline) is indexed in pieces of UTF-16 units: cut at
    30,000 characters, its first piece was ~35,000 units, the index row was refused
    (PropertyValueTooLarge), and neither the letter nor the failed event was ever sent."""
    # The index is shared by every test: only the letters written from now on (its first 100
    # rows, oldest first, may be other tests' once a run has written that many).
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    body = sms(REJECTED, content="Hi")
    body["Recipients"][0]["Personalization"] = padding(("abcde" + "\U0001f600") * 5_000)
    accepted = call_http("SendMessage", "POST", body=body)
    assert accepted.status == 202, accepted.body

    outbound.drain(timeout=30)

    failed = record(accepted.body["Id"])
    assert (failed.status, failed.failure.code) == (MessageStatus.FAILED, "upstream-rejected")
    assert failed.announced
    [letter] = [json.loads(t) for t in all_messages(OUTBOUND_DEAD_LETTER_QUEUE)]
    assert json.loads(letter["original"])["body"]["Recipients"] == body["Recipients"]
    where = DeadLetterFilter(queue=OUTBOUND_DEAD_LETTER_QUEUE, after=since)
    indexed = DeadLetterIndex.from_settings().matching(where, limit=100)
    assert [e.letter() for e in indexed if e.message_id == failed.message_id] == [letter]
    [event] = [json.loads(t) for t in all_messages(EVENTS_QUEUE)]
    assert event["type"] == "fi.arena.smartdialog.message.failed"


def test_a_queued_command_that_turned_malformed_fails_its_record_with_its_event(
    outbound: Outbound,
) -> None:
    # A value no command allows (an object; 1e999, which became null on the queue, is refused
    # at accept now, and null reads as empty text).
    accepted = call_http("SendMessage", "POST", body=sms("+358402000001"))
    assert accepted.status == 202
    message_id = accepted.body["Id"]
    queue = queue_client(OUTBOUND_QUEUE)
    [message] = list(queue.receive_messages(messages_per_page=1))
    command = json.loads(message.content)
    command["body"]["Recipients"][0]["Personalization"] = {"n": {"x": 1}}
    queue.delete_message(message)
    outbound.enqueue(json.dumps(command))

    outbound.drain()

    failed = record(message_id)
    assert failed.status is MessageStatus.FAILED
    assert failed.failure.code == "malformed"
    fields = [e.field for e in failed.failure.errors or []]
    assert fields
    assert all("body.Recipients.0.Personalization.n" in f for f in fields)  # what was refused
    assert "Personalization" in (failed.failure.detail or "")
    answer = status_of(accepted.headers["Location"])
    assert answer.status == 422  # no longer 202 for ever
    letters = [json.loads(t) for t in all_messages(OUTBOUND_DEAD_LETTER_QUEUE)]
    assert {(d["reason"], d["messageId"]) for d in letters} == {
        ("malformed", message_id),
        ("failed", message_id),
    }
    [event] = [json.loads(t) for t in all_messages(EVENTS_QUEUE)]
    assert event["type"] == "fi.arena.smartdialog.message.failed"
    assert event["data"]["error"]["code"] == "malformed"
    assert outbound.upstream() == []


def test_a_stored_command_whose_blob_is_gone_fails_its_record(outbound: Outbound) -> None:
    accepted = call_http("SendMessage", "POST", body=personalised(60, note="n" * 1_200))
    assert accepted.status == 202
    queue = queue_client(OUTBOUND_QUEUE)
    [message] = list(queue.receive_messages(messages_per_page=1))
    stored = json.loads(message.content)
    assert stored["kind"] == "stored"
    queue.delete_message(message)
    stored["payload"] = "command/" + "0" * 64  # no such blob
    outbound.enqueue(json.dumps(stored))

    outbound.drain()

    failed = record(accepted.body["Id"])
    assert failed.status is MessageStatus.FAILED
    assert failed.failure.code == "malformed"
    [event] = [json.loads(t) for t in all_messages(EVENTS_QUEUE)]
    assert event["type"] == "fi.arena.smartdialog.message.failed"


def test_a_message_id_taken_by_a_different_message_does_not_fail_the_first(
    outbound: Outbound,
) -> None:
    accepted = call_http("SendMessage", "POST", body=sms("+358402000001"))
    queue = queue_client(OUTBOUND_QUEUE)
    [message] = list(queue.receive_messages(messages_per_page=1))
    other = json.loads(message.content)
    other["body"]["Content"] = "Something else"
    outbound.enqueue(json.dumps(other))  # the same messageId, a different message

    outbound.run_once()

    assert record(accepted.body["Id"]).status is MessageStatus.QUEUED
    [letter] = [json.loads(t) for t in all_messages(OUTBOUND_DEAD_LETTER_QUEUE)]
    assert letter["reason"] == "malformed"


def test_a_command_too_long_for_its_record_is_kept_in_a_blob_and_sent(
    outbound: Outbound,
) -> None:
    body = personalised(200, note="x" * 1_100)  # 220,000 characters: past one entity
    accepted = call_http("SendMessage", "POST", body=body)
    assert accepted.status == 202, accepted.body
    message_id = accepted.body["Id"]
    from shared.messages._records import record_keys
    from shared.names import MESSAGES_TABLE
    from shared.storage import table_client

    entity = table_client(MESSAGES_TABLE).get_entity(*record_keys(message_id))
    assert entity["CommandBlob"].startswith("command/")
    assert entity["CommandChunks"] == 0
    assert len(record(message_id).command) > 220_000  # read back whole

    outbound.drain(timeout=60)

    assert status_of(accepted.headers["Location"]).status == 200
    [call] = outbound.upstream()
    assert call["body"]["Recipients"][199]["Personalization"]["note"] == "x" * 1_100


@pytest.mark.parametrize("count", [17_000, 120_000])
def test_a_command_of_emoji_is_stored_by_the_table_services_count_and_sent(
    outbound: Outbound, count: int
) -> None:
    """An emoji is two UTF-16 units, which is what a Table string's 32K limit counts: a command
    is cut into properties (and kept in a blob past its record's share) by that count, not by
    Python's characters (17,000 emoji in one 30,000-character piece were refused: a 500 after
    the command was queued). The emoji are placeholder values: Content is capped."""
    body = sms("+358402000002", content="Hi")
    body["Recipients"][0]["Personalization"] = padding("😀" * count)
    accepted = call_http("SendMessage", "POST", body=body)
    assert accepted.status == 202, accepted.body
    stored = record(accepted.body["Id"])
    assert json.loads(stored.command)["body"]["Recipients"] == body["Recipients"]
    assert (stored.command_blob is not None) == (count > 100_000)

    outbound.drain()

    assert record(accepted.body["Id"]).status is MessageStatus.SENT
    assert outbound.dead_letters() == []


def test_a_malformed_message_near_64_kib_of_quotes_makes_a_dead_letter_that_fits(
    outbound: Outbound,
) -> None:
    weird = {"\u0001" * 2_000: None, "k": None}  # keys end up in the violations' field names
    text = json.dumps(
        {
            "operation": "SendMessage",
            "messageId": "m-quotes",
            "body": {"Content": '"' * 20_000, "Recipients": [{"Personalization": weird}]},
        }
    )
    assert queue_message_bytes(text) <= QUEUE_MESSAGE_LIMIT  # it could be on the queue

    outbound.enqueue(text)
    outbound.drain()

    letters = all_messages(OUTBOUND_DEAD_LETTER_QUEUE)
    assert largest(letters) <= QUEUE_MESSAGE_LIMIT
    [letter] = [json.loads(t) for t in letters]
    assert letter["reason"] == "malformed"
    assert letter["messageId"] == "m-quotes"
    assert PayloadStore.from_settings().get(letter["originalBlob"]) == text


@pytest.mark.parametrize("field", ["customerId", "serviceId"])
def test_a_queued_id_too_long_for_its_column_is_dead_lettered_naming_it(
    outbound: Outbound, field: str
) -> None:
    """It fits a queue message but no table property (32K characters): it once failed every
    run and went to poison unrecorded; now it is malformed, as the send actions answer it."""
    command = {"operation": "SendMessage", "customerId": CUSTOMER, "serviceId": "s-1001-oneway",
               "messageId": f"long-{field}", "body": sms("+358401000006")}  # fmt: skip
    command[field] = "a" * 40_000
    outbound.enqueue(command)

    outbound.run_once()

    [letter] = outbound.dead_letters()
    assert (letter["reason"], letter["messageId"]) == ("malformed", f"long-{field}")
    assert [e["field"] for e in letter["errors"]] == [f"SendMessage.{field}"]
    assert outbound.upstream() == []
    assert outbound.queued() == 0
    assert MessageStore.from_settings().get(f"long-{field}") is None


def test_a_send_action_refuses_a_customer_id_longer_than_a_queued_command_may_carry(
    outbound: Outbound,
) -> None:
    answer = call_http("SendMessage", "POST", body=sms("+358401000006"),
                       headers={"Customer-Id": "1" * 201})  # fmt: skip

    assert answer.status == 400
    assert [e["field"] for e in answer.body["errors"]] == ["Customer-Id"]
    assert outbound.queued() == 0


def test_a_malformed_copy_known_by_its_request_id_fails_the_recorded_message(
    outbound: Outbound,
) -> None:
    command = {
        "operation": "SendMessage",
        "body": {**sms(TEMPORARY), "RequestId": "order-77"},  # 503: stays queued for a retry
    }
    outbound.enqueue(command)
    outbound.run_once()
    message_id = request_message_id(CUSTOMER, "order-77")
    assert record(message_id).status is MessageStatus.QUEUED

    command["body"]["Recipients"][0]["Personalization"] = {"n": {"x": 1}}
    outbound.invoke(json.dumps(command))

    failed = record(message_id)
    assert failed.status is MessageStatus.FAILED
    assert failed.failure.code == "malformed"
    fields = [e.field for e in failed.failure.errors or []]
    assert fields
    assert all("body.Recipients.0.Personalization.n" in f for f in fields)  # what was refused
    events = [json.loads(t) for t in all_messages(EVENTS_QUEUE)]
    assert [e["type"] for e in events] == ["fi.arena.smartdialog.message.failed"]


def test_a_large_command_is_retried_by_reference_and_fails_with_its_original_in_a_blob(
    outbound: Outbound,
) -> None:
    body = personalised(100, note="n" * 700)  # 70,000+ bytes: queued by reference
    body["Recipients"][0]["Address"] = ERROR  # every call answers 500
    accepted = call_http("SendMessage", "POST", body=body)
    assert accepted.status == 202

    outbound.drain(timeout=60)

    failed = record(accepted.body["Id"])
    assert failed.status is MessageStatus.FAILED
    assert failed.failure.code == "outcome-unknown"  # a 5xx does not prove it was not sent
    calls = outbound.upstream()
    assert len(calls) == 4  # SEND_MAX_ATTEMPTS: every retry read its command back whole
    assert all(len(c["body"]["Recipients"]) == 100 for c in calls)
    assert len({c["body"]["RequestId"] for c in calls}) == 1
    [letter] = [json.loads(t) for t in all_messages(OUTBOUND_DEAD_LETTER_QUEUE)]
    assert PayloadStore.from_settings().get(letter["originalBlob"]) == failed.command


@pytest.mark.parametrize("count", [1, 600, 700, 1_000, 5_000])
def test_sent_events_fit_and_cover_every_recipient_in_order(count: int) -> None:
    import datetime as dt

    from shared.events import MESSAGE_SENT, events_in_parts
    from shared.messages import Operation
    from shared.outbound import MessageSentData, RecipientOutcome

    recipients = [
        RecipientOutcome(address=f"+35840{i:07d}", id=f"<&>{i:032d}") for i in range(count)
    ]
    data = MessageSentData(
        messageId="m-1", operation=Operation("SendMessage"), recipients=recipients
    )
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    events = events_in_parts(
        MESSAGE_SENT, data, items="recipients", event_id="m-1:sent", subject="m-1", time=now
    )

    texts = [e.to_json() for e in events]
    assert largest(texts) <= QUEUE_MESSAGE_LIMIT
    assert [r for e in events for r in e.data.recipients] == recipients
    if len(events) == 1:
        assert (events[0].id, events[0].data.part, events[0].data.parts) == ("m-1:sent", 1, 1)
    else:
        assert [e.id for e in events] == [f"m-1:sent:{i}" for i in range(1, len(events) + 1)]
        assert [(e.data.part, e.data.parts) for e in events] == [
            (i, len(events)) for i in range(1, len(events) + 1)
        ]
