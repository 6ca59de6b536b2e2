"""Dead letters as operations: list, show, re-drive and purge, indexed ones and poison ones.

Our dead letters come from the index (:mod:`shared.deadletters`): paged, filtered by queue,
reason and age in the query. The host's ``-poison`` queues carry no reason and are not indexed
(the host writes them, not us): they are peeked (32 per queue, the service's limit), shown with
reason ``poison`` and their dequeue count, on the first page only.

A re-drive puts a letter's message back on the queue it came from. An outbound send command
goes through the message core: a ``failed`` record is moved back to ``queued`` by
:meth:`MessageStore.redrive` (with a fresh validity) before its command is enqueued with its
original message id, so its idempotency key still finds it; a record that was sent or cancelled
meanwhile is left alone and nothing is enqueued (``skipped``).

An indexed letter is re-driven under a claim on its index row (:meth:`DeadLetterIndex.claim`):
of two re-drives at once one enqueues it, the other answers ``in-progress``. Once its copy is
enqueued the row says so (``RedrivenAt``), then the letter's queue message and row are deleted
(the row only with its message: while another scan holds that, both stay, and a purge is a 409);
a re-drive of a letter whose deletion failed or was put off only deletes it. docs/operations.md
says what a second copy does on each queue when one still goes (a claim that ended before its
re-drive recorded the copy; a poison message not yet kept whose deletion failed). A poison
message not yet kept is re-driven or purged while this call holds it received
(:meth:`PoisonQueues.scan`), so no other scan takes it meanwhile; one the scan does not get is a
409, never a success.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from shared import outbound
from shared.clock import utcnow
from shared.deadletters import (
    DEAD_LETTER_QUEUES,
    DeadLetterEntry,
    DeadLetterFilter,
    DeadLetterIndex,
)
from shared.events import MESSAGE_REDRIVEN, make_event
from shared.logs import redacted_traceback
from shared.messages import MessageRecord, MessageStatus, MessageStore
from shared.names import DLR_FORWARD_QUEUE, EVENTS_QUEUE, INBOUND_DELIVERIES_QUEUE, OUTBOUND_QUEUE
from shared.ops._poison import (
    PEEK_LIMIT,
    POISON_QUEUES,
    POISON_SOURCES,
    REQUEST_RECEIVE_LIMIT,
    Budget,
    PoisonQueues,
    message_id_of,
    never_expires,
    poison_view,
    unseen_poison,
)
from shared.ops._views import POISON, DeadLetterView, Handled, HandledKind, view_of_entry
from shared.payloads import PayloadStore
from shared.problems import Problem, ProblemType
from shared.storage import ensured_queue
from shared.suppressions import SuppressionStore, refuse_suppressed

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient, QueueMessage

    from shared.settings import Settings

__all__ = [
    "PEEK_LIMIT",
    "POISON",
    "POISON_QUEUES",
    "POISON_SOURCES",
    "DeadLetterDesk",
    "DeadLetterView",
    "Handled",
    "HandledKind",
]

log = logging.getLogger("shared.ops")

#: How long a re-drive's claim on a letter lasts: one whose caller died meanwhile (before its
#: copy went on its queue, or before the row could say so) may be re-driven again after it.
REDRIVE_CLAIM = dt.timedelta(minutes=5)
#: A bulk re-drive looks at up to this many times its limit (the letters it leaves, kept or
#: their original gone, stay first in the index); the next call goes on after the last it saw.
KEPT_PASSED_OVER = 5
Bulk = tuple[list[Handled], bool, str | None]  # handled, more left, the last letter looked at
#: A queue message's id (``uuid.UUID`` would also take braces, blanks and underscores).
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
#: What a re-drive or purge does with one letter (or a poison message it holds).
Act = Callable[[DeadLetterView], Handled]
#: A poison message not yet kept, acted on and then not deleted.
MISSED = "its poison message was not deleted: another call received it meanwhile"
#: Why a letter's queue message could not be removed now.
HELD = (
    "another call or the PoisonKeeper timer holds its queue message (or it is further back in "
    f"its queue than the {REQUEST_RECEIVE_LIMIT} messages one call looks at)"
)


class DeadLetterDesk:
    """Lists, re-drives and purges dead letters. Build with :meth:`from_settings`."""

    def __init__(
        self,
        *,
        index: DeadLetterIndex,
        store: MessageStore,
        queue: Callable[[str], QueueClient],
        validity: dt.timedelta,
        clock: Callable[[], dt.datetime] = utcnow,
        suppressions: SuppressionStore,
        payloads: PayloadStore,
        settle_send: Callable[[str], bool | None],
        owns_send: Callable[[str, MessageRecord], bool | None],
    ) -> None:
        self.index = index
        self._suppressions = suppressions
        self._payloads = payloads
        self.store = store
        self._queue = queue
        self.validity = validity
        self._clock = clock
        self._owns_send = owns_send  # the sender's check: a command is its message's own
        self.poison = PoisonQueues(queue=queue, index=index, settle_send=settle_send)

    @classmethod
    def from_settings(cls, settings: Settings) -> DeadLetterDesk:
        sender = outbound.OutboundSender.from_settings  # its ports: built once per settings
        return cls(
            index=DeadLetterIndex.from_settings(settings),
            store=MessageStore.from_settings(settings),
            queue=lambda name: ensured_queue(name, settings),
            validity=dt.timedelta(seconds=settings.send_validity_seconds),
            suppressions=SuppressionStore.from_settings(settings),
            payloads=PayloadStore.from_settings(settings),
            settle_send=lambda text: sender(settings).settle_poisoned(text),
            owns_send=lambda text, record: sender(settings).settle_poisoned(text, owner=record),
        )

    # --- reading -------------------------------------------------------------------------

    def page(
        self, where: DeadLetterFilter, *, top: int, continuation: str | None = None
    ) -> tuple[list[DeadLetterView], str | None, bool]:
        """(dead letters, next page's token, whether a poison queue held more than shown).
        Poison messages not yet kept (see :meth:`keep_poison`) come first, on the first page."""
        items: list[DeadLetterView] = []
        truncated = False
        if continuation is None:
            for queue in self.poison.covered(where):
                peeked = self.poison.peek(queue)
                truncated |= len(peeked) >= PEEK_LIMIT
                items += [
                    v
                    for v in peeked
                    if not v.kept and where.matches(v.queue, v.reason, v.dead_lettered_at)
                ]
        entries, token = self.index.page(where, top=top, continuation=continuation)
        return items + [view_of_entry(e) for e in entries], token, truncated

    def oldest(self, top: int) -> tuple[list[DeadLetterView], bool]:
        """The ``top`` oldest dead letters of every queue (the page's), and whether there are
        more. The index lists oldest first within a queue only (its partition), so each
        queue's oldest are read and merged."""
        views: list[DeadLetterView] = []
        more = False
        for queue in (*DEAD_LETTER_QUEUES, *POISON_QUEUES):
            found, token, truncated = self.page(DeadLetterFilter(queue=queue), top=top)
            views += found
            more |= token is not None or truncated
        views.sort(key=lambda v: v.dead_lettered_at)
        return views[:top], more or len(views) > top

    def get(self, letter_id: str) -> DeadLetterView | None:
        """One dead letter by id, or None; changes nothing. A poison message not yet kept is
        found only among the peeked (:data:`PEEK_LIMIT` per queue, visible ones)."""
        entry = self.index.get(letter_id)
        if entry is not None:
            return view_of_entry(entry)
        queue, _, message_id = letter_id.partition("~")
        if queue in POISON_QUEUES and message_id:
            for view in self.poison.peek(queue):
                if view.queue_message_id == message_id and not view.kept:
                    return view  # a kept one is shown (and handled) as its indexed letter
        return None

    def target(self, letter_id: str) -> DeadLetterView | None:
        """What a re-drive or purge of ``letter_id`` acts on: an indexed letter, or a poison
        message by id alone (a queue message's id is a GUID), which the action looks for among
        the first :data:`REQUEST_RECEIVE_LIMIT` of its queue while it holds them (409 if it
        does not get it)."""
        entry = self.index.get(letter_id)
        if entry is not None:
            return view_of_entry(entry)
        queue, _, message_id = letter_id.partition("~")  # the action receives it: no peek
        if queue not in POISON_QUEUES or not _GUID.fullmatch(message_id):
            return None
        return unseen_poison(queue, message_id, self._clock())

    # --- acting --------------------------------------------------------------------------

    def redrive(self, view: DeadLetterView, *, force: bool = False) -> Handled:
        """Put one dead letter's message back on its queue (see the module docstring);
        ``force``: even a send that may have reached SmartDialog already (outcome-unknown).
        A 409 Problem when its stored original is gone or another call is re-driving it (a
        bulk re-drive reports and passes over such a letter)."""
        return _answer(view, self._redrive_one(view, force=force, budget=Budget()))

    def purge(self, view: DeadLetterView) -> Handled:
        """Delete one dead letter for good; a 409 Problem, nothing done, while another call or
        PoisonKeeper holds its queue message."""
        return _answer(view, self._purge_one(view, Budget()))

    def redrive_matching(
        self, where: DeadLetterFilter, *, limit: int, force: bool = False, after: str | None = None
    ) -> Bulk:
        """Re-drive up to ``limit`` dead letters passing ``where`` (:meth:`_each`); ``force`` as
        for :meth:`redrive`."""
        return self._each(where, limit, redrive=True, force=force, after=after)

    def purge_matching(
        self, where: DeadLetterFilter, *, limit: int, after: str | None = None
    ) -> Bulk:
        """Purge up to ``limit`` dead letters passing ``where`` (:meth:`_each`)."""
        return self._each(where, limit, redrive=False, after=after)

    def _each(self, where: DeadLetterFilter, limit: int, *, redrive: bool, force: bool = False,
              after: str | None = None) -> Bulk:  # fmt: skip
        """Up to ``limit`` letters handled (of the index's, those after letter ``after`` only),
        receiving at most one :class:`Budget` of messages (poison messages not yet kept, letters
        whose pop receipt is stale); (what happened, more left: also when a repeat would reach
        further into a poison queue, :meth:`_each_poison`; the last letter looked at or after)."""
        done: list[Handled] = []
        cap = limit * KEPT_PASSED_OVER  # letters that stay come first: reach those behind them
        budget, more = Budget(), False

        def full() -> bool:
            moved = sum(1 for h in done if not h.kind.stays)
            return moved >= limit or len(done) >= cap

        queues, stopped = self.poison.covered(where), False
        act = self._purged if not redrive else lambda v: self._requeue(v, force=force)
        for n, queue in enumerate(queues):
            if stopped := full():
                break
            # Its part of what is left: a queue full of kept letters does not hide the others.
            part = budget.left // (len(queues) - n)
            share = Budget(part)
            found, further = self._each_poison(queue, where, limit - len(done), act, share)
            budget.left -= part - share.left
            done, more = done + found, more or further
        for entry in [] if stopped else self.index.matching(where, limit=cap + 1, after=after):
            if stopped := full():
                break
            view, after = view_of_entry(entry), entry.id
            done.append(self._redrive_one(view, force=force, budget=budget) if redrive
                        else self._purge_one(view, budget))  # fmt: skip
        _log_counts(done)
        return done, more or stopped, after

    def _redrive_one(self, view: DeadLetterView, *, force: bool, budget: Budget) -> Handled:
        if view.entry is None:
            return self._holding_poison(view, lambda held: self._requeue(held, force=force), budget)
        return self._redrive_entry(view, force=force, budget=budget)

    def _holding_poison(self, view: DeadLetterView, act: Act, budget: Budget) -> Handled:
        """``act`` on a poison message not yet kept while this call holds it (received, so no
        other scan takes it meanwhile), then delete it unless it stays. A 409 Problem, nothing
        done, when the scan does not get it: another one holds it, it is gone, or it is not
        among the first messages of its queue that ``budget`` lets this call receive."""
        target = view.queue_message_id
        done: list[Handled] = []

        def take(message: QueueMessage) -> bool:
            if message.id != target or done or never_expires(message):  # kept: its letter
                return False
            done.append(act(poison_view(view.queue, message)))
            return not done[-1].kind.stays

        scanned = self.poison.scan(view.queue, take, enough=lambda: bool(done), budget=budget)
        if scanned.missed:  # acted on, then not deleted: a purge did nothing
            kind = HandledKind.IN_PROGRESS if done[0].kind is HandledKind.PURGED else done[0].kind
            return Handled(view.id, kind, "; ".join(filter(None, (done[0].detail, MISSED))))
        if not done:
            raise Problem(409, "Busy", (
                f"Poison message {view.id} was not there to take: another call or the "
                "PoisonKeeper timer holds it, it is gone, or it is not among the first "
                f"{REQUEST_RECEIVE_LIMIT} messages of its queue (one call looks no further; "
                "PoisonKeeper indexes it). Nothing was done; list the dead letters again."
            ), type=ProblemType.CONFLICT)  # fmt: skip
        return done[0]

    def _redrive_entry(self, view: DeadLetterView, *, force: bool, budget: Budget) -> Handled:
        """Re-drive an indexed letter under a claim on its row: of two re-drives at once one
        sends it, the other answers in-progress; once its copy is on its queue the row says so,
        and a re-drive after a failed removal of the letter only removes it."""
        assert view.entry is not None
        now = self._clock()
        claimed, entry = self.index.claim(view.entry, now=now, until=now + REDRIVE_CLAIM)
        if not claimed:
            return self._not_claimed(view, entry, now, budget)
        assert entry is not None
        view = replace(view, entry=entry)
        try:
            handled = self._requeue(view, force=force)
        except Exception:
            self._release(entry, now)
            raise
        if handled.kind.stays:
            self._release(entry, now)
            return handled
        marked = True
        if handled.kind is HandledKind.REDRIVEN:
            try:
                self.index.redriven(entry, now=self._clock())
            except Exception as exc:  # its copy is out: removing the letter is what keeps it once
                log.warning("dead letter %s: re-driven, not marked so: %s", view.id,
                            redacted_traceback(exc))  # fmt: skip
                marked = False
        return self._removed(view, handled, now, budget, release=marked)

    def _not_claimed(
        self, view: DeadLetterView, entry: DeadLetterEntry | None, now: dt.datetime, budget: Budget
    ) -> Handled:
        if entry is None:
            return Handled(view.id, HandledKind.IN_PROGRESS, "another call handled it meanwhile")
        if entry.claimed(now):
            assert entry.claimed_until is not None
            return Handled(view.id, HandledKind.IN_PROGRESS, (
                f"another call is re-driving it (claimed until {entry.claimed_until:%H:%M:%S} "
                "UTC); nothing sent by this one"
            ))  # fmt: skip
        assert entry.redriven_at is not None  # the claim ended after its copy was sent
        done = Handled(view.id, HandledKind.REDRIVEN, (
            f"re-driven already at {entry.redriven_at:%Y-%m-%d %H:%M:%S} UTC: not sent again"
        ))  # fmt: skip
        handled = self._removed(replace(view, entry=entry), done, now, budget)
        if handled is done:  # removed (else its detail says why not)
            return replace(done, detail=f"{done.detail}, its letter removed now")
        return handled

    def _removed(self, view: DeadLetterView, handled: Handled, now: dt.datetime, budget: Budget,
                 *, release: bool = True) -> Handled:  # fmt: skip
        """``handled`` once the letter is removed; if that fails, the letter stays, its claim
        ended, and ``handled`` says so: handling it again removes it (sends nothing again).
        Without ``release`` (its row could not say it was re-driven) the claim stays until it
        ends: only a purge removes it meanwhile; a re-drive after that sends it again."""
        try:
            if self._remove(view, budget):
                return handled
            why = f"its letter was not removed ({HELD})"
        except Exception as exc:
            log.warning("dead letter %s %s but not removed: %s", view.id, handled.kind,
                        redacted_traceback(exc))  # fmt: skip
            why = "its letter could not be removed"
        if view.entry is not None and release:
            self._release(view.entry, now)
        why += (
            ": re-drive or purge it again to remove it"
            if release
            else f" nor marked re-driven: purge it (a re-drive after "
            f"{REDRIVE_CLAIM.seconds // 60} minutes would send it again)"
        )
        return replace(handled, detail="; ".join(filter(None, (handled.detail, why))))

    def _release(self, entry: DeadLetterEntry, now: dt.datetime) -> None:
        """End this call's claim on ``entry``; if that fails too, it ends by itself."""
        try:
            self.index.release(entry, now=now)
        except Exception:
            log.warning("dead letter %s: its re-drive claim stays until it ends", entry.id)

    def _purge_one(self, view: DeadLetterView, budget: Budget) -> Handled:
        if view.entry is None:
            return self._holding_poison(view, self._purged, budget)
        handled = self._purged(view)
        if not handled.kind.stays and not self._remove(view, budget):
            why = f"{HELD}: nothing done; try again"
            if handled.detail:  # its message was failed: say so
                why = f"{handled.detail}, but its letter was not removed ({HELD}): purge it again"
            return Handled(view.id, HandledKind.IN_PROGRESS, why)
        return handled

    def _purged(self, view: DeadLetterView) -> Handled:
        """What a purge of ``view`` does before its message goes: a send command from the
        outbound poison queue first fails its message as PoisonKeeper would
        (:meth:`PoisonQueues.settled`), or its status would answer 202 for ever; nothing is
        done while a worker's claim on it is live or settling it failed. A letter re-driven
        (or being re-driven: its row claimed) is only removed: its copy settles the message."""
        entry = view.entry
        if view.reason != POISON or (entry and entry.redriving(self._clock())):
            return Handled(view.id, HandledKind.PURGED)
        if (settled := self.poison.settled(view)) is None:
            why = "its message is being sent, or could not be failed now: nothing done; try again"
            return Handled(view.id, HandledKind.IN_PROGRESS, why)
        return Handled(view.id, HandledKind.PURGED, "its message is failed" if settled else None)

    def _each_poison(
        self, queue: str, where: DeadLetterFilter, limit: int, act: Act, budget: Budget
    ) -> tuple[list[Handled], bool]:
        """One scan of a poison queue: ``act`` on each matching message (up to ``limit``);
        (what happened, whether a repeat would reach further: the scan stopped before the
        queue's end having removed some; one that removed none would see the same ones again,
        and PoisonKeeper indexes the rest, handled from the index then)."""
        done: list[Handled] = []

        def handle(message: QueueMessage) -> bool:
            view = poison_view(queue, message)
            if view.kept or len(done) >= limit:
                return False  # a kept one is indexed: handled from the index
            if not where.matches(queue, POISON, view.dead_lettered_at):
                return False
            done.append(act(view))
            return not done[-1].kind.stays  # delete it

        scanned = self.poison.scan(queue, handle, enough=lambda: len(done) >= limit, budget=budget)
        return done, not scanned.whole and any(not h.kind.stays for h in done)

    def keep_poison(self) -> int:
        """Keep the host's poison messages until handled (:meth:`PoisonQueues.keep`)."""
        return self.poison.keep()

    # --- queues ----------------------------------------------------------------------------

    def redrive_text(self, view: DeadLetterView) -> str | None:
        """The message a re-drive of ``view`` puts back on its queue: the letter's original
        (read from its blob when too large for the letter, docs/sending.md "Sizes"; None when
        that blob is gone) or the poison message, a subscriber delivery's or DLR forward's
        attempt count reset (it gets all its attempts again)."""
        original, blob = view.original()
        text = original if blob is None else self._payloads.get(blob)
        if text is not None and view.source_queue in _COUNTING_ATTEMPTS:
            text = _with_attempts_reset(text)
        return text

    def _requeue(self, view: DeadLetterView, *, force: bool) -> Handled:
        text = self.redrive_text(view)
        if text is None:
            gone = f"its stored original {view.original()[1]} is gone: nothing to send; purge it"
            return Handled(view.id, HandledKind.ORIGINAL_GONE, gone)
        target = view.source_queue
        if target == OUTBOUND_QUEUE:
            doubt = outbound.poisoned_command_doubt(text) if view.reason == POISON else None
            if doubt and not force:
                return Handled(view.id, HandledKind.KEPT, doubt)
            # A letter names the message it failed (none: the command's id is another
            # message's, which its re-drive must leave alone); a poison message, its text.
            command_id = message_id_of(text)
            named = view.message_id if view.entry is not None else command_id
            poison = text if view.reason == POISON else None
            not_sent = self._redrive_record(named, force=force, command=poison)
            if not_sent is not None:
                return Handled(view.id, *not_sent)
            if command_id is not None:
                # A stored command too large for a queue message goes by reference (as accepted).
                text = outbound.queued_text(text, message_id=command_id,
                                            payloads=self._payloads)  # fmt: skip
        self._queue(target).send_message(text)
        log.debug("dead letter %s re-driven onto %s", view.id, target)
        return Handled(view.id, HandledKind.REDRIVEN)

    def _announce_redrive(
        self, failed: MessageRecord, valid_until: dt.datetime, now: dt.datetime
    ) -> None:
        """The re-drive transition's own event, sent before the record is queued again (so
        before any message.sent or message.failed of it): a failure after it leaves the record
        failed and the letter listed, and re-driving it again sends it again, with its id."""
        data = outbound.MessageRedrivenData(
            messageId=failed.message_id, operation=failed.operation, serviceId=failed.service_id,
            customerId=failed.customer_id or None, connection=failed.connection,
            previousError=failed.failure, validUntil=valid_until,
        )  # fmt: skip
        stamp = (failed.finished_at or now).strftime("%Y%m%dT%H%M%S%f")
        event = make_event(
            MESSAGE_REDRIVEN,
            data,
            event_id=f"{failed.message_id}:redriven:{stamp}",
            subject=failed.message_id,
            time=now,
        )
        self._queue(EVENTS_QUEUE).send_message(event.to_json())

    def _redrive_record(
        self, message_id: str | None, *, force: bool, command: str | None = None
    ) -> tuple[HandledKind, str] | None:
        """Make a failed message sendable again; None: enqueue it, else why not (skipped: it
        ended meanwhile; kept: a recipient still opts out, or, unless ``force``, it may have
        reached SmartDialog already, or poison ``command`` is not its own; the letter stays)."""
        if message_id is None:
            return None
        for _ in range(5):  # each round re-reads after a lost compare-and-swap
            record = self.store.get(message_id)
            if record is None:
                return None  # never recorded: the sender records it
            if command is not None and (own := self._owns_send(command, record)) is not True:
                return HandledKind.KEPT, (
                    f"its command is not message {message_id}'s as recorded (left alone): another "
                    "message's that reused its id, or a rule's send made again after the rule was "
                    "edited; purge it" if own is False
                    else "its connection is unsure now (settings): re-drive later"
                )  # fmt: skip
            if record.status in (MessageStatus.SENT, MessageStatus.CANCELLED):
                return HandledKind.SKIPPED, (
                    f"message {message_id} is {record.status} already: nothing sent again"
                )
            if record.status is not MessageStatus.FAILED:
                # Queued again already (a re-drive whose enqueue failed) or in flight: enqueue
                # it. A second copy sends nothing more: one copy claims the record, the other
                # waits out the claim and is acknowledged once the record is final.
                return None
            if (opted := self._still_opted_out(record)) is not None:
                return HandledKind.KEPT, opted
            if not force and (doubt := outbound.redrive_doubt(record)) is not None:
                return HandledKind.KEPT, doubt
            now = self._clock()
            # A fresh validity: an expired message would otherwise fail again at once.
            valid_until = now + self.validity
            self._announce_redrive(record, valid_until, now)
            if self.store.redrive(record, now=now, valid_until=valid_until) is None:
                continue
            return None
        raise RuntimeError(f"message {message_id}: record kept changing during the re-drive")

    def _still_opted_out(self, failed: MessageRecord) -> str | None:
        """Why ``failed`` may not go again (a recipient opts out of its service now, whatever it
        failed for: a forced re-drive of one in doubt sends again), or None: it may."""
        if failed.failure is None or not failed.service_id:
            return None
        try:
            command = outbound.parse_outbound_message(failed.command)
        except ValueError:  # a command not as we write it (pydantic's errors are ValueErrors)
            return None
        addresses = outbound.command_addresses(command)
        try:  # the check the send action and the sender make
            refuse_suppressed(self._suppressions, failed.service_id, addresses,
                              transactional=getattr(command, "transactional", False))  # fmt: skip
        except Problem as problem:
            why = "; ".join(e.message for e in problem.errors)
            return (
                f"message {failed.message_id} still opts out ({why}); remove the opt-out to "
                "send it again"
            )
        return None

    def _remove(self, view: DeadLetterView, budget: Budget) -> bool:
        """Delete an indexed letter's queue message, then its row; False, both left, when this
        call could not get the message (another scan holds it: a call handling a letter of its
        queue, or PoisonKeeper). A delete with the row's pop receipt removes it; one that does
        not (received since, or gone: the service cannot tell us which) leaves it to a scan
        that finds it by id (by text, for a row never linked to it) or sees every message of
        the queue without it."""
        entry = view.entry
        assert entry is not None  # a poison message not yet kept: _holding_poison
        wanted, receipt = entry.queue_message_id, entry.pop_receipt
        if not (wanted and receipt and self.poison.delete(view.queue, wanted, receipt)):
            found = self.poison.take(
                view.queue,
                lambda m: m.id == wanted if wanted else str(m.content) == entry.text,
                budget,
            )
            if found is None:
                return False
        self.index.remove(entry)
        return True


#: The queues whose messages count their own attempts (an outbound send's are on its record).
_COUNTING_ATTEMPTS = frozenset({INBOUND_DELIVERIES_QUEUE, DLR_FORWARD_QUEUE})


def _with_attempts_reset(text: str) -> str:
    """A queued message with its attempt count back at 0 (it gets all its attempts again)."""
    with contextlib.suppress(ValueError, RecursionError):
        value = json.loads(text)
        if isinstance(value, dict) and "attempts" in value:
            value["attempts"] = 0
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text


def _answer(view: DeadLetterView, handled: Handled) -> Handled:
    """What one re-drive or purge answers: ``handled``, or a 409 Problem for one that did
    nothing now (another call holds it, its original is gone)."""
    _log_counts([handled])
    titles = {HandledKind.ORIGINAL_GONE: "Original gone", HandledKind.IN_PROGRESS: "Busy"}
    if handled.kind in titles:
        detail = f"Dead letter {view.id}: {handled.detail}."
        raise Problem(409, titles[handled.kind], detail, type=ProblemType.CONFLICT)
    return handled


def _log_counts(done: Iterable[Handled]) -> None:
    if counts := sorted(Counter(item.kind for item in done).items()):
        log.info("dead letters handled: %s", ", ".join(f"{kind} {n}" for kind, n in counts))
