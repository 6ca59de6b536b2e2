"""Taking a quota slot for a send: wait here for one that frees within a second, else defer.

Queue visibility has whole-second steps, so a slot that frees sooner than the queue could bring
the message back is better waited for in the invocation (holding the claim), up to
``SMARTDIALOG_SEND_QUOTA_WAIT_SECONDS`` in all. A denial because the quota is full is noted, so
this process defers further messages without touching storage until the hint runs out (a hint
can only defer a call, never admit one).
"""

from __future__ import annotations

import math
import random
import threading
from functools import lru_cache
from typing import TYPE_CHECKING

from shared.clock import Clock, SystemClock

if TYPE_CHECKING:
    from shared.outbound._attempt import QuotaPort
    from shared.quota import QuotaDenied, QuotaGrant
    from shared.settings import Settings

__all__ = ["QUOTA_WAIT_JITTER", "QuotaWait", "poll_after", "quota_wait"]

#: Random extra of an in-process quota wait, so waiting workers do not all retry at once.
QUOTA_WAIT_JITTER = 0.02


class QuotaWait:
    """One process's way to the quota (shared by its invocations and threads)."""

    def __init__(self, quota: QuotaPort, longest: float, clock: Clock | None = None) -> None:
        self.quota = quota
        self.longest = longest
        # The quota's own time: slots free in real seconds, whatever clock the records use.
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._full_until = 0.0

    def hint(self) -> float:
        """Seconds until this process was last told a slot frees (<= 0: ask the quota)."""
        with self._lock:
            return self._full_until - self._clock.now()

    def full_lately(self, within: float) -> bool:
        """Whether this process was told the quota is full for a slot that frees later or freed
        less than ``within`` seconds ago: then the quota, not packing, is what holds sends back."""
        with self._lock:
            return self._full_until > self._clock.now() - within

    def come_back_in(self, retry_after: float, *, packable: bool = False) -> float:
        """The queue delay of a message deferred for a slot that frees in ``retry_after``.

        A message sent alone (or a bulk pack's driver) comes back up to the longest in-process
        wait *early*: queue visibility has whole-second steps, a late return wastes the slot,
        and an early one waits for it in the invocation. A message that may share a call
        comes back when the slot frees: those deferred together then return together after
        it, and the first to claim a slot packs the others (come back early, every one of them
        would lead a small pack while it waits, and only one would get the slot).
        """
        return retry_after if packable else max(0.0, retry_after - self.longest)

    def sleep(self, seconds: float) -> None:
        """Wait out a short hint in the invocation."""
        self._clock.sleep(seconds)

    def take(self, waited: float = 0.0) -> tuple[QuotaGrant | QuotaDenied, float]:
        """A quota decision, after waiting here for a slot that frees within the longest wait
        in all (``waited`` so far); (decision, waited)."""
        from shared.quota import QuotaDenied

        decision = self.quota.try_acquire()
        while isinstance(decision, QuotaDenied) and waited + decision.retry_after <= self.longest:
            pause = decision.retry_after + random.uniform(0, QUOTA_WAIT_JITTER)
            self._clock.sleep(pause)
            waited += pause
            decision = self.quota.try_acquire()
        if isinstance(decision, QuotaDenied) and str(getattr(decision, "reason", "full")) == "full":
            with self._lock:
                until = self._clock.now() + decision.retry_after
                self._full_until = max(self._full_until, until)
        return decision, waited


@lru_cache(maxsize=32)
def quota_wait(settings: Settings) -> QuotaWait:
    """This process's way to the quota of ``settings`` (its senders and its send actions share
    one, so the actions know what the senders were last told)."""
    from shared import quota

    return QuotaWait(quota.from_settings(settings), settings.send_quota_wait_seconds)


def poll_after(settings: Settings, seconds: float) -> int:
    """A ``Retry-After`` for a status poll: ``seconds`` rounded up, at least 1 and at most
    ``SMARTDIALOG_SEND_STATUS_RETRY_AFTER_SECONDS``."""
    return max(1, min(math.ceil(seconds), settings.send_status_retry_after_seconds))
