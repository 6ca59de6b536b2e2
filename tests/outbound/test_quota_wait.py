"""Where a send deferred for the quota comes back: for a slot of its own (QuotaWait.come_back_in).

No storage: the in-memory quota and a manual clock, the sender's own way to the quota.
"""

from __future__ import annotations

import pytest

from shared.clock import ManualClock
from shared.outbound._quota_wait import QuotaWait, slot_holder
from shared.quota import DenialReason, InMemoryQuotaStore, QuotaDenied, QuotaGrant

START = 1_000.0


def one(name: str) -> str:
    return slot_holder(None, name)


def _full(calls: int = 3, period: float = 10.0) -> tuple[QuotaWait, ManualClock, QuotaDenied]:
    """A quota of ``calls`` a ``period``, one call taken each second from START, then a denial
    at the last call's time: the slots free at START + period, + 1 s, + 2 s, ..."""
    clock = ManualClock(START)
    waits = QuotaWait(InMemoryQuotaStore(calls=calls, period=period, clock=clock), 1.0, clock)
    for k in range(calls):
        if k:
            clock.advance(1.0)
        decision, _ = waits.take(0.0, one(f"early-{k}"))
        assert isinstance(decision, QuotaGrant)
    denied, waited = waits.take(0.0, one("denied"))
    assert isinstance(denied, QuotaDenied)
    assert waited == 0  # the first slot frees later than the longest wait in the invocation
    assert denied.frees == pytest.approx(tuple(START + period + k for k in range(calls)))
    return waits, clock, denied


def test_messages_sent_alone_come_back_one_by_one_as_their_slots_free_a_second_early() -> None:
    """Denied at once, each comes back for the next slot to free, not all for the first (the
    last slot told takes any more), a second (the longest wait here) before it frees."""
    waits, _, denied = _full()
    assert denied.retry_after == pytest.approx(8.0)  # START + 10 s, and the clock is START + 2 s

    delays = [waits.come_back_in(denied, one(f"m{k}")) for k in range(4)]

    assert delays == pytest.approx([7.0, 8.0, 9.0, 9.0])


def test_the_slots_are_told_apart_though_the_clock_moves_between_the_denial_and_each_return() -> (
    None
):
    """A real clock moves between the quota's answer and each deferral (and the hint is the
    first slot's time read from this process's clock): each still comes for the next slot."""
    waits, clock, denied = _full()
    delays = []
    for k in range(3):
        clock.advance(0.001)
        delays.append(waits.come_back_in(denied if k == 0 else None, one(f"m{k}")))

    assert delays == pytest.approx([7.0 - 0.001, 8.0 - 0.002, 9.0 - 0.003])


def test_a_message_denied_after_its_slot_was_taken_comes_for_the_next_slot_nobody_holds() -> None:
    """The helper's case in the sender's terms: m2 took m1's slot, and m1, denied, is sent
    away again: it comes for m2's slot, which m2 no longer holds, not the last one told."""
    waits, clock, denied = _full()
    for n in ("m1", "m2", "m3"):
        waits.come_back_in(denied, one(n))
    clock.advance(8.0)
    assert isinstance(waits.take(0.0, one("m2"))[0], QuotaGrant)
    clock.advance(0.01)

    # Denied for the next slot (in 0.99 s) after a wait here used up: sent away again.
    again = waits.come_back_in(0.99, one("m1"))

    assert again == pytest.approx(0.0)  # for START + 11 s, m2's: back at once, and it waits


def test_messages_of_one_pack_key_hold_one_slot_and_come_back_together() -> None:
    """Messages that may share a call come back together for the one slot their key holds (the
    first to claim it packs the others), a second early like any other; another key comes for
    the next slot, and a message sent alone for the one after."""
    waits, _, denied = _full()
    a, b = slot_holder("a", "m1"), slot_holder("b", "m3")

    delays = [
        waits.come_back_in(denied, a),
        waits.come_back_in(denied, slot_holder("a", "m2")),
        waits.come_back_in(denied, b),
        waits.come_back_in(denied, one("m4")),
        waits.come_back_in(denied, a),
    ]

    assert delays == pytest.approx([7.0, 7.0, 8.0, 9.0, 7.0])


def test_a_short_lived_denial_comes_back_at_once_and_holds_no_slot() -> None:
    """Denied for contention on the quota's log (or a grant that came back late): a retry in a
    moment, not a slot of the window: back at once, and the next message sent away for the
    window's slots still comes for the first."""
    waits, _, denied = _full()
    contended = QuotaDenied(denied.connection, 0.2, -1, reason=DenialReason.CONTENDED)

    assert waits.come_back_in(contended, one("m1")) == 0.0
    assert waits.come_back_in(denied, one("m2")) == pytest.approx(7.0)


def test_no_message_comes_back_for_a_slot_sooner_than_it_was_told_and_none_holds_none() -> None:
    """A key keeps its slot for its next message only if it is not sooner than that message
    was told (else the first slot from then on); with nothing to wait for (a sweep's hint
    that ran out) it is back at once and holds nothing; without a wait given, the hint this
    process was told."""
    waits, _, denied = _full()
    assert waits.come_back_in(denied, slot_holder("a", "m1")) == pytest.approx(7.0)

    # Told the slot is 9.5 s off, a's next message comes for the first slot then (10 s).
    assert waits.come_back_in(9.5, slot_holder("a", "m2")) == pytest.approx(10.0 - 1.0)
    assert waits.come_back_in(0.0, slot_holder("c", "m3")) == 0.0
    # a's hold moved past the first slot, and c holds none: the first slot is m4's.
    assert waits.come_back_in(None, one("m4")) == pytest.approx(8.0 - 1.0)
    assert waits.come_back_in(None, one("m5")) == pytest.approx(9.0 - 1.0)


def test_a_message_sent_away_is_told_when_its_own_slot_frees_until_it_takes_one() -> None:
    """What a status poll is told (:meth:`QuotaWait.held`): each message the seconds until the
    slot it was sent away for frees, a key's messages their key's; none once it took a slot,
    whichever, and none for a message never sent away."""
    waits, clock, denied = _full()
    for holder in (one("m1"), slot_holder("a", "m2"), one("m3")):
        waits.come_back_in(denied, holder)

    assert [waits.held(one("m1")), waits.held(slot_holder("a", "m9")), waits.held(one("m3"))] == (
        pytest.approx([8.0, 9.0, 10.0])
    )
    assert waits.held(one("never")) <= 0

    clock.advance(8.0)
    assert isinstance(waits.take(0.0, one("m3"))[0], QuotaGrant)  # m1's slot, taken early
    assert waits.held(one("m3")) <= 0
    assert waits.held(one("m1")) == pytest.approx(0.0)
