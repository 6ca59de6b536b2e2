"""Sends that wait on ``smartdialog-outbound`` longer than the queue's default time-to-live (7
days: a sender paused for an upgrade, a long put-back) are not dropped unseen: every copy put
there never expires and becomes visible before the 7 days the service allows; and a send whose
copies are gone anyway (written by an older release, which kept the default) fails ``expired``
on its next status poll, with its event and dead letter, once its validity has passed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from shared.clock import ManualClock, utcnow
from shared.events import MESSAGE_FAILED
from shared.messages import MessageStatus, MessageStore
from shared.names import OUTBOUND_QUEUE
from shared.outbound._outcomes import whole_seconds
from shared.storage import queue_client
from tests.outbound.conftest import DELIVERED, Outbound, call_http, sms, status_of

FOREVER_YEAR = 9999  # how the queue service dates a message whose time-to-live is -1
WEEK = 7 * 24 * 3600


def test_accepted_copy_never_expires(outbound: Outbound) -> None:
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED, content="kept"))
    assert accepted.status == 202
    [copy] = queue_client(OUTBOUND_QUEUE).peek_messages()
    assert copy.expires_on.year == FOREVER_YEAR


def test_longest_put_back_is_delivered_before_it_could_expire(outbound: Outbound) -> None:
    seconds = whole_seconds(8 * 24 * 3600)  # a 7-day Retry-After, long retry settings
    assert seconds < WEEK
    put = queue_client(OUTBOUND_QUEUE).send_message("{}", visibility_timeout=seconds)
    assert put.expires_on.year == FOREVER_YEAR
    assert put.next_visible_on < put.expires_on


def test_only_an_outbound_put_that_names_no_time_to_live_is_kept_for_ever(
    outbound: Outbound,
) -> None:
    """The hook's reach: a put naming its own time-to-live keeps it, another queue its 7 days."""
    from shared.names import EVENTS_QUEUE
    from shared.storage import ensured_queue

    outbound_queue = queue_client(OUTBOUND_QUEUE)
    kept = outbound_queue.send_message("{}")
    named = outbound_queue.send_message("{}", time_to_live=3600)
    other = ensured_queue(EVENTS_QUEUE).send_message("{}")

    assert kept.expires_on.year == FOREVER_YEAR
    assert named.expires_on - named.inserted_on == dt.timedelta(hours=1)
    assert other.expires_on - other.inserted_on == dt.timedelta(seconds=WEEK)


def test_queued_send_whose_copy_is_gone_expires_on_its_status_poll(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED, content="copy gone"))
    location = accepted.headers["Location"]
    queue_client(OUTBOUND_QUEUE).clear_messages()  # what the 7-day default did to old copies
    record = MessageStore.from_settings().get(accepted.body["Id"])
    assert record is not None
    manual_clock.advance((record.valid_until - utcnow()).total_seconds() + 1)
    assert status_of(location).status == 202  # within a claim's lease after validUntil: waits

    manual_clock.advance(dt.timedelta(days=8).total_seconds())
    polled = status_of(location)

    assert polled.status == 422
    assert polled.body["code"] == "expired"
    [letter] = outbound.dead_letters()
    assert letter["messageId"] == accepted.body["Id"]
    assert letter["error"]["code"] == "expired"
    assert [e["type"] for e in outbound.events()] == [MESSAGE_FAILED]
    assert status_of(location).status == 422
    assert len(outbound.dead_letters()) == 1
    final = MessageStore.from_settings().get(accepted.body["Id"])
    assert final is not None
    assert final.status is MessageStatus.FAILED
    assert final.announced


def test_bulk_member_whose_driver_is_gone_expires_on_its_status_poll(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    from shared.outbound._service import send_service
    from shared.settings import get_settings
    from tests.bulk.test_batch_packs import NUMBERS, accepted_batch, member_ids

    batch = accepted_batch(*NUMBERS[:2])
    first, second = member_ids(batch)
    queue_client(OUTBOUND_QUEUE).clear_messages()  # its pack's driver, dropped
    manual_clock.advance(dt.timedelta(days=8).total_seconds())

    polled = status_of(send_service(get_settings()).status_url(first))

    assert polled.status == 422
    assert polled.body["code"] == "expired"
    assert [d["messageId"] for d in outbound.dead_letters()] == [first]
    other = MessageStore.from_settings().get(second)
    assert other is not None
    assert other.status is MessageStatus.ACCEPTED


def test_a_send_valid_until_the_last_storable_time_answers_its_status(outbound: Outbound) -> None:
    """Its validity plus the lease was past 9999-12-31: every poll answered 500 (OverflowError)."""
    import json

    from shared.outbound import OutboundSender
    from shared.outbound._service import send_service
    from shared.settings import get_settings
    from tests.bulk.test_packing import waiting_for_a_slot

    waiting_for_a_slot(outbound)  # it waits for a slot, queued
    text = json.dumps({"operation": "SendMessage", "messageId": "m-far2", "body": sms(DELIVERED),
                       "validUntil": "9999-12-31T23:59:59Z"})  # fmt: skip
    OutboundSender.from_settings().process(text)

    polled = status_of(send_service(get_settings()).status_url("m-far2"))

    assert polled.status == 202
    assert polled.body["Status"] == "queued"


def test_a_storage_failure_in_a_poll_s_expiry_is_a_503_and_the_next_poll_announces_it(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """Before, the record was written failed first: the event's put failing made the poll a
    500, and no later poll or queue copy ever put out its event and dead letter. Each repeated
    503 (its dead letter's put done, its event's failing) wrote one more dead letter."""
    from shared.names import EVENTS_QUEUE
    from shared.outbound._ports import send_ports
    from shared.settings import get_settings

    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED, content="copy gone"))
    location = accepted.headers["Location"]
    queue_client(OUTBOUND_QUEUE).clear_messages()
    manual_clock.advance(dt.timedelta(days=8).total_seconds())
    send_ports(get_settings())  # built (its queues made once) before the events queue goes
    queue_client(EVENTS_QUEUE).delete_queue()  # the event's put fails (404)

    for _ in range(3):  # a flow polling on through the outage
        refused = status_of(location)
        assert refused.status == 503
        assert refused.body["type"].endswith(":storage-unavailable")
        assert refused.headers["Retry-After"] == "5"
    queue_client(EVENTS_QUEUE).create_queue()
    polled = status_of(location)
    assert polled.status == 422
    assert polled.body["code"] == "expired"
    assert [e["type"] for e in outbound.events()] == [MESSAGE_FAILED]
    assert [d["messageId"] for d in outbound.dead_letters()] == [accepted.body["Id"]]
    final = MessageStore.from_settings().get(accepted.body["Id"])
    assert final is not None
    assert final.announced


def test_a_final_record_left_unannounced_is_announced_by_a_poll_a_lease_later(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """Its writer stopped before its event, and no queue copy of it is left to come back."""
    from shared.messages import FailureInfo
    from shared.settings import get_settings

    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED, content="writer died"))
    location = accepted.headers["Location"]
    queue_client(OUTBOUND_QUEUE).clear_messages()
    store = MessageStore.from_settings()
    record = store.get(accepted.body["Id"])
    assert record is not None
    failure = FailureInfo(code="expired", title="The message expired before it could be sent")
    now = utcnow()
    assert store.swap(record, status=MessageStatus.FAILED, failure=failure, finished_at=now,
                      updated_at=now)  # fmt: skip
    assert status_of(location).status == 422  # its writer may be announcing it now
    assert outbound.events() == []

    manual_clock.advance(get_settings().send_lease_seconds)
    assert status_of(location).status == 422

    assert [e["type"] for e in outbound.events()] == [MESSAGE_FAILED]
    assert [d["messageId"] for d in outbound.dead_letters()] == [accepted.body["Id"]]
    final = store.get(accepted.body["Id"])
    assert final is not None
    assert final.announced


@pytest.mark.parametrize("copy_left", [False, True])
def test_a_queued_send_untouched_for_a_week_is_put_out_again_by_its_status_poll(
    outbound: Outbound, manual_clock: ManualClock, copy_left: bool
) -> None:
    """Valid longer than the 7 days an older release's copy lived: it stayed 202 queued, unsent,
    until its validity ended. A copy that survived too is the same message: sent once."""
    outbound.configure(SEND_VALIDITY_SECONDS=30 * 24 * 3600)
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED, content="a month valid"))
    location = accepted.headers["Location"]
    if not copy_left:
        queue_client(OUTBOUND_QUEUE).clear_messages()  # what the 7-day default did to it
    manual_clock.advance(WEEK - 1)
    assert status_of(location).status == 202
    assert outbound.queued() == int(copy_left)

    manual_clock.advance(1)
    assert status_of(location).status == 202
    assert outbound.queued() == 1 + copy_left
    assert status_of(location).status == 202
    assert outbound.queued() == 1 + copy_left  # put out once, not on every poll
    outbound.drain()

    assert status_of(location).status == 200
    assert len(outbound.upstream()) == 1
    assert outbound.dead_letters() == []


def _poll_reads_then(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], object]) -> None:
    """The next status poll reads its record, then ``meanwhile`` runs (another part of the app
    writes the record) before the poll's expiry writes it."""
    real, pending = MessageStore.get_with_slots, [meanwhile]

    def read_then(self: MessageStore, message_id: str) -> Any:
        got = real(self, message_id)
        if pending:
            pending.pop()()
        return got

    monkeypatch.setattr(MessageStore, "get_with_slots", read_then)


def test_a_send_cancelled_while_its_poll_expires_it_is_only_cancelled(
    outbound: Outbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll put out its message.failed and dead letter before its write, which the cancel
    had won: the flow heard cancelled and failed, a cancelled send had a dead letter."""
    from shared.events import MESSAGE_CANCELLED

    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED, content="cancel me"))
    location, mid = accepted.headers["Location"], accepted.body["Id"]
    queue_client(OUTBOUND_QUEUE).clear_messages()
    manual_clock.advance(dt.timedelta(days=8).total_seconds())
    cancel = partial(call_http, "CancelMessage", "DELETE", route_params={"MessageId": mid})
    _poll_reads_then(monkeypatch, cancel)

    assert status_of(location).status == 410

    assert outbound.dead_letters() == []
    assert [e["type"] for e in outbound.events()] == [MESSAGE_CANCELLED]
    final = MessageStore.from_settings().get(mid)
    assert final is not None
    assert final.status is MessageStatus.CANCELLED


def test_a_send_its_poll_and_its_sender_both_expire_has_one_dead_letter_and_one_event(
    outbound: Outbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll's letter (dated validUntil) and the sender's (dated when it failed it) were
    two letters, filed apart, for one failure; the poll's event a second one too."""
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED, content="backlog"))
    location, mid = accepted.headers["Location"], accepted.body["Id"]
    manual_clock.advance(dt.timedelta(days=8).total_seconds())
    _poll_reads_then(monkeypatch, outbound.run_once)  # its copy comes meanwhile: expired

    polled = status_of(location)

    assert polled.status == 422
    assert polled.body["code"] == "expired"
    assert [d["messageId"] for d in outbound.dead_letters()] == [mid]
    assert [e["type"] for e in outbound.events()] == [MESSAGE_FAILED]
    assert status_of(location).status == 422
    assert len(outbound.dead_letters()) == 1


def test_a_poll_that_loses_its_expiry_to_another_poll_announces_what_that_poll_could_not(
    outbound: Outbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two polls at once: the one that wrote the record failed could not put its event out (a
    503), the other lost the write and answered 422 without announcing; the flow then stopped
    polling, and the event and dead letter were never put out."""
    from shared.names import EVENTS_QUEUE
    from shared.outbound._ports import send_ports
    from shared.settings import get_settings

    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED, content="two polls"))
    location, mid = accepted.headers["Location"], accepted.body["Id"]
    queue_client(OUTBOUND_QUEUE).clear_messages()
    manual_clock.advance(dt.timedelta(days=8).total_seconds())
    send_ports(get_settings())  # built (its queues made once) before the events queue goes
    answers: list[int] = []

    def other_poll() -> None:  # wins the write, its event's put fails
        queue_client(EVENTS_QUEUE).delete_queue()
        answers.append(status_of(location).status)
        queue_client(EVENTS_QUEUE).create_queue()

    _poll_reads_then(monkeypatch, other_poll)
    polled = status_of(location)

    assert answers == [503]
    assert (polled.status, polled.body["code"]) == (422, "expired")
    assert [e["type"] for e in outbound.events()] == [MESSAGE_FAILED]
    assert [d["messageId"] for d in outbound.dead_letters()] == [mid]
    final = MessageStore.from_settings().get(mid)
    assert final is not None
    assert final.announced
