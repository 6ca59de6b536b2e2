"""Dead letters as operations: list, show, re-drive and purge, indexed ones and poison ones.

Our dead letters come from the index (:mod:`shared.deadletters`): paged, filtered by queue,
reason and age in the query. The host's ``-poison`` queues carry no reason and are not indexed
(the host writes them, not us): they are peeked (32 per queue, the service's limit), shown with
reason ``poison`` and their dequeue count, on the first page only.

A re-drive puts a letter's message back on the queue it came from. An outbound send command
goes through the message core: a ``failed`` record is moved back to ``queued`` by
:meth:`MessageStore.redrive` (with a fresh validity) before its command is enqueued with its
original message id, so its idempotency key still finds it; a record that was sent or cancelled
meanwhile is left alone and nothing is enqueued (``skipped``). The queue message is deleted only
after its copy is enqueued: a crash in between leaves the letter, and re-driving it again is
harmless (the sender treats the second copy as a duplicate).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import outbound
from shared.clock import utcnow
from shared.deadletters import (
    DEAD_LETTER_QUEUES,
    DeadLetterEntry,
    DeadLetterFilter,
    DeadLetterIndex,
    write_dead_letter,
)
from shared.events import MESSAGE_REDRIVEN, make_event
from shared.messages import MessageRecord, MessageStatus, MessageStore
from shared.names import (
    CLOUD_EVENTS_QUEUE,
    DLR_FORWARD_QUEUE,
    EVENTS_QUEUE,
    INBOUND_DELIVERIES_QUEUE,
    INBOUND_INTAKE_QUEUE,
    OUTBOUND_QUEUE,
    TRIGGER_EVENTS_QUEUE,
    poison_queue,
)
from shared.payloads import PayloadStore
from shared.problems import Problem
from shared.settings import host_max_dequeue_count
from shared.storage import ensured_queue
from shared.suppressions import SuppressionStore, refuse_suppressed

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient, QueueMessage

    from shared.settings import Settings

__all__ = [
    "POISON",
    "POISON_SOURCES",
    "DeadLetterDesk",
    "DeadLetterView",
    "Handled",
    "HandledKind",
]

log = logging.getLogger("shared.ops")

#: The reason shown for a message the host moved to a ``-poison`` queue.
POISON = "poison"
#: The queues our queue triggers read: the host moves their failures to ``<name>-poison``.
POISON_SOURCES: tuple[str, ...] = (
    OUTBOUND_QUEUE,
    INBOUND_INTAKE_QUEUE,
    INBOUND_DELIVERIES_QUEUE,
    DLR_FORWARD_QUEUE,
    CLOUD_EVENTS_QUEUE,
    TRIGGER_EVENTS_QUEUE,
)
#: Messages a fallback scan of a queue receives at most (each is hidden while it runs).
SCAN_LIMIT = 5000
SCAN_VISIBILITY_SECONDS = 60
_PEEK_LIMIT = 32


@dataclass(frozen=True)
class DeadLetterView:
    """A dead letter as operators see it: an indexed one, or a poison queue's message."""

    id: str
    queue: str
    source_queue: str
    reason: str
    code: str | None
    detail: str | None
    message_id: str | None
    dead_lettered_at: dt.datetime
    text: str
    dequeue_count: int | None = None
    entry: DeadLetterEntry | None = None
    queue_message_id: str | None = None
    #: A poison message already re-sent for good and indexed by :meth:`DeadLetterDesk.keep_poison`.
    kept: bool = False

    def letter(self) -> dict[str, Any]:
        """The letter we wrote; {} for a poison message, kept or not (its text is the message
        as it came, whatever fields it has)."""
        return self.entry.letter() if self.entry is not None and self.reason != POISON else {}

    @property
    def original(self) -> str:
        """The message a re-drive puts back: a letter's ``original``, or a poison message."""
        original = self.letter().get("original")
        return original if isinstance(original, str) else self.text


def _from_entry(entry: DeadLetterEntry) -> DeadLetterView:
    return DeadLetterView(
        id=entry.id,
        queue=entry.queue,
        source_queue=entry.source_queue,
        reason=entry.reason,
        code=entry.code,
        detail=entry.detail,
        message_id=entry.message_id,
        dead_lettered_at=entry.dead_lettered_at,
        text=entry.text,
        dequeue_count=_count(entry.dequeue_count, entry.letter().get("dequeueCount")),
        entry=entry,
        queue_message_id=entry.queue_message_id,
    )


def _count(*candidates: object) -> int | None:
    """The first whole non-negative count among ``candidates`` (an entry's, then its letter's,
    which may be any JSON a foreign message carried)."""
    for value in candidates:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _from_poison(queue: str, message: QueueMessage) -> DeadLetterView:
    text = str(message.content or "")
    inserted = message.inserted_on or dt.datetime.now(dt.UTC)
    return DeadLetterView(
        id=f"{queue}~{message.id}",
        queue=queue,
        source_queue=queue.removesuffix("-poison"),
        reason=POISON,
        code=None,
        detail=f"the host gave up after {host_max_dequeue_count()} deliveries",
        message_id=_message_id(text),
        dead_lettered_at=inserted if inserted.tzinfo else inserted.replace(tzinfo=dt.UTC),
        text=text,
        dequeue_count=host_max_dequeue_count(),
        queue_message_id=message.id,
        kept=_never_expires(message),
    )


def _never_expires(message: QueueMessage) -> bool:
    # A message sent with time_to_live=-1 expires, the service says, at the end of year 9999.
    return message.expires_on is not None and message.expires_on.year >= 9999


#: A bulk re-drive looks at up to this many times its limit: the letters it keeps (they stay
#: first in the index) never hide the ones behind them.
KEPT_PASSED_OVER = 5


class HandledKind(enum.StrEnum):
    REDRIVEN = "redriven"  # its message is back on its queue
    SKIPPED = "skipped"  # nothing to send again (already sent or cancelled); the letter is gone
    KEPT = "kept"  # not sent again while a recipient opts out (STOP); the letter stays
    PURGED = "purged"


@dataclass(frozen=True)
class Handled:
    """What happened to one dead letter."""

    id: str
    kind: HandledKind
    detail: str | None = None


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
        payloads: PayloadStore | None = None,
    ) -> None:
        self.index = index
        self._suppressions = suppressions
        self._payloads = payloads
        self.store = store
        self._queue = queue
        self.validity = validity
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> DeadLetterDesk:
        return cls(
            index=DeadLetterIndex.from_settings(settings),
            store=MessageStore.from_settings(settings),
            queue=lambda name: ensured_queue(name, settings),
            validity=dt.timedelta(seconds=settings.send_validity_seconds),
            suppressions=SuppressionStore.from_settings(settings),
            payloads=PayloadStore.from_settings(settings),
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
            for queue in self.poison_queues(where):
                peeked = self._peek(queue)
                truncated |= len(peeked) >= _PEEK_LIMIT
                items += [
                    v
                    for v in peeked
                    if not v.kept and where.matches(v.queue, v.reason, v.dead_lettered_at)
                ]
        entries, token = self.index.page(where, top=top, continuation=continuation)
        return items + [_from_entry(e) for e in entries], token, truncated

    def oldest(self, top: int) -> tuple[list[DeadLetterView], bool]:
        """The ``top`` oldest dead letters of every queue (the page's), and whether there are
        more. The index lists oldest first within a queue only (its partition), so each
        queue's oldest are read and merged."""
        views: list[DeadLetterView] = []
        more = False
        for queue in (*DEAD_LETTER_QUEUES, *(poison_queue(q) for q in POISON_SOURCES)):
            found, token, truncated = self.page(DeadLetterFilter(queue=queue), top=top)
            views += found
            more |= token is not None or truncated
        views.sort(key=lambda v: v.dead_lettered_at)
        return views[:top], more or len(views) > top

    def get(self, letter_id: str) -> DeadLetterView | None:
        """One dead letter by id, or None."""
        entry = self.index.get(letter_id)
        if entry is not None:
            return _from_entry(entry)
        queue, _, message_id = letter_id.partition("~")
        if queue in {poison_queue(q) for q in POISON_SOURCES} and message_id:
            for view in self._peek(queue):
                if view.queue_message_id == message_id:
                    return view
            found = self._scan(queue, {message_id}, lambda _m: None)
            return found.get(message_id)
        return None

    def poison_queues(self, where: DeadLetterFilter) -> list[str]:
        """The poison queues ``where`` covers."""
        if where.reason not in (None, POISON):
            return []
        queues = [poison_queue(q) for q in POISON_SOURCES]
        return [q for q in queues if where.queue in (None, q)]

    def _peek(self, queue: str) -> list[DeadLetterView]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            messages = self._queue(queue).peek_messages(max_messages=_PEEK_LIMIT)
        except ResourceNotFoundError:
            return []
        return [_from_poison(queue, m) for m in messages]

    # --- acting --------------------------------------------------------------------------

    def redrive(self, view: DeadLetterView, *, force: bool = False) -> Handled:
        """Put one dead letter's message back on its queue (see the module docstring);
        ``force``: even a send that may have reached SmartDialog already (outcome-unknown)."""
        handled = self._redrive_one(view, force=force)
        _log_counts([handled])
        return handled

    def purge(self, view: DeadLetterView) -> Handled:
        """Delete one dead letter for good."""
        handled = self._purge_one(view)
        _log_counts([handled])
        return handled

    def redrive_matching(
        self, where: DeadLetterFilter, *, limit: int, force: bool = False
    ) -> tuple[list[Handled], bool]:
        """Re-drive up to ``limit`` dead letters passing ``where``; (what happened, more left).
        ``force`` as for :meth:`redrive`."""
        return self._each(where, limit, redrive=True, force=force)

    def purge_matching(self, where: DeadLetterFilter, *, limit: int) -> tuple[list[Handled], bool]:
        """Purge up to ``limit`` dead letters passing ``where``; (what happened, more left)."""
        return self._each(where, limit, redrive=False)

    def _each(
        self, where: DeadLetterFilter, limit: int, *, redrive: bool, force: bool = False
    ) -> tuple[list[Handled], bool]:
        done: list[Handled] = []
        cap = limit * KEPT_PASSED_OVER  # kept letters stay first: reach those behind them

        def full() -> bool:
            moved = sum(1 for h in done if h.kind is not HandledKind.KEPT)
            return moved >= limit or len(done) >= cap

        for queue in self.poison_queues(where):
            if full():
                _log_counts(done)
                return done, True
            done += self._each_poison(queue, where, limit - len(done), redrive, force)
        for entry in self.index.matching(where, limit=cap + 1):
            if full():
                _log_counts(done)
                return done, True
            view = _from_entry(entry)
            done.append(self._redrive_one(view, force=force) if redrive else self._purge_one(view))
        _log_counts(done)
        return done, False

    def _redrive_one(self, view: DeadLetterView, *, force: bool) -> Handled:
        handled = self._requeue(view, force=force)
        if handled.kind is not HandledKind.KEPT:
            self._remove(view)
        return handled

    def _purge_one(self, view: DeadLetterView) -> Handled:
        self._remove(view)
        return Handled(view.id, HandledKind.PURGED)

    def _each_poison(
        self,
        queue: str,
        where: DeadLetterFilter,
        limit: int,
        redrive: bool,
        force: bool,
    ) -> list[Handled]:
        """One scan of a poison queue: each matching message (up to ``limit``) is acted on."""
        done: list[Handled] = []

        def handle(message: QueueMessage) -> bool:
            view = _from_poison(queue, message)
            if view.kept or len(done) >= limit:
                return False  # a kept one is indexed: handled from the index
            if not where.matches(queue, POISON, view.dead_lettered_at):
                return False
            if not redrive:
                done.append(Handled(view.id, HandledKind.PURGED))
                return True  # delete it
            done.append(self._requeue(view, force=force))
            return done[-1].kind is not HandledKind.KEPT

        self._scan(queue, None, handle)
        return done

    def keep_poison(self) -> int:
        """Keep the host's poison messages until handled: the host puts them on the poison
        queue with the queue default of 7 days to live (it cannot be told otherwise), so each
        one not yet kept is sent again to the same queue for good, indexed with reason
        ``poison`` and the dequeue count it reached (host.json's ``maxDequeueCount``: the
        host's poison copy starts again from 0), and the original deleted. Returns how many
        were kept."""
        kept = 0
        for queue in (poison_queue(q) for q in POISON_SOURCES):

            def keep(message: QueueMessage, queue: str = queue) -> bool:
                nonlocal kept
                if _never_expires(message):
                    return False
                view = _from_poison(queue, message)
                try:
                    write_dead_letter(
                        self._queue(queue), view.text, queue_name=queue, index=self.index,
                        now=view.dead_lettered_at, reason=POISON, detail=view.detail,
                        dequeue_count=view.dequeue_count,
                    )  # fmt: skip
                except Exception:  # this one stays as it is; the others are still kept
                    log.exception("poison message %s on %s could not be kept", message.id, queue)
                    return False
                kept += 1
                return True

            self._scan(queue, None, keep)
        if kept:
            log.info("poison messages kept until handled: %d", kept)
        return kept

    # --- queues ----------------------------------------------------------------------------

    def _requeue(self, view: DeadLetterView, *, force: bool) -> Handled:
        text = view.original
        blob = view.letter().get("originalBlob")
        if isinstance(blob, str):  # an original too large for the letter (docs/sending.md, Sizes)
            stored = self._payloads.get(blob) if self._payloads is not None else None
            if stored is None:
                raise Problem(409, "Original gone", f"The stored original {blob} is gone.")
            text = stored
        target = view.source_queue
        if target == OUTBOUND_QUEUE:
            doubt = outbound.poisoned_command_doubt(text) if view.reason == POISON else None
            if doubt and not force:
                return Handled(view.id, HandledKind.KEPT, doubt)
            # A letter names the message it failed (none: the command's id is another
            # message's, which its re-drive must leave alone); a poison message, its text.
            named = view.message_id if view.entry is not None else _message_id(text)
            not_sent = self._redrive_record(named, force=force)
            if not_sent is not None:
                return Handled(view.id, *not_sent)
        elif target == INBOUND_DELIVERIES_QUEUE:
            text = _with_attempts_reset(text)
        self._queue(target).send_message(text)
        log.debug("dead letter %s re-driven onto %s", view.id, target)
        return Handled(view.id, HandledKind.REDRIVEN)

    def _announce_redrive(
        self, failed: MessageRecord, valid_until: dt.datetime, now: dt.datetime
    ) -> None:
        """The re-drive transition's own event, sent once the record is queued again and before
        its copy goes on the queue. A crash in between leaves the letter listed: re-driving it
        again queues the copy (the record is already queued then, so no second event)."""
        data = outbound.MessageRedrivenData(
            messageId=failed.message_id,
            operation=failed.operation,
            customerId=failed.customer_id,
            serviceId=failed.service_id,
            previousError=failed.failure,
            validUntil=valid_until,
        )
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
        self, message_id: str | None, *, force: bool
    ) -> tuple[HandledKind, str] | None:
        """Make a failed message sendable again; None: enqueue it, else why not (skipped: it
        ended meanwhile; kept: a recipient still opts out, or, unless ``force``, it may have
        reached SmartDialog already; the letter stays)."""
        if message_id is None:
            return None
        for _ in range(5):  # each round re-reads after a lost compare-and-swap
            record = self.store.get(message_id)
            if record is None:
                return None  # never recorded: the sender records it
            if record.status in (MessageStatus.SENT, MessageStatus.CANCELLED):
                return HandledKind.SKIPPED, (
                    f"message {message_id} is {record.status} already: nothing sent again"
                )
            if record.status is not MessageStatus.FAILED:
                return None  # back in flight: one more copy is harmless
            if (opted := self._still_opted_out(record)) is not None:
                return HandledKind.KEPT, opted
            if not force and (doubt := outbound.redrive_doubt(record)) is not None:
                return HandledKind.KEPT, doubt
            now = self._clock()
            redriven = self.store.redrive(record, now=now)
            if redriven is None:
                continue
            # A fresh validity: an expired message would otherwise fail again at once.
            valid_until = now + self.validity
            self.store.swap(redriven, valid_until=valid_until)
            self._announce_redrive(record, valid_until, now)
            return None
        raise RuntimeError(f"message {message_id}: record kept changing during the re-drive")

    def _still_opted_out(self, failed: MessageRecord) -> str | None:
        """Why ``failed``, if it failed ``suppressed``, may not go again (a recipient of it
        still opts out of its service), or None: it may (they opted back in, or it failed
        otherwise)."""
        if failed.failure is None or failed.failure.code != "suppressed" or not failed.service_id:
            return None
        try:
            addresses = outbound.command_addresses(outbound.parse_outbound_message(failed.command))
        except ValueError:  # a command not as we write it (pydantic's errors are ValueErrors)
            return None
        try:  # the check the send action and the sender make
            refuse_suppressed(self._suppressions, failed.service_id, addresses)
        except Problem as problem:
            why = "; ".join(e.message for e in problem.errors)
            return (
                f"message {failed.message_id} still opts out ({why}); remove the opt-out to "
                "send it again"
            )
        return None

    def _remove(self, view: DeadLetterView) -> None:
        queue = self._queue(view.queue)
        entry = view.entry
        if entry is None:
            assert view.queue_message_id is not None
            target = view.queue_message_id
            self._scan(view.queue, {target}, lambda m: m.id == target)
            return
        deleted = False
        if entry.queue_message_id and entry.pop_receipt:
            from azure.core.exceptions import HttpResponseError

            try:
                queue.delete_message(entry.queue_message_id, entry.pop_receipt)
                deleted = True
            except HttpResponseError:
                deleted = False  # received since, or gone: find it by id below
        if not deleted:
            wanted = entry.queue_message_id
            self._scan(
                view.queue,
                None,
                lambda m: (m.id == wanted) if wanted else (str(m.content) == entry.text),
            )
        self.index.remove(entry)

    def _scan(
        self, queue_name: str, ids: set[str] | None, take: Callable[[QueueMessage], Any]
    ) -> dict[str, DeadLetterView]:
        """Receive every message of a queue (up to :data:`SCAN_LIMIT`); delete those for which
        ``take`` is True, make the others visible again at once. Returns the views of the
        messages whose ids are in ``ids``."""
        from azure.core.exceptions import ResourceNotFoundError

        queue = self._queue(queue_name)
        seen: dict[str, DeadLetterView] = {}
        kept: list[QueueMessage] = []
        try:
            for message in queue.receive_messages(
                messages_per_page=32,
                visibility_timeout=SCAN_VISIBILITY_SECONDS,
                max_messages=SCAN_LIMIT,
            ):
                if ids is not None and message.id in ids:
                    seen[message.id] = _from_poison(queue_name, message)
                if take(message) is True:
                    queue.delete_message(message)
                else:
                    kept.append(message)
        except ResourceNotFoundError:
            return seen
        receipts: dict[str, str] = {}
        for message in kept:
            with contextlib.suppress(ResourceNotFoundError):
                updated = queue.update_message(
                    message, content=message.content, visibility_timeout=0
                )
                receipts[str(message.id)] = str(updated.pop_receipt)
        # Our receive gave the messages new pop receipts: the index keeps them deletable.
        self.index.refresh_receipts(queue_name, receipts)
        return seen


def _message_id(text: str) -> str | None:
    with contextlib.suppress(ValueError, RecursionError):
        value = json.loads(text)
        if isinstance(value, dict) and isinstance(value.get("messageId"), str):
            return str(value["messageId"])
    return None


def _with_attempts_reset(text: str) -> str:
    """A subscriber delivery with its POST count back at 0 (it gets all its attempts again)."""
    with contextlib.suppress(ValueError, RecursionError):
        value = json.loads(text)
        if isinstance(value, dict) and "attempts" in value:
            value["attempts"] = 0
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text


def _log_counts(done: Iterable[Handled]) -> None:
    counts: dict[str, int] = {}
    for item in done:
        counts[item.kind] = counts.get(item.kind, 0) + 1
    if counts:
        log.info(
            "dead letters handled: %s",
            ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items())),
        )
