"""What a send path does with an attempt's outcome: record it, announce it, requeue, dead-letter.
A final record's event and dead letter go out before it is marked ``announced`` (see
docs/architecture.md, "Crash windows")."""

from __future__ import annotations

import datetime as dt
import enum
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from shared import telemetry
from shared.deadletters import original_aside, write_dead_letter
from shared.events import MESSAGE_FAILED, MESSAGE_SENT, events_in_parts, make_event
from shared.logs import HeldSends, loggable_text
from shared.messages import FailureFieldError, FailureInfo, MessageRecord, MessageStatus
from shared.names import OUTBOUND_DEAD_LETTER_QUEUE, OUTBOUND_QUEUE
from shared.outbound._attempt import Transient, answer_recipients, kept, kept_id, recipient_ids
from shared.outbound._giving_up import (
    expired,
    give_up,
    poisoned,
    remember_interrupted,
    waited,
)
from shared.outbound._models import (
    DeadLetter,
    DeadLetterReason,
    MessageFailedData,
    MessageSentData,
    OutboundMessage,
    PackDriver,
    RecipientOutcome,
    command_origin,
    readable_message_id,
)
from shared.outbound._ports import SendPolicy, SendPorts
from shared.outbound._records import (
    FieldValueError,
    command_text,
    is_recorded_as,
    queued_text,
    repeats_rule_send,
)
from shared.outbound._service import emit_cancelled
from shared.payloads import fits_queue
from shared.settings import LONGEST_SECONDS
from shared.triggers import notify_send_failed
from shared.unconfigured import RECHECK_SECONDS

__all__ = [
    "BACKOFF_TOLERANCE_SECONDS",
    "CONFIGURATION_RECHECK_SECONDS",
    "MAX_VISIBILITY_SECONDS",
    "STALE_GRANT_RETRY_SECONDS",
    "OutcomeKind",
    "Outcomes",
    "QueueCopy",
    "SendOutcome",
    "same_claim",
    "sent_changes",
    "storage_pool",
    "whole_seconds",
]

log = logging.getLogger("shared.outbound.sender")
#: Sends waiting for a fix (a setting, credentials, routing): one line a minute per reason.
held = HeldSends(log)

#: A copy this little early for its ``next_attempt_at`` goes on (queue and clock may disagree).
BACKOFF_TOLERANCE_SECONDS = 0.5
#: A message whose quota grant went stale twice before its call comes back this soon.
STALE_GRANT_RETRY_SECONDS = 1.0
#: How often a message comes back while a setting it needs is broken (as shared.unconfigured).
CONFIGURATION_RECHECK_SECONDS = float(RECHECK_SECONDS)
#: Queue visibility: the service allows up to 7 days; a copy is made visible strictly before.
MAX_VISIBILITY_SECONDS = 7 * 24 * 3600 - 1
#: Storage round trips of one pack (claims, records) run on this many threads.
PACK_STORAGE_THREADS = 16
# Its threads start only when work is submitted: made at import, it costs nothing idle.
_pool = ThreadPoolExecutor(PACK_STORAGE_THREADS, thread_name_prefix="pack-storage")


def storage_pool() -> ThreadPoolExecutor:
    """The process's threads for storage round trips made side by side."""
    return _pool


def whole_seconds(seconds: float) -> int:
    """A visibility delay as the queue takes it: whole seconds, 0 to just under 7 days."""
    return min(MAX_VISIBILITY_SECONDS, max(0, math.ceil(seconds)))


class OutcomeKind(enum.StrEnum):
    """What one invocation did with its queue message."""

    SENT = "sent"
    FAILED = "failed"
    DEFERRED = "deferred"  # over quota or claimed by another worker: re-enqueued, no attempt
    RETRY_SCHEDULED = "retry-scheduled"  # an attempt failed transiently: re-enqueued
    ACKNOWLEDGED = "acknowledged"  # already final (sent, failed, cancelled): nothing sent
    DEAD_LETTERED = "dead-lettered"  # malformed: never processed


@dataclass(frozen=True)
class QueueCopy:
    """One queue message as the host gave it: its text, id and dequeue count."""

    text: str
    queue_id: str | None = None
    dequeue_count: int | None = None


@dataclass(frozen=True)
class SendOutcome:
    """The result of one invocation (for logs, tests and the benchmark)."""

    kind: OutcomeKind
    message_id: str | None = None
    delay_seconds: int | None = None
    detail: str | None = None


def sent_changes(
    record: MessageRecord, body: Mapping[str, Any], *, duplicate: bool, now: dt.datetime
) -> dict[str, Any]:
    """The changes that record ``record`` sent with upstream's answer ``body``."""
    parts = body.get("MessagePartCount") or body.get("messagePartCount")
    return {
        "status": MessageStatus.SENT,
        **kept(body),
        "part_count": parts if isinstance(parts, int) and parts > 0 else record.part_count,
        "duplicate": duplicate,
        "sent_at": now,
        "finished_at": now,
        "lease_until": None,
        "last_error": None,
        "updated_at": now,
    }


def claim_changes(record: MessageRecord, now: dt.datetime, policy: SendPolicy) -> dict[str, Any]:
    """The changes that claim ``record`` for one more attempt through ``policy``'s connection."""
    return {"status": MessageStatus.SENDING, "attempts": record.attempts + 1,
            "lease_until": now + policy.lease, "next_attempt_at": None, "waits_until": None,
            "updated_at": now,
            "sent_through": policy.connection, **remember_interrupted(record, now),
            **waited(record)}  # fmt: skip


def same_claim(claim: MessageRecord, current: MessageRecord) -> bool:
    """Whether ``current`` (read now) is open and held by ``claim``'s claim (or none, if it had
    none): a claim taken over once its lease ran out is not, so that call's outcome loses."""
    return not current.status.is_final and current.claim == claim.claim


def failed_changes(failure: FailureInfo, now: dt.datetime) -> dict[str, Any]:
    """The changes that fail a message for good with ``failure``."""
    return {
        "status": MessageStatus.FAILED,
        "failure": bounded(failure),
        "finished_at": now,
        "lease_until": None,
        "updated_at": now,
    }


def backoff_changes(
    failed: Transient, error: FailureInfo, next_at: dt.datetime, now: dt.datetime
) -> dict[str, Any]:
    """The changes that queue a claimed message again after ``failed``, due at ``next_at``."""
    return {
        "status": MessageStatus.QUEUED,
        "lease_until": None,
        "next_attempt_at": next_at,
        "last_error": error,
        "updated_at": now,
        **({} if failed.certainly_not_sent else {"maybe_sent": True}),  # an earlier doubt stays
    }


class Outcomes:
    """Records, announces and requeues through the send ports."""

    def __init__(self, ports: SendPorts) -> None:
        self.ports = ports

    def retry_delay(self, attempts: int, failed: Transient) -> float:
        """The backoff after ``attempts`` attempts, at least as advised: a 429 in full (up to
        :data:`LONGEST_SECONDS`: past a message's validity it fails expired), a 5xx up to the
        longest backoff (an outage's advice must not fail a short-lived send at once)."""
        from shared.smartdialog import backoff_delay

        policy, advised = self.ports.policy, failed.advised
        backoff = backoff_delay(max(1, attempts), base=policy.retry_base, cap=policy.retry_max)
        limit = LONGEST_SECONDS if failed.code == "rate-limited" else policy.retry_max
        return backoff if advised is None else min(max(advised, backoff), limit)

    def expired(
        self, record: MessageRecord, last: FailureInfo | None = None, waiting: str | None = None
    ) -> FailureInfo:
        """An unclaimed message's expiry, saying what it was ``waiting`` for (default:
        :meth:`holding`) (:func:`~shared.outbound._giving_up.expired`)."""
        waiting = waiting or self.holding()
        return expired(record, last, maybe_sent=record.may_have_reached, waiting=waiting)

    def holding(self) -> str | None:
        """What holds this connection's sends now (a broken setting, a failed token), naming no
        value; None when nothing does."""
        if broken := self.ports.policy.unconfigured:
            return broken
        failed = self.ports.upstream.unready
        return None if failed is None else loggable_text(str(failed))

    def misconfigured(self, what: str, until: dt.datetime, problem: str = "",
                      reason: str = "settings", advice: str = "see /api/health",
                      ) -> float | None:  # fmt: skip
        """None when the settings a send needs are fine and no ``problem`` is given; else in how
        many seconds ``what`` checks again, never past ``until`` (a warning a minute)."""
        if not (problem := problem or self.ports.policy.unconfigured):
            return None
        left = (until - self.ports.now()).total_seconds()
        delay = max(0.0, min(CONFIGURATION_RECHECK_SECONDS, left))
        log.debug("%s not sent: %s; checking again in %.0f s", what, problem, delay)
        held.wait(f"the {reason} of connection {self.ports.policy.connection}", problem, advice)
        return delay

    # --- final writes ------------------------------------------------------------------------

    def swap_until(self, record: MessageRecord, allowed: Callable[[MessageRecord], bool], *,
                   recipient_ids: Mapping[int, str | None] | None = None,
                   **changes: Any) -> MessageRecord | None:  # fmt: skip
        """Compare-and-swap ``changes`` while ``allowed(current)``; None once it is not."""
        store = self.ports.store
        current: MessageRecord | None = record
        for _ in range(5):
            if current is None or not allowed(current):
                if current is not None and not current.status.is_final:  # claimed since
                    log.warning("message %s: an outcome of attempt %d dropped: another claim "
                                "holds it now (%s, attempt %d)", record.logged_id,
                                record.attempts, current.status, current.attempts)  # fmt: skip
                return None
            done = store.swap(current, recipient_ids=recipient_ids, **changes)
            if done is not None:
                return done
            current = store.get(record.message_id)
        raise RuntimeError(f"message {record.message_id}: record kept changing under the sender")

    def sent(self, record: MessageRecord, body: Mapping[str, Any], addresses: Sequence[str], *,
             duplicate: bool, **flag: bool) -> SendOutcome:  # fmt: skip
        """Record a claimed message sent, also over a newer claim (sent is true and final), then
        announce it; another's final state stands. ``announced=True`` (a pack member): flagged in
        the same write, then its event sent, also when another run recorded it."""
        changes = sent_changes(record, body, duplicate=duplicate, now=self.ports.now())
        sending, ids = MessageStatus.SENDING, recipient_ids(body, addresses)
        done = self.swap_until(record, lambda r: r.status is sending, recipient_ids=ids,
                               **changes, **flag)  # fmt: skip
        announce = self.emit if flag.get("announced") else lambda r: self.announce([r])
        if done is None:  # someone else finished it (a lease that ran out): theirs stands
            current = self.ports.store.get(record.message_id)
            if current is not None and current.status.is_final:
                announce(current)
            return SendOutcome(OutcomeKind.ACKNOWLEDGED, record.message_id)
        announce(done)
        log.info(
            "message %s sent (upstream %s, attempt %d%s)",
            done.logged_id,
            done.upstream_message_id,
            done.attempts,
            ", duplicate RequestId" if duplicate else "",
        )
        return SendOutcome(OutcomeKind.SENT, done.message_id)

    def back_off(
        self, record: MessageRecord, failed: Transient, next_at: dt.datetime
    ) -> SendOutcome:
        """Queue a claimed message whose attempt failed transiently again, due at ``next_at``,
        or fail it if it gives up now; ``ACKNOWLEDGED`` if another finished or claimed it."""
        error, limit = failed.error(record.attempts), self.ports.policy.max_attempts
        unsure = not failed.certainly_not_sent
        final = give_up(record, error, failed.title, next_at, max_attempts=limit, maybe_sent=unsure)
        if final is not None:
            return self.fail(record, final)
        changes = backoff_changes(failed, error, next_at, self.ports.now())
        updated = self.swap_until(record, lambda r: same_claim(record, r), **changes)
        kind = OutcomeKind.ACKNOWLEDGED if updated is None else OutcomeKind.RETRY_SCHEDULED
        return SendOutcome(kind, record.message_id)

    def fail(self, record: MessageRecord, failure: FailureInfo) -> SendOutcome:
        """Fail a message for good (unless final, or claimed since: see :func:`same_claim`)."""
        changes = failed_changes(failure, self.ports.now())
        failure = changes["failure"]
        done = self.swap_until(record, lambda r: same_claim(record, r), **changes)
        if done is None:
            current = self.ports.store.get(record.message_id)
            if current is not None:
                self.announce([current])
            return SendOutcome(OutcomeKind.ACKNOWLEDGED, record.message_id)
        self.announce([done])
        log.warning("message %s failed for good: %s", done.logged_id, failure.title)
        return SendOutcome(OutcomeKind.FAILED, done.message_id, detail=failure.code)

    def fail_many(self, items: list[tuple[MessageRecord, FailureInfo]]) -> None:
        """:meth:`fail` for many (bulk members: 100 a transaction), then their announcements."""
        if not items:
            return
        now = self.ports.now()
        store = self.ports.store
        done = store.swap_many([(r, failed_changes(f, now)) for r, f in items])
        lost = [r.message_id for (r, _), d in zip(items, done, strict=True) if d is None]
        recorded = [d for d in done if d is not None]
        if lost:
            recorded += list(store.get_many(lost).values())
        self.announce(recorded)
        for r in recorded:
            if r.status is MessageStatus.FAILED and r.failure is not None:
                log.warning("message %s failed for good: %s", r.logged_id, r.failure.title)

    # --- side effects ------------------------------------------------------------------------

    def announce(self, records: list[MessageRecord]) -> None:
        """Emit each final, unannounced record's event (and dead letter), then mark them
        announced (100 rows a transaction where they share a partition). Repeatable."""
        self.ports.quota_wait.ended(records)  # a slot held by one that ended is free to hold
        due = [r for r in records if not r.announced and r.status.is_final]
        if not due:
            return
        emitted = list(map(self.emit, due) if len(due) == 1 else storage_pool().map(self.emit, due))
        done = [r for r, e in zip(due, emitted, strict=True) if e]
        flags = self.ports.store.swap_many([(r, {"announced": True}) for r in done])
        if lost := sum(1 for f in flags if f is None):
            log.info("%d announcement flag(s) lost a race", lost)

    def dead_letter(self, letter: DeadLetter, key: str | None = None) -> None:
        """Put ``letter`` on the dead-letter queue (a large original by reference, then its
        errors shortened); with a ``key``, only once."""
        from azure.core.exceptions import ResourceExistsError

        letter = original_aside(letter, self.ports.payloads)
        text = letter.model_dump_json(exclude_none=True)
        while not fits_queue(text) and letter.errors:
            letter = letter.model_copy(update={"errors": letter.errors[: len(letter.errors) // 2]})
            text = letter.model_dump_json(exclude_none=True)
        try:
            write_dead_letter(self.ports.dead_letters, text, queue_name=OUTBOUND_DEAD_LETTER_QUEUE,
                              now=letter.deadLetteredAt if key else None, key=key)  # fmt: skip
        except ResourceExistsError:  # only with a key: written before
            log.info("dead letter %s written already", key)

    def emit(self, record: MessageRecord) -> bool:
        """Send a final record's event (and a failure's dead letter), whatever ``announced``
        says; False for one not final."""
        if record.status is MessageStatus.CANCELLED:
            emit_cancelled(self.ports.store, self.ports.events, record)
            return True
        if not record.status.is_final:
            return False
        event_type = MESSAGE_SENT if record.status is MessageStatus.SENT else MESSAGE_FAILED
        # In the message's own trace (a pack's members each have theirs), linked to this one.
        with telemetry.span(
            f"emit {event_type}",
            parent=record.traceparent,
            links=[telemetry.current_traceparent()],
            kind="producer",
            attributes={"smartdialog.message_id": record.message_id},
        ):
            self._emit(record)
        telemetry.count_send(str(record.status))
        return True

    def _emit(self, record: MessageRecord) -> None:
        at = record.finished_at or self.ports.now()
        event_id = f"{record.message_id}:{record.status}"
        if record.status is MessageStatus.SENT:
            result = record.result_json() or {}
            recipients = [RecipientOutcome(address=kept_id(r.get("Address") or r.get("address")),
                                           id=kept_id(r.get("Id") or r.get("id")))
                          for r in answer_recipients(result)]  # fmt: skip
            sent = MessageSentData(
                messageId=record.message_id,
                operation=record.operation,
                customerId=record.customer_id,
                serviceId=record.service_id,
                connection=record.connection,
                requestId=record.upstream_request_id,
                upstreamMessageId=record.upstream_message_id,
                messagePartCount=record.part_count,
                threadId=kept_id(result.get("ThreadId")),
                recipients=recipients,
                attempts=record.attempts,
                duplicate=record.duplicate,
                origin=command_origin(record.command),
            )
            # One event when it fits a queue message, else the recipients split across parts.
            parts = events_in_parts(
                MESSAGE_SENT, sent, items="recipients", event_id=event_id, subject=sent.messageId,
                time=at,
            )  # fmt: skip
            for part in parts:
                self.ports.events.send_message(part.to_json())
            return
        assert record.failure is not None
        failure, event_id = bounded(record.failure), record.failed_id  # the time stable too
        # Announced again (a crash before the flag, a poll's 503): its dead letter not again.
        key = event_id.replace(":", ".") if record.finished_at else None
        letter = DeadLetter(
            id=event_id,
            reason=DeadLetterReason.FAILED,
            detail=failure.title,
            error=failure,
            messageId=record.message_id,
            connection=record.connection,
            queue=OUTBOUND_QUEUE,
            deadLetteredAt=at,
            original=record.command,
        )
        self.dead_letter(letter, key)
        data = MessageFailedData(
            messageId=record.message_id,
            operation=record.operation,
            customerId=record.customer_id or None,  # "": unknown (its connection removed)
            serviceId=record.service_id,
            connection=record.connection,
            requestId=record.request_id,
            error=failure,
            origin=command_origin(record.command),
        )
        event = make_event(MESSAGE_FAILED, data, event_id=event_id, subject=data.messageId, time=at)
        self.ports.events.send_message(event.to_json())
        notify_send_failed(record.message_id, record.command, record.service_id,  # reply: none
                           failure.model_dump(), at, connection=record.connection,
                           failed_id=event_id)  # fmt: skip

    def requeue(
        self, command: OutboundMessage, attempts: int, delay: float, kind: OutcomeKind, reason: str
    ) -> SendOutcome:
        """Put a copy of the message back with a visibility delay (a crash before the host
        deletes the original leaves a harmless duplicate); a filled-in RequestId is left out."""
        assert command.messageId is not None
        deferrals = command.deferrals + (kind is OutcomeKind.DEFERRED)
        update: dict[str, Any] = {"attempts": attempts, "deferrals": deferrals}
        if command._request_id_filled:
            update["body"] = command.body.model_copy(update={"RequestId": None})
        copy = command.model_copy(update=update)
        text = queued_text(command_text(copy), message_id=command.messageId, attempts=attempts,
                           payloads=self.ports.payloads, deferrals=deferrals)  # fmt: skip
        return self.put_back(text, "message", command.messageId, delay, kind, reason)

    def requeue_driver(
        self, driver: PackDriver, delay: float, kind: OutcomeKind, reason: str
    ) -> SendOutcome:
        """Put a pack's driver back on the queue after ``delay`` seconds."""
        deferrals = driver.deferrals + (kind is OutcomeKind.DEFERRED)
        text = driver.model_copy(update={"deferrals": deferrals}).model_dump_json()
        return self.put_back(text, "pack", driver.packId, delay, kind, reason)

    def put_back(
        self, text: str, what: str, name: str, delay: float, kind: OutcomeKind, reason: str
    ) -> SendOutcome:
        """Put ``text`` (``what`` ``name``) back on the queue, visible after ``delay`` s."""
        seconds = whole_seconds(delay)
        self.ports.outbound.send_message(text, visibility_timeout=seconds)
        log.debug("%s %s %s (%s); back in %d s", what, name, kind, reason, seconds)
        return SendOutcome(kind, name, delay_seconds=seconds, detail=reason)

    def someone_elses(
        self, record: MessageRecord, command: OutboundMessage, got: QueueCopy
    ) -> SendOutcome | None:
        """None when ``record`` is ``command``'s; a rule's edited send again is acknowledged;
        else ``command``'s ``messageId`` is taken: dead-lettered, the record left alone."""
        if self.owns(record, command):
            return None
        if repeats_rule_send(record.command, command):
            log.info("message %s: a rule's send again, edited: acknowledged", record.logged_id)
            return SendOutcome(OutcomeKind.ACKNOWLEDGED, command.messageId, detail="repeat")
        taken = ValueError(f"messageId {command.messageId} is already used by a different message")
        return self.dead_letter_malformed(got, taken, fails_record=False)

    def dead_letter_malformed(
        self, got: QueueCopy, exc: Exception, *, fails_record: bool = True
    ) -> SendOutcome:
        """Dead-letter a queue message that is not one of ours (never processed); if
        ``fails_record``, the record its ``messageId`` names fails ``malformed``, unless final or
        claimed."""
        errors: list[dict[str, Any]] = []
        if isinstance(exc, ValidationError):
            for item in exc.errors(include_url=False, include_input=False)[:MAX_LISTED_ERRORS]:
                where = ".".join(str(p) for p in item["loc"]) or "(message)"
                errors.append({"field": where[:300], "message": item["msg"][:500]})
            detail = f"not a valid outbound message: {exc.error_count()} problem(s)"
        else:
            detail = f"not a valid outbound message: {str(exc)[:2000]}"
            if isinstance(exc, FieldValueError):  # a bad address: named as the actions' 400 does
                errors.append({"field": exc.field, "message": exc.message})
        message_id = readable_message_id(got.text, customer_id=self.ports.policy.customer_id)
        letter = DeadLetter(
            id=f"malformed:{got.queue_id}" if got.queue_id else None,
            reason=DeadLetterReason.MALFORMED,
            detail=detail,
            errors=errors,
            # Not the id of a message taken by another: its re-drive must leave that one alone.
            messageId=message_id if fails_record else None,
            queue=OUTBOUND_QUEUE,
            queueMessageId=got.queue_id,
            dequeueCount=got.dequeue_count,
            deadLetteredAt=self.ports.now(),
            original=got.text,
        )
        self.dead_letter(letter)
        log.warning("outbound queue message %s dead-lettered: %s", got.queue_id, detail)
        record = (
            self.ports.store.get(message_id) if fails_record and message_id is not None else None
        )
        if record is not None and not record.status.is_final and not self._claimed(record):
            problems = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
            failure = FailureInfo(
                code="malformed",
                title="Its queued command could not be read",
                detail=f"{detail}. {problems}".strip() if problems else detail,
                attempts=record.attempts,
                errors=[FailureFieldError.model_validate(e) for e in errors] or None,
            )
            self.fail(record, failure)
        return SendOutcome(OutcomeKind.DEAD_LETTERED, message_id, detail=detail)

    def owns(self, record: MessageRecord, command: OutboundMessage) -> bool:
        """Whether ``command`` is ``record``'s own (:func:`is_recorded_as`; a record older than
        fingerprints takes any), not another message's that reused its ``messageId``."""
        return not record.fingerprint or is_recorded_as(record, command)

    def settle_poisoned(self, command: OutboundMessage) -> bool | None:
        """Fail the message of poisoned ``command``: True once failed and announced; False with
        no record, one sent or cancelled, or another's; None while a worker's claim is live."""
        record = self.ports.store.get(command.messageId or "")
        if record is None or not self.owns(record, command):
            return False
        if record.status is MessageStatus.FAILED:
            self.announce([record])  # a crash may have come between its failure and that
            return True
        if record.status.is_final:  # sent or cancelled
            return False
        if self._claimed(record):
            return None
        return True if self.fail(record, poisoned(record)).kind is OutcomeKind.FAILED else None

    def _claimed(self, record: MessageRecord) -> bool:
        """Whether a worker's claim on ``record`` is live (that worker settles it)."""
        return record.held_until(self.ports.now()) is not None


def bounded(failure: FailureInfo) -> FailureInfo:
    """``failure`` with its title and detail cut to their limits (``model_copy`` skips that)."""
    return FailureInfo.model_validate(failure.model_dump())


#: A malformed message's dead letter lists at most this many schema violations.
MAX_LISTED_ERRORS = 50
