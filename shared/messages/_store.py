"""The status table's writer: every write of a message record or recipient slot goes here.
Records are written with an ETag compare-and-swap, a status change only along the transition
table (else :class:`~shared.messages.IllegalTransition`); recipient slots only move forward."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from shared.messages._models import MessageStatus, RecipientStatus, check_transition
from shared.messages._records import (
    INLINE_COMMAND_CHARS,
    RECIPIENT_ROW_PREFIX,
    RECORD_ROW_KEY,
    DamagedRecordError,
    MessageRecord,
    RecipientSlot,
    effective_status,
    message_filter,
    message_keys,
    odata_quote,
    record_keys,
    slot_keys,
)
from shared.names import MESSAGES_TABLE
from shared.storage import (
    TABLE_TRANSACTION_LIMIT,
    already_exists,
    ensure_table,
    plain_datetime,
    safe_key,
    utf16_units,
)

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.payloads import PayloadStore
    from shared.settings import Settings

__all__ = ["MessageStore"]


def _changed(
    record: MessageRecord, changes: Mapping[str, Any], *, redrive: bool = False
) -> MessageRecord:
    """``record`` with ``changes``, if the transition table allows the status change."""
    status = changes.get("status")
    if status is not None:
        check_transition(record.status, MessageStatus(status), redrive=redrive)
    return replace(record, **changes)


def _is_ours(written: Mapping[str, Any], record: MessageRecord | None) -> bool:
    """Whether ``record`` (read again) is what the entity ``written`` made it."""
    if record is None:
        return False
    now = record.to_entity()
    return all(written.get(k) == now.get(k) for k in ("Status", "UpdatedAt", "Attempts", "PackId"))


def _slot_merges(
    record: MessageRecord, recipient_ids: Mapping[int, str | None] | None
) -> list[dict[str, Any]]:
    merges = []
    for index, value in sorted((recipient_ids or {}).items()):
        if value and index < record.recipient_count:
            partition, row = slot_keys(record.message_id, index)
            merges.append({"PartitionKey": partition, "RowKey": row, "UpstreamRecipientId": value})
    return merges


#: Most bytes per transaction (the service refuses past 4 MiB), as :func:`_group_bytes` counts.
TRANSACTION_BYTES = 3 * 1024 * 1024


def _group_bytes(ops: list[Any]) -> int:
    """An upper bound of what ``ops`` weigh in a transaction's body: entities as the SDK sends
    them (all but ASCII escaped), a type annotation per non-string property, each part's headers."""
    return sum(
        1000
        + len(json.dumps(op[1], default=str))
        + sum(len(k) + 40 for k, v in op[1].items() if not isinstance(v, str))
        for op in ops
    )


def _transaction_plan(groups: list[list[Any]]) -> list[list[int]]:
    """Indexes of ``groups`` (one message's operations each) packed into transactions of one
    partition, at most 100 operations and :data:`TRANSACTION_BYTES`; a group is never split (one
    larger than that stands alone, for the caller to handle)."""
    plan: list[list[int]] = []
    open_by_partition: dict[str, tuple[list[int], int, int]] = {}
    for index, ops in enumerate(groups):
        partition = str(ops[0][1]["PartitionKey"])
        weight = _group_bytes(ops)
        current = open_by_partition.get(partition)
        if (
            current is not None
            and current[1] + len(ops) <= TABLE_TRANSACTION_LIMIT
            and current[2] + weight <= TRANSACTION_BYTES
        ):
            current[0].append(index)
            open_by_partition[partition] = (current[0], current[1] + len(ops), current[2] + weight)
            continue
        fresh = [index]
        plan.append(fresh)
        open_by_partition[partition] = (fresh, len(ops), weight)
    return plan


def _transaction_batches(groups: list[list[Any]]) -> list[list[Any]]:
    """The operations of :func:`_transaction_plan`'s transactions."""
    out: list[list[Any]] = []
    for indexes in _transaction_plan(groups):
        operations = [op for i in indexes for op in groups[i]]
        if len(operations) <= TABLE_TRANSACTION_LIMIT:
            out.append(operations)
        else:
            out += [
                operations[i : i + TABLE_TRANSACTION_LIMIT]
                for i in range(0, len(operations), TABLE_TRANSACTION_LIMIT)
            ]
    return out


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MessageStore:
    """Reads and compare-and-swap writes of message records and their recipient slots.

    Raises the Azure SDK's errors for storage failures (the caller's host retries those).
    """

    def __init__(self, table: TableClient, payloads: PayloadStore) -> None:
        self._table = table
        self._payloads = payloads

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> MessageStore:
        from shared.payloads import PayloadStore
        from shared.storage import table_client

        return cls(table_client(MESSAGES_TABLE, settings), PayloadStore.from_settings(settings))

    def _kept(self, record: MessageRecord) -> MessageRecord:
        """``record`` with a command too long for its entity put in a blob (named in it)."""
        if record.command_blob is not None or utf16_units(record.command) <= INLINE_COMMAND_CHARS:
            return record
        return replace(record, command_blob=self._payloads.put(record.command, kind="command"))

    def _whole(self, record: MessageRecord) -> MessageRecord:
        """``record`` with its command read back from its blob, if it is kept there."""
        if record.command_blob is None or record.command:
            return record
        text = self._payloads.get(record.command_blob)
        if text is None:
            raise DamagedRecordError(
                record.message_id, RECORD_ROW_KEY, f"blob {record.command_blob} is missing"
            )
        return replace(record, command=text)

    @property
    def table(self) -> TableClient:
        ensure_table(self._table)
        return self._table

    def create(self, record: MessageRecord, slots: list[RecipientSlot]) -> MessageRecord | None:
        """Store a new record with its slots; None if a record with that id already exists.
        The record and its first 99 slots are one transaction; the rest follow
        (:meth:`ensure_slots`, which the sender repeats before sending)."""
        from azure.data.tables import TableTransactionError

        record = self._kept(record)
        first = slots[: TABLE_TRANSACTION_LIMIT - 1]
        operations: list[Any] = [("create", record.to_entity())]
        operations += [("upsert", slot.to_entity()) for slot in first]
        try:
            results = self.table.submit_transaction(operations)
        except TableTransactionError as exc:
            if already_exists(exc):
                return None
            raise
        self.ensure_slots(slots)  # the rest: its command is queued, reports may come already
        return replace(record, etag=str(results[0].get("etag")))

    def create_many(self, items: list[tuple[MessageRecord, list[RecipientSlot]]]) -> None:
        """Store many new records with their slots, 100 rows a transaction where they share a
        partition, a record's rows never split. Raises if any already exists."""
        from concurrent.futures import ThreadPoolExecutor

        batches = _transaction_batches(
            [
                [("create", self._kept(record).to_entity())]
                + [("upsert", s.to_entity()) for s in slots]
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
            if not prefixes[0]:  # a message of its own partition: point reads below
                continue
            where = (
                f"PartitionKey eq '{odata_quote(partition)}' and RowKey ge '{prefixes[0]}' "
                f"and RowKey lt '{prefixes[-1][:-1]}/'"
            )
            for entity in self.table.query_entities(where):
                if str(entity["RowKey"]).endswith("." + RECORD_ROW_KEY):
                    record = self._whole(MessageRecord.from_entity(entity))
                    if record.message_id in wanted:
                        found[record.message_id] = record
        for message_id in message_ids:  # and rows a range missed (row numbers of unequal widths)
            if message_id not in found and (alone := self.get(message_id)) is not None:
                found[message_id] = alone
        return found

    def swap_many(
        self,
        items: list[tuple[MessageRecord, Mapping[str, Any]]],
        *,
        recipient_ids: Mapping[str, Mapping[int, str | None]] | None = None,
    ) -> list[MessageRecord | None]:
        """:meth:`swap` for many records, in order: those sharing a partition go 100 rows a
        transaction, with their slots' upstream ids; a transaction that loses a compare-and-swap
        is redone record by record, so only the records changed meanwhile come back None."""
        from concurrent.futures import ThreadPoolExecutor

        from azure.core import MatchConditions
        from azure.core.exceptions import ServiceResponseError
        from azure.data.tables import TableTransactionError, UpdateMode

        ids = recipient_ids or {}
        updated = [_changed(record, changes) for record, changes in items]
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

        def one_by_one(indexes: list[int]) -> list[tuple[int, MessageRecord | None]]:
            return [
                (i, self.swap(r, recipient_ids=ids.get(r.message_id), **c))
                for i, (r, c) in ((i, items[i]) for i in indexes)
            ]

        def run(indexes: list[int]) -> list[tuple[int, MessageRecord | None]]:
            operations = [op for i in indexes for op in groups[i]]
            if len(operations) > TABLE_TRANSACTION_LIMIT:  # one record with many slots: alone
                return one_by_one(indexes)
            try:
                try:
                    results = self.table.submit_transaction(operations)
                except ServiceResponseError:
                    results = self._answer_lost(operations, [items[i][0] for i in indexes])
            except TableTransactionError as exc:
                if getattr(exc, "status_code", None) != 412:
                    raise
                return one_by_one(indexes)
            out: list[tuple[int, MessageRecord | None]] = []
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

    def _answer_lost(
        self, operations: list[Any], records: list[MessageRecord]
    ) -> list[Mapping[str, Any]]:
        """The results of a transaction whose answer was lost (the SDK does not retry a POST):
        landed (its first record tells), each record's new ETag is read; not, it is submitted
        again. Raises if a record was changed by someone else meanwhile."""
        from azure.data.tables import TableTransactionError

        first = records[0]
        current = self.get(first.message_id)
        if current is None or current.etag == first.etag:
            try:
                return list(self.table.submit_transaction(operations))
            except TableTransactionError as exc:
                if getattr(exc, "status_code", None) != 412 or not _is_ours(
                    operations[0][1], self.get(first.message_id)
                ):
                    raise
        elif not _is_ours(operations[0][1], current):
            raise RuntimeError(f"message {first.message_id} changed under a lost transaction")
        results: list[Mapping[str, Any]] = []
        for _, entity, _ in operations:
            if "Status" not in entity:  # a slot's merge: its ETag is not used
                results.append({})
                continue
            record = self.get(str(entity["MessageId"]))
            if not _is_ours(entity, record):
                raise RuntimeError(f"message {entity['MessageId']} changed after a lost answer")
            assert record is not None
            results.append({"etag": record.etag})
        return results

    def ensure_slots(self, slots: list[RecipientSlot]) -> None:
        """Write the slots past a large message's first transaction (idempotent): who each is,
        merged, never its status (reports may have moved it; one written here first is pending)."""
        from azure.data.tables import UpdateMode

        who = ("PartitionKey", "RowKey", "MessageId", "Index", "Address", "PartCount")
        for chunk in _chunks(slots[TABLE_TRANSACTION_LIMIT - 1 :], TABLE_TRANSACTION_LIMIT):
            self.table.submit_transaction([
                ("upsert", {k: v for k, v in s.to_entity().items() if k in who},
                 {"mode": UpdateMode.MERGE})
                for s in chunk
            ])  # fmt: skip

    def lane_queued(self, partition: str, limit: int) -> list[MessageRecord]:
        """Up to ``limit`` never-attempted queued records of a lane, oldest first, not in a
        pack (one query: the lane is its own pack index)."""
        query = (
            f"PartitionKey eq '{odata_quote(partition)}' and Status eq "
            f"'{MessageStatus.QUEUED}' and Attempts eq 0"
        )
        found: list[MessageRecord] = []
        for entity in self.table.query_entities(query, results_per_page=min(1000, limit + 1)):
            record = self._whole(MessageRecord.from_entity(entity))
            if record.pack_id is None:
                found.append(record)
            if len(found) >= limit:
                break
        return found

    def get(self, message_id: str) -> MessageRecord | None:
        """The record, or None if there is none (also for an id no table key can be)."""
        from azure.core.exceptions import ResourceNotFoundError

        if safe_key(message_id) != message_id:
            return None
        try:
            entity = self.table.get_entity(*record_keys(message_id))
        except ResourceNotFoundError:
            return None
        return self._whole(MessageRecord.from_entity(entity))

    def get_with_slots(self, message_id: str) -> tuple[MessageRecord | None, list[RecipientSlot]]:
        """The record and its recipient slots (in recipient order) in one partition query."""
        record: MessageRecord | None = None
        slots: list[RecipientSlot] = []
        _, prefix = message_keys(message_id)
        for entity in self.table.query_entities(message_filter(message_id)):
            row = str(entity["RowKey"])
            if row == prefix + RECORD_ROW_KEY:
                record = self._whole(MessageRecord.from_entity(entity))
            elif row.startswith(prefix + RECIPIENT_ROW_PREFIX):
                slots.append(RecipientSlot.from_entity(entity))
        slots.sort(key=lambda s: s.index)
        return record, slots

    def swap(
        self,
        record: MessageRecord,
        *,
        recipient_ids: Mapping[int, str | None] | None = None,
        _redrive: bool = False,
        **changes: Any,
    ) -> MessageRecord | None:
        """Write ``record`` with ``changes`` if nobody changed it since it was read (a status
        change must be an arrow of the transition table): the updated record with its new ETag,
        or None when the compare-and-swap lost. ``recipient_ids`` (index -> upstream id) are
        merged into the slots in the same transaction (the first 99; the rest right after); slot
        statuses are never touched, so a delivery report that lands first stands."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import TableTransactionError, UpdateMode

        assert record.etag is not None, "swap needs a record read from the table"
        updated = _changed(record, changes, redrive=_redrive)
        merges = _slot_merges(record, recipient_ids)
        first, rest = merges[: TABLE_TRANSACTION_LIMIT - 1], merges[TABLE_TRANSACTION_LIMIT - 1 :]
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
        for chunk in _chunks(rest, TABLE_TRANSACTION_LIMIT):
            self.table.submit_transaction(
                [("upsert", m, {"mode": UpdateMode.MERGE}) for m in chunk]
            )
        return replace(updated, etag=str(metadata.get("etag")))

    def redrive(
        self, record: MessageRecord, *, now: dt.datetime, valid_until: dt.datetime
    ) -> MessageRecord | None:
        """The one way back from a final state: a ``failed`` message ``queued`` again in one
        write, valid until ``valid_until``, its attempts, failure, lease, backoff, waits,
        announcement, pack and connection cleared. A bulk member or one in doubt (keeping
        ``maybe_sent`` and its connection) also loses its pack key: it goes alone under its own
        RequestId. None when the compare-and-swap lost; IllegalTransition unless failed."""
        doubt = record.in_doubt
        alone = doubt or record.batch_id is not None
        return self.swap(
            record,
            _redrive=True,
            status=MessageStatus.QUEUED,
            valid_until=valid_until,
            attempts=0,
            failure=None,
            last_error=None,
            lease_until=None,
            next_attempt_at=None,
            waits_until=None,
            finished_at=None,
            announced=False,
            pack_id=None,
            pack_key=None if alone else record.pack_key,
            maybe_sent=doubt,
            # In doubt it goes on through the connection that may have sent it.
            sent_through=record.sent_through if doubt else None,
            redriven_at=now,  # a failure after it is a new one (MessageRecord.failed_id)
            updated_at=now,
        )

    def advance_recipients(
        self, message_id: str, status: RecipientStatus, *, now: dt.datetime
    ) -> None:
        """Move every slot of the message to ``status`` unless it is already further along."""
        _, slots = self.get_with_slots(message_id)
        for slot in slots:
            self.advance_slot(slot, status, now=now)

    def advance_slot(
        self,
        slot: RecipientSlot,
        status: RecipientStatus,
        *,
        now: dt.datetime,
        upstream_id: str | None = None,
        shown: MessageStatus | None = None,
        replaces: RecipientStatus | None = None,
    ) -> tuple[RecipientSlot, bool]:
        """Move one slot forward to ``status``, never back, learning its upstream id if it has
        none; (the slot now, whether it moved). Records what the recipient showed before
        (:attr:`RecipientSlot.previous`: ``replaces``, else :func:`effective_status` with
        ``shown``). A compare-and-swap on the slot's ETag, judged again after a lost race."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        current = slot
        for _ in range(8):  # each round re-reads after a lost compare-and-swap
            if current.status.rank >= status.rank:
                return current, False
            assert current.etag is not None, "slots read from the table carry their ETag"
            partition, row = current.keys  # a bulk member's slot lives in its batch's partition
            before = replaces or (
                current.status if shown is None else effective_status(current, shown)
            )
            changes: dict[str, Any] = {
                "PartitionKey": partition,
                "RowKey": row,
                "Status": str(status),
                "StatusRank": status.rank,
                "Moved": f"{before}>{status}",
                "UpdatedAt": plain_datetime(now),
            }
            if upstream_id and not current.upstream_recipient_id:
                changes["UpstreamRecipientId"] = upstream_id
            try:
                self.table.update_entity(
                    changes,
                    mode=UpdateMode.MERGE,
                    etag=current.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
                known = changes.get("UpstreamRecipientId", current.upstream_recipient_id)
                moved = replace(current, status=status, previous=before, updated_at=now)
                return replace(moved, upstream_recipient_id=known, etag=None), True
            except ResourceModifiedError:
                pass
            except ResourceNotFoundError:
                return current, False  # never written (a huge message): nothing to move
            try:
                entity = self.table.get_entity(*current.keys)
            except ResourceNotFoundError:
                return current, False
            current = RecipientSlot.from_entity(entity)
        raise RuntimeError(f"recipient slot {slot.row_key} of {slot.message_id} kept changing")
