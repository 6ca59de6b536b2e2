"""The inbound intake processor: opt-out, question answers, publication, fan-out.

A message that needs none of these is published by the webhook itself (``shared.inbound._webhook``,
docs/inbound.md "Two paths"). Every other one is handled by the queue-triggered
``InboundProcessor``, once per intake message, each step only once the previous succeeded::

    InboundProcessor:
        -> opt-out keyword applied to SmartDialogSuppressions (idempotent, see below)
        -> the open question of service + sender, if any, answered, opted out or re-prompted
           (:mod:`shared.inbound._answers`; one partition query, only for a service that has
           asked questions: ``TriggerNotifier.asks_questions``)
        -> CloudEvent on smartdialog-inbound (in parts when too large for a queue message),
           one delivery per subscriber on smartdialog-inbound-deliveries (carrying the event,
           or naming the whole event's blob in smartdialog-payloads when it came in parts);
           the subscribers come from the cached subscriber index (``shared.triggers``)
        -> return (the host deletes the intake message)

An ordinary message therefore costs one storage call (the event), two to a service that asks
questions (+ the question query), three when it answers a question (+ its transaction).

Nothing is lost, and a repeat is recognisable: the event's id is ``{service}:{messageKey}``
(SmartDialog's ``messageId``, or a hash of its payload), the same for every intake message of
one inbound message, whether the host redelivers one after a failure or SmartDialog called the
webhook twice. Consumers of ``smartdialog-inbound`` de-duplicate on ``source`` + ``id``; the
dispatcher does it for each subscriber (``SmartDialogInboundSeen``, by ``ce-id``). A repeat
carries the same data but ``receivedAt`` (when the webhook took that copy). Everything before
the event is idempotent: a STOP or START applied twice changes nothing, and a reply that already
ended a question answers nothing again (:meth:`QuestionStore.for_reply`).

Any exception (our storage failing) propagates: the host makes the intake message visible
again and retries it; after ``maxDequeueCount`` (5, host.json) it moves it to
``smartdialog-inbound-intake-poison``, where it is kept for inspection and replay.

Opt-out ordering: intake messages are processed concurrently and not in arrival order, so a START
only lifts a suppression that is not newer than itself (by ``receivedAt``): a STOP received after
it, or a suppression added by the action meanwhile, stands. (A STOP processed after a later START
suppresses the sender: the safe side; the sender can send START again.)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from shared import telemetry
from shared.clock import utcnow
from shared.events import CloudEvent, make_event
from shared.inbound._answers import CLOCK_SKEW, QuestionAnswers, written_at
from shared.inbound._keywords import connection_keyword, keyword_text
from shared.inbound._models import (
    MESSAGE_RECEIVED,
    InboundIntake,
    InboundMessageData,
    NewMessagePayload,
    SubscriberDelivery,
)
from shared.inbound._triggers import notify_opt_out
from shared.logs import loggable_id
from shared.names import INBOUND_DELIVERIES_QUEUE, INBOUND_INTAKE_QUEUE, INBOUND_QUEUE
from shared.payloads import QUEUE_MESSAGE_LIMIT, PayloadStore, fits_queue, queue_message_bytes
from shared.storage import QueueLike, ensured_queue
from shared.suppressions import SuppressionStore, reported_key
from shared.triggers import TriggerKind, TriggerNotifier

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = [
    "InboundProcessor",
    "MalformedIntake",
    "ProcessResult",
    "message_event",
    "received_event",
    "received_events",
]

log = logging.getLogger("shared.inbound.webhook")


#: Room left in each ``message.received`` event for the subscriber delivery that wraps it
#: (and for the dead letter that quotes that delivery).
DELIVERY_HEADROOM_BYTES = 1024
# --- the processor: opt-out, answers, publication, fan-out ----------------------------------------


class MalformedIntake(ValueError):
    """An intake message that is not an :class:`InboundIntake` (only our webhook writes the
    queue, so this is a bug or a stranger): raised, so the host retries it and then keeps it in
    ``smartdialog-inbound-intake-poison``."""


@dataclass(frozen=True)
class ProcessResult:
    """What the processor did with one intake message: ``published`` (event and deliveries
    enqueued; for a repeat, again with the same event id)."""

    outcome: Literal["published"]
    event_id: str
    subscribers: int = 0


class InboundProcessor:
    """Processes one intake message (host-independent). Build with :meth:`from_settings`."""

    def __init__(
        self,
        settings: Settings,
        *,
        subscribers: TriggerNotifier,
        suppressions: SuppressionStore,
        inbound: QueueLike,
        deliveries: QueueLike,
        payloads: PayloadStore | None = None,
        answers: QuestionAnswers | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.answers = answers
        self._payloads = payloads
        self.subscribers = subscribers
        self.suppressions = suppressions
        self._inbound = inbound
        self._deliveries = deliveries
        self._clock = clock or utcnow

    @classmethod
    def from_settings(cls, settings: Settings) -> InboundProcessor:
        return cls(
            settings,
            subscribers=TriggerNotifier.for_settings(settings),
            suppressions=SuppressionStore.from_settings(settings),
            inbound=ensured_queue(INBOUND_QUEUE, settings),
            deliveries=ensured_queue(INBOUND_DELIVERIES_QUEUE, settings),
            payloads=PayloadStore.from_settings(settings),
            answers=QuestionAnswers.from_settings(settings),
        )

    def process(self, text: str, *, queue_message_id: str = "") -> ProcessResult:
        """Turn one intake message into its event (see the module docstring), in a span that
        continues the webhook call's trace. Returns normally when the message is done with;
        raises when the host should retry it."""
        with telemetry.span(
            f"process {INBOUND_INTAKE_QUEUE}",
            parent=telemetry.traceparent_in(text),
            kind="consumer",
            attributes={"messaging.message.id": queue_message_id or None},
        ) as current:
            result = self._process(text, queue_message_id=queue_message_id)
            current.set_attribute("smartdialog.outcome", result.outcome)
        return result

    def _process(self, text: str, *, queue_message_id: str) -> ProcessResult:
        try:
            intake = InboundIntake.model_validate_json(text)
        except ValidationError as exc:
            raise MalformedIntake(
                f"not an inbound intake message: {exc.error_count()} problem(s)"
            ) from None
        service, key = intake.service, intake.messageKey
        event_id = f"{service}:{key}"
        count = self._publish(intake, event_id, self._payload(intake))
        log.info("inbound %s for service %s published to %d subscriber(s)",
                 loggable_id(key), service, count)  # fmt: skip
        return ProcessResult("published", event_id, count)

    def _payload(self, intake: InboundIntake) -> NewMessagePayload:
        """The intake's payload, read from its blob when it came by reference (a blob that is
        gone raises :class:`MalformedIntake`: the host retries, then keeps it as poison)."""
        if intake.payload is not None:
            return intake.payload
        assert intake.payloadBlob is not None
        text = self._payloads.get(intake.payloadBlob) if self._payloads is not None else None
        if text is None:
            raise MalformedIntake(f"the payload {intake.payloadBlob} is gone")
        return NewMessagePayload.model_validate_json(text)

    def _apply_opt_out(
        self, intake: InboundIntake, payload: NewMessagePayload
    ) -> Literal["stop", "start"] | None:
        """The message's opt-out keyword (its connection's keywords), applied at the message's
        own time: SmartDialog's ``timestamp`` if plausible (a resend keeps it, where our
        receipt's time is new each time: a resent START lifted a STOP sent after it), never
        later than its receipt; else its receipt's (:func:`written_at`: none, .NET's unset
        ``0001-01-01``, a day old, a local time without its zone)."""
        service, key, received_at = intake.service, intake.messageKey, intake.receivedAt
        at = min(written_at(payload, received_at), received_at)
        # Against a suppression timed by our clock, at most CLOCK_SKEW past SmartDialog's time
        # (a resend is received late; SmartDialog's clock may be a little behind ours).
        stamped, ours = at != received_at, min(received_at, at + CLOCK_SKEW)
        keyword = connection_keyword(payload.content, intake.connection, self.settings)
        if keyword == "stop":
            self.suppressions.add(
                service,
                reported_key(payload.sender),
                keyword=keyword_text(payload.content),
                source="inbound",
                now=at,
                message_id=key,
                stamped=stamped,
            )
        elif keyword == "start":
            lifted = self.suppressions.lift_unless_newer(
                service, reported_key(payload.sender), at, ours=ours
            )
            if lifted == "newer":  # a STOP received after it stands: it lifted nothing
                return None
        return keyword

    def _publish(self, intake: InboundIntake, event_id: str, payload: NewMessagePayload) -> int:
        service, key, received_at = intake.service, intake.messageKey, intake.receivedAt
        connection = intake.connection
        keyword = self._apply_opt_out(intake, payload)
        notify_opt_out(
            self.settings, service, key, payload, keyword, received_at, connection=connection
        )
        if self.answers is not None and self.subscribers.asks_questions(
            service, scan=self.answers.questions.open_services
        ):  # one partition query when no question is open
            self.answers.handle(service, key, payload, keyword, received_at, now=self._clock())
        data, texts = message_event(intake, payload, keyword)
        for text in texts:
            self._inbound.send_message(text)
        subscribers = self.subscribers.subscribers(
            TriggerKind.NEW_MESSAGE, service, connection=connection
        )
        if not subscribers:
            return 0
        # A subscriber gets the whole event in one POST: one that came in parts goes to the
        # dispatcher by reference (one blob, whatever the number of subscribers).
        event: dict[str, Any] | None = json.loads(texts[0]) if len(texts) == 1 else None
        blob: str | None = None
        if event is None:
            time = payload.utc_timestamp or received_at
            whole = received_event(data, event_id=event_id, subject=key, time=time)
            blob = self._event_store().put(whole.to_json(), kind="event")
        for subscription_id in subscribers:
            delivery = SubscriberDelivery(
                service=service,
                subscriptionId=subscription_id,
                event=event,
                eventBlob=blob,
                firstQueuedAt=self._clock(),
            )
            self._deliveries.send_message(delivery.to_json())
        return len(subscribers)

    def _event_store(self) -> PayloadStore:
        if self._payloads is None:
            raise RuntimeError("an inbound event this large needs the payload store")
        return self._payloads


def message_event(
    intake: InboundIntake, payload: NewMessagePayload, keyword: Literal["stop", "start"] | None
) -> tuple[InboundMessageData, list[str]]:
    """The ``message.received`` event of an inbound message, and its queue message texts (more
    than one when it comes in parts: :func:`received_events`). Its id is
    ``{service}:{messageKey}``, whoever publishes it (the processor, or the webhook itself)."""
    key = intake.messageKey
    data = InboundMessageData(
        sender=payload.sender,
        recipient=payload.recipient,
        content=payload.content,
        timestamp=payload.utc_timestamp,
        protocol=payload.protocol,
        attachments=payload.attachments,
        messageId=key,
        service=intake.service,
        connection=intake.connection,
        receivedAt=intake.receivedAt,
        optOut=keyword,
    )
    time = payload.utc_timestamp or intake.receivedAt
    events = _received(data, event_id=f"{intake.service}:{key}", subject=key, time=time)
    return data, [text for _, text in events]


def received_event(
    data: InboundMessageData, *, event_id: str, subject: str, time: dt.datetime
) -> CloudEvent[InboundMessageData]:
    """The ``message.received`` event of ``data``, whatever its size (what a subscriber gets)."""
    return make_event(MESSAGE_RECEIVED, data, event_id=event_id, subject=subject, time=time)


def received_events(
    data: InboundMessageData, *, event_id: str, subject: str, time: dt.datetime
) -> list[CloudEvent[InboundMessageData]]:
    """The ``message.received`` event of ``data``; when it is too large for a queue message
    (with room for the subscriber delivery that wraps it, even quoted again in that
    delivery's dead letter), in parts that fit, each with every field but ``content`` and
    the attachments' strings, which are cut in consecutive slices (see
    :class:`InboundMessageData`)."""
    return [event for event, _ in _received(data, event_id=event_id, subject=subject, time=time)]


def _received(
    data: InboundMessageData, *, event_id: str, subject: str, time: dt.datetime
) -> list[tuple[CloudEvent[InboundMessageData], str]]:
    """:func:`received_events` with each event's queue text, each made once."""

    def event(item: InboundMessageData, ident: str) -> tuple[CloudEvent[InboundMessageData], str]:
        made = received_event(item, event_id=ident, subject=subject, time=time)
        return made, made.to_json()

    def quoted(text: str) -> str:
        # Quoted again: a subscriber's dead letter carries its delivery as a JSON string.
        return json.dumps(text, ensure_ascii=False)

    def fits(text: str) -> bool:
        return fits_queue(quoted(text), headroom=DELIVERY_HEADROOM_BYTES)

    whole = event(data, event_id)
    if fits(whole[1]):
        return [whole]
    parts = max(2, math.ceil(queue_message_bytes(quoted(whole[1])) / (QUEUE_MESSAGE_LIMIT // 2)))
    while True:  # ends: with one character per part, each part is small
        events = [
            event(_share(data, index, parts), f"{event_id}:{index + 1}") for index in range(parts)
        ]
        if all(fits(text) for _, text in events):
            return events
        parts += max(1, parts // 4)


def _share(data: InboundMessageData, index: int, parts: int) -> InboundMessageData:
    """Part ``index`` (from 0) of ``parts`` of ``data``: its slice of each split string."""

    def cut(text: str | None) -> str | None:
        if text is None:
            return None
        step = math.ceil(len(text) / parts)
        return text[index * step : (index + 1) * step]

    attachments = [
        a.model_copy(
            update={
                "name": cut(a.name),
                "mimeType": cut(a.mimeType),
                "resourceLocation": cut(a.resourceLocation),
            }
        )
        for a in data.attachments
    ]
    return data.model_copy(
        update={
            "content": cut(data.content) or "",
            "attachments": attachments,
            "part": index + 1,
            "parts": parts,
        }
    )
