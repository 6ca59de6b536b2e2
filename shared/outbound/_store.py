"""The status table and the idempotency table (Azure Table storage, ETag compare-and-swap).

``SmartDialogMessages`` holds one partition per message (PartitionKey = our message id;
bulk members: see below):

- RowKey ``message``: the :class:`MessageRecord` (status, request, attempts, upstream result).
  Every status change is a compare-and-swap on its ETag, so two workers never both claim it.
- RowKey ``recipient-00000`` ...: one :class:`RecipientSlot` per recipient, in request order:
  address, estimated parts, upstream recipient id and a per-recipient status that only moves
  forward (:data:`RECIPIENT_STATUS_RANK`). Delivery reports update these slots, not the
  record, so they never contend with the sender.

Bulk members (ids ``<batch uuid>.<row>``, see :mod:`shared.outbound._bulk`) share a partition
with their neighbours instead: ``<batch uuid>.<row // 500>`` (500 members, 1,000 rows), their
rows prefixed by the row (``00042.message``, ``00042.recipient-00000``). A batch's members are
then written, claimed and recorded 100 rows per Table transaction, and read with one range
query. :func:`message_keys` maps an id to its partition and row prefix; it depends on the id
alone, so every reader and writer agrees. (Partitions stay small: Azurite's transactions slow
down with the size of their partition, and Azure spreads partitions over its servers.)

``SmartDialogIdempotency`` holds one entity per idempotency key (PartitionKey = a hash of
customer and key, RowKey ``key``) pointing at the message the key created.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from shared.names import IDEMPOTENCY_TABLE, MESSAGES_TABLE
from shared.outbound._models import FailureInfo, MessageStatus, Operation

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.settings import Settings

__all__ = [
    "RECIPIENT_STATUS_RANK",
    "DamagedRecordError",
    "IdempotencyEntry",
    "IdempotencyStore",
    "MessageRecord",
    "MessageStore",
    "RecipientSlot",
    "batch_filter",
    "effective_status",
    "message_keys",
]

RECORD_ROW_KEY = "message"
RECIPIENT_ROW_PREFIX = "recipient-"
IDEMPOTENCY_ROW_KEY = "key"
#: Entities per entity-group transaction (the Table service's limit).
TRANSACTION_LIMIT = 100
#: Characters per string property (the limit is 64 KiB of UTF-16, i.e. 32K characters).
CHUNK_CHARS = 30_000

#: Per-recipient statuses in the order they may be reached: a slot never moves backwards.
#: ``pending``/``sent``/``failed``/``cancelled`` are the sender's; delivery reports (issue 5)
#: add theirs above ``sent`` (e.g. ``delivered``, ``undelivered``).
RECIPIENT_STATUS_RANK: dict[str, int] = {
    "pending": 0,
    "cancelled": 10,
    "failed": 10,
    "sent": 20,
    "undelivered": 30,
    "delivered": 40,
}

#: A bulk member's id: its batch's id (a UUID we make) and its row. No id of another shape is
#: stored in a batch's partition; a caller's own id of this shape would need to guess a batch's
#: UUID to share its partition, and even then its rows have their own prefix.
_BATCH_MEMBER_ID = re.compile(
    r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.([0-9]{5,6})$"
)


#: Bulk members per partition.
BATCH_PARTITION_ROWS = 500


def message_keys(message_id: str) -> tuple[str, str]:
    """(PartitionKey, RowKey prefix) of a message's rows: its own partition and no prefix, or,
    for a bulk member, its batch's partition of its row and ``<row>.``."""
    match = _BATCH_MEMBER_ID.match(message_id)
    if match is None:
        return message_id, ""
    row = match.group(2)
    return f"{match.group(1)}.{int(row) // BATCH_PARTITION_ROWS:03d}", row + "."


def batch_filter(batch_id: str) -> str:
    """The Table query filter of every row of every member of a batch."""
    return f"PartitionKey gt '{_odata(batch_id)}.' and PartitionKey lt '{_odata(batch_id)}/'"


def record_keys(message_id: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) of a message's record."""
    partition, prefix = message_keys(message_id)
    return partition, prefix + RECORD_ROW_KEY


def slot_keys(message_id: str, index: int) -> tuple[str, str]:
    """(PartitionKey, RowKey) of a message's ``index``-th recipient slot."""
    partition, prefix = message_keys(message_id)
    return partition, f"{prefix}{RECIPIENT_ROW_PREFIX}{index:05d}"


def _odata(value: str) -> str:
    return value.replace("'", "''")


def message_filter(message_id: str) -> str:
    """The Table query filter of every row of one message (record and slots)."""
    partition, prefix = message_keys(message_id)
    where = f"PartitionKey eq '{_odata(partition)}'"
    if prefix:
        # "." sorts right before "/": the prefix's rows and nothing else.
        where += f" and RowKey ge '{prefix}' and RowKey lt '{prefix[:-1]}/'"
    return where


#: Tables this process has made sure exist, by account endpoint *and* table name (a
#: ``TableClient``'s ``url`` is the account's, the same for every table).
_tables_ready: set[str] = set()
_tables_lock = threading.Lock()


class DamagedRecordError(RuntimeError):
    """A stored message record or recipient slot lacks a property or holds a value we cannot
    read (hand-edited, or written by an incompatible version). It is our own storage failing,
    so callers let it propagate: the sender raises, the host retries the queue message and,
    after ``maxDequeueCount``, moves it to the poison queue."""

    def __init__(self, message_id: str, row_key: str, problem: str) -> None:
        super().__init__(f"damaged status record {message_id}/{row_key}: {problem}")
        self.message_id = message_id
        self.row_key = row_key
        self.problem = problem


def _damaged(entity: Mapping[str, Any], exc: Exception) -> DamagedRecordError:
    if isinstance(exc, KeyError):
        problem = f"property {exc.args[0]} is missing"
    else:
        problem = f"{type(exc).__name__}: {exc}"
    return DamagedRecordError(
        str(entity.get("PartitionKey", "?")), str(entity.get("RowKey", "?")), problem
    )


def _utc(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromisoformat(str(value))


def _plain_datetime(value: dt.datetime | None) -> dt.datetime | None:
    # The SDK wants plain datetimes (its TablesEntityDatetime subclass round-trips too).
    return None if value is None else dt.datetime.fromtimestamp(value.timestamp(), dt.UTC)


def _ensure_table(table: TableClient) -> None:
    key = f"{table.url}|{table.table_name}"  # url is the account's, not the table's
    if key in _tables_ready:
        return
    from azure.core.exceptions import ResourceExistsError

    with _tables_lock:
        if key in _tables_ready:
            return
        with contextlib.suppress(ResourceExistsError):
            table.create_table()
        _tables_ready.add(key)


def _split(text: str | None) -> list[str]:
    if not text:
        return []
    return [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]


def _joined(entity: Mapping[str, Any], name: str) -> str | None:
    count = entity.get(f"{name}Chunks")
    if count is None:
        return None
    return "".join(str(entity.get(f"{name}{i}", "")) for i in range(int(count)))


def _chunked(name: str, text: str | None) -> dict[str, Any]:
    chunks = _split(text)
    if text is None:
        return {f"{name}Chunks": None}
    out: dict[str, Any] = {f"{name}Chunks": len(chunks)}
    out.update({f"{name}{i}": chunk for i, chunk in enumerate(chunks)})
    return out


@dataclass(frozen=True)
class MessageRecord:
    """The status record of one outbound message (RowKey ``message``).

    ``command`` is the normalized queue message (JSON) it was created from: ids and defaults
    filled in, so re-enqueueing it sends exactly the same request. ``result`` is upstream's
    answer (JSON, upstream casing) once sent; ``failure`` why it failed for good; ``last_error``
    the most recent transient failure. ``announced`` is set once the final state's side effects
    (event, dead letter) are out. ``etag`` is the version this copy was read at.
    """

    message_id: str
    status: MessageStatus
    operation: Operation
    customer_id: str
    service_id: str | None
    request_id: str | None
    command: str
    fingerprint: str
    created_at: dt.datetime
    updated_at: dt.datetime
    valid_until: dt.datetime
    recipient_count: int
    part_count: int
    idempotency_key_hash: str | None = None
    attempts: int = 0
    lease_until: dt.datetime | None = None
    next_attempt_at: dt.datetime | None = None
    last_error: FailureInfo | None = None
    failure: FailureInfo | None = None
    result: str | None = None
    upstream_message_id: str | None = None
    duplicate: bool = False
    sent_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    announced: bool = False
    #: The key of the messages it may share an upstream call with; None: always sent alone.
    pack_key: str | None = None
    #: The pack (one upstream call) it was claimed into; set before that call, so a retry
    #: re-sends the same pack (see :mod:`shared.outbound._packs`).
    pack_id: str | None = None
    batch_id: str | None = None
    etag: str | None = field(default=None, compare=False)

    def to_entity(self) -> dict[str, Any]:
        partition, row = record_keys(self.message_id)
        entity: dict[str, Any] = {
            "PartitionKey": partition,
            "RowKey": row,
            "MessageId": self.message_id,
            "Status": str(self.status),
            "Operation": str(self.operation),
            "CustomerId": self.customer_id,
            "ServiceId": self.service_id,
            "RequestId": self.request_id,
            "Fingerprint": self.fingerprint,
            "IdempotencyKeyHash": self.idempotency_key_hash,
            "CreatedAt": _plain_datetime(self.created_at),
            "UpdatedAt": _plain_datetime(self.updated_at),
            "ValidUntil": _plain_datetime(self.valid_until),
            "RecipientCount": self.recipient_count,
            "PartCount": self.part_count,
            "Attempts": self.attempts,
            "LeaseUntil": _plain_datetime(self.lease_until),
            "NextAttemptAt": _plain_datetime(self.next_attempt_at),
            "LastError": self.last_error.model_dump_json() if self.last_error else None,
            "Failure": self.failure.model_dump_json() if self.failure else None,
            "UpstreamMessageId": self.upstream_message_id,
            "Duplicate": self.duplicate,
            "SentAt": _plain_datetime(self.sent_at),
            "FinishedAt": _plain_datetime(self.finished_at),
            "Announced": self.announced,
            "PackKey": self.pack_key,
            "PackId": self.pack_id,
            "BatchId": self.batch_id,
        }
        entity.update(_chunked("Command", self.command))
        entity.update(_chunked("Result", self.result))
        return entity

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> MessageRecord:
        """The record in ``entity``; :class:`DamagedRecordError` if it cannot be read."""
        try:
            return cls._from_entity(entity)
        except (KeyError, ValueError, TypeError, AssertionError) as exc:
            raise _damaged(entity, exc) from exc

    @classmethod
    def _from_entity(cls, entity: Mapping[str, Any]) -> MessageRecord:
        def failure(name: str) -> FailureInfo | None:
            raw = entity.get(name)
            return FailureInfo.model_validate_json(raw) if raw else None

        created = _utc(entity["CreatedAt"])
        if created is None:
            raise ValueError("CreatedAt is empty")
        return cls(
            message_id=str(entity.get("MessageId") or entity["PartitionKey"]),
            status=MessageStatus(entity["Status"]),
            operation=Operation(entity["Operation"]),
            customer_id=str(entity["CustomerId"]),
            service_id=entity.get("ServiceId"),
            request_id=entity.get("RequestId"),
            command=_joined(entity, "Command") or "",
            fingerprint=str(entity.get("Fingerprint", "")),
            idempotency_key_hash=entity.get("IdempotencyKeyHash"),
            created_at=created,
            updated_at=_utc(entity.get("UpdatedAt")) or created,
            valid_until=_utc(entity.get("ValidUntil")) or created,
            recipient_count=int(entity.get("RecipientCount") or 0),
            part_count=int(entity.get("PartCount") or 1),
            attempts=int(entity.get("Attempts") or 0),
            lease_until=_utc(entity.get("LeaseUntil")),
            next_attempt_at=_utc(entity.get("NextAttemptAt")),
            last_error=failure("LastError"),
            failure=failure("Failure"),
            result=_joined(entity, "Result"),
            upstream_message_id=entity.get("UpstreamMessageId"),
            duplicate=bool(entity.get("Duplicate")),
            sent_at=_utc(entity.get("SentAt")),
            finished_at=_utc(entity.get("FinishedAt")),
            announced=bool(entity.get("Announced")),
            pack_key=entity.get("PackKey"),
            pack_id=entity.get("PackId"),
            batch_id=entity.get("BatchId"),
            etag=entity.metadata.get("etag") if hasattr(entity, "metadata") else None,
        )

    def result_json(self) -> dict[str, Any] | None:
        """Upstream's answer as a dict, or None before it was sent."""
        if not self.result:
            return None
        value = json.loads(self.result)
        return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class RecipientSlot:
    """One recipient of a message (RowKey ``recipient-NNNNN``); delivery reports update it."""

    message_id: str
    index: int
    address: str
    part_count: int
    status: str = "pending"
    upstream_recipient_id: str | None = None
    updated_at: dt.datetime | None = None
    etag: str | None = field(default=None, compare=False)

    @property
    def row_key(self) -> str:
        """The slot's name within its message (also in delivery-report event ids)."""
        return f"{RECIPIENT_ROW_PREFIX}{self.index:05d}"

    @property
    def keys(self) -> tuple[str, str]:
        """(PartitionKey, RowKey) where the slot is stored (see :func:`message_keys`)."""
        return slot_keys(self.message_id, self.index)

    def to_entity(self) -> dict[str, Any]:
        partition, row = self.keys
        return {
            "PartitionKey": partition,
            "RowKey": row,
            "MessageId": self.message_id,
            "Index": self.index,
            "Address": self.address,
            "PartCount": self.part_count,
            "Status": self.status,
            "StatusRank": RECIPIENT_STATUS_RANK.get(self.status, 0),
            "UpstreamRecipientId": self.upstream_recipient_id,
            "UpdatedAt": _plain_datetime(self.updated_at),
        }

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> RecipientSlot:
        """The slot in ``entity``; :class:`DamagedRecordError` if it cannot be read."""
        try:
            return cls._from_entity(entity)
        except (KeyError, ValueError, TypeError) as exc:
            raise _damaged(entity, exc) from exc

    @classmethod
    def _from_entity(cls, entity: Mapping[str, Any]) -> RecipientSlot:
        return cls(
            message_id=str(entity.get("MessageId") or entity["PartitionKey"]),
            index=int(entity["Index"]),
            address=str(entity.get("Address", "")),
            part_count=int(entity.get("PartCount") or 1),
            status=str(entity.get("Status", "pending")),
            upstream_recipient_id=entity.get("UpstreamRecipientId"),
            updated_at=_utc(entity.get("UpdatedAt")),
            etag=entity.metadata.get("etag") if hasattr(entity, "metadata") else None,
        )


def effective_status(slot: RecipientSlot, message_status: MessageStatus) -> str:
    """A recipient's status: its slot's own (delivery reports) or its message's, whichever is
    further along (the sender records the message's outcome on the record only)."""
    derived = {
        MessageStatus.SENT: "sent",
        MessageStatus.FAILED: "failed",
        MessageStatus.CANCELLED: "cancelled",
    }.get(message_status, "pending")
    own = RECIPIENT_STATUS_RANK.get(slot.status, 0)
    return slot.status if own >= RECIPIENT_STATUS_RANK.get(derived, 0) else derived


def _slot_merges(
    record: MessageRecord, recipient_ids: Mapping[int, str | None] | None
) -> list[dict[str, Any]]:
    merges = []
    for index, value in sorted((recipient_ids or {}).items()):
        if value and index < record.recipient_count:
            partition, row = slot_keys(record.message_id, index)
            merges.append({"PartitionKey": partition, "RowKey": row, "UpstreamRecipientId": value})
    return merges


def _transaction_plan(groups: list[list[Any]]) -> list[list[int]]:
    """Indexes of ``groups`` (each the operations of one message) packed into transactions:
    one partition per transaction, at most 100 operations, a group never split (a group
    larger than that is a transaction plan of its own, handled by the caller)."""
    plan: list[list[int]] = []
    open_by_partition: dict[str, tuple[list[int], int]] = {}
    for index, ops in enumerate(groups):
        partition = str(ops[0][1]["PartitionKey"])
        current = open_by_partition.get(partition)
        if current is not None and current[1] + len(ops) <= TRANSACTION_LIMIT:
            current[0].append(index)
            open_by_partition[partition] = (current[0], current[1] + len(ops))
            continue
        fresh = [index]
        plan.append(fresh)
        open_by_partition[partition] = (fresh, len(ops))
    return plan


def _transaction_batches(groups: list[list[Any]]) -> list[list[Any]]:
    """The operations of :func:`_transaction_plan`'s transactions."""
    out: list[list[Any]] = []
    for indexes in _transaction_plan(groups):
        operations = [op for i in indexes for op in groups[i]]
        if len(operations) <= TRANSACTION_LIMIT:
            out.append(operations)
        else:
            out += [
                operations[i : i + TRANSACTION_LIMIT]
                for i in range(0, len(operations), TRANSACTION_LIMIT)
            ]
    return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MessageStore:
    """Reads and compare-and-swap writes of message records and their recipient slots.

    Raises the Azure SDK's errors for storage failures (the caller's host retries those).
    """

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> MessageStore:
        from shared.storage import table_client

        return cls(table_client(MESSAGES_TABLE, settings))

    @property
    def table(self) -> TableClient:
        _ensure_table(self._table)
        return self._table

    def create(self, record: MessageRecord, slots: list[RecipientSlot]) -> MessageRecord | None:
        """Store a new record with its slots; None if a record with that id already exists.

        The record and the first 99 slots are one atomic transaction; slots beyond that follow
        in further transactions (the sender re-writes them before sending, see
        :meth:`ensure_slots`).
        """
        from azure.data.tables import TableTransactionError

        first, rest = slots[: TRANSACTION_LIMIT - 1], slots[TRANSACTION_LIMIT - 1 :]
        operations: list[Any] = [("create", record.to_entity())]
        operations += [("upsert", slot.to_entity()) for slot in first]
        try:
            results = self.table.submit_transaction(operations)
        except TableTransactionError as exc:
            if getattr(exc, "error_code", None) == "EntityAlreadyExists" or "AlreadyExists" in str(
                exc
            ):
                return None
            raise
        self._upsert_slots(rest)
        return replace(record, etag=str(results[0].get("etag")))

    def create_many(self, items: list[tuple[MessageRecord, list[RecipientSlot]]]) -> None:
        """Store many new records with their slots, 100 rows a Table transaction where they
        share a partition (bulk members); a member's rows are never split between two
        transactions. Raises if any already exists (bulk member ids are new by construction)."""
        from concurrent.futures import ThreadPoolExecutor

        batches = _transaction_batches(
            [
                [("create", record.to_entity())] + [("upsert", s.to_entity()) for s in slots]
                for record, slots in items
            ]
        )
        if len(batches) == 1:
            self.table.submit_transaction(batches[0])
            return
        with ThreadPoolExecutor(min(4, len(batches))) as pool:
            list(pool.map(self.table.submit_transaction, batches))

    def get_many(self, message_ids: list[str]) -> dict[str, MessageRecord]:
        """The records of ``message_ids`` that exist, by id: one range query per batch
        partition (bulk members), a point read for any other id."""
        by_partition: dict[str, list[str]] = {}
        for message_id in message_ids:
            by_partition.setdefault(message_keys(message_id)[0], []).append(message_id)
        found: dict[str, MessageRecord] = {}
        wanted = set(message_ids)
        for partition, ids in by_partition.items():
            prefixes = sorted(message_keys(i)[1] for i in ids)
            if not prefixes[0]:
                for message_id in ids:
                    record = self.get(message_id)
                    if record is not None:
                        found[message_id] = record
                continue
            where = (
                f"PartitionKey eq '{_odata(partition)}' and RowKey ge '{prefixes[0]}' "
                f"and RowKey lt '{prefixes[-1][:-1]}/'"
            )
            for entity in self.table.query_entities(where):
                if str(entity["RowKey"]).endswith("." + RECORD_ROW_KEY):
                    record = MessageRecord.from_entity(entity)
                    if record.message_id in wanted:
                        found[record.message_id] = record
            for message_id in ids:  # rows the range missed (row numbers of unequal widths)
                if message_id not in found:
                    record = self.get(message_id)
                    if record is not None:
                        found[message_id] = record
        return found

    def swap_many(
        self,
        items: list[tuple[MessageRecord, Mapping[str, Any]]],
        *,
        recipient_ids: Mapping[str, Mapping[int, str | None]] | None = None,
    ) -> list[MessageRecord | None]:
        """:meth:`swap` for many records at once, in order: records that share a partition
        (bulk members) go 100 rows a transaction, each record compare-and-swapped on its ETag
        with its slots' upstream ids merged in the same transaction. A transaction that loses
        a compare-and-swap (one record changed meanwhile, e.g. cancelled) is redone record by
        record, so only the changed ones come back None."""
        from concurrent.futures import ThreadPoolExecutor

        from azure.core import MatchConditions
        from azure.data.tables import TableTransactionError, UpdateMode

        ids = recipient_ids or {}
        updated = [replace(record, **changes) for record, changes in items]
        groups: list[list[Any]] = []
        for (record, _), new in zip(items, updated, strict=True):
            assert record.etag is not None, "swap needs a record read from the table"
            condition = {"etag": record.etag, "match_condition": MatchConditions.IfNotModified}
            ops: list[Any] = [
                ("update", new.to_entity(), {"mode": UpdateMode.REPLACE, **condition})
            ]
            merges = _slot_merges(record, ids.get(record.message_id))
            ops += [("update", m, {"mode": UpdateMode.MERGE}) for m in merges]
            groups.append(ops)
        plan = _transaction_plan(groups)

        def run(indexes: list[int]) -> list[tuple[int, MessageRecord | None]]:
            operations = [op for i in indexes for op in groups[i]]
            if len(operations) > TRANSACTION_LIMIT:  # one record with many slots: alone
                record, changes = items[indexes[0]]
                done = self.swap(record, recipient_ids=ids.get(record.message_id), **changes)
                return [(indexes[0], done)]
            try:
                results = self.table.submit_transaction(operations)
            except TableTransactionError as exc:
                if getattr(exc, "status_code", None) != 412:
                    raise
                out: list[tuple[int, MessageRecord | None]] = []
                for i in indexes:
                    record, changes = items[i]
                    out.append(
                        (i, self.swap(record, recipient_ids=ids.get(record.message_id), **changes))
                    )
                return out
            out = []
            position = 0
            for i in indexes:
                etag = str(results[position].get("etag"))
                out.append((i, replace(updated[i], etag=etag)))
                position += len(groups[i])
            return out

        done: list[MessageRecord | None] = [None] * len(items)
        if len(plan) <= 1:
            outcomes = [run(p) for p in plan]
        else:
            with ThreadPoolExecutor(min(4, len(plan))) as pool:
                outcomes = list(pool.map(run, plan))
        for outcome in outcomes:
            for index, result in outcome:
                done[index] = result
        return done

    def ensure_slots(self, slots: list[RecipientSlot]) -> None:
        """Write the slots a large message's :meth:`create` may not have finished (idempotent)."""
        self._upsert_slots(slots[TRANSACTION_LIMIT - 1 :])

    def _upsert_slots(self, slots: Iterable[RecipientSlot]) -> None:
        for chunk in _chunks(list(slots), TRANSACTION_LIMIT):
            self.table.submit_transaction([("upsert", s.to_entity()) for s in chunk])

    def get(self, message_id: str) -> MessageRecord | None:
        """The record, or None if there is none."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.table.get_entity(*record_keys(message_id))
        except ResourceNotFoundError:
            return None
        return MessageRecord.from_entity(entity)

    def get_with_slots(self, message_id: str) -> tuple[MessageRecord | None, list[RecipientSlot]]:
        """The record and its recipient slots (in recipient order) in one partition query."""
        record: MessageRecord | None = None
        slots: list[RecipientSlot] = []
        _, prefix = message_keys(message_id)
        for entity in self.table.query_entities(message_filter(message_id)):
            row = str(entity["RowKey"])
            if row == prefix + RECORD_ROW_KEY:
                record = MessageRecord.from_entity(entity)
            elif row.startswith(prefix + RECIPIENT_ROW_PREFIX):
                slots.append(RecipientSlot.from_entity(entity))
        slots.sort(key=lambda s: s.index)
        return record, slots

    def swap(
        self,
        record: MessageRecord,
        *,
        recipient_ids: Mapping[int, str | None] | None = None,
        **changes: Any,
    ) -> MessageRecord | None:
        """Write ``record`` with ``changes`` if nobody changed it since it was read.

        ``recipient_ids`` (index -> upstream recipient id) are merged into the slots in the same
        transaction (the first 99; the rest right after). Slot *statuses* are not touched: a
        slot still ``pending`` shows its message's status (see :func:`effective_status`), so a
        delivery report that lands first is never overwritten. Returns the updated record (new
        ETag), or None when the compare-and-swap lost.
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import TableTransactionError, UpdateMode

        assert record.etag is not None, "swap needs a record read from the table"
        updated = replace(record, **changes)
        merges = _slot_merges(record, recipient_ids)
        first, rest = merges[: TRANSACTION_LIMIT - 1], merges[TRANSACTION_LIMIT - 1 :]
        condition: dict[str, Any] = {
            "etag": record.etag,
            "match_condition": MatchConditions.IfNotModified,
        }
        try:
            if first:
                operations: list[Any] = [
                    ("update", updated.to_entity(), {"mode": UpdateMode.REPLACE, **condition})
                ]
                operations += [("update", m, {"mode": UpdateMode.MERGE}) for m in first]
                metadata = self.table.submit_transaction(operations)[0]
            else:
                metadata = self.table.update_entity(
                    updated.to_entity(), mode=UpdateMode.REPLACE, **condition
                )
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        except TableTransactionError as exc:
            if "UpdateConditionNotSatisfied" in str(exc) or "412" in str(exc):
                return None
            raise
        for chunk in _chunks(rest, TRANSACTION_LIMIT):
            self.table.submit_transaction(
                [("upsert", m, {"mode": UpdateMode.MERGE}) for m in chunk]
            )
        return replace(updated, etag=str(metadata.get("etag")))

    def advance_recipients(
        self,
        message_id: str,
        status: str,
        upstream_ids: Mapping[int, str | None] | None = None,
        *,
        now: dt.datetime,
    ) -> None:
        """Move every slot of the message to ``status`` unless it is already at a later one,
        and record upstream recipient ids by index. Safe to repeat; never moves a slot back.

        Each slot is written with a compare-and-swap on the ETag it was read at (as delivery
        reports write them): a report that lands between our read and our write makes the
        write fail (412), and the slot is read again and judged again, so a ``delivered`` is
        never overwritten by an earlier state.
        """
        _, slots = self.get_with_slots(message_id)
        for slot in slots:
            self._advance_slot(slot, status, (upstream_ids or {}).get(slot.index), now=now)

    def _advance_slot(
        self, slot: RecipientSlot, status: str, upstream_id: str | None, *, now: dt.datetime
    ) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        rank = RECIPIENT_STATUS_RANK.get(status, 0)
        current = slot
        for _ in range(8):  # each round re-reads after a lost compare-and-swap
            changes: dict[str, Any] = {}
            if RECIPIENT_STATUS_RANK.get(current.status, 0) < rank:
                changes.update(Status=status, StatusRank=rank)
            if upstream_id and upstream_id != current.upstream_recipient_id:
                changes["UpstreamRecipientId"] = upstream_id
            if not changes:
                return
            assert current.etag is not None, "slots read from the table carry their ETag"
            partition, row = current.keys
            changes.update(PartitionKey=partition, RowKey=row, UpdatedAt=_plain_datetime(now))
            try:
                self.table.update_entity(
                    changes,
                    mode=UpdateMode.MERGE,
                    etag=current.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
                return
            except ResourceModifiedError:
                pass
            except ResourceNotFoundError:
                return  # the slot is gone (never written for a huge message): nothing to move
            try:
                entity = self.table.get_entity(*current.keys)
            except ResourceNotFoundError:
                return
            current = RecipientSlot.from_entity(entity)
        raise RuntimeError(f"recipient slot {slot.row_key} of {slot.message_id} kept changing")


@dataclass(frozen=True)
class IdempotencyEntry:
    """An idempotency key's claim: the message it created and the request's fingerprint."""

    key_hash: str
    message_id: str
    fingerprint: str
    created_at: dt.datetime
    expires_at: dt.datetime
    etag: str | None = field(default=None, compare=False)


def idempotency_key_hash(customer_id: str, key: str) -> str:
    """The stored form of a key: SHA-256 of customer and key (keys may be anything)."""
    return hashlib.sha256(f"{customer_id}\n{key}".encode()).hexdigest()


class IdempotencyStore:
    """``Idempotency-Key`` claims: the first request with a key wins, later ones find it."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> IdempotencyStore:
        from shared.storage import table_client

        return cls(table_client(IDEMPOTENCY_TABLE, settings))

    def claim(
        self,
        key_hash: str,
        message_id: str,
        fingerprint: str,
        *,
        now: dt.datetime,
        ttl: dt.timedelta,
    ) -> IdempotencyEntry:
        """Claim ``key_hash`` for ``message_id``; returns the entry that holds the key now.

        If it is ours, the caller goes on creating the message; if another message's, the
        caller answers for that one. An expired claim is taken over (compare-and-swap).
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )
        from azure.data.tables import UpdateMode

        _ensure_table(self._table)
        entity = {
            "PartitionKey": key_hash,
            "RowKey": IDEMPOTENCY_ROW_KEY,
            "MessageId": message_id,
            "Fingerprint": fingerprint,
            "CreatedAt": _plain_datetime(now),
            "ExpiresAt": _plain_datetime(now + ttl),
        }
        mine = IdempotencyEntry(key_hash, message_id, fingerprint, now, now + ttl)
        for _ in range(5):
            try:
                self._table.create_entity(entity)
                return mine
            except ResourceExistsError:
                pass
            try:
                found = self._table.get_entity(key_hash, IDEMPOTENCY_ROW_KEY)
            except ResourceNotFoundError:
                continue
            expires = _utc(found.get("ExpiresAt"))
            if expires is not None and expires <= now:
                try:
                    self._table.update_entity(
                        entity,
                        mode=UpdateMode.REPLACE,
                        etag=found.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                    return mine
                except (ResourceModifiedError, ResourceNotFoundError):
                    continue
            created = _utc(found.get("CreatedAt")) or now
            return IdempotencyEntry(
                key_hash,
                str(found["MessageId"]),
                str(found.get("Fingerprint", "")),
                created,
                expires or now,
                etag=found.metadata.get("etag"),
            )
        raise RuntimeError("idempotency key claim kept changing under us")

    def release(self, key_hash: str, message_id: str) -> bool:
        """Give up ``message_id``'s claim of ``key_hash`` (its request was refused before
        anything was recorded), so the key may be used again. Only that message's claim is
        deleted (ETag-conditional); True if it was."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        _ensure_table(self._table)
        try:
            found = self._table.get_entity(key_hash, IDEMPOTENCY_ROW_KEY)
        except ResourceNotFoundError:
            return False
        if found.get("MessageId") != message_id:
            return False
        try:
            self._table.delete_entity(
                key_hash,
                IDEMPOTENCY_ROW_KEY,
                etag=found.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True
