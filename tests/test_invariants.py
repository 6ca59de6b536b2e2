"""The invariant helper (tests/invariants.py) finds each way the invariant breaks, and names it."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient

from devhost.azurite import Azurite
from shared.events import MESSAGE_CANCELLED, MESSAGE_FAILED, MESSAGE_SENT
from shared.messages import FailureInfo, MessageRecord, MessageStatus, Operation
from shared.names import MESSAGES_TABLE
from tests.invariants import InvariantReport, QueueDrain, check_invariants, read_records

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def _record(
    message_id: str, status: MessageStatus, *addresses: str, **changes: Any
) -> MessageRecord:
    command = {
        "operation": "SendMessage",
        "messageId": message_id,
        "body": {"Content": "hi", "Recipients": [{"Address": a} for a in addresses]},
    }
    record = MessageRecord(
        message_id=message_id,
        status=status,
        operation=Operation.SEND_MESSAGE,
        customer_id="1001",
        service_id="s-1001-oneway",
        request_id=message_id,
        command=json.dumps(command),
        fingerprint="",
        created_at=NOW,
        updated_at=NOW,
        valid_until=NOW + dt.timedelta(days=1),
        recipient_count=len(addresses),
        part_count=1,
    )
    return MessageRecord(**{**record.__dict__, **changes})


def _sent(message_id: str, upstream_id: str, *addresses: str) -> MessageRecord:
    answer = {
        "MessageId": upstream_id,
        "Recipients": [{"Address": a, "Id": f"{upstream_id}-{a}"} for a in addresses],
    }
    return _record(message_id, MessageStatus.SENT, *addresses, result=json.dumps(answer))


def _accepted(upstream_id: str, *addresses: str, request_id: str = "r") -> dict[str, Any]:
    return {
        "direction": "outbound",
        "messageId": upstream_id,
        "recipients": [{"id": f"{upstream_id}-{a}", "address": a} for a in addresses],
        "request": {"RequestId": request_id},
    }


def _event(kind: str, message_id: str, **data: Any) -> dict[str, Any]:
    return {"type": kind, "subject": message_id, "data": {"messageId": message_id, **data}}


A, B, C = "+358451000001", "+358451000002", "+358451000003"
EXPIRED = FailureInfo(code="expired", title="Not sent within its validity period")


def _check(
    records: list[MessageRecord],
    events: list[dict[str, Any]],
    upstream: list[dict[str, Any]],
    *,
    ids: list[str] | None = None,
    dead_letters: list[dict[str, Any]] | None = None,
    poison: tuple[str, ...] = (),
) -> InvariantReport:
    by_id = {r.message_id: r for r in records}
    return check_invariants(
        "unused",
        ids or list(by_id),
        events=events,
        upstream=upstream,
        dead_letters=dead_letters,
        poison=poison,
        records=by_id,
    )


def _healthy() -> tuple[list[MessageRecord], list[dict[str, Any]], list[dict[str, Any]]]:
    records = [
        _sent("m1", "u1", A, B),
        _record("m2", MessageStatus.FAILED, C, failure=EXPIRED),
        _record("m3", MessageStatus.CANCELLED, "+358451000004"),
    ]
    events = [
        _event(MESSAGE_SENT, "m1"),
        _event(MESSAGE_SENT, "m1"),  # a re-emission with the same id is allowed
        _event(MESSAGE_FAILED, "m2", error={"code": "expired"}),
        _event(MESSAGE_CANCELLED, "m3"),
        _event("fi.arena.smartdialog.message.delivery", "m1"),
        _event(MESSAGE_SENT, "someone-else"),
    ]
    return records, events, [_accepted("u1", A, B)]


def test_a_healthy_run_holds_and_is_summarised() -> None:
    records, events, upstream = _healthy()
    report = _check(
        records, events, upstream, dead_letters=[{"reason": "failed", "messageId": "m2"}]
    )
    report.assert_holds()
    assert report.statuses == {"sent": 1, "failed": 1, "cancelled": 1}
    assert report.failure_codes == {"expired": 1}
    assert report.upstream_recipients == 2


def test_an_accepted_message_without_a_record_or_in_the_poison_queue_is_lost() -> None:
    records, events, upstream = _healthy()
    report = _check(records, events, upstream, ids=["m1", "m2", "m3", "gone"], poison=("{...}",))
    assert report.by_kind() == {"lost": 2}
    assert any("gone was accepted but has no record" in p for p in report.problems)


def test_a_message_not_final_is_stuck_with_its_last_error() -> None:
    records, events, upstream = _healthy()
    last = FailureInfo(code="upstream-unavailable", title="SmartDialog answered 503")
    records.append(
        _record("m4", MessageStatus.QUEUED, "+358451000005", attempts=3, last_error=last)
    )
    report = _check(records, events, upstream)
    assert report.problems == [
        "stuck: m4 is queued after 3 attempt(s) (last error: SmartDialog answered 503)"
    ]


@pytest.mark.parametrize(
    ("drop", "add", "expected"),
    [
        (MESSAGE_SENT, None, "event: m1 is sent but has no fi.arena.smartdialog.message.sent"),
        (MESSAGE_CANCELLED, None, "event: m3 is cancelled but has no"),
        (None, _event(MESSAGE_FAILED, "m1", error={"code": "x"}), "event: m1 is sent but also has"),
        (MESSAGE_FAILED, _event(MESSAGE_FAILED, "m2", error={"code": "attempts-exhausted"}),
         "event: m2 failed with expired; its event: ['attempts-exhausted']"),
    ],
)  # fmt: skip
def test_a_final_message_needs_its_own_event_and_no_other(
    drop: str | None, add: dict[str, Any] | None, expected: str
) -> None:
    records, events, upstream = _healthy()
    events = [e for e in events if e["type"] != drop] + ([add] if add else [])
    report = _check(records, events, upstream)
    assert len(report.problems) == 1
    assert report.problems[0].startswith(expected)


def test_a_failed_message_needs_its_dead_letter_when_they_are_given() -> None:
    records, events, upstream = _healthy()
    report = _check(records, events, upstream, dead_letters=[])
    assert report.problems == ["dead-letter: m2 failed but has no dead letter"]


def test_a_recipient_accepted_twice_upstream_is_a_duplicate_naming_the_unclaimed_send() -> None:
    records, events, upstream = _healthy()
    upstream.append(_accepted("u2", B, request_id="pack-7"))
    report = _check(records, events, upstream)
    assert report.by_kind() == {"duplicate": 2}
    assert f"duplicate: {B} was accepted upstream 2 time(s), sent by 1 of our message(s)" in (
        report.problems
    )
    assert any("in u2 (RequestId pack-7), which no record claims" in p for p in report.problems)


def test_a_message_failed_here_but_accepted_upstream_has_the_wrong_outcome() -> None:
    records, events, upstream = _healthy()
    upstream.append(_accepted("u3", C))
    report = _check(records, events, upstream)
    assert report.problems == [f"outcome: m2 is failed (expired) but upstream accepted {C}"]
    upstream.append(_accepted("u4", C))  # and twice: a duplicate as well
    report = _check(records, events, upstream)
    assert report.by_kind() == {"duplicate": 3}


def test_a_failure_that_says_it_may_have_been_sent_may_have_been_sent_once() -> None:
    records, events, upstream = _healthy()
    unknown = FailureInfo(code="outcome-unknown", title="An earlier attempt may have been sent")
    records[1] = _record("m2", MessageStatus.FAILED, C, failure=unknown)
    events[2] = _event(MESSAGE_FAILED, "m2", error={"code": "outcome-unknown"})
    _check(records, events, [*upstream, _accepted("u3", C)]).assert_holds()
    twice = _check(records, events, [*upstream, _accepted("u3", C), _accepted("u4", C)])
    assert twice.by_kind() == {"duplicate": 3}


def test_a_send_recorded_but_not_accepted_upstream_or_missing_a_recipient_is_named() -> None:
    records, events, _ = _healthy()
    report = _check(records, events, [_accepted("u1", A)])
    assert any(p.startswith(f"upstream: m1: recipient u1-{B}") for p in report.problems)
    report = _check(records, events, [])
    assert any("which the upstream never accepted" in p for p in report.problems)
    partial = [_sent("m1", "u1", A), *records[1:]]
    partial[0] = MessageRecord(**{**partial[0].__dict__, "command": records[0].command})
    report = _check(partial, events, [_accepted("u1", A, B)])
    assert f"upstream: m1 is recorded sent without recipient(s) ['{B}']" in report.problems


def test_assert_holds_lists_the_problems() -> None:
    records, events, upstream = _healthy()
    with pytest.raises(AssertionError, match=r"(?s)invariant does not hold.*m1 is sent but has no"):
        _check(records, [e for e in events if e["type"] != MESSAGE_SENT], upstream).assert_holds()


def test_records_and_queues_are_read_from_storage(azurite: Azurite, unique_name: str) -> None:
    table = TableClient.from_connection_string(azurite.connection_string, MESSAGES_TABLE)
    with contextlib.suppress(ResourceExistsError):
        table.create_table()
    record = _sent(f"{unique_name}-1", "u1", A)
    table.upsert_entity(record.to_entity())
    found = read_records(azurite.connection_string, [record.message_id, "not-there"])
    assert list(found) == [record.message_id]
    assert found[record.message_id].status is MessageStatus.SENT

    drain = QueueDrain(azurite.connection_string, unique_name)
    assert drain.drain() == []  # a queue that does not exist is empty
    drain.queue.create_queue()
    for i in range(40):
        drain.queue.send_message(json.dumps({"n": i}))
    assert [e["n"] for e in drain.json()] == list(range(40))
    drain.queue.send_message("not json")
    assert len(drain.drain()) == 41  # cumulative
    assert drain.queue.peek_messages() == []
