"""A bulk request's members and packs (see :mod:`shared.outbound._bulk`): each accepted row
becomes an ordinary SendMessage (id ``<batch id>.<row:05d>``, ``RequestId`` the same), and
consecutive members with one pack key, up to ``SMARTDIALOG_PACK_MAX_RECIPIENTS`` recipients,
form a *batch pack*. The same rows, batch id and time make the same members and packs: a
replay that finishes a batch relies on it."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from shared.messages import MessageRecord, Pack, PackMember, RecipientSlot, new_pack_id
from shared.outbound._models import OutboundMessageAdapter
from shared.outbound._records import new_record, normalize

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["MAX_ROW", "BulkRecipient", "Members", "bulk_fingerprint", "bulk_members"]

#: The last row a member id carries (:func:`~shared.messages.message_keys`); CSV lines may pass it.
MAX_ROW = 999_999

#: Member records with their recipient slots, in row order.
Members = list[tuple[MessageRecord, list[RecipientSlot]]]


@dataclass(frozen=True)
class BulkRecipient:
    """One recipient as given: its row (1-based JSON index, or CSV line), address, values, and
    (field, why) if it is refused as read (a CSV row with more cells than its header)."""

    row: int
    address: str
    personalization: Mapping[str, Any] | None = None
    refusal: tuple[str, ...] = ()


def bulk_fingerprint(request: list[Any], recipients: Sequence[BulkRecipient]) -> tuple[str, str]:
    """A bulk request's fingerprints under its key (``request``: its fields but the rows): with
    its numbers as sent, in E.164 (a retry may write them another way), and as typed (an
    earlier release's claim has that one)."""
    from shared.phone import InvalidPhoneNumber, parse_phone_number

    def of(sent: bool) -> str:
        rows = []
        for r in recipients:
            address = r.address
            with contextlib.suppress(InvalidPhoneNumber):  # one that is no number is refused
                address = parse_phone_number(address) if sent else address
            rows.append([r.row, address, dict(r.personalization or {}), *r.refusal])
        text = json.dumps([*request, rows], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    return of(True), of(False)


def bulk_members(
    settings: Settings,
    template: Mapping[str, Any],
    valid: Sequence[tuple[BulkRecipient, str]],
    *,
    batch_id: str,
    now: dt.datetime,
    customer_id: str,
    service_id: str,
    transactional: bool,
) -> tuple[Members, list[Pack]]:
    """The members of the ``valid`` rows (each with its parsed address), each with its pack's
    id, and their packs."""
    base = {k: v for k, v in template.items() if v is not None}
    validity = dt.timedelta(seconds=settings.send_validity_seconds)
    records: Members = []
    for recipient, address in valid:
        message_id = f"{batch_id}.{recipient.row:05d}"
        entry: dict[str, Any] = {"Address": address}
        if recipient.personalization:
            entry["Personalization"] = dict(recipient.personalization)
        raw: dict[str, Any] = {
            "operation": "SendMessage",
            "messageId": message_id,
            "customerId": customer_id,
            "serviceId": service_id,
            "body": {**base, "Recipients": [entry]},  # normalize fills RequestId in: ours
        }
        if transactional:
            raw["transactional"] = True
        if settings.named_connection is not None:
            raw["Connection"] = settings.named_connection
        command = normalize(
            OutboundMessageAdapter.validate_python(raw),
            message_id=message_id,
            customer_id=customer_id,
            service_id=service_id,
        )
        records.append(new_record(command, now=now, validity=validity, batch_id=batch_id))
    limit, count = max(1, settings.pack_max_recipients), 0
    # Consecutive members with one pack key, up to ``limit`` recipients (one without a key: alone).
    groups: list[tuple[str | None, list[PackMember]]] = []
    for record, slots in records:
        key = record.pack_key
        if not groups or key is None or groups[-1][0] != key or count + len(slots) > limit:
            groups.append((key, []))
            count = 0
        groups[-1][1].append(PackMember(record.message_id, tuple(s.address for s in slots)))
        count += len(slots)
    packs = [
        Pack(
            pack_id=new_pack_id(key or "alone", [m.message_id for m in members], now),
            key=key or "alone",
            members=tuple(members),
            created_at=now,
            batch_id=batch_id,
        )
        for key, members in groups
    ]
    members_of = {m.message_id: p.pack_id for p in packs for m in p.members}
    return [(replace(r, pack_id=members_of[r.message_id]), sl) for r, sl in records], packs
