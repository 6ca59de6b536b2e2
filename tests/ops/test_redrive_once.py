"""Re-drives that lose nothing and send nothing twice: a letter whose original is kept in a
blob, a send too large for a queue message, a letter whose stored original is gone, two
re-drives of one letter at once or one after another, and poison messages another scan holds.

Through the real functions, Azurite and the sandbox, as the rest of tests/ops.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from shared.clock import ManualClock
from shared.deadletters import (
    DeadLetterFilter,
    DeadLetterIndex,
    original_aside,
    write_dead_letter,
)
from shared.events import MESSAGE_FAILED, MESSAGE_REDRIVEN, MESSAGE_SENT
from shared.inbound._dlr_forward import DlrForward, DlrForwardDeadLetter
from shared.messages import MessageStatus, MessageStore
from shared.names import (
    DLR_FORWARD_DEAD_LETTER_QUEUE,
    DLR_FORWARD_QUEUE,
    INBOUND_DEAD_LETTER_QUEUE,
    INBOUND_DELIVERIES_QUEUE,
    OUTBOUND_QUEUE,
    poison_queue,
)
from shared.ops import keep_poison
from shared.payloads import PayloadStore, fits_queue
from shared.problems import Problem, ProblemType
from shared.settings import get_settings
from shared.storage import ensured_queue, queue_client
from tests.ops.conftest import Outbound, answer_as_azure
from tests.outbound.conftest import call_http
from tests.outbound.test_sizes import personalised


def queue_texts(name: str) -> list[str]:
    return [str(m.content) for m in queue_client(name).peek_messages(max_messages=32)]


def forward(message_id: str, **fields: Any) -> str:
    """A DLR forward's queue message, as ``smartdialog-dlr-forward`` carries it (not called
    yet: its re-drive, which resets the count, sends this very text)."""
    forward = {"messageId": message_id, "status": "delivered", "attempts": 0, **fields}
    return json.dumps(forward, separators=(",", ":"))


def forward_letter(original: str, message_id: str = "m-1") -> DlrForwardDeadLetter:
    return DlrForwardDeadLetter(
        reason="attempts-exhausted",
        detail="the receiver failed",
        messageId=message_id,
        deadLetteredAt=dt.datetime.now(dt.UTC),
        original=original,
    )


def put_forward_letter(original: str, message_id: str = "m-1") -> DlrForwardDeadLetter:
    """Write a forward's dead letter as the forwarder does (its original aside when large)."""
    letter = original_aside(forward_letter(original, message_id), PayloadStore.from_settings())
    write_dead_letter(
        queue_client(DLR_FORWARD_DEAD_LETTER_QUEUE),
        letter.model_dump_json(exclude_none=True),
        queue_name=DLR_FORWARD_DEAD_LETTER_QUEUE,
    )
    return letter


def large_forward(message_id: str) -> str:
    """A forward that fits its queue but not a letter: the letter escapes each of its escaped
    quotes (two characters) as four."""
    text = forward(message_id, pad='"' * 20_000)
    assert fits_queue(text)
    return text


def listed(**params: str) -> list[dict[str, Any]]:
    answer = call_http("ListDeadLetters", "GET", params=params)
    assert answer.status == 200, answer.body
    return answer.body["value"]  # type: ignore[no-any-return]


def letter_of(message_id: str) -> dict[str, Any]:
    [item] = [i for i in listed() if i.get("messageId") == message_id]
    return item


def test_a_letter_shows_the_original_a_re_drive_sends_even_when_it_is_kept_in_a_blob(
    ops: Outbound,
) -> None:
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    big = large_forward("m-big")
    assert put_forward_letter(big, "m-big").originalBlob

    item = letter_of("m-big")
    shown = call_http("GetDeadLetter", "GET", route_params={"DeadLetterId": item["id"]})
    redriven = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": item["id"]})

    assert shown.status == 200, shown.body
    # was the letter's JSON, naming the blob; the attempt count is reset (it gets all again)
    assert json.loads(shown.body["original"]) == {**json.loads(big), "attempts": 0}
    assert redriven.body["outcome"] == "redriven", redriven.body
    assert queue_texts(DLR_FORWARD_QUEUE) == [shown.body["original"]]
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()


def test_a_subscriber_delivery_shows_the_attempt_count_its_re_drive_resets(ops: Outbound) -> None:
    delivery = {"service": "s", "subscriptionId": "sub", "event": {}, "attempts": 8}
    write_dead_letter(
        queue_client(INBOUND_DEAD_LETTER_QUEUE),
        json.dumps({"reason": "rejected", "detail": "x", "original": json.dumps(delivery)}),
        queue_name=INBOUND_DEAD_LETTER_QUEUE,
    )
    ensured_queue(INBOUND_DELIVERIES_QUEUE).clear_messages()
    [item] = listed()

    shown = call_http("GetDeadLetter", "GET", route_params={"DeadLetterId": item["id"]})
    call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": item["id"]})

    assert json.loads(shown.body["original"]) == {**delivery, "attempts": 0}
    assert queue_texts(INBOUND_DELIVERIES_QUEUE) == [shown.body["original"]]
    ensured_queue(INBOUND_DELIVERIES_QUEUE).clear_messages()


def test_a_dlr_forward_is_re_driven_with_all_its_calls_again(ops: Outbound) -> None:
    """The forwarder's letter keeps the queue message as it arrived: attempts one short of the
    limit. Re-driven as it was, the forward's first failure would dead-letter it again at once."""
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    spent = DlrForward(
        messageId="m-again",
        params={"status": "delivered"},
        attempts=get_settings().dispatch_max_attempts - 1,
        firstQueuedAt=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    put_forward_letter(spent.model_dump_json(), "m-again")
    queue_client(poison_queue(DLR_FORWARD_QUEUE)).send_message(spent.model_dump_json())

    keep_poison()
    for item in listed():
        answer = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": item["id"]})
        assert answer.body["outcome"] == "redriven", answer.body

    copies = [DlrForward.model_validate_json(t) for t in queue_texts(DLR_FORWARD_QUEUE)]
    assert copies == [spent.model_copy(update={"attempts": 0})] * 2
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()


def large_expired_send(ops: Outbound, clock: ManualClock) -> tuple[str, str]:
    """A send whose command is too large for a queue message, failed as expired (its validity
    ran out before the sender saw it); (its message id, its dead letter's id)."""
    accepted = call_http("SendMessage", "POST", body=personalised(100, note="n" * 700))
    assert accepted.status == 202, accepted.body
    clock.advance(get_settings().send_validity_seconds + 1)
    ops.drain()
    message_id = accepted.body["Id"]
    assert status_of(message_id) is MessageStatus.FAILED
    item = letter_of(message_id)
    entry = DeadLetterIndex.from_settings().get(item["id"])
    assert entry is not None
    assert entry.letter()["originalBlob"]
    return message_id, item["id"]


def status_of(message_id: str) -> MessageStatus:
    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    return record.status


def test_a_send_too_large_for_a_queue_message_is_re_driven_by_reference_and_sent(
    ops: Outbound, manual_clock: ManualClock
) -> None:
    """Its command went on the queue whole, which the queue refused (a 500), after its record
    had been moved back to queued: nothing was left to send it, and every later re-drive failed
    the same way."""
    message_id, letter_id = large_expired_send(ops, manual_clock)

    answer = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})

    assert answer.status == 200, answer.body
    assert answer.body["outcome"] == "redriven"
    [queued] = [json.loads(t) for t in queue_texts(OUTBOUND_QUEUE)]
    assert (queued["kind"], queued["messageId"]) == ("stored", message_id)
    ops.drain()
    [request] = ops.upstream()
    assert request["body"]["RequestId"] == message_id
    assert len(request["body"]["Recipients"]) == 100
    assert status_of(message_id) is MessageStatus.SENT


def test_a_re_drive_whose_enqueue_failed_can_be_re_driven_again_and_sends_once(
    ops: Outbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record is queued again before its command is enqueued: an enqueue that fails leaves
    the letter, and re-driving it enqueues the command (the record is queued already, so no
    second redriven event). Had the failed enqueue reached the queue after all, the sender's
    claim on the record makes the second copy send nothing more."""
    from azure.storage.queue import QueueClient

    message_id, letter_id = large_expired_send(ops, manual_clock)
    send_message = QueueClient.send_message

    def stored_then_lost(self: QueueClient, content: Any, **kwargs: Any) -> Any:
        sent = send_message(self, content, **kwargs)
        if self.queue_name == OUTBOUND_QUEUE:
            raise ConnectionError("the answer of the enqueue was lost")
        return sent

    with monkeypatch.context() as patched:
        patched.setattr(QueueClient, "send_message", stored_then_lost)
        failed = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    assert failed.status == 500
    assert status_of(message_id) is MessageStatus.QUEUED
    assert letter_of(message_id)["id"] == letter_id  # the letter stays

    again = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})

    assert again.body["outcome"] == "redriven", again.body
    assert len(queue_texts(OUTBOUND_QUEUE)) == 2
    ops.drain()
    assert len(ops.upstream()) == 1
    assert status_of(message_id) is MessageStatus.SENT
    [redriven] = [e for e in ops.events() if e["type"] == MESSAGE_REDRIVEN]
    assert redriven["subject"] == message_id
    assert listed() == []


def test_a_re_drive_whose_redriven_event_failed_leaves_the_message_failed_and_loses_no_event(
    ops: Outbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event goes on smartdialog-events before the record is queued again: one that fails
    leaves the message failed and the letter, and re-driving it again does both. (The record
    was queued first: the next re-drive found it queued, sent it, and no event ever went.)"""
    from azure.core.exceptions import ServiceRequestError
    from azure.storage.queue import QueueClient

    from shared.names import EVENTS_QUEUE

    message_id, letter_id = large_expired_send(ops, manual_clock)
    send_message = QueueClient.send_message

    def events_down(self: QueueClient, content: Any, **kwargs: Any) -> Any:
        if self.queue_name == EVENTS_QUEUE:
            raise ServiceRequestError("the events queue is unreachable")
        return send_message(self, content, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(QueueClient, "send_message", events_down)
        failed = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    assert (failed.status, failed.body["type"].rsplit(":", 1)[-1]) == (503, "storage-unavailable")
    assert status_of(message_id) is MessageStatus.FAILED
    assert queue_texts(OUTBOUND_QUEUE) == []

    again = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})

    assert again.body["outcome"] == "redriven", again.body
    ops.drain()
    assert len(ops.upstream()) == 1
    types = [e["type"] for e in ops.events()]
    assert types == [MESSAGE_FAILED, MESSAGE_REDRIVEN, MESSAGE_SENT]
    assert listed() == []


def test_a_letter_whose_stored_original_is_gone_is_reported_and_passed_over_in_bulk(
    ops: Outbound,
) -> None:
    """The first such letter answered the whole bulk re-drive 409, with no list of what it had
    done already, and every later call stopped at the same letter."""
    from shared.names import PAYLOADS_CONTAINER
    from shared.storage import blob_service

    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    put_forward_letter(forward("m-a"), "m-a")
    gone = put_forward_letter(large_forward("m-gone"), "m-gone")
    put_forward_letter(forward("m-c"), "m-c")
    assert gone.originalBlob is not None
    blob_service().get_container_client(PAYLOADS_CONTAINER).delete_blob(gone.originalBlob)
    gone_id = letter_of("m-gone")["id"]

    first = call_http("RedriveDeadLetters", "POST", params={"queue": DLR_FORWARD_DEAD_LETTER_QUEUE})
    second = call_http(
        "RedriveDeadLetters", "POST", params={"queue": DLR_FORWARD_DEAD_LETTER_QUEUE}
    )
    single = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": gone_id})
    shown = call_http("GetDeadLetter", "GET", route_params={"DeadLetterId": gone_id})

    assert first.status == 200, first.body
    assert (first.body["redriven"], first.body["originalGone"]) == (2, 1)
    [item] = [i for i in first.body["items"] if i["outcome"] == "original-gone"]
    assert item["id"] == gone_id
    assert gone.originalBlob in item["detail"]
    assert second.status == 200, second.body
    assert [(i["id"], i["outcome"]) for i in second.body["items"]] == [(gone_id, "original-gone")]
    assert single.status == 409
    assert single.body["type"] == "urn:smartdialog-functions:problem:conflict"
    assert shown.status == 200
    assert shown.body.get("original") is None
    assert sorted(json.loads(t)["messageId"] for t in queue_texts(DLR_FORWARD_QUEUE)) == [
        "m-a",
        "m-c",
    ]
    assert [i["id"] for i in listed()] == [gone_id]  # it stays until purged
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()


def test_of_two_re_drives_of_one_letter_at_once_one_sends_it(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DLR forward has no claim of its own downstream: both re-drives enqueued it, and the
    caller's DlrUrl got the report twice. The first to claim the letter sends it; the other,
    arriving while it enqueues, answers 409, and one that had read the letter before answers
    that another call handled it."""
    from azure.storage.queue import QueueClient

    from shared.ops.actions import desk

    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    put_forward_letter(forward("m-1"))
    letter_id = letter_of("m-1")["id"]
    ops_desk = desk(get_settings())
    read_before = ops_desk.get(letter_id)
    assert read_before is not None
    send_message = QueueClient.send_message
    meanwhile: list[Any] = []

    def with_another_re_drive(self: QueueClient, content: Any, **kwargs: Any) -> Any:
        if self.queue_name == DLR_FORWARD_QUEUE and not meanwhile:
            meanwhile.append(
                call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
            )
        return send_message(self, content, **kwargs)

    monkeypatch.setattr(QueueClient, "send_message", with_another_re_drive)
    first = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    monkeypatch.undo()
    late = ops_desk.redrive_matching(
        DeadLetterFilter(queue=DLR_FORWARD_DEAD_LETTER_QUEUE), limit=10
    )
    with pytest.raises(Problem) as stale:
        ops_desk.redrive(read_before)

    assert first.body["outcome"] == "redriven", first.body
    [during] = meanwhile
    assert during.status == 409, during.body
    assert during.body["type"] == "urn:smartdialog-functions:problem:conflict"
    assert "another call is re-driving it" in during.body["detail"]
    assert late == ([], False, None)
    assert stale.value.status == 409
    assert "another call handled it meanwhile" in stale.value.detail
    assert queue_texts(DLR_FORWARD_QUEUE) == [forward("m-1")]
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()


def test_a_re_drive_whose_letter_could_not_be_removed_is_not_sent_again_by_the_next(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy was enqueued, then removing the letter failed (a 500): the letter stayed, and
    re-driving it again enqueued a second copy."""
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    put_forward_letter(forward("m-1"))
    letter_id = letter_of("m-1")["id"]
    remove = DeadLetterIndex.remove
    failures = ["table blip"]

    def failing_once(self: DeadLetterIndex, entry: Any) -> None:
        if failures:
            raise ConnectionError(failures.pop())
        remove(self, entry)

    monkeypatch.setattr(DeadLetterIndex, "remove", failing_once)
    first = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    still = listed()
    second = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})

    assert first.status == 200, first.body
    assert first.body["outcome"] == "redriven"
    assert "could not be removed" in first.body["detail"]
    assert [i["id"] for i in still] == [letter_id]
    assert second.body["outcome"] == "redriven", second.body
    assert "re-driven already" in second.body["detail"]
    assert queue_texts(DLR_FORWARD_QUEUE) == [forward("m-1")]
    assert listed() == []
    assert queue_texts(DLR_FORWARD_DEAD_LETTER_QUEUE) == []
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()


def test_a_second_re_drive_whose_letter_stays_held_does_not_also_say_it_was_removed(
    ops: Outbound,
) -> None:
    """Its letter's queue message held by another call's scan: the first re-drive sends it and
    keeps the letter; the second said both "its letter removed now" and "its letter was not
    removed": an operator could not tell whether it was gone."""
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    put_forward_letter(forward("m-held"), message_id="m-held")
    letter_id = letter_of("m-held")["id"]
    held = list(
        queue_client(DLR_FORWARD_DEAD_LETTER_QUEUE).receive_messages(visibility_timeout=120)
    )
    assert len(held) == 1  # as another call's scan holds it

    first = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    second = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})

    assert (first.body["outcome"], second.body["outcome"]) == ("redriven", "redriven")
    assert "re-driven already" in second.body["detail"]
    assert "was not removed" in second.body["detail"]
    assert "removed now" not in second.body["detail"]
    assert queue_texts(DLR_FORWARD_QUEUE) == [forward("m-held")]  # sent once
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    ensured_queue(DLR_FORWARD_DEAD_LETTER_QUEUE).clear_messages()


def test_a_claim_whose_re_drive_died_before_sending_ends_and_the_letter_is_re_driven(
    ops: Outbound, manual_clock: ManualClock
) -> None:
    from shared.clock import utcnow
    from shared.ops._deadletters import REDRIVE_CLAIM

    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    put_forward_letter(forward("m-1"))
    letter_id = letter_of("m-1")["id"]
    index = DeadLetterIndex.from_settings()
    entry = index.get(letter_id)
    assert entry is not None
    now = utcnow()
    claimed, _ = index.claim(entry, now=now, until=now + REDRIVE_CLAIM)  # then the worker died
    assert claimed

    busy = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    manual_clock.advance(REDRIVE_CLAIM.total_seconds())
    after = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})

    assert busy.status == 409, busy.body
    assert queue_texts(DLR_FORWARD_QUEUE) == [forward("m-1")]
    assert after.body["outcome"] == "redriven", after.body
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()


def test_a_purge_whose_delete_by_receipt_fails_finds_the_message_by_id(ops: Outbound) -> None:
    """The delete with the row's pop receipt failed (a 503, a broken connection): the purge
    answered 500, where the id scan that follows a stale receipt finds and removes it."""
    from azure.core.exceptions import ServiceRequestError
    from azure.storage.queue import QueueClient

    from shared.ops import keep_poison

    poison = ensured_queue(poison_queue(DLR_FORWARD_QUEUE))
    poison.send_message(forward("p-blip"))
    assert keep_poison() == 1
    letter_id = letter_of("p-blip")["id"]
    delete, calls = QueueClient.delete_message, []

    def blip(self: QueueClient, message: Any, pop_receipt: Any = None, **kwargs: Any) -> Any:
        calls.append(pop_receipt)
        if len(calls) == 1:  # the delete by the row's receipt
            raise ServiceRequestError("connection reset")
        return delete(self, message, pop_receipt, **kwargs)

    ops.monkeypatch.setattr(QueueClient, "delete_message", blip)
    purged = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": letter_id})

    assert purged.status == 200, purged.body
    assert purged.body["outcome"] == "purged", purged.body
    assert len(calls) == 2  # then by the scan's own receipt
    assert queue_texts(poison_queue(DLR_FORWARD_QUEUE)) == []


def test_showing_a_poison_message_only_peeks_and_one_not_among_the_peeked_is_not_found(
    ops: Outbound,
) -> None:
    """GetDeadLetter received up to 5,000 messages of the poison queue to look for it: each
    hidden for a minute, its dequeue count raised and its pop receipt changed, by a GET."""
    poison = ensured_queue(poison_queue(INBOUND_DELIVERIES_QUEUE))
    for n in range(40):
        poison.send_message(json.dumps({"n": n}))
    before = [(m.id, m.dequeue_count) for m in poison.peek_messages(max_messages=32)]
    first_id = f"{poison_queue(INBOUND_DELIVERIES_QUEUE)}~{before[0][0]}"

    shown = call_http("GetDeadLetter", "GET", route_params={"DeadLetterId": first_id})
    missing = call_http(
        "GetDeadLetter",
        "GET",
        route_params={"DeadLetterId": f"{poison_queue(INBOUND_DELIVERIES_QUEUE)}~no-such-id"},
    )

    assert [(m.id, m.dequeue_count) for m in poison.peek_messages(max_messages=32)] == before
    assert poison.get_queue_properties().approximate_message_count == 40
    assert shown.status == 200, shown.body
    assert missing.status == 404, missing.body
    assert "PoisonKeeper" in missing.body["detail"]


def test_a_poison_message_another_scan_holds_is_neither_re_driven_nor_purged_twice(
    ops: Outbound,
) -> None:
    """The re-drive enqueued its copy, then found nothing to delete (another scan held it)
    and answered redriven: once visible again it was listed, and re-driven a second time."""
    from shared.ops.actions import desk

    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    poison = ensured_queue(poison_queue(DLR_FORWARD_QUEUE))
    poison.send_message(forward("p-1"))
    ops_desk = desk(get_settings())
    view = ops_desk.get(letter_of("p-1")["id"])
    assert view is not None
    [held] = list(poison.receive_messages(visibility_timeout=60))  # PoisonKeeper, say

    with pytest.raises(Problem) as redrive:
        ops_desk.redrive(view)
    with pytest.raises(Problem) as purge:
        ops_desk.purge(view)
    poison.update_message(held, content=held.content, visibility_timeout=0)  # it is done
    again = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": view.id})

    assert (redrive.value.status, redrive.value.type) == (409, ProblemType.CONFLICT)
    assert "PoisonKeeper" in (redrive.value.detail or "")
    assert purge.value.status == 409
    assert again.body["outcome"] == "redriven", again.body
    assert queue_texts(DLR_FORWARD_QUEUE) == [forward("p-1")]
    assert queue_texts(poison_queue(DLR_FORWARD_QUEUE)) == []
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()


def test_a_poison_message_whose_deletion_failed_once_kept_is_not_kept_twice(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its copy was written and indexed, then deleting the original failed: the next run kept
    it again, a second letter of the same message (and a second re-drive to send)."""
    from azure.storage.queue import QueueClient

    from shared.ops import keep_poison

    poison = ensured_queue(poison_queue(DLR_FORWARD_QUEUE))
    poison.send_message(forward("p-2"))
    delete_message = QueueClient.delete_message
    failures = ["storage blip"]

    def failing_once(self: QueueClient, *args: Any, **kwargs: Any) -> Any:
        if failures and self.queue_name == poison_queue(DLR_FORWARD_QUEUE):
            raise ConnectionError(failures.pop())
        return delete_message(self, *args, **kwargs)

    monkeypatch.setattr(QueueClient, "delete_message", failing_once)
    first = keep_poison()
    second = keep_poison()

    assert (first, second) == (1, 0)
    [item] = listed()
    assert (item["reason"], item["messageId"]) == ("poison", "p-2")
    [kept] = poison.peek_messages(max_messages=32)
    assert kept.expires_on is not None
    assert kept.expires_on.year == 9999


def test_a_re_drive_whose_mark_could_not_be_written_still_removes_the_letter_and_sends_once(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    """The copy was out, then writing RedrivenAt failed: the action answered 500 with the
    letter still listed, and a re-drive after the claim ended sent it again."""
    from shared.ops._deadletters import REDRIVE_CLAIM

    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    put_forward_letter(forward("m-mark"), "m-mark")
    letter_id = letter_of("m-mark")["id"]

    def failing(self: DeadLetterIndex, entry: Any, *, now: dt.datetime) -> None:
        raise ConnectionError("table blip")

    monkeypatch.setattr(DeadLetterIndex, "redriven", failing)
    first = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    manual_clock.advance(REDRIVE_CLAIM.total_seconds() + 1)
    second = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})

    assert first.status == 200, first.body
    assert first.body["outcome"] == "redriven"
    assert second.status == 404, second.body  # handled: nothing left to send again
    assert queue_texts(DLR_FORWARD_QUEUE) == [forward("m-mark")]
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()


def test_a_poison_message_held_by_another_call_is_a_409_through_the_actions_not_a_404(
    ops: Outbound,
) -> None:
    """The actions looked it up by peeking first: a message someone holds is not peeked, so
    they answered 404 "no such dead letter" (and the page "already handled")."""
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    poison = ensured_queue(poison_queue(DLR_FORWARD_QUEUE))
    poison.send_message(forward("p-held"))
    letter_id = letter_of("p-held")["id"]
    [held] = list(poison.receive_messages(visibility_timeout=60))  # PoisonKeeper, say

    redrive = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    purge = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": letter_id})
    poison.update_message(held, content=held.content, visibility_timeout=0)

    assert redrive.status == 409, redrive.body
    assert purge.status == 409, purge.body
    assert queue_texts(DLR_FORWARD_QUEUE) == []
    assert queue_texts(poison_queue(DLR_FORWARD_QUEUE)) == [forward("p-held")]


def test_a_poison_message_further_back_than_the_peek_is_re_driven_by_id_holding_one_page(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the first 32 are peeked; one further back is still re-driven by its id, and the
    call holds the queue a page at a time only until it has it (not all 5,000 messages)."""
    from azure.storage.queue import QueueClient

    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    poison = ensured_queue(poison_queue(DLR_FORWARD_QUEUE))
    sent = [poison.send_message(forward(f"p-{n}")) for n in range(70)]
    behind = f"{poison_queue(DLR_FORWARD_QUEUE)}~{sent[40].id}"
    received: list[int] = []
    receive = QueueClient.receive_messages

    def counting(self: QueueClient, *args: Any, **kwargs: Any) -> Any:
        pages = receive(self, *args, **kwargs)
        received.append(0)
        original = pages.by_page

        def by_page(*a: Any, **k: Any) -> Any:
            for page in original(*a, **k):
                items = list(page)
                received[-1] += len(items)
                yield iter(items)

        pages.by_page = by_page  # type: ignore[method-assign]
        return pages

    monkeypatch.setattr(QueueClient, "receive_messages", counting)
    answer = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": behind})

    assert answer.status == 200, answer.body
    assert answer.body["outcome"] == "redriven"
    assert queue_texts(DLR_FORWARD_QUEUE) == [forward("p-40")]
    assert received == [64]  # two pages of 32, not the whole queue
    assert poison.get_queue_properties().approximate_message_count == 69
    assert len(poison.peek_messages(max_messages=32)) == 32  # the others visible again at once
    poison.clear_messages()
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()


def test_a_kept_poison_message_is_re_driven_by_its_letter_only_so_once(ops: Outbound) -> None:
    """Typed by its queue-message id, a kept poison message was re-driven and deleted while
    its indexed letter stayed, which a later re-drive sent again."""
    from shared.ops import keep_poison

    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    poison = ensured_queue(poison_queue(DLR_FORWARD_QUEUE))
    poison.send_message(forward("p-kept"))
    assert keep_poison() == 1
    [kept] = poison.peek_messages(max_messages=32)
    by_message = f"{poison_queue(DLR_FORWARD_QUEUE)}~{kept.id}"

    typed = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": by_message})
    letter = call_http(
        "RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_of("p-kept")["id"]}
    )

    assert typed.status == 409, typed.body
    assert letter.body["outcome"] == "redriven", letter.body
    assert queue_texts(DLR_FORWARD_QUEUE) == [forward("p-kept")]
    assert listed() == []
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()


def test_a_re_drive_neither_marked_nor_removed_keeps_its_claim_and_says_to_purge(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing RedrivenAt failed, then removing the letter did too: the claim was ended, so
    the re-drive the answer asked for sent the forward a second time."""
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    put_forward_letter(forward("m-both"), "m-both")
    letter_id = letter_of("m-both")["id"]

    def failing(self: DeadLetterIndex, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("table blip")

    remove = DeadLetterIndex.remove
    monkeypatch.setattr(DeadLetterIndex, "redriven", failing)
    monkeypatch.setattr(DeadLetterIndex, "remove", failing)
    first = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    again = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    monkeypatch.setattr(DeadLetterIndex, "remove", remove)  # storage is back
    purged = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": letter_id})

    assert first.body["outcome"] == "redriven", first.body
    assert "purge it" in first.body["detail"]
    assert again.status == 409, again.body  # its claim stands: not sent again
    assert purged.body["outcome"] == "purged", purged.body
    assert queue_texts(DLR_FORWARD_QUEUE) == [forward("m-both")]
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()


@pytest.mark.parametrize("service", ["azurite", "azure"])
def test_a_letter_whose_message_another_scan_holds_is_not_purged_until_it_is_removed(
    ops: Outbound, service: str
) -> None:
    """Its pop receipt no longer matched and the purge's scan could not see the message (held
    by another): the row was deleted anyway and the answer said purged, leaving the message on
    its queue for good, listed nowhere. On Azure, whose answer to that receipt is 404 (as to a
    message that is gone), also once the receipt check was mended for Azurite's 400."""
    from shared.ops import keep_poison

    if service == "azure":
        answer_as_azure(ops.monkeypatch)
    poison = ensured_queue(poison_queue(DLR_FORWARD_QUEUE))
    poison.send_message(forward("p-purge"))
    assert keep_poison() == 1
    letter_id = letter_of("p-purge")["id"]
    [held] = list(poison.receive_messages(visibility_timeout=60))  # PoisonKeeper, say

    one = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": letter_id})
    bulk = call_http("PurgeDeadLetters", "POST", params={"queue": poison_queue(DLR_FORWARD_QUEUE)})
    still = [i["id"] for i in listed()]
    poison.update_message(held, content=held.content, visibility_timeout=0)  # it is done
    purged = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": letter_id})

    assert (one.status, one.body["type"]) == (409, ProblemType.CONFLICT), one.body
    assert "PoisonKeeper" in one.body["detail"]
    assert (bulk.body["purged"], bulk.body["inProgress"]) == (0, 1), bulk.body
    assert still == [letter_id]
    assert purged.body["outcome"] == "purged", purged.body
    assert queue_texts(poison_queue(DLR_FORWARD_QUEUE)) == []
    assert listed() == []


@pytest.mark.parametrize("service", ["azurite", "azure"])
def test_a_re_drive_of_a_letter_whose_message_another_scan_holds_sends_once_and_removes_later(
    ops: Outbound, service: str
) -> None:
    """The re-drive enqueued its copy, then deleted the row although the held message stayed:
    answered redriven, the message was left on its queue for good, listed nowhere (on Azure,
    which answers the stale receipt 404, also after the fix for Azurite's 400)."""
    from shared.ops import keep_poison

    if service == "azure":
        answer_as_azure(ops.monkeypatch)
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    poison = ensured_queue(poison_queue(DLR_FORWARD_QUEUE))
    poison.send_message(forward("p-redrive"))
    assert keep_poison() == 1
    letter_id = letter_of("p-redrive")["id"]
    [held] = list(poison.receive_messages(visibility_timeout=60))  # PoisonKeeper, say

    first = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    still = [i["id"] for i in listed()]
    poison.update_message(held, content=held.content, visibility_timeout=0)  # it is done
    second = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})

    assert first.body["outcome"] == "redriven", first.body
    assert "PoisonKeeper" in first.body["detail"]
    assert still == [letter_id]
    assert second.body["outcome"] == "redriven", second.body
    assert "re-driven already" in second.body["detail"]
    assert queue_texts(DLR_FORWARD_QUEUE) == [forward("p-redrive")]  # once
    assert queue_texts(poison_queue(DLR_FORWARD_QUEUE)) == []
    assert listed() == []
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()


def test_a_letter_never_linked_to_its_message_is_not_purged_while_another_scan_holds_it(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row without its queue message's id is matched by text: a scan that did not see the
    message (held by another) deleted the row anyway, leaving the letter on its queue for good."""
    monkeypatch.setattr(DeadLetterIndex, "link", lambda *a, **k: _raise(ConnectionError("blip")))
    put_forward_letter(forward("m-unlinked"), "m-unlinked")
    monkeypatch.undo()
    letter_id = letter_of("m-unlinked")["id"]
    dead = queue_client(DLR_FORWARD_DEAD_LETTER_QUEUE)
    [held] = list(dead.receive_messages(visibility_timeout=60))  # another call's scan, say

    busy = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": letter_id})
    dead.update_message(held, content=held.content, visibility_timeout=0)
    purged = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": letter_id})

    assert busy.status == 409, busy.body
    assert purged.body["outcome"] == "purged", purged.body
    assert queue_texts(DLR_FORWARD_DEAD_LETTER_QUEUE) == []
    assert listed() == []


def test_on_azure_a_letter_whose_pop_receipt_went_stale_is_found_by_id_and_purged(
    ops: Outbound,
) -> None:
    """Azure answers a delete with a stale receipt 404, which was taken for "gone": the row was
    deleted and the message, visible and held by no one, stayed on its queue listed nowhere."""
    from shared.ops import keep_poison

    answer_as_azure(ops.monkeypatch)
    poison = ensured_queue(poison_queue(DLR_FORWARD_QUEUE))
    poison.send_message(forward("p-stale"))
    assert keep_poison() == 1
    letter_id = letter_of("p-stale")["id"]
    [seen] = list(poison.receive_messages(visibility_timeout=60))  # a scan whose refresh failed
    poison.update_message(seen, content=seen.content, visibility_timeout=0)

    purged = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": letter_id})

    assert purged.body["outcome"] == "purged", purged.body
    assert queue_texts(poison_queue(DLR_FORWARD_QUEUE)) == []
    assert listed() == []


def test_a_letter_found_by_id_whose_deletion_then_fails_as_held_is_not_purged(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan that found the letter's message could not delete it (its 60 s ran out and
    another call received it: 404 on Azure); that 404 was taken for "no such queue", the scan
    for whole, and the row was deleted with the message left on its queue, listed nowhere."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue import QueueClient, QueueMessage

    put_forward_letter(forward("m-late"), "m-late")
    letter_id = letter_of("m-late")["id"]
    dead = queue_client(DLR_FORWARD_DEAD_LETTER_QUEUE)
    [seen] = list(dead.receive_messages())  # its row's receipt is stale now
    dead.update_message(seen, content=seen.content, visibility_timeout=0)
    delete = QueueClient.delete_message

    def held_since(self: QueueClient, message: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(message, QueueMessage):  # the scan's own delete, after its 60 s
            raise ResourceNotFoundError("MessageNotFound: The specified message does not exist.")
        return delete(self, message, *args, **kwargs)

    poison = ensured_queue(poison_queue(DLR_FORWARD_QUEUE))
    poison.send_message(forward("p-late"))  # not kept yet: acted on while held
    poison_id = letter_of("p-late")["id"]
    monkeypatch.setattr(QueueClient, "delete_message", held_since)
    busy = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": letter_id})
    also = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": poison_id})

    assert busy.status == 409, busy.body
    assert also.status == 409, also.body
    assert "another call received it" in also.body["detail"]
    assert [i["id"] for i in listed()] == [letter_id]  # the poison message is held: not shown
    assert dead.get_queue_properties().approximate_message_count == 1  # held by the other
    assert poison.get_queue_properties().approximate_message_count == 1


def _raise(exc: Exception) -> Any:
    raise exc
