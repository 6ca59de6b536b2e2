"""The queue sender: one outbound queue message in, at most one upstream send out.

:meth:`OutboundSender.process` never raises for anything a message or upstream can cause; it
raises only when our own storage fails (then the host retries the message and, after
``maxDequeueCount``, moves it to ``smartdialog-outbound-poison``). Waiting is always done by the
queue, never in the invocation: the upstream client runs with ``max_retries=0`` and every retry
is a re-enqueued copy of the message with a visibility delay.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from pydantic import BaseModel, ValidationError

from shared.events import MESSAGE_FAILED, MESSAGE_SENT, make_event
from shared.messages import (
    FailureInfo,
    MessageRecord,
    MessageStatus,
    MessageStore,
    Pack,
    PackMember,
    PackStore,
    new_pack_id,
)
from shared.names import OUTBOUND_DEAD_LETTER_QUEUE, OUTBOUND_QUEUE
from shared.outbound._models import (
    DeadLetter,
    DeadLetterReason,
    MessageFailedData,
    MessageSentData,
    OutboundMessage,
    OutboundMessageAdapter,
    PackDriver,
    RecipientOutcome,
    SendDiscussionReplyMessageCommand,
    SendMessageCommand,
    SendReplyMessageCommand,
    SendWhatsappTemplateMessageCommand,
    derive_message_id,
    parse_outbound_message,
    request_fingerprint,
)
from shared.outbound._records import command_addresses, new_record, normalize, recipient_slots
from shared.smartdialog import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    CredentialsError,
    DuplicateRequestError,
    InternalServerError,
    RateLimitError,
    SmartDialogClient,
)

if TYPE_CHECKING:
    from shared.quota import QuotaDenied, QuotaGrant
    from shared.settings import Settings
    from shared.suppressions import SuppressionStore

__all__ = ["OutboundSender", "OutcomeKind", "SendOutcome", "reset_sender_cache"]

log = logging.getLogger("shared.outbound.sender")

#: Random spread added to a quota deferral (seconds). Zero: the quota's ``retry_after`` is when
#: the next slot frees, and queue visibility is whole seconds anyway, so messages deferred
#: together come back together and compete for the slots then free (nothing is lost by that).
DEFERRAL_SPREAD_SECONDS = 0.0
#: A copy that arrives this little before its record's ``next_attempt_at`` goes on (queue
#: visibility and our clock need not agree to the millisecond); an earlier one is deferred.
BACKOFF_TOLERANCE_SECONDS = 0.5
#: A message whose quota grant went stale twice before its call comes back this soon.
STALE_GRANT_RETRY_SECONDS = 1.0
#: Random extra of an in-process quota wait, so waiting workers do not all retry at once.
QUOTA_WAIT_JITTER = 0.02
#: Queue visibility is capped at 7 days by the service.
MAX_VISIBILITY_SECONDS = 7 * 24 * 3600
# Failures that prove the request never reached upstream (safe to repeat without RequestId).
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: A copy of a message that a pack holds comes back this soon (not when the lease ends): the
#: pack's call is usually over by then, and the copy is acknowledged.
PACK_MEMBER_RECHECK_SECONDS = 10.0
#: Storage round trips of one pack (claims, records) run on this many threads.
PACK_STORAGE_THREADS = 16
#: How upstream names the recipient that made it refuse a whole send (the sandbox's wording).
_REJECTED_RECIPIENT = re.compile(r"recipient rejected:\s*(\S+)", re.IGNORECASE)
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _storage_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(PACK_STORAGE_THREADS, thread_name_prefix="pack-storage")
        return _pool


class OutcomeKind(enum.StrEnum):
    """What one invocation did with its queue message."""

    SENT = "sent"
    FAILED = "failed"
    DEFERRED = "deferred"  # over quota or claimed by another worker: re-enqueued, no attempt
    RETRY_SCHEDULED = "retry-scheduled"  # an attempt failed transiently: re-enqueued
    ACKNOWLEDGED = "acknowledged"  # already final (sent, failed, cancelled): nothing sent
    DEAD_LETTERED = "dead-lettered"  # malformed: never processed


@dataclass(frozen=True)
class SendOutcome:
    """The result of :meth:`OutboundSender.process` (for logs, tests and the benchmark)."""

    kind: OutcomeKind
    message_id: str | None = None
    delay_seconds: int | None = None
    detail: str | None = None


class QuotaPort(Protocol):
    """What the sender needs of :mod:`shared.quota`."""

    def try_acquire(self) -> QuotaGrant | QuotaDenied: ...

    def grant_age(self, grant: QuotaGrant) -> float: ...

    def is_fresh(self, grant: QuotaGrant) -> bool: ...


class QueuePort(Protocol):
    """What the sender needs of a queue client (``azure.storage.queue.QueueClient``)."""

    def send_message(self, content: Any, **kwargs: Any) -> Any: ...


class _QuotaDeniedInAttempt(Exception):
    """A second attempt inside one client call (the 401 refresh) found the quota full."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"quota full for a repeated attempt; retry in {retry_after:.2f} s")
        self.retry_after = retry_after


class _StaleGrant(Exception):
    """The quota grant of an attempt was older than the safety margin when its request was
    about to leave: nothing was sent. Not a failed attempt: a quota deferral."""

    def __init__(self, age: float) -> None:
        super().__init__(f"quota grant {age * 1000:.0f} ms old when the request was to leave")
        self.age = age


class _AttemptGate:
    """The client's quota hooks.

    ``before_attempt`` (``__call__``): the first attempt of a send uses the grant the sender
    already took; any further attempt (the client's one re-try after a token refresh) must
    take its own, or the call stops. So every upstream attempt holds a quota slot.

    ``before_send``: right before the attempt's bytes leave (the client calls it from its
    httpx request hook, and again from httpcore's trace once the connection is ready, right
    before the headers are written), the attempt's grant must still be fresh: the quota's LATE
    rule bounds only the time from a grant's decision until the store returns it, and the
    margin must cover everything up to the call reaching upstream (building the DLR URL, pack
    bookkeeping, token, request building, a starved thread under CPU load). A grant older
    than the margin raises :class:`_StaleGrant`, so no request goes out with it.
    """

    def __init__(self, quota: QuotaPort) -> None:
        self._quota = quota
        self._local = threading.local()

    def hold(self, grant: QuotaGrant) -> None:
        self._local.held = grant

    def __call__(self) -> None:
        held = getattr(self._local, "held", None)
        if held is not None:
            self._local.held = None
            self._local.grant = held
            return
        from shared.quota import QuotaDenied

        result = self._quota.try_acquire()
        if isinstance(result, QuotaDenied):
            raise _QuotaDeniedInAttempt(result.retry_after)
        self._local.grant = result

    def before_send(self) -> None:
        grant = getattr(self._local, "grant", None)
        if grant is not None and not self._quota.is_fresh(grant):
            raise _StaleGrant(self._quota.grant_age(grant))

    def clear(self) -> None:
        """Forget this thread's grants (after a call, whatever its outcome)."""
        self._local.held = None
        self._local.grant = None


@dataclass(frozen=True)
class _Policy:
    max_attempts: int
    validity: dt.timedelta
    retry_base: float
    retry_max: float
    lease: dt.timedelta
    quota_wait: float
    #: The longest an upstream call may still take once it starts (the send timeout plus the
    #: lease margin for clock skew): a claim must have this much left when the call starts.
    call_seconds: float
    customer_id: str | None
    service_id: str | None
    pack_max_recipients: int
    #: The settings the policy was read from: our DLR URL (public base URL, callback secrets)
    #: is built from them for every upstream call.
    settings: Settings = field(compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> _Policy:
        return cls(
            max_attempts=settings.send_max_attempts,
            validity=dt.timedelta(seconds=settings.send_validity_seconds),
            retry_base=settings.send_retry_base_seconds,
            retry_max=settings.send_retry_max_seconds,
            lease=dt.timedelta(seconds=settings.send_lease_seconds),
            quota_wait=settings.send_quota_wait_seconds,
            call_seconds=settings.send_timeout_seconds + settings.send_lease_margin_seconds,
            customer_id=settings.customer_id,
            service_id=settings.service_id,
            pack_max_recipients=settings.pack_max_recipients,
            settings=settings,
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _whole_seconds(seconds: float) -> int:
    return min(MAX_VISIBILITY_SECONDS, max(0, math.ceil(seconds)))


class OutboundSender:
    """Processes outbound queue messages: quota, claim, upstream call, record, events.

    Build it with :meth:`from_settings` (cached per settings object, so the HTTP connection
    pool and the quota store are reused across invocations and threads).
    """

    def __init__(
        self,
        *,
        store: MessageStore,
        quota: QuotaPort,
        client: SmartDialogClient,
        gate: _AttemptGate,
        outbound: QueuePort,
        dead_letters: QueuePort,
        events: QueuePort,
        policy: _Policy,
        suppressions: SuppressionStore | None = None,
        packs: PackStore | None = None,
        clock: Callable[[], dt.datetime] = _now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.packs = packs
        self._suppressions = suppressions
        self.quota = quota
        self.client = client
        self._gate = gate
        self._outbound = outbound
        self._dead_letters = dead_letters
        self._events = events
        self.policy = policy
        self._clock = clock
        self._sleep = sleep
        self._hint_lock = threading.Lock()
        self._quota_full_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> OutboundSender:
        from shared.settings import get_settings

        return _sender_for(settings or get_settings())

    # --- entry point -----------------------------------------------------------------------------

    def process(
        self, text: str, *, queue_message_id: str | None = None, dequeue_count: int | None = None
    ) -> SendOutcome:
        """Handle one queue message; see the module docstring for what may raise."""
        driver = PackDriver.parse(text)
        if driver is not None:  # a bulk send's pack (shared.outbound._drive)
            from shared.outbound._drive import drive_pack

            return drive_pack(
                self,
                driver,
                text=text,
                queue_message_id=queue_message_id,
                dequeue_count=dequeue_count,
            )
        try:
            command = parse_outbound_message(text)
            command = normalize(
                command,
                message_id=self._message_id(command, queue_message_id),
                customer_id=self.policy.customer_id,
                service_id=self.policy.service_id,
            )
        except (ValidationError, ValueError) as exc:
            return self._dead_letter_malformed(text, exc, queue_message_id, dequeue_count)
        assert command.messageId is not None
        wait = self._quota_hint()
        if wait > self.policy.quota_wait:
            # This process was just told the quota is full until then: defer without touching
            # storage (a hint can only defer a call, never admit one). A queue-only message
            # seen for the first time is recorded and indexed first, so the next invocation
            # that gets a slot packs it with the others waiting (the quota is the window).
            if command.deferrals == 0:
                self._park(command)
            return self._requeue(command, command.attempts, wait, OutcomeKind.DEFERRED, "quota")
        if wait > 0:
            # Queue visibility has whole-second steps; a shorter wait is cheaper done here.
            self._sleep(wait)
        record = self.store.get(command.messageId)
        if record is None:
            # First seen here: put on the queue directly, not through a send action (which
            # records the message after refusing opted-out recipients), so check them now.
            refusal = self._suppression(command)
            if refusal is not None:
                refused = self._refuse(command, refusal)
                if refused is not None:
                    return refused
            else:
                claimed = self._create_claimed(command)
                if claimed is not None:
                    return self._take_slot_and_send(claimed, command, before=MessageStatus.QUEUED)
            # A record appeared meanwhile (another copy, or another message with this id).
            record = self.store.get(command.messageId)
            if record is None:
                raise RuntimeError(f"message {command.messageId} could not be recorded")
        if record.fingerprint and record.fingerprint != request_fingerprint(command):
            return self._dead_letter_malformed(
                text,
                ValueError(f"messageId {command.messageId} is already used by a different message"),
                queue_message_id,
                dequeue_count,
            )
        return self._advance(record, command)

    # --- the state machine -----------------------------------------------------------------------

    def _advance(self, record: MessageRecord, command: OutboundMessage) -> SendOutcome:
        if record.batch_id is not None and record.pack_id is not None:
            # A bulk member's own command (it has no queue message of its own; someone put it
            # there by hand): only its pack's driver sends it, so the driver is what goes on.
            if not record.status.is_final:
                driver = PackDriver(packId=record.pack_id, batchId=record.batch_id)
                self._outbound.send_message(driver.model_dump_json())
            return SendOutcome(OutcomeKind.ACKNOWLEDGED, record.message_id, detail="bulk-member")
        for _ in range(5):  # each round re-reads after a lost compare-and-swap
            now = self._clock()
            if record.status.is_final:
                self._announce(record)
                return SendOutcome(OutcomeKind.ACKNOWLEDGED, record.message_id)
            lease = record.lease_until
            if record.status is MessageStatus.SENDING and lease is not None and lease > now:
                # Another worker holds the claim (a duplicate queue message): come back when
                # its lease ends; if it finished by then, this copy is simply acknowledged.
                delay = (lease - now).total_seconds() + 1
                if record.pack_id is not None:
                    delay = min(delay, PACK_MEMBER_RECHECK_SECONDS)
                return self._requeue(
                    command, record.attempts, delay, OutcomeKind.DEFERRED, "claimed"
                )
            if (
                record.next_attempt_at is not None
                and (record.next_attempt_at - now).total_seconds() > BACKOFF_TOLERANCE_SECONDS
            ):
                # A copy that arrived before the record's backoff ended (a duplicate of the
                # queue message, e.g. after a crash between re-enqueue and acknowledgement):
                # it waits out the backoff too, or retries would come early.
                delay = (record.next_attempt_at - now).total_seconds()
                return self._requeue(
                    command, record.attempts, delay, OutcomeKind.DEFERRED, "backoff"
                )
            if record.status is MessageStatus.SENDING and not record.operation.carries_request_id:
                # The previous attempt died mid-call; without a RequestId a repeat could send
                # twice, so we stop here (at most once).
                return self._fail(
                    record,
                    FailureInfo(
                        code="outcome-unknown",
                        title="An earlier attempt may have been sent",
                        detail=(
                            f"{record.operation} carries no RequestId, and an attempt was "
                            "interrupted before its outcome was recorded; it is not repeated."
                        ),
                        attempts=record.attempts,
                    ),
                )
            if now >= record.valid_until:
                return self._fail(record, self._expired(record))
            if record.pack_id is not None:
                waiting, record = self._pack_turn(record, command, now)
                if waiting is not None:
                    return waiting
            claimed = self.store.swap(
                record,
                status=MessageStatus.SENDING,
                attempts=record.attempts + 1,
                lease_until=now + self.policy.lease,
                next_attempt_at=None,
                updated_at=now,
            )
            if claimed is None:
                reread = self.store.get(record.message_id)
                if reread is None:
                    raise RuntimeError(f"message {record.message_id} vanished while claiming")
                record = reread
                continue
            return self._take_slot_and_send(claimed, command, before=record.status)
        raise RuntimeError(f"message {record.message_id}: record kept changing under the sender")

    def _take_slot_and_send(
        self, claimed: MessageRecord, command: OutboundMessage, *, before: MessageStatus
    ) -> SendOutcome:
        """With the message claimed, take a quota slot and call upstream, or hand it back.

        Before the slot is taken, the message gathers the members of its pack: other queued
        messages with its pack key (a new pack), or the members of the pack it already belongs
        to (a retry). The pack is recorded before the slot is taken, and the slot right before
        the call (the time between grant and call must stay within the quota's safety margin).
        """
        if claimed.recipient_count >= 99:  # slots past the first transaction (idempotent)
            self.store.ensure_slots(recipient_slots(command, now=claimed.created_at))
        pack: Pack | None = None
        members: list[tuple[MessageRecord, OutboundMessage]] = []
        fresh = claimed.pack_id is None
        if claimed.pack_id is not None:
            pack, members = self._regather(claimed, command)
        elif claimed.pack_key is not None and claimed.attempts == 1:
            pack, members = self._gather(claimed, command)
        if members:
            claimed = members[0][0]
        from shared.quota import QuotaDenied

        decision, waited = self._await_slot(0.0)
        for retry_stale in (True, False):  # a grant gone stale gets one more try here
            if isinstance(decision, QuotaDenied):
                delay = decision.retry_after + random.uniform(0, DEFERRAL_SPREAD_SECONDS)
                return self._hand_back(
                    claimed, command, before, pack, members, fresh, delay, "quota"
                )
            if self._claim_too_short(claimed, members):
                # The claim (a lease) must outlast the call, or a re-delivered copy could take
                # it over while the call is in flight; the settings make the lease longer than
                # an attempt, so only a very slow gather or quota wait gets here.
                log.warning("message %s: claim too close to its end to call; deferred",
                            claimed.message_id)  # fmt: skip
                return self._hand_back(claimed, command, before, pack, members, fresh, 0, "lease")
            try:
                if pack is not None and members:
                    # Also a retried pack of one (its other members final): it is sent as that
                    # pack, so its RequestId stays the one of the ambiguous attempt.
                    return self._attempt_pack(pack, members, decision)
                return self._attempt(claimed, command, decision)
            except _StaleGrant as exc:
                # Nothing was sent: the request was stopped before it left. Not an attempt;
                # the unused grant stays in the log (a wasted slot errs towards fewer calls).
                log.warning("message %s: %s; not sent with it", claimed.message_id, exc)
                if retry_stale:
                    decision, waited = self._await_slot(waited)
        return self._hand_back(
            claimed, command, before, pack, members, fresh, STALE_GRANT_RETRY_SECONDS, "stale-grant"
        )

    def _hand_back(
        self,
        claimed: MessageRecord,
        command: OutboundMessage,
        before: MessageStatus,
        pack: Pack | None,
        members: list[tuple[MessageRecord, OutboundMessage]],
        fresh: bool,
        delay: float,
        reason: str,
    ) -> SendOutcome:
        """No call was made: hand the claim (and a pack's members) back, the attempt not
        counted, and put the message back on the queue after ``delay`` (a deferral)."""
        if pack is not None and members:
            # Hand every member back; a new pack is dissolved (its members stay packable and
            # wait in the index for the next invocation that gets a slot), a pack that was
            # already attempted keeps its membership.
            keep = not fresh
            self._release([m for m, _ in members[1:]], keep_pack=keep)
            released = self._release_one(claimed, before, keep_pack=keep)
        else:
            released = self.store.swap(
                claimed,
                status=before,
                attempts=claimed.attempts - 1,
                lease_until=None,
                updated_at=self._clock(),
            )
        if self.packs is not None and released is not None and released.pack_id is None:
            self.packs.index([released])
        return self._requeue(command, claimed.attempts - 1, delay, OutcomeKind.DEFERRED, reason)

    def _claim_too_short(
        self, claimed: MessageRecord, members: list[tuple[MessageRecord, OutboundMessage]]
    ) -> bool:
        """Whether a claim of this call ends before a whole upstream call (its timeout plus
        the lease margin for clock skew) could be over. Another worker takes a claim over
        only once its lease has ended, so a claim that outlasts the call is still ours
        throughout it: no storage read needed to know."""
        now = self._clock()
        needed = dt.timedelta(seconds=self.policy.call_seconds)
        leases = [claimed.lease_until, *(m.lease_until for m, _ in members)]
        return any(lease is None or lease - now < needed for lease in leases)

    # --- packs -------------------------------------------------------------------------------

    def _pack_turn(
        self, record: MessageRecord, command: OutboundMessage, now: dt.datetime
    ) -> tuple[SendOutcome | None, MessageRecord]:
        """For a message that belongs to a pack: whether this copy may retry the pack now.

        Only the pack's first member that is not final retries it (the others' copies wait and
        are acknowledged once it is sent), and not before the pack's backoff ends. A pack that
        was never recorded never reached upstream: the message leaves it and goes on alone.
        """
        assert record.pack_id is not None
        pack = self.packs.get(record.pack_id) if self.packs is not None else None
        if pack is None:
            left = self.store.swap(record, pack_id=None, updated_at=now)
            return None, left or (self.store.get(record.message_id) or record)
        if record.next_attempt_at is not None and record.next_attempt_at > now:
            delay = (record.next_attempt_at - now).total_seconds()
            return self._requeue(
                command, record.attempts, delay, OutcomeKind.DEFERRED, "pack-backoff"
            ), record
        for member in pack.members:
            if member.message_id == record.message_id:
                return None, record
            other = self.store.get(member.message_id)
            if other is not None and not other.status.is_final and other.pack_id == pack.pack_id:
                return self._requeue(
                    command,
                    record.attempts,
                    PACK_MEMBER_RECHECK_SECONDS,
                    OutcomeKind.DEFERRED,
                    "pack-member",
                ), record
        return None, record

    def _park(self, command: OutboundMessage) -> None:
        """Record a packable queue-only message as queued and index it (nothing if it is
        recorded already, or must be refused: the ordinary path deals with those)."""
        assert command.messageId is not None
        if self.packs is None or self.store.get(command.messageId) is not None:
            return
        if self._suppression(command) is not None:
            return
        record, slots = new_record(
            command, now=self._clock(), validity=self.policy.validity, status=MessageStatus.QUEUED
        )
        if record.pack_key is None:
            return
        created = self.store.create(record, slots)
        if created is not None:
            self.packs.index([created])

    def _gather(
        self, leader: MessageRecord, command: OutboundMessage
    ) -> tuple[Pack | None, list[tuple[MessageRecord, OutboundMessage]]]:
        """Claim other queued messages with the leader's pack key into a new pack, recorded
        before the call; (None, []) when there are none (the leader goes alone)."""
        packs = self.packs
        key = leader.pack_key
        if packs is None or key is None:
            return None, []
        limit = self.policy.pack_max_recipients
        from shared.messages import index_row_key

        own_row = index_row_key(leader)
        rows = packs.candidates(key, limit=limit + 64)
        taken = leader.recipient_count
        picked: list[tuple[str, str]] = []
        for row_key, message_id, count in rows:
            if message_id == leader.message_id:
                continue
            if taken + count > limit:
                continue
            picked.append((row_key, message_id))
            taken += count
        if not picked or leader.recipient_count >= limit:
            packs.unindex(key, [own_row])
            return None, []
        now = self._clock()
        pack_id = new_pack_id(key, [leader.message_id, *(m for _, m in picked)], now)
        addresses = set(command_addresses(command))
        lease_until = now + self.policy.lease
        pool = _storage_pool()
        found = list(pool.map(lambda item: self.store.get(item[1]), picked))
        stale: list[str] = [own_row]
        chosen: list[tuple[str, MessageRecord, OutboundMessage]] = []
        for (row_key, _), record in zip(picked, found, strict=True):
            if record is None:
                continue
            if record.status.is_final or record.pack_key != key or record.pack_id is not None:
                stale.append(row_key)
                continue
            if (
                record.status not in (MessageStatus.ACCEPTED, MessageStatus.QUEUED)
                or record.attempts != 0
                or now >= record.valid_until
                or (record.next_attempt_at is not None and record.next_attempt_at > now)
            ):
                continue
            try:
                member_command = parse_outbound_message(record.command)
            except (ValidationError, ValueError):
                continue
            member_addresses = command_addresses(member_command)
            if addresses.intersection(member_addresses):
                continue  # one address twice in a call: it waits for the next pack
            addresses.update(member_addresses)
            chosen.append((row_key, record, member_command))

        def claim(item: tuple[str, MessageRecord, OutboundMessage]) -> MessageRecord | None:
            return self.store.swap(
                item[1],
                status=MessageStatus.SENDING,
                attempts=1,
                lease_until=lease_until,
                next_attempt_at=None,
                pack_id=pack_id,
                updated_at=now,
            )

        claims = list(pool.map(claim, chosen))
        members: list[tuple[MessageRecord, OutboundMessage]] = []
        for (row_key, _, member_command), done in zip(chosen, claims, strict=True):
            if done is not None:
                members.append((done, member_command))
                stale.append(row_key)
        packs.unindex(key, stale)
        if not members:
            return None, []
        pack = Pack(
            pack_id=pack_id,
            key=key,
            members=(
                PackMember(leader.message_id, tuple(command_addresses(command))),
                *(PackMember(r.message_id, tuple(command_addresses(c))) for r, c in members),
            ),
            created_at=now,
        )
        packs.save(pack)  # the membership, before the leader (and so the call) names it
        led = self.store.swap(leader, pack_id=pack_id, updated_at=now)
        if led is None:  # the leader's claim was taken over meanwhile: hand the members back
            self._release([m for m, _ in members], keep_pack=False)
            raise RuntimeError(f"message {leader.message_id}: claim lost while forming a pack")
        log.info("message %s leads pack %s of %d messages", leader.message_id, pack_id,
                 len(members) + 1)  # fmt: skip
        return pack, [(led, command), *members]

    def _regather(
        self, leader: MessageRecord, command: OutboundMessage
    ) -> tuple[Pack | None, list[tuple[MessageRecord, OutboundMessage]]]:
        """Claim the members of the leader's recorded pack again (a retry: same membership,
        same RequestId); members that are final meanwhile stay out, expired ones fail."""
        assert leader.pack_id is not None
        pack = self.packs.get(leader.pack_id) if self.packs is not None else None
        if pack is None:
            return None, []
        now = self._clock()
        lease_until = now + self.policy.lease
        others = [m.message_id for m in pack.members if m.message_id != leader.message_id]
        pool = _storage_pool()

        def claim(message_id: str) -> tuple[MessageRecord, OutboundMessage] | None:
            record = self.store.get(message_id)
            if record is None or record.pack_id != pack.pack_id or record.status.is_final:
                return None
            lease = record.lease_until
            if record.status is MessageStatus.SENDING and lease is not None and lease > now:
                return None  # held by someone else (a stale worker): not ours to send
            if now >= record.valid_until:
                self._fail(record, self._expired(record))
                return None
            done = self.store.swap(
                record,
                status=MessageStatus.SENDING,
                attempts=record.attempts + 1,
                lease_until=lease_until,
                next_attempt_at=None,
                updated_at=now,
            )
            if done is None:
                return None
            return done, parse_outbound_message(done.command)

        claimed = [c for c in pool.map(claim, others) if c is not None]
        return pack, [(leader, command), *claimed]

    def _release(self, records: Iterable[MessageRecord], *, keep_pack: bool) -> None:
        """Hand claimed members back (no call was made for them): queued again, the attempt
        not counted; out of their pack (and packable again) unless ``keep_pack``."""
        released = [
            r
            for r in _storage_pool().map(
                lambda r: self._release_one(r, MessageStatus.QUEUED, keep_pack=keep_pack),
                list(records),
            )
            if r is not None
        ]
        if self.packs is not None and not keep_pack:
            self.packs.index(released)

    def _release_one(
        self,
        record: MessageRecord,
        status: MessageStatus,
        *,
        keep_pack: bool,
        **changes: Any,
    ) -> MessageRecord | None:
        update: dict[str, Any] = {
            "status": status,
            "attempts": max(0, record.attempts - 1),
            "lease_until": None,
            "updated_at": self._clock(),
            **changes,
        }
        if not keep_pack:
            update["pack_id"] = None
        return self._swap_until(record, lambda r: r.status is MessageStatus.SENDING, **update)

    def _attempt_pack(
        self, pack: Pack, members: list[tuple[MessageRecord, OutboundMessage]], grant: QuotaGrant
    ) -> SendOutcome:
        """One upstream call for the whole pack; each member's outcome recorded on its own.
        Raises :class:`_StaleGrant` (nothing sent, nothing recorded) if ``grant`` went stale."""
        _leader, command = members[0]
        try:
            result = self._call_upstream(
                _packed_command(command, [c for _, c in members], pack.request_id),
                grant=grant,
                report_id=pack.pack_id,
            )
        except DuplicateRequestError as exc:
            original = exc.original
            body = original.model_dump(mode="json", by_alias=True, exclude_none=True) if isinstance(
                original, BaseModel
            ) else None  # fmt: skip
            log.info("pack %s: RequestId already used upstream: sent", pack.pack_id)
            return self._pack_sent(pack, members, body, duplicate=True)
        except APIResponseValidationError as exc:
            body = exc.body if isinstance(exc.body, dict) else None
            return self._pack_sent(pack, members, body, duplicate=False)
        except (
            RateLimitError,
            InternalServerError,
            APIConnectionError,
            _QuotaDeniedInAttempt,
            CredentialsError,
        ) as exc:
            advised, code, title, status = _transient_failure(exc)
            return self._pack_transient(pack, members, advised, code, title, str(exc), status)
        except APIStatusError as exc:
            if exc.status_code == 408:
                return self._pack_transient(
                    pack, members, None, "upstream-unavailable", "SmartDialog timed out",
                    exc.message, exc.status_code,
                )  # fmt: skip
            return self._pack_rejected(pack, members, exc)
        return self._pack_sent(pack, members, result, duplicate=False)

    def _pack_sent(
        self,
        pack: Pack,
        members: list[tuple[MessageRecord, OutboundMessage]],
        body: dict[str, Any] | None,
        *,
        duplicate: bool,
    ) -> SendOutcome:
        """Split upstream's answer by member (by address: no address is twice in a pack) and
        record each member as sent with its own recipients; the pack keeps the recipient ids
        for delivery reports. On a duplicate whose original lacks a member (it was not in the
        first attempt that got through), that member was not sent: it is handed back."""
        body = body or {}
        camel = "Recipients" not in body and ("recipients" in body or "messageId" in body)
        raw = [r for r in (body.get("Recipients") or body.get("recipients") or []) if isinstance(
            r, dict
        )]  # fmt: skip
        wanted = {m.message_id: m.addresses for m in pack.members}
        entries: dict[str, dict[str, dict[str, Any]]] = {}
        owner_of: dict[str, str] = {}
        for member in pack.members:
            for address in member.addresses:
                owner_of[_address_key(address)] = member.message_id
        recipient_ids: dict[str, str] = dict(pack.recipient_ids)
        for entry in raw:
            address = str(entry.get("Address") or entry.get("address") or "")
            owner = owner_of.get(_address_key(address)) if address else None
            if owner is None:
                continue
            entries.setdefault(owner, {})[_address_key(address)] = entry
            rid = entry.get("Id") or entry.get("id")
            if rid:
                recipient_ids[str(rid)] = owner
        if self.packs is not None and recipient_ids != dict(pack.recipient_ids):
            self.packs.save(replace(pack, recipient_ids=recipient_ids))
        shared = {k: v for k, v in body.items() if k not in ("Recipients", "recipients")}
        field_name = "recipients" if camel else "Recipients"

        def record(item: tuple[MessageRecord, OutboundMessage]) -> SendOutcome:
            member, _ = item
            mine = entries.get(member.message_id, {})
            if raw and not mine and duplicate:
                released = self._release_one(member, MessageStatus.QUEUED, keep_pack=False)
                if released is not None and self.packs is not None:
                    self.packs.index([released])
                return SendOutcome(OutcomeKind.DEFERRED, member.message_id, detail="not-in-pack")
            ordered = [
                mine[_address_key(a)] for a in wanted.get(member.message_id, ()) if
                _address_key(a) in mine
            ]  # fmt: skip
            own = {**shared, field_name: ordered} if raw else dict(body)
            return self._sent(member, own, duplicate=duplicate)

        outcomes = list(_storage_pool().map(record, members[1:]))
        first = record(members[0])
        sent = sum(1 for o in [first, *outcomes] if o.kind is OutcomeKind.SENT)
        log.info(
            "pack %s sent: %d of %d members, %d recipients%s", pack.pack_id, sent, len(members),
            len(raw), ", duplicate RequestId" if duplicate else "",
        )  # fmt: skip
        if first.kind is OutcomeKind.DEFERRED:
            _leader, command = members[0]
            return self._requeue(command, 0, 0, OutcomeKind.DEFERRED, "not-in-pack")
        return replace(first, detail=f"pack {pack.pack_id}: {len(members)} messages")

    def _pack_transient(
        self,
        pack: Pack,
        members: list[tuple[MessageRecord, OutboundMessage]],
        advised: float | None,
        code: str,
        title: str,
        detail: str | None,
        upstream_status: int | None,
    ) -> SendOutcome:
        """A pack's call failed transiently: every member keeps the pack and backs off
        together; the leader's copy comes back to retry it (same RequestId)."""
        leader, command = members[0]
        delay = self._retry_delay(max(r.attempts for r, _ in members), advised)
        now = self._clock()
        next_at = now + dt.timedelta(seconds=delay)

        def back_off(item: tuple[MessageRecord, OutboundMessage]) -> SendOutcome:
            member, _ = item
            error = FailureInfo(
                code=code, title=title, detail=detail, upstreamStatus=upstream_status,
                attempts=member.attempts,
            )  # fmt: skip
            final = self._give_up(member, error, title, next_at)
            if final is not None:
                return self._fail(member, final)
            updated = self._swap_until(
                member,
                lambda r: r.status is MessageStatus.SENDING,
                status=MessageStatus.QUEUED,
                lease_until=None,
                next_attempt_at=next_at,
                last_error=error,
                updated_at=now,
            )
            if updated is None:
                return SendOutcome(OutcomeKind.ACKNOWLEDGED, member.message_id)
            return SendOutcome(OutcomeKind.RETRY_SCHEDULED, member.message_id)

        list(_storage_pool().map(back_off, members[1:]))
        first = back_off(members[0])
        log.warning("pack %s attempt failed (%s); retry in %.1f s", pack.pack_id, title, delay)
        if first.kind is not OutcomeKind.RETRY_SCHEDULED:
            return first
        return self._requeue(command, leader.attempts, delay, OutcomeKind.RETRY_SCHEDULED, code)

    def _pack_rejected(
        self,
        pack: Pack,
        members: list[tuple[MessageRecord, OutboundMessage]],
        exc: APIStatusError,
    ) -> SendOutcome:
        """Upstream refused the whole call (nothing was sent). The member it names fails alone
        and the others go back to the queue for a new pack (new membership, new RequestId).
        If upstream names no member, every member is sent alone from now on, so whichever is
        at fault fails alone."""
        leader, command = members[0]
        match = _REJECTED_RECIPIENT.search(exc.message or "")
        culprit = _address_key(match.group(1)) if match else None
        offenders = {
            r.message_id
            for r, c in members
            if culprit is not None and culprit in {_address_key(a) for a in command_addresses(c)}
        }
        if len(members) == 1 and not offenders:
            offenders = {leader.message_id}
        outcomes: dict[str, SendOutcome] = {}

        def settle(item: tuple[MessageRecord, OutboundMessage]) -> None:
            member, _ = item
            if member.message_id in offenders:
                outcomes[member.message_id] = self._fail(
                    member,
                    FailureInfo(
                        code="upstream-rejected",
                        title=f"SmartDialog rejected the message ({exc.status_code})",
                        detail=exc.message,
                        upstreamStatus=exc.status_code,
                        attempts=member.attempts,
                    ),
                )
                return
            changes: dict[str, Any] = {} if offenders else {"pack_key": None}
            released = self._release_one(member, MessageStatus.QUEUED, keep_pack=False, **changes)
            if released is not None and offenders and self.packs is not None:
                self.packs.index([released])

        list(_storage_pool().map(settle, members))
        log.warning(
            "pack %s refused (%d): %s; %d member(s) failed, the rest go on",
            pack.pack_id, exc.status_code, exc.message, len(offenders),
        )  # fmt: skip
        if leader.message_id in outcomes:
            return outcomes[leader.message_id]
        return self._requeue(command, 0, 0, OutcomeKind.DEFERRED, "pack-rejected")

    def _quota_hint(self) -> float:
        with self._hint_lock:
            return self._quota_full_until - time.monotonic()

    def _await_slot(self, waited: float) -> tuple[QuotaGrant | QuotaDenied, float]:
        """A quota decision, after waiting here (holding the claim) for a slot that frees
        sooner than the queue could bring the message back (whole seconds), within
        SMARTDIALOG_SEND_QUOTA_WAIT_SECONDS in all (``waited`` so far); (decision, waited). A
        denial because the quota is full is noted, so this process defers without storage."""
        from shared.quota import QuotaDenied

        decision = self.quota.try_acquire()
        while isinstance(decision, QuotaDenied) and (
            waited + decision.retry_after <= self.policy.quota_wait
        ):
            pause = decision.retry_after + random.uniform(0, QUOTA_WAIT_JITTER)
            self._sleep(pause)
            waited += pause
            decision = self.quota.try_acquire()
        if isinstance(decision, QuotaDenied) and str(getattr(decision, "reason", "full")) == "full":
            self._note_quota_full(decision.retry_after)
        return decision, waited

    def _retry_delay(self, attempts: int, advised: float | None) -> float:
        """The backoff after ``attempts`` attempts (exponential, jittered, capped), and at least
        what upstream advised."""
        backoff = min(self.policy.retry_base * 2.0 ** (attempts - 1), self.policy.retry_max)
        backoff *= random.uniform(0.75, 1.0)
        return max(advised, backoff) if advised is not None else backoff

    def _give_up(
        self, record: MessageRecord, error: FailureInfo, title: str, next_at: dt.datetime
    ) -> FailureInfo | None:
        """Why a message whose attempt failed transiently stops now (out of attempts, or a
        retry at ``next_at`` would be past its validity), or None: it retries."""
        if record.attempts >= self.policy.max_attempts:
            code = "attempts-exhausted" if error.code != "rate-limited" else error.code
            return error.model_copy(
                update={"code": code, "title": f"Gave up after {record.attempts} attempts: {title}"}
            )
        if next_at >= record.valid_until:
            return self._expired(record, last=error)
        return None

    def _note_quota_full(self, retry_after: float) -> None:
        with self._hint_lock:
            self._quota_full_until = max(self._quota_full_until, time.monotonic() + retry_after)

    def _attempt(
        self, record: MessageRecord, command: OutboundMessage, grant: QuotaGrant
    ) -> SendOutcome:
        """One upstream call with ``grant``, its outcome recorded. Raises :class:`_StaleGrant`
        (nothing sent, nothing recorded) if the grant went stale before the request left."""
        try:
            result = self._call_upstream(command, grant=grant)
        except DuplicateRequestError as exc:
            original = exc.original
            body = original.model_dump(mode="json", by_alias=True, exclude_none=True) if isinstance(
                original, BaseModel
            ) else None  # fmt: skip
            log.info("message %s: RequestId already used upstream: sent", record.message_id)
            return self._sent(record, body, duplicate=True)
        except APIResponseValidationError as exc:
            # 2xx: it was sent even though the answer is odd; keep what we got.
            body = exc.body if isinstance(exc.body, dict) else None
            return self._sent(record, body, duplicate=False)
        except RateLimitError as exc:
            return self._transient(
                record, command, exc.retry_after, "rate-limited", "SmartDialog answered 429",
                exc.message, 429, certainly_not_sent=True,
            )  # fmt: skip
        except InternalServerError as exc:
            return self._transient(
                record, command, None, "upstream-unavailable",
                f"SmartDialog answered {exc.status_code}", exc.message, exc.status_code,
                certainly_not_sent=False,
            )  # fmt: skip
        except APIStatusError as exc:
            if exc.status_code in (408,):
                return self._transient(
                    record, command, None, "upstream-unavailable", "SmartDialog timed out",
                    exc.message, exc.status_code, certainly_not_sent=False,
                )  # fmt: skip
            return self._fail(
                record,
                FailureInfo(
                    code="upstream-rejected",
                    title=f"SmartDialog rejected the message ({exc.status_code})",
                    detail=exc.message,
                    upstreamStatus=exc.status_code,
                    attempts=record.attempts,
                ),
            )
        except APIConnectionError as exc:
            not_sent = isinstance(exc.__cause__, _NOT_SENT)
            return self._transient(
                record, command, None, "upstream-unavailable",
                "SmartDialog could not be reached", exc.message, None,
                certainly_not_sent=not_sent,
            )  # fmt: skip
        except _QuotaDeniedInAttempt as exc:
            return self._transient(
                record, command, exc.retry_after, "rate-limited", "Quota full for a repeat",
                str(exc), None, certainly_not_sent=True,
            )  # fmt: skip
        except CredentialsError as exc:
            return self._transient(
                record, command, None, "configuration", "No usable SmartDialog credentials",
                str(exc), None, certainly_not_sent=True,
            )  # fmt: skip
        return self._sent(record, result, duplicate=False)

    def _call_upstream(
        self, command: OutboundMessage, *, grant: QuotaGrant, report_id: str | None = None
    ) -> dict[str, Any]:
        """One upstream attempt; upstream's answer as a dict in upstream casing.

        What is sent carries *our* DLR URL (token-bearing, per message) in ``DlrUrl``; it is put
        in only here, so the stored command, its fingerprint and re-enqueued copies keep the
        caller's own ``DlrUrl``, which the DLR function calls after ours. The envelope's own
        fields (``transactional``, ids, counters) never reach upstream: only ``body`` is sent.

        The first attempt uses ``grant``; the client checks it is still fresh right before the
        request leaves (:class:`_AttemptGate`), else :class:`_StaleGrant` and nothing is sent.
        """
        self._gate.hold(grant)
        try:
            return self._call_upstream_with_grant(command, report_id=report_id)
        finally:
            self._gate.clear()

    def _call_upstream_with_grant(
        self, command: OutboundMessage, *, report_id: str | None
    ) -> dict[str, Any]:
        from shared.outbound._records import with_delivery_report_url

        command = with_delivery_report_url(command, self.policy.settings, report_id=report_id)
        client = self.client
        result: BaseModel
        if isinstance(command, SendMessageCommand):
            assert command.customerId
            assert command.serviceId
            result = client.send_message(
                command.body, customer_id=command.customerId, service_id=command.serviceId
            )
        elif isinstance(command, SendReplyMessageCommand):
            assert command.customerId
            assert command.serviceId
            result = client.send_reply_message(
                command.body,
                parent_message_id=command.parentMessageId,
                customer_id=command.customerId,
                service_id=command.serviceId,
            )
        elif isinstance(command, SendDiscussionReplyMessageCommand):
            assert command.customerId
            result = client.send_discussion_reply_message(
                command.body, customer_id=command.customerId
            )
        elif isinstance(command, SendWhatsappTemplateMessageCommand):
            assert command.customerId
            assert command.serviceId
            result = client.send_whatsapp_template_message(
                command.body, customer_id=command.customerId, service_id=command.serviceId
            )
        else:  # pragma: no cover - the union is exhaustive
            raise TypeError(type(command))
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)

    # --- outcomes --------------------------------------------------------------------------------

    def _sent(
        self, record: MessageRecord, body: dict[str, Any] | None, *, duplicate: bool
    ) -> SendOutcome:
        now = self._clock()
        body = body or {}
        upstream_id = body.get("MessageId") or body.get("messageId")
        parts = body.get("MessagePartCount") or body.get("messagePartCount")
        raw = body.get("Recipients") or body.get("recipients") or []
        ids = {
            index: str(r.get("Id") or r.get("id"))
            for index, r in enumerate(raw)
            if isinstance(r, dict) and (r.get("Id") or r.get("id"))
        }
        done = self._swap_until(
            record,
            lambda r: r.status is MessageStatus.SENDING,
            recipient_ids=ids,
            status=MessageStatus.SENT,
            result=json.dumps(body, ensure_ascii=False),
            upstream_message_id=str(upstream_id) if upstream_id else None,
            part_count=int(parts) if isinstance(parts, int) and parts > 0 else record.part_count,
            duplicate=duplicate,
            sent_at=now,
            finished_at=now,
            lease_until=None,
            last_error=None,
            updated_at=now,
        )
        if done is None:  # someone else finished it (a lease that ran out): theirs stands
            current = self.store.get(record.message_id)
            if current is not None and current.status.is_final:
                self._announce(current)
            return SendOutcome(OutcomeKind.ACKNOWLEDGED, record.message_id)
        self._announce(done)
        log.info(
            "message %s sent (upstream %s, attempt %d%s)",
            done.message_id, done.upstream_message_id, done.attempts,
            ", duplicate RequestId" if duplicate else "",
        )  # fmt: skip
        return SendOutcome(OutcomeKind.SENT, done.message_id)

    def _transient(
        self,
        record: MessageRecord,
        command: OutboundMessage,
        advised: float | None,
        code: str,
        title: str,
        detail: str | None,
        upstream_status: int | None,
        *,
        certainly_not_sent: bool,
    ) -> SendOutcome:
        error = FailureInfo(
            code=code, title=title, detail=detail, upstreamStatus=upstream_status,
            attempts=record.attempts,
        )  # fmt: skip
        if not certainly_not_sent and not record.operation.carries_request_id:
            return self._fail(
                record,
                error.model_copy(
                    update={
                        "code": "outcome-unknown",
                        "title": f"{title}; the reply may or may not have been sent",
                        "detail": (
                            f"{record.operation} carries no RequestId, so it is not repeated "
                            f"after an ambiguous failure ({detail})."
                        ),
                    }
                ),
            )
        delay = self._retry_delay(record.attempts, advised)
        now = self._clock()
        final = self._give_up(record, error, title, now + dt.timedelta(seconds=delay))
        if final is not None:
            return self._fail(record, final)
        updated = self._swap_until(
            record,
            lambda r: r.status is MessageStatus.SENDING,
            status=MessageStatus.QUEUED,
            lease_until=None,
            next_attempt_at=now + dt.timedelta(seconds=delay),
            last_error=error,
            updated_at=now,
        )
        if updated is None:
            return SendOutcome(OutcomeKind.ACKNOWLEDGED, record.message_id)
        log.warning(
            "message %s attempt %d failed (%s); retry in %.1f s",
            record.message_id, record.attempts, title, delay,
        )  # fmt: skip
        return self._requeue(command, updated.attempts, delay, OutcomeKind.RETRY_SCHEDULED, code)

    def _suppression(self, command: OutboundMessage) -> FailureInfo | None:
        """Why ``command`` may not be sent (recipients who opted out of its service), or None."""
        if self._suppressions is None or getattr(command, "transactional", True):
            return None
        if isinstance(command, SendDiscussionReplyMessageCommand):
            return None  # no recipients, no service
        from shared.problems import Problem
        from shared.suppressions import refuse_suppressed

        addresses = [r.Address for r in command.body.Recipients]
        try:
            refuse_suppressed(
                self._suppressions,
                command.serviceId,
                addresses,
                field="body.Recipients[{index}].Address",
            )
        except Problem as problem:
            offenders = "; ".join(f"{e.field}: {e.message}" for e in problem.errors)
            return FailureInfo(
                code="suppressed",
                title=problem.title,
                detail=f"{problem.detail} {offenders}".strip(),
            )
        return None

    def _refuse(self, command: OutboundMessage, failure: FailureInfo) -> SendOutcome | None:
        """Record a queue-only message that may not be sent, and fail it at once (failed event,
        dead letter with the reason); nothing goes upstream. None if a record with its id
        appeared meanwhile (the caller then goes on as for any recorded message)."""
        now = self._clock()
        record, slots = new_record(
            command, now=now, validity=self.policy.validity, status=MessageStatus.QUEUED
        )
        stored = self.store.create(record, slots)
        if stored is None:
            return None
        log.info("message %s refused: recipient(s) opted out", record.message_id)
        return self._fail(stored, failure)

    def _fail(self, record: MessageRecord, failure: FailureInfo) -> SendOutcome:
        now = self._clock()
        done = self._swap_until(
            record,
            lambda r: not r.status.is_final,
            status=MessageStatus.FAILED,
            failure=failure,
            finished_at=now,
            lease_until=None,
            updated_at=now,
        )
        if done is None:
            current = self.store.get(record.message_id)
            if current is not None:
                self._announce(current)
            return SendOutcome(OutcomeKind.ACKNOWLEDGED, record.message_id)
        self._announce(done)
        log.warning("message %s failed for good: %s", done.message_id, failure.title)
        return SendOutcome(OutcomeKind.FAILED, done.message_id, detail=failure.code)

    def _expired(self, record: MessageRecord, last: FailureInfo | None = None) -> FailureInfo:
        return FailureInfo(
            code="expired",
            title="Not sent within its validity period",
            detail=(
                f"validUntil {record.valid_until.isoformat()} passed"
                + (f"; last error: {last.title}" if last else "")
            ),
            upstreamStatus=last.upstreamStatus if last else None,
            attempts=record.attempts,
        )

    def _swap_until(
        self,
        record: MessageRecord,
        allowed: Callable[[MessageRecord], bool],
        *,
        recipient_ids: Mapping[int, str | None] | None = None,
        **changes: Any,
    ) -> MessageRecord | None:
        """Compare-and-swap ``changes`` while ``allowed(current)``; None once it is not."""
        current: MessageRecord | None = record
        for _ in range(5):
            if current is None or not allowed(current):
                return None
            done = self.store.swap(current, recipient_ids=recipient_ids, **changes)
            if done is not None:
                return done
            current = self.store.get(record.message_id)
        raise RuntimeError(f"message {record.message_id}: record kept changing under the sender")

    # --- side effects ----------------------------------------------------------------------------

    def _announce(self, record: MessageRecord) -> None:
        """Emit the final state's event (and dead letter) once; repeatable after a crash."""
        if not self._emit(record):
            return
        if self.store.swap(record, announced=True) is None:
            log.info("message %s: announcement flag lost a race", record.message_id)

    def _announce_many(self, records: list[MessageRecord]) -> None:
        """:meth:`_announce` for many records: events side by side, then the flags 100 rows a
        transaction where the records share a partition (a batch pack's members)."""
        records = [r for r in records if not r.announced and r.status.is_final]
        if not records:
            return
        emitted = list(_storage_pool().map(self._emit, records))
        done = [r for r, e in zip(records, emitted, strict=True) if e]
        flags = self.store.swap_many([(r, {"announced": True}) for r in done])
        lost = sum(1 for f in flags if f is None)
        if lost:
            log.info("%d announcement flag(s) lost a race", lost)

    def _emit(self, record: MessageRecord) -> bool:
        """Send the final state's event (and a failure's dead letter); False when there is
        nothing to send (not final, already announced, or cancelled: whoever cancelled
        announces that)."""
        if record.announced:
            return False
        return self._emit_final(record)

    def _emit_final(self, record: MessageRecord) -> bool:
        """:meth:`_emit` whatever ``announced`` says (a batch pack records it first)."""
        if record.status is MessageStatus.CANCELLED:
            return False
        now = self._clock()
        if record.status is MessageStatus.SENT:
            result = record.result_json() or {}
            raw = result.get("Recipients") or result.get("recipients") or []
            recipients = [
                RecipientOutcome(
                    address=r.get("Address") or r.get("address"), id=r.get("Id") or r.get("id")
                )
                for r in raw
                if isinstance(r, dict)
            ]
            data: BaseModel = MessageSentData(
                messageId=record.message_id,
                operation=record.operation,
                customerId=record.customer_id,
                serviceId=record.service_id,
                # A packed message went upstream with its pack's RequestId; a bulk member's
                # record holds its call's (see shared.outbound._drive).
                requestId=record.request_id
                if record.batch_id is not None
                else (record.pack_id or record.request_id),
                upstreamMessageId=record.upstream_message_id,
                messagePartCount=record.part_count,
                threadId=result.get("ThreadId"),
                recipients=recipients,
                attempts=record.attempts,
                duplicate=record.duplicate,
            )
            event_type = MESSAGE_SENT
        elif record.status is MessageStatus.FAILED:
            assert record.failure is not None
            # Written before ``announced`` is recorded: a crash in between writes it again on
            # the next delivery, identical (stable id, the failure's time), so consumers can
            # de-duplicate on ``id`` (or ``messageId``), as on the event's id.
            letter = DeadLetter(
                id=f"{record.message_id}:{MessageStatus.FAILED}",
                reason=DeadLetterReason.FAILED,
                detail=record.failure.title,
                error=record.failure,
                messageId=record.message_id,
                queue=OUTBOUND_QUEUE,
                deadLetteredAt=record.finished_at or now,
                original=record.command,
            )
            self._dead_letters.send_message(letter.model_dump_json(exclude_none=True))
            data = MessageFailedData(
                messageId=record.message_id,
                operation=record.operation,
                customerId=record.customer_id,
                serviceId=record.service_id,
                requestId=record.request_id,
                error=record.failure,
            )
            event_type = MESSAGE_FAILED
        else:
            return False
        event = make_event(
            event_type,
            data,
            event_id=f"{record.message_id}:{record.status}",
            subject=record.message_id,
            time=record.finished_at or now,
        )
        self._events.send_message(event.to_json())
        return True

    def _requeue(
        self,
        command: OutboundMessage,
        attempts: int,
        delay: float,
        kind: OutcomeKind,
        reason: str,
    ) -> SendOutcome:
        """Put a copy of the message back with a visibility delay; the host then deletes the
        original when we return (a crash in between leaves a duplicate, which is harmless)."""
        copy = command.model_copy(
            update={
                "attempts": attempts,
                "deferrals": command.deferrals + (1 if kind is OutcomeKind.DEFERRED else 0),
            }
        )
        seconds = _whole_seconds(delay)
        text = OutboundMessageAdapter.dump_json(copy, by_alias=True, exclude_none=True).decode()
        self._outbound.send_message(text, visibility_timeout=seconds)
        log.debug("message %s %s (%s); back in %d s", command.messageId, kind, reason, seconds)
        return SendOutcome(kind, command.messageId, delay_seconds=seconds, detail=reason)

    def _dead_letter_malformed(
        self,
        text: str,
        exc: Exception,
        queue_message_id: str | None,
        dequeue_count: int | None,
    ) -> SendOutcome:
        errors: list[dict[str, Any]] = []
        if isinstance(exc, ValidationError):
            for item in exc.errors(include_url=False, include_input=False):
                where = ".".join(str(p) for p in item["loc"]) or "(message)"
                errors.append({"field": where, "message": item["msg"]})
            detail = f"not a valid outbound message: {exc.error_count()} problem(s)"
        else:
            detail = f"not a valid outbound message: {exc}"
        letter = DeadLetter(
            id=f"malformed:{queue_message_id}" if queue_message_id else None,
            reason=DeadLetterReason.MALFORMED,
            detail=detail,
            errors=errors,
            queue=OUTBOUND_QUEUE,
            queueMessageId=queue_message_id,
            dequeueCount=dequeue_count,
            deadLetteredAt=self._clock(),
            original=text,
        )
        self._dead_letters.send_message(letter.model_dump_json(exclude_none=True))
        log.warning("outbound queue message %s dead-lettered: %s", queue_message_id, detail)
        return SendOutcome(OutcomeKind.DEAD_LETTERED, detail=detail)

    # --- helpers ---------------------------------------------------------------------------------

    def _message_id(self, command: OutboundMessage, queue_message_id: str | None) -> str:
        if command.messageId:
            return command.messageId
        customer = command.customerId or self.policy.customer_id or ""
        request_id = getattr(command.body, "RequestId", None)
        if request_id:
            return derive_message_id(f"request-id\n{customer}", request_id)
        if queue_message_id:
            return derive_message_id("queue-message", queue_message_id)
        raise ValueError("messageId is missing and cannot be derived")

    def _create_claimed(self, command: OutboundMessage) -> MessageRecord | None:
        """Record a message first seen on the queue, already claimed by this worker (one write
        instead of two); None if a record appeared meanwhile."""
        now = self._clock()
        record, slots = new_record(
            command, now=now, validity=self.policy.validity, status=MessageStatus.SENDING
        )
        if now >= record.valid_until:
            self.store.create(replace(record, status=MessageStatus.QUEUED), slots)
            return None  # expired: the normal path fails it
        claimed = replace(record, attempts=1, lease_until=now + self.policy.lease)
        return self.store.create(claimed, slots)


def _transient_failure(exc: Exception) -> tuple[float | None, str, str, int | None]:
    """(advised delay, code, title, upstream status) of a failure worth retrying."""
    if isinstance(exc, RateLimitError):
        return exc.retry_after, "rate-limited", "SmartDialog answered 429", 429
    if isinstance(exc, InternalServerError):
        return (
            None,
            "upstream-unavailable",
            f"SmartDialog answered {exc.status_code}",
            (exc.status_code),
        )
    if isinstance(exc, _QuotaDeniedInAttempt):
        return exc.retry_after, "rate-limited", "Quota full for a repeat", None
    if isinstance(exc, CredentialsError):
        return None, "configuration", "No usable SmartDialog credentials", None
    return None, "upstream-unavailable", "SmartDialog could not be reached", None


@lru_cache(maxsize=65536)
def _address_key(address: str) -> str:
    from shared.suppressions import recipient_key

    return recipient_key(address)


def _packed_command(
    leader: OutboundMessage, commands: list[OutboundMessage], request_id: str
) -> OutboundMessage:
    """The leader's command carrying every member's recipients (each with its own
    personalization, in membership order) and the pack's RequestId."""
    recipients = [r for c in commands for r in c.body.Recipients]  # type: ignore[union-attr]
    body = leader.body.model_copy(update={"Recipients": recipients, "RequestId": request_id})
    return leader.model_copy(update={"body": body})


@lru_cache(maxsize=4)
def _sender_for(settings: Settings) -> OutboundSender:
    from shared import quota
    from shared.smartdialog import auth_from_settings
    from shared.storage import queue_client
    from shared.suppressions import SuppressionStore

    store = quota.from_settings(settings)
    gate = _AttemptGate(store)
    # No client-side retries: every retry is a re-enqueued copy, so no invocation sleeps.
    client = SmartDialogClient(
        settings.base_url,
        auth_from_settings(settings),
        before_attempt=gate,
        before_send=gate.before_send,
        max_retries=0,
        timeout=httpx.Timeout(
            settings.send_timeout_seconds, connect=min(5.0, settings.send_timeout_seconds)
        ),
    )
    return OutboundSender(
        store=MessageStore.from_settings(settings),
        quota=store,
        client=client,
        gate=gate,
        outbound=queue_client(OUTBOUND_QUEUE, settings),
        dead_letters=_ensured_queue(OUTBOUND_DEAD_LETTER_QUEUE, settings),
        events=_ensured_queue(_events_queue(), settings),
        policy=_Policy.from_settings(settings),
        suppressions=SuppressionStore.from_settings(settings),
        packs=PackStore.from_settings(settings),
    )


def _events_queue() -> str:
    from shared.names import EVENTS_QUEUE

    return EVENTS_QUEUE


def _ensured_queue(name: str, settings: Settings) -> Any:
    """A queue client whose queue exists (created once per process; the host only creates the
    queues it triggers on, and Bicep creates them in Azure)."""
    from azure.core.exceptions import ResourceExistsError

    from shared.storage import queue_client

    client = queue_client(name, settings)
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()
    return client


def reset_sender_cache() -> None:
    """Forget cached senders (tests change settings between cases)."""
    _sender_for.cache_clear()
