"""The quota algorithm, over any store of one sliding log that can compare-and-swap."""

from __future__ import annotations

import logging
import math
import random
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

from shared import telemetry
from shared.clock import Clock, SystemClock
from shared.deadline import left
from shared.names import DEFAULT_CONNECTION, QUOTA_MAX_CALLS
from shared.quota import _log

logger = logging.getLogger("shared.quota")

#: Read-modify-write rounds one ``try_acquire`` may lose to other writers before it
#: gives up and answers :class:`QuotaDenied` (reason CONTENDED).
CAS_MAX_ATTEMPTS = 8
#: Wait after a lost round: full jitter, doubling from the base up to the cap (seconds).
CAS_BACKOFF_BASE = 0.005
CAS_BACKOFF_MAX = 0.1
#: ``retry_after`` range of a denial caused by contention rather than by the quota.
CONTENDED_RETRY_AFTER = (0.05, 0.25)
#: Extra random wait of a blocked ``acquire`` so waiters do not all wake at once.
WAKE_JITTER = 0.02
#: A grant that reaches its caller, or is about to leave as a request (``is_fresh``), later
#: than this share of the margin after it was decided is not used (withdrawn from the log
#: when it comes back late). The rest of the margin is for the request's way upstream and the
#: instances' clock skew: with the whole margin spent before the request leaves, none was left
#: for them, and upstream could see ``calls + 1`` in a period. Off when the margin is 0.
LATE_GRANT_SHARE = 0.5
#: ``retry_after`` of a denial for a grant that came back too late: try again soon.
LATE_RETRY_AFTER = 0.01
#: The largest quota one log holds (the settings refuse more).
MAX_CALLS = QUOTA_MAX_CALLS


class QuotaError(Exception):
    """Base of the quota's errors."""


class QuotaExceeded(QuotaError):
    """No slot became free within the time the caller was willing to wait."""

    def __init__(self, retry_after: float, connection: str) -> None:
        super().__init__(
            f"SmartDialog call quota exhausted for connection {connection}; "
            f"a slot frees in {retry_after:.3f} s"
        )
        #: Seconds until a slot is expected to be free (others may take it first).
        self.retry_after = retry_after
        self.connection = connection

    @property
    def retry_after_whole_seconds(self) -> int:
        """``retry_after`` rounded up, at least 1: for ``Retry-After`` and queue visibility."""
        return _whole_seconds(self.retry_after)


class QuotaStoreError(QuotaError):
    """The quota log could not be read or written; the upstream call must not be made.
    ``lasting``: it fails so until an administrator acts as the message says (a missing table
    the app may not create, a damaged log), not for now."""

    def __init__(self, message: str, *, lasting: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting


class StaleGrant(QuotaError):
    """An attempt's grant was older than :meth:`QuotaStore.is_fresh` allows when its request
    was about to leave: nothing was sent with it. Not a failed call: a quota deferral."""

    def __init__(self, age: float) -> None:
        super().__init__(f"quota grant {age * 1000:.0f} ms old when the request was to leave")
        self.age = age


@dataclass(frozen=True, slots=True)
class QuotaGrant:
    """Permission for one upstream call, already recorded in the shared log.

    Make the call right away: the safety margin must cover the time between
    ``granted_at`` and the call reaching SmartDialog. Check :meth:`QuotaStore.is_fresh`
    right before the request leaves and drop a grant that is not. A grant that is not
    used is simply a wasted slot; it is never handed back.
    """

    connection: str
    #: The time recorded in the log (seconds since the epoch, on this instance's clock).
    granted_at: float
    #: Grants in the window including this one.
    in_window: int
    #: Compare-and-swap writes it took (1 unless other writers got in between).
    attempts: int


class DenialReason(StrEnum):
    """Why :class:`QuotaDenied` said no."""

    #: The window holds the limit; ``retry_after`` is when the oldest grant leaves.
    FULL = "full"
    #: Lost too many compare-and-swap rounds to other writers; nothing was recorded.
    CONTENDED = "contended"
    #: A grant came back too late to use safely; it was taken out of the log again.
    LATE = "late"


@dataclass(frozen=True, slots=True)
class QuotaDenied:
    """No slot for this caller now; make no upstream call."""

    connection: str
    #: Seconds until a slot frees (someone else may take it first).
    retry_after: float
    #: Grants in the window as this instance saw them (-1 when unknown).
    in_window: int
    #: FULL, or a short-lived reason (CONTENDED, LATE) with a short ``retry_after``.
    reason: DenialReason = DenialReason.FULL
    #: FULL: when each slot of the window frees (the quota's clock, seconds), soonest first (the
    #: first ``retry_after`` from now), if nobody takes one meanwhile; empty when not known.
    frees: tuple[float, ...] = ()

    @property
    def retry_after_whole_seconds(self) -> int:
        """``retry_after`` rounded up, at least 1: for ``Retry-After`` and queue visibility."""
        return _whole_seconds(self.retry_after)


@dataclass(frozen=True, slots=True)
class QuotaStats:
    """What one store object did since it was made (for logs and the benchmark)."""

    grants: int = 0
    denials: int = 0
    contended_denials: int = 0
    late_grants: int = 0
    cas_conflicts: int = 0
    #: Grants written in a single round trip, straight from the log kept in memory.
    fast_grants: int = 0
    #: Writes from the log kept in memory that another writer had made stale (a 412/409;
    #: also counted in ``cas_conflicts``).
    stale_cache: int = 0


class StoredLog(NamedTuple):
    """The encoded log and the version tag it was read (or written) with."""

    text: str
    etag: str


class LogBackend(Protocol):
    """Where one connection's log lives: read it, and replace it only if unchanged."""

    def read(self) -> StoredLog | None:
        """The log and its version tag, or None when there is none yet."""
        ...

    def write(self, text: str, etag: str | None) -> str | None:
        """Store ``text`` if the log is still at ``etag`` (None: still absent).

        Returns the new version tag of the log, which now holds exactly ``text`` (an empty
        string if the backend cannot tell it); None when another writer got there first.
        Raises :class:`QuotaStoreError` for any other failure.
        """
        ...


class QuotaStore:
    """The exact sliding-window quota of one SmartDialog connection.

    Thread-safe; many stores (in many processes and instances) may share one log.
    See the package docstring for why no window ever holds more than ``calls`` grants.
    """

    def __init__(
        self,
        backend: LogBackend,
        *,
        connection: str,
        calls: int,
        period: float,
        margin: float = 0.0,
        clock: Clock | None = None,
        name: str = DEFAULT_CONNECTION,
    ) -> None:
        if not 0 < calls <= MAX_CALLS:
            raise ValueError(f"quota calls must be between 1 and {MAX_CALLS}, got {calls}")
        if period <= 0 or margin < 0:
            raise ValueError(f"quota period must be > 0 and margin >= 0, got {period}, {margin}")
        self.connection = connection
        #: The connection's name (``connection`` is its storage key): the metrics' attribute.
        self.name = name
        self.calls = calls
        self.period = period
        self.margin = margin
        self._backend = backend
        self._clock: Clock = clock or SystemClock()
        self._window = _log.window_ms(period + margin)
        self._late_after = margin * LATE_GRANT_SHARE if margin > 0 else math.inf
        self._stats_lock = threading.Lock()
        self._stats = QuotaStats()
        telemetry.prepare()  # a grant is timed: no first-use imports on its way out
        # The fast path: the newest log version this store knows (its own last write, or
        # its last read) with its ETag, kept together in one immutable tuple, so a write
        # guarded by that ETag can only succeed if the stored log is exactly this text.
        self._last: StoredLog | None = None
        # False after a write from ``_last`` was refused: another writer is active, so the
        # next acquisitions read first (two round trips, as without the cache) until a read
        # shows the log unchanged since ``_last`` again.
        self._trust_last = True

    @property
    def window_seconds(self) -> float:
        """The window decisions are made on: period plus safety margin."""
        return self._window / 1000

    def try_acquire(self) -> QuotaGrant | QuotaDenied:
        """Take a slot now if one is free; never waits for the quota.

        May pause for a few tens of milliseconds when other instances are updating
        the log at the same moment. A grant is never handed out later than the
        safety margin after it was decided (it is withdrawn and denied as LATE).
        Raises :class:`QuotaStoreError` when the log cannot be read or written.
        """
        # Round 0, the fast path: decide on the log kept in memory and write it back in one
        # round trip. A refused write (someone else wrote since) costs no backoff: it
        # just continues with the ordinary read-decide-write rounds below.
        cached = self._last if self._trust_last else None
        writes = 0
        for attempt in range(0 if cached is not None else 1, CAS_MAX_ATTEMPTS + 1):
            stored = cached if attempt == 0 else self._read()
            # Read the clock only after the log: the proof of exactness needs "now"
            # to be later than every write this decision builds on.
            now = self._clock.now()
            live = _log.in_window(self._decode(stored), now, self._window)
            if len(live) >= self.calls and attempt == 0:
                # Full as far as memory knows: refuse only on what storage says (a grant
                # may have been withdrawn, and retry_after should be the stored log's).
                continue
            if len(live) >= self.calls:
                self._count(denials=1)
                frees = _log.slot_times(live, self.calls, self._window)
                retry_after = max(frees[0] - now, 0.001)
                return QuotaDenied(self.connection, retry_after, len(live), frees=frees)
            granted_ms = _log.stamp(now)
            updated = _log.with_grant(live, granted_ms)
            writes += 1
            if self._write(_log.encode(updated), stored.etag if stored else None):
                result = self._deliver(granted_ms, now, len(updated), writes)
                if attempt == 0 and isinstance(result, QuotaGrant):
                    self._count(fast_grants=1)
                return result
            if attempt == 0:
                self._trust_last = False
                self._count(cas_conflicts=1, stale_cache=1)
                continue
            self._count(cas_conflicts=1)
            if attempt < CAS_MAX_ATTEMPTS:
                cap = min(CAS_BACKOFF_MAX, CAS_BACKOFF_BASE * 2 ** (attempt - 1))
                self._clock.sleep(random.uniform(0, cap))
        self._count(denials=1, contended_denials=1)
        logger.info(
            "quota log of connection %s too contended: gave up after %d rounds",
            self.connection,
            CAS_MAX_ATTEMPTS,
        )
        return QuotaDenied(
            connection=self.connection,
            retry_after=random.uniform(*CONTENDED_RETRY_AFTER),
            in_window=-1,
            reason=DenialReason.CONTENDED,
        )

    def acquire(self, timeout: float) -> QuotaGrant:
        """Take a slot, waiting up to ``timeout`` seconds for one to free.

        Raises :class:`QuotaExceeded` as soon as it is clear no slot frees within
        ``timeout`` (it does not sleep out a wait that cannot succeed), with the
        ``retry_after`` of the last denial. ``timeout=0`` is a single try.
        """
        deadline = self._clock.now() + timeout
        while True:
            result = self.try_acquire()
            if isinstance(result, QuotaGrant):
                return result
            remaining = deadline - self._clock.now()
            if result.retry_after > remaining:
                raise QuotaExceeded(result.retry_after, self.connection)
            self._clock.sleep(min(result.retry_after + random.uniform(0, WAKE_JITTER), remaining))

    def gate(self, timeout: float = 0.0, *, renew: bool = False) -> AttemptGate:
        """A SmartDialog client's quota hooks (:class:`AttemptGate`): every attempt takes a slot
        via :meth:`acquire` (``timeout``), which must still be fresh when its request leaves."""
        return AttemptGate(self, timeout, renew=renew, clock=self._clock)

    def grant_age(self, grant: QuotaGrant) -> float:
        """Seconds since ``grant`` was decided, on this store's clock (the one that stamped it).

        An upper bound: ``granted_at`` is the decision time rounded up to the millisecond, so
        one millisecond is added back.
        """
        return self._clock.now() - grant.granted_at + 0.001

    def is_fresh(self, grant: QuotaGrant) -> bool:
        """Whether ``grant`` may still become a call: decided no longer ago than the LATE rule
        allows (:data:`LATE_GRANT_SHARE` of the safety margin; always true with a margin of 0).

        Check it right before the request leaves: the margin must cover everything between
        the decision and the call reaching upstream, and the store itself only bounds the
        part up to the grant being returned. A grant that is no longer fresh must not be used
        (its slot stays counted until it leaves the window: conservative).
        """
        return self.grant_age(grant) <= self._late_after

    def used(self) -> int:
        """Grants in the window right now (a read; for status pages and tests)."""
        stored = self._read()
        return len(_log.in_window(self._decode(stored), self._clock.now(), self._window))

    def stats(self) -> QuotaStats:
        """Counters of this store object since it was made."""
        with self._stats_lock:
            return self._stats

    def _deliver(
        self, granted_ms: int, decided_at: float, in_window: int, attempts: int
    ) -> QuotaGrant | QuotaDenied:
        late_by = self._clock.now() - decided_at
        if late_by <= self._late_after:
            self._count(grants=1)
            return QuotaGrant(self.connection, granted_ms / 1000, in_window, attempts)
        withdrawn = self._withdraw(granted_ms)
        self._count(denials=1, late_grants=1)
        logger.warning(
            "quota grant of connection %s took %.0f ms to record (margin %.3f s): not used, %s",
            self.connection,
            late_by * 1000,
            self.margin,
            "withdrawn" if withdrawn else "its slot is lost",
        )
        return QuotaDenied(self.connection, LATE_RETRY_AFTER, in_window, reason=DenialReason.LATE)

    def _withdraw(self, granted_ms: int) -> bool:
        """Take an unused grant out of the log so its slot is not wasted.

        Safe: a grant that never becomes a call need not be counted. Gives up
        (the slot stays spent until it leaves the window) after CAS_MAX_ATTEMPTS.
        """
        for attempt in range(1, CAS_MAX_ATTEMPTS + 1):
            stored = self._read()
            grants = self._decode(stored)
            if stored is None or granted_ms not in grants:
                return True  # already pruned
            grants.remove(granted_ms)  # equal times are interchangeable
            if self._write(_log.encode(grants), stored.etag):
                return True
            self._count(cas_conflicts=1)
            cap = min(CAS_BACKOFF_MAX, CAS_BACKOFF_BASE * 2 ** (attempt - 1))
            self._clock.sleep(random.uniform(0, cap))
        return False

    def _read(self) -> StoredLog | None:
        """The stored log, remembered for the fast path."""
        stored = self._backend.read()
        last = self._last
        if stored is not None and last is not None and stored.etag == last.etag:
            self._trust_last = True  # nobody else wrote since: back to one round trip
        self._last = stored
        return stored

    def _write(self, text: str, etag: str | None) -> bool:
        """Compare-and-swap ``text`` over the version ``etag``; remember what was written."""
        new_etag = self._backend.write(text, etag)
        if new_etag is None:
            return False
        self._last = StoredLog(text, new_etag) if new_etag else None
        return True

    def _decode(self, stored: StoredLog | None) -> list[int]:
        if stored is None:
            return []
        try:
            return _log.decode(stored.text)
        except ValueError as exc:
            # Never guess: resetting a damaged log could admit twice the limit. Nor remember
            # it: the next decision reads the log again (an administrator may have fixed it).
            self._last = None
            raise QuotaStoreError(
                f"quota log of connection {self.connection} is not a valid log ({exc}); "
                "delete the entity to start afresh",
                lasting=True,
            ) from exc

    def _count(
        self,
        *,
        grants: int = 0,
        denials: int = 0,
        contended_denials: int = 0,
        late_grants: int = 0,
        cas_conflicts: int = 0,
        fast_grants: int = 0,
        stale_cache: int = 0,
    ) -> None:
        if grants or denials:
            telemetry.count_quota(granted=grants, refused=denials, connection=self.name)
        with self._stats_lock:
            s = self._stats
            self._stats = QuotaStats(
                s.grants + grants,
                s.denials + denials,
                s.contended_denials + contended_denials,
                s.late_grants + late_grants,
                s.cas_conflicts + cas_conflicts,
                s.fast_grants + fast_grants,
                s.stale_cache + stale_cache,
            )


class AttemptGate:
    """A SmartDialog client's quota hooks: each attempt holds its own grant, fresh when it leaves.

    ``before_attempt`` (call the gate; the client calls it after the attempt's token is in
    hand): the attempt's grant is the one the caller took for it (:meth:`hold`: the queue
    sender takes its own), else one taken now, waiting up to ``wait`` seconds
    (:meth:`QuotaStore.acquire`: :class:`QuotaExceeded` stops the call). So every attempt, the
    client's re-try after a token refresh included, holds its own slot.

    ``before_send``: right before the attempt's bytes leave (the client calls it from its httpx
    request hook, and again from httpcore's trace once the connection is ready, right before
    the headers are written) the grant must still be fresh (:meth:`QuotaStore.is_fresh`): the
    LATE rule bounds only the time until the store returns a grant, and the margin must cover
    everything up to the call reaching upstream; a slow connect or pool wait would otherwise let
    upstream see ``calls + 1`` in a period. A stale grant is never used: with ``renew`` (the sync
    actions) one new grant is taken there, within what is left of ``wait`` since the attempt
    began; a stale grant without ``renew`` (the queue sender, which takes its next grant itself
    after checking its claim), or a second one in an attempt, raises :class:`StaleGrant`.
    """

    def __init__(
        self,
        quota: QuotaStore,
        wait: float = 0.0,
        *,
        renew: bool = False,
        clock: Clock | None = None,
    ) -> None:
        self._quota = quota
        self._wait = wait
        self._renew = renew
        self._clock: Clock = clock or SystemClock()  # the store's: it stamps the grants
        self._local = threading.local()

    def hold(self, grant: QuotaGrant) -> None:
        """Use ``grant`` for this thread's next attempt."""
        self._local.held = grant

    def __call__(self) -> None:
        local = self._local
        try:  # no longer than the caller's deadline (an action's 120 s for all its calls) lasts
            wait = left(self._wait, TimeoutError) or 0.0
        except TimeoutError:
            wait = 0.0
        local.ends, local.renewed = self._clock.now() + wait, False
        held, local.held = getattr(local, "held", None), None
        local.grant = held or self._quota.acquire(wait)

    def before_send(self) -> None:
        local = self._local
        grant = getattr(local, "grant", None)
        if grant is None or self._quota.is_fresh(grant):
            return
        if self._renew and not local.renewed:
            local.renewed = True
            logger.info("quota grant of connection %s went stale before its request left; "
                        "taking a new one", self._quota.connection)  # fmt: skip
            local.grant = grant = self._quota.acquire(max(0.0, local.ends - self._clock.now()))
            if self._quota.is_fresh(grant):
                return
        raise StaleGrant(self._quota.grant_age(grant))

    def clear(self) -> None:
        """Forget this thread's grants (after a call, whatever its outcome)."""
        self._local.held = self._local.grant = None


class _MemoryLog:
    """A log in this process's memory, with a version counter as its etag."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._text: str | None = None
        self._version = 0

    def read(self) -> StoredLog | None:
        with self._lock:
            return None if self._text is None else StoredLog(self._text, str(self._version))

    def write(self, text: str, etag: str | None) -> str | None:
        with self._lock:
            current = None if self._text is None else str(self._version)
            if etag != current:
                return None
            self._text = text
            self._version += 1
            return str(self._version)


class InMemoryQuotaStore(QuotaStore):
    """The same quota, kept in this process only: for tests of other components.

    Same semantics and thread safety as the Table store, but nothing is shared
    between processes, so production never uses it.
    """

    def __init__(
        self,
        *,
        calls: int,
        period: float,
        margin: float = 0.0,
        clock: Clock | None = None,
        connection: str = "in-memory",
    ) -> None:
        super().__init__(
            _MemoryLog(),
            connection=connection,
            calls=calls,
            period=period,
            margin=margin,
            clock=clock,
        )


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))
