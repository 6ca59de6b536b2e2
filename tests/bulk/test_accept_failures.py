"""A bulk request that fails part-way: after its batch row, after its members, after some or
all of its drivers. Whatever fails, every accepted recipient is sent once: a replay with the
same Idempotency-Key finishes the batch, and an answer that makes a caller without a key send
again (a 500) comes only while nothing of the batch can go out.
"""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError

from shared.clock import ManualClock
from shared.messages import BatchStore, MessageStore, idempotency_key_hash
from shared.outbound._bulk import BulkService
from shared.outbound._service import outbound_queue
from shared.settings import get_settings
from tests.bulk.test_batch_packs import NUMBERS, backdate_accepting_batches, drivers
from tests.bulk.test_bulk_action import batch_status, bulk, people
from tests.crash import crash_once
from tests.outbound.conftest import Outbound


def sent(outbound: Outbound) -> list[str]:
    outbound.drain()
    return sorted(r["Address"] for c in outbound.upstream() for r in c["body"]["Recipients"])


def test_a_replay_right_after_the_members_failed_to_be_written_sends_them(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch row was written, the members were not (a storage error: 500). The caller's
    retry with the same key, at once, used to answer 200 "done" with every count 0 and no
    Location, and nothing was ever sent."""
    crash_once(monkeypatch, MessageStore, "create_many", "storage failed")
    body = {"Recipients": people(*NUMBERS[:10])}
    assert bulk(body, **{"Idempotency-Key": "at-once-1"}).status == 500

    again = bulk(body, **{"Idempotency-Key": "at-once-1"})

    assert again.status == 202, again.body
    assert again.body["Accepted"] == 10
    assert "Location" in again.headers
    assert sent(outbound) == sorted(NUMBERS[:10])
    done = batch_status(again.headers["Location"])
    assert (done.status, done.body["Status"], done.body["Counts"]["sent"]) == (200, "done", 10)


def test_a_batch_whose_request_died_recording_it_is_not_done_while_members_are_missing(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process died before writing the members (nothing marked the batch): a replay soon
    after is told the first request is in progress, and the batch's status is pending, not
    "done" with every count 0."""
    from shared.outbound._bulk import BulkService

    crash_once(monkeypatch, MessageStore, "create_many", "the process died")
    crash_once(monkeypatch, BatchStore, "mark", "the process died")
    body = {"Recipients": people(*NUMBERS[:10])}
    assert bulk(body, **{"Idempotency-Key": "died-1"}).status == 500

    soon = bulk(body, **{"Idempotency-Key": "died-1"})

    assert soon.status == 409, soon.body
    assert "in progress" in soon.body["title"]
    [batch] = backdate_accepting_batches("died-1", minutes=0)  # (found by its key)
    status, view, headers = BulkService(get_settings()).status(
        batch["PartitionKey"], details=False, checked=True
    )
    assert (status, view["Status"]) == (202, "pending")
    assert "Location" in headers
    assert drivers(outbound) == []

    # Past the 30 s after which a batch with every member is sent on, before the 5 minutes
    # after which it is surely over: its members may still be being written, so nothing goes.
    backdate_accepting_batches("died-1", minutes=1)
    _, later, _ = BulkService(get_settings()).status(
        batch["PartitionKey"], details=False, checked=True
    )
    assert later["Status"] == "pending"
    assert drivers(outbound) == []


def died_after_three_members(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next bulk request's process dies having written three members (nothing marks its
    batch)."""
    crash_once(
        monkeypatch, MessageStore, "create_many", "the process died",
        first=lambda real, self, items: real(self, items[:3]),
    )  # fmt: skip
    crash_once(monkeypatch, BatchStore, "mark", "the process died")


def test_a_slow_first_request_is_not_taken_over_before_it_is_surely_over(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    """A batch ``accepting`` for 31 s may belong to a request still writing its 10,000 members:
    a replay then wrote the same members beside it, the creates collided and both answered
    500. A replay waits INCOMPLETE_AFTER, as one whose key's claim has no batch yet does."""
    from shared.outbound._bulk import INCOMPLETE_AFTER

    died_after_three_members(monkeypatch)
    body = {"Recipients": people(*NUMBERS[:10])}
    assert bulk(body, **{"Idempotency-Key": "slow-1"}).status == 500
    manual_clock.advance(31)

    assert bulk(body, **{"Idempotency-Key": "slow-1"}).status == 409  # maybe only slow
    assert drivers(outbound) == []
    manual_clock.advance(INCOMPLETE_AFTER.total_seconds())
    later = bulk(body, **{"Idempotency-Key": "slow-1"})

    assert later.status == 202, later.body
    assert sent(outbound) == sorted(NUMBERS[:10])


def test_members_another_replay_wrote_meanwhile_count_as_recorded(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    """Two replays finish one batch at once: the members the other one wrote between this
    one's read and its write make its create collide; they are recorded, not a 500."""
    from shared.outbound._bulk import INCOMPLETE_AFTER

    died_after_three_members(monkeypatch)
    body = {"Recipients": people(*NUMBERS[:10])}
    assert bulk(body, **{"Idempotency-Key": "race-1"}).status == 500
    manual_clock.advance(INCOMPLETE_AFTER.total_seconds())
    real = MessageStore.create_many
    raced: list[int] = []

    def racing(self: MessageStore, items: list[Any]) -> None:
        if not raced:  # the other replay writes four of them first
            raced.append(len(items))
            real(self, items[:4])
        real(self, items)

    monkeypatch.setattr(MessageStore, "create_many", racing)

    again = bulk(body, **{"Idempotency-Key": "race-1"})

    assert again.status == 202, again.body
    assert raced == [7]
    assert sent(outbound) == sorted(NUMBERS[:10])


def test_a_batch_whose_drivers_are_out_is_accepted_though_marking_it_failed(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pack's driver was on the queue when marking the batch ``queued`` failed: the
    answer was 500, and a caller without a key (bulk has no RequestId) sent again: everyone
    twice."""
    crash_once(monkeypatch, BatchStore, "mark", "storage failed")
    body = {"Recipients": people(*NUMBERS[:5])}

    first = bulk(body)
    if first.status == 500:  # what a caller does with a 500
        bulk(body)

    assert first.status == 202, first.body
    assert sent(outbound) == sorted(NUMBERS[:5])
    assert batch_status(first.headers["Location"]).body["Counts"]["sent"] == 5


def test_a_driver_that_could_not_be_enqueued_goes_out_with_a_status_poll(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    """One pack's driver of three failed to go on the queue: the other two packs are on their
    way, so the answer is 202 (a 500 would make a caller without a key send them twice); the
    batch stays ``accepting`` and a status poll puts every driver out again."""
    outbound.configure(PACK_MAX_RECIPIENTS=2)
    crash_once(monkeypatch, outbound_queue(get_settings()), "send_message", "queue failed")
    body = {"Recipients": people(*NUMBERS[:5])}

    first = bulk(body)
    if first.status == 500:
        bulk(body)

    assert first.status == 202, first.body
    assert first.body["Counts"]["accepted"] == 5  # not all queued yet
    outbound.drain()
    assert batch_status(first.headers["Location"]).status == 202  # one pack still to go
    manual_clock.advance(31)
    batch_status(first.headers["Location"])
    assert sent(outbound) == sorted(NUMBERS[:5])
    assert batch_status(first.headers["Location"]).body["Counts"]["sent"] == 5


def test_a_finished_incomplete_batch_whose_mark_failed_is_not_reported_incomplete(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    """A replay finished an incomplete batch and put its drivers out, but could not mark it
    queued: its status said "incomplete: none of it is sent, send it again" while its packs
    went out, so a caller without the key would have sent everyone twice."""
    from shared.outbound._bulk import INCOMPLETE_AFTER, BulkService

    def status_of(batch_id: str) -> str:
        _, view, _ = BulkService(get_settings()).status(batch_id, details=False, checked=True)
        return str(view["Status"])

    died_after_three_members(monkeypatch)
    body = {"Recipients": people(*NUMBERS[:10])}
    assert bulk(body, **{"Idempotency-Key": "mark-1"}).status == 500
    [batch] = backdate_accepting_batches("mark-1", minutes=0)
    manual_clock.advance(INCOMPLETE_AFTER.total_seconds() + 1)
    assert status_of(batch["PartitionKey"]) == "incomplete"

    crash_once(monkeypatch, BatchStore, "mark", "storage failed marking it")
    assert bulk(body, **{"Idempotency-Key": "mark-1"}).status == 202

    assert status_of(batch["PartitionKey"]) != "incomplete"
    assert sent(outbound) == sorted(NUMBERS[:10])


def test_an_incomplete_batch_is_pending_while_a_poll_puts_its_drivers_out_in_part(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    """No driver of the request got onto the queue (503: the batch is incomplete, every member
    recorded); a poll put one of its two drivers out. That poll answered a final 200
    "incomplete: none of it is sent, send it again" while that pack went out, and its flow
    stopped polling (found in review)."""
    outbound.configure(PACK_MAX_RECIPIENTS=2)
    queue = outbound_queue(get_settings())
    for _ in range(2):
        crash_once(monkeypatch, queue, "send_message", "queue failed", error=ServiceRequestError)
    answer = bulk({"Recipients": people(*NUMBERS[:4])}, **{"Idempotency-Key": "part-1"})
    assert answer.status == 503, answer.body
    service = BulkService(get_settings())
    hashed = idempotency_key_hash(get_settings().customer_id or "", "bulk\npart-1")
    [batch] = service.batches.table.query_entities(f"IdempotencyKeyHash eq '{hashed}'")
    assert batch["Status"] == "incomplete"
    crash_once(monkeypatch, queue, "send_message", "queue failed", error=ServiceRequestError)

    status, view, headers = service.status(batch["PartitionKey"], details=False, checked=True)

    assert (status, view["Status"]) == (202, "pending")
    assert "Retry-After" in headers
    assert len(sent(outbound)) == 2  # the pack whose driver went out
    manual_clock.advance(31)
    service.status(batch["PartitionKey"], details=False, checked=True)  # the other driver
    assert sent(outbound) == sorted(NUMBERS[:4])
    status, view, _ = service.status(batch["PartitionKey"], details=False, checked=True)
    assert (status, view["Status"], view["Counts"]["sent"]) == (200, "done", 4)
