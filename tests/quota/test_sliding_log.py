"""The sliding log's encoding and arithmetic, table-driven."""

from __future__ import annotations

import pytest

from shared.quota._log import (
    decode,
    encode,
    in_window,
    slot_times,
    stamp,
    window_ms,
    with_grant,
)


@pytest.mark.parametrize(
    ("grants", "text"),
    [
        ([], ""),
        ([1700000000000], "1700000000000"),
        ([1700000000000, 1700000000000, 1700000000017], "1700000000000,0,17"),
        ([1700000000000, 1700000000250, 1700000060000], "1700000000000,250,59750"),
    ],
)
def test_log_round_trips_as_first_time_then_differences(grants: list[int], text: str) -> None:
    assert encode(grants) == text
    assert decode(text) == grants


@pytest.mark.parametrize("text", ["x", "1,,2", "1700000000000,-5", "1.5", " "])
def test_anything_else_is_not_a_log(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - int() and our own check both say ValueError
        decode(text)


@pytest.mark.parametrize(
    ("seconds", "ms"), [(60.25, 60250), (2.25, 2250), (0.1, 100), (1e-4, 1), (60.0001, 60001)]
)
def test_window_is_whole_milliseconds_never_shorter(seconds: float, ms: int) -> None:
    assert window_ms(seconds) == ms


@pytest.mark.parametrize(
    ("now", "ms"),
    [
        (1700000000.0, 1700000000000),
        (1700000000.0004, 1700000000001),
        (1700000000.5, 1700000000500),
    ],
)
def test_a_grant_is_stamped_rounded_up(now: float, ms: int) -> None:
    assert stamp(now) == ms


def test_a_grant_counts_until_exactly_its_time_plus_the_window() -> None:
    grants = [1000, 2000, 3000]
    assert in_window(grants, 11.999, 10_000) == [2000, 3000]
    assert in_window(grants, 12.0, 10_000) == [3000]
    assert in_window(grants, 0.5, 10_000) == grants  # grants "from the future" still count


def test_a_slot_frees_when_enough_grants_have_left_and_the_next_as_the_later_ones_leave() -> None:
    live = [1000, 2000, 3000, 4000]  # four in the window, limit three: two must leave
    assert slot_times(live, 3, 10_000) == pytest.approx((12.0, 13.0, 14.0))
    assert slot_times(live, 4, 10_000) == pytest.approx((11.0, 12.0, 13.0, 14.0))


def test_a_denial_says_in_how_long_the_first_slot_frees_and_when_each_does() -> None:
    from shared.clock import ManualClock
    from shared.quota import InMemoryQuotaStore, QuotaDenied

    clock = ManualClock(100.0)
    store = InMemoryQuotaStore(calls=2, period=10, clock=clock)
    store.try_acquire()
    clock.advance(1)
    store.try_acquire()
    clock.advance(2)
    denied = store.try_acquire()
    assert isinstance(denied, QuotaDenied)
    assert denied.retry_after == pytest.approx(7.0)
    assert denied.frees == pytest.approx((110.0, 111.0))  # on the quota's clock


def test_a_new_grant_keeps_the_log_sorted() -> None:
    assert with_grant([1000, 3000], 2000) == [1000, 2000, 3000]
