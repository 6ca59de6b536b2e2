"""The send service behind the HTTP actions: accept (record, enqueue), status, cancel.

Host-independent: the action specs in :mod:`shared.outbound.actions` call these and shape the
HTTP answers. Every function raises :class:`~shared.problems.Problem` for caller errors.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from shared.callback_urls import (
    poll_link,
    require_callback_settings,
    require_status_token,
    status_link,
)
from shared.clock import current, utcnow
from shared.events import MESSAGE_CANCELLED, make_event
from shared.logs import loggable_id, redacted_traceback
from shared.messages import (
    IdempotencyEntry,
    IdempotencyStore,
    MessageRecord,
    MessageStatus,
    MessageStore,
    Operation,
    PackStore,
    RecipientSlot,
    RecipientStatus,
    effective_status,
    idempotency_key_hash,
    in_lane,
    lane_message_id,
    message_keys,
)
from shared.names import EVENTS_QUEUE, OUTBOUND_QUEUE, named_connection
from shared.outbound._attempt import placed
from shared.outbound._models import (
    MessageCancelledData,
    OutboundMessage,
    PackDriver,
    SendDiscussionReplyMessageCommand,
    request_fingerprint,
)
from shared.outbound._quota_wait import poll_after, waits_for
from shared.outbound._records import (
    LaneTriggers,
    backstop_seconds,
    command_text,
    new_record,
    normalize,
    pack_key,
    queued_text,
)
from shared.payloads import PayloadStore, fits_queue
from shared.problems import FieldError, Problem, ProblemType, validation_problem
from shared.settings import SettingsInvalid
from shared.storage import QueueLike, ensured_queue

if TYPE_CHECKING:
    from collections.abc import Callable

    from shared.settings import Settings
    from shared.suppressions import SuppressionStore

__all__ = [
    "STUCK_ACCEPTED_AFTER",
    "NotQueued",
    "SendService",
    "StatusView",
    "emit_cancelled",
    "key_reused",
    "send_service",
]

log = logging.getLogger("shared.outbound.service")

#: An old release's record ``accepted`` this long lost its enqueue: a poll or re-POST enqueues it.
STUCK_ACCEPTED_AFTER = dt.timedelta(seconds=30)
#: An older release's copies expired this long after their put (the queue's default TTL).
COPY_DROPPED_AFTER = dt.timedelta(days=7)
#: How long a POST whose key another request claimed (under STUCK_ACCEPTED_AFTER ago) waits for
#: that request's record, looking every CLAIM_POLL_SECONDS, before it records it itself.
CLAIM_WAIT_SECONDS = 2.0
CLAIM_POLL_SECONDS = 0.2


class NotQueued(RuntimeError):
    """:meth:`SendService.accept` failed before it put the command on the queue (our storage
    failed, provably before it stored anything: the cause is chained), so nothing of this
    request goes out (a replay's first request may have queued its own copy before it died).
    Any other failure of an accept but a Problem may have queued it: it may still be sent."""


def surely_not_stored(exc: Exception) -> bool:
    """Whether a storage call's failure proves the service stored nothing: it refused it (a
    4xx). A 5xx, a lost answer, or even a last try that never reached it may come after an
    earlier try of the SDK's own retries stored it."""
    from azure.core.exceptions import HttpResponseError

    status = getattr(exc, "status_code", None) if isinstance(exc, HttpResponseError) else None
    return status is not None and 400 <= status < 500


@dataclass(frozen=True)
class StatusView:
    """What GetMessageStatus and the send actions answer: HTTP status, headers, JSON body."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    problem: bool = False


class SendService:
    """Accepts sends, reports their status and cancels them (one per settings object)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = MessageStore.from_settings(settings)
        self.idempotency = IdempotencyStore.from_settings(settings)
        self._suppressions: SuppressionStore | None = None
        self.packs = PackStore.from_settings(settings)
        self.triggers = LaneTriggers()
        self._payloads: PayloadStore | None = None

    # --- accept --------------------------------------------------------------------------------

    def accept(
        self,
        command: OutboundMessage,
        *,
        idempotency_key: str | None,
        message_id: str | None = None,
        not_before: dt.datetime | None = None,
        claim: IdempotencyEntry | None = None,
    ) -> StatusView:
        """Record and enqueue ``command``; answer 202 with ``Location`` and ``Retry-After``.

        A repeated request with the same ``Idempotency-Key`` (or, without one, the same body
        ``RequestId``) for the same customer answers as the first did and enqueues nothing, even
        when both arrive at once (a key claimed with no record is waited for up to
        :data:`CLAIM_WAIT_SECONDS`, then enqueued and recorded here); the same key with a different
        request is a 422 problem. The command is queued *before* its record is written.

        ``message_id``: the new message's id when the caller must know it first (a replay answers
        with the first request's). ``claim``: the key's claim when the caller made it itself, taken
        as it is (one not made new is a replay). ``not_before``: the queue message stays invisible
        until then.

        Raises :class:`NotQueued` when our storage failed before a new command went on the queue
        (:func:`surely_not_stored`): nothing goes out. Any other failure but a
        :class:`~shared.problems.Problem` may leave it queued, and the sender then records and sends
        it. A new message to an opted-out recipient is a 422 naming each ``Recipients[i].Address``
        (unless ``transactional``): nothing recorded or queued, the key released."""
        require_callback_settings(self.settings)  # 503 before anything is stored
        now = utcnow()
        customer = command.customerId or self.settings.customer_id or ""
        named = self.settings.named_connection
        if named is not None:  # the sender takes it through this connection
            command = command.model_copy(update={"Connection": named})
        key = idempotency_key or getattr(command.body, "RequestId", None)
        message_id = message_id or self._new_id(command, customer, now)  # or a question's
        key_hash: str | None = None
        replay = False
        claimed_at: dt.datetime | None = None  # when another request claimed the key
        if key:
            key_hash = idempotency_key_hash(customer, key, named)
            entry = claim
            if entry is None:
                fingerprint = request_fingerprint(command)
                entry = self.idempotency.claim(
                    key_hash,
                    message_id,
                    fingerprint,
                    now=now,
                    ttl=dt.timedelta(seconds=self.settings.idempotency_ttl_seconds),
                )
                if entry.fingerprint != fingerprint or entry.asks:  # another request's (an ask's
                    raise key_reused()  # has its question's terms too): a 422, not its answer
            if not entry.new:
                message_id, replay, claimed_at = entry.message_id, True, entry.created_at
        try:
            command = normalize(
                command,
                message_id=message_id,
                customer_id=self.settings.customer_id,
                service_id=self.settings.service_id,
            )
        except ValueError as exc:  # the pipeline fills defaults; this is a safety net
            raise validation_problem([FieldError("Customer-Id", str(exc))]) from exc
        text = command_text(command)
        record = self.store.get(message_id) if replay else None
        if record is None and claimed_at is not None and now - claimed_at < STUCK_ACCEPTED_AFTER:
            # its key was claimed moments ago by a request that enqueues, then records: wait
            for _ in range(round(CLAIM_WAIT_SECONDS / CLAIM_POLL_SECONDS)):
                current().sleep(CLAIM_POLL_SECONDS)
                if (record := self.store.get(message_id)) is not None:
                    break
        if record is None:
            # New, or its key's first request died before recording it (one record, one send).
            queued: str | None = None
            try:
                self._refuse_suppressed(command)
                queued = self._queued(text, message_id)  # by reference when large: one blob
                relied = self._enqueue_new(queued, message_id, now, not_before)
            except Problem:
                if key_hash is not None and not replay:
                    self.idempotency.release(key_hash, message_id)
                raise
            except Exception as exc:  # before the enqueue, or one the service surely refused
                if queued is None or surely_not_stored(exc):
                    raise NotQueued(f"message {message_id} was not queued") from exc
                raise
            fresh, slots = new_record(
                command,
                now=now,
                validity=dt.timedelta(seconds=self.settings.send_validity_seconds),
                status=MessageStatus.QUEUED,  # its command is on the queue already
                idempotency_key_hash=key_hash,
            )
            record = self.store.create(fresh, slots) or self.store.get(message_id)
            assert record is not None, "a record that exists cannot vanish"
            if record.pack_key and not in_lane(record.message_id):
                self.packs.index([record])  # any leader may pack it from now on
            if relied is not None and not self.triggers.coming(relied, utcnow()):
                self._lead_at_once(queued, message_id)
        elif self._lost_its_enqueue(record):
            record = self._enqueue(record)
        return self._pending(record)

    def _new_id(self, command: OutboundMessage, customer: str, now: dt.datetime) -> str:
        """A new message's id: in its pack key's lane of this minute when it may be packed (its
        record is then also its pack index entry: docs/sending.md, "Lanes"), else a UUID."""
        service = getattr(command, "serviceId", None) or self.settings.service_id
        key = pack_key(command.model_copy(update={"customerId": customer, "serviceId": service}))
        return str(uuid.uuid4()) if key is None else lane_message_id(key, now)

    def _enqueue_new(
        self, queued: str, message_id: str, now: dt.datetime, not_before: dt.datetime | None = None
    ) -> str | None:
        """Put a new send's queue message on the queue, visible at ``not_before`` or at once, or
        a lane member's as its lane's next trigger or else as its backstop, which returns the lane
        whose planned trigger it relies on (docs/sending.md, "Lanes")."""
        queue = outbound_queue(self.settings)
        backstop = backstop_seconds(self.settings)
        if backstop <= 0 or not in_lane(message_id) or not_before is not None:
            wait = math.ceil((not_before - now).total_seconds()) if not_before else 0
            if wait > 0:
                queue.send_message(queued, visibility_timeout=wait)
            else:
                queue.send_message(queued)
            return None
        lane = message_keys(message_id)[0]
        delay, relied = self.triggers.plan(lane, now)
        try:
            queue.send_message(queued, visibility_timeout=backstop if delay < 0 else delay)
        except BaseException:
            if relied is None:
                self.triggers.forget(lane)
            raise
        return None if relied is None else lane

    def _lead_at_once(self, queued: str, message_id: str) -> None:
        """A second message, visible at once, for a recorded lane member whose record was
        written after the trigger it relied on came (or whose trigger was never enqueued):
        that trigger may have read the lane before. Best effort: its backstop is queued."""
        try:
            outbound_queue(self.settings).send_message(queued)
        except Exception as exc:  # the send is accepted: its backstop leads it later
            log.warning("message %s: its lane's trigger may have missed it, and a message "
                        "to lead it now could not be queued; its backstop will: %s",
                        loggable_id(message_id), redacted_traceback(exc))  # fmt: skip

    def _queued(self, text: str, message_id: str) -> str:
        """The queue message of the command ``text``: itself, or by reference when large."""
        if self._payloads is None and not fits_queue(text):
            self._payloads = PayloadStore.from_settings(self.settings)
        return queued_text(text, message_id=message_id, payloads=self._payloads)

    def _lost_its_enqueue(self, record: MessageRecord) -> bool:
        """Whether ``record`` may have lost its queue message: ``accepted`` (a bulk member, whose
        pack may lack a driver, or an earlier release's record, written before its command)
        ``STUCK_ACCEPTED_AFTER`` after its last change, or a single send ``queued`` untouched for
        ``COPY_DROPPED_AFTER`` (an older release's copy expired; one left is the same message)."""
        idle = utcnow() - record.updated_at
        if record.status is MessageStatus.QUEUED and record.batch_id is None:
            return idle >= COPY_DROPPED_AFTER
        return record.status is MessageStatus.ACCEPTED and idle >= STUCK_ACCEPTED_AFTER

    def _refuse_suppressed(self, command: OutboundMessage) -> None:
        """422 if a recipient of a normalized, non-transactional command opted out."""
        if isinstance(command, SendDiscussionReplyMessageCommand):
            return  # a reply into a thread: no recipients, no service
        from shared.suppressions import SuppressionStore, refuse_suppressed

        if self._suppressions is None:
            self._suppressions = SuppressionStore.from_settings(self.settings)
        refuse_suppressed(
            self._suppressions,
            command.serviceId,
            [r.Address for r in command.body.Recipients],
            transactional=command.transactional,
        )

    def _enqueue(self, record: MessageRecord) -> MessageRecord:
        """Put a record that may have lost its queue message back on the queue, then mark it
        queued (a lost race is fine: the sender may already have claimed it). A bulk member
        stays ``accepted`` until its pack's driver claims it and has no queue message of its
        own: its pack's driver goes on the queue instead (a driver twice is harmless)."""
        if record.batch_id is not None and record.pack_id is not None:
            connection = named_connection(record.connection)
            driver = PackDriver(
                packId=record.pack_id, batchId=record.batch_id, Connection=connection
            )
            outbound_queue(self.settings).send_message(driver.text())
            return record
        outbound_queue(self.settings).send_message(self._queued(record.command, record.message_id))
        done = self.store.swap(record, status=MessageStatus.QUEUED, updated_at=utcnow())
        return done or self.store.get(record.message_id) or record

    # --- status --------------------------------------------------------------------------------

    def status_url(self, message_id: str) -> str:
        """The self-authenticating status URL of a message (the ``Location`` of a send)."""
        return status_link(self.settings, "messages", message_id, message_id)

    def check_token(self, message_id: str, token: str | None) -> None:
        """401 without a token, 403 with one that does not open this message's status."""
        require_status_token(
            self.settings,
            message_id,
            token,
            missing="Use the status URL from the send's Location header; it carries its token.",
            denied="The token does not open this message's status (wrong, expired or revoked).",
        )

    def status(
        self,
        message_id: str,
        token: str | None,
        overdue: Callable[[MessageRecord], MessageRecord] | None = None,
    ) -> StatusView:
        """GetMessageStatus: 202 pending, 200 sent (upstream-shaped), problem when failed or
        cancelled, 404 unknown. The token is checked before anything is looked up. ``overdue``:
        the sender's backstop for a record no queue copy reaches any more (``expire_overdue``)."""
        self.check_token(message_id, token)
        record, slots = self.store.get_with_slots(message_id)
        if record is None:
            raise _not_found(message_id)
        if overdue is not None:
            record = overdue(record)
        if self._lost_its_enqueue(record):
            record = self._enqueue(record)
        return self.view(record, slots)

    def view(self, record: MessageRecord, slots: list[RecipientSlot] | None = None) -> StatusView:
        """The answer for ``record`` in its current state."""
        if record.status is MessageStatus.SENT:
            return StatusView(200, sent_document(record, slots or []), {})
        if record.status is MessageStatus.FAILED:
            return self._failed(record)
        if record.status is MessageStatus.CANCELLED:
            problem = Problem(
                410,
                "The message was cancelled",
                f"Message {record.message_id} was cancelled before it was sent.",
                type=ProblemType.CONFLICT,
            )
            return StatusView(410, {**problem.to_dict(), "id": record.message_id}, {}, True)
        return self._pending(record)

    def _pending(self, record: MessageRecord) -> StatusView:
        if record.status.is_final:  # a repeat's answer: as its status URL's (recipients' too)
            return self.view(record, self.store.get_with_slots(record.message_id)[1])
        body: dict[str, Any] = {
            "Id": record.message_id,
            "Status": str(record.status),
            "RequestId": record.request_id,
            "EstimatedPartCount": record.part_count,
            "Attempts": record.attempts,
            "CreatedAt": record.created_at.isoformat(),
            "ValidUntil": record.valid_until.isoformat(),
            "Connection": record.connection,
        }
        if record.last_error is not None:
            body["LastError"] = record.last_error.model_dump(exclude_none=True)
        headers = {"Retry-After": str(self._retry_after(record))}
        if (url := poll_link(lambda: self.status_url(record.message_id))) is not None:
            body["StatusUrl"] = headers["Location"] = url
        return StatusView(202, {k: v for k, v in body.items() if v is not None}, headers)

    def _retry_after(self, record: MessageRecord) -> int:
        """When a poller should look again: the sender's estimate of when it is done
        (docs/sending.md, "Send and poll")."""
        from shared.outbound._ports import record_held
        from shared.unconfigured import RECHECK_SECONDS

        now = utcnow()
        if (due := max(record.next_attempt_at or now, record.waits_until or now)) > now:
            wait = (due - now).total_seconds()
        elif record_held(record, self.settings):
            wait = RECHECK_SECONDS
        else:
            wait = waits_for(record.connection, self.settings).until_due(record)
        return poll_after(self.settings, wait)

    def _failed(self, record: MessageRecord) -> StatusView:
        failure = record.failure
        # SmartDialog refused it, or its quota did to the end; else it was not reached.
        kind = _FAILURE_TYPES.get(failure.code if failure else "", ProblemType.UPSTREAM_UNAVAILABLE)
        title = failure.title if failure else "The message could not be sent"
        problem = Problem(422, title, failure.detail if failure else None, type=kind)
        doc = {**problem.to_dict(), "id": record.message_id, "connection": record.connection}
        if failure is not None:
            doc.update(code=failure.code, attempts=failure.attempts)
            if failure.upstreamStatus is not None:
                doc["upstreamStatus"] = failure.upstreamStatus
        return StatusView(422, doc, {}, True)

    # --- cancel --------------------------------------------------------------------------------

    def cancel(self, message_id: str) -> StatusView:
        """CancelMessage: a message not yet being sent is cancelled (200); one being sent or
        already final answers 409 (cancelling twice is fine: 200); unknown 404."""
        for _ in range(5):
            record = self.store.get(message_id)
            if record is None:
                raise _not_found(message_id)
            if record.status is MessageStatus.CANCELLED:
                if not record.announced:  # that cancel failed after its swap: finish it
                    self._announce_cancelled(record)
                return StatusView(200, _cancelled_document(record), {})
            if record.status not in (MessageStatus.ACCEPTED, MessageStatus.QUEUED):
                raise Problem(
                    409,
                    "The message can no longer be cancelled",
                    f"Message {message_id} is {record.status}.",
                    type=ProblemType.CONFLICT,
                )
            if record.attempts > 0 or record.maybe_sent:  # its attempt may have been accepted
                raise Problem(
                    409,
                    "The message can no longer be cancelled",
                    f"Message {message_id} was attempted and may have reached SmartDialog, so "
                    "it is retried, not cancelled.",
                    type=ProblemType.CONFLICT,
                )
            now = utcnow()
            done = self.store.swap(
                record, status=MessageStatus.CANCELLED, finished_at=now, updated_at=now
            )
            if done is None:
                continue  # the sender got there first (or another cancel): look again
            self._announce_cancelled(done)
            return StatusView(200, _cancelled_document(done), {})
        raise Problem(409, "The message is changing; try again", type=ProblemType.CONFLICT)

    def _announce_cancelled(self, record: MessageRecord) -> None:
        emit_cancelled(self.store, ensured_queue(EVENTS_QUEUE, self.settings), record)
        self.store.swap(record, announced=True)  # lost to a race: announced by the other
        with suppress(SettingsInvalid):  # (a status poll's, run leniently: no quota to tell)
            waits_for(record.connection, self.settings).ended([record])  # its slot, if it held one


def emit_cancelled(store: MessageStore, events: QueueLike, record: MessageRecord) -> None:
    """A cancelled record's side effects: its slots cancelled and its ``message.cancelled`` event
    (id ``<messageId>:cancelled``), by its cancel, or again by whoever finds it unannounced (a
    cancel that failed after its swap): consumers de-duplicate on the event ``id``."""
    at = record.finished_at or utcnow()
    store.advance_recipients(record.message_id, RecipientStatus.CANCELLED, now=at)
    data = MessageCancelledData(
        messageId=record.message_id,
        operation=Operation(record.operation),
        customerId=record.customer_id,
        serviceId=record.service_id,
        connection=record.connection,
    )
    event = make_event(
        MESSAGE_CANCELLED,
        data,
        event_id=f"{record.message_id}:{MessageStatus.CANCELLED}",
        subject=record.message_id,
        time=at,
    )
    events.send_message(event.to_json())


_REJECTED, _LIMITED = ProblemType.UPSTREAM_REJECTED, ProblemType.RATE_LIMITED
_FAILURE_TYPES = {"upstream-rejected": _REJECTED, "duplicate-request-id": _REJECTED,
                  "rate-limited": _LIMITED}  # fmt: skip


def key_reused(
    detail: str = "This Idempotency-Key (or RequestId) was already used for another message. "
    "Use a new key for a new message.",
) -> Problem:
    """422: the request's Idempotency-Key (or RequestId) was used for another request
    (``detail`` says for what: a bulk send's says another bulk send)."""
    return Problem(
        422,
        "Idempotency key reused for a different request",
        detail,
        type=ProblemType.CONFLICT,
        errors=[FieldError("Idempotency-Key", "Already used for another request.")],
    )


def _not_found(message_id: str) -> Problem:
    return Problem(
        404, "No such message", f"There is no message {message_id}.", type=ProblemType.NOT_FOUND
    )


def _cancelled_document(record: MessageRecord) -> dict[str, Any]:
    return {"Id": record.message_id, "Status": str(MessageStatus.CANCELLED)}


def sent_document(record: MessageRecord, slots: list[RecipientSlot]) -> dict[str, Any]:
    """Upstream's answer as upstream shaped it (PascalCase; camelCase for WhatsApp templates),
    with our fields added in the same casing and each recipient's status from its slot (found
    by number, as its id was: :func:`~shared.outbound._attempt.placed`)."""
    result = record.result_json() or {}
    camel = record.operation is Operation.SEND_WHATSAPP_TEMPLATE_MESSAGE

    def name(pascal: str) -> str:
        return pascal[:1].lower() + pascal[1:] if camel else pascal

    doc = dict(result)
    if isinstance(recipients := doc.get(name("Recipients")), list):  # slots found by number
        slot_of = {id(e): slots[i] for i, e in placed(result, [s.address for s in slots]).items()}
        doc[name("Recipients")] = [
            {**e, name("Status"): effective_status(slot_of[id(e)], record.status)}
            if id(e) in slot_of else dict(e) if isinstance(e, dict) else {} for e in recipients
        ]  # fmt: skip
    if not doc.get(name("MessagePartCount")):
        doc[name("MessagePartCount")] = record.part_count
    doc[name("Id")] = record.message_id
    doc[name("Status")] = str(record.status)
    doc[name("RequestId")] = record.upstream_request_id
    doc[name("Attempts")] = record.attempts
    doc[name("Connection")] = record.connection
    if record.sent_at is not None:
        doc[name("SentAt")] = record.sent_at.isoformat()
    return {k: v for k, v in doc.items() if v is not None}


@lru_cache(maxsize=32)
def send_service(settings: Settings) -> SendService:
    """The send service of ``settings``: one per settings object, shared by every action that
    accepts sends (its lane triggers are per process)."""
    return SendService(settings)


@lru_cache(maxsize=32)
def outbound_queue(settings: Settings) -> QueueLike:
    """The send actions' port to ``smartdialog-outbound`` (the queue exists; one client per
    settings object)."""
    return ensured_queue(OUTBOUND_QUEUE, settings)
