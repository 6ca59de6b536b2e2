"""The dead-letter index: every dead letter we write, findable without reading its queue.

A queue can only be peeked 32 messages at a time, and a message can only be deleted with the pop
receipt of its last receive, so listing, filtering and re-driving straight from a dead-letter
queue does not scale. Every dead letter is therefore written through :func:`write_dead_letter`,
which keeps one row per queue message in ``SmartDialogDeadLetters``:

- PartitionKey: the dead-letter queue; RowKey: ``<time written, UTC, sortable>-<uuid>``, so a
  partition lists oldest first and an age filter is a RowKey range;
- ``Reason`` (the letter's ``reason``), ``Code`` (its ``error.code``, when it has one),
  ``MessageId``, ``Detail``, ``SourceQueue`` (where a re-drive puts it back);
- the dead letter's full text (``Text``, in pieces of 30,000 UTF-16 units as
  :func:`shared.storage.chunked` cuts them: a queue message is at most 64 KiB), so listing,
  showing and re-driving never read the queue;
- ``QueueMessageId`` and ``PopReceipt`` as ``send_message`` returned them. Nobody receives from a
  dead-letter queue but the operations actions, so that receipt still deletes the message when
  it is handled; when it no longer does (someone received the message), the message is found
  by scanning the queue for its id (a row goes only with its message: one another scan holds
  is left, both, for the next try);
- while it is re-driven, ``RedriveClaimedUntil`` (:meth:`DeadLetterIndex.claim`, written only
  if the row is as the re-drive read it, so of two re-drives at once one goes on) and, once its
  copy is on its queue, ``RedrivenAt`` (so a re-drive whose removal of the letter failed is not
  sent again by the next one).

The row is written *before* the queue message (and completed with its id after): a crash in
between leaves a row whose text is the dead letter, never a dead letter the index lacks. Such a
row (no ``QueueMessageId``) is matched to its queue message by text on purge and re-drive, and
taken as never sent only when a scan saw every message of the queue. Dead letters are sent with
``time_to_live=-1``: they stay until an operator handles them (the queue's default would drop
them after 7 days).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, Field

from shared import telemetry
from shared.clock import utcnow
from shared.names import (
    CLOUD_EVENTS_DEAD_LETTER_QUEUE,
    CLOUD_EVENTS_QUEUE,
    DEAD_LETTERS_TABLE,
    DLR_FORWARD_DEAD_LETTER_QUEUE,
    DLR_FORWARD_QUEUE,
    INBOUND_DEAD_LETTER_QUEUE,
    INBOUND_DELIVERIES_QUEUE,
    OUTBOUND_DEAD_LETTER_QUEUE,
    OUTBOUND_QUEUE,
)
from shared.payloads import QUEUE_MESSAGE_LIMIT, fits_queue, queue_message_bytes
from shared.storage import QueueLike, chunked, ensured_table, joined, plain_datetime, utc

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.payloads import PayloadStore
    from shared.settings import Settings

__all__ = [
    "DEAD_LETTER_QUEUES",
    "FOREVER",
    "DeadLetterEntry",
    "DeadLetterFilter",
    "DeadLetterIndex",
    "KeptOriginal",
    "letter_keys",
    "original_aside",
    "send_forever",
    "write_dead_letter",
]

log = logging.getLogger("shared.deadletters")

#: ``time_to_live`` of a queue message that never expires.
FOREVER = -1
#: Our dead-letter queues and the queue a re-drive puts their letters back on.
DEAD_LETTER_QUEUES: dict[str, str] = {
    OUTBOUND_DEAD_LETTER_QUEUE: OUTBOUND_QUEUE,
    INBOUND_DEAD_LETTER_QUEUE: INBOUND_DELIVERIES_QUEUE,
    DLR_FORWARD_DEAD_LETTER_QUEUE: DLR_FORWARD_QUEUE,
    CLOUD_EVENTS_DEAD_LETTER_QUEUE: CLOUD_EVENTS_QUEUE,
}
#: Index rows one refresh of pop receipts reads at most (:meth:`DeadLetterIndex.refresh_receipts`).
REFRESH_ROWS = 5000
#: The longest dead-letter id (queue name, separator, RowKey) there can be.
ID_MAX_LENGTH = 400
# What Table storage refuses in a key (and what a key never holds here).
_UNSAFE_KEY = re.compile(r"[/\\#?'\x00-\x1f\x7f-\x9f]")
_ID_SEPARATOR = "~"


class KeptOriginal(BaseModel):
    """What every dead letter keeps of the message it is about: the text itself, or, when that
    would make the letter too large for a queue message, a reference to a blob holding it
    (:func:`original_aside`; a re-drive reads it from there)."""

    original: str | None = Field(
        None,
        description=(
            "The message the letter is about, exactly: the queue message as it was received "
            "(for a send that failed, its stored command). Absent when too large for the dead "
            "letter: see `originalBlob`."
        ),
    )
    originalBlob: str | None = Field(
        None,
        description=(
            "When the original is too large to travel in the dead letter: the name of the blob "
            "in container `smartdialog-payloads` that holds it, exactly."
        ),
    )
    originalBytes: int | None = Field(
        None, description="The original's size in UTF-8 bytes, when it is in `originalBlob`."
    )


_Letter = TypeVar("_Letter", bound=KeptOriginal)


def original_aside(letter: _Letter, payloads: PayloadStore | None) -> _Letter:
    """``letter``, or, when its JSON would not fit a queue message, the same letter with its
    original kept in a blob of ``payloads`` (None: the app's own container) instead. JSON
    escaping can make a letter about a message that fitted its queue too large for this one."""
    if letter.original is None or fits_queue(letter.model_dump_json(exclude_none=True)):
        return letter
    if payloads is None:
        from shared.payloads import PayloadStore

        payloads = PayloadStore.from_settings()
    blob, size = payloads.put(letter.original, kind="original"), len(letter.original.encode())
    return letter.model_copy(update={"original": None, "originalBlob": blob, "originalBytes": size})


def send_forever(queue: QueueLike, text: str) -> Any:
    """``queue.send_message(text)`` that never expires (dead letters, poison copies)."""
    return queue.send_message(text, time_to_live=FOREVER)


@dataclass(frozen=True)
class DeadLetterEntry:
    """One indexed dead letter. ``id`` is ``<queue>~<row key>``: stable, URL-safe."""

    queue: str
    row_key: str
    reason: str
    code: str | None
    detail: str | None
    message_id: str | None
    source_queue: str
    dead_lettered_at: dt.datetime
    text: str
    queue_message_id: str | None = None
    pop_receipt: str | None = None
    dequeue_count: int | None = None
    #: A re-drive's claim on it lasts until then (:meth:`DeadLetterIndex.claim`).
    claimed_until: dt.datetime | None = None
    #: When a re-drive put its copy on its queue (the letter is being removed).
    redriven_at: dt.datetime | None = None
    #: The row's ETag as read.
    etag: str | None = None

    def claimed(self, now: dt.datetime) -> bool:
        """Whether a re-drive's claim on it is live at ``now``."""
        return self.claimed_until is not None and self.claimed_until > now

    def redriving(self, now: dt.datetime) -> bool:
        """Whether a re-drive has it at ``now``: re-driven already, or its claim is live."""
        return self.redriven_at is not None or self.claimed(now)

    @property
    def id(self) -> str:
        return f"{self.queue}{_ID_SEPARATOR}{self.row_key}"

    def letter(self) -> dict[str, Any]:
        """The dead letter's JSON object ({} if its text is not one)."""
        try:
            value = json.loads(self.text)
        except (ValueError, RecursionError):  # a poison message kept as it came
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters: all, or those of one queue, reason, error code and age range."""

    queue: str | None = None
    reason: str | None = None
    code: str | None = None
    #: Written at or before this time (at least this old).
    before: dt.datetime | None = None
    #: Written at or after this time (at most this old).
    after: dt.datetime | None = None

    def matches(self, entry_queue: str, reason: str, at: dt.datetime) -> bool:
        """Whether a dead letter of ``entry_queue`` with ``reason`` and no code (a poison
        message: the index's query matches codes), written ``at``, passes."""
        return (
            self.code is None
            and (self.queue is None or self.queue == entry_queue)
            and (self.reason is None or self.reason == reason)
            and (self.before is None or at <= self.before)
            and (self.after is None or at >= self.after)
        )


def _row_time(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _odata(value: str) -> str:
    return value.replace("'", "''")


def _letter_fields(text: str) -> dict[str, Any]:
    try:
        letter = json.loads(text)
    except (ValueError, RecursionError):  # a poison message kept as it came
        letter = None
    if not isinstance(letter, dict):
        return {"Reason": "unreadable", "Detail": "the dead letter is not a JSON object"}
    error = letter.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    fields: dict[str, Any] = {
        "Reason": _short(letter.get("reason")) or "unknown",
        "Code": _short(code),
        "Detail": str(letter.get("detail") or "")[:1000] or None,
        "MessageId": _short(letter.get("messageId")),
    }
    return {k: v for k, v in fields.items() if v is not None}


def _short(value: Any) -> str | None:
    """A letter's reason, code or message id for the index; None for one longer than any of
    ours (a poison message's own text: a Table property holds at most 64 KiB, and a cut id
    could name another message)."""
    text = str(value) if value else ""
    return text if 0 < len(text) <= ID_MAX_LENGTH else None


class DeadLetterIndex:
    """``SmartDialogDeadLetters``: one row per dead letter written (see the module docstring)."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> DeadLetterIndex:
        return cls(ensured_table(DEAD_LETTERS_TABLE, settings))

    # --- writing -------------------------------------------------------------------------

    def begin(
        self,
        queue: str,
        text: str,
        *,
        now: dt.datetime | None = None,
        reason: str | None = None,
        detail: str | None = None,
        dequeue_count: int | None = None,
        key: str | None = None,
    ) -> DeadLetterEntry:
        """Index ``text`` as a dead letter about to be put on ``queue`` (not yet linked to its
        queue message: :meth:`link` does that once it is sent). ``reason`` and ``detail``
        replace the letter's own (a poison message is not a letter). ``key`` (with ``now``)
        makes its row's key, so that indexing it again raises ``ResourceExistsError``;
        without it every call indexes a new letter."""
        at = now or utcnow()
        if key is not None and (not key or _UNSAFE_KEY.search(key)):
            raise ValueError(f"not a key for a dead letter's row: {key!r}")
        entity: dict[str, Any] = {
            "PartitionKey": queue,
            "RowKey": f"{_row_time(at)}-{key or uuid.uuid4().hex}",
            "SourceQueue": DEAD_LETTER_QUEUES.get(queue, queue.removesuffix("-poison")),
            "DeadLetteredAt": plain_datetime(at),
            **_letter_fields(text),
        }
        overrides = {"Reason": reason, "Detail": detail, "DequeueCount": dequeue_count}
        entity.update({k: v for k, v in overrides.items() if v is not None})
        entity.update(chunked("Text", text))  # pieces of UTF-16 units, as the Table counts
        written = self._table.create_entity(entity)
        return replace(_entry(entity), etag=(written or {}).get("etag"))

    def link(self, entry: DeadLetterEntry, sent: Any) -> bool:
        """Record which queue message holds ``entry`` (``sent``: what ``send_message`` gave).
        With ``entry.etag``, only into the row as read: False when another writer linked it to
        another message first (a keyed row finished twice at once, :func:`write_dead_letter`)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError
        from azure.data.tables import UpdateMode

        if not (message_id := str(getattr(sent, "id", None) or "")):
            return True
        receipt = str(getattr(sent, "pop_receipt", "") or "")
        current: DeadLetterEntry | None = entry
        for _ in range(5):  # each round re-reads after a write lost to another
            if current is None or current.queue_message_id not in (None, message_id):
                return current is None  # a row purged meanwhile is no other writer's
            try:
                self._table.update_entity(
                    {"PartitionKey": entry.queue, "RowKey": entry.row_key,
                     "QueueMessageId": message_id, "PopReceipt": receipt},
                    mode=UpdateMode.MERGE, etag=current.etag,
                    match_condition=MatchConditions.IfNotModified if current.etag else None,
                )  # fmt: skip
                return True
            except ResourceModifiedError:
                current = self.get(entry.id)
        raise RuntimeError(f"dead letter {entry.id}: its row kept changing during the link")

    def refresh_receipts(self, queue: str, receipts: dict[str, str]) -> None:
        """Store new pop receipts (queue message id -> receipt) of ``queue``'s messages. Their
        rows are looked for oldest first (a scan receives a queue's oldest messages), until all
        are found or :data:`REFRESH_ROWS` were read: a receipt left stale still deletes its
        message after a scan finds it by id."""
        from azure.data.tables import UpdateMode

        if not receipts:
            return
        left = dict(receipts)
        rows = self._table.query_entities(
            f"PartitionKey eq '{_odata(queue)}'",
            select=["RowKey", "QueueMessageId"],
            results_per_page=min(1000, 2 * len(left) + 32),
        )
        for _, row in zip(range(REFRESH_ROWS), rows, strict=False):
            receipt = left.pop(str(row.get("QueueMessageId") or ""), None)
            if receipt:
                self._table.update_entity(
                    {"PartitionKey": queue, "RowKey": row["RowKey"], "PopReceipt": receipt},
                    mode=UpdateMode.MERGE,
                )
            if not left:
                return

    def claim(
        self, entry: DeadLetterEntry, *, now: dt.datetime, until: dt.datetime
    ) -> tuple[bool, DeadLetterEntry | None]:
        """Claim ``entry`` for a re-drive until ``until``: written only if the row is still as
        read (its ETag), so of two callers one gets it. (True, the claimed entry), or (False,
        the entry as it is now: None when gone, else claimed by another caller at ``now`` or
        re-driven already)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        current: DeadLetterEntry | None = entry
        for _ in range(5):  # each round re-reads after a write lost to another
            if current is not None and current.etag is None:
                current = self.get(current.id)
            if current is None or current.redriving(now):
                return False, current
            try:
                written = self._table.update_entity(
                    {
                        "PartitionKey": current.queue,
                        "RowKey": current.row_key,
                        "RedriveClaimedUntil": plain_datetime(until),
                    },
                    mode=UpdateMode.MERGE,
                    etag=current.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
            except ResourceNotFoundError:
                return False, None
            except ResourceModifiedError:
                current = self.get(current.id)
                continue
            etag = str(written.get("etag") or "") or None
            return True, replace(current, claimed_until=until, etag=etag)
        raise RuntimeError(f"dead letter {entry.id}: its row kept changing during the claim")

    def redriven(self, entry: DeadLetterEntry, *, now: dt.datetime) -> None:
        """Record that ``entry``'s copy is on its queue (by the caller holding its claim)."""
        self._merge(entry, {"RedrivenAt": plain_datetime(now)})

    def release(self, entry: DeadLetterEntry, *, now: dt.datetime) -> None:
        """End a re-drive's claim on ``entry`` (nothing sent, or its removal failed)."""
        self._merge(entry, {"RedriveClaimedUntil": plain_datetime(now)})

    def _merge(self, entry: DeadLetterEntry, fields: dict[str, Any]) -> None:
        """Write ``fields`` into ``entry``'s row; one already gone (purged) is fine."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        keys = {"PartitionKey": entry.queue, "RowKey": entry.row_key}
        with contextlib.suppress(ResourceNotFoundError):
            self._table.update_entity({**keys, **fields}, mode=UpdateMode.MERGE)

    def remove(self, entry: DeadLetterEntry) -> None:
        """Forget ``entry`` (it was re-driven or purged); one already gone is fine."""
        self._table.delete_entity(entry.queue, entry.row_key)

    # --- reading -------------------------------------------------------------------------

    def get(self, entry_id: str) -> DeadLetterEntry | None:
        """The entry with this :attr:`DeadLetterEntry.id`, or None."""
        from azure.core.exceptions import ResourceNotFoundError

        if (keys := letter_keys(entry_id)) is None:
            return None
        try:
            return _entry(self._table.get_entity(*keys))
        except ResourceNotFoundError:
            return None

    def page(
        self, where: DeadLetterFilter, *, top: int, continuation: str | None = None
    ) -> tuple[list[DeadLetterEntry], str | None]:
        """Up to ``top`` entries passing ``where``, oldest first per queue, and the token of the
        next page (None on the last). Raises ``ValueError`` for a token this did not make."""
        from azure.core.exceptions import HttpResponseError

        token = _decode_token(continuation) if continuation else None
        pages = self._table.query_entities(_odata_filter(where), results_per_page=top).by_page(
            continuation_token=token
        )
        try:  # one service page per call: fewer than top at a partition boundary, never more
            entries = [_entry(e) for e in next(pages, [])]
        except HttpResponseError as exc:  # Azure refuses keys it never handed out (InvalidInput)
            if token is None or exc.status_code != 400:
                raise
            raise ValueError("not a continuation token of this list") from exc
        next_token = getattr(pages, "continuation_token", None)
        return entries, _encode_token(next_token) if next_token else None

    def matching(
        self, where: DeadLetterFilter, *, limit: int, after: str | None = None
    ) -> Iterator[DeadLetterEntry]:
        """Up to ``limit`` entries passing ``where``, across pages, in the list's order; with
        ``after`` (an entry's id) only those that come after that entry."""
        query = _odata_filter(where)
        if after is not None:
            keys = letter_keys(after)
            if keys is None:
                raise ValueError(f"not a dead letter's id: {after!r}")
            queue, row_key = map(_odata, keys)
            query = (f"({query}) and (PartitionKey gt '{queue}' or "
                     f"(PartitionKey eq '{queue}' and RowKey gt '{row_key}'))")  # fmt: skip
        entities = self._table.query_entities(query, results_per_page=100)
        for _, entity in zip(range(limit), entities, strict=False):
            yield _entry(entity)

    def count(self, queue: str) -> int:
        """How many dead letters of ``queue`` are indexed (reads only their keys)."""
        return sum(
            1
            for _ in self._table.query_entities(
                f"PartitionKey eq '{_odata(queue)}'", select=["RowKey"]
            )
        )


def letter_keys(letter_id: str) -> tuple[str, str] | None:
    """The (queue, row key) a dead letter's id names, or None for a string that is none."""
    queue, sep, row_key = letter_id.partition(_ID_SEPARATOR)
    if not sep or not queue or not row_key or _UNSAFE_KEY.search(letter_id):
        return None
    return None if len(letter_id) > ID_MAX_LENGTH else (queue, row_key)  # longer: not ours


def _odata_filter(where: DeadLetterFilter) -> str:
    parts: list[str] = []
    if where.queue is not None:
        parts.append(f"PartitionKey eq '{_odata(where.queue)}'")
    if where.reason is not None:
        parts.append(f"Reason eq '{_odata(where.reason)}'")
    if where.code is not None:
        parts.append(f"Code eq '{_odata(where.code)}'")
    # The RowKey starts with the time written: an age range is a key range.
    if where.before is not None:
        parts.append(f"RowKey le '{_row_time(where.before)}~'")
    if where.after is not None:
        parts.append(f"RowKey ge '{_row_time(where.after)}'")
    return " and ".join(parts) or "PartitionKey ne ''"


def _entry(entity: dict[str, Any]) -> DeadLetterEntry:
    text = joined(entity, "Text") or ""
    at = utc(entity.get("DeadLetteredAt"))
    return DeadLetterEntry(
        queue=str(entity["PartitionKey"]),
        row_key=str(entity["RowKey"]),
        reason=str(entity.get("Reason") or "unknown"),
        code=entity.get("Code") or None,
        detail=entity.get("Detail") or None,
        message_id=entity.get("MessageId") or None,
        source_queue=str(entity.get("SourceQueue") or ""),
        dead_lettered_at=at or utcnow(),
        text=text,
        queue_message_id=entity.get("QueueMessageId") or None,
        pop_receipt=entity.get("PopReceipt") or None,
        dequeue_count=entity.get("DequeueCount"),
        claimed_until=utc(entity.get("RedriveClaimedUntil")),
        redriven_at=utc(entity.get("RedrivenAt")),
        etag=getattr(entity, "metadata", {}).get("etag"),
    )


def _encode_token(token: Any) -> str:
    token = {k: v for k, v in token.items() if v is not None}  # Azure's at a queue's end
    raw = json.dumps(token, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(text: str) -> Any:
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("not a continuation token of this list")
    return value


def write_dead_letter(
    queue: QueueLike,
    text: str,
    *,
    queue_name: str,
    index: DeadLetterIndex | None = None,
    now: dt.datetime | None = None,
    reason: str | None = None,
    detail: str | None = None,
    dequeue_count: int | None = None,
    key: str | None = None,
) -> Any:
    """Put the dead letter ``text`` on ``queue`` (named ``queue_name``) for good, indexed.

    The one way a dead letter is written: the index row first, then the queue message (which
    never expires), then the row learns the message's id and pop receipt, then it is counted.
    Returns what ``send_message`` returned. Raises what storage raises (the caller's host
    retries), ``ResourceExistsError`` when a letter with this ``key`` and ``now`` is written
    already, and ``ValueError`` for a letter larger than a queue message (the queue would refuse
    it: its writer must keep its parts small, :func:`original_aside`): nothing is written then.
    A keyed row whose queue message was never linked (its put failed, or its writer died) is
    finished: put, linked and counted; a keyed letter whose link fails takes its message back
    and raises, so its retry puts it once; one whose link may have landed (its call and the
    re-read failed) keeps its message, counted, and raises. Left, each a second unindexed copy
    (doubled, never lost): a writer dying between put and link, a failed take-back, an unknown
    link that had not landed. Two writers finishing one row at once both put, but the link is
    written only into the row as read (its ETag): the loser deletes its message and raises
    ``ResourceExistsError``, so one message stays, counted once.
    """
    from azure.core.exceptions import ResourceExistsError

    if (size := queue_message_bytes(text)) > QUEUE_MESSAGE_LIMIT:
        raise ValueError(f"a dead letter of {size} bytes does not fit a queue message")
    index, at = index or DeadLetterIndex.from_settings(), now or utcnow()
    try:
        entry = index.begin(queue_name, text, now=at, reason=reason, detail=detail,
                            dequeue_count=dequeue_count, key=key)  # fmt: skip
    except ResourceExistsError:
        found = index.get(f"{queue_name}{_ID_SEPARATOR}{_row_time(at)}-{key}")
        if found is None or found.queue_message_id or found.redriving(utcnow()):
            raise
        entry = found
    sent = send_forever(queue, text)
    try:
        linked = index.link(entry, sent)
    except Exception:
        if key is None:  # the row already holds the letter: purge/re-drive find it by text
            log.warning("dead letter %s on %s written but not linked", entry.row_key, queue_name)
            linked = True
        elif (landed := _linked_to(index, entry, sent)) is None:  # unknown: keep it, counted
            telemetry.count_dead_letter(queue_name, entry.reason)  # a retry may double it
            raise
        elif not (linked := landed):  # else the link landed after all
            with contextlib.suppress(Exception):  # its retry puts it again: not twice
                queue.delete_message(sent.id, sent.pop_receipt)
            raise
    if not linked:  # another writer finished this row first: its message stands
        with contextlib.suppress(Exception):
            queue.delete_message(sent.id, sent.pop_receipt)
        raise ResourceExistsError(f"dead letter {entry.id} written already")
    telemetry.count_dead_letter(queue_name, entry.reason)  # the alert's exact count
    return sent


def _linked_to(index: DeadLetterIndex, entry: DeadLetterEntry, sent: Any) -> bool | None:
    """Whether ``entry``'s row holds ``sent``'s id after a link whose call raised (a time-out
    after the write may have landed it); None when unknown (the read fails too)."""
    try:
        found = index.get(entry.id)
    except Exception:
        return None
    return found is not None and found.queue_message_id == sent.id
