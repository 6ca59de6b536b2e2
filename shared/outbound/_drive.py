"""Batch packs: one queue message (a :class:`PackDriver`) sends a whole pack of bulk members.

A driver takes the pack's lease, reads and claims its due members, records the call's membership
on the pack before the call, takes a quota slot, calls, and records each member's result and
event. See docs/sending.md, "Bulk sends: batch packs" (steps, failures, splits)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from shared.logs import loggable_text, redacted_traceback
from shared.messages import FailureInfo, MessageRecord, MessageStatus, Pack, new_pack_id
from shared.names import named_connection
from shared.outbound._attempt import Call, Refused, Sent, StaleGrant, Transient, split_answer
from shared.outbound._giving_up import give_up, given_back, refusal_failure
from shared.outbound._models import PackDriver, parse_outbound_message
from shared.outbound._outcomes import (
    BACKOFF_TOLERANCE_SECONDS,
    STALE_GRANT_RETRY_SECONDS,
    OutcomeKind,
    Outcomes,
    QueueCopy,
    SendOutcome,
    backoff_changes,
    claim_changes,
    sent_changes,
    storage_pool,
    whole_seconds,
)
from shared.outbound._ports import SendPorts
from shared.outbound._quota_wait import slot_holder
from shared.outbound._records import opted_out
from shared.outbound._routing import listed_again, note_waiting
from shared.outbound._setting_waits import quota_store_wait, token_wait
from shared.telemetry import current_traceparent

if TYPE_CHECKING:
    from shared.quota import QuotaGrant

__all__ = ["drive_pack"]

log = logging.getLogger("shared.outbound.sender")


def drive_pack(
    ports: SendPorts,
    outcomes: Outcomes,
    driver: PackDriver,
    got: QueueCopy,
) -> SendOutcome:
    """Handle one pack driver (see the module docstring). Raises only for storage failures."""
    wait = ports.quota_wait.hint()
    if wait > ports.policy.quota_wait:
        delay = ports.quota_wait.come_back_in(wait, slot_holder(None, driver.packId))
        return outcomes.requeue_driver(driver, delay, OutcomeKind.DEFERRED, "quota")
    pack = ports.packs.get(driver.packId)
    if pack is None or pack.batch_id is None:
        return outcomes.dead_letter_malformed(
            got, ValueError(f"{driver.packId} is not a bulk pack of this app")
        )
    now = ports.now()
    if pack.lease_until is not None and pack.lease_until > now:
        # Another driver holds it, usually briefly: look again soon, not at the lease's end.
        delay = min((pack.lease_until - now).total_seconds() + 1, PACK_RECHECK_SECONDS)
        return outcomes.requeue_driver(driver, delay, OutcomeKind.DEFERRED, "claimed")
    held = ports.packs.swap(pack, lease_until=now + ports.policy.lease)
    if held is None:  # another driver of this pack took it just now
        return outcomes.requeue_driver(driver, 1, OutcomeKind.DEFERRED, "claimed")
    run = _Run(ports, outcomes, held, driver)
    try:
        outcome = run.go()
    except BaseException:
        run.give_back()
        run.unlease()
        raise
    # The lease goes before the driver comes back, or the follow-up would find it held.
    run.unlease()
    if run.follow_up is not None:
        delay, kind, reason = run.follow_up
        outcomes.requeue_driver(run.driver, delay, kind, reason)
    return outcome


#: A driver that finds its pack held by another looks again this soon.
PACK_RECHECK_SECONDS = 10.0


class _Run:
    """One driver's turn with a pack whose lease it holds."""

    def __init__(
        self, ports: SendPorts, outcomes: Outcomes, pack: Pack, driver: PackDriver
    ) -> None:
        self.ports = ports
        self.outcomes = outcomes
        self.packs = ports.packs
        self.pack = pack
        self.driver = driver
        #: Members of this pack left open by this turn (the driver comes back for them).
        self.leftovers = 0
        #: Members it claimed and has not called for yet (handed back if the turn fails).
        self.unsent: list[MessageRecord] = []
        self.repeating = False
        #: When and why the driver comes back (delay, kind, reason), sent once its lease is freed.
        self.follow_up: tuple[float, OutcomeKind, str] | None = None

    # --- the pack row ------------------------------------------------------------------------

    def save(self, **changes: Any) -> None:
        done = self.packs.swap(self.pack, **changes)
        if done is None:
            raise RuntimeError(f"pack {self.pack.pack_id}: lease lost while it was being sent")
        self.pack = done

    def driver_for(self, pack_id: str) -> str:
        """The queue message of another pack of this batch (a split's half, a moved pack), in
        the batch's trace (this driver's; none: this turn's)."""
        batch, connection = self.pack.batch_id, self.driver.Connection
        trace = self.driver.traceparent or current_traceparent()
        return PackDriver(
            packId=pack_id, batchId=batch, traceparent=trace, Connection=connection
        ).text()

    def give_back(self) -> None:
        """Our storage failed before the call (the pack row, the quota log): the claims go back
        uncounted, or they would pass for a call interrupted mid-way once their lease ran out."""
        try:
            self.release(self.unsent)
        except Exception as exc:  # the claims then simply run out
            log.error("pack %s: claims not handed back: %s", self.pack.pack_id,
                      redacted_traceback(exc))  # fmt: skip

    def unlease(self) -> None:
        try:
            done = self.packs.swap(self.pack, lease_until=None)
        except Exception as exc:  # the lease then simply runs out
            log.error("pack %s: lease not released: %s", self.pack.pack_id, redacted_traceback(exc))
            return
        if done is not None:
            self.pack = done

    def later(
        self, delay: float, reason: str, kind: OutcomeKind = OutcomeKind.DEFERRED
    ) -> SendOutcome:
        """The driver comes back after ``delay`` (sent by :func:`drive_pack` after the lease
        is released)."""
        self.follow_up = (delay, kind, reason)
        return SendOutcome(
            kind, self.pack.pack_id, delay_seconds=whole_seconds(delay), detail=reason
        )

    # --- the turn ----------------------------------------------------------------------------

    def go(self) -> SendOutcome:
        ports, pack = self.ports, self.pack
        now = ports.now()
        found = ports.store.get_many(pack.member_ids)
        members = [found[m] for m in pack.member_ids if m in found]
        if theirs := {r.connection for r in members} - {ports.policy.connection}:
            # Another connection's pack (an older release's re-drive): never through this one.
            other = min(theirs)
            log.warning("pack %s: a driver of connection %s; sent there", pack.pack_id, other)
            self.driver = self.driver.model_copy(update={"Connection": named_connection(other)})
            return self.later(0, "connection")
        # Members moved by a split are that pack's; drive it if they sat idle for a lease.
        idle = ports.policy.lease
        moved = {
            r.pack_id
            for r in members
            if not r.status.is_final and r.pack_id is not None and now - r.updated_at >= idle
        }
        for other in sorted(moved - {pack.pack_id}):
            ports.outbound.send_message(self.driver_for(other))
        mine = [r for r in members if r.pack_id == pack.pack_id]
        if pack.announcing:  # a run stopped between recording a call and its events
            self.save(**listed_again(self.outcomes, pack, mine))
            pack = self.pack
        self.outcomes.announce([r for r in mine if r.status.is_final])
        open_ = [r for r in mine if not r.status.is_final]
        if not open_:
            # Moved a moment ago (the split's drivers may not be out): come back once they are idle.
            recent = [
                r.updated_at
                for r in members
                if not r.status.is_final and r.pack_id not in (None, pack.pack_id)
                and now - r.updated_at < idle
            ]  # fmt: skip
            if recent:
                return self.later((max(recent) + idle - now).total_seconds() + 1, "moved")
            return SendOutcome(OutcomeKind.ACKNOWLEDGED, pack.pack_id, detail="pack done")
        held = [lease for r in open_ if (lease := r.held_until(now)) is not None]
        if held:  # claims of a run that died mid-way: they are released by time only
            return self.later((max(held) - now).total_seconds() + 1, "claimed")
        self.outcomes.fail_many(
            [(r, self.outcomes.expired(r)) for r in open_ if now >= r.valid_until]
        )
        open_ = [r for r in open_ if now < r.valid_until]
        if open_:  # a setting the call needs broke: the pack waits, unclaimed, no slot taken
            until = min(r.valid_until for r in open_)
            recheck = self.outcomes.misconfigured(f"pack {pack.pack_id}", until)
            if recheck is not None:
                note_waiting(self.outcomes, open_)
                return self.later(recheck, "configuration")
        due: list[MessageRecord] = []
        waiting: list[dt.datetime] = []  # when those backing off are due
        for r in open_:
            at = r.next_attempt_at
            if at is not None and (at - now).total_seconds() > BACKOFF_TOLERANCE_SECONDS:
                waiting.append(at)
            else:
                due.append(r)
        if pack.attempt:
            in_call = set(pack.attempt)
            again = [r for r in due if r.message_id in in_call]
            if not again and not any(r.message_id in in_call for r in open_):
                # That call's members are all final: whoever is left goes in a new call.
                self.save(attempt=())
                again = due
            due = again
        # One ``sending`` off the call never went (a claim not handed back): read as queued.
        due = [
            replace(r, status=MessageStatus.QUEUED)
            if r.status is MessageStatus.SENDING and r.message_id not in pack.attempt
            else r
            for r in due
        ]
        # A STOP since accepted fails a member (not one maybe sent: its retry settles it).
        commands = [(r, parse_outbound_message(r.command)) for r in due]
        failing = opted_out(commands, ports.suppressions, checked=True)
        self.outcomes.fail_many(failing)
        due = [r for r in due if r.message_id not in {f.message_id for f, _ in failing}]
        if not due:
            if failing and len(open_) > len(failing):  # that call's last ones: the rest now
                return self.later(0, "pack-rest")
            if waiting:
                return self.later((min(waiting) - now).total_seconds(), "backoff")
            return SendOutcome(OutcomeKind.ACKNOWLEDGED, pack.pack_id)
        self.leftovers = len(open_) - len(due) - len(failing)  # the failed are final
        return self.send(due, now)

    def send(self, due: list[MessageRecord], now: dt.datetime) -> SendOutcome:
        from shared.quota import QuotaDenied

        ports = self.ports
        lease_until = now + ports.policy.lease
        try:
            claims = ports.store.swap_many([(r, claim_changes(r, now, ports.policy)) for r in due])
        except Exception:  # those claimed before it failed go back uncounted (give_back)
            read = ports.store.get_many([r.message_id for r in due])
            mine = [read.get(r.message_id) for r in due]
            self.unsent = [m for m in mine if m and m.claim and m.claim[1] == lease_until]
            raise
        claimed = self.unsent = [c for c in claims if c is not None]
        self.leftovers += len(due) - len(claimed)
        if not claimed:
            return self.later(1, "claim-lost")
        self.repeating = bool(self.pack.attempt)  # this call's RequestId was tried before
        if not self.pack.attempt:
            # A new call, recorded before it is made (the pack id is only a whole first call's).
            ids = [c.message_id for c in claimed]
            first = self.pack.calls == 0 and ids == self.pack.member_ids
            self.save(
                attempt=tuple(ids),
                calls=self.pack.calls + 1,
                call_request_id=None if first else new_pack_id(self.pack.key, ids, now),
            )
        if waits := token_wait(self.outcomes, self.driver, claimed):  # the token first;
            self.release(claimed, error=waits.error, waits_until=waits.due)  # none: not sent
            return self.later(waits.delay, waits.reason)
        commands = [parse_outbound_message(c.command) for c in claimed]  # before the grant
        pack = self.pack
        call = ports.upstream.prepare(commands, request_id=pack.request_id, report_id=pack.pack_id)
        waited, holder = 0.0, slot_holder(None, self.driver.packId)
        for _ in range(2):  # a grant gone stale gets one more try here
            try:
                decision, waited = ports.quota_wait.take(waited, holder)
            except Exception as exc:  # a lasting quota-store error waits as a broken setting does
                if not (waits := quota_store_wait(self.outcomes, self.driver, claimed, exc)):
                    raise
                self.release(claimed, error=waits.error, waits_until=waits.due)
                return self.later(waits.delay, waits.reason)
            if isinstance(decision, QuotaDenied):
                self.release(claimed)
                return self.later(ports.quota_wait.come_back_in(decision, holder), "quota")
            needed, now = dt.timedelta(seconds=ports.policy.call_seconds), ports.now()
            if lease_until - now < needed:  # a very slow claim or quota wait
                self.release(claimed)
                return self.later(0, "lease")
            if any(now >= c.valid_until for c in claimed):  # the waits took one past it:
                self.release(claimed)  # the next run fails it expired
                return self.later(0, "expired")
            try:
                self.unsent = []  # from here on it may reach upstream
                return self.call(claimed, decision, call)
            except StaleGrant as exc:
                self.unsent = claimed
                log.warning("pack %s: %s; not sent with it", self.pack.pack_id, exc)
        self.release(claimed)
        return self.later(STALE_GRANT_RETRY_SECONDS, "stale-grant", OutcomeKind.DEFERRED)

    def call(self, claimed: list[MessageRecord], grant: QuotaGrant, call: Call) -> SendOutcome:
        result = self.ports.upstream.attempt(grant, call, links=[c.traceparent for c in claimed])
        if isinstance(result, Sent):
            if result.duplicate:
                log.info("pack %s: RequestId already used upstream: sent", self.pack.pack_id)
            return self.sent(claimed, result)
        if isinstance(result, Transient):
            return self.transient(claimed, result)
        return self.rejected(claimed, result)

    # --- outcomes ----------------------------------------------------------------------------

    def sent(self, claimed: list[MessageRecord], sent: Sent) -> SendOutcome:
        """Each member's own share of upstream's answer (by address), recorded 100 members a
        transaction, then the events. After a 409, members missing from the original answer
        were not in the call that got through: they go again with a new RequestId."""
        ports, now = self.ports, self.ports.now()
        body = sent.body
        addresses = {m.message_id: m.addresses for m in self.pack.members}
        listed = [(c.message_id, addresses.get(c.message_id, ())) for c in claimed]
        estimates = {c.message_id: c.part_count for c in claimed}
        answer = split_answer(body, listed, duplicate=sent.duplicate, estimates=estimates)
        recipient_ids = {**self.pack.recipient_ids, **answer.recipient_ids}
        rid = self.pack.request_id  # what upstream got: the call's RequestId
        missing = [c for c in claimed if c.message_id in answer.missing]
        writes = [
            (c, sent_changes(c, answer.shares[c.message_id], duplicate=sent.duplicate, now=now))
            for c in claimed
            if c.message_id not in answer.missing
        ]
        # 1. The pack first: recipient ids (reports may come at once) and who is ``announcing``.
        adding = [m.message_id for m, _ in writes if m.message_id not in self.pack.announcing]
        self.save(recipient_ids=recipient_ids, announcing=(*self.pack.announcing, *adding))
        # 2. The records, marked announced (slots learn their ids from the first report).
        done = ports.store.swap_many(
            [(m, {**c, "request_id": rid, "announced": True}) for m, c in writes]
        )
        recorded = [d for d in done if d is not None]
        lost = [m.message_id for (m, _), d in zip(writes, done, strict=True) if d is None]
        # 3. The events.
        list(storage_pool().map(self.outcomes.emit, recorded))
        if lost:  # finished by someone else meanwhile (a lease that ran out): theirs stands
            self.outcomes.announce(list(ports.store.get_many(lost).values()))
        # 4. Done: a later call gets its own RequestId; members this run lacked repeat this one.
        out, ran = {r.message_id for r in recorded}, {c.message_id for c in claimed}
        self.save(attempt=tuple(i for i in self.pack.attempt if i not in ran),
                  announcing=tuple(i for i in self.pack.announcing if i not in out))  # fmt: skip
        self.release(missing)
        log.info(
            "pack %s sent: %d of %d members%s",
            self.pack.pack_id,
            len(recorded),
            len(claimed),
            ", duplicate RequestId" if sent.duplicate else "",
        )
        if missing or self.leftovers:
            self.later(0, "pack-rest")
        return SendOutcome(
            OutcomeKind.SENT, self.pack.pack_id, detail=f"pack of {len(recorded)} messages"
        )

    def transient(self, claimed: list[MessageRecord], failed: Transient) -> SendOutcome:
        """Every member backs off together and keeps the call's membership and RequestId;
        members out of attempts or validity fail."""
        ports = self.ports
        delay = self.outcomes.retry_delay(max(c.attempts for c in claimed), failed)
        now = ports.now()
        next_at = now + dt.timedelta(seconds=delay)
        failing: list[tuple[MessageRecord, FailureInfo]] = []
        backing: list[tuple[MessageRecord, Mapping[str, Any]]] = []
        for member in claimed:
            error = failed.error(member.attempts)
            final = give_up(
                member,
                error,
                failed.title,
                next_at,
                max_attempts=ports.policy.max_attempts,
                maybe_sent=not failed.certainly_not_sent,
            )
            if final is not None:
                failing.append((member, final))
            else:
                backing.append((member, backoff_changes(failed, error, next_at, now)))
        ports.store.swap_many(backing)
        self.outcomes.fail_many(failing)
        log.warning(
            "pack %s attempt failed (%s); retry in %.1f s", self.pack.pack_id, failed.title, delay
        )
        if backing or self.leftovers:
            return self.later(delay if backing else 0, failed.code, OutcomeKind.RETRY_SCHEDULED)
        return SendOutcome(OutcomeKind.FAILED, self.pack.pack_id, detail=failed.code)

    def rejected(self, claimed: list[MessageRecord], refused: Refused) -> SendOutcome:
        """Upstream refused the whole call (nothing sent): the member it names fails alone, the
        rest go again; naming nobody, the pack splits or fails whole (docs/sending.md, "Bulk
        sends: batch packs", failures)."""
        addresses = {m.message_id: m.addresses for m in self.pack.members}
        blamed = refused.blamed({c.message_id: addresses.get(c.message_id, ()) for c in claimed})

        def failure(member: MessageRecord) -> FailureInfo:
            return refusal_failure(refused, member, named=member.message_id in blamed)

        offenders = [c for c in claimed if c.message_id in blamed]
        # A repeat of a call that may have gone through: it may refuse the repeat itself.
        repeat = self.repeating and any(c.maybe_sent for c in claimed)
        if not offenders and (len(claimed) == 1 or repeat):
            offenders = claimed

        # This run's members leave the call (a repeat's only once failed: a retry repeats it).
        ran = {c.message_id for c in claimed}
        if not repeat:
            self.save(attempt=tuple(i for i in self.pack.attempt if i not in ran))
        said = loggable_text(refused.message or "")
        if offenders:
            self.outcomes.fail_many([(m, failure(m)) for m in offenders])
            rest = [c for c in claimed if c not in offenders]
            self.release(rest)
            if repeat:
                self.save(attempt=tuple(i for i in self.pack.attempt if i not in ran))
            log.warning(
                "pack %s refused (%d): %s; %d member(s) failed, %d go again",
                self.pack.pack_id, refused.status, said, len(offenders), len(rest),
            )  # fmt: skip
            if rest or self.leftovers:
                return self.later(0, "pack-rejected")
            return SendOutcome(OutcomeKind.FAILED, self.pack.pack_id, detail="upstream-rejected")
        sibling = self.packs.get(self.pack.sibling) if self.pack.sibling else None
        whole = refused.about_the_request or (
            refused.status == 400 and sibling is not None and sibling.refused
        )
        if whole:
            self.outcomes.fail_many([(m, failure(m)) for m in claimed])
            log.warning(
                "pack %s refused (%d): %s; its %d member(s) failed",
                self.pack.pack_id, refused.status, said, len(claimed),
            )  # fmt: skip
            if self.leftovers:
                return self.later(0, "pack-rejected")
            return SendOutcome(OutcomeKind.FAILED, self.pack.pack_id, detail="upstream-rejected")
        self.save(refused=refused.status == 400)  # a 413 says nothing of its sibling's 400
        self.split(claimed)
        log.warning(
            "pack %s refused (%d) naming no recipient: split in two to find the one at fault",
            self.pack.pack_id, refused.status,
        )  # fmt: skip
        if self.leftovers:
            return self.later(0, "pack-split")
        return SendOutcome(OutcomeKind.DEFERRED, self.pack.pack_id, detail="pack-split")

    def split(self, claimed: list[MessageRecord]) -> None:
        """Two new packs of the claimed members (halves, in order), recorded, their members
        moved to them, and a driver for each."""
        ports, now = self.ports, self.ports.now()
        halves = (claimed[: len(claimed) // 2], claimed[len(claimed) // 2 :])
        ids = [[c.message_id for c in part] for part in halves]
        pack_ids = [new_pack_id(self.pack.key, part, now) for part in ids]
        by_id = {m.message_id: m for m in self.pack.members}
        packs = [
            Pack(
                pack_id=pack_id,
                key=self.pack.key,
                members=tuple(by_id[i] for i in part),
                created_at=now,
                batch_id=self.pack.batch_id,
                sibling=sibling,
            )
            for pack_id, part, sibling in zip(pack_ids, ids, reversed(pack_ids), strict=True)
        ]
        for pack in packs:
            self.packs.save(pack)
        for pack, part in zip(packs, halves, strict=True):
            self.release(part, pack_id=pack.pack_id)
        for pack in packs:
            ports.outbound.send_message(self.driver_for(pack.pack_id))

    # --- helpers -----------------------------------------------------------------------------

    def release(
        self, records: list[MessageRecord], error: FailureInfo | None = None, **extra: Any
    ) -> None:
        """Hand claims back (no call was made for them): queued, the attempt not counted,
        ``error`` their wait's LastError where no failed attempt's stands (:func:`noted`)."""
        if records:
            now = self.ports.now()
            self.ports.store.swap_many([(r, given_back(r, now, error, **extra)) for r in records])
