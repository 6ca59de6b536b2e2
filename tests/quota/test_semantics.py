"""Sliding-window semantics every quota store shares, on a hand-driven clock."""

from __future__ import annotations

import random

import pytest

from bench.quota_store import max_in_window
from shared.quota import (
    MAX_CALLS,
    DenialReason,
    InMemoryQuotaStore,
    QuotaDenied,
    QuotaExceeded,
    QuotaGrant,
    StaleGrant,
)
from tests.quota.conftest import T0, ManualClock, SlowClock, StoreFactory


def grant(result: QuotaGrant | QuotaDenied) -> QuotaGrant:
    assert isinstance(result, QuotaGrant), result
    return result


def denial(result: QuotaGrant | QuotaDenied) -> QuotaDenied:
    assert isinstance(result, QuotaDenied), result
    return result


def test_grants_up_to_the_limit_then_denies_until_the_oldest_grant_leaves(
    make_store: StoreFactory,
) -> None:
    clock = ManualClock()
    store = make_store(calls=3, period=10, margin=0.5, clock=clock)

    granted = []
    for offset in (0, 1, 2):
        clock.at(offset)
        granted.append(grant(store.try_acquire()))
    refused = denial(store.try_acquire())

    assert [g.granted_at for g in granted] == [T0, T0 + 1, T0 + 2]
    assert [g.in_window for g in granted] == [1, 2, 3]
    # The oldest grant (T0) leaves the window at T0 + period + margin.
    assert refused.retry_after == pytest.approx(8.5)
    assert refused.retry_after_whole_seconds == 9
    assert refused.in_window == 3
    assert refused.reason is DenialReason.FULL


def test_slot_frees_exactly_when_the_oldest_grant_leaves_period_plus_margin(
    make_store: StoreFactory,
) -> None:
    clock = ManualClock()
    store = make_store(calls=2, period=10, margin=0.5, clock=clock)
    grant(store.try_acquire())
    clock.at(3)
    grant(store.try_acquire())

    clock.at(10.499)
    assert denial(store.try_acquire()).retry_after == pytest.approx(0.001, abs=1e-6)
    clock.at(10.5)
    assert grant(store.try_acquire()).in_window == 2
    # The second slot frees when the grant made at T0 + 3 leaves.
    assert denial(store.try_acquire()).retry_after == pytest.approx(3.0)


def test_a_denial_takes_no_slot(make_store: StoreFactory) -> None:
    clock = ManualClock()
    store = make_store(calls=1, period=5, clock=clock)
    grant(store.try_acquire())
    for offset in (1, 2, 3, 4, 4.999):
        clock.at(offset)
        denial(store.try_acquire())

    clock.at(5)
    grant(store.try_acquire())
    assert store.used() == 1


def test_window_slides_where_a_fixed_window_would_reset(make_store: StoreFactory) -> None:
    clock = ManualClock()
    store = make_store(calls=3, period=10, clock=clock)
    for offset in (9.0, 9.5, 9.9):  # late in what a fixed window would call [0, 10)
        clock.at(offset)
        grant(store.try_acquire())

    clock.at(10.1)  # a fixed-window counter would start from zero here
    assert denial(store.try_acquire()).retry_after == pytest.approx(8.9)
    clock.at(19.0)
    grant(store.try_acquire())


def test_no_window_ever_holds_more_than_the_limit_under_random_arrivals(
    make_store: StoreFactory,
) -> None:
    clock = ManualClock()
    store = make_store(calls=5, period=2.0, margin=0.25, clock=clock)
    rng = random.Random(4)
    granted: list[float] = []
    for _ in range(120):
        clock.time += rng.expovariate(1 / 0.1)  # about 4x the rate the quota allows
        result = store.try_acquire()
        if isinstance(result, QuotaGrant):
            granted.append(clock.time)

    assert max_in_window(granted, 2.25) == 5
    assert len(granted) >= 20  # slots are reused as the window moves on


def test_acquire_sleeps_on_the_clock_until_a_slot_frees(make_store: StoreFactory) -> None:
    clock = ManualClock()
    store = make_store(calls=2, period=10, clock=clock)
    grant(store.try_acquire())
    clock.at(1)
    grant(store.try_acquire())

    clock.at(2)
    granted = store.acquire(timeout=20)

    assert 8.0 <= sum(clock.slept) <= 8.05  # until T0 + 10, plus a little jitter
    assert granted.granted_at >= T0 + 10


def test_acquire_raises_at_once_when_no_slot_frees_within_the_timeout(
    make_store: StoreFactory,
) -> None:
    clock = ManualClock()
    store = make_store(calls=1, period=10, clock=clock)
    grant(store.try_acquire())
    clock.at(2)

    with pytest.raises(QuotaExceeded) as raised:
        store.acquire(timeout=5)

    assert raised.value.retry_after == pytest.approx(8.0)
    assert raised.value.retry_after_whole_seconds == 8
    assert clock.slept == []  # it did not sleep out a wait that could not succeed


def test_acquire_with_zero_timeout_is_a_single_try(make_store: StoreFactory) -> None:
    clock = ManualClock()
    store = make_store(calls=1, period=10, clock=clock)
    assert store.acquire(timeout=0).in_window == 1
    with pytest.raises(QuotaExceeded):
        store.acquire(timeout=0)
    assert clock.slept == []


def test_gate_takes_one_slot_per_attempt(make_store: StoreFactory) -> None:
    clock = ManualClock()
    store = make_store(calls=2, period=10, clock=clock)
    before_attempt = store.gate(timeout=1.0)

    before_attempt()
    before_attempt()
    with pytest.raises(QuotaExceeded):
        before_attempt()
    assert store.used() == 2


def test_a_gate_never_lets_a_stale_grant_leave_a_renewing_one_replaces_it_once(
    make_store: StoreFactory,
) -> None:
    """A slow connect ages the attempt's grant past half the margin before its bytes leave: the
    sync actions' gate (``renew``) takes one new grant; a second stale one, or the sender's gate
    (it takes its next grant itself), raises StaleGrant. Before, the sync gate had no
    ``before_send`` and the stale grant's request went out: upstream could see calls + 1."""
    clock = ManualClock()
    store = make_store(calls=5, period=10, margin=0.25, clock=clock)
    sync, sender = store.gate(1.0, renew=True), store.gate()

    sync()
    sync.before_send()  # fresh: nothing to do
    clock.sleep(0.2)  # the connect
    sync.before_send()  # stale: replaced by a fresh grant
    assert store.used() == 2
    clock.sleep(0.2)
    with pytest.raises(StaleGrant):
        sync.before_send()  # only once per attempt
    sync()  # the next attempt may renew again
    clock.sleep(0.2)
    sync.before_send()
    assert store.used() == 4

    sender()
    clock.sleep(0.2)
    with pytest.raises(StaleGrant):
        sender.before_send()
    assert store.used() == 5


def test_a_gate_renews_a_stale_grant_only_within_the_attempts_wait(
    make_store: StoreFactory,
) -> None:
    clock = ManualClock()
    store = make_store(calls=1, period=10, margin=0.25, clock=clock)
    gate = store.gate(0.5, renew=True)

    gate()
    clock.sleep(0.2)
    with pytest.raises(QuotaExceeded):  # the slot frees in 10 s, past what is left of 0.5 s
        gate.before_send()
    assert clock.slept == [0.2]


def test_a_gate_waits_no_longer_than_its_callers_deadline(make_store: StoreFactory) -> None:
    """An action's calls share one deadline (120 s): its gate waited its own wait in full (up
    to 60 s) whatever was left, and a slot taken after the deadline went to a 504 (no call)."""
    from shared.deadline import within

    clock = ManualClock()
    store = make_store(calls=1, period=1, clock=clock)
    gate = store.gate(5.0)
    gate()  # the one slot: the next frees in about 1 s, within the gate's 5 s

    with within(0.3), pytest.raises(QuotaExceeded):  # not within what is left of the deadline
        gate()
    assert clock.slept == []
    gate()  # no deadline: it waits for the slot
    assert 1 <= sum(clock.slept) <= 5


def test_grants_are_counted_per_connection(make_store: StoreFactory) -> None:
    clock = ManualClock()
    first = make_store(calls=1, period=10, clock=clock, connection="first")
    second = make_store(calls=1, period=10, clock=clock, connection="second")

    grant(first.try_acquire())
    grant(second.try_acquire())
    denial(first.try_acquire())


def test_a_grant_that_comes_back_after_half_the_margin_is_withdrawn(
    make_store: StoreFactory,
) -> None:
    """The other half is for the request's way upstream and the clock skew: a grant 0.15 s old
    with a 0.25 s margin could reach SmartDialog past the margin, and upstream would see
    ``calls + 1`` in a period."""
    store = make_store(calls=5, period=10, margin=0.25, clock=SlowClock(step=0.15))

    result = denial(store.try_acquire())

    assert result.reason is DenialReason.LATE
    assert store.used() == 0


def test_a_grant_that_comes_back_after_the_whole_margin_is_withdrawn(
    make_store: StoreFactory,
) -> None:
    store = make_store(calls=5, period=10, margin=0.25, clock=SlowClock(step=0.3))

    result = denial(store.try_acquire())

    assert result.reason is DenialReason.LATE
    assert result.retry_after < 0.1  # the next try may well be quick enough
    assert store.used() == 0  # withdrawn: a grant that is never used does not count
    assert store.stats().late_grants == 1


def test_a_grant_within_half_the_margin_is_used(make_store: StoreFactory) -> None:
    store = make_store(calls=5, period=10, margin=0.25, clock=SlowClock(step=0.1))
    assert grant(store.try_acquire()).in_window == 1


def test_a_zero_margin_never_judges_a_grant_late(make_store: StoreFactory) -> None:
    store = make_store(calls=5, period=10, margin=0, clock=SlowClock(step=5))
    grant(store.try_acquire())


def test_stats_count_grants_and_denials(make_store: StoreFactory) -> None:
    store = make_store(calls=1, period=10, clock=ManualClock())
    store.try_acquire()
    store.try_acquire()
    stats = store.stats()
    assert (stats.grants, stats.denials, stats.contended_denials) == (1, 1, 0)


@pytest.mark.parametrize(
    ("calls", "period", "margin"),
    [(0, 60, 0.25), (MAX_CALLS + 1, 60, 0.25), (100, 0, 0.25), (100, 60, -1)],
)
def test_a_quota_the_log_cannot_hold_is_refused(calls: int, period: float, margin: float) -> None:
    with pytest.raises(ValueError, match="quota"):
        InMemoryQuotaStore(calls=calls, period=period, margin=margin)
