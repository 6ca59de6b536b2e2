"""The one clock of the app: wall-clock time, injectable so tests never sleep.

Every component that reads the time (the quota, the sender's leases and backoffs, the send
service, delivery reports) takes a :class:`Clock`; the composition roots pass
:func:`current`, which is the system clock unless a test installed another with :func:`use`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import threading
import time
from collections.abc import Iterator
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "as_utc", "current", "use", "utcnow"]


class Clock(Protocol):
    """Where a component gets the time from and how it waits.

    ``now()`` must be comparable across instances, so it is wall-clock time (seconds
    since the epoch), not a per-process monotonic counter. Instances' clocks may
    disagree by a little; the quota's safety margin and the lease margin absorb that.
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


class ManualClock:
    """A clock that moves only when told to (tests): ``sleep`` and :meth:`advance` move it."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))

    def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds``."""
        with self._lock:
            self._now += seconds


class _Installed:
    """Follows whatever clock is installed at each call, so cached components follow too."""

    def now(self) -> float:
        return _installed.now()

    def sleep(self, seconds: float) -> None:
        _installed.sleep(seconds)


_installed: Clock = SystemClock()
_CURRENT = _Installed()


def current() -> Clock:
    """The clock the app's components are built with: the system clock in production, the
    one installed by :func:`use` in tests (followed at every call, so cached components
    follow it too)."""
    return _CURRENT


@contextlib.contextmanager
def use(clock: Clock) -> Iterator[Clock]:
    """Install ``clock`` for everything built or called meanwhile (tests), then restore."""
    global _installed
    previous, _installed = _installed, clock
    try:
        yield clock
    finally:
        _installed = previous


def utcnow(clock: Clock | None = None) -> dt.datetime:
    """The time of ``clock`` (default: :func:`current`) as an aware UTC datetime."""
    return dt.datetime.fromtimestamp((clock or _installed).now(), dt.UTC)


def as_utc(value: dt.datetime) -> dt.datetime:
    """A time we were given, in UTC: one without a zone is UTC (SmartDialog's times, in
    delivery reports and inbound messages, are), one with a zone is converted. Serialized, it
    ends in ``Z`` (RFC 3339)."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


#: How an ISO 8601 date-time as text starts: a full date, ``T`` (or a space), hours and minutes.
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def is_date_time(text: str) -> bool:
    """Whether ``text`` starts as an ISO 8601 date-time: a full date, ``T`` (or a space), hours
    and minutes. Not what ``datetime.fromisoformat`` reads as a midnight: a date alone
    (``2025-06-01``), digits (``20250601``, even ``25060110``: 2506-01-10), a week date
    (``2025-W22-1``)."""
    return _DATE_TIME.match(text) is not None
