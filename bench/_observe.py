"""The sender watched from outside: every invocation's outcome and every quota decision, timed.

:func:`observe_sender` wraps ``OutboundSender.process`` and ``QuotaStore.try_acquire`` (the
classes, so every sender and quota store in the process) for the block and restores them after;
nothing in ``shared`` knows. Times are ``time.time()``, as the quota log and the sandbox use.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.outbound import SendOutcome
    from shared.quota import QuotaDenied, QuotaGrant

__all__ = ["Invocation", "Observation", "QuotaDecision", "observe_sender"]


@dataclass(frozen=True)
class Invocation:
    """One ``OutboundSender.process`` call."""

    started: float
    ended: float
    thread: int
    #: None when it raised (then ``error`` says what).
    outcome: SendOutcome | None
    error: str | None = None


@dataclass(frozen=True)
class QuotaDecision:
    """One ``try_acquire``: asked at ``asked``, answered at ``answered`` on ``thread``."""

    asked: float
    answered: float
    thread: int
    result: QuotaGrant | QuotaDenied


@dataclass
class Observation:
    """What the sender did while observed, in the order the calls ended."""

    invocations: list[Invocation] = field(default_factory=list)
    decisions: list[QuotaDecision] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, item: Invocation | QuotaDecision) -> None:
        with self._lock:
            if isinstance(item, Invocation):
                self.invocations.append(item)
            else:
                self.decisions.append(item)


@contextlib.contextmanager
def observe_sender() -> Iterator[Observation]:
    """Record every sender invocation and quota decision of this process during the block."""
    from shared.outbound import OutboundSender
    from shared.quota import QuotaStore

    seen = Observation()
    process = OutboundSender.process
    try_acquire = QuotaStore.try_acquire

    def observed_process(self: OutboundSender, text: str, **kwargs: Any) -> SendOutcome:
        started = time.time()
        try:
            outcome = process(self, text, **kwargs)
        except Exception as exc:
            seen.add(Invocation(started, time.time(), threading.get_ident(), None, repr(exc)))
            raise
        seen.add(Invocation(started, time.time(), threading.get_ident(), outcome))
        return outcome

    def observed_try_acquire(self: QuotaStore) -> QuotaGrant | QuotaDenied:
        asked = time.time()
        result = try_acquire(self)
        seen.add(QuotaDecision(asked, time.time(), threading.get_ident(), result))
        return result

    OutboundSender.process = observed_process  # type: ignore[method-assign]
    QuotaStore.try_acquire = observed_try_acquire  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        OutboundSender.process = process  # type: ignore[method-assign]
        QuotaStore.try_acquire = try_acquire  # type: ignore[method-assign]
