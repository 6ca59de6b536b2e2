"""The delivery-report, opt-out and send-failed triggers: from a note to one delivery per
subscriber.

::

    delivery report (_dlr), opt-out keyword (InboundProcessor), failed send (outbound)
        -> TriggerNotifier: a TriggerNotification on smartdialog-trigger-events, only when the
           service has a subscription that wants it (shared.triggers)
    smartdialog-trigger-events --> TriggerFanout (queue trigger)
        -> the service's subscriptions of that kind and connection (the subscriber index of
           shared.triggers, cached 30 s; one removed meanwhile is skipped by the dispatcher)
        -> one SubscriberDelivery each on smartdialog-inbound-deliveries
              -> SubscriberDispatcher (as New Message: retries, per-subscriber dead letter)

Each delivery carries a CloudEvent whose ``data`` is the trigger's body (its model in
:mod:`shared.triggers`) and whose id is ``{eventId}``: a note processed twice (the host retries
after a crash half-way) gives a subscriber the same ``ce-id`` twice, never a different event.
A note that is not one of ours raises (only our code writes the queue): the host retries it,
then keeps it in ``smartdialog-trigger-events-poison``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from shared import telemetry
from shared.clock import utcnow
from shared.events import make_event
from shared.inbound._keywords import keyword_text
from shared.inbound._models import NewMessagePayload, SubscriberDelivery
from shared.names import INBOUND_DELIVERIES_QUEUE, TRIGGER_EVENTS_QUEUE
from shared.storage import QueueLike, ensured_queue
from shared.suppressions import reported_key
from shared.triggers import (
    DEFAULT_CONNECTION,
    EVENT_TYPES,
    FINAL_STATES,
    DeliveryReportTriggerData,
    OptOutTriggerData,
    SendFailedTriggerData,
    TriggerKind,
    TriggerNotification,
    TriggerNotifier,
    command_customer_data,
)

if TYPE_CHECKING:
    from shared.messages import MessageRecord
    from shared.settings import Settings

__all__ = [
    "MalformedNotification",
    "TriggerFanout",
    "fan_out_trigger",
    "notify_delivery_report",
    "notify_opt_out",
]

log = logging.getLogger("shared.inbound.triggers")

_MODELS: dict[str, type[BaseModel]] = {
    TriggerKind.DELIVERY_REPORT: DeliveryReportTriggerData,
    TriggerKind.OPT_OUT: OptOutTriggerData,
    TriggerKind.SEND_FAILED: SendFailedTriggerData,
}


class MalformedNotification(ValueError):
    """A ``smartdialog-trigger-events`` message that is not a valid note (raised: poison)."""


@dataclass(frozen=True)
class FanoutResult:
    kind: str
    subscribers: int


class TriggerFanout:
    """Processes ``smartdialog-trigger-events`` messages. Build with :meth:`from_settings`."""

    def __init__(
        self,
        *,
        subscribers: TriggerNotifier,
        deliveries: QueueLike,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.subscribers = subscribers
        self._deliveries = deliveries
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> TriggerFanout:
        from shared.settings import get_settings

        return _fanout_for(settings or get_settings())

    def process(self, text: str) -> FanoutResult:
        """Fan one note out, in a span that continues its trace (a delivery report's, say): the
        events it makes carry that span's."""
        with telemetry.span(
            f"process {TRIGGER_EVENTS_QUEUE}",
            parent=telemetry.traceparent_in(text),
            kind="consumer",
        ) as current:
            result = self._process(text)
            current.set_attribute("smartdialog.subscribers", result.subscribers)
        return result

    def _process(self, text: str) -> FanoutResult:
        try:
            note = TriggerNotification.model_validate_json(text)
            data = _MODELS[note.kind].model_validate(note.data)
        except ValidationError as exc:
            raise MalformedNotification(
                f"not a trigger notification: {exc.error_count()} problem(s)"
            ) from None
        kind = TriggerKind(note.kind)
        wanted = self.subscribers.subscribers(
            kind,
            note.service,
            connection=note.connection,
            state=note.data.get("state"),
            final=note.data.get("final"),
        )
        if not wanted:
            return FanoutResult(note.kind, 0)
        event = make_event(
            EVENT_TYPES[kind],
            data,
            event_id=note.eventId,
            subject=note.data.get("messageId"),
            time=note.time,
        )
        carried: dict[str, Any] = json.loads(event.to_json())
        for subscription_id in wanted:
            delivery = SubscriberDelivery(
                service=note.service,
                subscriptionId=subscription_id,
                event=carried,
                firstQueuedAt=self._clock(),
            )
            self._deliveries.send_message(delivery.to_json())
        log.info("%s of %s fanned out to %d subscriber(s)", note.kind, note.service, len(wanted))
        return FanoutResult(note.kind, len(wanted))


@lru_cache(maxsize=4)
def _fanout_for(settings: Settings) -> TriggerFanout:
    return TriggerFanout(
        subscribers=TriggerNotifier.for_settings(settings),
        deliveries=ensured_queue(INBOUND_DELIVERIES_QUEUE, settings),
    )


def fan_out_trigger(text: str, settings: Settings | None = None) -> FanoutResult:
    """The ``TriggerFanout`` queue trigger."""
    return TriggerFanout.from_settings(settings).process(text)


def reset_fanout_cache() -> None:
    _fanout_for.cache_clear()


# --- the sources -------------------------------------------------------------------------------


def notify_delivery_report(
    settings: Settings,
    record: MessageRecord,
    *,
    row_key: str,
    recipient: str | None,
    state: str,
    previous: str | None,
    status_code: str | None,
    time: dt.datetime,
) -> bool:
    """The *When a delivery report arrives* note of a recipient that moved to ``state`` from
    ``previous`` (what it showed before): final only the first time it reaches a final state,
    so a "final states only" flow runs once per recipient (an undelivered part, then a delivered
    one, runs it for the undelivered only)."""
    if state not in ("sent", "delivered", "undelivered"):
        return False
    final = state in FINAL_STATES and previous not in FINAL_STATES
    service = record.service_id or settings.service_id
    if not service:
        return False
    data = DeliveryReportTriggerData(
        messageId=record.message_id,
        recipient=recipient,
        state=state,
        final=final,
        statusCode=status_code,
        reportedAt=time,
        customerData=command_customer_data(record.command),
        service=service,
        connection=record.connection,
    )
    return TriggerNotifier.for_settings(settings).notify(
        TriggerKind.DELIVERY_REPORT,
        service,
        event_id=f"{record.message_id}:{row_key}:{state}:trigger",
        time=time,
        data=data,
        state=state,
        final=final,
        connection=record.connection,
    )


def notify_opt_out(
    settings: Settings,
    service: str,
    message_key: str,
    payload: NewMessagePayload,
    keyword: Literal["stop", "start"] | None,
    received_at: dt.datetime,
    *,
    connection: str = DEFAULT_CONNECTION,
) -> bool:
    """The *When a recipient opts out or back in* note of an inbound keyword (none for an
    ordinary message: no storage call)."""
    if keyword is None:
        return False
    data = OptOutTriggerData(
        phone=reported_key(payload.sender),
        keyword=keyword_text(payload.content),
        direction="out" if keyword == "stop" else "in",
        occurredAt=received_at,
        messageId=message_key,
        service=service,
        connection=connection,
    )
    return TriggerNotifier.for_settings(settings).notify(
        TriggerKind.OPT_OUT,
        service,
        event_id=f"{service}:{message_key}:{keyword}",
        time=received_at,
        data=data,
        connection=connection,
    )
