"""Taking a quota slot for a send: wait here for one that frees soon, else defer. A denial is
noted as a hint that defers (never admits) further sends without touching storage. See
docs/sending.md, "Statuses and the sender" (step 4) and "Packing and bulk sends" (timing)."""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from functools import lru_cache
from typing import TYPE_CHECKING

from shared.clock import Clock, SystemClock

if TYPE_CHECKING:
    from collections.abc import Iterable

    from shared.messages import MessageRecord
    from shared.outbound._attempt import QuotaPort
    from shared.quota import QuotaDenied, QuotaGrant
    from shared.settings import Settings

__all__ = [
    "QUOTA_WAIT_JITTER",
    "QuotaWait",
    "poll_after",
    "quota_wait",
    "slot_holder",
    "waits_for",
]

#: Random extra of an in-process quota wait, so waiting workers do not all retry at once.
QUOTA_WAIT_JITTER = 0.02
#: How far two readings of one slot's time may differ (a denial's clock is read before ours).
SLOT_TIME_SKEW = 0.05


class QuotaWait:
    """One process's way to the quota (shared by its invocations and threads)."""

    def __init__(self, quota: QuotaPort, longest: float, clock: Clock | None = None) -> None:
        self.quota = quota
        self.longest = longest
        # The quota's own time: slots free in real seconds, whatever clock the records use.
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._full_until = 0.0
        self._frees: tuple[float, ...] = ()  # when each slot of the window frees, as last told
        self._held: dict[str, float] = {}  # a slot's holder (slot_holder) -> when it frees

    def hint(self) -> float:
        """Seconds until this process was last told a slot frees (<= 0: ask the quota)."""
        with self._lock:
            return self._full_until - self._clock.now()

    def held(self, holder: str) -> float:
        """Seconds until the slot ``holder`` was sent away for frees (<= 0: it holds none)."""
        with self._lock:
            return self._held.get(holder, 0.0) - self._clock.now()

    def until_due(self, record: MessageRecord) -> float:
        """Seconds until ``record``'s send is due as this process knows (a status poll's
        estimate; <= 0: no wait known): its held slot (a packable send's only while the hint is
        past the longest wait here, as a new send of its key may pack it sooner), else the hint."""
        if record.batch_id is not None and record.pack_id is not None:
            holder, own = slot_holder(None, record.pack_id), True
        else:
            holder, own = slot_holder(record.pack_key, record.message_id), record.pack_key is None
        hint = self.hint()
        return max(hint, self.held(holder)) if own or hint > self.longest else hint

    def ended(self, records: Iterable[MessageRecord]) -> None:
        """Forget the holds of those of ``records`` sent alone that ended, so the next message
        sent away may come for theirs (a pack key's hold stays, for the key's others)."""
        with self._lock:
            for record in records:
                if record.status.is_final and record.pack_key is None:
                    self._held.pop(slot_holder(None, record.message_id), None)

    def full_lately(self, within: float) -> bool:
        """Whether this process was told the quota is full for a slot that frees later or freed
        less than ``within`` seconds ago."""
        with self._lock:
            return self._full_until > self._clock.now() - within

    def come_back_in(self, wait: float | QuotaDenied | None, holder: str) -> float:
        """The queue delay of a send deferred for the quota (``wait``: the denial, or seconds
        until a slot frees; None: the hint): up to the longest in-process wait before a slot of
        its own, the first to free that no other ``holder`` here holds, kept until it takes one.
        See docs/sending.md, "Packing and bulk sends" (timing)."""
        from shared.quota import DenialReason, QuotaDenied

        if isinstance(wait, QuotaDenied):
            if wait.reason != DenialReason.FULL:  # a short-lived denial: no slot held
                return max(0.0, wait.retry_after - self.longest)
            wait = wait.retry_after
        retry_after = self.hint() if wait is None else wait
        if retry_after <= 0:
            return 0.0  # nothing to wait for
        with self._lock:
            now = self._clock.now()
            self._held = {who: at for who, at in self._held.items() if at > now}  # not passed
            told = now + retry_after - SLOT_TIME_SKEW  # no slot sooner than it was told
            if (at := self._held.get(holder, 0.0)) < told:  # its slot, or its key's
                at, held = now + retry_after, Counter(self._held.values())
                for at in (free for free in self._frees if free >= told):
                    if not held[at]:
                        break  # the first slot nobody holds (else the last one told)
                    held[at] -= 1
            self._held[holder] = at  # a slot's time as told, so others' holds match it
        return max(0.0, at - now - self.longest)

    def sleep(self, seconds: float) -> None:
        """Wait out a short hint in the invocation."""
        self._clock.sleep(seconds)

    def take(self, waited: float, holder: str) -> tuple[QuotaGrant | QuotaDenied, float]:
        """A quota decision for ``holder`` after waiting here for a slot that frees within the
        longest wait in all (``waited`` so far); (decision, waited). A grant ends its hold."""
        from shared.quota import DenialReason, QuotaDenied

        decision = self.quota.try_acquire()
        while isinstance(decision, QuotaDenied) and waited + decision.retry_after <= self.longest:
            pause = decision.retry_after + random.uniform(0, QUOTA_WAIT_JITTER)
            self._clock.sleep(pause)
            waited += pause
            decision = self.quota.try_acquire()
        if isinstance(decision, QuotaDenied) and decision.reason == DenialReason.FULL:
            with self._lock:
                self._full_until = max(self._full_until, self._clock.now() + decision.retry_after)
                self._frees = decision.frees
        elif not isinstance(decision, QuotaDenied):
            with self._lock:
                self._held.pop(holder, None)
        return decision, waited


def slot_holder(key: str | None, name: str) -> str:
    """Whom a deferred send's slot is held for: its pack ``key`` (shared), else itself, ``name``."""
    return f"key {key}" if key is not None else f"one {name}"


def waits_for(connection: str | None, settings: Settings) -> QuotaWait:
    """This process's way to connection ``connection``'s quota, for a status poll or a cancel;
    ``settings``' (the app's) while it is broken or gone."""
    from shared.connections import connection_settings
    from shared.problems import Problem

    try:
        return quota_wait(connection_settings(connection))
    except Problem:
        return quota_wait(settings)


@lru_cache(maxsize=32)
def quota_wait(settings: Settings) -> QuotaWait:
    """This process's way to the quota of ``settings``, shared by its senders and send actions."""
    from shared import quota

    return QuotaWait(quota.from_settings(settings), settings.send_quota_wait_seconds)


def poll_after(settings: Settings, seconds: float) -> int:
    """A ``Retry-After`` for a status poll: ``seconds`` rounded up, at least 1 and at most
    ``SMARTDIALOG_SEND_STATUS_RETRY_AFTER_SECONDS``."""
    return max(1, min(math.ceil(seconds), settings.send_status_retry_after_seconds))
