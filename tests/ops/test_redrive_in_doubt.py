"""A send that may have reached SmartDialog keeps that doubt through a forced re-drive.

Found in review: ``MessageStore.redrive`` reset the attempts and kept no trace of the doubt
behind an ``outcome-unknown`` failure. So a packable single send that had gone alone (under its
own RequestId, which SmartDialog de-duplicates) was packed, re-driven, with other single sends
of its text under a new pack's RequestId, and its recipient got it twice; CancelMessage, which
answers 409 once an attempt may have been accepted, cancelled it; and a refusal of its repeat
was recorded ``upstream-rejected`` (not sent) where the sender reads it as ``outcome-unknown``
on a retry. docs/operations.md promises that such a message "re-drives with its own id and so
its RequestId".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

import sandbox.app as sandbox_app
from sandbox.faults import FaultKind, FaultPlan
from shared.clock import ManualClock
from shared.messages import MessageRecord, MessageStatus, MessageStore
from shared.names import OUTBOUND_DEAD_LETTER_QUEUE
from tests.bulk.test_packing import waiting_for_a_slot
from tests.ops.conftest import Outbound, index_written_dead_letters
from tests.outbound.conftest import call_http, clear_quota, fresh_number, sms


def record(message_id: str) -> MessageRecord:
    found = MessageStore.from_settings().get(message_id)
    assert found is not None
    return found


def fail_in_doubt(ops: Outbound, send: Callable[[], str]) -> str:
    """``send()`` accepts one message: it goes alone, SmartDialog accepts it and the answer is
    lost, so with one attempt it fails ``outcome-unknown``. Its id."""
    ops.configure(SEND_MAX_ATTEMPTS=1)
    ops.sandbox.app.faults.configure(FaultPlan(rate=1.0, kinds=(FaultKind.LOST_ANSWER,)))
    try:
        message_id = send()
        ops.drain()
    finally:
        ops.sandbox.app.faults.configure(FaultPlan())
    failed = record(message_id)
    assert failed.failure is not None
    assert failed.failure.code == "outcome-unknown"
    assert (failed.pack_id, failed.pack_key is not None) == (None, True)  # alone, packable
    assert [c["body"]["RequestId"] for c in ops.upstream()] == [message_id]
    return message_id


def queued_in_doubt(ops: Outbound) -> tuple[str, str]:
    """A command put on the queue with its messageId that failed in doubt: its number and id."""
    number = fresh_number()
    message_id = f"doubt-{number[-7:]}"

    def send() -> str:
        ops.enqueue({"operation": "SendMessage", "messageId": message_id, "body": sms(number)})
        return message_id

    fail_in_doubt(ops, send)
    return number, message_id


def force_redrive(message_id: str) -> None:
    index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)
    letters = call_http("ListDeadLetters", "GET").body["value"]
    [letter] = [d["id"] for d in letters if d["messageId"] == message_id]
    forced = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter},
                       params={"force": "true"})  # fmt: skip
    assert forced.body["outcome"] == "redriven", forced.body


def accepted_once(ops: Outbound, message_id: str, number: str) -> None:
    """The re-drive went alone under ``message_id``'s RequestId: SmartDialog answered it with
    the first answer, so ``number`` got the message once, recorded sent (a duplicate)."""
    calls = [(c["body"]["RequestId"], c["body"]["Recipients"]) for c in ops.upstream()]
    with_number = [rid for rid, rcpts in calls if number in (r["Address"] for r in rcpts)]
    assert with_number == [message_id, message_id], calls
    taken = Counter(c["body"]["RequestId"] for c in ops.upstream() if c["status"] == 200)
    assert taken[message_id] == 1  # the first; the repeat was answered 409
    done = record(message_id)
    assert (done.status, done.duplicate) == (MessageStatus.SENT, True)


def test_a_forced_redrive_of_a_lone_send_in_doubt_goes_alone_beside_sends_of_its_text(
    ops: Outbound, manual_clock: ManualClock
) -> None:
    number = fresh_number()

    def send() -> str:
        accepted = call_http("SendMessage", "POST", body=sms(number))
        assert accepted.status == 202, accepted.body
        return str(accepted.body["Id"])

    message_id = fail_in_doubt(ops, send)
    for other in (fresh_number(), fresh_number()):  # queued in its lane meanwhile
        assert call_http("SendMessage", "POST", body=sms(other)).status == 202
    force_redrive(message_id)
    assert record(message_id).maybe_sent  # the re-drive keeps the doubt
    ops.drain()
    accepted_once(ops, message_id, number)


def test_a_forced_redrive_of_a_queued_command_in_doubt_is_not_packed_from_the_index(
    ops: Outbound, manual_clock: ManualClock
) -> None:
    number, message_id = queued_in_doubt(ops)
    waiting_for_a_slot(ops)
    for other in (fresh_number(), fresh_number()):
        ops.enqueue({"operation": "SendMessage", "messageId": f"doubt-{other[-7:]}",
                     "body": sms(other)})  # fmt: skip
    ops.run_once()  # recorded and indexed, waiting for a slot
    ops.configure(QUOTA_CALLS=2000, QUOTA_PERIOD_SECONDS=60)
    clear_quota()
    force_redrive(message_id)
    ops.drain()
    accepted_once(ops, message_id, number)


def test_a_message_redriven_in_doubt_cannot_be_cancelled(ops: Outbound) -> None:
    number, message_id = queued_in_doubt(ops)
    force_redrive(message_id)
    cancel = call_http("CancelMessage", "DELETE", route_params={"MessageId": message_id})
    assert cancel.status == 409, cancel.body  # SmartDialog may have it: its repeat settles it
    ops.drain()
    accepted_once(ops, message_id, number)


def test_a_refused_repeat_after_a_forced_redrive_is_still_in_doubt(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SmartDialog's definition does not say how it answers a repeated RequestId; a refusal
    naming nobody after an attempt that may have been accepted is ``outcome-unknown``, after a
    re-drive too (it was ``upstream-rejected``: not sent, of a message SmartDialog had)."""
    refuse = staticmethod(lambda request_id, earlier: sandbox_app.ApiError(400, "Cancelled"))
    monkeypatch.setattr(sandbox_app.Sandbox, "_duplicate", refuse)
    _, message_id = queued_in_doubt(ops)
    force_redrive(message_id)
    ops.drain()
    failed = record(message_id)
    assert failed.failure is not None
    assert (failed.failure.code, failed.failure.upstreamStatus) == ("outcome-unknown", 400)


def test_a_forced_redrive_of_a_send_in_doubt_is_kept_while_its_recipient_opts_out(
    ops: Outbound,
) -> None:
    """Only a message that failed ``suppressed`` was checked: a send in doubt whose recipient
    texted STOP after it failed was re-driven by force (the operator found no delivery report),
    and the sender skips the opt-out check of a send that may have reached SmartDialog, so it
    went out again days after the STOP (found in review)."""
    from shared.clock import utcnow
    from shared.suppressions import SuppressionStore

    number, message_id = queued_in_doubt(ops)
    stops = SuppressionStore.from_settings()
    stops.add("s-1001-oneway", number, keyword="STOP", source="inbound", now=utcnow())
    index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)
    [letter] = [d for d in call_http("ListDeadLetters", "GET").body["value"]
                if d["messageId"] == message_id]  # fmt: skip

    forced = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter["id"]},
                       params={"force": "true"})  # fmt: skip
    ops.drain()

    assert forced.body["outcome"] == "kept", forced.body
    assert "still opts out" in forced.body["detail"]
    assert len(ops.upstream()) == 1  # the attempt in doubt only
    assert record(message_id).status is MessageStatus.FAILED
    stops.remove("s-1001-oneway", number)
    force_redrive(message_id)  # once they opt back in, it may
