"""An exact sliding-window call quota per connection, on an injectable clock.

A call admitted at time ``t`` occupies a slot during ``[t, t + period)``. A new call is admitted
only while fewer than ``calls`` slots are occupied, so no window of ``period`` seconds ever holds
more than ``calls`` admitted calls. Rejected calls take no slot. ``calls <= 0`` disables the quota.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["Clock", "SlidingWindowQuota"]

Clock = Callable[[], float]


class SlidingWindowQuota:
    """Sliding log of admitted calls per connection key."""

    def __init__(self, calls: int, period: float, clock: Clock = time.monotonic) -> None:
        self.calls = calls
        self.period = period
        self.clock = clock
        self._log: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> int | None:
        """Take a slot for ``key``: None when admitted, else whole seconds (>= 1) until a slot
        frees.
        """
        if self.calls <= 0:  # quota disabled
            return None
        with self._lock:
            now = self.clock()
            log = self._log.setdefault(key, deque())
            while log and log[0] + self.period <= now:
                log.popleft()
            if len(log) < self.calls:
                log.append(now)
                return None
            return max(1, math.ceil(log[0] + self.period - now))

    def used(self, key: str) -> int:
        """Slots currently occupied by ``key``."""
        with self._lock:
            now = self.clock()
            return sum(1 for t in self._log.get(key, ()) if t + self.period > now)

    def used_total(self) -> int:
        """Slots currently occupied by every key together."""
        with self._lock:
            now = self.clock()
            return sum(1 for log in self._log.values() for t in log if t + self.period > now)

    def reset(self) -> None:
        with self._lock:
            self._log.clear()
