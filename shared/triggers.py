"""The connector's event triggers: what each one delivers, and the note that starts a delivery.

Three triggers besides New Message let a flow react to what happens to messages:

- *When a delivery report arrives* (``delivery-report``, :class:`DeliveryReportTriggerData`),
- *When a recipient opts out or back in* (``opt-out``, :class:`OptOutTriggerData`),
- *When a send fails* (``send-failed``, :class:`SendFailedTriggerData`).

Their sources live in packages that may not import each other (delivery reports and opt-outs in
``shared.inbound``, failures in ``shared.outbound``), so each source writes one small
:class:`TriggerNotification` onto the internal ``smartdialog-trigger-events`` queue through a
:class:`TriggerNotifier`, and ``shared.inbound``'s ``TriggerFanout`` turns it into one ordinary
subscriber delivery per matching subscription, retried and dead-lettered as New Message's.

A notification is written only when the service has a subscription of its kind (for delivery
reports: one that wants this state) on the event's connection. The notifier learns that from
``SmartDialogSubscriptions`` (written by ``shared.inbound``'s ``SubscriptionStore``; this module
reads its ``Kind``, ``States`` and ``Connection`` columns and the ids only) with one partition
query per service, kept for :data:`SUBSCRIBERS_TTL_SECONDS`. It is the one subscriber index: the
inbound processor finds a New Message's subscribers in it too, and the webhook whether a message
needs the processor at all. A delivery report for a service nobody subscribed to costs no
storage call once that answer is cached, and a new subscription starts receiving within that
time (at once on the instance that made it).

Every subscription belongs to one SmartDialog connection (``Connection``; rows written before
connections existed belong to :data:`DEFAULT_CONNECTION`) and gets only its connection's events.

The same partition says whether a service has ever asked a question (SendMessageAndWaitForReply):
a row ``~asks-questions`` (:data:`ASKS_ROW`), written by the ask action before the service's
first question. An inbound message to a service that never asked, with no opt-out keyword and no
New Message subscriber, needs no processing: the webhook publishes its event itself, and the
processor does not look for an open question (docs/inbound.md, "Two paths"). The row is read
with the subscriptions, so this costs no storage call either. A service's first question is
sent only once every instance's cached index must have seen its row (:meth:`mark_asking`).

Questions asked before these rows existed (the previous release) have none: until the rows are
known to be complete every service counts as asking, and the processor completes them
(:meth:`asks_questions` with ``scan``: two scans :data:`UPGRADE_WINDOW` apart, recorded in the
``~layout``/``asks-questions`` row, which every instance reads again every 30 s; docs/deploy.md).

A note carries the trace of what it is about once the release before, which refuses the field,
has stopped (:meth:`TriggerNotifier._traceparent`).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.clock import utcnow
from shared.logs import redacted_traceback
from shared.names import (
    DEFAULT_CONNECTION,
    LAYOUT_PARTITION,
    SUBSCRIPTIONS_TABLE,
    TRIGGER_EVENTS_QUEUE,
    UPGRADE_WINDOW,
)
from shared.storage import (
    QueueLike,
    ensure_table,
    plain_datetime,
    queue_client,
    safe_key,
    send_creating,
    table_client,
    utc,
)
from shared.telemetry import current_traceparent

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.settings import Settings

__all__ = [
    "ASKS_ROW",
    "DEFAULT_CONNECTION",
    "FINAL_STATES",
    "REPLACED_BY",
    "SUBSCRIBERS_TTL_SECONDS",
    "DeliveryReportTriggerData",
    "FieldErrorData",
    "OptOutTriggerData",
    "SendFailedTriggerData",
    "ServiceIndex",
    "SubscriberEntry",
    "TriggerKind",
    "TriggerNotification",
    "TriggerNotifier",
    "command_customer_data",
    "notify_send_failed",
    "reset_notifiers",
]

log = logging.getLogger("shared.triggers")

#: How long the notifier trusts its answer to "does this service have subscribers of a kind".
SUBSCRIBERS_TTL_SECONDS = 30.0
#: The row of a service's partition that says it has asked a question, and its ``Kind``.
ASKS_ROW = ASKS_KIND = "~asks-questions"
#: The property of a replaced subscription's row (the same trigger subscribed again) naming
#: the one that replaced it: no longer a subscriber (shared.inbound.SubscriptionStore.replace).
REPLACED_BY = "ReplacedBy"
#: Added to the index's lifetime before a service's first question is sent and before the rows
#: count as complete after the second scan (a slow write, clocks a little apart).
ASKS_MARGIN = dt.timedelta(seconds=5)
#: The layout row of the two scans completing the ``~asks-questions`` rows (UPGRADE_WINDOW apart).
ASKS_LAYOUT_ROW = "asks-questions"
#: The layout row of this release's first note (notes carry a trace from a window after it).
TRACE_LAYOUT_ROW = "trigger-traces"
_LAYOUT_ROWS = (ASKS_LAYOUT_ROW, TRACE_LAYOUT_ROW)
#: Final recipient states: "final states only" gets a recipient's first one (a later: not final).
FINAL_STATES = frozenset({"delivered", "undelivered"})


class TriggerKind(enum.StrEnum):
    """The ``Kind`` of a row of ``SmartDialogSubscriptions`` (absent: New Message)."""

    NEW_MESSAGE = "new-message"
    DELIVERY_REPORT = "delivery-report"
    OPT_OUT = "opt-out"
    SEND_FAILED = "send-failed"


#: The ``ce-type`` of each trigger's delivery (its body is the data model below).
EVENT_TYPES: dict[TriggerKind, str] = {
    TriggerKind.DELIVERY_REPORT: "fi.arena.smartdialog.trigger.delivery-report",
    TriggerKind.OPT_OUT: "fi.arena.smartdialog.trigger.opt-out",
    TriggerKind.SEND_FAILED: "fi.arena.smartdialog.trigger.send-failed",
}


class DeliveryReportTriggerData(BaseModel):
    """What a *When a delivery report arrives* flow receives: one recipient's new state."""

    model_config = ConfigDict(extra="forbid")

    messageId: str = Field(description="The send's Id (what the send action answered).")
    recipient: str | None = Field(None, description="The recipient's address.")
    state: Literal["sent", "delivered", "undelivered"] = Field(
        description="The recipient's state after this report: sent, delivered or undelivered."
    )
    final: bool = Field(description="True for the recipient's first delivered or undelivered.")
    statusCode: str | None = Field(None, description="The report's status code, as sent.")
    reportedAt: dt.datetime = Field(
        description="The report's own time, or when it arrived if it had none (UTC)."
    )
    customerData: str | None = Field(
        None, description="The CustomerData the send was given: use it to find your row."
    )
    service: str = Field(description="The service the message was sent through.")
    connection: str = Field(
        DEFAULT_CONNECTION, description="The SmartDialog connection the message belongs to."
    )


class OptOutTriggerData(BaseModel):
    """What a *When a recipient opts out or back in* flow receives."""

    model_config = ConfigDict(extra="forbid")

    phone: str = Field(description="Who sent the keyword: the number its suppression is under.")
    keyword: str = Field(description="The keyword as sent, trimmed and in upper case.")
    direction: Literal["out", "in"] = Field(
        description="out: now suppressed for the service; in: that lifted (not a * one)."
    )
    occurredAt: dt.datetime = Field(description="When the keyword arrived (UTC).")
    messageId: str = Field(description="The inbound message's id.")
    service: str = Field(description="The 2-way service that received the keyword.")
    connection: str = Field(
        DEFAULT_CONNECTION, description="The SmartDialog connection whose webhook received it."
    )


class FieldErrorData(BaseModel):
    """One field a failed send was refused for."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="The field.")
    message: str = Field(description="What is wrong with it.")


class SendFailedTriggerData(BaseModel):
    """What a *When a send fails* flow receives."""

    model_config = ConfigDict(extra="forbid")

    messageId: str = Field(description="The send's Id (what the send action answered).")
    reason: str = Field(description="Why it failed, in a sentence.")
    code: str = Field(
        description=(
            "upstream-rejected, rate-limited, attempts-exhausted, expired, outcome-unknown, "
            "suppressed, malformed, poisoned, duplicate-request-id or connection-removed."
        )
    )
    detail: str | None = Field(None, description="More about the failure, if known.")
    upstreamStatus: int | None = Field(None, description="SmartDialog's last HTTP status.")
    fieldErrors: list[FieldErrorData] = Field(
        default_factory=list, description="The fields the send was refused for, if it was."
    )
    customerData: str | None = Field(None, description="The CustomerData the send was given.")
    failedAt: dt.datetime = Field(description="When it failed (UTC).")
    service: str = Field(description="The service the message was sent through.")
    connection: str = Field(
        DEFAULT_CONNECTION, description="The SmartDialog connection the message belongs to."
    )


class TriggerNotification(BaseModel):
    """One message on the internal ``smartdialog-trigger-events`` queue: something a trigger
    may deliver, before it is known who subscribed (``TriggerFanout`` finds out)."""

    model_config = ConfigDict(extra="forbid")

    schemaVersion: Literal[1] = 1
    kind: Literal["delivery-report", "opt-out", "send-failed"]
    service: str = Field(min_length=1)
    connection: str = Field(
        DEFAULT_CONNECTION, min_length=1, description="Only its subscriptions get it."
    )
    eventId: str = Field(
        min_length=1, description="Stable across repeats: each delivery's ce-id is made of it."
    )
    time: dt.datetime
    data: dict[str, Any] = Field(description="The trigger's data (its kind's model).")
    traceparent: str | None = Field(None, description="W3C trace context of what it is about.")


@dataclass(frozen=True)
class SubscriberEntry:
    """One row of the subscriber index (``states``: which ones a delivery-report one wants)."""

    subscription_id: str
    kind: TriggerKind
    connection: str = DEFAULT_CONNECTION
    states: str | None = None

    def wants(self, state: str | None, final: bool | None = None) -> bool:
        """Whether it wants an event of ``state`` (delivery reports: ``final`` if known)."""
        if self.kind is not TriggerKind.DELIVERY_REPORT:
            return True
        return self.states == "all" or (state in FINAL_STATES if final is None else final)


@dataclass(frozen=True)
class _AsksLayout:
    """The ``~layout``/``asks-questions`` row: the first scan, and when the rows count complete."""

    read_at: dt.datetime
    scanned: dt.datetime | None = None
    complete_at: dt.datetime | None = None

    def complete(self, now: dt.datetime) -> bool:
        return self.complete_at is not None and now >= self.complete_at

    def earliest_complete(self, ttl: dt.timedelta) -> dt.datetime:
        """The earliest any instance may take the rows for complete, as far as a row read at
        :attr:`read_at` tells (its scans may have run since, but no sooner than this)."""
        if self.complete_at is not None:
            return self.complete_at
        return (self.scanned or self.read_at) + UPGRADE_WINDOW + ttl + ASKS_MARGIN


@dataclass(frozen=True)
class ServiceIndex:
    """A service's partition: its subscriptions, and since when it asks questions (or None)."""

    entries: tuple[SubscriberEntry, ...] = ()
    asks_since: dt.datetime | None = None


class TriggerNotifier:
    """The subscriber index of each service (cached :data:`SUBSCRIBERS_TTL_SECONDS`), and the
    writer of :class:`TriggerNotification` messages for services that have subscribers of their
    kind. Build with :meth:`for_settings` (one per settings, shared by a process)."""

    def __init__(
        self,
        *,
        subscriptions: TableClient,
        queue: QueueLike,
        clock: Callable[[], dt.datetime] = utcnow,
        ttl_seconds: float = SUBSCRIBERS_TTL_SECONDS,
    ) -> None:
        self._subscriptions = subscriptions
        self._queue = queue
        self._clock = clock
        self._ttl = dt.timedelta(seconds=ttl_seconds)
        self._lock = threading.Lock()
        self._known: dict[str, tuple[dt.datetime, ServiceIndex]] = {}
        self._layout: _AsksLayout | None = None
        self._traced_from: dt.datetime | None = None
        self._scan_lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings: Settings) -> TriggerNotifier:
        """The app's notifier: one index for every connection (a named connection's settings
        give the app's), so a subscription made through any is seen at once where it was made."""
        if settings.connection != DEFAULT_CONNECTION:
            from shared.settings import get_settings

            settings = get_settings()
        return _notifier(settings)

    def subscribers(
        self,
        kind: TriggerKind,
        service: str,
        *,
        connection: str = DEFAULT_CONNECTION,
        state: str | None = None,
        final: bool | None = None,
    ) -> list[str]:
        """The ids of the subscriptions of ``service`` to ``kind`` on ``connection`` that want
        ``state``. At most one table query per service per :data:`SUBSCRIBERS_TTL_SECONDS`."""
        return [
            entry.subscription_id
            for entry in self._index(service).entries
            if entry.kind is kind and entry.connection == connection and entry.wants(state, final)
        ]

    # --- services that ask questions --------------------------------------------------------

    def asks_questions(
        self, service: str, *, scan: Callable[[], Iterable[str]] | None = None
    ) -> bool:
        """Whether an inbound message to ``service`` may answer a question: it has asked one, or
        the ``~asks-questions`` rows are not known to be complete yet. ``scan`` (the processor
        gives it): the services with an open question, called to complete the rows when they
        are not (module docstring). No storage call while the cached answers last."""
        if not self._asks_rows_complete(scan):
            return True
        return self._index(service).asks_since is not None

    def mark_asking(self, service: str) -> dt.datetime:
        """Record that ``service`` asks questions (before its question is stored); returns when
        every instance's index has seen it: a question sent earlier could be answered before another
        instance looks for it. That is now while the rows cannot count as complete before then
        (every instance looks for every service's questions until they do), and in the past once the
        row is older than the index's lifetime (no storage call while this instance knows that)."""
        now = self._clock()
        since = self._index(service).asks_since
        if since is None:
            since = self._since(safe_key(service), ASKS_ROW, Kind=ASKS_KIND, Service=service)
            self.forget(service)
        known = since + self._ttl + ASKS_MARGIN
        return now if known <= self._layout_state(now).earliest_complete(self._ttl) else known

    def _since(self, partition: str, row_key: str, **row: str) -> dt.datetime:
        """When row ``row_key`` was first written: now if this call writes it (a slow write
        counts from its end), else the ``Since`` its first writer gave it."""
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        now = self._clock()
        entity = {"PartitionKey": partition, "RowKey": row_key, **row, "Since": plain_datetime(now)}
        try:
            ensure_table(self._subscriptions).create_entity(entity)
            return self._clock()
        except ResourceExistsError:
            try:
                return utc(self._subscriptions.get_entity(partition, row_key).get("Since")) or now
            except ResourceNotFoundError:  # removed meanwhile (by hand): count it new
                return now

    def _layout_state(self, now: dt.datetime) -> _AsksLayout:
        """The ``~layout`` row as this instance knows it: read at most once per index lifetime
        (so a row that went, e.g. a restored table, makes the rows incomplete again)."""
        layout = self._layout
        if layout is None or now - layout.read_at >= self._ttl:
            layout = self._read_layout(now)
            self._layout = layout
        return layout

    def _asks_rows_complete(self, scan: Callable[[], Iterable[str]] | None) -> bool:
        """Whether every service with a question has its ``~asks-questions`` row and every
        instance's index has seen them; with ``scan``, completes them when they are not (a
        thread that finds another one scanning does not wait for it). A scan that fails is
        logged and tried again later: every service counts as asking meanwhile."""
        now = self._clock()
        layout = self._layout_state(now)
        if layout.complete(now):
            return True
        due = layout.scanned is None or now - layout.scanned >= UPGRADE_WINDOW
        scanning = scan is not None and layout.complete_at is None and due
        if scanning and self._scan_lock.acquire(blocking=False):
            assert scan is not None
            try:
                self._complete_asks_rows(scan)
            except Exception as exc:
                log.warning("could not mark the services with open questions as asking; every "
                            "service counts as asking until a later try succeeds: %s",
                            redacted_traceback(exc))  # fmt: skip
                self._layout = replace(layout, read_at=now)  # not again at once
            finally:
                self._scan_lock.release()
        return False

    def _read_layout(self, now: dt.datetime) -> _AsksLayout:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            row = self._subscriptions.get_entity(LAYOUT_PARTITION, ASKS_LAYOUT_ROW)
        except ResourceNotFoundError:
            return _AsksLayout(now)
        return _AsksLayout(now, utc(row.get("Since")), utc(row.get("CompleteAt")))

    def _complete_asks_rows(self, scan: Callable[[], Iterable[str]]) -> None:
        """The first scan (none yet), or the second (:data:`UPGRADE_WINDOW` after it):
        mark every service with an open question, then record the scan in the ``~layout`` row.
        After the second, the rows count as complete once every index has seen them."""
        from azure.data.tables import UpdateMode

        layout = self._read_layout(self._clock())
        if layout.complete_at is not None or (
            layout.scanned is not None and layout.read_at - layout.scanned < UPGRADE_WINDOW
        ):
            self._layout = layout  # another instance did it
            return
        services = sorted(set(scan()))
        for service in services:
            self.mark_asking(service)
        done = self._clock()
        second = layout.scanned is not None
        complete_at = done + self._ttl + ASKS_MARGIN if second else None
        row = {"PartitionKey": LAYOUT_PARTITION, "RowKey": ASKS_LAYOUT_ROW,
               "Since": plain_datetime(layout.scanned or done),
               "CompleteAt": plain_datetime(complete_at)}  # fmt: skip
        ensure_table(self._subscriptions).upsert_entity(
            {k: v for k, v in row.items() if v is not None}, mode=UpdateMode.REPLACE
        )
        log.info("marked %d service(s) with open questions as asking (%s scan)", len(services),
                 "second" if second else "first")  # fmt: skip
        self._layout = _AsksLayout(done, layout.scanned or done, complete_at)

    def forget(self, service: str) -> None:
        """Drop the cached answer for ``service`` (this process just (un)subscribed it)."""
        with self._lock:
            self._known.pop(service, None)

    def notify(
        self,
        kind: TriggerKind,
        service: str,
        *,
        event_id: str,
        time: dt.datetime,
        data: BaseModel,
        state: str | None = None,
        final: bool | None = None,
        connection: str = DEFAULT_CONNECTION,
    ) -> bool:
        """Queue a notification if anyone wants it; True if one was written."""
        if not self.subscribers(kind, service, connection=connection, state=state, final=final):
            return False
        note = TriggerNotification(
            kind=kind.value,
            service=service,
            connection=connection,
            eventId=event_id,
            time=time,
            data=data.model_dump(mode="json", exclude_none=True),
            traceparent=self._traceparent(),
        )
        send_creating(self._queue, note.model_dump_json(exclude_none=True))
        return True

    def _traceparent(self) -> str | None:
        """The current span's ``traceparent`` once no instance of the release before (which
        refuses the field) reads notes: :data:`UPGRADE_WINDOW` after this release's first note
        (the ``~layout`` row :data:`TRACE_LAYOUT_ROW`: read or written once per process)."""
        if self._traced_from is None:
            try:
                self._traced_from = self._since(LAYOUT_PARTITION, TRACE_LAYOUT_ROW) + UPGRADE_WINDOW
            except Exception as exc:  # a note never fails for its trace: tried again next time
                log.warning("trigger notes carry no trace yet: %s", redacted_traceback(exc))
                return None
        return current_traceparent() if self._clock() >= self._traced_from else None

    def _index(self, service: str) -> ServiceIndex:
        now = self._clock()
        with self._lock:
            cached = self._known.get(service)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        entries = self._query(service)
        with self._lock:
            self._known[service] = (now, entries)
        return entries

    def _query(self, service: str) -> ServiceIndex:
        from azure.core.exceptions import ResourceNotFoundError

        key = safe_key(service).replace("'", "''")
        entries: list[SubscriberEntry] = []
        asks_since: dt.datetime | None = None
        try:
            for entity in self._subscriptions.query_entities(
                f"PartitionKey eq '{key}'",
                select=["RowKey", "Kind", "States", "Connection", "Since", REPLACED_BY],
            ):
                if entity.get(REPLACED_BY):
                    continue  # a replaced subscription: its successor is listed
                if key == LAYOUT_PARTITION and entity.get("RowKey") in _LAYOUT_ROWS:
                    continue  # a service named like the layout rows' partition
                if entity.get("RowKey") == ASKS_ROW:
                    asks_since = utc(entity.get("Since")) or dt.datetime.fromtimestamp(0, dt.UTC)
                    continue
                try:
                    kind = TriggerKind(entity.get("Kind") or TriggerKind.NEW_MESSAGE)
                except ValueError:  # a kind this release does not know
                    continue
                entries.append(
                    SubscriberEntry(
                        subscription_id=str(entity["RowKey"]),
                        kind=kind,
                        connection=str(entity.get("Connection") or DEFAULT_CONNECTION),
                        states=(entity.get("States") or "final")
                        if kind is TriggerKind.DELIVERY_REPORT
                        else None,
                    )
                )
        except ResourceNotFoundError:  # no table yet: nobody subscribed
            pass
        return ServiceIndex(tuple(entries), asks_since)


@lru_cache(maxsize=4)
def _notifier(settings: Settings) -> TriggerNotifier:
    # Neither is created here (Bicep does in Azure): a missing table holds no subscription, and
    # the queue is created on the first write that finds it missing.
    return TriggerNotifier(
        subscriptions=table_client(SUBSCRIPTIONS_TABLE, settings),
        queue=queue_client(TRIGGER_EVENTS_QUEUE, settings),
    )


def command_customer_data(command: str) -> str | None:
    """The ``CustomerData`` kept in a send's stored command (its JSON text), if it gave one."""
    try:
        parsed = json.loads(command)
    except ValueError:
        return None
    body = parsed.get("body") if isinstance(parsed, dict) else None
    value = body.get("CustomerData") if isinstance(body, dict) else None
    return value if isinstance(value, str) and value else None


def notify_send_failed(
    message_id: str,
    command: str,
    service: str | None,
    failure: dict[str, Any],
    failed_at: dt.datetime,
    *,
    connection: str = DEFAULT_CONNECTION,
    failed_id: str | None = None,
) -> bool:
    """The *When a send fails* note of a message that failed for good (``failure``: its
    ``FailureInfo`` as a dict), id ``<failed_id>:trigger`` (its first failure's by default).
    No storage call unless the service has such a subscription (none for one with no service)."""
    from shared.settings import get_settings

    if not service:
        return False
    data = SendFailedTriggerData(
        messageId=message_id,
        reason=str(failure.get("title") or failure.get("code") or "failed"),
        code=str(failure.get("code") or "unknown"),
        detail=failure.get("detail"),
        upstreamStatus=failure.get("upstreamStatus"),
        fieldErrors=[FieldErrorData.model_validate(e) for e in failure.get("errors") or []],
        customerData=command_customer_data(command),
        failedAt=failed_at,
        service=service,
        connection=connection,
    )
    return TriggerNotifier.for_settings(get_settings()).notify(
        TriggerKind.SEND_FAILED,
        service,
        event_id=f"{failed_id or f'{message_id}:failed'}:trigger",
        time=failed_at,
        data=data,
        connection=connection,
    )


def reset_notifiers() -> None:
    """Forget cached notifiers and their answers (tests change settings between cases)."""
    _notifier.cache_clear()
