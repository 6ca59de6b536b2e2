"""Send commands the Functions host gave up on (moved to ``smartdialog-outbound-poison``):
``PoisonKeeper`` fails the message of the record a command is the own command of, and only
that one; anything else stays a plain poison letter. Through the real functions, Azurite and
the sandbox, as the rest of tests/ops."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest

from shared.clock import utcnow
from shared.deadletters import DeadLetterFilter, DeadLetterIndex, write_dead_letter
from shared.messages import MessageStatus, MessageStore
from shared.names import OUTBOUND_QUEUE, poison_queue
from shared.ops import keep_poison
from shared.outbound._quota_wait import QuotaWait
from shared.storage import queue_client
from tests.connections.conftest import (
    SECOND_CUSTOMER,
    SECOND_SERVICE,
    SECOND_TOKEN,
    forget_settings,
)
from tests.ops.conftest import Outbound
from tests.ops.test_redrive_once import listed, queue_texts
from tests.outbound.conftest import DELIVERED, REJECTED, call_http, sms, status_of

POISON = poison_queue(OUTBOUND_QUEUE)


@pytest.fixture
def second(ops: Outbound) -> Iterator[None]:
    """A connection ``second`` besides the default (its calls are never made here)."""
    settings = {"BASE_URL": ops.sandbox.api_url, "ACCESS_TOKEN": SECOND_TOKEN,
                "CUSTOMERS": SECOND_CUSTOMER, "CUSTOMER_ID": SECOND_CUSTOMER,
                "SERVICE_ID": SECOND_SERVICE}  # fmt: skip
    for name, value in settings.items():
        ops.monkeypatch.setenv(f"SMARTDIALOG_CONNECTIONS__SECOND__{name}", value)
    forget_settings()
    yield
    forget_settings()


def given_up_on(text: str) -> None:
    """Put ``text`` on the outbound poison queue, as the host does after its last delivery."""
    queue_client(POISON).send_message(text)


def recorded_then_storage_failed(ops: Outbound, command: dict[str, Any]) -> None:
    """Deliver a queue-only ``command`` once: the sender records it, then our storage fails
    (the quota log) and the invocation raises, the claim handed back (the host would retry it
    and, after its last delivery, move it to the poison queue)."""
    with ops.monkeypatch.context() as patch:
        patch.setattr(QuotaWait, "take", lambda *a, **k: _raise(ConnectionError("table blip")))
        with pytest.raises(ConnectionError):
            ops.invoke(json.dumps(command))


def test_a_command_that_reused_a_queued_messages_id_is_kept_and_that_message_sent(
    ops: Outbound,
) -> None:
    """A foreign command naming an accepted message's id failed that message ``poisoned``: its
    own queued copy was then acknowledged unsent, and the foreign text, deleted, was kept in no
    letter."""
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED))
    location, message_id = accepted.headers["Location"], accepted.body["Id"]
    foreign = {"operation": "SendMessage", "messageId": message_id,
               "body": sms(DELIVERED, content="someone else's text")}  # fmt: skip
    given_up_on(json.dumps(foreign))

    kept = keep_poison()
    [item] = listed()
    ops.drain()

    assert kept == 1
    assert (item["reason"], item["messageId"]) == ("poison", message_id)
    shown = call_http("GetDeadLetter", "GET", route_params={"DeadLetterId": item["id"]})
    assert "someone else's text" in shown.body["text"]
    assert status_of(location).status == 200  # its own command was sent
    assert len(ops.upstream()) == 1


def test_a_command_that_reused_a_failed_messages_id_is_kept_not_deleted(ops: Outbound) -> None:
    """The record was failed already, so the keeper took the foreign command for its own
    (held by the failure's letter) and deleted it: kept nowhere."""
    message_id = call_http("SendMessage", "POST", body=sms(REJECTED)).body["Id"]
    ops.drain()
    foreign = {"operation": "SendMessage", "messageId": message_id,
               "body": sms(DELIVERED, content="someone else's text")}  # fmt: skip
    given_up_on(json.dumps(foreign))

    kept = keep_poison()

    assert kept == 1
    letters = {i["reason"]: i for i in listed()}
    assert set(letters) == {"failed", "poison"}
    assert letters["poison"]["messageId"] == message_id
    assert len(queue_texts(POISON)) == 1  # kept for good, indexed
    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    assert record.failure is not None
    assert record.failure.code == "upstream-rejected"


def test_a_poison_message_of_ascii_and_emoji_is_kept_whole(ops: Outbound) -> None:
    """Its index row holds it in pieces of UTF-16 units: cut at 30,000 characters its first
    piece was ~35,000 units, the row was refused and the message was never kept (it expired
    with the poison queue's 7 days)."""
    text = ("abcde" + "\U0001f600") * 5_000

    given_up_on(text)
    kept = keep_poison()

    assert kept == 1
    [entry] = DeadLetterIndex.from_settings().matching(DeadLetterFilter(queue=POISON), limit=2)
    assert (entry.reason, entry.text) == ("poison", text)
    assert queue_texts(POISON) == [text]


def test_a_command_named_by_its_request_id_alone_fails_poisoned(ops: Outbound) -> None:
    """A queue-only command without ``messageId`` gets its id from its RequestId: the keeper
    read only ``messageId``, so its record stayed queued for ever (status URL 202)."""
    command = {"operation": "SendMessage", "body": sms(DELIVERED, RequestId="req-poisoned")}
    recorded_then_storage_failed(ops, command)
    given_up_on(json.dumps(command))

    kept = keep_poison()

    assert kept == 1
    [item] = listed()
    assert (item["reason"], item["code"]) == ("failed", "poisoned"), item
    record = MessageStore.from_settings().get(item["messageId"])
    assert record is not None
    assert record.status is MessageStatus.FAILED
    assert queue_texts(POISON) == []


def test_a_command_of_a_named_connection_is_read_as_its_connection_reads_it(
    ops: Outbound, second: None
) -> None:
    """Its customer and service come from its connection's settings: read with the default's,
    it would pass for another message's command and stay a plain letter, its record queued."""
    command = {"operation": "SendMessage", "messageId": "ops-second", "Connection": "second",
               "body": sms(DELIVERED)}  # fmt: skip
    recorded_then_storage_failed(ops, command)
    given_up_on(json.dumps(command))

    kept = keep_poison()

    assert kept == 1
    record = MessageStore.from_settings().get("ops-second")
    assert record is not None
    assert (record.status, record.customer_id) == (MessageStatus.FAILED, SECOND_CUSTOMER)
    assert record.failure is not None
    assert record.failure.code == "poisoned"


def test_a_message_claimed_while_it_is_settled_is_left_to_its_worker(ops: Outbound) -> None:
    """A worker claimed the message between the keeper's read and its write: the keeper's
    compare-and-swap lost, and its re-read took any open record, so it failed one a live
    worker held (closed by same_claim in Outcomes.fail: this pins it for the keeper)."""
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED))
    message_id = accepted.body["Id"]
    [command] = queue_client(OUTBOUND_QUEUE).peek_messages()
    given_up_on(str(command.content))  # a copy the host gave up on; the other is still live
    swap, claimed = MessageStore.swap, []

    def claimed_first(self: MessageStore, record: Any, **changes: Any) -> Any:
        if changes.get("status") is MessageStatus.FAILED and not claimed:
            live = utcnow() + dt.timedelta(minutes=5)  # a worker's claim lands first
            claimed.append(swap(self, record, status=MessageStatus.SENDING, attempts=1,
                                lease_until=live))  # fmt: skip
        return swap(self, record, **changes)

    with ops.monkeypatch.context() as patch:
        patch.setattr(MessageStore, "swap", claimed_first)
        kept = keep_poison()
    record = MessageStore.from_settings().get(message_id)

    assert [c is not None for c in claimed] == [True]
    assert kept == 0  # looked at again by the next run
    assert record is not None
    assert (record.status, record.failure) == (MessageStatus.SENDING, None)
    assert [i["reason"] for i in listed()] == ["poison"]  # no failed letter; not kept yet
    [poisoned] = queue_client(POISON).peek_messages()
    assert poisoned.expires_on is not None
    assert poisoned.expires_on.year < 9999


def test_a_send_whose_settling_failed_midway_is_settled_by_the_next_run_not_kept(
    ops: Outbound,
) -> None:
    """Its message failed and its failed letter was written, then announcing it raised: the
    keeper kept the poison message as a second, plain letter, and ``announced`` stayed False
    for good (the next run saw a kept letter and looked no further)."""
    import shared.outbound._outcomes as outcomes

    message_id = call_http("SendMessage", "POST", body=sms(DELIVERED)).body["Id"]
    sending = queue_client(OUTBOUND_QUEUE)
    [command] = sending.receive_messages()
    given_up_on(str(command.content))
    sending.delete_message(command)
    with ops.monkeypatch.context() as patch:
        patch.setattr(outcomes, "notify_send_failed", lambda *a, **k: _raise(ConnectionError()))
        first = keep_poison()
    midway = MessageStore.from_settings().get(message_id)
    second = keep_poison()
    record = MessageStore.from_settings().get(message_id)

    assert (first, second) == (0, 1)
    assert midway is not None
    assert (midway.status, midway.announced) == (MessageStatus.FAILED, False)
    assert record is not None
    assert record.announced
    assert {i["reason"] for i in listed()} == {"failed"}  # no plain poison letter
    assert queue_texts(POISON) == []


def test_a_send_not_settled_a_day_before_the_host_would_drop_it_is_kept_as_it_is(
    ops: Outbound,
) -> None:
    """Settling that keeps failing (a damaged record, say) must not lose the command: the
    host's copy lives 7 days, so one close to that is kept as a plain letter instead."""
    import shared.outbound._outcomes as outcomes

    message_id = call_http("SendMessage", "POST", body=sms(DELIVERED)).body["Id"]
    sending = queue_client(OUTBOUND_QUEUE)
    [command] = sending.receive_messages()
    queue_client(POISON).send_message(command.content, time_to_live=6 * 3600)  # its last day
    sending.delete_message(command)
    with ops.monkeypatch.context() as patch:
        patch.setattr(outcomes.Outcomes, "settle_poisoned", lambda *a: _raise(ConnectionError()))
        kept = keep_poison()

    assert kept == 1
    [item] = listed()
    assert (item["reason"], item["messageId"]) == ("poison", message_id)


def accepted_then_given_up_on(ops: Outbound) -> tuple[str, str]:
    """A send accepted, its queued command then moved to the poison queue (as the host does);
    returns its status URL and its command's text."""
    location = call_http("SendMessage", "POST", body=sms(DELIVERED)).headers["Location"]
    sending = queue_client(OUTBOUND_QUEUE)
    [command] = sending.receive_messages()
    given_up_on(str(command.content))
    sending.delete_message(command)
    return location, str(command.content)


@pytest.mark.parametrize("how", ["one", "bulk"])
def test_a_purge_of_a_poisoned_send_not_kept_yet_fails_its_message(ops: Outbound, how: str) -> None:
    """Purged before PoisonKeeper ran, the command was gone and its record stayed queued: its
    status URL answered 202 for ever."""
    location, _ = accepted_then_given_up_on(ops)
    [item] = listed()

    if how == "one":
        purged = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": item["id"]})
        assert purged.body["outcome"] == "purged", purged.body
    else:
        purged = call_http("PurgeDeadLetters", "POST", params={"queue": POISON})
        assert purged.body["purged"] == 1, purged.body

    failed = status_of(location)
    assert (failed.status, failed.body["code"]) == (422, "poisoned"), failed.body
    assert queue_texts(POISON) == []
    assert [i["reason"] for i in listed()] == ["failed"]  # its failure's letter


def test_a_purge_of_a_send_kept_as_a_plain_poison_letter_fails_its_message(
    ops: Outbound,
) -> None:
    """A letter PoisonKeeper kept plain before it settled sends (or a send it could not settle
    then): purging it left the record queued for good."""
    location, text = accepted_then_given_up_on(ops)
    item = kept_plain(text)

    purged = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": item["id"]})

    assert purged.body["outcome"] == "purged", purged.body
    failed = status_of(location)
    assert (failed.status, failed.body["code"]) == (422, "poisoned"), failed.body
    assert [i["reason"] for i in listed()] == ["failed"]


def kept_plain(text: str) -> dict[str, Any]:
    """The poison message of ``text`` kept as a plain poison letter, as the keeper of an earlier
    release kept it (or one that could not settle it then), its record still queued."""
    poison = queue_client(POISON)
    [poisoned] = poison.receive_messages()
    poison.delete_message(poisoned)
    write_dead_letter(poison, text, queue_name=POISON, reason="poison", key=str(poisoned.id))
    [item] = listed()
    return item


@pytest.mark.parametrize("marked", [True, False])
def test_a_purge_of_a_re_driven_send_letter_only_removes_it_and_its_copy_is_sent(
    ops: Outbound, marked: bool
) -> None:
    """The re-drive put a copy on the outbound queue but could not remove the letter (another
    call held its message) and said to purge it: the purge failed the still queued message
    ``poisoned``, and the sender acknowledged the re-driven copy unsent. Also when the letter's
    row could not say it was re-driven (its claim stands instead)."""
    location, text = accepted_then_given_up_on(ops)
    item = kept_plain(text)
    poison = queue_client(POISON)
    [held] = poison.receive_messages(visibility_timeout=120)  # a page button, PoisonKeeper
    with ops.monkeypatch.context() as patch:
        if not marked:
            patch.setattr(DeadLetterIndex, "redriven", lambda *a, **k: _raise(ConnectionError()))
        redriven = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": item["id"]})
    poison.update_message(held, content=held.content, visibility_timeout=0)  # the hold ends

    purged = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": item["id"]})
    ops.drain()

    assert redriven.body["outcome"] == "redriven", redriven.body
    assert "purge it" in redriven.body["detail"]
    assert (purged.body["outcome"], purged.body.get("detail")) == ("purged", None), purged.body
    assert status_of(location).status == 200
    assert len(ops.upstream()) == 1
    assert listed() == []


def test_a_purge_that_failed_the_message_but_could_not_remove_its_letter_says_so(
    ops: Outbound,
) -> None:
    """The letter's message was held when the purge came to remove it, after it had failed the
    message: the 409 said "nothing done; try again"."""
    location, text = accepted_then_given_up_on(ops)
    item = kept_plain(text)
    poison = queue_client(POISON)
    [held] = poison.receive_messages(visibility_timeout=120)

    busy = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": item["id"]})
    poison.update_message(held, content=held.content, visibility_timeout=0)
    failed = status_of(location)
    purged = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": item["id"]})

    assert busy.status == 409, busy.body
    assert "nothing done" not in busy.body["detail"]
    assert "its message is failed, but its letter was not removed" in busy.body["detail"]
    assert "purge it again" in busy.body["detail"]
    assert (failed.status, failed.body["code"]) == (422, "poisoned"), failed.body
    assert purged.body["outcome"] == "purged", purged.body
    assert [i["reason"] for i in listed()] == ["failed"]


def test_a_purge_of_a_poisoned_send_a_worker_is_sending_does_nothing(ops: Outbound) -> None:
    """Its worker settles it: the purge must neither fail it nor drop its command."""
    location, _ = accepted_then_given_up_on(ops)
    store = MessageStore.from_settings()
    record = store.get(status_of(location).body["Id"])
    assert record is not None
    live = utcnow() + dt.timedelta(minutes=5)
    assert store.swap(record, status=MessageStatus.SENDING, attempts=1, lease_until=live)
    [item] = listed()

    busy = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": item["id"]})

    assert busy.status == 409, busy.body
    assert "being sent" in busy.body["detail"]
    assert len(queue_texts(POISON)) == 1


def _raise(exc: Exception) -> Any:
    raise exc


@pytest.mark.parametrize("message_id", ["a/b", "a\\b", "a#b", "a?b", "a\tb"])
def test_a_poison_command_whose_id_is_no_table_key_is_re_driven_as_recorded_by_none(
    ops: Outbound, message_id: str
) -> None:
    """A hand-written or old command's id was read as a record's key: Azurite answered 500 and
    so did the re-drive (and the page's button). No record has such an id: it goes back to the
    sender as a command nobody recorded, which refuses it."""
    given_up_on(json.dumps({"operation": "SendMessage", "messageId": message_id, "body": {}}))
    [item] = listed()

    redriven = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": item["id"]})

    assert redriven.status == 200, redriven.body
    assert redriven.body["outcome"] == "redriven"
    assert queue_texts(POISON) == []
