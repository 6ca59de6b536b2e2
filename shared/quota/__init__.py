"""The exact, cluster-wide SmartDialog call quota.

SmartDialog allows ``SMARTDIALOG_QUOTA_CALLS`` (100) calls per
``SMARTDIALOG_QUOTA_PERIOD_SECONDS`` (60) per connection. Every upstream attempt,
sync or queued, retries included, takes a slot here first, and no sliding window of
the period ever holds more grants than the limit, however many instances, processes
and threads ask at once.

Using it::

    store = quota.from_settings()
    result = store.try_acquire()           # the queue sender: never waits
    if isinstance(result, quota.QuotaDenied):
        requeue(visibility_timeout=result.retry_after_whole_seconds)

    store.acquire(settings.quota_wait_seconds)   # sync actions: wait a bounded time,
    # ... or raise QuotaExceeded -> 429 with Retry-After: exc.retry_after_whole_seconds

    gate = store.gate(settings.quota_wait_seconds, renew=True)   # every attempt its own slot,
    client = SmartDialogClient(..., before_attempt=gate, before_send=gate.before_send)  # fresh

How it works
    One Table entity per connection (table ``SmartDialogQuota``, PartitionKey from
    :func:`connection_key`, RowKey ``sliding-log``) holds the times of the recent grants:
    a sliding log, pruned to the window on every write. To take a slot an instance
    takes the log, reads its clock, drops grants older than the window, and if fewer
    than the limit remain, appends ``now`` and writes the entity back only if its ETag
    is unchanged (create for the first grant). A lost race (412, or 409 on create)
    means re-read and decide again, after a short random pause. The grant is recorded
    before the caller may call upstream, so every call is in the log.

    Where the log comes from (the fast path): each store keeps in memory the last
    version of the log it wrote or read, the text together with its ETag (a write's own
    response carries the new ETag). The first round of an acquisition decides on that
    version and writes straight away: one storage round trip when no other instance
    wrote since, which is the usual case of one busy instance. If another did, the
    ETag no longer matches, the write is refused (412/409) and nothing was recorded;
    the acquisition continues the ordinary way (read, decide, write), without a pause
    for that first refusal. After such a refusal the store reads first, as without
    the cache, until a read shows the log unchanged since its last write. A log that
    memory says is full is never refused on: the store reads and decides on storage.

Why it is exact
    The writes are serialised by the ETag, so each grant was decided on the complete
    log left by every grant before it: a compare-and-swap succeeds only if the stored
    log is still exactly the version the decision used, and the text and ETag of that
    version are kept together, whether they came from a read or from the store's own
    previous write. A stale version in memory cannot mislead a decision; it only costs
    a refused write. Take any ``calls + 1`` grants and let ``k`` be the last one
    written. When ``k`` was decided fewer than ``calls`` grants were in its window, so
    some earlier grant ``j`` of the set was either in the log with ``t_j <= now_k - W``,
    or had been pruned by an earlier writer whose clock already read ``>= t_j + W``;
    because ``now_k`` is read after the version ``k`` decided on existed (it was read,
    or written by this store, before the clock is read), it is later than that
    writer's decision. Either way ``k`` was decided at least ``W`` after ``j``, where
    ``W = period + margin`` is the window decisions use. So no two of any
    ``calls + 1`` grants are closer than ``W``: no window of ``W`` (hence none of the
    period) contains more than ``calls`` of them. Rounding to milliseconds always
    rounds towards fewer grants. A fixed-window counter has no such property: it
    admits twice the limit across a window boundary.

What the margin is for (``SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS``, default 0.25)
    The proof above is about the instances' clock readings. Real calls reach
    SmartDialog later than their grant, and instances' clocks disagree a little. With
    ``skew`` the largest disagreement between two instances' clocks and ``delay`` the
    longest time from a grant's decision to its call arriving upstream (write
    round-trip plus request send), the upstream sees no more than ``calls`` calls in
    any window of the period as long as ``margin >= skew + delay``. The store spends half
    the margin (``LATE_GRANT_SHARE``) on the time to the request leaving: a grant that
    comes back later than that after it was decided (slow storage, a starved thread) is
    not handed out: it is taken out of the log again (a grant that never becomes a call
    need not count) and answered as :class:`QuotaDenied` with reason ``LATE`` and a tiny
    ``retry_after``; one older than that when its request is about to leave
    (``is_fresh``, which every client's :class:`AttemptGate` checks) is not used. The other
    half is for the request's way upstream and the clock skew; size the margin for them.
    Azure hosts keep their clocks within tens of milliseconds and a Table write takes
    a few tens, so 0.25 s is comfortable; the price is throughput: at most ``calls``
    per ``period + margin`` in a sustained run (99.6 % of the quota at 60 s + 0.25 s,
    89 % at a compressed 2 s + 0.25 s). A margin of 0 trusts every clock and
    every delay to be zero and switches the late check off.

Contention
    The compare-and-swap is lock-free: in every round at least one writer succeeds, so
    the log always advances. A single caller that keeps losing backs off with full
    jitter (5 ms doubling to 100 ms) and after ``CAS_MAX_ATTEMPTS`` (8) lost rounds
    after reading (a refused fast-path write does not count)
    answers :class:`QuotaDenied` with reason ``CONTENDED`` and a short ``retry_after``
    (50-250 ms) instead of spinning. A denial for a full or busy log writes nothing.

Failures err towards fewer calls
    A write that failed after it was applied, or a late grant that could not be
    withdrawn, leaves an unused grant in the log (a wasted slot);
    a storage error raises :class:`QuotaStoreError` and the call is not made; a damaged
    log raises instead of being reset. Nothing here hands a slot back.

Entity format
    ``Grants`` is the sorted grant times in integer milliseconds, the first absolute
    and each next as the difference to the previous: ``"1764255600123,0,17,250"``.
    A full log of 100 grants is a few hundred characters; ``MAX_CALLS`` (2000) keeps
    it far below the Table limit of 32K characters per property.

Exceptions::

    QuotaError
     +-- QuotaExceeded       no slot within the caller's timeout (retry_after)
     +-- QuotaStoreError     the log could not be read or written
     +-- StaleGrant          a grant too old to use when its request was about to leave

Importing this package loads no Azure SDK; ``azure.data.tables`` is imported on
first use of a :class:`TableQuotaStore`.
"""

from __future__ import annotations

from shared.clock import Clock, SystemClock
from shared.quota._store import (
    CAS_MAX_ATTEMPTS,
    MAX_CALLS,
    AttemptGate,
    DenialReason,
    InMemoryQuotaStore,
    QuotaDenied,
    QuotaError,
    QuotaExceeded,
    QuotaGrant,
    QuotaStats,
    QuotaStore,
    QuotaStoreError,
    StaleGrant,
)
from shared.quota._table import (
    GRANTS_PROPERTY,
    ROW_KEY,
    TableQuotaStore,
    connection_key,
    from_settings,
)

__all__ = [
    "CAS_MAX_ATTEMPTS",
    "GRANTS_PROPERTY",
    "MAX_CALLS",
    "ROW_KEY",
    "AttemptGate",
    "Clock",
    "DenialReason",
    "InMemoryQuotaStore",
    "QuotaDenied",
    "QuotaError",
    "QuotaExceeded",
    "QuotaGrant",
    "QuotaStats",
    "QuotaStore",
    "QuotaStoreError",
    "StaleGrant",
    "SystemClock",
    "TableQuotaStore",
    "connection_key",
    "from_settings",
]
