"""Packs: many queued sends in one upstream call (the pack key, the pack record, the index).

SmartDialog's send takes many ``Recipients``, each with its own ``Personalization``, and the
quota counts calls, not recipients. Queued messages that would be sent *identically* apart from
their recipients share a :func:`pack_key`; the sender packs such messages into one call.

``SmartDialogPacks`` holds two kinds of partitions:

- ``q-<pack key>``: the *index* of a pack key, one row per message that may still be packed
  (RowKey ``<created µs>.<message id>``, oldest first). Written when the message is recorded,
  removed when a pack takes it or it is found final. It is only a hint: a message is packed
  only after a compare-and-swap on its own status record (``queued -> sending`` with the pack
  id), so a stale row is harmless.
- ``pack-<id>`` (RowKey ``pack``): a :class:`Pack`, the membership of one upstream call in
  request order with each member's addresses, and the ``RequestId`` of that call. It is written
  *before* the call; every member's record names it (``pack_id``), so a retry after an
  ambiguous failure re-sends the same pack with the same ``RequestId`` (upstream answers 409
  with the original, and every member is sent exactly once). After the call the pack also maps
  upstream recipient ids to members, so delivery reports to the pack's DLR URL reach each
  member's own record.

What never packs (the pack key is None): discussion replies (no ``RequestId``: they are never
repeated, so never grouped), messages listing one address twice. Messages of different
connections (customer), services, senders, contents (before personalization), protocols,
schedules, options (``AdMessage``, ``CustomerData``, ``AttachmentUri``, the caller's ``DlrUrl``,
WhatsApp template and parameters), operations, reply parents or transactional flags get
different keys. Within a pack no address appears twice, so upstream's answer maps back to
members by address.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.names import PACKS_TABLE
from shared.outbound._models import OutboundMessage, SendDiscussionReplyMessageCommand

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.outbound._store import MessageRecord
    from shared.settings import Settings

__all__ = [
    "PACK_ID_PREFIX",
    "Pack",
    "PackMember",
    "PackStore",
    "command_addresses",
    "is_pack_id",
    "new_pack_id",
    "pack_key",
]

#: Prefix of pack ids (never a message id of ours: those are UUIDs, batch members or the
#: caller's; a caller's id could start with it, so pack look-ups go by the pack table only).
PACK_ID_PREFIX = "pack-"
INDEX_PREFIX = "q-"
PACK_ROW_KEY = "pack"
_TRANSACTION_LIMIT = 100
_CHUNK_CHARS = 30_000
# Body fields that differ between members of one pack: everything else must be equal.
_PER_MEMBER_FIELDS = frozenset({"Recipients", "RequestId"})


def command_addresses(command: OutboundMessage) -> list[str]:
    """The recipient addresses of a command, in order (none for a discussion reply)."""
    if isinstance(command, SendDiscussionReplyMessageCommand):
        return []
    return [r.Address for r in command.body.Recipients]


def pack_key(command: OutboundMessage) -> str | None:
    """The key shared by every command that may go upstream in the same call as this one, or
    None if it must always be sent alone (see the module docstring)."""
    if isinstance(command, SendDiscussionReplyMessageCommand):
        return None
    addresses = command_addresses(command)
    if not addresses or len(set(addresses)) != len(addresses):
        return None
    body = command.body.model_dump(mode="json", by_alias=True, exclude_none=True)
    material = {
        "operation": command.operation,
        "customerId": command.customerId,
        "serviceId": command.serviceId,
        "parentMessageId": getattr(command, "parentMessageId", None),
        "transactional": command.transactional,
        "body": {k: v for k, v in body.items() if k not in _PER_MEMBER_FIELDS},
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:40]


def new_pack_id(key: str, member_ids: Iterable[str], formed_at: dt.datetime) -> str:
    """The id of a pack (also its ``RequestId``): a hash of its key, the time it was formed and
    its members in order. Stored before the call, so a retry reuses it."""
    material = "\n".join([key, formed_at.isoformat(), *member_ids])
    return PACK_ID_PREFIX + hashlib.sha256(material.encode("utf-8")).hexdigest()[:32]


def is_pack_id(value: str) -> bool:
    return value.startswith(PACK_ID_PREFIX) and len(value) == len(PACK_ID_PREFIX) + 32


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

    @property
    def request_id(self) -> str:
        return self.pack_id

    @property
    def recipient_count(self) -> int:
        return sum(len(m.addresses) for m in self.members)

    def member_of_address(self, address: str) -> str | None:
        for member in self.members:
            if address in member.addresses:
                return member.message_id
        return None

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
        entity.update(_chunked("Members", members))
        if self.recipient_ids:
            entity.update(_chunked("RecipientIds", json.dumps(dict(self.recipient_ids))))
        return entity

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> Pack:
        members = json.loads(_joined(entity, "Members") or "[]")
        ids = json.loads(_joined(entity, "RecipientIds") or "{}")
        created = entity.get("CreatedAt")
        return cls(
            pack_id=str(entity["PartitionKey"]),
            key=str(entity.get("PackKey", "")),
            members=tuple(PackMember(str(m[0]), tuple(m[1])) for m in members),
            created_at=created if isinstance(created, dt.datetime) else dt.datetime.now(dt.UTC),
            recipient_ids=ids,
        )


def _chunked(name: str, text: str) -> dict[str, Any]:
    chunks = [text[i : i + _CHUNK_CHARS] for i in range(0, len(text), _CHUNK_CHARS)] or [""]
    out: dict[str, Any] = {f"{name}Chunks": len(chunks)}
    out.update({f"{name}{i}": chunk for i, chunk in enumerate(chunks)})
    return out


def _joined(entity: Mapping[str, Any], name: str) -> str | None:
    count = entity.get(f"{name}Chunks")
    if count is None:
        return None
    return "".join(str(entity.get(f"{name}{i}", "")) for i in range(int(count)))


class PackStore:
    """The pack index and pack records in ``SmartDialogPacks``."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> PackStore:
        from shared.storage import table_client

        return cls(table_client(PACKS_TABLE, settings))

    @property
    def table(self) -> TableClient:
        from shared.outbound._store import _ensure_table

        _ensure_table(self._table)
        return self._table

    # --- the index ---------------------------------------------------------------------------

    def index(self, records: Iterable[MessageRecord]) -> None:
        """Add packable records to their keys' indexes (idempotent; 100 rows a transaction)."""
        by_key: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            if record.pack_key is None:
                continue
            by_key.setdefault(INDEX_PREFIX + record.pack_key, []).append(
                {
                    "PartitionKey": INDEX_PREFIX + record.pack_key,
                    "RowKey": index_row_key(record),
                    "MessageId": record.message_id,
                    "RecipientCount": record.recipient_count,
                }
            )
        for rows in by_key.values():
            for start in range(0, len(rows), _TRANSACTION_LIMIT):
                chunk = rows[start : start + _TRANSACTION_LIMIT]
                if len(chunk) == 1:
                    self.table.upsert_entity(chunk[0])
                else:
                    self.table.submit_transaction([("upsert", row) for row in chunk])

    def candidates(self, key: str, limit: int) -> list[tuple[str, str, int]]:
        """Up to ``limit`` indexed messages of ``key``, oldest first: (row key, id, recipients)."""
        escaped = (INDEX_PREFIX + key).replace("'", "''")
        found: list[tuple[str, str, int]] = []
        pages = self.table.query_entities(
            f"PartitionKey eq '{escaped}'",
            select=["RowKey", "MessageId", "RecipientCount"],
            results_per_page=min(1000, max(1, limit)),
        )
        for entity in pages:
            found.append(
                (
                    str(entity["RowKey"]),
                    str(entity["MessageId"]),
                    int(entity.get("RecipientCount") or 1),
                )
            )
            if len(found) >= limit:
                break
        return found

    def unindex(self, key: str, row_keys: Iterable[str]) -> None:
        """Remove rows from ``key``'s index (missing rows are fine)."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import TableTransactionError

        partition = INDEX_PREFIX + key
        rows = sorted(set(row_keys))
        for start in range(0, len(rows), _TRANSACTION_LIMIT):
            chunk = rows[start : start + _TRANSACTION_LIMIT]
            try:
                self.table.submit_transaction(
                    [("delete", {"PartitionKey": partition, "RowKey": r}) for r in chunk]
                )
            except TableTransactionError:  # one row already gone fails the lot: one by one
                for row in chunk:
                    with contextlib.suppress(ResourceNotFoundError):
                        self.table.delete_entity(partition, row)

    # --- packs -------------------------------------------------------------------------------

    def save(self, pack: Pack) -> None:
        self.table.upsert_entity(pack.to_entity())

    def get(self, pack_id: str) -> Pack | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self.table.get_entity(pack_id, PACK_ROW_KEY)
        except ResourceNotFoundError:
            return None
        return Pack.from_entity(entity)
