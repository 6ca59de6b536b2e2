"""Lane triggers and their backstop (docs/sending.md, "Lanes"): a burst of packable sends is led
by the few messages that are visible at once, and every other member's own message is its
backstop, visible only later."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import pytest

from shared.clock import ManualClock
from shared.messages import MessageStatus, MessageStore
from shared.names import OUTBOUND_QUEUE
from shared.outbound._records import LaneTriggers
from shared.storage import queue_client
from tests.bulk.test_packing import NUMBERS, record
from tests.bulk.test_packing import accept as accept_with
from tests.outbound.conftest import Outbound
from tests.waiting import PATIENCE

T0 = dt.datetime(2026, 12, 4, 12, 0, 0, tzinfo=dt.UTC)
REFUSED_NAMING_NOBODY = "+358400000008"  # the sandbox refuses a call with it: 400 naming nobody


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_one_trigger_at_once_then_at_most_one_a_second_and_the_rest_rely_on_them() -> None:
    triggers = LaneTriggers()

    assert triggers.plan("lane", at(0)) == (0, None)  # visible at once
    assert triggers.plan("lane", at(0.1)) == (1, None)  # the next, a second later
    assert triggers.plan("lane", at(0.3)) == (-1, at(1.1))  # relies on it: 0.8 s ahead
    assert triggers.plan("lane", at(0.65)) == (2, None)  # under 0.5 s ahead is too close
    assert triggers.plan("lane", at(0.7)) == (-1, at(2.65))
    assert triggers.plan("other", at(0.7)) == (0, None)  # each lane has its own
    assert triggers.plan("lane", at(9)) == (0, None)  # a lane quiet for a while: at once


def test_a_trigger_that_was_not_enqueued_is_forgotten() -> None:
    triggers = LaneTriggers()
    triggers.plan("lane", at(0))
    assert triggers.plan("lane", at(0.1)) == (1, None)

    assert triggers.coming("lane", at(0.9))  # a record written now is read by it
    assert not triggers.coming("lane", at(1.2))  # it may have come already

    triggers.forget("lane")  # its enqueue failed

    assert not triggers.coming("lane", at(0.2))  # who relied on it gets a message of its own
    assert triggers.plan("lane", at(0.2)) == (0, None)  # and nobody relies on it from now


_content = ["Hello $(name)"]


@pytest.fixture(autouse=True)
def own_lane() -> None:
    """Each test's sends get a lane of their own (content of their own): the send service,
    and so its lane plan, lives as long as the process."""
    _content[0] = f"Lane {uuid.uuid4().hex[:8]} for $(name)"


def accept(*addresses: str) -> list[str]:
    return accept_with(*addresses, content=_content[0])


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every message put on the outbound queue from now on, with the delay after which the queue
    (Azurite) answered it becomes visible: ``next_visible_on - inserted_on``, whole seconds, as
    it answers them. That is what the code planned, however much real time went by since (a
    count of the visible messages is not: a trigger planned a second ahead is visible a second
    later whatever the manual clock says, and accepting a burst may take that long)."""
    from azure.storage.queue import QueueClient

    sent: list[tuple[str, int]] = []
    send_message = QueueClient.send_message

    def spy(self: QueueClient, content: object, **options: Any) -> Any:
        message = send_message(self, content, **options)
        if self.queue_name == OUTBOUND_QUEUE:
            due = message.next_visible_on - message.inserted_on
            sent.append((str(content), round(due.total_seconds())))
        return message

    monkeypatch.setattr(QueueClient, "send_message", spy)
    return sent


def visible() -> int:
    """Messages of the outbound queue visible now (they stay on the queue)."""
    return len(queue_client(OUTBOUND_QUEUE).peek_messages(max_messages=32))


def run_until(outbound: Outbound, done: int, timeout: float = PATIENCE) -> None:
    """Run the sender on visible messages until ``done`` were taken (a trigger planned a second
    ahead is visible a second later: the queue's own delay, not a lease)."""
    deadline = time.monotonic() + timeout
    taken = 0
    while taken < done:
        assert time.monotonic() < deadline, f"only {taken} of {done} messages came"
        taken += outbound.run_once()
        time.sleep(0.1)


def test_a_burst_is_sent_by_its_triggers_while_the_other_messages_wait_as_backstops(
    outbound: Outbound, manual_clock: ManualClock, planned: list[tuple[str, int]]
) -> None:
    outbound.configure(LANE_BACKSTOP_SECONDS=120)
    ids = accept(*NUMBERS[:8])  # the clock stands still: the first two are triggers

    assert outbound.queued() == 8
    # A trigger at once, one a second later, the other six backstops due in 120 s.
    assert [due for _, due in planned] == [0, 1, *[120] * 6]
    assert all(ids[n] in body for n, (body, _) in enumerate(planned))
    run_until(outbound, 2)  # the first leads a pack of all 8; the second finds it sent

    assert [len(c["body"]["Recipients"]) for c in outbound.upstream()] == [8]
    assert {record(i).status for i in ids} == {MessageStatus.SENT}
    assert outbound.queued() == 6
    assert visible() == 0

    manual_clock.advance(120)
    for message_id in ids[2:]:  # their backstops come: each is acknowledged, nothing resent
        outbound.invoke(record(message_id).command)
    assert len(outbound.upstream()) == 1
    assert outbound.queued() == 6  # nothing re-enqueued


def test_a_trigger_that_finds_its_message_sent_leads_the_members_accepted_after_that_pack(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    outbound.configure(LANE_BACKSTOP_SECONDS=120)
    first = accept(*NUMBERS[:3])  # a trigger now, one a second later, one relying on it
    assert outbound.run_once(limit=1) == 1  # the first trigger sends all three
    late = accept(NUMBERS[3])  # relies on the second trigger (a second after the first)
    bodies = [m.content for m in queue_client(OUTBOUND_QUEUE).peek_messages(max_messages=32)]
    assert not any(late[0] in body for body in bodies)  # its own message waits as a backstop

    run_until(outbound, 1)  # the second trigger: its message is sent, its lane is young

    assert [len(c["body"]["Recipients"]) for c in outbound.upstream()] == [3, 1]
    assert {record(i).status for i in first + late} == {MessageStatus.SENT}
    assert outbound.queued() == 2  # the backstops of the third and the late one


def test_with_no_backstop_every_message_is_visible_at_once_and_a_sent_one_leads_nothing(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    first = accept(*NUMBERS[:2])  # LANE_BACKSTOP_SECONDS=0 in these tests' settings
    assert visible() == 2
    outbound.run_once()  # the first leads both; the second copy is acknowledged
    late = accept(NUMBERS[2])

    assert visible() == 1  # its own message, which sends it
    assert [len(c["body"]["Recipients"]) for c in outbound.upstream()] == [2]
    outbound.drain()
    assert record(late[0]).status is MessageStatus.SENT
    assert {record(i).status for i in first} == {MessageStatus.SENT}


def test_when_every_trigger_is_lost_the_backstops_send_the_lane(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    outbound.configure(LANE_BACKSTOP_SECONDS=3)
    ids = accept(*NUMBERS[:4])
    queue = queue_client(OUTBOUND_QUEUE)
    lost = 0
    deadline = time.monotonic() + 2.5
    while lost < 2:  # both triggers are taken and never processed (their worker died for good)
        assert time.monotonic() < deadline, "the second trigger did not come"
        for message in queue.receive_messages(messages_per_page=1, visibility_timeout=600):
            queue.delete_message(message)
            lost += 1
        time.sleep(0.05)
    assert outbound.upstream() == []

    run_until(outbound, 1, timeout=6)  # a backstop, 3 s after its accept, leads all four

    assert [len(c["body"]["Recipients"]) for c in outbound.upstream()] == [4]
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


def test_a_send_whose_record_was_written_after_its_trigger_came_gets_a_message_of_its_own(
    outbound: Outbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbound.configure(LANE_BACKSTOP_SECONDS=120)
    accept(*NUMBERS[:2])  # two triggers: now and a second later
    create = MessageStore.create

    def slow_create(self: MessageStore, *args: object, **kwargs: object) -> object:
        manual_clock.advance(2)  # the write took long: the second trigger may have gone by
        return create(self, *args, **kwargs)  # type: ignore[arg-type]

    with monkeypatch.context() as patched:
        patched.setattr(MessageStore, "create", slow_create)
        late = accept(NUMBERS[2])[0]

    assert outbound.queued() == 4  # its backstop and a message visible at once
    bodies = [m.content for m in queue_client(OUTBOUND_QUEUE).peek_messages(max_messages=32)]
    assert sum(late in body for body in bodies) == 1


@pytest.mark.parametrize("seconds_to_next_minute", [30.0, -0.05])
def test_a_lone_sends_sweep_reads_the_next_minutes_lane_only_once_it_has_opened(
    outbound: Outbound,
    manual_clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    seconds_to_next_minute: float,
) -> None:
    """After its call, a young lane's trigger looks for the next member in its own lane, then in
    the next minute's only once that has opened (30 s before: not read; 0.05 s after: read)."""
    from shared.messages import lane_partition

    outbound.configure(LANE_BACKSTOP_SECONDS=120)
    manual_clock.advance((30 - manual_clock.now() % 60) % 60)  # half a minute into a minute
    [sent] = accept(NUMBERS[0])
    manual_clock.advance(30 - seconds_to_next_minute)
    real = MessageStore.lane_queued
    looked: list[str] = []

    def counted(self: MessageStore, partition: str, limit: int) -> Any:
        if limit == 1:  # the sweep's look for the next leader
            looked.append(partition)
        return real(self, partition, limit)

    monkeypatch.setattr(MessageStore, "lane_queued", counted)
    run_until(outbound, 1)

    assert record(sent).status is MessageStatus.SENT
    key, accepted = record(sent).pack_key, record(sent).created_at
    assert key is not None
    lanes = [lane_partition(key, accepted + dt.timedelta(minutes=m)) for m in (0, 1)]
    assert looked == (lanes if seconds_to_next_minute < 0 else lanes[:1])


def test_a_young_lanes_sweep_that_stops_at_its_limit_puts_the_next_member_back_on_the_queue(
    outbound: Outbound,
    manual_clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    planned: list[tuple[str, int]],
) -> None:
    from shared.outbound import _packing

    outbound.configure(LANE_BACKSTOP_SECONDS=120, PACK_MAX_RECIPIENTS=2)
    monkeypatch.setattr(_packing, "SWEEP_PACKS", 1)  # a sweep of one pack
    ids = accept(*NUMBERS[:6])
    planned.clear()  # the accepts' messages: a trigger now, one in a second, four backstops

    assert outbound.run_once(limit=1) == 1  # the first trigger: its pack, then one more

    assert [len(c["body"]["Recipients"]) for c in outbound.upstream()] == [2, 2]
    waiting = [i for i in ids if record(i).status is MessageStatus.QUEUED]
    assert len(waiting) == 2
    # One of them is put back visible now (not left to its backstop: that comes in 120 s).
    [(body, due)] = planned
    assert sum(w in body for w in waiting) == 1
    assert due == 0
    outbound.run_once()
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


def test_after_a_refusal_naming_nobody_each_member_goes_alone_at_once_not_at_its_backstop(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    outbound.configure(LANE_BACKSTOP_SECONDS=120)
    # A trigger now, one a second later (the refused number), two relying on them.
    ids = accept(NUMBERS[0], REFUSED_NAMING_NOBODY, NUMBERS[1], NUMBERS[2])
    assert outbound.run_once(limit=1) == 1  # the first trigger's pack of 4 is refused

    deadline = time.monotonic() + 5  # their backstops are 120 s away
    while any(not record(i).status.is_final for i in ids):
        assert time.monotonic() < deadline, "members wait for their backstops"
        outbound.run_once()
        time.sleep(0.1)

    assert [len(c["body"]["Recipients"]) for c in outbound.upstream()] == [4, 1, 1, 1, 1]
    statuses = [record(i).status for i in ids]
    assert statuses == [MessageStatus.SENT, MessageStatus.FAILED, *[MessageStatus.SENT] * 2]


def test_a_member_accepted_after_a_refused_pack_relies_on_a_released_members_trigger(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """The released members go alone (no pack key), but a copy of one is still a trigger that
    later members rely on: it sweeps the young lane, so they do not wait for their backstops."""
    outbound.configure(LANE_BACKSTOP_SECONDS=120)
    first = accept(NUMBERS[0], REFUSED_NAMING_NOBODY, NUMBERS[1])  # triggers now and in 1 s
    assert outbound.run_once(limit=1) == 1  # the first trigger's pack of 3 is refused
    late = accept(NUMBERS[2])  # relies on the second trigger: the refused number's copy
    bodies = [m.content for m in queue_client(OUTBOUND_QUEUE).peek_messages(max_messages=32)]
    assert not any(late[0] in body for body in bodies)  # its own message waits as a backstop

    deadline = time.monotonic() + 5  # its backstop is 120 s away
    while record(late[0]).status is not MessageStatus.SENT:
        assert time.monotonic() < deadline, "the late member waits for its backstop"
        outbound.run_once()
        time.sleep(0.1)

    assert [len(c["body"]["Recipients"]) for c in outbound.upstream()] == [3, 1, 1, 1, 1]
    statuses = [record(i).status for i in first]
    assert statuses == [MessageStatus.SENT, MessageStatus.FAILED, MessageStatus.SENT]
