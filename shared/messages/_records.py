"""The rows of the status table: message records and recipient slots, and where they live.

``SmartDialogMessages``: RowKey ``message`` is the :class:`MessageRecord`, ``recipient-NNNNN`` its
:class:`RecipientSlot` rows (delivery reports update those, never contending with the sender).
Bulk and lane members share partitions (rows prefixed ``<row>.``); :func:`message_keys` maps an id
to both from the id alone. See docs/sending.md, "Bulk sends: batch packs" and "Lanes"."""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from shared.logs import loggable_id
from shared.messages._models import FailureInfo, MessageStatus, Operation, RecipientStatus
from shared.storage import chunked, joined, plain_datetime, utc

__all__ = [
    "BATCH_PARTITION_ROWS",
    "INLINE_COMMAND_CHARS",
    "RESULT_CHARS",
    "UPSTREAM_ID_CHARS",
    "DamagedRecordError",
    "MessageRecord",
    "RecipientSlot",
    "batch_filter",
    "effective_status",
    "message_filter",
    "message_keys",
    "odata_quote",
    "record_keys",
    "slot_keys",
]

RECORD_ROW_KEY = "message"
RECIPIENT_ROW_PREFIX = "recipient-"
#: A command longer than this (in UTF-16 units) is kept in a blob, not in its record.
INLINE_COMMAND_CHARS = 200_000
#: The most of upstream's answer a record keeps, in UTF-16 units (longer: without recipients).
RESULT_CHARS = 200_000
#: An upstream id (message, recipient, thread) longer than this is kept as none.
UPSTREAM_ID_CHARS = 100


#: A bulk member's id: its batch's id (a UUID we make) and its row.
_BATCH_MEMBER_ID = re.compile(
    r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.([0-9]{5,6})$"
)


#: Bulk members per partition.
BATCH_PARTITION_ROWS = 500


#: A lane member's id, ``<lane>.l<created µs><random>`` (docs/sending.md, "Lanes").
_LANE_MEMBER_ID = re.compile(
    r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.l([0-9]{17}[0-9a-f]{8})$"
)
_LANE_NAMESPACE = uuid.UUID("6c1e0f52-8d3a-4b7e-9f14-2a5d7c9e3b81")
LANE_SUFFIX = ".l"


def lane_partition(key: str, at: dt.datetime) -> str:
    """The partition of pack key ``key``'s lane for the minute of ``at``."""
    minute = int(at.timestamp()) // 60
    return str(uuid.uuid5(_LANE_NAMESPACE, f"{key}|{minute}")) + LANE_SUFFIX


def lane_opens(at: dt.datetime) -> dt.datetime:
    """When the lane of ``at``'s minute opens: no send accepted before then is in it."""
    return dt.datetime.fromtimestamp(int(at.timestamp()) // 60 * 60, dt.UTC)


def lane_message_id(key: str, at: dt.datetime) -> str:
    """A new message id in ``key``'s lane of ``at``'s minute (oldest first by row)."""
    micros = int(at.timestamp() * 1_000_000)
    return f"{lane_partition(key, at)}{micros:017d}{secrets.token_hex(4)}"


def in_lane(message_id: str) -> bool:
    return _LANE_MEMBER_ID.match(message_id) is not None


def lane_time(message_id: str) -> dt.datetime | None:
    """When a lane member was accepted (its id says; its lane is that time's minute), or None
    for an id of another shape."""
    match = _LANE_MEMBER_ID.match(message_id)
    if match is None:
        return None
    return dt.datetime.fromtimestamp(int(match.group(2)[:17]) / 1_000_000, dt.UTC)


def message_keys(message_id: str) -> tuple[str, str]:
    """(PartitionKey, RowKey prefix) of a message's rows: its own partition and no prefix, or
    its batch's partition (of its row) or lane and ``<row>.``."""
    lane = _LANE_MEMBER_ID.match(message_id)
    if lane is not None:
        return lane.group(1) + LANE_SUFFIX, lane.group(2) + "."
    match = _BATCH_MEMBER_ID.match(message_id)
    if match is None:
        return message_id, ""
    row = match.group(2)
    return f"{match.group(1)}.{int(row) // BATCH_PARTITION_ROWS:03d}", row + "."


def batch_filter(batch_id: str) -> str:
    """The Table query filter of every row of every member of a batch."""
    return (
        f"PartitionKey gt '{odata_quote(batch_id)}.' and PartitionKey lt '{odata_quote(batch_id)}/'"
    )


def record_keys(message_id: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) of a message's record."""
    partition, prefix = message_keys(message_id)
    return partition, prefix + RECORD_ROW_KEY


def slot_keys(message_id: str, index: int) -> tuple[str, str]:
    """(PartitionKey, RowKey) of a message's ``index``-th recipient slot."""
    partition, prefix = message_keys(message_id)
    return partition, f"{prefix}{RECIPIENT_ROW_PREFIX}{index:05d}"


def odata_quote(value: str) -> str:
    """``value`` inside a quoted OData string literal."""
    return value.replace("'", "''")


def message_filter(message_id: str) -> str:
    """The Table query filter of every row of one message (record and slots)."""
    partition, prefix = message_keys(message_id)
    where = f"PartitionKey eq '{odata_quote(partition)}'"
    if prefix:
        # "." sorts right before "/": the prefix's rows and nothing else.
        where += f" and RowKey ge '{prefix}' and RowKey lt '{prefix[:-1]}/'"
    return where


class DamagedRecordError(RuntimeError):
    """A stored message record or recipient slot lacks a property or holds a value we cannot
    read: our own storage failing, so callers let it propagate (the host retries, then poisons)."""

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


@dataclass(frozen=True)
class MessageRecord:
    """The status record of one outbound message (RowKey ``message``).

    ``command`` is the normalized queue message (JSON; re-enqueued, it sends the same request);
    ``result`` upstream's answer (JSON, upstream casing) once sent; ``failure`` why it failed for
    good; ``last_error`` the latest transient failure; ``announced`` set once the final state's
    event and dead letter are out; ``etag`` the version this copy was read at.
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
    #: When a claim handed back to wait comes back, for its status only (None: none since).
    waits_until: dt.datetime | None = None
    #: When it was first claimed: its text never went out before (None: never, or an old row).
    claimed_at: dt.datetime | None = None
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
    #: The pack (one upstream call) it was claimed into, set before the call: a retry resends it.
    pack_id: str | None = None
    batch_id: str | None = None
    #: The blob that keeps a command too long for the entity (:class:`MessageStore` handles it).
    command_blob: str | None = None
    #: W3C trace context of the request that made it: delivery reports continue its trace.
    traceparent: str | None = None
    #: An earlier attempt may have reached upstream (a timeout, an answer lost); old rows: False.
    maybe_sent: bool = False
    #: The connection whose sender last claimed it (None: not claimed since this field exists).
    sent_through: str | None = None
    #: When an operator last re-drove it (None: never, or before this field existed).
    redriven_at: dt.datetime | None = None
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
            "CreatedAt": plain_datetime(self.created_at),
            "UpdatedAt": plain_datetime(self.updated_at),
            "ValidUntil": plain_datetime(self.valid_until),
            "RecipientCount": self.recipient_count,
            "PartCount": self.part_count,
            "Attempts": self.attempts,
            "LeaseUntil": plain_datetime(self.lease_until),
            "NextAttemptAt": plain_datetime(self.next_attempt_at),
            "WaitsUntil": plain_datetime(self.waits_until),
            "ClaimedAt": plain_datetime(self.claimed_at),
            "LastError": self.last_error.model_dump_json() if self.last_error else None,
            "Failure": self.failure.model_dump_json() if self.failure else None,
            "UpstreamMessageId": self.upstream_message_id,
            "Duplicate": self.duplicate,
            "SentAt": plain_datetime(self.sent_at),
            "FinishedAt": plain_datetime(self.finished_at),
            "Announced": self.announced,
            "PackKey": self.pack_key,
            "PackId": self.pack_id,
            "BatchId": self.batch_id,
            "CommandBlob": self.command_blob,
            "Traceparent": self.traceparent,
            "MaybeSent": self.maybe_sent,
            "Connection": self.sent_through,
            "RedrivenAt": plain_datetime(self.redriven_at),
        }
        entity.update(chunked("Command", "" if self.command_blob else self.command))
        entity.update(chunked("Result", self.result))
        return entity

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> MessageRecord:
        """The record in ``entity``; :class:`DamagedRecordError` if it cannot be read."""

        def failure(name: str) -> FailureInfo | None:
            raw = entity.get(name)
            return FailureInfo.model_validate_json(raw) if raw else None

        try:
            created = utc(entity["CreatedAt"])
            if created is None:
                raise ValueError("CreatedAt is empty")
            return cls(
                message_id=str(entity.get("MessageId") or entity["PartitionKey"]),
                status=MessageStatus(entity["Status"]),
                operation=Operation(entity["Operation"]),
                customer_id=str(entity["CustomerId"]),
                service_id=entity.get("ServiceId"),
                request_id=entity.get("RequestId"),
                command=joined(entity, "Command") or "",
                fingerprint=str(entity.get("Fingerprint", "")),
                idempotency_key_hash=entity.get("IdempotencyKeyHash"),
                created_at=created,
                updated_at=utc(entity.get("UpdatedAt")) or created,
                valid_until=utc(entity.get("ValidUntil")) or created,
                recipient_count=int(entity.get("RecipientCount") or 0),
                part_count=int(entity.get("PartCount") or 1),
                attempts=int(entity.get("Attempts") or 0),
                lease_until=utc(entity.get("LeaseUntil")),
                next_attempt_at=utc(entity.get("NextAttemptAt")),
                waits_until=utc(entity.get("WaitsUntil")),
                claimed_at=utc(entity.get("ClaimedAt")),
                last_error=failure("LastError"),
                failure=failure("Failure"),
                result=joined(entity, "Result"),
                upstream_message_id=entity.get("UpstreamMessageId"),
                duplicate=bool(entity.get("Duplicate")),
                sent_at=utc(entity.get("SentAt")),
                finished_at=utc(entity.get("FinishedAt")),
                announced=bool(entity.get("Announced")),
                pack_key=entity.get("PackKey"),
                pack_id=entity.get("PackId"),
                batch_id=entity.get("BatchId"),
                command_blob=entity.get("CommandBlob"),
                traceparent=entity.get("Traceparent"),
                maybe_sent=bool(entity.get("MaybeSent")),
                sent_through=entity.get("Connection"),
                redriven_at=utc(entity.get("RedrivenAt")),
                etag=entity.metadata.get("etag") if hasattr(entity, "metadata") else None,
            )
        except (KeyError, ValueError, TypeError, AssertionError) as exc:
            raise _damaged(entity, exc) from exc

    @property
    def logged_id(self) -> str:
        """Its id for a log line (a queued command's may be a caller's, holding a number)."""
        return loggable_id(self.message_id)

    @property
    def failed_id(self) -> str:
        """The id of its failure's ``message.failed`` event and dead letter, stable across
        crashes: ``<messageId>:failed``, after a re-drive ``<messageId>:failed:<re-drive time>``."""
        failed = f"{self.message_id}:{MessageStatus.FAILED}"
        return f"{failed}:{self.redriven_at:%Y%m%dT%H%M%S%f}" if self.redriven_at else failed

    @property
    def may_have_reached(self) -> bool:
        """Whether an attempt may have reached SmartDialog: one recorded so (``maybe_sent``), or
        one cut off mid-call (still ``sending``: its worker stopped or its lease ran out)."""
        return self.maybe_sent or self.status is MessageStatus.SENDING

    @property
    def in_doubt(self) -> bool:
        """Whether an attempt may have sent it: recorded so (``maybe_sent``), or its failure
        says so (``outcome-unknown``: a give-up writes the failure, not the flag)."""
        return self.maybe_sent or (
            self.failure is not None and self.failure.code == "outcome-unknown"
        )

    def result_json(self) -> dict[str, Any] | None:
        """Upstream's answer as a dict, or None before it was sent."""
        if not self.result:
            return None
        value = json.loads(self.result)
        return value if isinstance(value, dict) else None

    @property
    def claim(self) -> tuple[int, dt.datetime | None] | None:
        """The claim that holds it while ``sending``, (attempt, lease); None while unclaimed."""
        return (self.attempts, self.lease_until) if self.status is MessageStatus.SENDING else None

    def held_until(self, now: dt.datetime) -> dt.datetime | None:
        """The lease of a claim that still holds it at ``now`` (another worker's, while
        ``sending`` and the lease is in the future); None when nobody holds it."""
        lease = self.lease_until
        if self.status is MessageStatus.SENDING and lease is not None and lease > now:
            return lease
        return None

    @property
    def upstream_request_id(self) -> str | None:
        """The RequestId its call carried: a packed message's is its pack's; a bulk member's
        record holds its own call's (shared.outbound._drive)."""
        return self.request_id if self.batch_id is not None else (self.pack_id or self.request_id)

    @cached_property
    def connection(self) -> str:
        """The connection it is sent through: the one that claimed it, else its command's
        ``Connection`` (``default``)."""
        return self.sent_through or text_connection(self.command)


@dataclass(frozen=True)
class RecipientSlot:
    """One recipient of a message (RowKey ``recipient-NNNNN``); delivery reports update it."""

    message_id: str
    index: int
    address: str
    part_count: int
    status: RecipientStatus = RecipientStatus.PENDING
    upstream_recipient_id: str | None = None
    updated_at: dt.datetime | None = None
    etag: str | None = field(default=None, compare=False)
    #: What the recipient showed before its slot last moved (``Moved``; None: not known).
    previous: RecipientStatus | None = None

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
            "Status": str(self.status),
            "StatusRank": self.status.rank,
            "UpstreamRecipientId": self.upstream_recipient_id,
            "UpdatedAt": plain_datetime(self.updated_at),
        }

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> RecipientSlot:
        """The slot in ``entity``; :class:`DamagedRecordError` if it cannot be read."""
        # Only the move to its status now (an earlier release's later move leaves a stale one).
        before, _, after = str(entity.get("Moved") or "").partition(">")
        moved = bool(after) and after == entity.get("Status")
        try:
            return cls(
                message_id=str(entity.get("MessageId") or entity["PartitionKey"]),
                index=int(entity["Index"]),
                address=str(entity.get("Address", "")),
                part_count=int(entity.get("PartCount") or 1),
                status=RecipientStatus(entity.get("Status") or RecipientStatus.PENDING),
                upstream_recipient_id=entity.get("UpstreamRecipientId"),
                updated_at=utc(entity.get("UpdatedAt")),
                etag=entity.metadata.get("etag") if hasattr(entity, "metadata") else None,
                previous=RecipientStatus(before) if moved else None,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise _damaged(entity, exc) from exc


def text_connection(text: str) -> str:
    """The connection of a send command's JSON text (``default`` when it names none)."""
    from shared.connections import DEFAULT_CONNECTION, connection_name, is_default

    try:
        value = json.loads(text).get("Connection")
    except (ValueError, AttributeError, RecursionError):
        return DEFAULT_CONNECTION
    if not isinstance(value, str) or is_default(value):
        return DEFAULT_CONNECTION
    return connection_name(value)


def effective_status(slot: RecipientSlot, message_status: MessageStatus) -> RecipientStatus:
    """A recipient's status: its slot's own (delivery reports) or its message's, whichever is
    further along (the sender records the message's outcome on the record only)."""
    derived = RecipientStatus.of_message(message_status)
    return slot.status if slot.status.rank >= derived.rank else derived
