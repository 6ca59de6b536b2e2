"""The host's ``-poison`` queues as dead letters: peeked for the list, scanned (received) to act
on their messages, and kept for good (:meth:`PoisonQueues.keep`, the ``PoisonKeeper`` timer).

The host writes these queues, not us: their messages carry no reason and are not indexed until
kept. A queue can be peeked 32 messages at a time, and a message deleted only with the pop
receipt of its last receive, so acting on one means receiving the queue (a scan).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from shared.clock import as_utc, utcnow
from shared.deadletters import DeadLetterFilter, DeadLetterIndex, write_dead_letter
from shared.logs import loggable_id, redacted, redacted_traceback
from shared.names import (
    CLOUD_EVENTS_QUEUE,
    DLR_FORWARD_QUEUE,
    INBOUND_DELIVERIES_QUEUE,
    INBOUND_INTAKE_QUEUE,
    OUTBOUND_QUEUE,
    TRIGGER_EVENTS_QUEUE,
    poison_queue,
)
from shared.ops._views import POISON, DeadLetterView
from shared.settings import host_max_dequeue_count

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient, QueueMessage

__all__ = [
    "PEEK_LIMIT",
    "POISON_QUEUES",
    "POISON_SOURCES",
    "REQUEST_RECEIVE_LIMIT",
    "Budget",
    "PoisonQueues",
    "message_id_of",
    "never_expires",
    "poison_view",
]

log = logging.getLogger("shared.ops")

#: The queues our queue triggers read: the host moves their failures to ``<name>-poison``.
POISON_SOURCES: tuple[str, ...] = (
    OUTBOUND_QUEUE,
    INBOUND_INTAKE_QUEUE,
    INBOUND_DELIVERIES_QUEUE,
    DLR_FORWARD_QUEUE,
    CLOUD_EVENTS_QUEUE,
    TRIGGER_EVENTS_QUEUE,
)
#: Their poison queues, in the same order.
POISON_QUEUES: tuple[str, ...] = tuple(poison_queue(q) for q in POISON_SOURCES)
#: Messages a scan of a queue receives at most (each is hidden while it runs).
SCAN_LIMIT = 5000
#: Messages one request (an action, a page's button) receives at most, over all its scans.
REQUEST_RECEIVE_LIMIT = 500
SCAN_VISIBILITY_SECONDS = 60
#: A poison message a send's settling left this close to its expiry is kept as it is.
KEEP_BEFORE = dt.timedelta(days=1)
#: The most messages one peek shows (the service's limit).
PEEK_LIMIT = 32


class Budget:
    """What one request may still receive, over every scan it makes
    (:data:`REQUEST_RECEIVE_LIMIT`): a request's work is bounded whatever its queues hold."""

    def __init__(self, left: int | None = None) -> None:
        self.left = REQUEST_RECEIVE_LIMIT if left is None else left


class Scanned(NamedTuple):
    """What a scan (:meth:`PoisonQueues.scan`) left: how many messages it made visible again,
    whether it received every message it could (it stopped for lack of more, not at a limit or
    because it had enough), and how many it took but could not delete (:func:`deleted`)."""

    shown: int
    whole: bool
    missed: int = 0


def poison_view(queue: str, message: QueueMessage) -> DeadLetterView:
    """The view of a message of the poison queue ``queue``."""
    text = str(message.content or "")
    return unseen_poison(
        queue,
        str(message.id),
        as_utc(message.inserted_on or utcnow()),
        detail=f"the host gave up after {host_max_dequeue_count()} deliveries",
        message_id=message_id_of(text),
        text=text,
        dequeue_count=host_max_dequeue_count(),
        kept=never_expires(message),
    )


def unseen_poison(
    queue: str, queue_message_id: str, at: dt.datetime, **seen: Any
) -> DeadLetterView:
    """A poison message known only by id (not among the peeked: what an action looks for), or,
    with what was ``seen`` of it, one received or peeked (:func:`poison_view`)."""
    fields: dict[str, Any] = {"detail": None, "message_id": None, "text": "", **seen}
    return DeadLetterView(
        id=f"{queue}~{queue_message_id}",
        queue=queue,
        source_queue=queue.removesuffix("-poison"),
        reason=POISON,
        code=None,
        dead_lettered_at=at,
        queue_message_id=queue_message_id,
        **fields,
    )


def never_expires(message: QueueMessage) -> bool:
    """Whether ``message`` was sent for good (a kept poison message)."""
    # A message sent with time_to_live=-1 expires, the service says, at the end of year 9999.
    return message.expires_on is not None and message.expires_on.year >= 9999


def expiring(message: QueueMessage) -> bool:
    """Whether the host's ``message`` expires before the next PoisonKeeper runs or two (it
    lives 7 days): one not settled by then is kept as a plain letter, never lost."""
    return message.expires_on is not None and message.expires_on - utcnow() < KEEP_BEFORE


def deleted(
    queue: QueueClient, message: QueueMessage | str, pop_receipt: str | None = None
) -> bool:
    """Delete a received message: False when its pop receipt no longer does (received since,
    or gone: Azurite answers 400 PopReceiptMismatch, Azure 404 MessageNotFound for both)."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    try:
        queue.delete_message(message, pop_receipt)
    except HttpResponseError as exc:
        if not isinstance(exc, ResourceNotFoundError) and exc.status_code != 400:
            raise
        return False
    return True


def message_id_of(text: str) -> str | None:
    """The ``messageId`` a queue message's JSON names, or None."""
    with contextlib.suppress(ValueError, RecursionError):
        value = json.loads(text)
        if isinstance(value, dict) and isinstance(value.get("messageId"), str):
            return str(value["messageId"])
    return None


class PoisonQueues:
    """Peeks, scans and keeps the host's poison queues."""

    def __init__(
        self,
        *,
        queue: Callable[[str], QueueClient],
        index: DeadLetterIndex,
        settle_send: Callable[[str], bool | None],
    ) -> None:
        self._queue = queue
        self._index = index
        self._settle_send = settle_send

    @staticmethod
    def covered(where: DeadLetterFilter) -> list[str]:
        """The poison queues ``where`` covers."""
        if where.reason not in (None, POISON) or where.code is not None:
            return []  # a poison message has no error code
        return [q for q in POISON_QUEUES if where.queue in (None, q)]

    def peek(self, queue: str) -> list[DeadLetterView]:
        """The first :data:`PEEK_LIMIT` visible messages of ``queue`` (changes nothing)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            messages = self._queue(queue).peek_messages(max_messages=PEEK_LIMIT)
        except ResourceNotFoundError:
            return []
        return [poison_view(queue, m) for m in messages]

    def keep(self) -> int:
        """Keep the host's poison messages until handled: the host puts them on the poison
        queue with the queue default of 7 days to live (it cannot be told otherwise), so each
        one not yet kept is sent again to the same queue for good, indexed with reason
        ``poison`` and the dequeue count it reached (host.json's ``maxDequeueCount``: the
        host's poison copy starts again from 0), and the original deleted. Its index row is
        keyed by the original's id and time: an original whose deletion failed after it was
        kept is only deleted by the next run, not kept twice. A send command whose message is
        not final is settled instead (:meth:`settled`); one it cannot settle yet waits for the
        next run, unless it would expire before (:func:`expiring`). Returns how many were kept
        or settled."""
        from azure.core.exceptions import ResourceExistsError

        kept = 0
        for queue in POISON_QUEUES:

            def keep(message: QueueMessage, queue: str = queue) -> bool:
                nonlocal kept
                if never_expires(message):
                    return False
                view = poison_view(queue, message)
                settled = self.settled(view)
                if settled is None and not expiring(message):
                    return False  # the next run looks again
                if settled:
                    kept += 1
                    return True  # its failure's dead letter holds it: the host's copy goes
                try:
                    write_dead_letter(
                        self._queue(queue), view.text, queue_name=queue, index=self._index,
                        now=view.dead_lettered_at, reason=POISON, detail=view.detail,
                        dequeue_count=view.dequeue_count, key=str(message.id),
                    )  # fmt: skip
                except ResourceExistsError:  # kept before: its deletion failed then
                    log.info("poison message %s on %s kept already", message.id, queue)
                    return True
                except Exception as exc:  # this one stays as it is; the others are still kept
                    log.error("poison message %s on %s could not be kept: %s", message.id, queue,
                              redacted_traceback(exc))  # fmt: skip
                    return False
                kept += 1
                return True

            try:
                self.scan(queue, keep)
            except Exception as exc:  # the next run keeps what this one left
                log.error("the poison messages of %s could not all be kept: %s", queue,
                          redacted_traceback(exc))  # fmt: skip
        if kept:
            log.info("poison messages kept (or settled) until handled: %d", kept)
        return kept

    def settled(self, view: DeadLetterView) -> bool | None:
        """Whether a send command the host gave up on was settled (instead of kept, or purged):
        ``settle_send`` fails its message unless final (``poisoned``, with its event and dead
        letter, which holds the command from then on): True; None, look again next run (a
        worker's claim on it is live, the claims routing it are uncertain, or settling failed:
        it may have failed the message and not announced it yet); False, keep it (nothing of
        ours to settle: no record, sent or cancelled, another message's, not a send command)."""
        if view.queue != poison_queue(OUTBOUND_QUEUE):
            return False
        try:
            return self._settle_send(view.text)
        except Exception as exc:
            log.error("poisoned send %s: not settled; the next run tries again: %s",
                      loggable_id(str(view.message_id)), redacted_traceback(exc))  # fmt: skip
            return None

    def scan(
        self,
        queue_name: str,
        take: Callable[[QueueMessage], Any],
        *,
        enough: Callable[[], bool] = lambda: False,
        budget: Budget | None = None,
    ) -> Scanned:
        """Receive every message of a queue (up to :data:`SCAN_LIMIT`, or what is ``budget``
        left, each hidden meanwhile: no other scan gets it), a page of 32 at a time until
        ``enough``; delete those for which ``take`` is True, make the others visible again at
        once (also when ``take`` raises)."""
        from azure.core.exceptions import ResourceNotFoundError

        most = SCAN_LIMIT if budget is None else min(SCAN_LIMIT, budget.left)
        if most <= 0:
            return Scanned(0, whole=False)
        queue = self._queue(queue_name)
        kept: list[QueueMessage] = []
        received = missed = 0
        try:
            pages = queue.receive_messages(
                messages_per_page=min(32, most),
                visibility_timeout=SCAN_VISIBILITY_SECONDS,
                max_messages=most,
            ).by_page()
            for page in pages:
                for message in page:  # the whole page: each of it was received (hidden)
                    received += 1
                    if budget is not None:
                        budget.left -= 1
                    kept.append(message)
                    if take(message) is True:
                        missed += not deleted(queue, message)  # held past our 60 s
                        kept.pop()
                if enough():
                    return Scanned(len(kept), whole=False, missed=missed)
        except ResourceNotFoundError:  # no such queue (receiving)
            return Scanned(0, whole=True)
        finally:
            self._show_again(queue_name, queue, kept)
        return Scanned(len(kept), whole=received < most, missed=missed)

    def take(
        self, queue_name: str, wanted: Callable[[QueueMessage], bool], budget: Budget
    ) -> bool | None:
        """Delete the first message of a queue that is ``wanted``, received by a scan that
        stops there: True; False when it is provably not there (the scan received every
        message, and the queue holds no other: none hidden by another scan); None when it may
        be (another scan holds it, it lies beyond what ``budget`` lets this call receive, or
        its deletion failed: another call received it meanwhile)."""
        found: list[QueueMessage] = []

        def first(message: QueueMessage) -> bool:
            if found or not wanted(message):
                return False
            found.append(message)
            return True

        scanned = self.scan(queue_name, first, enough=lambda: bool(found), budget=budget)
        if found:
            return None if scanned.missed else True
        return False if scanned.whole and self._nothing_but(queue_name, scanned.shown) else None

    def delete(self, queue_name: str, message_id: str, pop_receipt: str) -> bool:
        """Delete a message with the pop receipt of a receive of it: True once deleted; False
        when that receipt does not (:func:`deleted`: it may be there, held or received since,
        or gone; :meth:`take` finds it or proves it absent), or the delete failed."""
        from azure.core.exceptions import AzureError

        try:
            return deleted(self._queue(queue_name), message_id, pop_receipt)
        except AzureError as exc:  # as if it did not: a scan looks for the message
            log.warning("delete by pop receipt failed: %s", redacted(str(exc)))
            return False

    def _nothing_but(self, queue_name: str, shown: int) -> bool:
        """Whether the queue holds no more than the ``shown`` messages a scan saw: its
        approximate message count (hidden messages included) is never lower than the real
        one, so none is held by another scan (or was added since)."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        try:
            depth = self._queue(queue_name).get_queue_properties().approximate_message_count
        except ResourceNotFoundError:
            return True
        except AzureError:  # not proven
            return False
        return depth is not None and depth <= shown

    def _show_again(self, queue_name: str, queue: QueueClient, kept: list[QueueMessage]) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        receipts: dict[str, str] = {}
        for message in kept:
            with contextlib.suppress(ResourceNotFoundError):
                updated = queue.update_message(
                    message, content=message.content, visibility_timeout=0
                )
                if never_expires(message):  # a letter (or kept poison message): indexed
                    receipts[str(message.id)] = str(updated.pop_receipt)
        # Our receive gave the messages new pop receipts: the index keeps them deletable.
        self._index.refresh_receipts(queue_name, receipts)
