"""Opt-out: the suppression table and the send refusal (both sides use them: inbound STOP/START
writes it, the send path refuses opted-out recipients).

Suppressions are per service (a STOP to the support line does not silence the newsletter).
``SmartDialogSuppressions`` holds each one twice:

- *by service*: PartitionKey = service id, RowKey = the recipient in E.164 (or, when it does not
  parse as a phone number, e.g. a short code, the text itself). A bulk send's check reads a
  service's whole list with one partition query.
- *by recipient*: PartitionKey = ``to:<recipient>``, RowKey = the service id (``*``: every
  service). A send's check for one recipient is one query of that partition, whatever the
  service (the all-services row included).

The by-recipient rows came later: a ``~layout`` row records when they were first copied from the
by-service rows. For :data:`~shared.names.UPGRADE_WINDOW` after that, while an earlier version
may still be running and writing by-service rows only, every process copies them again at most
every :data:`RECOPY_EVERY` (see docs/deploy.md, "Upgrading").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shared.clock import utcnow
from shared.names import LAYOUT_PARTITION, SUPPRESSIONS_TABLE, UPGRADE_WINDOW
from shared.problems import FieldError, Problem, ProblemType
from shared.storage import ensured_table, plain_datetime, safe_key, utc

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.settings import Settings

__all__ = [
    "ALL_SERVICES",
    "Suppression",
    "SuppressionStore",
    "opted_out_problem",
    "recipient_key",
    "refuse_suppressed",
    "reported_key",
    "reported_keys",
]

#: The suppression scope that covers every service.
ALL_SERVICES = "*"
#: Partition prefix of the by-recipient rows, and the row that records their layout.
BY_RECIPIENT = "to:"
LAYOUT_ROW = "by-recipient"
#: After the by-recipient rows are first copied, by-service rows are copied again for
#: :data:`~shared.names.UPGRADE_WINDOW` (an earlier version may still write those only), this
#: often.
RECOPY_EVERY = dt.timedelta(seconds=60)
#: Per table (its URL): when the layout was made, and when this process last copied.
_layouts: dict[str, tuple[dt.datetime, dt.datetime]] = {}
_layouts_lock = threading.Lock()


def _by_recipient(phone: str) -> str:
    return safe_key(BY_RECIPIENT + phone)


def _quoted(key: str) -> str:
    return key.replace("'", "''")


def _mirrored(row: dict[str, Any]) -> dict[str, Any]:
    """The by-recipient row of a by-service ``row``."""
    service, phone = str(row["Service"]), str(row["Phone"])
    return {**row, "PartitionKey": _by_recipient(phone), "RowKey": safe_key(service),
            "ByRecipient": True}  # fmt: skip


def _suppression(entity: Any, service: str, phone: str) -> Suppression:
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


@functools.lru_cache(maxsize=65536)
def recipient_key(address: str) -> str:
    """The stored form of an address: E.164 when it parses (FI default), else itself (trimmed).
    Cached (the one cache of parsed addresses): a delivery report compares its number with
    each of its message's, and a pack's, recipients; the sender each of its pack's."""
    from shared.phone import InvalidPhoneNumber, parse_phone_number

    try:
        return parse_phone_number(address)
    except InvalidPhoneNumber:
        return address.strip()


def reported_key(number: str) -> str:
    """A number SmartDialog reports (an inbound message's sender) as stored: bare digits not
    starting with 0 are read as international first, the form a platform writes a number in
    without its '+' (``4790012345`` is +4790012345, not a number in FI that happens to be
    valid; ``46701234567`` +46701234567), else :func:`recipient_key` (``0401234567`` is
    +358401234567; a short code or a name stays as it is)."""
    from shared.phone import InvalidPhoneNumber, parse_phone_number

    digits = number.strip()
    if digits.isdigit() and not digits.startswith("0"):
        with contextlib.suppress(InvalidPhoneNumber):
            return parse_phone_number("+" + digits)
    return recipient_key(number)


def reported_keys(number: str) -> tuple[str, ...]:
    """The stored forms (:func:`recipient_key`) a number SmartDialog writes back (a report's,
    an answer's recipient) may be, likeliest first: bare digits are read both as international
    and in FI (``46701234567`` is +46701234567, ``0401234567`` +358401234567;
    :func:`reported_key`'s reading first), anything else as itself. A caller that finds two of
    them among its numbers decides which, if either, is meant."""
    digits = number.strip()
    if not digits.isdigit():
        return (recipient_key(number),)
    readings = (reported_key(number), recipient_key(number), recipient_key("+" + digits))
    return tuple(dict.fromkeys(readings))


#: ``SinceBy`` of a suppression whose ``Since`` is SmartDialog's time of its STOP (else ours).
SMARTDIALOG_CLOCK = "smartdialog"


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
        stamped: bool = False,
    ) -> Suppression:
        """Suppress ``address`` for ``service`` as of ``now``: a suppression made earlier moves
        to ``now`` (with this keyword and source), so a START received before ``now`` but
        processed after it does not lift it; one made later stays. Both rows are written each
        time, by recipient first (a storage error between them leaves sends refused, and the
        retry completes the other) and again last: a START or RemoveSuppression running
        meanwhile lifts by service first, by recipient last, so it may have lifted the first
        write before this one's by-service row landed; sends check the by-recipient row.
        ``stamped``: ``now`` is SmartDialog's time of a STOP, not our clock's (``SinceBy``)."""
        phone = recipient_key(address)
        row = {
            "PartitionKey": safe_key(service),
            "RowKey": safe_key(phone),
            "Service": service,
            "Phone": phone,
            "Keyword": keyword,
            "Source": source,
            "Since": plain_datetime(now),
            "MessageId": message_id,
            "SinceBy": SMARTDIALOG_CLOCK if stamped else None,
        }
        self._advance(_mirrored(row))
        kept = self._advance(row)
        self._advance(_mirrored(kept))  # (a later one standing by service: that one)
        return _suppression(kept, service, phone)

    def _advance(self, row: dict[str, Any]) -> dict[str, Any]:
        """Write ``row`` unless its key holds one made at or after its ``Since``; the row that
        stands. Guarded by the ETag read, as a START's delete is: the two cannot cross."""
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )
        from azure.data.tables import UpdateMode

        while True:
            try:
                entity = self._table.get_entity(row["PartitionKey"], row["RowKey"])
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):
                    self._table.create_entity(row)
                    return row
                continue
            if (utc(entity.get("Since")) or row["Since"]) >= row["Since"]:
                return {**entity, "Since": utc(entity.get("Since")) or row["Since"]}
            with contextlib.suppress(ResourceModifiedError, ResourceNotFoundError):
                self._table.update_entity(
                    row,
                    mode=UpdateMode.REPLACE,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return row

    def remove(self, service: str, address: str) -> bool:
        """Lift a suppression (both rows, whichever is left); True if there was one."""
        return self.remove_unless_newer(service, address, None)

    def remove_unless_newer(self, service: str, address: str, at: dt.datetime | None) -> bool:
        """Lift a suppression unless it was made after ``at``; True if one was lifted
        (:meth:`lift_unless_newer`)."""
        return self.lift_unless_newer(service, address, at) == "lifted"

    def lift_unless_newer(
        self, service: str, address: str, at: dt.datetime | None, ours: dt.datetime | None = None
    ) -> Literal["lifted", "none", "newer"]:
        """Lift a suppression unless it was made after ``at`` (a START sent at ``at`` does not
        lift a STOP sent after it, nor a suppression added later by the action; None: whenever
        made): ``lifted``, ``none`` there (lifted before: a retry's), or a ``newer`` one stands.
        ``ours``: the START's time on our clock, for a suppression timed by ours (the action's,
        a STOP without SmartDialog's time, a previous release's), where ``at`` is SmartDialog's.
        Each row's delete is conditional on that row as read (ETag), so a STOP that lands
        meanwhile stays; both are tried each time, by recipient last (a storage error between
        them leaves sends refused, and the retry completes it)."""
        phone = recipient_key(address)
        by_service = self._lift(safe_key(service), safe_key(phone), at, ours)
        lifted = (by_service, self._lift(_by_recipient(phone), safe_key(service), at, ours))
        return "lifted" if True in lifted else "newer" if None in lifted else "none"

    def _lift(
        self, pk: str, rk: str, at: dt.datetime | None, ours: dt.datetime | None
    ) -> bool | None:
        """True once lifted, False if there is none, None if one newer than ``at`` stands."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        while True:
            try:
                entity = self._table.get_entity(pk, rk)
            except ResourceNotFoundError:
                return False
            since = utc(entity.get("Since"))
            ours_timed = entity.get("SinceBy") != SMARTDIALOG_CLOCK
            then = ours if ours is not None and ours_timed else at
            if then is not None and since is not None and since > then:
                return None
            with contextlib.suppress(ResourceModifiedError, ResourceNotFoundError):
                self._table.delete_entity(
                    pk,
                    rk,
                    etag=entity.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return True

    def get(self, service: str, address: str) -> Suppression | None:
        from azure.core.exceptions import ResourceNotFoundError

        phone = recipient_key(address)
        try:
            entity = self._table.get_entity(safe_key(service), safe_key(phone))
        except ResourceNotFoundError:
            return None
        return _suppression(entity, service, phone)

    def for_recipient(self, service: str, address: str) -> Suppression | None:
        """``address``'s suppression for ``service`` or for every service: one query of its
        by-recipient partition."""
        self._ensure_layout()
        phone = recipient_key(address)
        scopes = " or ".join(
            f"RowKey eq '{_quoted(safe_key(scope))}'"
            for scope in dict.fromkeys((service, ALL_SERVICES))
        )
        query = f"PartitionKey eq '{_quoted(_by_recipient(phone))}' and ({scopes})"
        hits = {str(e.get("Service")): e for e in self._table.query_entities(query)}
        entity = hits.get(service) or hits.get(ALL_SERVICES)
        return None if entity is None else _suppression(entity, service, phone)

    def _ensure_layout(self) -> None:
        """Make the by-recipient rows once (a ``~layout`` row records when); within
        :data:`~shared.names.UPGRADE_WINDOW` of that, copy the by-service rows again every
        :data:`RECOPY_EVERY` (one process at a time need not be arranged: copies are idempotent)."""
        if not self._layout_due(utcnow()):
            return
        with _layouts_lock:  # one refresh at a time in a process; the others find it done
            now = utcnow()
            if self._layout_due(now):
                self._refresh_layout(now)

    def _layout_due(self, now: dt.datetime) -> bool:
        made, copied = _layouts.get(self._table.url, (None, None))
        if made is None or copied is None:
            return True
        return now - made <= UPGRADE_WINDOW and now - copied >= RECOPY_EVERY

    def _refresh_layout(self, now: dt.datetime) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        try:
            marker = self._table.get_entity(LAYOUT_PARTITION, LAYOUT_ROW)
            made = utc(marker.get("Since")) or now
        except ResourceNotFoundError:
            self._copy()
            try:
                self._table.create_entity(
                    {"PartitionKey": LAYOUT_PARTITION, "RowKey": LAYOUT_ROW,
                     "Since": plain_datetime(now)}
                )  # fmt: skip
                made = now
            except ResourceExistsError:
                marker = self._table.get_entity(LAYOUT_PARTITION, LAYOUT_ROW)
                made = utc(marker.get("Since")) or now
            _layouts[self._table.url] = (made, now)
            return
        if now - made <= UPGRADE_WINDOW:
            self._copy()
        _layouts[self._table.url] = (made, now)

    def _copy(self) -> None:
        """Mirror every by-service row by recipient, and drop by-recipient rows whose by-service
        row is gone (lifted by an earlier version); one written less than :data:`RECOPY_EVERY`
        ago stays (a STOP being written now: its by-service row may have been listed before
        it was), as does one rewritten since it was listed (its ETag)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        recent = utcnow() - RECOPY_EVERY
        by_service: dict[tuple[str, str], dict[str, Any]] = {}
        mirrored: dict[tuple[str, str], tuple[str, dt.datetime | None]] = {}
        for entity in self._table.list_entities():
            pk, rk = str(entity["PartitionKey"]), str(entity["RowKey"])
            if pk == LAYOUT_PARTITION:
                continue
            if entity.get("ByRecipient"):
                meta = entity.metadata
                mirrored[(pk, rk)] = (str(meta.get("etag")), utc(meta.get("timestamp")))
            else:
                copy = _mirrored(dict(entity))
                by_service[(copy["PartitionKey"], copy["RowKey"])] = copy
        for key, row in by_service.items():
            if key not in mirrored:
                self._table.upsert_entity(row, mode=UpdateMode.REPLACE)
        for (pk, rk), (etag, written) in mirrored.items():
            if (pk, rk) in by_service or (written is not None and written > recent):
                continue
            with contextlib.suppress(ResourceNotFoundError, ResourceModifiedError):
                self._table.delete_entity(
                    pk, rk, etag=etag, match_condition=MatchConditions.IfNotModified
                )

    def suppressed(self, service: str, addresses: Sequence[str]) -> dict[int, Suppression]:
        """The suppressed ones among ``addresses`` for ``service`` or for every service
        (:data:`ALL_SERVICES`), by their index."""
        found: dict[int, Suppression] = {}
        for index, address in enumerate(addresses):
            hit = self.for_recipient(service, address)
            if hit is not None:
                found[index] = hit
        return found

    def suppressed_many(
        self,
        service: str,
        addresses: Sequence[str],
        *,
        scan_limit: int = 50_000,
        since: dt.datetime | None = None,
    ) -> dict[int, Suppression]:
        """:meth:`suppressed` for many addresses: the service's list and the all-services list
        are each read with one partition query (RowKeys only) instead of a query per
        address; the matches are then read in full. For fewer than 200 addresses, or a list
        longer than ``scan_limit`` rows, the per-address queries run side by side instead.

        ``since``: only suppressions written (the storage's ``Timestamp``) at or after it can
        be among them (the addresses were checked then: a send's recipients when accepted), so
        two queries find them whatever the number of addresses or the length of the lists;
        more than ``scan_limit`` such rows, or a single address, read as without it."""
        if since is not None and len(addresses) > 1:
            recent = self._written_since(service, addresses, since, scan_limit)
            if recent is not None:
                return recent
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

    def _written_since(
        self, service: str, addresses: Sequence[str], since: dt.datetime, limit: int
    ) -> dict[int, Suppression] | None:
        """:meth:`suppressed_many` from the by-service rows of ``service`` and of every service
        written at or after ``since`` (the rows every version writes); None past ``limit``."""
        rows: dict[tuple[str, str], Any] = {}
        for partition in dict.fromkeys((service, ALL_SERVICES)):
            for entity in self._table.query_entities(
                "PartitionKey eq @partition and Timestamp ge @since",
                parameters={"partition": safe_key(partition), "since": since},
                results_per_page=1000,
            ):
                rows[partition, str(entity["RowKey"])] = entity
                if len(rows) > limit:
                    return None
        found: dict[int, Suppression] = {}
        for index, address in enumerate(addresses):
            phone = recipient_key(address)
            hit = rows.get((service, safe_key(phone))) or rows.get((ALL_SERVICES, safe_key(phone)))
            if hit is not None:
                found[index] = _suppression(hit, service, phone)
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
    if problem := opted_out_problem(service, store.suppressed_many(service, addresses), field):
        raise problem


def opted_out_problem(service: str, hits: Mapping[int, Suppression], field: str) -> Problem | None:
    """The 422 problem :func:`refuse_suppressed` raises for ``hits`` (by recipient index), each
    offender's field formatted from ``field``; None without hits."""
    if not hits:
        return None
    errors = [
        FieldError(
            field.format(index=index),
            "This recipient opted out of "
            + ("every service (*)" if hit.service == ALL_SERVICES else f"service {service}")
            + (f" (sent {hit.keyword})" if hit.keyword else "")
            + f" on {hit.since.date().isoformat()}.",
        )
        for index, hit in sorted(hits.items())
    ]
    return Problem(
        422,
        "Recipient opted out",
        f"{len(hits)} recipient(s) opted out of this service. Remove them, or mark the message "
        "transactional if they must get it regardless (e.g. a security code).",
        type=ProblemType.VALIDATION,
        errors=errors,
    )
