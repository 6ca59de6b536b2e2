"""The inbound intake processor: de-dup, opt-out, question answers, publication, fan-out.

Everything else happens in the queue-triggered ``InboundProcessor``, once per intake message,
each step only once the previous succeeded::

    InboundProcessor: claim the message key in SmartDialogInboundSeen (pending, holder = the
                      intake message's queue id)
        -> opt-out keyword applied to SmartDialogSuppressions (idempotent, see below)
        -> the open question of service + sender, if any, answered, opted out or re-prompted
           (:mod:`shared.inbound._answers`; one point read when there is none)
        -> CloudEvent on smartdialog-inbound (in parts when too large for a queue message),
           one delivery per subscriber on smartdialog-inbound-deliveries (carrying the event,
           or naming the whole event's blob in smartdialog-payloads when it came in parts)
        -> claim marked "published" -> return (the host deletes the intake message)

Why the processor never loses a message and publishes it at most "once per crash":

- The claim is an insert with state ``pending`` and the intake message's queue id as
  ``Holder``. A claim found ``published`` means a duplicate: nothing is published, the intake
  message is done.
- A ``pending`` claim of the *same* intake message (``Holder`` matches) is its own earlier
  attempt that died or raised: the redelivery takes it over at once and publishes.
- A ``pending`` claim of *another* intake message (SmartDialog delivered the message twice and
  the other copy is being processed) is left alone for :data:`CLAIM_LEASE`: this copy is put back
  on the intake queue, invisible until the lease ends, and the invocation returns (no dequeue
  count is burnt waiting). After the lease the claim is taken over (ETag compare-and-swap).
- Any exception (our storage failing) propagates: the host makes the intake message visible
  again and retries it; after ``maxDequeueCount`` (5, host.json) it moves it to
  ``smartdialog-inbound-intake-poison``, where it is kept for inspection and replay.

A crash (or failure) after the event is on ``smartdialog-inbound`` but before the claim is
marked therefore yields, at worst, the same event twice, with the same CloudEvents ``id``
(consumers de-duplicate on ``source`` + ``id``), and the subscriber deliveries twice with the same
``ce-id``; it never yields none. ``receivedAt`` is the first claim's, kept on takeover, so a
re-published event carries the same data.

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
from shared.inbound._answers import QuestionAnswers
from shared.inbound._keywords import classify_keyword
from shared.inbound._models import (
    MESSAGE_RECEIVED,
    InboundIntake,
    InboundMessageData,
    NewMessagePayload,
    SubscriberDelivery,
)
from shared.inbound._registry import SubscriptionStore
from shared.inbound._triggers import notify_opt_out
from shared.names import (
    INBOUND_DELIVERIES_QUEUE,
    INBOUND_INTAKE_QUEUE,
    INBOUND_QUEUE,
    INBOUND_SEEN_TABLE,
)
from shared.storage import (
    QUEUE_MESSAGE_LIMIT,
    PayloadStore,
    QueueLike,
    ensured_queue,
    ensured_table,
    fits_queue,
    plain_datetime,
    queue_message_bytes,
    safe_key,
    utc,
)
from shared.suppressions import SuppressionStore

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.settings import Settings

__all__ = [
    "CLAIM_LEASE",
    "Claim",
    "InboundProcessor",
    "MalformedIntake",
    "ProcessResult",
    "SeenStore",
    "received_event",
    "received_events",
]

log = logging.getLogger("shared.inbound.webhook")


#: Room left in each ``message.received`` event for the subscriber delivery that wraps it
#: (and for the dead letter that quotes that delivery).
DELIVERY_HEADROOM_BYTES = 1024
#: How long a claimed-but-unpublished message belongs to the intake message that claimed it.
CLAIM_LEASE = dt.timedelta(seconds=30)
_PENDING = "pending"
_PUBLISHED = "published"

ClaimOutcome = Literal["new", "duplicate", "in-flight"]


@dataclass(frozen=True)
class Claim:
    """What :meth:`SeenStore.claim` found: ``new`` (publish it), ``duplicate`` (published
    already) or ``in-flight`` (another holder's live claim; ``retry_after`` seconds left)."""

    outcome: ClaimOutcome
    received_at: dt.datetime
    retry_after: float = 0.0


class SeenStore:
    """``SmartDialogInboundSeen``: PartitionKey = service, RowKey = the message key, ``State``
    pending/published, ``ClaimedAt``, ``Holder`` (the claiming intake message's queue id),
    ``ReceivedAt`` (the first claim's, kept on takeover so a re-published event carries the same
    data)."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> SeenStore:
        return cls(ensured_table(INBOUND_SEEN_TABLE, settings))

    def claim(
        self,
        service: str,
        key: str,
        now: dt.datetime,
        *,
        holder: str = "",
        received_at: dt.datetime | None = None,
    ) -> Claim:
        """Claim ``key`` for ``holder``: ``new`` when the caller must publish it (first time, a
        takeover of its own earlier claim, or of another holder's expired one)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )
        from azure.data.tables import UpdateMode

        first = received_at or now
        pk, rk = safe_key(service), safe_key(key)
        for _ in range(5):
            try:
                self._table.create_entity(
                    {
                        "PartitionKey": pk,
                        "RowKey": rk,
                        "State": _PENDING,
                        "ClaimedAt": plain_datetime(now),
                        "ReceivedAt": plain_datetime(first),
                        "Holder": holder,
                    }
                )
                return Claim("new", first)
            except ResourceExistsError:
                pass
            try:
                found = self._table.get_entity(pk, rk)
            except ResourceNotFoundError:
                continue  # deleted meanwhile: claim again
            received = utc(found.get("ReceivedAt")) or first
            if found.get("State") == _PUBLISHED:
                return Claim("duplicate", received)
            claimed = utc(found.get("ClaimedAt")) or now
            own = bool(holder) and found.get("Holder") == holder
            if not own and now - claimed < CLAIM_LEASE:
                left = (CLAIM_LEASE - (now - claimed)).total_seconds()
                return Claim("in-flight", received, left)
            try:
                self._table.update_entity(
                    {
                        "PartitionKey": pk,
                        "RowKey": rk,
                        "ClaimedAt": plain_datetime(now),
                        "Holder": holder,
                    },
                    mode=UpdateMode.MERGE,
                    etag=found.metadata["etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
                return Claim("new", received)
            except (ResourceModifiedError, ResourceNotFoundError):
                continue
        return Claim("in-flight", first, CLAIM_LEASE.total_seconds())

    def mark_published(self, service: str, key: str) -> None:
        from azure.data.tables import UpdateMode

        self._table.update_entity(
            {"PartitionKey": safe_key(service), "RowKey": safe_key(key), "State": _PUBLISHED},
            mode=UpdateMode.MERGE,
        )


# --- the processor: de-dup, opt-out, publication, fan-out ----------------------------------------


class MalformedIntake(ValueError):
    """An intake message that is not an :class:`InboundIntake` (only our webhook writes the
    queue, so this is a bug or a stranger): raised, so the host retries it and then keeps it in
    ``smartdialog-inbound-intake-poison``."""


@dataclass(frozen=True)
class ProcessResult:
    """What the processor did with one intake message: ``published`` (event and deliveries
    enqueued now), ``duplicate`` (published before) or ``deferred`` (another copy holds a live
    claim; this one is back on the intake queue for ``retry_after`` seconds)."""

    outcome: Literal["published", "duplicate", "deferred"]
    event_id: str
    subscribers: int = 0
    retry_after: int = 0


class InboundProcessor:
    """Processes one intake message (host-independent). Build with :meth:`from_settings`."""

    def __init__(
        self,
        settings: Settings,
        *,
        seen: SeenStore,
        subscriptions: SubscriptionStore,
        suppressions: SuppressionStore,
        intake: QueueLike,
        inbound: QueueLike,
        deliveries: QueueLike,
        payloads: PayloadStore | None = None,
        answers: QuestionAnswers | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.answers = answers
        self._payloads = payloads
        self.seen = seen
        self.subscriptions = subscriptions
        self.suppressions = suppressions
        self._intake = intake
        self._inbound = inbound
        self._deliveries = deliveries
        self._clock = clock or utcnow

    @classmethod
    def from_settings(cls, settings: Settings) -> InboundProcessor:
        return cls(
            settings,
            seen=SeenStore.from_settings(settings),
            subscriptions=SubscriptionStore.from_settings(settings),
            suppressions=SuppressionStore.from_settings(settings),
            intake=ensured_queue(INBOUND_INTAKE_QUEUE, settings),
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
        claim = self.seen.claim(
            service, key, self._clock(), holder=queue_message_id, received_at=intake.receivedAt
        )
        if claim.outcome == "duplicate":
            log.info("inbound %s for service %s: duplicate, ignored", key, service)
            return ProcessResult("duplicate", event_id)
        if claim.outcome == "in-flight":
            # Another copy holds a live claim: come back when its lease ends, without burning
            # this message's dequeue count (the host deletes this one when we return).
            seconds = max(1, math.ceil(claim.retry_after))
            self._intake.send_message(text, visibility_timeout=seconds)
            log.info("inbound %s for service %s: in flight, deferred %d s", key, service, seconds)
            return ProcessResult("deferred", event_id, retry_after=seconds)
        count = self._publish(
            service, key, event_id, self._payload(intake), claim.received_at, intake.connection
        )
        self.seen.mark_published(service, key)
        log.info("inbound %s for service %s published to %d subscriber(s)", key, service, count)
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
        self, service: str, key: str, payload: NewMessagePayload, received_at: dt.datetime
    ) -> Literal["stop", "start"] | None:
        keyword = classify_keyword(
            payload.content, self.settings.stop_keyword_set, self.settings.start_keyword_set
        )
        if keyword == "stop":
            self.suppressions.add(
                service,
                payload.sender,
                keyword=" ".join(payload.content.split()).upper(),
                source="inbound",
                now=received_at,
                message_id=key,
            )
        elif keyword == "start":
            self.suppressions.remove_unless_newer(service, payload.sender, received_at)
        return keyword

    def _publish(
        self,
        service: str,
        key: str,
        event_id: str,
        payload: NewMessagePayload,
        received_at: dt.datetime,
        connection: str | None = None,
    ) -> int:
        keyword = self._apply_opt_out(service, key, payload, received_at)
        notify_opt_out(self.settings, service, key, payload, keyword, received_at)
        if self.answers is not None:  # one point read when no question is open
            self.answers.handle(service, key, payload, keyword, received_at)
        data = InboundMessageData(
            sender=payload.sender,
            recipient=payload.recipient,
            content=payload.content,
            timestamp=payload.timestamp,
            protocol=payload.protocol,
            attachments=payload.attachments,
            messageId=key,
            service=service,
            connection=connection or "default",
            receivedAt=received_at,
            optOut=keyword,
        )
        time = payload.timestamp or received_at
        texts = [
            event.to_json()
            for event in received_events(data, event_id=event_id, subject=key, time=time)
        ]
        for text in texts:
            self._inbound.send_message(text)
        subscribers = self.subscriptions.list(service)
        if not subscribers:
            return 0
        # A subscriber gets the whole event in one POST: one that came in parts goes to the
        # dispatcher by reference (one blob, whatever the number of subscribers).
        event: dict[str, Any] | None = json.loads(texts[0]) if len(texts) == 1 else None
        blob: str | None = None
        if event is None:
            whole = received_event(data, event_id=event_id, subject=key, time=time)
            blob = self._event_store().put(whole.to_json(), kind="event")
        for subscription in subscribers:
            delivery = SubscriberDelivery(
                service=service,
                subscriptionId=subscription.subscription_id,
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

    def event(item: InboundMessageData, ident: str) -> CloudEvent[InboundMessageData]:
        return received_event(item, event_id=ident, subject=subject, time=time)

    def fits(item: CloudEvent[InboundMessageData]) -> bool:
        # Quoted again: a subscriber's dead letter carries its delivery as a JSON string.
        quoted = json.dumps(item.to_json(), ensure_ascii=False)
        return fits_queue(quoted, headroom=DELIVERY_HEADROOM_BYTES)

    whole = event(data, event_id)
    if fits(whole):
        return [whole]
    size = queue_message_bytes(json.dumps(whole.to_json(), ensure_ascii=False))
    parts = max(2, math.ceil(size / (QUEUE_MESSAGE_LIMIT // 2)))
    while True:  # ends: with one character per part, each part is small
        events = [
            event(_share(data, index, parts), f"{event_id}:{index + 1}") for index in range(parts)
        ]
        if all(fits(e) for e in events):
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
