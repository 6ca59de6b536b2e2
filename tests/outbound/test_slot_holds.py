"""A send sent away for the quota holds a slot of its own (``QuotaWait.come_back_in``); one that
ends without taking a slot gives it up: cancelled through CancelMessage, or found ended
(cancelled, expired, ...) when it comes back. Found in review of stop 39's holds: such a hold
stayed until its slot's time, so the sends sent away meanwhile skipped that slot, and with a
backlog nobody took it. And what a pending send's status poll is told of those slots
(``QuotaWait.until_due``): its own, its pack driver's, or its pack key's while the key would wait.

The sender's own way to the quota here: 3 calls a 10 s on the test's manual clock, taken a second
apart, so the slots free 8, 9 and 10 s after the denial that told so.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from shared.clock import ManualClock, utcnow
from shared.messages import FailureInfo, MessageStatus, MessageStore
from shared.names import OUTBOUND_QUEUE
from shared.outbound import OutcomeKind
from shared.outbound._quota_wait import QuotaWait, slot_holder
from shared.quota import InMemoryQuotaStore, QuotaDenied
from tests.bulk.test_pack_recovery import _sender_waiting_with
from tests.bulk.test_packing import record
from tests.outbound.conftest import (
    DELIVERED,
    Outbound,
    call_http,
    fresh_number,
    sms,
    status_of,
)

#: Each accepted send's status URL (its Location), by id.
LOCATIONS: dict[str, str] = {}


def one(message_id: str) -> str:
    return slot_holder(None, message_id)


def accept(address: str = DELIVERED, *, alone: bool = True, content: str = "held") -> str:
    """A SendMessage; ``alone``: with a RequestId of its own, so it never shares a call."""
    extra = {"RequestId": f"held-{uuid.uuid4().hex[:12]}"} if alone else {}
    answer = call_http("SendMessage", "POST", body=sms(address, content=content, **extra))
    assert answer.status == 202, answer.body
    LOCATIONS[answer.body["Id"]] = answer.headers["Location"]
    return str(answer.body["Id"])


def told_full(clock: ManualClock) -> QuotaWait:
    waits = QuotaWait(InMemoryQuotaStore(calls=3, period=10.0, clock=clock), 1.0, clock)
    for k in range(3):
        if k:
            clock.advance(1.0)
        waits.take(0.0, one(f"earlier-{k}"))
    assert isinstance(waits.take(0.0, one("denied"))[0], QuotaDenied)
    assert waits.hint() == pytest.approx(8.0, abs=0.01)
    return waits


def sent_away(waits: QuotaWait, *message_ids: str) -> None:
    """Each message's queue copy, read while the quota is full: deferred without a claim."""
    sender = _sender_waiting_with(waits)
    for message_id in message_ids:
        deferred = sender.process(record(message_id).command)
        assert (deferred.kind, deferred.detail) == (OutcomeKind.DEFERRED, "quota")


def test_a_send_found_ended_when_it_comes_back_gives_up_its_slot(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    lone = accept()
    waits = told_full(manual_clock)
    sent_away(waits, lone)
    assert waits.held(one(lone)) == pytest.approx(8.0, abs=0.01)
    store, now = MessageStore.from_settings(), utcnow()
    assert store.swap(record(lone), status=MessageStatus.CANCELLED, finished_at=now, updated_at=now)
    manual_clock.advance(7.5)  # back within a second of its slot

    back = _sender_waiting_with(waits).process(record(lone).command)

    assert back.kind is OutcomeKind.ACKNOWLEDGED
    assert waits.held(one(lone)) <= 0
    # The next message sent away comes for that slot (due in half a second: back at once), not
    # the one after it (back in half a second).
    assert waits.come_back_in(None, one("next")) == pytest.approx(0.0, abs=0.01)
    assert outbound.upstream() == []


def test_cancelling_a_send_sent_away_for_the_quota_gives_up_its_slot(
    outbound: Outbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.outbound import _quota_wait

    first, second = accept(), accept()
    waits = told_full(manual_clock)
    monkeypatch.setattr(_quota_wait, "quota_wait", lambda settings: waits)  # this process's
    sent_away(waits, first, second)
    assert [waits.held(one(first)), waits.held(one(second))] == pytest.approx([8.0, 9.0], abs=0.01)

    cancelled = call_http("CancelMessage", "DELETE", route_params={"MessageId": first})

    assert cancelled.status == 200
    assert waits.held(one(first)) <= 0
    assert waits.held(one(second)) == pytest.approx(9.0, abs=0.01)
    # The next message sent away comes for the first's slot, a second early, not the third.
    assert waits.come_back_in(None, one("next")) == pytest.approx(8.0 - 1.0, abs=0.01)


def test_a_pack_keys_slot_stays_held_when_one_of_its_sends_ends(
    outbound: Outbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sends of one pack key share a slot: one of them cancelled, the others still come
    back for it, so the next message sent away comes for the slot after."""
    from shared.outbound import _quota_wait

    content = f"keyed {uuid.uuid4().hex[:8]}"
    ids = [accept(fresh_number(), alone=False, content=content) for _ in range(2)]
    key = record(ids[0]).pack_key
    assert key is not None
    assert record(ids[1]).pack_key == key
    waits = told_full(manual_clock)
    monkeypatch.setattr(_quota_wait, "quota_wait", lambda settings: waits)
    sent_away(waits, *ids)
    assert waits.held(slot_holder(key, ids[0])) == pytest.approx(8.0, abs=0.01)

    assert call_http("CancelMessage", "DELETE", route_params={"MessageId": ids[0]}).status == 200

    assert waits.held(slot_holder(key, ids[1])) == pytest.approx(8.0, abs=0.01)
    assert waits.come_back_in(None, one("next")) == pytest.approx(9.0 - 1.0, abs=0.01)


def test_a_status_poll_counts_on_a_pack_keys_slot_only_while_the_key_would_wait_for_it(
    outbound: Outbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send sent alone is done no sooner than the slot it was sent away for; a send that may
    share a call is done sooner if a new send of its key takes a slot and packs it, which the
    sender does once the first slot is within its in-process wait. Found in review: a new send
    of a key whose slot was a window off answered Retry-After 30 and was sent at once."""
    from shared.outbound import _quota_wait

    content = f"keyed {uuid.uuid4().hex[:8]}"
    first, keyed, last = accept(), accept(fresh_number(), alone=False, content=content), accept()
    key = record(keyed).pack_key
    assert key is not None
    waits = told_full(manual_clock)
    monkeypatch.setattr(_quota_wait, "quota_wait", lambda settings: waits)
    sent_away(waits, first, keyed, last)
    assert waits.held(slot_holder(key, keyed)) == pytest.approx(9.0, abs=0.01)

    def polled() -> list[str]:
        return [status_of(LOCATIONS[m]).headers["Retry-After"] for m in ids]

    ids = (first, keyed, last)
    manual_clock.advance(0.01)  # past the quota's whole milliseconds
    full = polled()
    manual_clock.advance(7.5)  # the first slot frees in half a second: a new send would take it
    near = polled()

    assert full == ["8", "9", "10"]
    assert near == ["1", "1", "3"]  # the key's: the hint (0.5 s); the last: its own slot's 2.5 s


def test_a_bulk_members_status_poll_waits_for_its_pack_drivers_slot(
    outbound: Outbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only its pack's driver sends a bulk member, and nothing sends the driver before it comes
    back: the member's poll is told the driver's slot, not its pack key's (a single send of the
    same text holds that one) nor, with the first slot near, the first. Found in review."""
    from shared.outbound import _quota_wait
    from shared.outbound._service import SendService
    from shared.settings import get_settings
    from tests.bulk.test_bulk_action import batch_status

    content = f"bulk held {uuid.uuid4().hex[:8]}"
    people = [{"Address": fresh_number()} for _ in range(2)]
    bulk = call_http(
        "SendBulkMessages", "POST", body={**sms(content=content), "Recipients": people}
    )
    assert bulk.status == 202, bulk.body
    member = batch_status(bulk.headers["Location"], details=True).body["Recipients"][0]["Id"]
    pack = record(member).pack_id
    assert pack is not None
    [driver] = [json.dumps(m) for m in outbound.read(OUTBOUND_QUEUE) if m.get("packId") == pack]
    lone, single = accept(), accept(fresh_number(), alone=False, content=content)
    assert record(single).pack_key == record(member).pack_key
    waits = told_full(manual_clock)
    monkeypatch.setattr(_quota_wait, "quota_wait", lambda settings: waits)
    sent_away(waits, lone)
    deferred = _sender_waiting_with(waits).process(driver)
    assert (deferred.kind, deferred.detail) == (OutcomeKind.DEFERRED, "quota")
    sent_away(waits, single)  # the key's slot: after the driver's
    location = SendService(get_settings()).status_url(member)

    def polled() -> str:
        return status_of(location).headers["Retry-After"]

    manual_clock.advance(0.01)  # past the quota's whole milliseconds
    full = polled()
    manual_clock.advance(7.5)  # the first slot frees in half a second, the driver's in 1.5 s
    near = polled()

    assert (full, near) == ("9", "2")


def test_a_retried_sends_status_poll_waits_for_its_slot_once_its_backoff_is_over(
    outbound: Outbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send whose attempt failed keeps that attempt's backoff end (``NextAttemptAt``) until it
    is claimed again. Its poll is told the backoff while it runs; once it is over and the send
    was sent away for the quota, the send's own slot. Found in review: the backoff's past end
    answered ``Retry-After: 1``, so its flow polled every second until the slot freed."""
    from shared.outbound import _quota_wait

    backing_off, retried = accept(), accept()
    store, now = MessageStore.from_settings(), utcnow()
    error = FailureInfo(code="upstream-unavailable", title="SmartDialog answered 503")
    for message_id, seconds in ((backing_off, 20.0), (retried, -1.0)):
        due = now + dt.timedelta(seconds=seconds)
        assert store.swap(record(message_id), next_attempt_at=due, last_error=error, updated_at=now)
    waits = told_full(manual_clock)
    monkeypatch.setattr(_quota_wait, "quota_wait", lambda settings: waits)
    sent_away(waits, retried)  # its copy is back after the backoff, and the quota is full
    manual_clock.advance(0.01)  # past the quota's whole milliseconds

    polled = {
        m: int(status_of(LOCATIONS[m]).headers["Retry-After"]) for m in (backing_off, retried)
    }

    assert 15 <= polled[backing_off] <= 20  # the backoff's end (the record's clock is real time)
    assert polled[retried] == 8  # its own slot's, not a second
