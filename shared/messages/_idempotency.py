"""``Idempotency-Key`` claims (``SmartDialogIdempotency``): one entity per key (PartitionKey =
a hash of customer and key, RowKey ``key``) pointing at the message the key created."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field, replace

from shared.messages._table import TableStore
from shared.names import IDEMPOTENCY_TABLE
from shared.storage import ensure_table, plain_datetime, utc

__all__ = ["IdempotencyEntry", "IdempotencyStore", "idempotency_key_hash"]

IDEMPOTENCY_ROW_KEY = "key"


@dataclass(frozen=True)
class IdempotencyEntry:
    """An idempotency key's claim: the message it created and its request's fingerprint; an
    ask's also its question's terms' (``asks``, apart, so older releases compare the send's);
    ``new`` when the call that returned it made it."""

    key_hash: str
    message_id: str
    fingerprint: str
    created_at: dt.datetime
    expires_at: dt.datetime
    asks: str | None = None
    etag: str | None = field(default=None, compare=False)
    new: bool = field(default=False, compare=False)


def idempotency_key_hash(customer_id: str, key: str, connection: str | None = None) -> str:
    """The stored form of a key: SHA-256 of customer, key (keys may be anything) and a named
    connection (None for the default, whose hashes predate connections)."""
    scoped = f"{customer_id}\n{key}" + (f"\n{connection}" if connection else "")
    return hashlib.sha256(scoped.encode()).hexdigest()


def _row(entry: IdempotencyEntry) -> dict[str, object]:
    """The claim row of ``entry``."""
    return {
        "PartitionKey": entry.key_hash,
        "RowKey": IDEMPOTENCY_ROW_KEY,
        "MessageId": entry.message_id,
        "Fingerprint": entry.fingerprint,
        "CreatedAt": plain_datetime(entry.created_at),
        "ExpiresAt": plain_datetime(entry.expires_at),
        **({"AskFingerprint": entry.asks} if entry.asks else {}),
    }


class IdempotencyStore(TableStore):
    """``Idempotency-Key`` claims: the first request with a key wins, later ones find it."""

    TABLE = IDEMPOTENCY_TABLE

    def claim(
        self,
        key_hash: str,
        message_id: str,
        fingerprint: str,
        *,
        now: dt.datetime,
        ttl: dt.timedelta,
        asks: str | None = None,
    ) -> IdempotencyEntry:
        """Claim ``key_hash`` for ``message_id`` (an ask's with ``asks``): the entry holding the
        key now, ``new`` if this call made it (also when the insert's answer was lost), else
        another message's. An expired claim is taken over (compare-and-swap). ``message_id``
        must be new (random): a claim naming it is this call's."""
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )
        from azure.data.tables import UpdateMode

        ensure_table(self._table)
        mine = IdempotencyEntry(key_hash, message_id, fingerprint, now, now + ttl, asks, new=True)
        entity = _row(mine)
        for _ in range(5):
            try:
                inserted = self._table.create_entity(entity)
                return replace(mine, etag=inserted.get("etag"))
            except ResourceExistsError:
                pass
            try:
                found = self._table.get_entity(key_hash, IDEMPOTENCY_ROW_KEY)
            except ResourceNotFoundError:
                continue
            if found.get("MessageId") == message_id:
                # Our own insert, committed but answered 5xx: the client's retry got 409.
                return replace(mine, etag=found.metadata.get("etag"))
            expires = utc(found.get("ExpiresAt"))
            if expires is not None and expires <= now:
                try:
                    taken = self._table.update_entity(
                        entity,
                        mode=UpdateMode.REPLACE,
                        etag=found.metadata["etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                    return replace(mine, etag=taken.get("etag"))
                except (ResourceModifiedError, ResourceNotFoundError):
                    continue
            created = utc(found.get("CreatedAt")) or now
            return IdempotencyEntry(
                key_hash,
                str(found["MessageId"]),
                str(found.get("Fingerprint", "")),
                created,
                expires or now,
                found.get("AskFingerprint"),
                etag=found.metadata.get("etag"),
            )
        raise RuntimeError("idempotency key claim kept changing under us")

    def move(self, entry: IdempotencyEntry, message_id: str) -> IdempotencyEntry | None:
        """``entry``, a claim this request made (``new``, with its ETag), moved to the message
        ``message_id`` in one conditional write: the key is never free meanwhile, and no other
        request's claim is taken. The claim now, or None when its row changed."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        if not entry.new or entry.etag is None:
            return None
        moved = replace(entry, message_id=message_id)
        try:
            updated = self._table.update_entity(
                _row(moved),
                mode=UpdateMode.REPLACE,
                etag=entry.etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return None
        return replace(moved, etag=updated.get("etag"))

    def release(self, key_hash: str, message_id: str) -> bool:
        """Give up ``message_id``'s claim of ``key_hash`` (its request was refused before
        anything was recorded), so the key may be used again. Only that message's claim is
        deleted (ETag-conditional); True if it was."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        ensure_table(self._table)
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
