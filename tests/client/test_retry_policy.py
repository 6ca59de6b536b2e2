"""The retry policy on its own: which outcomes are retried, and how long to wait."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from shared.smartdialog import (
    INITIAL_RETRY_DELAY,
    MAX_RETRY_AFTER,
    MAX_RETRY_DELAY,
    backoff_delay,
    parse_retry_after,
    retry_delay,
    should_retry,
)

NOW = 1_900_000_000.0


def response(status: int) -> httpx.Response:
    return httpx.Response(status)


@pytest.mark.parametrize(
    ("outcome", "replayable", "expected"),
    [
        (response(500), True, True),
        (response(503), True, True),
        (response(408), True, True),
        (response(429), True, True),
        (response(400), True, False),
        (response(401), True, False),
        (response(404), True, False),
        (response(409), True, False),  # a duplicate RequestId: the first attempt went through
        (response(500), False, False),
        (response(503), False, False),
        (response(408), False, False),
        (response(429), False, True),  # refused before it took effect
        (httpx.ConnectError("refused"), False, True),
        (httpx.ConnectTimeout("slow connect"), False, True),
        (httpx.PoolTimeout("pool"), False, True),
        (httpx.ReadTimeout("read"), False, False),
        (httpx.RemoteProtocolError("reset"), False, False),
        (httpx.ReadTimeout("read"), True, True),
        (httpx.RemoteProtocolError("reset"), True, True),
        (ValueError("not transport"), True, False),
    ],
)
def test_should_retry(
    outcome: httpx.Response | Exception, replayable: bool, expected: bool
) -> None:
    assert should_retry(outcome, replayable=replayable) is expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),  # the precise one wins
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),
        ({"Retry-After": email.utils.formatdate(NOW + 7, usegmt=True)}, 7.0),
        ({"Retry-After": email.utils.formatdate(NOW - 7, usegmt=True)}, 0.0),  # already past
        ({"Retry-After": "-1"}, None),
        ({"Retry-After": "tomorrow-ish"}, None),
        # not finite: no advice (math.ceil of infinity raised in the dispatcher)
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "1e400"}, None),
        ({"Retry-After": "nan"}, None),
        ({"retry-after-ms": "Infinity", "Retry-After": "9"}, 9.0),
        # a year or zone too large for a datetime raised OverflowError (found in review: the
        # dispatcher, the DLR forwarder and the client raised it instead of backing off)
        ({"Retry-After": "Mon, 01 Jan 99999999999999999999 00:00:00 GMT"}, None),
        ({"Retry-After": "Mon, 01 Jan 2030 00:00:00 +9999999999999"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=lambda: NOW) == expected


def test_retry_delay_honours_server_advice_without_jitter() -> None:
    assert retry_delay(0, {"Retry-After": "2"}, jitter=lambda: 1.0) == 2.0


def test_retry_delay_gives_up_when_server_advice_exceeds_the_cap() -> None:
    assert retry_delay(0, {"Retry-After": str(MAX_RETRY_AFTER)}) == MAX_RETRY_AFTER
    assert retry_delay(0, {"Retry-After": "3600"}) is None
    assert retry_delay(0, {"retry-after-ms": str((MAX_RETRY_AFTER + 1) * 1000)}) is None


@pytest.mark.parametrize(
    ("retries_taken", "expected"),
    [(0, INITIAL_RETRY_DELAY), (1, 2 * INITIAL_RETRY_DELAY), (2, 4 * INITIAL_RETRY_DELAY)],
)
def test_retry_delay_backs_off_exponentially(retries_taken: int, expected: float) -> None:
    assert retry_delay(retries_taken, jitter=lambda: 0.0) == expected


def test_retry_delay_backoff_is_capped_even_after_many_retries() -> None:
    assert retry_delay(10_000, jitter=lambda: 0.0) == MAX_RETRY_DELAY


def test_retry_delay_jitter_shortens_by_at_most_a_quarter() -> None:
    assert retry_delay(0, jitter=lambda: 1.0) == pytest.approx(0.75 * INITIAL_RETRY_DELAY)
    delays = {retry_delay(1) for _ in range(50)}
    assert all(0.75 * 2 * INITIAL_RETRY_DELAY <= d <= 2 * INITIAL_RETRY_DELAY for d in delays)
    assert len(delays) > 1


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "jitter", "expected"),
    [
        (1, 0.5, 8.0, 0.0, 0.5),  # the first failure waits base
        (2, 0.5, 8.0, 0.0, 1.0),
        (3, 0.5, 8.0, 0.0, 2.0),
        (5, 0.5, 8.0, 0.0, 8.0),  # doubled up to the cap exactly
        (6, 0.5, 8.0, 0.0, 8.0),
        (10_000, 0.5, 8.0, 0.0, 8.0),  # no overflow after very many attempts
        (1, 5.0, 900.0, 0.0, 5.0),  # the dispatcher's settings
        (8, 5.0, 900.0, 0.0, 640.0),
        (9, 5.0, 900.0, 0.0, 900.0),
        (1, 0.5, 8.0, 1.0, 0.375),  # jitter takes off at most a quarter
        (3, 0.5, 8.0, 0.5, 1.75),
        (6, 0.5, 8.0, 1.0, 6.0),  # jitter applies after the cap: never above it
        (4, 0.0, 8.0, 0.0, 0.0),  # base 0 (tests) never waits
        (10_000, 0.0, 8.0, 0.0, 0.0),
    ],
)
def test_backoff_delay(
    attempt: int, base: float, cap: float, jitter: float, expected: float
) -> None:
    assert backoff_delay(attempt, base=base, cap=cap, jitter=lambda: jitter) == expected


def test_backoff_delay_counts_attempts_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        backoff_delay(0, base=1.0, cap=8.0)


@pytest.mark.parametrize("retries_taken", [0, 1, 3, 4, 50])
@pytest.mark.parametrize("jitter", [0.0, 0.3, 0.99])
def test_retry_delay_without_advice_is_the_shared_backoff(
    retries_taken: int, jitter: float
) -> None:
    shared = backoff_delay(
        retries_taken + 1, base=INITIAL_RETRY_DELAY, cap=MAX_RETRY_DELAY, jitter=lambda: jitter
    )
    assert retry_delay(retries_taken, jitter=lambda: jitter) == shared
