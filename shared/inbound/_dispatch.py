"""The trigger dispatcher: one queued delivery in, at most one POST to one subscriber out.

It delivers every trigger's events: New Message (queued by the inbound processor, below) and the
delivery-report, opt-out and send-failed triggers (queued by ``TriggerFanout``, see
:mod:`shared.inbound._triggers`), whose deliveries always carry their event.

The webhook fans each inbound event out to ``smartdialog-inbound-deliveries``, one message per
subscriber, so a subscriber that fails never delays the others, and Logic Apps reading
``smartdialog-inbound`` keep their own copy. Each delivery POSTs the event's ``data`` (the New
Message fields, as the certified connector's trigger gives them) in CloudEvents' HTTP binary
mode: ``ce-id``, ``ce-type``, ``ce-source``, ``ce-time``, ``ce-subject`` headers, percent-encoded
as the binding requires (:func:`shared.events.binary_mode_headers`).

A subscriber always gets the whole message in one POST, so its flow runs once per message: an
event too large for a queue message (``smartdialog-inbound`` carries it in parts) comes by
reference (``eventBlob``, a blob in ``smartdialog-payloads``) and is read here; the delivery,
its retries and its dead letter stay small. A blob that is gone dead-letters the delivery as
``malformed`` (the parts are still on ``smartdialog-inbound``).

Each subscriber gets each event once: a delivery whose ``ce-id`` the subscription was already
given (the inbound processor publishes a message SmartDialog sent twice again, with the same id)
is dropped. :class:`DeliveriesSeen` remembers what was given, one read before and one write after
each POST; a crash between the POST and that write gives the subscriber the event again (at least
once, never lost), and two copies of one event dispatched at the same moment may both be POSTed.

Like the outbound sender it never sleeps: a failed POST that may succeed later (connection
error, timeout, 408, 425, 429, 5xx) is re-enqueued with a visibility delay: the client's
``backoff_delay`` from ``SMARTDIALOG_DISPATCH_RETRY_BASE_SECONDS``, or the subscriber's
``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms`` if longer, and never more than
:data:`MAX_RETRY_DELAY_SECONDS`. After ``SMARTDIALOG_DISPATCH_MAX_ATTEMPTS`` POSTs, or at once
for any other answer (a 4xx says "never"), the delivery goes to ``smartdialog-inbound-deadletter``
with its reason. Only our own storage failing raises (the host retries, then ``-poison``).

Every POST goes through :class:`shared.guarded_http.GuardedClient` (https, no internal address,
one deadline, a few KB of answer read). A callback the guard refuses (plain http, a name that
resolves to an internal address) is dead-lettered at once as ``refused``: it will not pass
later. A 404 or 410 says the subscriber's flow is gone (deleted without its ``DELETE``): the
delivery is dead-lettered ``rejected`` and the subscription removed as its ``DELETE`` would (a
flow saved or turned on again subscribes again). :func:`judge_call` and
:func:`retry_delay_seconds` are the one policy for every call to a URL we are given; the
delivery-report forwarder (``_dlr_forward``) uses them too. A slow callback holds a worker thread
up to its deadline, and the webhook and the actions run on the same threads, so at most
:func:`call_slots` such calls are under way in one process, one host's at most all but one of
them (:class:`CallSlots`): a delivery that finds none free is put back for
:data:`SLOT_RETRY_SECONDS` or so, no attempt spent.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import math
import os
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import groupby, islice
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import ValidationError

from shared import telemetry
from shared.clock import utcnow
from shared.deadletters import original_aside, write_dead_letter
from shared.events import binary_mode_headers
from shared.guarded_http import CallbackAnswer, CallbackFailed, CallbackRefused, GuardedClient
from shared.inbound._models import SubscriberDeadLetter, SubscriberDelivery
from shared.inbound._registry import Subscription, SubscriptionStore
from shared.logs import loggable_id
from shared.names import INBOUND_DEAD_LETTER_QUEUE, INBOUND_DELIVERIES_QUEUE, INBOUND_SEEN_TABLE
from shared.payloads import PayloadStore
from shared.smartdialog import backoff_delay, parse_retry_after
from shared.storage import (
    TABLE_TRANSACTION_LIMIT,
    QueueLike,
    ensured_queue,
    ensured_table,
    plain_datetime,
    safe_key,
)
from shared.triggers import TriggerNotifier

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.settings import Settings

__all__ = [
    "MAX_RETRY_DELAY_SECONDS",
    "SEEN_KEPT",
    "CallSlots",
    "CallVerdict",
    "DeliveriesSeen",
    "DispatchOutcome",
    "DispatchResult",
    "GiveUp",
    "SubscriberDispatcher",
    "after_failure",
    "call_slots",
    "judge_call",
    "reset_dispatcher_cache",
    "retry_delay_seconds",
    "sweep_deliveries_seen",
]

log = logging.getLogger("shared.inbound.dispatch")

#: Longest wait between two calls to one URL we are given.
MAX_RETRY_DELAY_SECONDS = 900
_RETRYABLE_STATUSES = frozenset({408, 425, 429})
#: How long a delivery that finds no free slot is put back for (up to twice that, spread so that
#: what was put back together does not come back together).
SLOT_RETRY_SECONDS = 10
#: A subscriber answering one of these is gone: its subscription is removed.
_GONE_STATUSES = frozenset({404, 410})


class DispatchOutcome(enum.StrEnum):
    DELIVERED = "delivered"
    RETRY_SCHEDULED = "retry-scheduled"
    DEAD_LETTERED = "dead-lettered"
    UNSUBSCRIBED = "unsubscribed"  # the subscription (or the send's DlrUrl) is gone: nothing to do
    DUPLICATE = "duplicate"  # the subscriber was given this event (its ce-id) before


@dataclass(frozen=True)
class CallVerdict:
    """What one call to a URL we were given means for its delivery."""

    kind: Literal["delivered", "retry", "rejected", "refused", "busy"]
    status: int | None = None
    #: The server's Retry-After advice in seconds, if it gave one.
    advised: float | None = None
    #: For logs and dead letters: names the host, never the URL (it may carry a secret).
    detail: str = ""

    @property
    def attempts(self) -> int:
        """The attempts it spent: none when no slot was free (``busy``: no call made)."""
        return 0 if self.kind == "busy" else 1


def judge_call(
    call: Callable[[], CallbackAnswer], host: str | None, *, now: Callable[[], float]
) -> CallVerdict:
    """Make ``call`` (a :class:`GuardedClient` call) and judge it: refused by the guard, a
    failure that may pass later (no answer, 408, 425, 429, 5xx), a refusal by the server (any
    other non-2xx, redirects included: they are not followed), or delivered; or not made, all
    :func:`call_slots` busy (never waited for: a waiting delivery would hold a thread too)."""
    slots, key = _slots(), host or ""
    if not slots.take(key):
        return CallVerdict("busy", detail=f"no free callback slot of this instance for {host}")
    try:
        answer = call()
    except CallbackRefused as exc:
        return CallVerdict("refused", detail=f"refused by the callback guard: {exc}")
    except CallbackFailed as exc:
        return CallVerdict("retry", detail=str(exc))
    finally:
        slots.give(key)
    status = answer.status
    if answer.is_success:
        return CallVerdict("delivered", status)
    if status in _RETRYABLE_STATUSES or status >= 500:
        advised = parse_retry_after(answer.headers, now=now)
        return CallVerdict("retry", status, advised, f"{host} answered {status}")
    return CallVerdict("rejected", status, detail=f"{host} answered {status}")


def call_slots() -> int:
    """Calls to URLs we are given under way at once in this process, at most: half the Python
    worker's threads (``PYTHON_THREADPOOL_THREAD_COUNT``, else its default min(32, CPUs + 4)),
    at least one; the rest stay free for the webhook and the actions."""
    given = os.environ.get("PYTHON_THREADPOOL_THREAD_COUNT", "").strip()
    threads = (
        int(given) if given.isdigit() and int(given) > 0 else min(32, (os.cpu_count() or 1) + 4)
    )
    return max(1, threads // 2)


class CallSlots:
    """``count`` calls at once, one host's at most all but one of them (at least one): a slow
    subscriber's host never holds up the deliveries to the others."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()

    def take(self, host: str) -> bool:
        """Take a slot for a call to ``host``, if one is free to it."""
        with self._lock:
            full = self._held.total() >= self.count
            if full or self._held[host] >= max(1, self.count - 1):
                return False
            self._held[host] += 1
            return True

    def give(self, host: str) -> None:
        """Give back a slot :meth:`take` gave for ``host``."""
        with self._lock:
            self._held[host] -= 1
            if self._held[host] <= 0:
                del self._held[host]


@lru_cache(maxsize=1)
def _slots() -> CallSlots:
    """This process's slots, made on first use."""
    return CallSlots(call_slots())


def retry_delay_seconds(attempts: int, *, base: float, advised: float | None) -> int:
    """Seconds before the next call after ``attempts`` failed ones: the backoff, or the server's
    advice if longer, never more than :data:`MAX_RETRY_DELAY_SECONDS`."""
    backoff = backoff_delay(attempts, base=base, cap=MAX_RETRY_DELAY_SECONDS)
    return min(MAX_RETRY_DELAY_SECONDS, math.ceil(max(backoff, advised or 0.0)))


@dataclass(frozen=True)
class GiveUp:
    """Why a call to a URL we were given is not tried again (for its dead letter)."""

    reason: Literal["attempts-exhausted", "rejected", "refused"]
    detail: str


def after_failure(
    verdict: CallVerdict, attempts: int, *, max_attempts: int, base: float
) -> int | GiveUp:
    """What follows ``attempts`` calls, the last judged ``verdict`` (not delivered): seconds
    until the next call, or why to give up. The one rule for the dispatcher and the DLR
    forwarder."""
    if verdict.kind == "delivered":
        raise ValueError("a delivered call has no next step")
    if verdict.kind == "busy":
        return SLOT_RETRY_SECONDS + random.randint(0, SLOT_RETRY_SECONDS)
    if verdict.kind != "retry":
        return GiveUp(verdict.kind, verdict.detail)
    if attempts >= max_attempts:
        return GiveUp(
            "attempts-exhausted", f"gave up after {attempts} attempts; last: {verdict.detail}"
        )
    return retry_delay_seconds(attempts, base=base, advised=verdict.advised)


#: How long ``SmartDialogInboundSeen`` remembers a delivery: far longer than SmartDialog's
#: retries of a webhook call or the host's redeliveries of a queue message take.
SEEN_KEPT = dt.timedelta(days=7)
#: The most rows one sweep deletes (the timer runs it again).
SEEN_SWEEP_LIMIT = 20_000


class DeliveriesSeen:
    """``SmartDialogInboundSeen``: the events each subscription was given. PartitionKey =
    ``d-`` + the subscription id, RowKey = the event's ``ce-id``, ``DeliveredAt``. Rows are kept
    :data:`SEEN_KEPT` (:meth:`sweep`, from the ``InboundSeenSweeper`` timer): a repeat later
    than that would be delivered again."""

    def __init__(self, table: TableClient) -> None:
        self._table = table

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> DeliveriesSeen:
        return cls(ensured_table(INBOUND_SEEN_TABLE, settings))

    @staticmethod
    def _keys(subscription_id: str, event_id: str) -> tuple[str, str]:
        return safe_key(f"d-{subscription_id}"), safe_key(event_id)

    def given(self, subscription_id: str, event_id: str) -> bool:
        """Whether the subscription was given the event ``event_id`` (one point read)."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._table.get_entity(*self._keys(subscription_id, event_id), select=["RowKey"])
        except ResourceNotFoundError:
            return False
        return True

    def add(self, subscription_id: str, event_id: str, at: dt.datetime) -> None:
        """Remember that the subscription was given ``event_id`` (one write)."""
        pk, rk = self._keys(subscription_id, event_id)
        self._table.upsert_entity(
            {"PartitionKey": pk, "RowKey": rk, "DeliveredAt": plain_datetime(at)}
        )

    def sweep(
        self, *, now: dt.datetime, kept: dt.timedelta = SEEN_KEPT, limit: int = SEEN_SWEEP_LIMIT
    ) -> int:
        """Delete the rows last written more than ``kept`` ago (by the table's ``Timestamp``,
        so the claim rows an earlier release wrote here go too), up to ``limit``, a
        transaction per 100 rows of one partition; how many went (a row another sweep deleted
        meanwhile may be counted too)."""
        from azure.core.exceptions import HttpResponseError

        rows = self._table.query_entities(
            "Timestamp lt @before",
            parameters={"before": now - kept},
            select=["PartitionKey", "RowKey"],
        )
        gone = 0
        for chunk in _partition_chunks(rows, limit):
            try:
                self._table.submit_transaction([("delete", row) for row in chunk])
                gone += len(chunk)
                continue
            except HttpResponseError:  # one was deleted meanwhile (another sweep): one by one
                pass
            for row in chunk:  # deleting a row that is gone is no error
                self._table.delete_entity(row["PartitionKey"], row["RowKey"])
                gone += 1
        return gone


def sweep_deliveries_seen(settings: Settings | None = None) -> int:
    """One sweep of ``SmartDialogInboundSeen`` (the ``InboundSeenSweeper`` timer)."""
    gone = DeliveriesSeen.from_settings(settings).sweep(now=utcnow())
    log.info("deliveries remembered longer than %s swept: %d", SEEN_KEPT, gone)
    return gone


def _partition_chunks(rows: Iterable[Any], limit: int) -> Iterator[list[dict[str, Any]]]:
    """Up to ``limit`` rows of a query (ordered by partition), in runs of one partition that
    one table transaction holds (:data:`~shared.storage.TABLE_TRANSACTION_LIMIT`)."""
    for _, same in groupby(islice(rows, limit), key=lambda row: row["PartitionKey"]):
        keys = [{"PartitionKey": r["PartitionKey"], "RowKey": r["RowKey"]} for r in same]
        for start in range(0, len(keys), TABLE_TRANSACTION_LIMIT):
            yield keys[start : start + TABLE_TRANSACTION_LIMIT]


@dataclass(frozen=True)
class DispatchResult:
    outcome: DispatchOutcome
    status: int | None = None
    delay_seconds: int | None = None
    detail: str | None = None


class SubscriberDispatcher:
    """Processes ``smartdialog-inbound-deliveries`` messages. Build with :meth:`from_settings`."""

    def __init__(
        self,
        *,
        subscriptions: SubscriptionStore,
        deliveries: QueueLike,
        dead_letters: QueueLike,
        http: GuardedClient,
        max_attempts: int,
        retry_base_seconds: float,
        payloads: PayloadStore | None = None,
        seen: DeliveriesSeen | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        forget: Callable[[str], None] = lambda service: None,
    ) -> None:
        self.subscriptions = subscriptions
        self._forget = forget  # a removed subscription's service: the subscriber index's
        self.seen = seen
        self._payloads = payloads
        self._deliveries = deliveries
        self._dead_letters = dead_letters
        self._http = http
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> SubscriberDispatcher:
        from shared.settings import get_settings

        return _dispatcher_for(settings or get_settings())

    def process(self, text: str) -> DispatchResult:
        """Deliver one queued event to one subscriber (see the module docstring), in a span
        that continues the event's trace (one by reference is read first, for a subscription
        still live: the trace is in it; a gone one's costs no blob read)."""
        problems = 0
        try:
            delivery: SubscriberDelivery | None = SubscriberDelivery.model_validate_json(text)
        except ValidationError as exc:
            delivery, problems = None, exc.error_count()
        subscription: Subscription | None = None
        event: dict[str, Any] | None = None
        if delivery is not None:
            # A replaced one's successor: another instance's index may not have seen the change.
            subscription = self.subscriptions.live(
                delivery.service, delivery.subscriptionId, delivery.event
            )
            event = self._event(delivery) if subscription is not None else delivery.event
        with telemetry.span(
            f"process {INBOUND_DELIVERIES_QUEUE}",
            parent=event.get(telemetry.TRACEPARENT) if event else None,
            kind="consumer",
        ) as current:
            if delivery is None:
                detail = f"not a subscriber delivery: {problems} problem(s)"
                result = self._dead_letter("malformed", detail, text)
            else:
                result = self._deliver(text, delivery, subscription, event)
            current.set_attribute("smartdialog.outcome", str(result.outcome))
        return result

    def _deliver(
        self,
        text: str,
        delivery: SubscriberDelivery,
        subscription: Subscription | None,
        event: dict[str, Any] | None,
    ) -> DispatchResult:
        if subscription is None:
            log.info("subscription %s is gone; delivery dropped", delivery.subscriptionId)
            return DispatchResult(DispatchOutcome.UNSUBSCRIBED)
        if event is None:
            return self._dead_letter(
                "malformed",
                f"its event {delivery.eventBlob} is gone from the payload store (or not an event)",
                text,
                delivery=delivery,
                attempts=delivery.attempts,
            )
        event_id = str(event.get("id") or "")
        if (
            self.seen is not None
            and event_id
            and self.seen.given(subscription.subscription_id, event_id)
        ):
            log.info(
                "event %s was given to subscription %s before",
                loggable_id(event_id),
                delivery.subscriptionId,
            )
            return DispatchResult(DispatchOutcome.DUPLICATE)
        host = urlsplit(subscription.callback_url).hostname  # never the URL: it has a secret
        with telemetry.span(
            "POST subscriber",
            kind="client",
            attributes={
                "server.address": host,
                "smartdialog.subscription_id": delivery.subscriptionId,
            },
        ) as call:
            verdict = judge_call(
                lambda: self._http.post(
                    subscription.callback_url,
                    json=event.get("data", {}),
                    headers=telemetry.inject_traceparent(binary_mode_headers(event)),
                ),
                host,
                now=lambda: self._clock().timestamp(),
            )
            if verdict.status is not None:
                call.set_attribute("http.response.status_code", verdict.status)
        if verdict.kind == "delivered":
            if self.seen is not None and event_id:
                self.seen.add(subscription.subscription_id, event_id, self._clock())
            log.info("inbound event delivered to subscription %s", delivery.subscriptionId)
            return DispatchResult(DispatchOutcome.DELIVERED, verdict.status)
        attempts = delivery.attempts + verdict.attempts
        step = after_failure(
            verdict, attempts, max_attempts=self.max_attempts, base=self.retry_base_seconds
        )
        if isinstance(step, GiveUp):
            detail = step.detail
            if step.reason == "rejected":
                detail += ": the subscriber refuses this delivery"
                if verdict.status in _GONE_STATUSES:
                    detail += self._remove_gone(subscription)
            return self._dead_letter(
                step.reason,
                detail,
                text,
                delivery=delivery,
                attempts=attempts,
                status=verdict.status,
            )
        copy = delivery.model_copy(update={"attempts": attempts})
        self._deliveries.send_message(copy.to_json(), visibility_timeout=step)
        log.log(
            logging.WARNING if verdict.attempts else logging.INFO,
            "delivery to subscription %s %s (%s); attempt %d, retry in %d s",
            delivery.subscriptionId,
            "failed" if verdict.attempts else "put back, not attempted",
            verdict.detail,
            attempts,
            step,
        )
        return DispatchResult(DispatchOutcome.RETRY_SCHEDULED, verdict.status, step, verdict.detail)

    def _remove_gone(self, subscription: Subscription) -> str:
        """Remove a subscription whose callback answered 404 or 410 as its ``DELETE`` would;
        what its delivery's dead letter (and WARNING line) adds, naming it (not its URL)."""
        if self.subscriptions.remove(
            subscription.service, subscription.subscription_id, subscription.kind
        ):
            self._forget(subscription.service)
        return f"; its flow is gone: subscription {subscription.subscription_id} removed"

    def _event(self, delivery: SubscriberDelivery) -> dict[str, Any] | None:
        """The delivery's event: carried, or read whole from its blob (None if the blob is gone
        or is not an event; a storage error raises: the host retries)."""
        if delivery.event is not None:
            return delivery.event
        assert delivery.eventBlob is not None
        if self._payloads is None:
            raise RuntimeError("a delivery by reference needs the payload store")
        stored = self._payloads.get(delivery.eventBlob)
        try:
            event = json.loads(stored) if stored is not None else None
        except ValueError:
            event = None
        return event if isinstance(event, dict) else None

    def _dead_letter(
        self,
        reason: Any,
        detail: str,
        text: str,
        *,
        delivery: SubscriberDelivery | None = None,
        attempts: int = 0,
        status: int | None = None,
    ) -> DispatchResult:
        letter = SubscriberDeadLetter(
            reason=reason,
            detail=detail,
            service=delivery.service if delivery else None,
            subscriptionId=delivery.subscriptionId if delivery else None,
            attempts=attempts,
            lastStatus=status,
            deadLetteredAt=self._clock(),
            original=text,
        )
        write_dead_letter(
            self._dead_letters,
            original_aside(letter, self._payloads).model_dump_json(exclude_none=True),
            queue_name=INBOUND_DEAD_LETTER_QUEUE,
        )
        log.warning("delivery dead-lettered (%s): %s", reason, detail)
        return DispatchResult(DispatchOutcome.DEAD_LETTERED, status, detail=detail)


@lru_cache(maxsize=4)
def _dispatcher_for(settings: Settings) -> SubscriberDispatcher:
    return SubscriberDispatcher(
        subscriptions=SubscriptionStore.from_settings(settings),
        deliveries=ensured_queue(INBOUND_DELIVERIES_QUEUE, settings),
        dead_letters=ensured_queue(INBOUND_DEAD_LETTER_QUEUE, settings),
        http=GuardedClient.from_settings(settings),
        max_attempts=settings.dispatch_max_attempts,
        retry_base_seconds=settings.dispatch_retry_base_seconds,
        payloads=PayloadStore.from_settings(settings),
        seen=DeliveriesSeen.from_settings(settings),
        forget=TriggerNotifier.for_settings(settings).forget,
    )


def reset_dispatcher_cache() -> None:
    """Forget cached dispatchers (tests change settings between cases)."""
    _dispatcher_for.cache_clear()
