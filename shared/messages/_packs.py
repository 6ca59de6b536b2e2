"""Packs: many queued sends in one upstream call (``SmartDialogPacks``: pack records, the index).

Two kinds of partitions: ``q-<pack key>``, the index of a pack key (one row per message that may
still be packed, oldest first; only a hint, since packing compare-and-swaps the message's own
record), and ``pack-<id>`` (RowKey ``pack``), a :class:`Pack`: one call's membership in request
order, its ``RequestId`` and, after the call, upstream's recipient ids. Bulk *batch packs*
(``batch_id`` set) also carry a driver lease and the membership of the call that may have gone.
See docs/sending.md, "Packing and bulk sends" and "Bulk sends: batch packs"."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from shared.clock import utcnow
from shared.messages._table import TableStore
from shared.names import PACKS_TABLE
from shared.storage import TABLE_TRANSACTION_LIMIT, chunked, joined

if TYPE_CHECKING:
    from shared.messages._records import MessageRecord

__all__ = [
    "PACK_ID_PREFIX",
    "Pack",
    "PackMember",
    "PackStore",
    "is_pack_id",
    "new_pack_id",
]

#: Prefix of pack ids (a caller's message id may start with it: packs are looked up by table).
PACK_ID_PREFIX = "pack-"
INDEX_PREFIX = "q-"
PACK_ROW_KEY = "pack"
#: The row of an index partition that holds its leader's lease (sorts before every entry).
LEAD_ROW_KEY = "!lead"


def new_pack_id(key: str, member_ids: Iterable[str], formed_at: dt.datetime) -> str:
    """The id of a pack (also its ``RequestId``): a hash of its key, the time it was formed and
    its members in order. Stored before the call, so a retry reuses it."""
    material = "\n".join([key, formed_at.isoformat(), *member_ids])
    return PACK_ID_PREFIX + hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]


def is_pack_id(value: str) -> bool:
    return value.startswith(PACK_ID_PREFIX) and len(value) == len(PACK_ID_PREFIX) + 32


@dataclass(frozen=True)
class IndexEntry:
    """One message waiting to be packed, in its pack key's index (oldest first by row key)."""

    key: str
    row_key: str
    message_id: str
    recipient_count: int

    @classmethod
    def of(cls, record: MessageRecord) -> IndexEntry:
        assert record.pack_key is not None
        return cls(
            record.pack_key, index_row_key(record), record.message_id, record.recipient_count
        )

    def to_entity(self) -> dict[str, Any]:
        return {
            "PartitionKey": INDEX_PREFIX + self.key,
            "RowKey": self.row_key,
            "MessageId": self.message_id,
            "RecipientCount": self.recipient_count,
        }

    @classmethod
    def from_entity(cls, key: str, entity: Mapping[str, Any]) -> IndexEntry:
        return cls(
            key,
            str(entity["RowKey"]),
            str(entity["MessageId"]),
            int(entity.get("RecipientCount") or 1),
        )


def index_row_key(record: MessageRecord) -> str:
    micros = int(record.created_at.timestamp() * 1_000_000)
    return f"{micros:017d}.{record.message_id}"


@dataclass(frozen=True)
class PackMember:
    """One member of a pack: our message id and its recipients' addresses, in order."""

    message_id: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Pack:
    """One upstream call's membership (in request order), its ``RequestId`` and, once sent,
    upstream's recipient ids by member."""

    pack_id: str
    key: str
    members: tuple[PackMember, ...]
    created_at: dt.datetime
    recipient_ids: Mapping[str, str] = field(default_factory=dict)  # upstream id -> message id
    #: A batch pack's batch (its members are the batch's; a driver message sends the pack).
    batch_id: str | None = None
    #: The call's RequestId when not the pack id (a batch pack whose members shrank before a call).
    call_request_id: str | None = None
    #: The members of a call that may have reached upstream: its RequestId is reused only for them.
    attempt: tuple[str, ...] = ()
    #: Calls recorded so far (only the first, with every member, uses the pack id).
    calls: int = 0
    #: Members recorded sent whose events may not be out yet (see :mod:`._drive`).
    announcing: tuple[str, ...] = ()
    #: The other half of the pack this one was split from, and whether this one was refused
    #: naming nobody (both halves refused: not one recipient's fault).
    sibling: str | None = None
    refused: bool = False
    #: A batch pack's driver lease: another driver leaves the pack alone until then.
    lease_until: dt.datetime | None = None
    etag: str | None = field(default=None, compare=False)

    @property
    def request_id(self) -> str:
        return self.call_request_id or self.pack_id

    @property
    def member_ids(self) -> list[str]:
        return [m.message_id for m in self.members]

    @property
    def recipient_count(self) -> int:
        return sum(len(m.addresses) for m in self.members)

    def to_entity(self) -> dict[str, Any]:
        members = json.dumps(
            [[m.message_id, list(m.addresses)] for m in self.members], separators=(",", ":")
        )
        entity: dict[str, Any] = {
            "PartitionKey": self.pack_id,
            "RowKey": PACK_ROW_KEY,
            "PackKey": self.key,
            "CreatedAt": dt.datetime.fromtimestamp(self.created_at.timestamp(), dt.UTC),
            "MemberCount": len(self.members),
            "RecipientCount": self.recipient_count,
        }
        entity.update(chunked("Members", members))
        if self.recipient_ids:
            entity.update(chunked("RecipientIds", json.dumps(dict(self.recipient_ids))))
        if self.announcing and self.batch_id is None:  # an index pack: see _packing._sent
            entity.update(chunked("Announcing", json.dumps(list(self.announcing))))
        if self.batch_id is not None:
            entity.update(
                BatchId=self.batch_id,
                CallRequestId=self.call_request_id,
                **chunked("Attempt", json.dumps(list(self.attempt))),
                Calls=self.calls,
                **chunked("Announcing", json.dumps(list(self.announcing))),
                Sibling=self.sibling,
                Refused=self.refused,
                LeaseUntil=None
                if self.lease_until is None
                else dt.datetime.fromtimestamp(self.lease_until.timestamp(), dt.UTC),
            )
        return entity

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> Pack:
        members = json.loads(joined(entity, "Members") or "[]")
        ids = json.loads(joined(entity, "RecipientIds") or "{}")
        created = entity.get("CreatedAt")
        lease = entity.get("LeaseUntil")
        return cls(
            pack_id=str(entity["PartitionKey"]),
            key=str(entity.get("PackKey", "")),
            members=tuple(PackMember(str(m[0]), tuple(m[1])) for m in members),
            created_at=created if isinstance(created, dt.datetime) else utcnow(),
            recipient_ids=ids,
            batch_id=entity.get("BatchId"),
            call_request_id=entity.get("CallRequestId"),
            attempt=tuple(json.loads(joined(entity, "Attempt") or "[]")),
            calls=int(entity.get("Calls") or 0),
            announcing=tuple(json.loads(joined(entity, "Announcing") or "[]")),
            sibling=entity.get("Sibling"),
            refused=bool(entity.get("Refused")),
            lease_until=lease if isinstance(lease, dt.datetime) else None,
            etag=entity.metadata.get("etag") if hasattr(entity, "metadata") else None,
        )


class PackStore(TableStore):
    """The pack index and pack records in ``SmartDialogPacks``."""

    TABLE = PACKS_TABLE

    # --- the index ---------------------------------------------------------------------------

    def index(self, records: Iterable[MessageRecord]) -> None:
        """Add packable records to their keys' indexes (idempotent; 100 rows a transaction).
        A record in a lane needs no row: its lane is its index."""
        from shared.messages._records import in_lane

        by_key: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            if record.pack_key is None or in_lane(record.message_id):
                continue
            entry = IndexEntry.of(record)
            by_key.setdefault(entry.key, []).append(entry.to_entity())
        for rows in by_key.values():
            for start in range(0, len(rows), TABLE_TRANSACTION_LIMIT):
                chunk = rows[start : start + TABLE_TRANSACTION_LIMIT]
                if len(chunk) == 1:
                    self.table.upsert_entity(chunk[0])
                else:
                    self.table.submit_transaction([("upsert", row) for row in chunk])

    def candidates(self, key: str, limit: int) -> list[IndexEntry]:
        """Up to ``limit`` indexed messages of ``key``, oldest first."""
        escaped = (INDEX_PREFIX + key).replace("'", "''")
        found: list[IndexEntry] = []
        pages = self.table.query_entities(
            f"PartitionKey eq '{escaped}'",
            select=["RowKey", "MessageId", "RecipientCount"],
            results_per_page=min(1000, max(1, limit)),
        )
        for entity in pages:
            if entity["RowKey"] == LEAD_ROW_KEY:
                continue
            found.append(IndexEntry.from_entity(key, entity))
            if len(found) >= limit:
                break
        return found

    def unindex(self, key: str, row_keys: Iterable[str]) -> None:
        """Remove rows from ``key``'s index (missing rows are fine)."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import TableTransactionError

        partition = INDEX_PREFIX + key
        rows = sorted(set(row_keys))
        for start in range(0, len(rows), TABLE_TRANSACTION_LIMIT):
            chunk = rows[start : start + TABLE_TRANSACTION_LIMIT]
            try:
                self.table.submit_transaction(
                    [("delete", {"PartitionKey": partition, "RowKey": r}) for r in chunk]
                )
            except TableTransactionError:  # one row already gone fails the lot: one by one
                for row in chunk:
                    with contextlib.suppress(ResourceNotFoundError):
                        self.table.delete_entity(partition, row)

    def lead(self, key: str, now: dt.datetime, until: dt.datetime) -> tuple[str | None, float]:
        """Take the lease of ``key``'s index until ``until``: (its ETag, 0) when taken, else
        (None, the seconds until the current leader's lease ends). Read first, so a message
        that finds a leader writes nothing (one read); a free lease costs a read and a write."""
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )

        row = {"PartitionKey": INDEX_PREFIX + key, "RowKey": LEAD_ROW_KEY,
               "Until": dt.datetime.fromtimestamp(until.timestamp(), dt.UTC)}  # fmt: skip
        try:
            current = self.table.get_entity(INDEX_PREFIX + key, LEAD_ROW_KEY)
        except ResourceNotFoundError:
            try:
                return str(self.table.create_entity(row).get("etag")), 0.0
            except ResourceExistsError:
                return None, 1.0  # another took it just now
        ends = current.get("Until")
        if isinstance(ends, dt.datetime) and ends > now:
            return None, max(0.001, (ends - now).total_seconds())
        try:
            done = self.table.update_entity(
                row, etag=current.metadata["etag"], match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return None, 1.0  # another took it (or gave it up) just now
        return str(done.get("etag")), 0.0

    def unlead(self, key: str, etag: str) -> None:
        """Give ``key``'s index lease up, unless another took it over since (ETag)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        with contextlib.suppress(ResourceModifiedError, ResourceNotFoundError):
            self.table.delete_entity(
                INDEX_PREFIX + key,
                LEAD_ROW_KEY,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )

    # --- packs -------------------------------------------------------------------------------

    def save(self, pack: Pack) -> None:
        self.table.upsert_entity(pack.to_entity())

    def add(self, pack: Pack) -> None:
        """Write ``pack`` unless it exists (then it stays as it is: its drivers may be at it)."""
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self.table.create_entity(pack.to_entity())

    def swap(self, pack: Pack, **changes: Any) -> Pack | None:
        """Write ``pack`` with ``changes`` if nobody changed it since it was read (ETag);
        None when that compare-and-swap lost."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        assert pack.etag is not None, "swap needs a pack read from the table"
        updated = replace(pack, **changes)
        try:
            metadata = self.table.update_entity(
                updated.to_entity(),
                mode=UpdateMode.REPLACE,
                etag=pack.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return replace(updated, etag=str(metadata.get("etag")))

    def get(self, pack_id: str) -> Pack | None:
        entity = self.read(pack_id, PACK_ROW_KEY)
        return None if entity is None else Pack.from_entity(entity)

    def announcing(self, pack_id: str) -> bool:
        """Whether the pack lists members whose events may not be out yet (its ``announcing``),
        in a read of that column alone."""
        entity = self.read(pack_id, PACK_ROW_KEY, select=["Announcing0"])
        return entity is not None and entity.get("Announcing0") not in (None, "[]")
