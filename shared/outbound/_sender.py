"""The queue sender: one outbound queue message (a send command, or a bulk pack's driver) in, at
most one upstream send out. :meth:`OutboundSender.process` raises only when our own storage fails
(the host retries, then moves it to ``smartdialog-outbound-poison``). See docs/sending.md,
"Statuses and the sender"."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared import telemetry
from shared.connections import ConnectionNotConfigured, connection_settings
from shared.logs import loggable_id, redacted_traceback
from shared.messages import FailureInfo, MessageRecord, MessageStatus, Pack, lane_time
from shared.names import DEFAULT_CONNECTION, OUTBOUND_QUEUE
from shared.outbound._attempt import Call, Refused, Sent, StaleGrant
from shared.outbound._drive import drive_pack
from shared.outbound._giving_up import not_repeated, refusal_failure, request_id_taken
from shared.outbound._models import (
    OutboundMessage,
    PackDriver,
    StoredCommand,
    command_connection,
    derive_message_id,
    parse_outbound_message,
    parse_queue_message,
    readable_message_id,
    reprompt_of,
    request_message_id,
    serves,
)
from shared.outbound._outcomes import (
    BACKOFF_TOLERANCE_SECONDS,
    STALE_GRANT_RETRY_SECONDS,
    OutcomeKind,
    Outcomes,
    QueueCopy,
    SendOutcome,
    claim_changes,
)
from shared.outbound._packing import PACK_MEMBER_RECHECK_SECONDS, IndexPacks
from shared.outbound._ports import SendPorts, routed_by_claim, send_ports
from shared.outbound._quota_wait import slot_holder
from shared.outbound._records import (
    command_addresses,
    new_record,
    normalize,
    opted_out,
    pack_key,
    recipient_slots,
    suppressions_of,
    unreadable_address,
)
from shared.outbound._routing import (
    note_waiting,
    sent_elsewhere,
    through_connection,
    unreadable_command,
    unrouted,
    unserved,
)
from shared.outbound._setting_waits import quota_store_wait, token_wait
from shared.problems import Problem
from shared.quota import QuotaDenied, QuotaGrant

if TYPE_CHECKING:
    from shared.messages import RecipientSlot
    from shared.settings import Settings

__all__ = ["OutboundSender"]

log = logging.getLogger("shared.outbound.sender")
# Counted here; sent and failed are counted per message when their event goes out.
_COUNTED_HERE = {OutcomeKind.DEFERRED, OutcomeKind.RETRY_SCHEDULED, OutcomeKind.DEAD_LETTERED}
_Read = OutboundMessage | PackDriver | Exception  # a queue message read, or why it was not
#: Why a claimed call was not made after its waits (the token's, the quota's), as logged.
_NO_CALL = {"expired": "past its validUntil", "lease": "claim too close to its end to call"}


class OutboundSender:
    """Processes outbound queue messages: quota, claim, upstream call, record, events. Its
    ports come from the composition root (:func:`send_ports`, cached per settings object)."""

    def __init__(self, ports: SendPorts) -> None:
        self.ports = ports
        self.outcomes = Outcomes(ports)
        self.packing = IndexPacks(ports, self.outcomes)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> OutboundSender:
        from shared.settings import get_settings

        return cls(send_ports(settings or get_settings()))

    # --- entry point -----------------------------------------------------------------------------

    def process(
        self,
        text: str,
        *,
        queue_message_id: str | None = None,
        dequeue_count: int | None = None,
        inserted_at: dt.datetime | None = None,
    ) -> SendOutcome:
        """Handle one queue message in a span continuing its command's trace (a stored one's is
        in its blob); see the module docstring for raises; ``inserted_at`` feeds queue age."""
        telemetry.record_queue_age(OUTBOUND_QUEUE, inserted_at, self.ports.now())
        try:
            read: _Read = self._read(text)
        except Exception as exc:  # settled (or raised again) in the span
            read = exc
        trace = telemetry.traceparent_in(text) if isinstance(read, Exception) else read.traceparent
        # Named before storage can fail (one derived from a RequestId needs its route: later).
        known = (readable_message_id(text, customer_id=None) if isinstance(read, Exception)
                 else read.packId if isinstance(read, PackDriver) else read.messageId)  # fmt: skip
        attributes = {"messaging.message.id": queue_message_id, "smartdialog.message_id": known}
        with telemetry.span(f"process {OUTBOUND_QUEUE}", parent=trace, kind="consumer",
                            attributes=attributes) as current:  # fmt: skip
            try:
                outcome = self._process(read, QueueCopy(text, queue_message_id, dequeue_count))
            except Exception as exc:  # our storage failed: the host retries, then -poison
                log.error("message %s (queue message %s, dequeue count %s) not processed: %s",
                          known and loggable_id(known), queue_message_id, dequeue_count,
                          redacted_traceback(exc))  # fmt: skip
                raise
            if outcome.message_id:  # one derived only now, or a pack's driver: the pack id
                current.set_attribute("smartdialog.message_id", loggable_id(outcome.message_id))
            current.set_attribute("smartdialog.outcome", str(outcome.kind))
        if outcome.kind in _COUNTED_HERE:
            telemetry.count_send(outcome.kind)
        return outcome

    def _process(self, read: _Read, got: QueueCopy) -> SendOutcome:
        if isinstance(read, ValueError):  # a ValidationError too
            return self.outcomes.dead_letter_malformed(got, read)
        if isinstance(read, Exception):  # our storage failed: the host retries
            raise read
        try:
            message = routed_by_claim(read, self.ports.store)
        except ConnectionNotConfigured as problem:  # which connection claims its customer?
            return unrouted(self.outcomes, got, problem)
        given = (self.outcomes, self.message_id, message, got)
        if (refused := unserved(*given)) is not None:  # its Connection does not serve its customer
            return refused
        if not self._routes(message):
            if isinstance(routed := through_connection(*given), SendOutcome):
                return routed
            return OutboundSender(routed).handle(message, got)
        return self.handle(message, got)

    def settle_poisoned(self, text: str, *, owner: MessageRecord | None = None) -> bool | None:
        """Settle a send command the host moved to the poison queue (as
        :meth:`Outcomes.settle_poisoned`), or with ``owner`` only say whether it is that record's
        own (True for one not read). None, look again, while its routing is uncertain; False for
        one not read or routed, a pack's driver, or one whose id was its queue message's."""
        try:
            message = routed_by_claim(self._read(text), self.ports.store)
            if isinstance(message, PackDriver):
                return False
            sender = self
            if not self._routes(message):
                sender = OutboundSender(send_ports(connection_settings(message.Connection)))
            command = sender._normalized(message, None)
        except ConnectionNotConfigured:  # its connection is uncertain now: look again next run
            return None
        except (ValidationError, ValueError, Problem):
            return owner is not None
        if owner is not None:
            return sender.outcomes.owns(owner, command)
        return sender.outcomes.settle_poisoned(command)

    def _read(self, text: str) -> OutboundMessage | PackDriver:
        """A queue message's command (a stored one read from its blob) or pack driver, not yet
        routed; raises ``ValueError`` if it cannot be read."""
        message = parse_queue_message(text)
        if isinstance(message, StoredCommand):
            stored, named = self.ports.payloads.get(message.payload), message.payload
            if stored is None:
                raise ValueError(f"the stored command {named} is gone")
            command = parse_outbound_message(stored)
            if command.messageId != message.messageId:
                raise ValueError(f"the stored command {named} is not {message.messageId}'s")
            return command.model_copy(update={"attempts": message.attempts,
                                              "deferrals": message.deferrals})  # fmt: skip
        return message

    def _routes(self, message: OutboundMessage | PackDriver) -> bool:
        """Whether ``message`` goes through this sender's connection."""
        return (command_connection(message) or DEFAULT_CONNECTION) == self.ports.policy.connection

    def _normalized(
        self, message: OutboundMessage, queue_message_id: str | None
    ) -> OutboundMessage:
        """``message`` as this sender sends it (:func:`normalize`); raises ``ValueError``."""
        policy = self.ports.policy
        message_id = self.message_id(message, queue_message_id)
        return normalize(message, message_id=message_id, customer_id=policy.customer_id,
                         service_id=policy.service_id)  # fmt: skip

    def handle(self, message: OutboundMessage | PackDriver, got: QueueCopy) -> SendOutcome:
        """Handle a parsed queue message of this sender's connection."""
        if isinstance(message, PackDriver):  # a bulk send's pack (shared.outbound._drive)
            return drive_pack(self.ports, self.outcomes, message, got)
        try:
            command = self._normalized(message, got.queue_id)
        except ValueError as exc:
            return unreadable_command(self.outcomes, got, exc)
        assert command.messageId is not None
        key = pack_key(command)
        wait = self.ports.quota_wait.hint()
        if wait > self.ports.policy.quota_wait:
            # Quota full (a hint: it only defers): defer without storage, a first-seen one indexed.
            if command.deferrals == 0:
                self._park(command)
            delay = self.ports.quota_wait.come_back_in(wait, slot_holder(key, command.messageId))
            return self.outcomes.requeue(
                command, command.attempts, delay, OutcomeKind.DEFERRED, "quota"
            )
        if wait > 0 and key is not None:
            # Claim once the slot is near: one of the key's copies back for it packs the rest.
            self.ports.quota_wait.sleep(wait)
        record = self.ports.store.get(command.messageId)
        if record is None:
            # First seen here (queued directly): check numbers and opt-outs as a send action would.
            if (unreadable := unreadable_address(command)) is not None:
                return self.outcomes.dead_letter_malformed(got, unreadable)
            if (refusal := suppressions_of([command], self.ports.suppressions)[0]) is not None:
                # Opted out: recorded and failed at once, unless a record appeared meanwhile.
                new, slots = self._new_record(command, self.ports.now())
                if (stored := self.ports.store.create(new, slots)) is not None:
                    log.info("message %s refused: recipient(s) opted out", new.logged_id)
                    return self.outcomes.fail(stored, refusal)
            else:
                claimed = self._create_claimed(command)
                if claimed is not None:
                    sent = self._take_slot_and_send(claimed, command, before=MessageStatus.QUEUED)
                    return self._then_sweep(claimed, command, sent)
            # A record appeared meanwhile (another copy, or another message with this id).
            if (record := self.ports.store.get(command.messageId)) is None:
                raise RuntimeError(f"message {command.messageId} could not be recorded")
        # Attempted through another connection (this one's defaults may differ): it goes on there.
        there = sent_elsewhere(self.outcomes, self.message_id, record, message, got)
        if isinstance(there, tuple):
            return OutboundSender(there[0]).handle(there[1], got)
        if there is not None:
            return there
        if elsewhere := self.outcomes.someone_elses(record, command, got):
            return elsewhere
        return self._then_sweep(record, command, self._advance(record, command))

    def _then_sweep(
        self, record: MessageRecord, command: OutboundMessage, outcome: SendOutcome
    ) -> SendOutcome:
        """Lead the next packs of ``record``'s key after it led a pack, was sent alone outside a
        lane, or was a young lane member's copy whose record ended. See docs/sending.md, "Sweep"
        and "Lanes"."""
        accepted = lane_time(record.message_id)
        key = record.pack_key or (pack_key(command) if accepted else None)
        young = (
            accepted is not None and self.ports.now() - accepted < self.ports.policy.lane_backstop
        )
        final = outcome.kind in (OutcomeKind.SENT, OutcomeKind.ACKNOWLEDGED, OutcomeKind.FAILED)
        led = (outcome.detail or "").startswith("pack ") or (
            outcome.kind is OutcomeKind.SENT and accepted is None
        )
        if key is None or (not led and not (young and final)):
            return outcome
        if not serves(self.ports.policy.connection, command.customerId):
            return outcome  # (a customer moved since: its lanes' members follow it)
        waiting = self.packing.sweep(replace(record, pack_key=key), self._advance, report=young)
        if waiting is not None:
            member, command = waiting
            delay = self.ports.quota_wait.come_back_in(None, slot_holder(key, member.message_id))
            self.outcomes.requeue(command, member.attempts, delay, OutcomeKind.DEFERRED, "lane")
        return outcome

    def _advance(self, record: MessageRecord, command: OutboundMessage) -> SendOutcome:
        if record.batch_id is not None and record.pack_id is not None:
            # A bulk member's own command, queued by hand: only its pack's driver sends it.
            if not record.status.is_final:
                driver = PackDriver(
                    packId=record.pack_id, batchId=record.batch_id, Connection=command.Connection
                )
                self.ports.outbound.send_message(driver.text())
            return SendOutcome(OutcomeKind.ACKNOWLEDGED, record.message_id, detail="bulk-member")
        for _ in range(5):  # each round re-reads after a lost compare-and-swap
            now = self.ports.now()
            if record.status.is_final:
                self.outcomes.announce([record])
                return SendOutcome(OutcomeKind.ACKNOWLEDGED, record.message_id)
            if (lease := record.held_until(now)) is not None:
                # Another worker holds the claim (a duplicate copy): come back when its lease ends.
                delay = (lease - now).total_seconds() + 1
                if record.pack_id is not None:
                    delay = min(delay, PACK_MEMBER_RECHECK_SECONDS)
                return self.outcomes.requeue(command, record.attempts, delay,
                                             OutcomeKind.DEFERRED, "claimed")  # fmt: skip
            if (
                record.next_attempt_at is not None
                and (record.next_attempt_at - now).total_seconds() > BACKOFF_TOLERANCE_SECONDS
            ):
                # A duplicate copy within the record's backoff waits it out, or retries come early.
                delay = (record.next_attempt_at - now).total_seconds()
                return self.outcomes.requeue(command, record.attempts, delay,
                                             OutcomeKind.DEFERRED, "backoff")  # fmt: skip
            if record.status is MessageStatus.SENDING and not record.operation.carries_request_id:
                # The previous attempt died mid-call; without a RequestId a repeat could send twice.
                why = "an attempt was interrupted before its outcome was recorded"
                failure = not_repeated(record, "An earlier attempt may have been sent", why)
                return self.outcomes.fail(record, failure)
            if now >= record.valid_until:
                if record.pack_id is not None:  # no retry of its pack will announce the others
                    self.packing.announce_listed(record.pack_id)
                return self.outcomes.fail(record, self.outcomes.expired(record))
            # A re-prompt whose question ended, never sent (no attempt may have gone): cancelled.
            unsent = record.status is MessageStatus.QUEUED and not record.maybe_sent
            if unsent and self._unasked(command):
                cancelled = MessageStatus.CANCELLED
                if done := self.ports.store.swap(
                    record, status=cancelled, finished_at=now, updated_at=now
                ):
                    self.outcomes.announce([done])
                    return SendOutcome(OutcomeKind.ACKNOWLEDGED, done.message_id, detail="ended")
            # A setting the call needs broke after accept: it waits, unclaimed and without a slot.
            what = f"message {record.message_id}"
            recheck = self.outcomes.misconfigured(what, record.valid_until)
            if recheck is not None:
                note_waiting(self.outcomes, [record])
                return self.outcomes.requeue(
                    command, record.attempts, recheck, OutcomeKind.DEFERRED, "configuration"
                )
            if record.pack_id is not None:
                waiting, record = self.packing.turn(record, command, now)
                if waiting is not None:
                    return waiting
            elif record.attempts == 0:
                if waiting := self.packing.lead(record, command, now):
                    return waiting
                now = self.ports.now()  # it may have waited for the lease
                if now >= record.valid_until:  # and expired meanwhile: not sent
                    self.packing.unlead(record)
                    continue
            if refused := opted_out([(record, command)], self.ports.suppressions):
                self.packing.unlead(record)  # a STOP since it was accepted: it never goes
                return self.outcomes.fail(*refused[0])
            claimed = self.ports.store.swap(record, **claim_changes(record, now, self.ports.policy))
            if claimed is None:
                self.packing.unlead(record)
                if (reread := self.ports.store.get(record.message_id)) is None:
                    raise RuntimeError(f"message {record.message_id} vanished while claiming")
                record = reread
                continue
            return self._take_slot_and_send(claimed, command, before=record.status)
        raise RuntimeError(f"message {record.message_id}: record kept changing under the sender")

    def _take_slot_and_send(
        self, claimed: MessageRecord, command: OutboundMessage, *, before: MessageStatus
    ) -> SendOutcome:
        """With the message claimed, gather its pack, build the call, take a quota slot and call
        upstream, or hand the claim back. Our storage failing before the call hands the claim back
        and re-raises, except a lasting quota-store error, which waits as a broken setting does."""
        claim = _Claim(claimed, command, before, fresh=claimed.pack_id is None)
        try:
            return self._slot_and_call(claim)
        except Exception as exc:
            if waits := quota_store_wait(self.outcomes, command, [claim.record], exc):
                return self._hand_back(claim, *waits)
            try:
                self._give_back(claim)
            except Exception as exc:
                log.error("message %s: claim not handed back: %s", claimed.logged_id,
                          redacted_traceback(exc))  # fmt: skip
            raise

    def _slot_and_call(self, claim: _Claim) -> SendOutcome:
        claimed, command = claim.record, claim.command
        if claimed.recipient_count >= 99:  # slots past the first transaction (idempotent)
            self.ports.store.ensure_slots(recipient_slots(command, now=claimed.created_at))
        if claimed.pack_id is not None:
            claim.pack, claim.members = self.packing.regather(claimed, command)
        elif claimed.pack_key is not None and claimed.attempts == 1:
            claim.pack, claim.members = self.packing.gather(claimed, command)
        if claim.members:
            claim.record = claimed = claim.members[0][0]
        if waits := token_wait(self.outcomes, command, [claimed]):  # the token first
            return self._hand_back(claim, *waits)  # none: nothing sent, not an attempt
        # Built before the grant; a retried pack of one goes as its pack (the same RequestId).
        pack, upstream = claim.pack if claim.members else None, self.ports.upstream
        call = self.packing.prepare(pack, claim.members) if pack else upstream.prepare([command])
        holder = slot_holder(claimed.pack_key, claimed.message_id)
        decision, waited = self.ports.quota_wait.take(0.0, holder)
        for retry_stale in (True, False):  # a grant gone stale gets one more try here
            if isinstance(decision, QuotaDenied):
                delay = self.ports.quota_wait.come_back_in(decision, holder)
                return self._hand_back(claim, delay, "quota")
            if why := self._cannot_call(claimed, claim.members):  # only after slow waits
                log.warning("message %s: %s; deferred", claimed.logged_id, _NO_CALL[why])
                return self._hand_back(claim, 0, why)
            claim.held = False  # from here on it may reach upstream
            try:
                if pack is not None:
                    return self.packing.attempt(pack, claim.members, decision, call)
                return self._attempt(claimed, command, decision, call)
            except StaleGrant as exc:
                # Nothing sent (stopped before it left), not an attempt; the grant stays logged.
                claim.held = True
                log.warning("message %s: %s; not sent with it", claimed.logged_id, exc)
                if retry_stale:
                    decision, waited = self.ports.quota_wait.take(waited, holder)
        return self._hand_back(claim, STALE_GRANT_RETRY_SECONDS, "stale-grant")

    def _hand_back(self, claim: _Claim, delay: float, reason: str, error: FailureInfo | None = None,
                   due: dt.datetime | None = None) -> SendOutcome:  # fmt: skip
        """No call made: claim handed back (LastError ``error``, ``waits_until`` ``due``),
        requeued after ``delay`` s."""
        self._give_back(claim, error=error, waits_until=due)
        attempts = claim.record.attempts - 1
        return self.outcomes.requeue(claim.command, attempts, delay, OutcomeKind.DEFERRED, reason)

    def _give_back(self, claim: _Claim, **changes: Any) -> None:
        """Hand the claim (and a pack's members) back, the attempt not counted, with ``changes``:
        a new pack dissolved (members wait in the index), a tried one kept."""
        if not claim.held:
            return
        claim.held, keep = False, not claim.fresh
        try:
            if claim.pack is not None and claim.members:
                self.packing.release([m for m, _ in claim.members[1:]], keep, **changes)
        finally:  # the leader goes back also when a member's hand-back raised (storage failing)
            back = self.packing.release_one(claim.record, claim.before, keep_pack=keep, **changes)
            self.ports.packs.index([b for b in [back] if b is not None and b.pack_id is None])

    def _cannot_call(
        self, claimed: MessageRecord, members: list[tuple[MessageRecord, OutboundMessage]]
    ) -> str | None:
        """Why this call is not made after the token and quota waits (:data:`_NO_CALL`): a message
        past its ``validUntil``, or a lease that would not outlast a whole call (then no other
        worker can take it over mid-call)."""
        now, records = self.ports.now(), [claimed, *(m for m, _ in members)]
        needed = dt.timedelta(seconds=self.ports.policy.call_seconds)
        if any(now >= r.valid_until for r in records):
            return "expired"
        short = any(r.lease_until is None or r.lease_until - now < needed for r in records)
        return "lease" if short else None

    def _attempt(
        self, record: MessageRecord, command: OutboundMessage, grant: QuotaGrant, call: Call
    ) -> SendOutcome:
        """One upstream call with ``grant``, its outcome recorded; raises :class:`StaleGrant`
        (nothing sent, nothing recorded) if the grant went stale before the request left."""
        # Its doubt is about its own RequestId only if it never went in a pack (pack_key None).
        repeat = record.maybe_sent and record.pack_key is None
        result = self.ports.upstream.attempt(grant, call, repeat=repeat)
        if isinstance(result, Sent):
            if result.answers_another(addresses := command_addresses(command)):  # another's 409
                return self.outcomes.fail(record, request_id_taken(record))
            return self.outcomes.sent(record, result.body, addresses, duplicate=result.duplicate)
        if isinstance(result, Refused):
            named = result.culprit is not None  # one message: any recipient named is its own
            return self.outcomes.fail(record, refusal_failure(result, record, named=named))
        failed = result
        if not failed.certainly_not_sent and not record.operation.carries_request_id:
            why = f"an attempt failed ambiguously ({failed.detail})"
            unsure = f"{failed.title}; the reply may or may not have been sent"
            error = failed.error(record.attempts)
            return self.outcomes.fail(record, not_repeated(record, unsure, why, error))
        delay = self.outcomes.retry_delay(record.attempts, failed)
        next_at = self.ports.now() + dt.timedelta(seconds=delay)
        outcome = self.outcomes.back_off(record, failed, next_at)
        if outcome.kind is not OutcomeKind.RETRY_SCHEDULED:
            return outcome
        log.warning("message %s attempt %d failed (%s); retry in %.1f s", record.logged_id,
                    record.attempts, failed.title, delay)  # fmt: skip
        return self.outcomes.requeue(
            command, record.attempts, delay, OutcomeKind.RETRY_SCHEDULED, failed.code
        )

    def _unasked(self, command: OutboundMessage) -> bool:
        """Whether ``command`` is a question's re-prompt whose question has ended."""
        return self.ports.questions.ended_reprompt(reprompt_of(command))

    def message_id(self, command: OutboundMessage, queue_message_id: str | None) -> str:
        """The id of ``command``: its own, else derived from its RequestId or queue message."""
        if command.messageId:
            return command.messageId
        customer = command.customerId or self.ports.policy.customer_id or ""
        if request_id := getattr(command.body, "RequestId", None):
            return request_message_id(customer, request_id, command_connection(command))
        if queue_message_id:
            return derive_message_id("queue-message", queue_message_id)
        raise ValueError("messageId is missing and cannot be derived")

    def _new_record(
        self, command: OutboundMessage, now: dt.datetime
    ) -> tuple[MessageRecord, list[RecipientSlot]]:
        """A new ``queued`` record of ``command`` (first seen on the queue) and its slots."""
        validity, queued = self.ports.policy.validity, MessageStatus.QUEUED
        return new_record(command, now=now, validity=validity, status=queued)

    def _create_claimed(self, command: OutboundMessage) -> MessageRecord | None:
        """Record a message first seen on the queue, already claimed by this worker (one write);
        None if a record appeared meanwhile."""
        now = self.ports.now()
        record, slots = self._new_record(command, now)
        if now >= record.valid_until or self.ports.policy.broken_settings or self._unasked(command):
            self.ports.store.create(record, slots)
            return None  # expired, a setting broken, its question ended: the normal path says
        claimed = replace(record, **claim_changes(record, now, self.ports.policy))
        return self.ports.store.create(claimed, slots)

    def _park(self, command: OutboundMessage) -> None:
        """Record a packable queue-only message as queued and index it, so the next invocation
        that gets a slot packs it (nothing if it is recorded already, or must be refused)."""
        assert command.messageId is not None
        if self.ports.store.get(command.messageId) is not None:
            return
        if unreadable_address(command) or suppressions_of([command], self.ports.suppressions)[0]:
            return
        record, slots = self._new_record(command, self.ports.now())
        if record.pack_key is not None and (created := self.ports.store.create(record, slots)):
            self.ports.packs.index([created])


@dataclass
class _Claim:
    """A claim on its way to its call: what a hand-back gives back."""

    record: MessageRecord
    command: OutboundMessage
    before: MessageStatus  # the status it was claimed from
    fresh: bool  # not in a pack before: one formed now is dissolved when handed back
    pack: Pack | None = None
    members: list[tuple[MessageRecord, OutboundMessage]] = field(default_factory=list)
    held: bool = True  # to give back: not handed back yet, no call started
