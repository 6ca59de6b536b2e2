"""When to retry a SmartDialog call and how long to wait first.

A retry must never send a message twice, so the policy depends on whether the request may be
*replayed*: GET, PUT and DELETE may; a send POST may because its ``RequestId`` is the same on every
attempt (SmartDialog drops duplicates).

Deliberate refinement of "a POST is retried only when its RequestId is the same on every
attempt": a POST without a stable ``RequestId`` (CreateGroupContact, CreateWhatsappTemplate,
NewMessage, SendDiscussionReplyMessage) is *also* retried after a 429 or a failure to connect
(``httpx.ConnectError``, ``ConnectTimeout``, ``PoolTimeout``). In both cases the request
certainly did not take effect: SmartDialog refused it before acting, or it never left this
process. After anything else (a read timeout, a reset connection, a 5xx) it is not retried,
because it may already have taken effect.

Server advice (``Retry-After``, ``retry-after-ms``) is honoured up to :data:`MAX_RETRY_AFTER`;
advice beyond that ends the retries at once, and the error (``RateLimitError.retry_after``)
carries the full advice so the caller can re-schedule instead of retrying early.

:func:`backoff_delay` is the product's one backoff formula: the client uses it with the constants
below, other components (the subscriber dispatcher, the outbound sender) with their own settings.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import math
import random
import time
from collections.abc import Callable, Mapping

import httpx

from shared.smartdialog._exceptions import NOT_SENT_ERRORS

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "INITIAL_RETRY_DELAY",
    "MAX_RETRY_AFTER",
    "MAX_RETRY_DELAY",
    "backoff_delay",
    "parse_retry_after",
    "retry_delay",
    "should_retry",
]

DEFAULT_MAX_RETRIES = 2
"""Retries after the first attempt (a 401 refresh-and-retry is not counted)."""
INITIAL_RETRY_DELAY = 0.5
"""Seconds before the first retry when the server gives no ``Retry-After``."""
MAX_RETRY_DELAY = 8.0
"""Cap of the exponential backoff, in seconds."""
MAX_RETRY_AFTER = 60.0
"""Longest server-advised wait we sleep out, in seconds; longer advice ends the retries."""

RETRYABLE_STATUSES = frozenset({408, 429})
"""Statuses retried besides 5xx (for a request that may be replayed)."""

# Jitter only shortens a backoff, so a cap stays a cap.
_MAX_JITTER = 0.25


def should_retry(outcome: httpx.Response | Exception, *, replayable: bool) -> bool:
    """Whether an attempt that ended in ``outcome`` (a response or a transport error) is retried.

    ``replayable`` says whether repeating the request is harmless even if it already took
    effect. Requests that are not are retried only on a connect failure or a 429 (the request
    certainly did not take effect; see the module docstring).
    """
    if isinstance(outcome, httpx.Response):
        status = outcome.status_code
        if status == 429:
            return True
        return replayable and (status in RETRYABLE_STATUSES or status >= 500)
    if isinstance(outcome, NOT_SENT_ERRORS):
        return True
    return replayable and isinstance(outcome, httpx.TransportError)


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: Callable[[], float] = time.time
) -> float | None:
    """The server-advised wait in seconds from ``retry-after-ms`` or ``Retry-After``, uncapped.

    ``Retry-After`` may be delta-seconds or an HTTP date (compared with ``now()``, a Unix
    timestamp). Missing, unparsable, negative or infinite advice gives None.
    """
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = -1.0
        if 0 <= value < math.inf:
            return value
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:  # a year or zone too large for a datetime is OverflowError: no advice either
            when = email.utils.parsedate_to_datetime(raw)
            if when.tzinfo is None:  # "-0000" (or no zone): RFC 9110 dates are GMT, not local
                when = when.replace(tzinfo=dt.UTC)
            seconds = max(0.0, when.timestamp() - now())
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return seconds if 0 <= seconds < math.inf else None


def retry_delay(
    retries_taken: int,
    headers: Mapping[str, str] | None = None,
    *,
    now: Callable[[], float] = time.time,
    jitter: Callable[[], float] = random.random,
) -> float | None:
    """Seconds to wait before retry number ``retries_taken + 1``, or None: do not retry.

    Server advice (``retry-after-ms``, then ``Retry-After``) wins as given; advice longer than
    ``MAX_RETRY_AFTER`` gives None (retrying earlier than asked would only be refused again, and
    sleeping that long belongs to the caller's scheduler). Without advice:
    ``backoff_delay(retries_taken + 1, base=INITIAL_RETRY_DELAY, cap=MAX_RETRY_DELAY)``.
    """
    advised = parse_retry_after(headers, now=now)
    if advised is not None:
        return advised if advised <= MAX_RETRY_AFTER else None
    return backoff_delay(
        retries_taken + 1, base=INITIAL_RETRY_DELAY, cap=MAX_RETRY_DELAY, jitter=jitter
    )


def backoff_delay(
    attempt: int, *, base: float, cap: float, jitter: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after ``attempt`` failed attempts (1: the first one failed).

    ``min(base * 2 ** (attempt - 1), cap) * (1 - 0.25 * jitter())``: ``base`` after the first
    failure, twice as long after each further one up to ``cap``, and jitter takes off up to a
    quarter so that many callers do not retry in step. With ``jitter()`` in [0, 1)
    (``random.random``, the default) the result lies in ``(0.75 * backoff, backoff]``, so never
    above ``cap``. Server advice is the caller's to weigh (see :func:`parse_retry_after`).
    Raises ``ValueError`` if ``attempt`` is below 1.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    # 2.0 ** 1024 overflows; any real base has reached any real cap long before.
    backoff = min(base * 2.0 ** min(attempt - 1, 1023), cap)
    return backoff * (1.0 - _MAX_JITTER * jitter())
