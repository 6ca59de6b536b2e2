"""Taking a quota slot for a send: wait here for one that frees within a second, else defer.

Queue visibility has whole-second steps, so a slot that frees sooner than the queue could bring
the message back is better waited for in the invocation (holding the claim), up to
``SMARTDIALOG_SEND_QUOTA_WAIT_SECONDS`` in all. A denial because the quota is full is noted, so
this process defers further messages without touching storage until the hint runs out (a hint
can only defer a call, never admit one).
"""

from __future__ import annotations

import heapq
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
        self._frees: tuple[float, ...] = ()  # when each slot frees, as last told (clock times)
        # A heap: when each message sent away for a slot comes for it (and its pack key, if any:
        # ``_keys``, the slot each key's messages come back for).
        self._coming: list[tuple[float, str]] = []
        self._keys: dict[str, float] = {}

    def hint(self) -> float:
        """Seconds until this process was last told a slot frees (<= 0: ask the quota)."""
        with self._lock:
            return self._full_until - self._clock.now()

    def full_lately(self, within: float) -> bool:
        """Whether this process was told the quota is full for a slot that frees later or freed
        less than ``within`` seconds ago: then the quota, not packing, is what holds sends back."""
        with self._lock:
            return self._full_until > self._clock.now() - within

    def come_back_in(self, wait: float | QuotaDenied, *, key: str | None = None) -> float:
        """The queue delay of a message deferred for the quota: ``wait`` the denial it got, or
        the seconds until a slot frees as this process was told (a hint, the window full).

        Each comes back for a slot of its own: while this process has sent k others away for
        slots still to free, it comes for the (k+1)-th to free as the last denial told (the
        last one told if more wait). So they return one by one as the slots free, at the pace
        of the window before, rather than all for the first: all at once, they held the
        workers in turn while a connection's slots freed one by one, and another connection's
        messages behind them found theirs late. Messages that may share a call (one pack
        ``key``) share a slot: they come back together, and the first to claim it packs the
        others (a slot each, each would lead a small pack). Every one comes back up to the
        longest in-process wait *early*: queue visibility has whole-second steps, a late
        return wastes the slot, and an early one waits for it in the invocation.
        """
        from shared.quota import DenialReason, QuotaDenied

        retry_after = wait.retry_after if isinstance(wait, QuotaDenied) else wait
        if retry_after <= 0 or (isinstance(wait, QuotaDenied) and wait.reason != DenialReason.FULL):
            return max(0.0, retry_after - self.longest)  # a short-lived denial: no slot held
        with self._lock:
            now = self._clock.now()
            while self._coming and self._coming[0][0] <= now:
                at, held = heapq.heappop(self._coming)
                if self._keys.get(held) == at:
                    del self._keys[held]
            if key is not None and key in self._keys:  # never before it was told, though
                at = max(self._keys[key], now + retry_after)
            else:
                frees = [at for at in self._frees if at > now]
                slot = frees[min(len(self._coming), len(frees) - 1)] if frees else now
                at = max(now + retry_after, slot)
                heapq.heappush(self._coming, (at, key or ""))
                if key is not None:
                    self._keys[key] = at
        return max(0.0, at - now - self.longest)

    def sleep(self, seconds: float) -> None:
        """Wait out a short hint in the invocation."""
        self._clock.sleep(seconds)

    def take(self, waited: float = 0.0) -> tuple[QuotaGrant | QuotaDenied, float]:
        """A quota decision, after waiting here for a slot that frees within the longest wait
        in all (``waited`` so far); (decision, waited)."""
        from shared.quota import DenialReason, QuotaDenied

        decision = self.quota.try_acquire()
        while isinstance(decision, QuotaDenied) and waited + decision.retry_after <= self.longest:
            pause = decision.retry_after + random.uniform(0, QUOTA_WAIT_JITTER)
            self._clock.sleep(pause)
            waited += pause
            decision = self.quota.try_acquire()
        if isinstance(decision, QuotaDenied) and decision.reason == DenialReason.FULL:
            with self._lock:
                now = self._clock.now()
                self._full_until = max(self._full_until, now + decision.retry_after)
                self._frees = tuple(now + s for s in decision.frees)
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
