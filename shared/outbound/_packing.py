"""Packs formed from lanes and the queue index: queued single sends that go upstream in one call.

A worker takes the pack key's leader lease, claims further waiting messages of the key, records
the :class:`Pack` (its id is the call's ``RequestId``) and only then takes a quota slot and calls.
See docs/sending.md, "Packing and bulk sends" and "Lanes", for the rules and guarantees."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from time import monotonic
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared.logs import loggable_text
from shared.messages import (
    FailureInfo,
    IndexEntry,
    MessageRecord,
    MessageStatus,
    Pack,
    PackMember,
    in_lane,
    index_row_key,
    lane_opens,
    lane_partition,
    lane_time,
    new_pack_id,
)
from shared.outbound._attempt import Call, Refused, Sent, Transient, recipient_ids, split_answer
from shared.outbound._giving_up import given_back, handed_back, refusal_failure
from shared.outbound._models import OutboundMessage, parse_outbound_message
from shared.outbound._outcomes import (
    OutcomeKind,
    Outcomes,
    SendOutcome,
    claim_changes,
    same_claim,
    sent_changes,
    storage_pool,
)
from shared.outbound._ports import SendPorts
from shared.outbound._records import command_addresses, opted_out

if TYPE_CHECKING:
    from shared.quota import QuotaGrant

__all__ = ["PACK_MEMBER_RECHECK_SECONDS", "IndexPacks"]

log = logging.getLogger("shared.outbound.sender")

#: A copy of a packed message comes back this soon: the pack's call is usually over by then.
PACK_MEMBER_RECHECK_SECONDS = 10.0
#: One leader per pack key: its lease (given up once its pack is formed), and how soon a
#: message that found another leader comes back (usually packed by then).
LEAD_SECONDS = 15.0
LEAD_RECHECK_SECONDS = 10.0
#: While the quota is full, how often a message that found another leader looks again here.
LEAD_POLL_SECONDS = 0.2
#: A sweep's limits per invocation (docs/sending.md, "Sweep"): packs, seconds, lanes walked.
SWEEP_PACKS = 20
SWEEP_SECONDS = 60.0
SWEEP_LANES = 5
#: Outcomes after which a sweep leads the next one (it went, or ended meanwhile); not a deferral.
_SWEEP_GOES_ON = frozenset({OutcomeKind.SENT, OutcomeKind.FAILED, OutcomeKind.ACKNOWLEDGED})

Members = list[tuple[MessageRecord, OutboundMessage]]


class IndexPacks:
    """Forms, sends and settles packs of indexed single sends."""

    def __init__(self, ports: SendPorts, outcomes: Outcomes) -> None:
        self.ports = ports
        self.outcomes = outcomes
        self._leading: dict[str, str] = {}  # message id -> ETag of its key's lease

    def lead(
        self, record: MessageRecord, command: OutboundMessage, now: dt.datetime
    ) -> SendOutcome | None:
        """Before a never-attempted packable message is claimed: take its key's leader lease
        (None), or come back shortly (deferred) while another message leads a pack of that key
        (while the quota is full, after waiting here, up to the in-process quota wait, for the
        lease: slots that free meanwhile are used)."""
        key = record.pack_key
        if key is None or record.message_id in self._leading:
            return None
        etag, wait = self.ports.packs.lead(key, now, now + dt.timedelta(seconds=LEAD_SECONDS))
        if etag is None and self.ports.quota_wait.full_lately(LEAD_RECHECK_SECONDS):
            for _ in range(int(self.ports.policy.quota_wait / LEAD_POLL_SECONDS + 1e-9)):
                self.ports.clock.sleep(LEAD_POLL_SECONDS)
                at = self.ports.now()
                etag, wait = self.ports.packs.lead(key, at, at + dt.timedelta(seconds=LEAD_SECONDS))
                if etag is not None:
                    break
        if etag is not None:
            self._leading[record.message_id] = etag
            return None
        delay = min(wait, LEAD_RECHECK_SECONDS)
        return self.outcomes.requeue(command, record.attempts, delay, OutcomeKind.DEFERRED, "lead")

    def sweep(
        self,
        led: MessageRecord,
        lead: Callable[[MessageRecord, OutboundMessage], SendOutcome],
        *,
        report: bool = False,
    ) -> tuple[MessageRecord, OutboundMessage] | None:
        """After ``led`` led a pack (or a lane's trigger came): lead further packs of its key
        (``lead``: the sender's path) while never-attempted messages wait in its index or lanes,
        until one cannot lead now. With ``report``, the next message still waiting when the
        sweep stopped for the quota or its limits."""
        ends = monotonic() + SWEEP_SECONDS
        for _ in range(SWEEP_PACKS):
            if monotonic() > ends or self.ports.quota_wait.hint() > 0:
                break
            next_one = self._next_leader(led)
            if next_one is None:
                return None
            outcome = lead(*next_one)
            if outcome.kind not in _SWEEP_GOES_ON:
                return None
        return self._next_leader(led) if report else None

    def _next_leader(self, led: MessageRecord) -> tuple[MessageRecord, OutboundMessage] | None:
        """The oldest message of ``led``'s key that was never attempted, with its command: in
        the lanes open from ``led``'s minute on (at most :data:`SWEEP_LANES`), or in the index
        (stale rows before it are dropped); None when there is none."""
        key = led.pack_key
        assert key is not None
        found: MessageRecord | None = None
        if (accepted := lane_time(led.message_id)) is not None:
            at, now = accepted, self.ports.now()
            for _ in range(SWEEP_LANES):  # up to the lane open now (a later one: its trigger)
                waiting = self.ports.store.lane_queued(lane_partition(key, at), 1)
                at += dt.timedelta(minutes=1)
                if waiting or lane_opens(at) > now:
                    found = waiting[0] if waiting else None
                    break
        else:
            found = self._oldest_indexed(key)
        if found is None or found.status is not MessageStatus.QUEUED or found.attempts:
            return None
        try:
            return found, parse_outbound_message(found.command)
        except (ValidationError, ValueError):
            return None

    def _oldest_indexed(self, key: str) -> MessageRecord | None:
        stale: list[str] = []
        try:
            for entry in self.ports.packs.candidates(key, limit=8):
                record = self.ports.store.get(entry.message_id)
                if record is None or record.status.is_final or record.pack_id is not None:
                    stale.append(entry.row_key)
                    continue
                return record
            return None
        finally:
            self.ports.packs.unindex(key, stale)

    def unlead(self, record: MessageRecord) -> None:
        """Give up the leader lease ``record`` took (if it did): its pack is formed."""
        etag = self._leading.pop(record.message_id, None)
        if etag is not None and record.pack_key is not None:
            self.ports.packs.unlead(record.pack_key, etag)

    def turn(
        self, record: MessageRecord, command: OutboundMessage, now: dt.datetime
    ) -> tuple[SendOutcome | None, MessageRecord]:
        """For a message in a pack: whether this copy may retry it now (only its first non-final
        member, after its backoff). A pack never recorded never reached upstream: the message
        leaves it, its claim handed back uncounted (called only once that lease is over)."""
        assert record.pack_id is not None
        pack = self.ports.packs.get(record.pack_id)
        if pack is None:
            if record.status is not MessageStatus.SENDING:
                left = self.ports.store.swap(record, pack_id=None, updated_at=now)
                return None, left or (self.ports.store.get(record.message_id) or record)
            back = self.ports.store.swap(record, status=MessageStatus.QUEUED, pack_id=None,
                                         updated_at=now, **handed_back(record))  # fmt: skip
            # Back once the other members' copies handed theirs back too: one leads them all.
            return self.outcomes.requeue(
                command, (back or record).attempts, 1.0, OutcomeKind.DEFERRED, "pack-lost"
            ), back or record
        if record.next_attempt_at is not None and record.next_attempt_at > now:
            delay = (record.next_attempt_at - now).total_seconds()
            return self.outcomes.requeue(
                command, record.attempts, delay, OutcomeKind.DEFERRED, "pack-backoff"
            ), record
        for member in pack.members:
            if member.message_id == record.message_id:
                return None, record
            other = self.ports.store.get(member.message_id)
            if other is not None and not other.status.is_final and other.pack_id == pack.pack_id:
                again = PACK_MEMBER_RECHECK_SECONDS
                return self.outcomes.requeue(
                    command, record.attempts, again, OutcomeKind.DEFERRED, "pack-member"
                ), record
        return None, record

    def gather(
        self, leader: MessageRecord, command: OutboundMessage
    ) -> tuple[Pack | None, Members]:
        """Claim other queued messages with the leader's pack key into a new pack, recorded
        before the call; (None, []) when there are none (the leader goes alone)."""
        key = leader.pack_key
        if key is None:
            return None, []
        try:
            return self._gather(leader, command, key)
        finally:
            self.unlead(leader)

    def _gather(
        self, leader: MessageRecord, command: OutboundMessage, key: str
    ) -> tuple[Pack | None, Members]:
        packs = self.ports.packs
        limit = self.ports.policy.pack_max_recipients

        lane = in_lane(leader.message_id)
        own_row = "" if lane else index_row_key(leader)
        if lane:  # lanes are their own index: the leader's minute's, the one before, the next
            waiting: list[MessageRecord] = []  # once it opened (by this clock, or the leader's)
            accepted = lane_time(leader.message_id) or leader.created_at
            opened = max(accepted, self.ports.now())
            for at in (accepted + dt.timedelta(minutes=shift) for shift in (-1, 0, 1)):
                if (room := limit + 64 - len(waiting)) and lane_opens(at) <= opened:
                    waiting += self.ports.store.lane_queued(lane_partition(key, at), room)
            rows = [IndexEntry(key, "", r.message_id, r.recipient_count) for r in waiting]
        else:
            rows = packs.candidates(key, limit=limit + 64)
        taken = leader.recipient_count
        picked: list[tuple[str, str]] = []
        for entry in rows:
            if entry.message_id == leader.message_id or taken + entry.recipient_count > limit:
                continue
            picked.append((entry.row_key, entry.message_id))
            taken += entry.recipient_count
        if not picked or leader.recipient_count >= limit:
            packs.unindex(key, [own_row] if own_row else [])
            return None, []
        now = self.ports.now()
        pack_id = new_pack_id(key, [leader.message_id, *(m for _, m in picked)], now)
        addresses = set(command_addresses(command))
        lease_until = now + self.ports.policy.lease
        pool = storage_pool()
        if lane:
            read = {r.message_id: r for r in waiting}
            found = [read.get(m) for _, m in picked]
        else:
            found = list(pool.map(lambda item: self.ports.store.get(item[1]), picked))
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
        out = self._opted_out([(r, c) for _, r, c in chosen])
        stale += [row for row, r, _ in chosen if r.message_id in out]
        chosen = [c for c in chosen if c[1].message_id not in out]

        claiming: list[tuple[MessageRecord, Mapping[str, Any]]] = [
            (r, {**claim_changes(r, now, self.ports.policy), "pack_id": pack_id})
            for _, r, _ in chosen
        ]
        try:
            if lane:  # 100 claims a transaction, each on its record's ETag
                claims = self.ports.store.swap_many(claiming)
            else:
                claims = list(pool.map(lambda c: self.ports.store.swap(c[0], **c[1]), claiming))
            members: Members = []
            for (row_key, _, member_command), done in zip(chosen, claims, strict=True):
                if done is not None:
                    members.append((done, member_command))
                    stale.append(row_key)
            packs.unindex(key, [row for row in stale if row])
            if not members:
                return None, []
            everyone = [(leader, command), *members]
            mine = tuple(PackMember(r.message_id, tuple(command_addresses(c))) for r, c in everyone)
            pack = Pack(pack_id=pack_id, key=key, members=mine, created_at=now)
            packs.save(pack)  # the membership, before the leader (and so the call) names it
            led = self.ports.store.swap(leader, pack_id=pack_id, updated_at=now)
            if led is None:  # the leader's claim was taken over meanwhile
                raise RuntimeError(f"message {leader.message_id}: claim lost while forming a pack")
        except Exception:  # no call was made: every claim this gather took goes back
            reread = pool.map(lambda i: self.ports.store.get(i[1].message_id), chosen)
            ours = [r for r in reread if r and r.pack_id == pack_id and r.claim == (1, lease_until)]
            self.release(ours, False)
            raise
        log.info("message %s leads pack %s of %d messages", leader.logged_id, pack_id,
                 len(members) + 1)  # fmt: skip
        return pack, [(led, command), *members]

    def regather(
        self, leader: MessageRecord, command: OutboundMessage
    ) -> tuple[Pack | None, Members]:
        """Claim the members of the leader's recorded pack again (a retry: same membership,
        same RequestId); members that are final meanwhile stay out, expired ones fail."""
        assert leader.pack_id is not None
        pack = self.ports.packs.get(leader.pack_id)
        if pack is None:
            return None, []
        now = self.ports.now()
        others = [m.message_id for m in pack.members if m.message_id != leader.message_id]
        pool = storage_pool()
        read = [
            r for r in pool.map(self.ports.store.get, others) if r and r.pack_id == pack.pack_id
        ]
        out = self._opted_out([(r, parse_outbound_message(r.command)) for r in read
                               if now < r.valid_until and r.held_until(now) is None])  # fmt: skip

        def claim(record: MessageRecord) -> tuple[MessageRecord, OutboundMessage] | None:
            held = record.held_until(now) is not None  # by someone else (a stale worker): not ours
            if record.status.is_final or record.message_id in out or held:
                return None
            if now >= record.valid_until:
                self.outcomes.fail(record, self.outcomes.expired(record))
                return None
            done = self.ports.store.swap(record, **claim_changes(record, now, self.ports.policy))
            return None if done is None else (done, parse_outbound_message(done.command))

        claimed = [c for c in pool.map(claim, read) if c is not None]
        return pack, [(leader, command), *claimed]

    def _opted_out(self, members: Members) -> set[str]:
        """Fail the ``members`` whose recipients opted out since they were accepted (a STOP:
        :func:`opted_out`): they leave the pack, never sent. Their ids."""
        failing = opted_out(members, self.ports.suppressions, checked=True)
        self.outcomes.fail_many(failing)
        return {r.message_id for r, _ in failing}

    def release(self, records: Sequence[MessageRecord], keep_pack: bool, **changes: Any) -> None:
        """Hand claimed members back (no call made): queued, the attempt not counted, with
        ``changes``, out of their pack (packable again) unless ``keep_pack``. Lane members go
        100 a transaction; one changed since goes back on its own."""
        laned = [r for r in records if in_lane(r.message_id)]
        back = [(r, self._back(r, MessageStatus.QUEUED, keep_pack, **changes)) for r in laned]
        try:  # a lost answer (or a storage error): each goes back on its own, read again
            done = self.ports.store.swap_many(back) if back else []
        except Exception:
            done = [None] * len(back)
        alone = [r for r in records if not in_lane(r.message_id)]
        alone += [r for r, d in zip(laned, done, strict=True) if d is None]
        one = partial(self.release_one, status=MessageStatus.QUEUED, keep_pack=keep_pack, **changes)
        released = [r for r in [*done, *storage_pool().map(one, alone)] if r is not None]
        if not keep_pack:
            self.ports.packs.index(released)

    def release_one(self, record: MessageRecord, status: MessageStatus, *, keep_pack: bool,
                    **changes: Any) -> MessageRecord | None:  # fmt: skip
        update = self._back(record, status, keep_pack, **changes)
        return self.outcomes.swap_until(record, lambda r: same_claim(record, r), **update)

    def _back(self, record: MessageRecord, status: MessageStatus, keep_pack: bool,
              error: FailureInfo | None = None, **changes: Any) -> Mapping[str, Any]:  # fmt: skip
        """The changes that hand ``record``'s claim back as ``status`` (LastError ``error``)."""
        pack: dict[str, Any] = {} if keep_pack else {"pack_id": None}  # out of it: packs again
        return given_back(record, self.ports.now(), error, status, **changes, **pack)

    def prepare(self, pack: Pack, members: Members) -> Call:
        """The pack's call, built before its grant is taken (:meth:`Upstream.prepare`)."""
        commands, rid = [c for _, c in members], pack.request_id
        return self.ports.upstream.prepare(commands, request_id=rid, report_id=pack.pack_id)

    def attempt(self, pack: Pack, members: Members, grant: QuotaGrant, call: Call) -> SendOutcome:
        """One upstream call (``call``: :meth:`prepare`) for the whole pack; each member's outcome
        recorded on its own. Raises :class:`StaleGrant` (nothing sent, nothing recorded) if
        ``grant`` went stale."""
        links = [r.traceparent for r, _ in members]
        result = self.ports.upstream.attempt(grant, call, links=links)
        if isinstance(result, Sent):
            if result.duplicate:
                log.info("pack %s: RequestId already used upstream: sent", pack.pack_id)
            return self._sent(pack, members, result)
        if isinstance(result, Transient):
            outcome = self._transient(pack, members, result)
        else:
            outcome = self._rejected(pack, members, result)
        if pack.announcing and outcome.kind is not OutcomeKind.RETRY_SCHEDULED:
            # It ends here (refused, out of attempts): no retry's 409 sends a crashed run's events
            self._announce_again(pack, members)
        return outcome

    def _sent(self, pack: Pack, members: Members, sent: Sent) -> SendOutcome:
        """Record each member sent with its share of upstream's answer (the pack keeps the
        recipient ids for delivery reports); one a duplicate's original lacks is handed back."""
        addresses = {m.message_id: m.addresses for m in pack.members}
        listed = [(r.message_id, addresses.get(r.message_id, ())) for r, _ in members]
        estimates = {r.message_id: r.part_count for r, _ in members}
        answer = split_answer(sent.body, listed, duplicate=sent.duplicate, estimates=estimates)
        recipient_ids = {**pack.recipient_ids, **answer.recipient_ids}
        # The leader is recorded last: a crash before that retries the pack and its ``announcing``.
        others = [r.message_id for r, _ in members[1:] if r.message_id not in answer.missing]
        announcing = tuple(dict.fromkeys((*pack.announcing, *others)))
        if recipient_ids != dict(pack.recipient_ids) or announcing != pack.announcing:
            self.ports.packs.save(replace(pack, recipient_ids=recipient_ids, announcing=announcing))
        if sent.duplicate:
            self._announce_again(pack, members)

        def record(item: tuple[MessageRecord, OutboundMessage]) -> SendOutcome:
            member, command = item
            if member.message_id in answer.missing:
                released = self.release_one(member, MessageStatus.QUEUED, keep_pack=False)
                if released is not None:
                    self.ports.packs.index([released])
                return SendOutcome(OutcomeKind.DEFERRED, member.message_id, detail="not-in-pack")
            own, leads = answer.shares[member.message_id], member is members[0][0]
            return self.outcomes.sent(member, own, command_addresses(command),
                                      duplicate=sent.duplicate, announced=not leads)  # fmt: skip

        together = [m for m in members[1:] if m[0].message_id not in answer.missing]
        if together and in_lane(together[0][0].message_id):
            outcomes = self._sent_together(together, answer.shares, sent.duplicate)
            outcomes += [record(m) for m in members[1:] if m[0].message_id in answer.missing]
        else:
            outcomes = list(storage_pool().map(record, members[1:]))
        first = record(members[0])
        done = sum(1 for o in [first, *outcomes] if o.kind is OutcomeKind.SENT)
        quiet = sum(1 for o in outcomes if o.detail == "no line")  # the others log their own
        log.info(
            "pack %s sent: %d of %d members, %d with no line of their own%s", pack.pack_id, done,
            len(members), quiet, ", duplicate RequestId" if sent.duplicate else "",
        )  # fmt: skip
        if first.kind is OutcomeKind.DEFERRED:
            return self.outcomes.requeue(members[0][1], 0, 0, OutcomeKind.DEFERRED, "not-in-pack")
        return replace(first, detail=f"pack {pack.pack_id}: {len(members)} messages")

    def _sent_together(
        self, members: Members, shares: Mapping[str, Mapping[str, Any]], duplicate: bool
    ) -> list[SendOutcome]:
        """Members of one lane recorded sent and announced 100 a transaction, then their
        events; one whose record changed meanwhile goes the way of a single member."""
        now, to = self.ports.now(), {r.message_id: command_addresses(c) for r, c in members}
        items: list[tuple[MessageRecord, Mapping[str, Any]]]
        items = [(r, {**sent_changes(r, shares[r.message_id], duplicate=duplicate, now=now),
                      "announced": True}) for r, _ in members]  # fmt: skip
        ids = {i: recipient_ids(shares[i], addresses) for i, addresses in to.items()}
        done = self.ports.store.swap_many(items, recipient_ids=ids)

        def settle(
            item: tuple[tuple[MessageRecord, OutboundMessage], MessageRecord | None],
        ) -> SendOutcome:
            (member, _), written = item
            if written is None:
                own, addresses = shares[member.message_id], to[member.message_id]
                return self.outcomes.sent(member, own, addresses, duplicate=duplicate,
                                          announced=True)  # fmt: skip
            self.outcomes.emit(written)
            return SendOutcome(OutcomeKind.SENT, member.message_id, detail="no line")

        return list(storage_pool().map(settle, zip(members, done, strict=True)))

    def announce_listed(self, pack_id: str) -> None:
        """The events of the members ``pack_id`` lists as recorded sent, perhaps unannounced
        (called when its leader's copy ends without retrying the pack, e.g. expired)."""
        pack = self.ports.packs.get(pack_id)
        if pack is not None and pack.announcing:
            self._announce_again(pack)

    def _announce_again(
        self, pack: Pack, members: Sequence[tuple[MessageRecord, OutboundMessage]] = ()
    ) -> None:
        """The events of the members ``pack`` lists as recorded sent (by a run that may have
        stopped before sending them; same event ids: consumers de-duplicate), but ``members``."""
        going = {r.message_id for r, _ in members}
        found = storage_pool().map(
            self.ports.store.get, [i for i in pack.announcing if i not in going]
        )
        list(storage_pool().map(self.outcomes.emit, [r for r in found if r is not None]))

    def _transient(self, pack: Pack, members: Members, failed: Transient) -> SendOutcome:
        """A pack's call failed transiently: every member keeps the pack and backs off
        together; the leader's copy comes back to retry it (same RequestId)."""
        leader, command = members[0]
        delay = self.outcomes.retry_delay(max(r.attempts for r, _ in members), failed)
        now = self.ports.now()
        next_at = now + dt.timedelta(seconds=delay)

        def back_off(item: tuple[MessageRecord, OutboundMessage]) -> SendOutcome:
            return self.outcomes.back_off(item[0], failed, next_at)

        list(storage_pool().map(back_off, members[1:]))
        first = back_off(members[0])
        log.warning("pack %s attempt failed (%s); retry in %.1f s", pack.pack_id, failed.title,
                    delay)  # fmt: skip
        if first.kind is not OutcomeKind.RETRY_SCHEDULED:
            return first
        return self.outcomes.requeue(
            command, leader.attempts, delay, OutcomeKind.RETRY_SCHEDULED, failed.code
        )

    def _rejected(self, pack: Pack, members: Members, refused: Refused) -> SendOutcome:
        """Upstream refused the whole call (nothing sent). The member it names fails; the others
        go back for a new pack (new RequestId). Naming none: a refusal of the request fails every
        member; a 400 or 413 sends each alone from now on, unless an attempt may have gone
        through (all fail)."""
        leader, command = members[0]
        blamed = refused.blamed({r.message_id: command_addresses(c) for r, c in members})
        offenders, doubt = blamed, any(r.maybe_sent for r, _ in members)
        if not offenders and (len(members) == 1 or doubt or refused.about_the_request):
            offenders = {r.message_id for r, _ in members}
        outcomes: dict[str, SendOutcome] = {}

        def settle(item: tuple[MessageRecord, OutboundMessage]) -> None:
            if (member := item[0]).message_id in offenders:
                failure = refusal_failure(refused, member, named=member.message_id in blamed)
                outcomes[member.message_id] = self.outcomes.fail(member, failure)
                return
            changes: dict[str, Any] = {} if offenders else {"pack_key": None}
            released = self.release_one(member, MessageStatus.QUEUED, keep_pack=False, **changes)
            if released is not None and offenders:
                self.ports.packs.index([released])
            elif released is not None and member is not leader:  # alone now: no leader wakes it
                self.outcomes.requeue(item[1], 0, 0, OutcomeKind.DEFERRED, "pack-rejected")

        list(storage_pool().map(settle, members))

        log.warning(
            "pack %s refused (%d): %s; %d member(s) failed, the rest go on",
            pack.pack_id, refused.status, loggable_text(refused.message or ''), len(offenders),
        )  # fmt: skip
        if leader.message_id in outcomes:
            return outcomes[leader.message_id]
        return self.outcomes.requeue(command, 0, 0, OutcomeKind.DEFERRED, "pack-rejected")
