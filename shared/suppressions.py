"""Opt-out: the suppression table and the send refusal (both sides use them: inbound STOP/START
writes it, the send path refuses opted-out recipients).

Suppressions are per service (a STOP to the support line does not silence the newsletter):
``SmartDialogSuppressions``, PartitionKey = service id, RowKey = the recipient in E.164 (or,
when it does not parse as a phone number, e.g. a short code, the text itself).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.names import SUPPRESSIONS_TABLE
from shared.problems import FieldError, Problem, ProblemType
from shared.storage import ensured_table, plain_datetime, safe_key, utc

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.settings import Settings

__all__ = [
    "ALL_SERVICES",
    "Suppression",
    "SuppressionStore",
    "recipient_key",
    "refuse_suppressed",
]

#: The suppression scope that covers every service.
ALL_SERVICES = "*"


def recipient_key(address: str) -> str:
    """The stored form of an address: E.164 when it parses (FI default), else itself."""
    from shared.phone import InvalidPhoneNumber, parse_phone_number

    try:
        return parse_phone_number(address)
    except InvalidPhoneNumber:
        return address.strip()


@dataclass(frozen=True)
class Suppression:
    """One opted-out recipient of a service."""

    service: str
    phone: str
    keyword: str | None
    source: str
    since: dt.datetime
    message_id: str | None = None


class SuppressionStore:
    """Reads and writes ``SmartDialogSuppressions``. Writes are idempotent."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> SuppressionStore:
        return cls(ensured_table(SUPPRESSIONS_TABLE, settings))

    def add(
        self,
        service: str,
        address: str,
        *,
        keyword: str | None,
        source: str,
        now: dt.datetime,
        message_id: str | None = None,
    ) -> Suppression:
        """Suppress ``address`` for ``service``; an existing suppression keeps its ``since``."""
        existing = self.get(service, address)
        if existing is not None:
            return existing
        from azure.data.tables import UpdateMode

        phone = recipient_key(address)
        self._table.upsert_entity(
            {
                "PartitionKey": safe_key(service),
                "RowKey": safe_key(phone),
                "Service": service,
                "Phone": phone,
                "Keyword": keyword,
                "Source": source,
                "Since": plain_datetime(now),
                "MessageId": message_id,
            },
            mode=UpdateMode.REPLACE,
        )
        return Suppression(service, phone, keyword, source, now, message_id)

    def remove(self, service: str, address: str) -> bool:
        """Lift a suppression; True if there was one."""
        from azure.core.exceptions import ResourceNotFoundError

        existing = self.get(service, address)
        if existing is None:
            return False
        try:
            self._table.delete_entity(safe_key(service), safe_key(existing.phone))
        except ResourceNotFoundError:
            return False
        return True

    def remove_unless_newer(self, service: str, address: str, at: dt.datetime) -> bool:
        """Lift a suppression unless it was made after ``at`` (a START received at ``at`` does
        not lift a STOP received after it, nor a suppression added later by the action). The
        delete is conditional on the row read (ETag), so a STOP that lands meanwhile stays.
        True if one was lifted."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        pk, rk = safe_key(service), safe_key(recipient_key(address))
        for _ in range(5):
            try:
                entity = self._table.get_entity(pk, rk)
            except ResourceNotFoundError:
                return False
            since = utc(entity.get("Since"))
            if since is not None and since > at:
                return False
            try:
                self._table.delete_entity(
                    pk,
                    rk,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return True
            except ResourceNotFoundError:
                return False
            except ResourceModifiedError:
                continue
        return False

    def get(self, service: str, address: str) -> Suppression | None:
        from azure.core.exceptions import ResourceNotFoundError

        phone = recipient_key(address)
        try:
            entity = self._table.get_entity(safe_key(service), safe_key(phone))
        except ResourceNotFoundError:
            return None
        since = utc(entity.get("Since"))
        assert since is not None
        return Suppression(
            service=str(entity.get("Service", service)),
            phone=str(entity.get("Phone", phone)),
            keyword=entity.get("Keyword"),
            source=str(entity.get("Source", "")),
            since=since,
            message_id=entity.get("MessageId"),
        )

    def suppressed(self, service: str, addresses: Sequence[str]) -> dict[int, Suppression]:
        """The suppressed ones among ``addresses`` for ``service`` or for every service
        (:data:`ALL_SERVICES`), by their index."""
        found: dict[int, Suppression] = {}
        for index, address in enumerate(addresses):
            hit = self.get(service, address) or (
                self.get(ALL_SERVICES, address) if service != ALL_SERVICES else None
            )
            if hit is not None:
                found[index] = hit
        return found

    def suppressed_many(
        self, service: str, addresses: Sequence[str], *, scan_limit: int = 50_000
    ) -> dict[int, Suppression]:
        """:meth:`suppressed` for many addresses: the service's list and the all-services list
        are each read with one partition query (RowKeys only) instead of two point reads per
        address; the matches are then read in full. For fewer than 200 addresses, or a list
        longer than ``scan_limit`` rows, the point reads run side by side instead."""
        if len(addresses) < 200:
            return self._point_reads(service, addresses)
        keys = {index: safe_key(recipient_key(a)) for index, a in enumerate(addresses)}
        wanted = set(keys.values())
        hits: set[tuple[str, str]] = set()
        for partition in dict.fromkeys((service, ALL_SERVICES)):
            listed = self._listed(partition, scan_limit)
            if listed is None:
                return self._point_reads(service, addresses)
            hits.update((partition, row) for row in listed & wanted)
        found: dict[int, Suppression] = {}
        for index, address in enumerate(addresses):
            for partition in dict.fromkeys((service, ALL_SERVICES)):
                if (partition, keys[index]) in hits:
                    hit = self.get(partition, address)
                    if hit is not None:
                        found[index] = hit
                        break
        return found

    def _point_reads(self, service: str, addresses: Sequence[str]) -> dict[int, Suppression]:
        """:meth:`suppressed` in chunks of 50 addresses on 10 threads."""
        from concurrent.futures import ThreadPoolExecutor

        if len(addresses) <= 50:
            return self.suppressed(service, addresses)
        starts = range(0, len(addresses), 50)
        found: dict[int, Suppression] = {}
        with ThreadPoolExecutor(10) as pool:
            for start, hits in zip(
                starts,
                pool.map(lambda i: self.suppressed(service, addresses[i : i + 50]), starts),
                strict=True,
            ):
                found.update({start + index: hit for index, hit in hits.items()})
        return found

    def _listed(self, service: str, limit: int) -> set[str] | None:
        """The RowKeys of ``service``'s partition, or None if it has more than ``limit``."""
        escaped = safe_key(service).replace("'", "''")
        rows: set[str] = set()
        for entity in self._table.query_entities(
            f"PartitionKey eq '{escaped}'", select=["RowKey"], results_per_page=1000
        ):
            rows.add(str(entity["RowKey"]))
            if len(rows) > limit:
                return None
        return rows


def refuse_suppressed(
    store: SuppressionStore,
    service: str | None,
    addresses: Sequence[str],
    *,
    transactional: bool = False,
    field: str = "Recipients[{index}].Address",
) -> None:
    """Raise a 422 problem naming every recipient of ``addresses`` who opted out of ``service``,
    unless ``transactional`` (a message the recipient must get, e.g. a security code, whose
    sender takes responsibility for overriding the opt-out). ``field`` formats each offender's
    field name. Nothing to check without a service (discussion replies)."""
    if transactional or not service or not addresses:
        return
    hits = store.suppressed_many(service, addresses)
    if not hits:
        return
    errors = [
        FieldError(
            field.format(index=index),
            f"This recipient opted out of service {service}"
            + (f" (sent {hit.keyword})" if hit.keyword else "")
            + f" on {hit.since.date().isoformat()}.",
        )
        for index, hit in sorted(hits.items())
    ]
    raise Problem(
        422,
        "Recipient opted out",
        f"{len(hits)} recipient(s) opted out of this service. Remove them, or mark the message "
        "transactional if they must get it regardless (e.g. a security code).",
        type=ProblemType.VALIDATION,
        errors=errors,
    )
