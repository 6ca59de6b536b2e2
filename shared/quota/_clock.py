"""The one clock the quota reads: wall-clock seconds, injectable so tests never sleep."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Where the quota gets the time from and how it waits.

    ``now()`` must be comparable across instances, so it is wall-clock time (seconds
    since the epoch), not a per-process monotonic counter. Instances' clocks may
    disagree by a little; the quota's safety margin absorbs that.
    """

    def now(self) -> float:
        """Seconds since the epoch."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a test clock just moves its time forward)."""
        ...


class SystemClock:
    """The real clock: ``time.time()`` and ``time.sleep()``."""

    def now(self) -> float:
        """Seconds since the epoch, from the operating system."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds`` (nothing when not positive)."""
        if seconds > 0:
            time.sleep(seconds)
