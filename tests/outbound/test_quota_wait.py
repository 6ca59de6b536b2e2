"""Where a send deferred for the quota comes back: for a slot of its own (QuotaWait.come_back_in).

No storage: the in-memory quota and a manual clock, the sender's own way to the quota.
"""

from __future__ import annotations

import pytest

from shared.clock import ManualClock
from shared.outbound._quota_wait import QuotaWait
from shared.quota import DenialReason, InMemoryQuotaStore, QuotaDenied

START = 1_000.0


def _full(calls: int = 3, period: float = 10.0) -> tuple[QuotaWait, ManualClock, QuotaDenied]:
    """A quota of ``calls`` a ``period``, one call taken each second from START, then a denial:
    the slots free at START + period, + 1 s, + 2 s, ... (the clock at the last call)."""
    clock = ManualClock(START)
    waits = QuotaWait(InMemoryQuotaStore(calls=calls, period=period, clock=clock), 1.0, clock)
    for _ in range(calls):
        decision, _ = waits.take()
        assert not isinstance(decision, QuotaDenied)
        clock.advance(1.0)
    clock.advance(-1.0)
    denied, waited = waits.take()
    assert isinstance(denied, QuotaDenied)
    assert waited == 0  # the first slot frees later than the longest wait in the invocation
    assert denied.frees == pytest.approx(tuple(period - k for k in range(calls - 1, -1, -1)))
    return waits, clock, denied


def test_messages_sent_alone_come_back_one_by_one_as_their_slots_free_a_second_early() -> None:
    """All three denied at once: each comes back for the next slot to free, not all three for
    the first (the last slot told takes any more), a second (the longest wait) early."""
    waits, _, denied = _full()
    assert denied.retry_after == pytest.approx(8.0)  # START + 10 s, and the clock is START + 2 s

    delays = [waits.come_back_in(denied) for _ in range(4)]

    assert delays == pytest.approx([7.0, 8.0, 9.0, 9.0])


def test_a_short_lived_denial_comes_back_at_once_and_holds_no_slot() -> None:
    """Denied for contention on the quota's log (or a grant that came back late): a retry in a
    moment, not a slot of the window: back at once, and the next sent away for the window's
    slots still comes for the first."""
    waits, _, denied = _full()
    contended = QuotaDenied(denied.connection, 0.2, -1, reason=DenialReason.CONTENDED)

    assert waits.come_back_in(contended, key="a") == 0.0
    assert waits.come_back_in(denied, key="a") == pytest.approx(7.0)


def test_a_slot_whose_time_came_is_free_for_the_next_message_sent_away() -> None:
    """A message's claim on a slot ends when the slot frees: the next one sent away after that
    comes for the next slot to free that no other waits for."""
    waits, clock, denied = _full()
    assert [waits.come_back_in(denied.retry_after) for _ in range(2)] == pytest.approx([7.0, 8.0])
    clock.advance(8.5)  # the first slot freed (START + 10 s), the second not yet

    assert waits.come_back_in(0.5) == pytest.approx(1.5 - 1.0)  # the third slot: START + 12 s


def test_messages_of_one_pack_key_share_a_slot_and_come_back_together() -> None:
    """Messages that may share a call come back together for the one slot their key holds (the
    first to claim it packs the others), a second early like any other; another key comes for
    the next slot, and a message sent alone for the one after."""
    waits, _, denied = _full()

    delays = [
        waits.come_back_in(denied.retry_after, key="a"),
        waits.come_back_in(denied.retry_after, key="a"),
        waits.come_back_in(denied.retry_after, key="b"),
        waits.come_back_in(denied.retry_after),
        waits.come_back_in(denied.retry_after, key="a"),
    ]

    assert delays == pytest.approx([7.0, 7.0, 8.0, 9.0, 7.0])


def test_no_message_comes_back_for_a_slot_sooner_than_the_one_it_was_told_of() -> None:
    """A key's slot is kept for its next message only if it is not sooner than the slot that
    message was told of; nothing to wait for (a sweep's hint that ran out): back at once, no
    slot held."""
    waits, _, denied = _full()
    assert waits.come_back_in(denied.retry_after, key="a") == pytest.approx(7.0)

    assert waits.come_back_in(9.5, key="a") == pytest.approx(9.5 - 1.0)
    assert waits.come_back_in(0.0, key="c") == 0.0
    assert waits.come_back_in(denied.retry_after) == pytest.approx(9.0 - 1.0)  # c holds none
