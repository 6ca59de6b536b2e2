"""A failed bulk member that an operator re-drives goes alone, with its own RequestId.

Found in review: the re-drive cleared its pack but kept its pack key, so its copy led (or joined)
an index pack of single sends of the same text. Its status and ``message.sent`` then named a
RequestId SmartDialog never got, GetBulkStatus polls put a bulk driver on the queue for that
index pack (dead-lettered ``malformed`` once per idle period), and after one transient error
the member's copy was taken for a bulk member's and dropped: never sent, never failed, the
batch pending for good. docs/operations.md promises that a re-driven pack member "goes alone
with its own" RequestId.
"""

from __future__ import annotations

from typing import Any

from shared.clock import ManualClock
from shared.messages import MessageRecord, MessageStatus, MessageStore
from shared.names import OUTBOUND_DEAD_LETTER_QUEUE, OUTBOUND_QUEUE
from shared.settings import get_settings
from shared.storage import queue_client
from shared.suppressions import SuppressionStore
from tests.bulk.test_bulk_action import TEMPLATE, batch_status, bulk, people
from tests.bulk.test_packing import waiting_for_a_slot
from tests.ops.conftest import Outbound, index_written_dead_letters
from tests.outbound.conftest import SERVICE, call_http, clear_quota, fresh_number, opt_out


def record(message_id: str) -> MessageRecord:
    found = MessageStore.from_settings().get(message_id)
    assert found is not None
    return found


def test_a_redriven_bulk_member_goes_alone_beside_single_sends_of_its_text(
    ops: Outbound, manual_clock: ManualClock
) -> None:
    member, other = fresh_number(), fresh_number()
    accepted = bulk({"Recipients": people(member, other)})
    assert accepted.status == 202, accepted.body
    location = accepted.headers["Location"]
    ids = [m["Id"] for m in batch_status(location, details=True).body["Recipients"]]
    opt_out(member)  # after its acceptance: its pack's driver fails it, suppressed
    ops.drain()
    assert record(ids[0]).status is MessageStatus.FAILED
    SuppressionStore.from_settings().remove(SERVICE, member)  # opted back in
    index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)
    [letter] = [
        d for d in call_http("ListDeadLetters", "GET").body["value"] if d["messageId"] == ids[0]
    ]
    # Single sends of the same text, put straight on the queue and parked by a full quota: in
    # the pack index, waiting for a leader of their key.
    waiting_for_a_slot(ops)
    singles = [fresh_number(), fresh_number()]
    for n, address in enumerate(singles):
        recipient: dict[str, Any] = {
            "Address": address,
            "Personalization": {"name": "S", "code": n},
        }
        ops.enqueue(
            {"operation": "SendMessage", "messageId": f"rbm-{n}-{address[-6:]}",
             "body": {**TEMPLATE, "Recipients": [recipient]}}
        )  # fmt: skip
    ops.run_once()
    assert record(f"rbm-0-{singles[0][-6:]}").pack_key == record(ids[0]).pack_key
    ops.configure(QUOTA_CALLS=2000, QUOTA_PERIOD_SECONDS=60)  # room again, no hint of a full one
    clear_quota()
    redriven = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter["id"]})
    assert redriven.status == 200, redriven.body
    queue = queue_client(OUTBOUND_QUEUE)
    copies = list(queue.receive_messages(messages_per_page=32, visibility_timeout=30))
    for copy in copies:  # the member's copy first: before, it led the singles' pack
        if ids[0] in copy.content:
            ops.invoke(copy.content, message_id=copy.id, dequeue_count=copy.dequeue_count)
            queue.delete_message(copy)
        else:
            queue.update_message(copy, content=copy.content, visibility_timeout=0)
    ops.drain()

    calls = {call["body"]["RequestId"]: call for call in ops.upstream()}
    assert [r["Address"] for r in calls[ids[0]]["body"]["Recipients"]] == [member]  # alone
    assert record(ids[0]).status is MessageStatus.SENT
    assert record(ids[0]).upstream_request_id == ids[0]
    assert all(
        record(f"rbm-{n}-{a[-6:]}").status is MessageStatus.SENT for n, a in enumerate(singles)
    )
    # Long after, a batch status poll puts no driver on the queue and nothing is dead-lettered.
    settings = get_settings()
    manual_clock.advance(settings.send_lease_seconds + settings.send_retry_max_seconds + 61)
    final = batch_status(location, details=True)
    assert final.status == 200, final.body
    assert [m for m in ops.read(OUTBOUND_QUEUE) if m.get("kind") == "pack"] == []
    assert [d for d in ops.dead_letters() if d.get("reason") == "malformed"] == []
