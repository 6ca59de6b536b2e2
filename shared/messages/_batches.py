"""Bulk batches (``SmartDialogBatches``, PartitionKey = batch id, RowKey ``batch``): the typed row
and its one writer. The status only moves along :data:`~shared.messages.BATCH_TRANSITIONS`."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shared.messages._models import BATCH_TRANSITIONS, BatchStatus, check_batch_transition
from shared.messages._table import TableStore
from shared.names import BATCHES_TABLE
from shared.storage import chunked, joined, plain_datetime, utc

__all__ = ["BatchRecord", "BatchStore"]

BATCH_ROW_KEY = "batch"
#: Characters of refused rows kept on the batch (whole rows; ``RefusedCount`` counts them all).
_REFUSED_CHARS = 30_000


@dataclass(frozen=True)
class BatchRecord:
    """One bulk request: what it accepted and refused, and the packs it formed."""

    batch_id: str
    status: BatchStatus
    customer_id: str
    service_id: str
    total: int
    accepted: int
    created_at: dt.datetime
    #: The exact formation time, as text: a replay makes the same pack ids from it.
    formed_at: str
    pack_ids: tuple[str, ...]
    refused: tuple[dict[str, Any], ...] = ()
    idempotency_key_hash: str | None = None
    #: How many rows were refused, when ``refused`` (read back) may list only the first.
    refused_total: int | None = None
    #: When a status poll last put stale packs' drivers back on the queue.
    redriven_at: dt.datetime | None = None
    #: The connection it was accepted through, as its status poll reads it (None: an old row).
    connection: str | None = None
    etag: str | None = field(default=None, compare=False)

    def to_entity(self) -> dict[str, Any]:
        return {
            "PartitionKey": self.batch_id,
            "RowKey": BATCH_ROW_KEY,
            "Status": str(self.status),
            "CustomerId": self.customer_id,
            "ServiceId": self.service_id,
            "Total": self.total,
            "Accepted": self.accepted,
            "Refused": _fitting(self.refused),
            "RefusedCount": self.refused_count,
            "CreatedAt": plain_datetime(self.created_at),
            "FormedAt": self.formed_at,
            "IdempotencyKeyHash": self.idempotency_key_hash,
            "RedrivenAt": plain_datetime(self.redriven_at),
            "Connection": self.connection,
            **chunked("PackIds", json.dumps(list(self.pack_ids))),
        }

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> BatchRecord:
        try:
            refused = json.loads(entity.get("Refused") or "[]")
        except ValueError:  # cut mid-row at the property's limit (before whole rows were kept)
            refused = []
        created = utc(entity.get("CreatedAt")) or dt.datetime.fromtimestamp(0, dt.UTC)
        return cls(
            batch_id=str(entity["PartitionKey"]),
            status=BatchStatus(entity.get("Status") or BatchStatus.ACCEPTING),
            customer_id=str(entity.get("CustomerId") or ""),
            service_id=str(entity.get("ServiceId") or ""),
            total=int(entity.get("Total") or 0),
            accepted=int(entity.get("Accepted") or 0),
            created_at=created,
            formed_at=str(entity.get("FormedAt") or created.isoformat()),
            pack_ids=tuple(json.loads(joined(entity, "PackIds") or "[]")),
            refused=tuple(refused),
            refused_total=int(entity.get("RefusedCount") or len(refused)),
            idempotency_key_hash=entity.get("IdempotencyKeyHash"),
            redriven_at=utc(entity.get("RedrivenAt")),
            connection=entity.get("Connection"),
            etag=entity.metadata.get("etag") if hasattr(entity, "metadata") else None,
        )

    @property
    def refused_count(self) -> int:
        return len(self.refused) if self.refused_total is None else self.refused_total


def _fitting(refused: tuple[dict[str, Any], ...]) -> str:
    """The JSON list of the first refused rows that fit in :data:`_REFUSED_CHARS` (ASCII)."""
    size = 2
    for count, row in enumerate(refused):
        size += len(json.dumps(row)) + 2
        if size > _REFUSED_CHARS:
            return json.dumps(list(refused[:count]))
    return json.dumps(list(refused))


class BatchStore(TableStore):
    """Reads and writes batch rows; a status change goes through the batch transition table."""

    TABLE = BATCHES_TABLE

    def save(self, batch: BatchRecord) -> None:
        """Write ``batch`` whole (its request records it before anything else of it)."""
        self.table.upsert_entity({k: v for k, v in batch.to_entity().items() if v is not None})

    def get(self, batch_id: str) -> BatchRecord | None:
        entity = self.read(batch_id, BATCH_ROW_KEY)
        return None if entity is None else BatchRecord.from_entity(entity)

    def mark(self, batch: BatchRecord, status: BatchStatus) -> BatchRecord:
        """Move ``batch`` to ``status`` (an arrow of the table; repeating one is fine) on its
        ETag; if the row changed, re-read and moved only if the arrow leaves its status now.
        The row as written."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError
        from azure.data.tables import UpdateMode

        check_batch_transition(batch.status, status)
        row = {"PartitionKey": batch.batch_id, "RowKey": BATCH_ROW_KEY, "Status": str(status)}
        if batch.etag is None:  # just written whole by its own request
            self.table.update_entity(row, mode=UpdateMode.MERGE)
            return replace(batch, status=status)
        for _ in range(5):
            try:
                done = self.table.update_entity(
                    row, mode=UpdateMode.MERGE, etag=batch.etag,
                    match_condition=MatchConditions.IfNotModified,
                )  # fmt: skip
                return replace(batch, status=status, etag=str(done.get("etag")))
            except ResourceModifiedError:
                now = self.get(batch.batch_id)
                if now is None or status not in BATCH_TRANSITIONS[now.status]:
                    return now or batch
                batch = now
        raise RuntimeError(f"batch {batch.batch_id} kept changing under us")

    def note_redriven(self, batch: BatchRecord, at: dt.datetime) -> BatchRecord:
        """Record that stale packs' drivers went back on the queue at ``at``."""
        from azure.data.tables import UpdateMode

        self.table.update_entity(
            {
                "PartitionKey": batch.batch_id,
                "RowKey": BATCH_ROW_KEY,
                "RedrivenAt": plain_datetime(at),
            },
            mode=UpdateMode.MERGE,
        )
        return replace(batch, redriven_at=at)
