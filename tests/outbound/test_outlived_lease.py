"""A call that outlives its claim's lease: another worker takes the claim over and calls; the
late outcome of the first call must not undo that claim (a sent is still recorded: it is true)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from shared.clock import ManualClock, utcnow
from shared.messages import MessageRecord, MessageStatus, MessageStore
from shared.smartdialog import APITimeoutError, InvalidParameterError
from tests.crash import outlive_lease
from tests.outbound.conftest import DELIVERED, Outbound, sms

SENT = "fi.arena.smartdialog.message.sent"


def record(message_id: str) -> MessageRecord:
    found = MessageStore.from_settings().get(message_id)
    assert found is not None
    return found


def timed_out(call: Callable[[], Any]) -> Exception:
    """The call reached upstream (and was sent), but its answer came too late."""
    call()
    error = APITimeoutError(
        "request timed out (ReadTimeout)", operation_id="SendMessage", method="POST", path="/"
    )
    error.__cause__ = httpx.ReadTimeout("the answer came too late")
    return error


def refused(call: Callable[[], Any]) -> Exception:
    """The call was refused (nothing sent), its answer later than the lease."""
    return InvalidParameterError(
        operation_id="SendMessage", parameter="body", location="body", reason="refused late"
    )


def overtaken(
    outbound: Outbound,
    monkeypatch: pytest.MonkeyPatch,
    clock: ManualClock,
    late: Callable[[Callable[[], Any]], Any],
    message_id: str,
) -> tuple[MessageRecord, MessageRecord]:
    """Send ``message_id`` with a first call that outlives its lease (``late``) while a copy of its
    queue message takes the claim over and calls: the record as the late outcome left it, and
    as the successor's call left it."""
    text = json.dumps({"operation": "SendMessage", "messageId": message_id, "body": sms(DELIVERED)})
    finish = outlive_lease(monkeypatch, clock, late, lambda: outbound.invoke(text, dequeue_count=2))
    outbound.invoke(text)
    left = record(message_id)
    finish()
    return left, record(message_id)


def test_a_late_timeout_leaves_the_claim_of_the_worker_that_took_over_alone(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    left, done = overtaken(outbound, monkeypatch, manual_clock, timed_out, "m-late-timeout")

    assert left.status is MessageStatus.SENDING  # not queued for a third call
    assert left.attempts == 2  # the successor's claim, its lease
    assert left.lease_until is not None
    assert left.lease_until > utcnow(manual_clock)
    assert done.status is MessageStatus.SENT
    assert done.duplicate  # the first call got through: the successor's was a repeat
    assert [c["status"] for c in outbound.upstream()] == [200, 409]
    assert outbound.queued() == 0  # the late timeout put no retry on the queue
    assert [e["type"] for e in outbound.events()] == [SENT]


def test_a_late_refusal_does_not_fail_a_message_the_worker_that_took_over_sends(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    left, done = overtaken(outbound, monkeypatch, manual_clock, refused, "m-late-refusal")

    assert left.status is MessageStatus.SENDING
    assert left.attempts == 2
    assert done.status is MessageStatus.SENT
    assert not done.duplicate
    assert [c["status"] for c in outbound.upstream()] == [200]
    assert [e["type"] for e in outbound.events()] == [SENT]
    assert outbound.dead_letters() == []


def test_a_packs_late_refusal_leaves_its_members_to_the_worker_that_retries_the_pack(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    from tests.bulk.test_packing import NUMBERS, accept, park, waiting_for_a_slot

    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:2])
    leader = record(ids[0]).command
    park(outbound)  # they wait, indexed, to be packed
    outbound.configure(QUOTA_CALLS=2000, QUOTA_PERIOD_SECONDS=60)  # then each call gets a slot
    # A refusal naming nobody hands a pack's members back, to go again in new packs; late, it
    # must not hand back the claims of the worker that retries the pack meanwhile.
    finish = outlive_lease(
        monkeypatch, manual_clock, refused, lambda: outbound.invoke(leader, dequeue_count=2)
    )
    outbound.invoke(leader)
    left = [record(i) for i in ids]
    finish()

    assert [(r.status, r.attempts) for r in left] == [(MessageStatus.SENDING, 2)] * 2
    assert left[0].pack_id is not None
    assert {r.pack_id for r in left} == {left[0].pack_id}
    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [200]  # the retry's call, the pack's RequestId
    assert calls[0]["body"]["RequestId"] == left[0].pack_id
    assert [record(i).status for i in ids] == [MessageStatus.SENT] * 2
