"""A pack after a crash and after 5xx answers: who retries it, with which RequestId, when."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from typing import TYPE_CHECKING, Any

import pytest

from shared.clock import ManualClock
from shared.messages import MessageStatus, MessageStore, PackStore
from shared.outbound._attempt import Upstream
from shared.outbound._quota_wait import QuotaWait
from tests.bulk.test_packing import NUMBERS, accept, park, record, waiting_for_a_slot
from tests.crash import LEASE, crash_once
from tests.outbound.conftest import ERROR, TEMPORARY, Outbound
from tests.waiting import TIGHT_MARGIN

if TYPE_CHECKING:
    from shared.outbound import OutboundSender


def test_after_a_crash_before_the_call_the_first_unfinished_member_retries_the_pack(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:

    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:3])
    texts = [record(i).command for i in ids]
    park(outbound)
    crash_once(monkeypatch, Upstream, "send", "worker died before the call left")
    with pytest.raises(RuntimeError):
        outbound.invoke(texts[0])
    pack_id = record(ids[0]).pack_id
    assert pack_id is not None
    pack = PackStore.from_settings().get(pack_id)
    assert pack is not None
    assert pack.members[0].message_id == ids[0]  # the leader first, the others as indexed
    assert sorted(m.message_id for m in pack.members) == sorted(ids)
    ids = [m.message_id for m in pack.members]
    texts = [record(i).command for i in ids]
    assert {record(i).pack_id for i in ids} == {pack_id}
    assert outbound.upstream() == []
    manual_clock.advance(LEASE + 1)  # the crashed worker's claim runs out

    # The second member's copy does not retry the pack while the first is unfinished.
    outbound.invoke(texts[1], dequeue_count=2)
    assert outbound.upstream() == []
    assert record(ids[1]).status is not MessageStatus.SENT
    # The first member ran out of validity meanwhile: it fails, and leaves the pack to the next.
    store = MessageStore.from_settings()
    leader = record(ids[0])
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    assert store.swap(leader, valid_until=past) is not None
    outbound.invoke(texts[0], dequeue_count=2)
    assert record(ids[0]).status is MessageStatus.FAILED
    outbound.invoke(texts[1], dequeue_count=3)

    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [200]
    assert calls[0]["body"]["RequestId"] == pack_id  # the recorded pack, not a new one
    assert sorted(r["Address"] for r in calls[0]["body"]["Recipients"]) == sorted(
        a for m in pack.members[1:] for a in m.addresses
    )
    assert [record(i).status for i in ids[1:]] == [MessageStatus.SENT] * 2
    outbound.drain()  # the remaining copies find their records final
    assert len(outbound.upstream()) == 1


def _claims_landed(real: Any, store: MessageStore, *args: Any, **kwargs: Any) -> None:
    real(store, *args, **kwargs)  # the members' claims landed, then their answer was lost


def _claiming(items: list[tuple[object, dict[str, Any]]], **_: Any) -> bool:
    return any(c.get("status") is MessageStatus.SENDING for _, c in items)


#: Where our storage fails between the claims of a new pack's members and its call.
BEFORE_A_NEW_PACKS_CALL: list[tuple[str, type, str, dict[str, Any]]] = [
    ("the members' claims", MessageStore, "swap_many",
     {"when": _claiming, "first": _claims_landed}),
    ("the index", PackStore, "unindex", {}),
    ("the pack row", PackStore, "save", {}),
    ("the leader's pack id", MessageStore, "swap",
     {"when": lambda _, **kw: kw.keys() == {"pack_id", "updated_at"} and kw["pack_id"]}),
    ("the quota log", QuotaWait, "take", {}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("step", "owner", "name", "how"),
    BEFORE_A_NEW_PACKS_CALL,
    ids=[s for s, *_ in BEFORE_A_NEW_PACKS_CALL],
)
def test_a_storage_error_before_a_new_packs_call_hands_every_member_back_to_pack_again(
    outbound: Outbound,
    monkeypatch: pytest.MonkeyPatch,
    manual_clock: ManualClock,
    step: str,
    owner: type,
    name: str,
    how: dict[str, Any],
) -> None:
    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:3])
    leader = record(ids[0]).command
    park(outbound)
    manual_clock.advance(1)  # a pack id of its own, not the one park formed and dissolved
    crash_once(monkeypatch, owner, name, f"{step}: storage failed (503)", **how)
    with pytest.raises(RuntimeError, match=step):
        outbound.invoke(leader)  # the pack's members were claimed, then our storage failed

    for handed_back in map(record, ids):  # not claims left as if their call was interrupted
        assert handed_back.status is MessageStatus.QUEUED
        assert handed_back.attempts == 0
        assert handed_back.pack_id is None  # the new pack dissolved: they pack again
    outbound.invoke(leader, dequeue_count=2)
    assert [len(c["body"]["Recipients"]) for c in outbound.upstream()] == [3]
    assert {record(i).status for i in ids} == {MessageStatus.SENT}
    assert not any(record(i).maybe_sent for i in ids)


def test_a_pack_backs_off_after_503s_and_retries_with_the_same_request_id(
    outbound: Outbound,
) -> None:
    waiting_for_a_slot(outbound)
    outbound.configure(SEND_RETRY_BASE_SECONDS=1.0, SEND_RETRY_MAX_SECONDS=1.0)
    ids = accept(NUMBERS[0], TEMPORARY, NUMBERS[1])
    park(outbound)  # they wait, indexed, to be packed
    outbound.configure(QUOTA_CALLS=2000)  # then the backoff alone spaces the calls

    outbound.drain(timeout=20)

    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [503, 503, 200]
    assert len({c["body"]["RequestId"] for c in calls}) == 1
    assert all(len(c["body"]["Recipients"]) == 3 for c in calls)
    times = [dt.datetime.fromisoformat(c["time"].replace("Z", "+00:00")) for c in calls]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.75 * 1.0 - 0.05  # each retry waited out the pack's backoff
    for message_id in ids:
        done = record(message_id)
        assert done.status is MessageStatus.SENT
        assert done.attempts == 3
        assert done.upstream_message_id == calls[-1]["response"]["MessageId"]


def test_a_pack_that_keeps_getting_500_backs_off_and_every_member_fails_after_the_last_attempt(
    outbound: Outbound,
) -> None:
    waiting_for_a_slot(outbound)
    outbound.configure(SEND_RETRY_BASE_SECONDS=0.5, SEND_RETRY_MAX_SECONDS=2.0, SEND_MAX_ATTEMPTS=3)
    ids = accept(NUMBERS[0], ERROR, NUMBERS[1])
    park(outbound)  # they wait, indexed, to be packed
    outbound.configure(QUOTA_CALLS=2000)  # then the backoff alone spaces the calls

    outbound.drain(timeout=30)

    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [500, 500, 500]
    assert len({c["body"]["RequestId"] for c in calls}) == 1
    times = [dt.datetime.fromisoformat(c["time"].replace("Z", "+00:00")) for c in calls]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.75 * 0.5 - 0.05
    assert gaps[1] >= 0.75 * 1.0 - 0.05  # exponential: base, then twice the base
    for message_id in ids:
        failed = record(message_id)
        assert failed.status is MessageStatus.FAILED
        assert failed.failure is not None
        assert failed.failure.code == "outcome-unknown"  # a 5xx does not prove it was not sent
        assert failed.failure.upstreamStatus == 500
    assert sorted(d["messageId"] for d in outbound.dead_letters()) == sorted(ids)


def test_a_leader_that_died_holding_its_keys_lease_delays_the_others_only_until_it_ends(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    from shared.outbound import OutboundSender
    from shared.outbound._packing import LEAD_SECONDS

    ids = accept(*NUMBERS[:2])
    key = record(ids[0]).pack_key
    assert key is not None
    now = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC)
    etag, _ = PackStore.from_settings().lead(key, now, now + dt.timedelta(seconds=LEAD_SECONDS))
    assert etag is not None  # a worker took the lease and died before giving it up

    held = OutboundSender.from_settings().process(record(ids[0]).command)
    assert (held.kind, held.detail) == ("deferred", "lead")
    assert outbound.upstream() == []
    manual_clock.advance(LEAD_SECONDS + 1)
    outbound.invoke(record(ids[0]).command, dequeue_count=2)

    assert [len(c["body"]["Recipients"]) for c in outbound.upstream()] == [2]
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


def _told_full(clock: ManualClock, name: str, longest_wait: float) -> QuotaWait:
    """A quota of its own on the test's clock (its grants are not the next tests' business):
    one call in 30 s, taken; this process was told it is full."""
    from shared import quota
    from shared.quota import QuotaDenied
    from shared.settings import get_settings

    waits = QuotaWait(
        quota.from_settings(get_settings(), clock=clock, connection=name), longest_wait,
        clock=clock,
    )  # fmt: skip
    waits.take(0.0, "test")
    assert isinstance(waits.take(0.0, "test")[0], QuotaDenied)
    return waits


def _sender_waiting_with(waits: QuotaWait) -> OutboundSender:
    """The sender of the current settings, its quota wait ``waits``."""
    from dataclasses import replace

    from shared.outbound import OutboundSender
    from shared.outbound._ports import send_ports
    from shared.settings import get_settings

    return OutboundSender(replace(send_ports(get_settings()), quota_wait=waits))


def test_while_the_quota_is_full_a_message_that_found_its_key_led_waits_for_the_lease_here(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """One key's sends to one address never share a call, so each leads itself, slot by slot.
    While the quota is full, a message that finds the key led waits in the invocation for the
    leader to give the lease up and takes the slot that frees, instead of coming back
    LEAD_RECHECK_SECONDS later and leaving the slots that free meanwhile unused."""
    outbound.configure(QUOTA_CALLS=1, QUOTA_PERIOD_SECONDS=30, SEND_QUOTA_WAIT_SECONDS=1)
    ids = accept(NUMBERS[0], NUMBERS[0])
    key = record(ids[0]).pack_key
    assert key is not None
    assert record(ids[1]).pack_key == key
    waits = _told_full(manual_clock, f"lead-wait-{ids[0]}", 1.0)
    manual_clock.advance(waits.hint() - 0.5)  # its slot frees in half a second
    now = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC)
    held = now + dt.timedelta(seconds=waits.hint() + 0.5)
    etag, _ = PackStore.from_settings().lead(key, now, held)
    assert etag is not None  # another worker leads the key until half a second after that
    started = manual_clock.now()

    sender = _sender_waiting_with(waits)
    outcome = sender.process(record(ids[0]).command)

    assert outcome.kind == "sent"
    assert [c["body"]["RequestId"] for c in outbound.upstream()] == [ids[0]]
    assert 1.0 < manual_clock.now() - started <= 2.0  # the slot's half second, then the lease's
    assert record(ids[1]).status is MessageStatus.QUEUED  # one address: it waits for its slot


def test_a_quota_wait_too_short_to_look_again_leaves_the_lead_deferral_at_the_lease(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """With SMARTDIALOG_SEND_QUOTA_WAIT_SECONDS under LEAD_POLL_SECONDS, a message that finds
    its key led while the quota was full lately has no time to look again: it comes back when
    the lease is due to end (at most LEAD_RECHECK_SECONDS), not at once, round and round."""
    outbound.configure(QUOTA_CALLS=1, QUOTA_PERIOD_SECONDS=30, SEND_QUOTA_WAIT_SECONDS=0.1)
    [message_id] = accept(NUMBERS[0])
    key = record(message_id).pack_key
    assert key is not None
    waits = _told_full(manual_clock, f"lead-short-{message_id}", 0.1)
    manual_clock.advance(waits.hint() + 0.5)  # the slot is free again, the quota full lately
    assert waits.full_lately(10)
    now = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC)
    etag, _ = PackStore.from_settings().lead(key, now, now + dt.timedelta(seconds=6))
    assert etag is not None  # another worker leads the key for 6 s more

    sender = _sender_waiting_with(waits)
    outcome = sender.process(record(message_id).command)

    assert (outcome.kind, outcome.detail) == ("deferred", "lead")
    assert outcome.delay_seconds is not None
    assert outcome.delay_seconds >= 5  # not 0: the lease's time left
    assert outbound.upstream() == []


def test_a_message_whose_validity_ends_while_it_waits_for_its_keys_lease_is_not_sent(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """Validity is checked when a message is claimed: a wait for the key's leader comes
    before the claim, so a message that expired during it fails ``expired`` and is not sent."""
    outbound.configure(
        QUOTA_CALLS=1, QUOTA_PERIOD_SECONDS=30, SEND_QUOTA_WAIT_SECONDS=1,
        SEND_VALIDITY_SECONDS=40,
    )  # fmt: skip
    [message_id] = accept(NUMBERS[0])
    key = record(message_id).pack_key
    assert key is not None
    waits = _told_full(manual_clock, f"lead-late-{message_id}", 1.0)
    manual_clock.advance(waits.hint())  # the slot is free; 0.5 s later the message expires
    expires = record(message_id).valid_until
    manual_clock.advance(expires.timestamp() - manual_clock.now() - 0.5)
    now = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC)
    etag, _ = PackStore.from_settings().lead(key, now, now + dt.timedelta(seconds=0.7))
    assert etag is not None  # another worker leads the key until just after the expiry

    sender = _sender_waiting_with(waits)
    sender.process(record(message_id).command)

    assert outbound.upstream() == []
    done = record(message_id)
    assert done.status is MessageStatus.FAILED
    assert done.failure is not None
    assert done.failure.code == "expired"
    again, _ = PackStore.from_settings().lead(key, now, now + dt.timedelta(seconds=60))
    assert again is not None  # it gave the lease it took back


def test_a_lane_pack_whose_grants_go_stale_is_handed_back_in_one_write_not_one_per_member(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its members are claimed 100 a transaction, and go back the same way: on a loaded
    machine (grants going stale) hundreds of writes per hand-back fed the load that staled them."""
    from shared import storage
    from shared.storage import StorageOp
    from tests.outbound.test_sender import _record_grants_and_sends, _slow_step_before_the_call

    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:6])
    leader = record(ids[0]).command
    park(outbound)
    outbound.configure(QUOTA_CALLS=2000, QUOTA_SAFETY_MARGIN_SECONDS=TIGHT_MARGIN)
    grants, sends = _record_grants_and_sends(monkeypatch)
    _slow_step_before_the_call(monkeypatch, [TIGHT_MARGIN + 0.2] * 2)
    monkeypatch.setattr(storage, "_round_trips", None)  # counting is off again afterwards
    counter = storage.count_round_trips()

    outbound.invoke(leader)  # its pack formed, then both grants went stale: handed back

    assert len(grants) == 2
    assert sends == []
    written = {StorageOp.TABLE_WRITE, StorageOp.TABLE_TRANSACTION}
    counts = counter.snapshot().items()
    writes = {op: n for (op, name), n in counts if op in written and name == "SmartDialogMessages"}
    # The leader's claim, its pack id and its hand-back; the five others' claims and hand-back.
    assert writes == {StorageOp.TABLE_WRITE: 3, StorageOp.TABLE_TRANSACTION: 2}
    for handed_back in map(record, ids):
        assert handed_back.status is MessageStatus.QUEUED
        assert handed_back.attempts == 0
        assert handed_back.pack_id is None  # the pack dissolved: they pack again
        assert handed_back.lease_until is None

    outbound.drain()

    assert [len(c["body"]["Recipients"]) for c in outbound.upstream()] == [6]
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


def test_a_lane_pack_builds_its_call_before_its_grant_so_a_slow_build_ages_none(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a big pack's leader took its grant, then put 500 numbers in E.164 and signed the
    DLR URL: on a loaded machine that outlasted half the margin, both grants went stale and the
    pack was handed back (one run of the singles benchmark logged 9 stale grants)."""
    from tests.outbound.test_sender import _record_grants_and_sends, _slow_preparation

    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:4])
    park(outbound)
    outbound.configure(QUOTA_CALLS=2000, QUOTA_SAFETY_MARGIN_SECONDS=TIGHT_MARGIN)
    grants, sends = _record_grants_and_sends(monkeypatch)
    built = _slow_preparation(monkeypatch, TIGHT_MARGIN + 0.2)

    outbound.invoke(record(ids[0]).command)

    assert (len(built), len(grants), len(sends)) == (1, 1, 1)
    assert built[0] <= grants[0].granted_at
    [call] = outbound.upstream()
    assert sorted(r["Address"] for r in call["body"]["Recipients"]) == NUMBERS[:4]
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


@pytest.mark.parametrize("answer", ["read", "lost"])
def test_a_lane_member_written_meanwhile_is_handed_back_on_its_own_a_failed_one_stays_failed(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    """The hand-back transaction loses its compare-and-swap (or its answer is lost to a reset
    connection, which the SDK does not retry, and the first record it names changed): a member
    whose record changed but whose claim is still the pack's goes back alone; one that ended
    meanwhile keeps its end; the others go back too."""
    from azure.core.exceptions import ServiceResponseError
    from azure.data.tables import TableClient

    from shared.messages import FailureInfo
    from shared.outbound._attempt import Upstream
    from shared.outbound._outcomes import failed_changes

    real_submit, lost = TableClient.submit_transaction, []

    def submit(self: TableClient, operations: Any, **kwargs: Any) -> Any:
        if answer == "lost" and not lost and operations[0][1].get("Status") == "queued":
            lost.append(operations[0][1]["MessageId"])  # the hand-back: never reaches the table
            raise ServiceResponseError("Connection reset by peer")
        return real_submit(self, operations, **kwargs)

    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:4])
    park(outbound)
    outbound.configure(QUOTA_CALLS=2000, QUOTA_SAFETY_MARGIN_SECONDS=TIGHT_MARGIN)
    store, real = MessageStore.from_settings(), Upstream.send
    slow = [TIGHT_MARGIN + 0.2] * 2

    def meanwhile(*args: Any, **kwargs: Any) -> Any:  # between grant and call
        if len(slow) == 2:  # the members are claimed: one is written again, one fails
            assert store.swap(record(ids[1]), updated_at=dt.datetime.now(dt.UTC)) is not None
            ended = failed_changes(FailureInfo(code="Test", title="ended"), dt.datetime.now(dt.UTC))
            assert store.swap(record(ids[2]), **ended) is not None
        time.sleep(slow.pop(0) if slow else 0)
        return real(*args, **kwargs)

    monkeypatch.setattr(Upstream, "send", meanwhile)
    monkeypatch.setattr(TableClient, "submit_transaction", submit)
    outbound.invoke(record(ids[0]).command)  # its pack formed, both grants went stale

    assert outbound.upstream() == []
    assert lost == ([ids[1]] if answer == "lost" else [])
    assert record(ids[2]).status is MessageStatus.FAILED
    for handed_back in map(record, [ids[0], ids[1], ids[3]]):
        assert handed_back.status is MessageStatus.QUEUED
        assert (handed_back.attempts, handed_back.pack_id, handed_back.lease_until) == (
            0,
            None,
            None,
        )
    outbound.drain()
    assert sorted(r["Address"] for c in outbound.upstream() for r in c["body"]["Recipients"]) == [
        NUMBERS[0], NUMBERS[1], NUMBERS[3]
    ]  # fmt: skip
    assert [record(i).status for i in ids] == [MessageStatus.SENT] * 2 + [
        MessageStatus.FAILED, MessageStatus.SENT
    ]  # fmt: skip


def test_a_leader_is_handed_back_even_when_its_members_hand_back_fails(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both grants went stale and our storage fails for the members' hand-back (their
    transaction and each one's own write): the function raises for the host's retry, and the
    leader's claim is handed back regardless; the members' claims run out with their lease."""
    from azure.core.exceptions import HttpResponseError

    from tests.outbound.test_sender import _slow_step_before_the_call

    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:3])
    park(outbound)
    outbound.configure(QUOTA_CALLS=2000, QUOTA_SAFETY_MARGIN_SECONDS=TIGHT_MARGIN)
    _slow_step_before_the_call(monkeypatch, [TIGHT_MARGIN + 0.2] * 2)
    real_many, real_swap, failed = MessageStore.swap_many, MessageStore.swap, []

    def handing_back(changes: dict[str, Any]) -> bool:
        return changes.get("status") is MessageStatus.QUEUED

    def swap_many(self: MessageStore, items: list[Any], **kwargs: Any) -> Any:
        if any(handing_back(c) for _, c in items):
            failed.append("transaction")
            raise HttpResponseError("storage failing (503)")
        return real_many(self, items, **kwargs)

    def swap(self: MessageStore, current: Any, **changes: Any) -> Any:
        if current.message_id != ids[0] and handing_back(changes):
            failed.append(current.message_id)
            raise HttpResponseError("storage failing (503)")
        return real_swap(self, current, **changes)

    monkeypatch.setattr(MessageStore, "swap_many", swap_many)
    monkeypatch.setattr(MessageStore, "swap", swap)
    with pytest.raises(HttpResponseError):
        outbound.invoke(record(ids[0]).command)  # its pack formed, both grants went stale

    assert outbound.upstream() == []
    assert failed[0] == "transaction"
    assert failed[1] in ids[1:]  # then each on its own
    leader = record(ids[0])
    assert (leader.status, leader.attempts, leader.pack_id, leader.lease_until) == (
        MessageStatus.QUEUED, 0, None, None
    )  # fmt: skip
    assert [record(i).status for i in ids[1:]] == [MessageStatus.SENDING] * 2
