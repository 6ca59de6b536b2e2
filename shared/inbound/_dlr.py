"""Delivery reports: tolerant parsing, and moving each recipient forward (our DLR URL itself is
built by :mod:`shared.callback_urls`).

SmartDialog calls a send's ``DlrUrl`` with HTTP GET, keeping our query string and appending its
own parameters, whose names and vocabulary it does not publish. So :func:`parse_report` reads
the sandbox's names (``messageId``, ``recipientId``, ``recipient``, ``status``, ``statusCode``,
``timestamp``) and common aliases (``to``/``msisdn``, ``stat``/``state``, Kannel's numeric
``dlr`` codes, ...) case-insensitively, and every report keeps its raw query. A status word
we know decides the state; a report without one is read by its event number (``statusCode``,
``dlr``), if any; an error code (``code``, ``errorCode``, ``err``) never decides.

State machine of one recipient (the slot entities of ``SmartDialogMessages``, ranks of
:class:`shared.messages.RecipientStatus`; :meth:`MessageStore.advance_slot` writes them)::

    pending(0) -> failed/cancelled(10) -> sent(20) -> undelivered(30) -> delivered(40)

A report moves a slot only forward (ETag compare-and-swap on the slot, so a concurrent writer
never makes it go back): a late ``sent`` after ``delivered`` changes nothing, and a recipient is
``delivered`` once any report for it says so (SmartDialog does not say whether it reports each
part of a long SMS; docs/inbound.md). The move keeps what the recipient showed before it (the
status page's :func:`~shared.messages.effective_status`): the event's ``previousStatus``.
Our handling is de-duplicated on message + recipient + state (``SmartDialogDeliveryReports``
row ``NNNNN|state``), not on the message alone: each recipient's ``sent`` and ``delivered`` are
distinct. The caller's own ``DlrUrl`` gets every distinct report (row ``forward|<hash of its
parameters>``): a second part's ``DELIVRD`` or a ``read`` after ``delivered`` is passed on, a
retry of the same report is not.

Order of one report: token (401) -> record and slot (404 for an unknown message) -> report
row inserted (a conflict with a processed row, nothing to forward: duplicate, 200) -> slot
advanced -> ``fi.arena.smartdialog.message.delivery`` event if the slot is now in the reported state
(and the delivery-report trigger's note, see :mod:`shared.inbound._triggers`) -> if the send has
its own ``DlrUrl``, a :class:`~shared.inbound._dlr_forward.DlrForward` on
``smartdialog-dlr-forward`` (the forwarder calls that URL, never this request) -> state row
marked processed and forward row written, in one call. A crash anywhere before it repeats the
steps on SmartDialog's retry, with the same event id and payload. So a report costs three
storage writes (row, slot, mark), with or without a ``DlrUrl``; no forward row without one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from shared import telemetry
from shared.clock import as_utc, is_date_time, utcnow
from shared.inbound._dlr_forward import DlrForward, own_dlr_url
from shared.inbound._models import DELIVERY_REPORTED, DeliveryReportData
from shared.inbound._triggers import notify_delivery_report
from shared.logs import loggable_id
from shared.messages import RecipientStatus
from shared.names import DELIVERY_REPORTS_TABLE, DLR_FORWARD_QUEUE, EVENTS_QUEUE
from shared.problems import Problem, ProblemType
from shared.signing import TOKEN_QUERY_PARAMETER, TokenPurpose, verify
from shared.storage import QueueLike, ensured_queue, ensured_table, plain_datetime

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.messages import MessageRecord, MessageStore, PackStore, RecipientSlot
    from shared.settings import Settings

__all__ = [
    "DeliveryReport",
    "DeliveryReportResult",
    "DeliveryReportService",
    "parse_report",
]

log = logging.getLogger("shared.inbound.dlr")
_T = TypeVar("_T")

_ALIASES: dict[str, tuple[str, ...]] = {
    "upstream_message_id": ("messageid", "msgid", "message_id", "smsid"),
    "recipient_id": ("recipientid", "recipient_id", "rid"),
    "recipient": ("recipient", "to", "msisdn", "phone", "address", "destination", "receiver"),
    "status": ("status", "stat", "state", "dlrstatus", "deliverystatus"),
    # The status code reported (and kept); only the first three carry Kannel's event numbers.
    "status_code": ("statuscode", "status_code", "dlr", "code", "errorcode", "err"),
    "event_code": ("statuscode", "status_code", "dlr"),
    "timestamp": ("timestamp", "time", "donedate", "done_date", "deliveredat", "date"),
}
# Status words, compared without case, spaces or punctuation ("Not Delivered" = "NOT_DELIVERED").
_DELIVERED = frozenset(
    {"delivered", "delivrd", "deliveryok", "deliveredtoterminal", "success", "succeeded", "read"}
)
_UNDELIVERED = frozenset(
    {
        "failed", "failure", "undelivered", "undeliv", "undeliverable", "notdelivered",
        "nondelivered", "deliveryfailed", "rejected", "rejectd", "expired", "deleted", "error",
        "dropped", "blocked", "deliveryimpossible",
    }
)  # fmt: skip
_SENT = frozenset(
    {
        "sent", "accepted", "acceptd", "buffered", "enroute", "submitted", "queued", "sending",
        "deliveredtonetwork",
    }
)  # fmt: skip
# Kannel's DLR event numbers (the sandbox uses 1 and 2): 1 delivered to the phone, 2 not
# delivered, 4 queued at the operator, 8 delivered to the operator, 16 rejected by it.
_CODES = {
    "1": RecipientStatus.DELIVERED,
    "2": RecipientStatus.UNDELIVERED,
    "4": RecipientStatus.SENT,
    "8": RecipientStatus.SENT,
    "16": RecipientStatus.UNDELIVERED,
}


@dataclass(frozen=True)
class DeliveryReport:
    """One delivery report as we understood it, plus every parameter as received."""

    #: None: a status we do not recognise (kept raw, no state change).
    state: RecipientStatus | None
    raw: dict[str, str]
    upstream_message_id: str | None = None
    recipient_id: str | None = None
    recipient: str | None = None
    status_text: str | None = None
    status_code: str | None = None
    reported_at: dt.datetime | None = None


def _state(text: str | None, event_code: str | None) -> RecipientStatus | None:
    """The state a status word says; without one we know, the state a Kannel event number
    (``statusCode``, ``dlr``) says; else none (kept raw, nothing moves). An error code is never
    an event number: ``errorCode=1`` is no "delivered"."""
    word = "".join(c for c in (text or "").lower() if c.isalnum())
    if word in _DELIVERED:
        return RecipientStatus.DELIVERED
    if word in _UNDELIVERED:
        return RecipientStatus.UNDELIVERED
    if word in _SENT:
        return RecipientStatus.SENT
    number = (text or "").strip()  # "-1" is no 1
    return _CODES.get(number) or _CODES.get((event_code or "").strip())


def _timestamp(text: str | None) -> dt.datetime | None:
    """The report's time when it is a date-time (a date alone, digits or a week date are none:
    ``fromisoformat`` reads each as a midnight); without one its arrival is its time."""
    if not text or not is_date_time(text.strip()):
        return None
    try:
        text = text.strip()  # RFC 3339 allows "z", which fromisoformat does not read
        return as_utc(dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "zZ" else text))
    except (ValueError, OverflowError):  # no valid time, or none UTC can hold (year 1 at +01:00)
        return None


def parse_report(query: Mapping[str, str]) -> DeliveryReport:
    """The report in a DLR request's query (our ``token`` excluded from ``raw``)."""
    raw = {k: v for k, v in query.items() if k != TOKEN_QUERY_PARAMETER}
    lowered = {k.lower(): v for k, v in raw.items()}

    def pick(name: str) -> str | None:
        for alias in _ALIASES[name]:
            value = lowered.get(alias)
            if value not in (None, ""):
                return value
        return None

    status_text, status_code = pick("status"), pick("status_code")
    return DeliveryReport(
        state=_state(status_text, pick("event_code")),
        raw=raw,
        upstream_message_id=pick("upstream_message_id"),
        recipient_id=pick("recipient_id"),
        recipient=pick("recipient"),
        status_text=status_text,
        status_code=status_code,
        reported_at=_timestamp(pick("timestamp")),
    )


# --- our DLR URL ---------------------------------------------------------------------------------


# --- the service ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryReportResult:
    outcome: Literal["recorded", "duplicate", "unmatched"]
    status: str | None = None
    advanced: bool = False

    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"status": self.outcome}
        if self.status is not None:
            doc["recipientStatus"] = self.status
        return doc


class DeliveryReportService:
    """Handles one DLR callback (host-independent). Build with :meth:`from_settings`."""

    def __init__(
        self,
        settings: Settings,
        *,
        messages: MessageStore,
        reports: TableClient,
        events: QueueLike,
        forwards: QueueLike,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.messages = messages
        self.reports = reports
        self._events = events
        self._forwards = forwards
        self._clock = clock
        self._packs: PackStore | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryReportService:
        from shared.messages import MessageStore

        return cls(
            settings,
            messages=MessageStore.from_settings(settings),
            reports=ensured_table(DELIVERY_REPORTS_TABLE, settings),
            events=ensured_queue(EVENTS_QUEUE, settings),
            forwards=ensured_queue(DLR_FORWARD_QUEUE, settings),
        )

    def authenticate(self, message_id: str, token: str | None) -> None:
        if not verify(
            token, TokenPurpose.DLR, message_id, secrets=self.settings.callback_secret_list
        ):
            raise Problem(
                401,
                "Invalid or missing token",
                "This delivery-report URL's token is not valid for this message.",
                type=ProblemType.UNAUTHORIZED,
                headers={"WWW-Authenticate": 'Bearer realm="smartdialog-dlr"'},
            )

    def handle(self, message_id: str, query: Mapping[str, str]) -> DeliveryReportResult:
        """Verify, record, advance, announce, forward (see the module docstring)."""
        self.authenticate(message_id, query.get(TOKEN_QUERY_PARAMETER))
        report = parse_report(query)
        # A pack's report belongs to one member's record: the pack first (a queue producer may
        # name its own message like a pack; that message's reports match no member, and read on).
        if (member := self._pack_member(message_id, report)) is not None:
            message_id = member
        record, slots = self.messages.get_with_slots(message_id)
        if record is None:
            raise Problem(
                404,
                "No such message",
                f"There is no message {message_id}.",
                type=ProblemType.NOT_FOUND,
            )
        now = self._clock()
        slot = _match(report, slots)
        digest = hashlib.sha256(json.dumps(report.raw, sort_keys=True).encode()).hexdigest()[:32]
        if slot is None:
            row = f"unmatched|{digest}"
        else:
            suffix = report.state if report.state is not None else (
                "unknown:" + hashlib.sha256((report.status_text or "").encode()).hexdigest()[:16]
            )  # fmt: skip
            row = f"{slot.index:05d}|{suffix}"
        # Our event: once per recipient and state. The caller's DlrUrl, if any: once per distinct
        # report (a later part, a read after a delivered). A report new to its state is new to it
        # too; a repeat of a state is passed on unless its forward row says it was.
        new = self._claim(message_id, row, report, now) == "new"
        passed = None if slot is None or own_dlr_url(record) is None else f"forward|{digest}"
        forward = passed is not None and (new or not self._forwarded(message_id, passed))
        if not new and not forward:
            return DeliveryReportResult("duplicate", slot.status if slot else None)
        if slot is None:
            log.warning(
                "delivery report for message %s matches no recipient", loggable_id(message_id)
            )
            self._forward(record, report, now)
            self._mark(message_id, row)
            return DeliveryReportResult("unmatched")
        advanced = False
        if new:
            if report.state is not None:
                slot, advanced = self.messages.advance_slot(
                    slot,
                    report.state,
                    now=now,
                    upstream_id=report.recipient_id,
                    shown=record.status,
                    replaces=self._unannounced(message_id, slot, report),
                )
            if slot.status == report.state:
                try:
                    self._announce(record, slot, report, now)
                except Exception:  # its retry may find the slot moved on: a later move stands in
                    with contextlib.suppress(Exception):  # (what is answered is the failure)
                        failed = {"PartitionKey": message_id, "RowKey": row, "Unannounced": True}
                        self.reports.update_entity(failed)
                    raise
        if forward:
            self._forward(record, report, now)
        # One write marks both (its raw query kept only where the state row does not keep it).
        done = {"PartitionKey": message_id, "RowKey": passed, "ReceivedAt": plain_datetime(now)}
        if passed and not new:
            done["Raw"] = json.dumps(report.raw, ensure_ascii=False)[:30_000]
        self._mark(message_id, row if new else None, done if forward else None)
        return DeliveryReportResult("recorded", slot.status, advanced)

    # --- steps ---------------------------------------------------------------------------------

    def _pack_member(self, pack_id: str, report: DeliveryReport) -> str | None:
        """The member of pack ``pack_id`` a report is about: by upstream recipient id, else by
        number (E.164 on both sides: a previous release's pack may hold numbers as written; no
        number is in two members of a pack formed now); None if it is no pack or matches no
        member."""
        from shared.messages import PackStore, is_pack_id

        if not is_pack_id(pack_id):
            return None
        packs = self._packs or PackStore.from_settings(self.settings)
        self._packs = packs
        pack = packs.get(pack_id)
        if pack is None:
            return None
        if report.recipient_id and report.recipient_id in pack.recipient_ids:
            return pack.recipient_ids[report.recipient_id]
        if report.recipient:
            return _by_number(report.recipient, [(m.message_id, m.addresses) for m in pack.members])
        return None

    def _claim(
        self, message_id: str, row: str, report: DeliveryReport, now: dt.datetime
    ) -> Literal["new", "duplicate"]:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        try:
            self.reports.create_entity(
                {
                    "PartitionKey": message_id,
                    "RowKey": row,
                    "State": str(report.state or "unknown"),
                    "Raw": json.dumps(report.raw, ensure_ascii=False)[:30_000],
                    "ReceivedAt": plain_datetime(now),
                    "Processed": False,
                }
            )
            return "new"
        except ResourceExistsError:
            pass
        try:
            found = self.reports.get_entity(message_id, row)
        except ResourceNotFoundError:
            return "new"
        return "duplicate" if found.get("Processed") else "new"

    def _unannounced(
        self, message_id: str, slot: RecipientSlot, report: DeliveryReport
    ) -> RecipientStatus | None:
        """What a ``delivered`` replaces in the events when the slot's ``undelivered`` event
        failed and is not yet retried (its row says so): what that move replaced, so the
        ``delivered`` is the recipient's first final state. One read, only for such a move."""
        if report.state != RecipientStatus.DELIVERED or slot.status != RecipientStatus.UNDELIVERED:
            return None
        from azure.core.exceptions import ResourceNotFoundError

        try:
            row = self.reports.get_entity(message_id, f"{slot.index:05d}|{slot.status}")
        except ResourceNotFoundError:  # moved by a report the release before handled
            return None
        return slot.previous if row.get("Unannounced") and not row.get("Processed") else None

    def _forwarded(self, message_id: str, row: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.reports.get_entity(message_id, row, select=["Processed"])
        except ResourceNotFoundError:
            return False
        return True  # written only once the report is passed on

    def _mark(
        self, message_id: str, row: str | None, forwarded: dict[str, Any] | None = None
    ) -> None:
        """Mark ``row`` processed and write the ``forwarded`` row: one storage call, a
        transaction when both (one partition)."""
        from azure.data.tables import UpdateMode

        ops: list[Any] = []
        if row is not None:
            mark = {"PartitionKey": message_id, "RowKey": row, "Processed": True}
            ops.append(("update", mark, {"mode": UpdateMode.MERGE}))
        if forwarded is not None:
            ops.append(("upsert", {**forwarded, "Processed": True}, {"mode": UpdateMode.REPLACE}))
        if len(ops) == 2:
            self.reports.submit_transaction(ops)
        elif ops:
            kind, entity, options = ops[0]
            write = self.reports.update_entity if kind == "update" else self.reports.upsert_entity
            write(entity, **options)

    def _announce(
        self,
        record: MessageRecord,
        slot: RecipientSlot,
        report: DeliveryReport,
        now: dt.datetime,
    ) -> None:
        """The event of a slot now in the reported state; ``previousStatus`` is what the
        recipient showed before the move, kept with the slot (a retry's payload is the same)."""
        from shared.events import make_event

        status, previous = slot.status, slot.previous
        data = DeliveryReportData(
            messageId=record.message_id,
            connection=record.connection,
            upstreamMessageId=record.upstream_message_id or report.upstream_message_id,
            recipientIndex=slot.index,
            recipient=slot.address or report.recipient,
            recipientId=report.recipient_id or slot.upstream_recipient_id,
            status=status,
            previousStatus=previous,
            statusCode=report.status_code,
            reportedAt=report.reported_at,
            receivedAt=now,
            raw=report.raw,
        )
        # The report joins its message's trace (the record keeps it), linked to this request.
        with telemetry.span(
            "SmartDialog delivery report",
            parent=record.traceparent,
            links=[telemetry.current_traceparent()],
            kind="consumer",
            attributes={"smartdialog.message_id": record.message_id, "smartdialog.status": status},
        ):
            event = make_event(
                DELIVERY_REPORTED,
                data,
                event_id=f"{record.message_id}:{slot.row_key}:{status}",
                subject=record.message_id,
                time=report.reported_at or now,
            )
            self._events.send_message(event.to_json())
            # The delivery-report trigger's note: no storage call unless a subscription of the
            # service wants this state (shared.triggers caches that answer per service).
            notify_delivery_report(
                self.settings,
                record,
                row_key=slot.row_key,
                recipient=data.recipient,
                state=status,
                previous=previous,
                status_code=report.status_code,
                time=report.reported_at or now,
            )
        telemetry.record_delivery_latency((now - record.created_at).total_seconds(), status)

    def _forward(self, record: MessageRecord, report: DeliveryReport, now: dt.datetime) -> None:
        """Queue the report for the caller's own ``DlrUrl``, if the send had one (the
        forwarder calls it: a slow or hostile URL never holds this request)."""
        if own_dlr_url(record) is None:
            return
        forward = DlrForward(messageId=record.message_id, params=report.raw, firstQueuedAt=now)
        self._forwards.send_message(forward.model_dump_json())


def _match(report: DeliveryReport, slots: list[RecipientSlot]) -> RecipientSlot | None:
    """The recipient a report is about: by upstream recipient id (one number twice in a message:
    which of the two), unless the report's number is another recipient's (releases up to ec7daff
    gave the ids by position, so an answer listing them in another order put them on the wrong
    recipients); else by number (:func:`_by_number`); else the only recipient of a
    single-recipient message, if the report names no one else (no number, and no id or none
    known for that recipient: a slot learns its id from its first report naming one)."""
    rid = report.recipient_id
    by_id = next((s for s in slots if rid and s.upstream_recipient_id == rid), None)
    number = report.recipient
    found = _by_number(number, [(slot, [slot.address]) for slot in slots]) if number else None
    if by_id is not None and (found is None or found.address == by_id.address):
        return by_id
    if found is not None or number or len(slots) != 1:
        return found
    return slots[0] if not (rid and slots[0].upstream_recipient_id) else None


def _by_number(number: str, candidates: Iterable[tuple[_T, Iterable[str]]]) -> _T | None:
    """The first candidate with an address that is the reported ``number`` (E.164 on both
    sides). Bare digits are read both in Finland (upstream's default) and as international
    (``46701234567`` is +46701234567: :func:`~shared.suppressions.reported_keys`); if the two
    readings are two candidates' numbers, the report is about neither (None): one report never
    matches two recipients (a candidate with both numbers, such as a pack member, is one)."""
    from shared.suppressions import recipient_key, reported_keys

    readings = set(reported_keys(number))
    hits: dict[str, _T] = {}
    for item, addresses in candidates:
        for key in readings.intersection(map(recipient_key, addresses)):
            hits.setdefault(key, item)
    found = {id(item): item for item in hits.values()}  # the candidates, not the readings
    return next(iter(found.values())) if len(found) == 1 else None
