"""The sliding log itself: grant times in integer milliseconds, pure functions only.

Encoding (the ``Grants`` property of the quota entity): the grant times sorted
ascending, written as the first one in milliseconds since the epoch followed by the
difference to the previous one, comma-separated::

    1764255600123,0,17,250,1003

A full log of 100 grants in a 60 s window is typically 300-600 characters. Rounding
always errs on the safe side: a grant is stamped with the time rounded *up* to the
next millisecond (it stays in the window a little longer), the current time is
rounded *down* (an old grant leaves the window a little later), and the window is
rounded up.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from itertools import pairwise

__all__ = [
    "decode",
    "encode",
    "in_window",
    "slot_times",
    "stamp",
    "window_ms",
    "with_grant",
]


def window_ms(seconds: float) -> int:
    """A window length in whole milliseconds, never shorter than ``seconds``."""
    # round() first so 2.25 s is 2250 ms, not 2251 from 2250.0000000000005.
    return math.ceil(round(seconds * 1000, 6))


def stamp(now: float) -> int:
    """The time to record for a grant made at ``now``: rounded up to the millisecond."""
    return math.ceil(now * 1000)


def in_window(grants: Sequence[int], now: float, window: int) -> list[int]:
    """The grants (sorted, ms) that still count at ``now`` for a window of ``window`` ms.

    A grant made at ``g`` counts during ``[g, g + window)``: it leaves the window
    exactly when ``now`` reaches ``g + window``.
    """
    now_ms = math.floor(now * 1000)
    return list(grants[bisect.bisect_right(grants, now_ms - window) :])


def with_grant(grants: Sequence[int], granted_ms: int) -> list[int]:
    """``grants`` plus one more, still sorted (clocks of other instances may be ahead)."""
    result = list(grants)
    bisect.insort(result, granted_ms)
    return result


def slot_times(live: Sequence[int], calls: int, window: int) -> tuple[float, ...]:
    """When each of the next ``calls`` slots frees (seconds, the grants' clock), soonest first,
    if no grant is made meanwhile. ``live`` is sorted and holds at least ``calls`` grants: the
    first slot frees when the grant that would leave ``calls - 1`` behind it drops out of the
    window, the next ones as the grants after it do."""
    return tuple((grant + window) / 1000 for grant in live[len(live) - calls :])


def encode(grants: Sequence[int]) -> str:
    """``grants`` (sorted, ms) as the compact text stored in the entity."""
    if not grants:
        return ""
    parts = [str(grants[0])]
    parts.extend(str(b - a) for a, b in pairwise(grants))
    return ",".join(parts)


def decode(text: str) -> list[int]:
    """The grant times (sorted, ms) stored as ``text``; ``ValueError`` if it is not a log."""
    if not text:
        return []
    values = [int(part) for part in text.split(",")]
    if any(delta < 0 for delta in values[1:]):
        raise ValueError("grant times are not sorted")
    grants = [values[0]]
    for delta in values[1:]:
        grants.append(grants[-1] + delta)
    return grants
