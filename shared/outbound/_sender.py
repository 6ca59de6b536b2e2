"""The queue sender: one outbound queue message in, at most one upstream send out.

:meth:`OutboundSender.process` never raises for anything a message or upstream can cause; it
raises only when our own storage fails (then the host retries the message and, after
``maxDequeueCount``, moves it to ``smartdialog-outbound-poison``). Waiting is always done by the
queue, never in the invocation: the upstream client runs with ``max_retries=0`` and every retry
is a re-enqueued copy of the message with a visibility delay.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from pydantic import BaseModel, ValidationError

from shared.events import MESSAGE_FAILED, MESSAGE_SENT, make_event
from shared.names import OUTBOUND_DEAD_LETTER_QUEUE, OUTBOUND_QUEUE
from shared.outbound._models import (
    DeadLetter,
    DeadLetterReason,
    FailureInfo,
    MessageFailedData,
    MessageSentData,
    MessageStatus,
    OutboundMessage,
    OutboundMessageAdapter,
    RecipientOutcome,
    SendDiscussionReplyMessageCommand,
    SendMessageCommand,
    SendReplyMessageCommand,
    SendWhatsappTemplateMessageCommand,
    derive_message_id,
    parse_outbound_message,
    request_fingerprint,
)
from shared.outbound._records import new_record, normalize, recipient_slots
from shared.outbound._store import MessageRecord, MessageStore
from shared.smartdialog import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    CredentialsError,
    DuplicateRequestError,
    InternalServerError,
    RateLimitError,
    SmartDialogClient,
)

if TYPE_CHECKING:
    from shared.inbound import SuppressionStore
    from shared.quota import QuotaDenied, QuotaGrant
    from shared.settings import Settings

__all__ = ["OutboundSender", "OutcomeKind", "SendOutcome", "reset_sender_cache"]

log = logging.getLogger("shared.outbound.sender")

#: Random spread added to a quota deferral (seconds). Zero: the quota's ``retry_after`` is when
#: the next slot frees, and queue visibility is whole seconds anyway, so messages deferred
#: together come back together and compete for the slots then free (nothing is lost by that).
DEFERRAL_SPREAD_SECONDS = 0.0
#: Random extra of an in-process quota wait, so waiting workers do not all retry at once.
QUOTA_WAIT_JITTER = 0.02
#: Queue visibility is capped at 7 days by the service.
MAX_VISIBILITY_SECONDS = 7 * 24 * 3600
# Failures that prove the request never reached upstream (safe to repeat without RequestId).
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class OutcomeKind(enum.StrEnum):
    """What one invocation did with its queue message."""

    SENT = "sent"
    FAILED = "failed"
    DEFERRED = "deferred"  # over quota or claimed by another worker: re-enqueued, no attempt
    RETRY_SCHEDULED = "retry-scheduled"  # an attempt failed transiently: re-enqueued
    ACKNOWLEDGED = "acknowledged"  # already final (sent, failed, cancelled): nothing sent
    DEAD_LETTERED = "dead-lettered"  # malformed: never processed


@dataclass(frozen=True)
class SendOutcome:
    """The result of :meth:`OutboundSender.process` (for logs, tests and the benchmark)."""

    kind: OutcomeKind
    message_id: str | None = None
    delay_seconds: int | None = None
    detail: str | None = None


class QuotaPort(Protocol):
    """What the sender needs of :mod:`shared.quota`."""

    def try_acquire(self) -> QuotaGrant | QuotaDenied: ...


class QueuePort(Protocol):
    """What the sender needs of a queue client (``azure.storage.queue.QueueClient``)."""

    def send_message(self, content: Any, **kwargs: Any) -> Any: ...


class _QuotaDeniedInAttempt(Exception):
    """A second attempt inside one client call (the 401 refresh) found the quota full."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"quota full for a repeated attempt; retry in {retry_after:.2f} s")
        self.retry_after = retry_after


class _AttemptGate:
    """The client's ``before_attempt`` hook: the first attempt of a send uses the grant the
    sender already took; any further attempt (the client's one re-try after a token refresh)
    must take its own, or the call stops. So every upstream attempt holds a quota slot."""

    def __init__(self, quota: QuotaPort) -> None:
        self._quota = quota
        self._local = threading.local()

    def hold(self) -> None:
        self._local.held = True

    def __call__(self) -> None:
        if getattr(self._local, "held", False):
            self._local.held = False
            return
        from shared.quota import QuotaDenied

        result = self._quota.try_acquire()
        if isinstance(result, QuotaDenied):
            raise _QuotaDeniedInAttempt(result.retry_after)


@dataclass(frozen=True)
class _Policy:
    max_attempts: int
    validity: dt.timedelta
    retry_base: float
    retry_max: float
    lease: dt.timedelta
    quota_wait: float
    customer_id: str | None
    service_id: str | None
    #: The settings the policy was read from: our DLR URL (public base URL, callback secrets)
    #: is built from them for every upstream call.
    settings: Settings = field(compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> _Policy:
        return cls(
            max_attempts=settings.send_max_attempts,
            validity=dt.timedelta(seconds=settings.send_validity_seconds),
            retry_base=settings.send_retry_base_seconds,
            retry_max=settings.send_retry_max_seconds,
            lease=dt.timedelta(seconds=settings.send_lease_seconds),
            quota_wait=settings.send_quota_wait_seconds,
            customer_id=settings.customer_id,
            service_id=settings.service_id,
            settings=settings,
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _whole_seconds(seconds: float) -> int:
    return min(MAX_VISIBILITY_SECONDS, max(0, math.ceil(seconds)))


class OutboundSender:
    """Processes outbound queue messages: quota, claim, upstream call, record, events.

    Build it with :meth:`from_settings` (cached per settings object, so the HTTP connection
    pool and the quota store are reused across invocations and threads).
    """

    def __init__(
        self,
        *,
        store: MessageStore,
        quota: QuotaPort,
        client: SmartDialogClient,
        gate: _AttemptGate,
        outbound: QueuePort,
        dead_letters: QueuePort,
        events: QueuePort,
        policy: _Policy,
        suppressions: SuppressionStore | None = None,
        clock: Callable[[], dt.datetime] = _now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self._suppressions = suppressions
        self.quota = quota
        self.client = client
        self._gate = gate
        self._outbound = outbound
        self._dead_letters = dead_letters
        self._events = events
        self.policy = policy
        self._clock = clock
        self._sleep = sleep
        self._hint_lock = threading.Lock()
        self._quota_full_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> OutboundSender:
        from shared.settings import get_settings

        return _sender_for(settings or get_settings())

    # --- entry point -----------------------------------------------------------------------------

    def process(
        self, text: str, *, queue_message_id: str | None = None, dequeue_count: int | None = None
    ) -> SendOutcome:
        """Handle one queue message; see the module docstring for what may raise."""
        try:
            command = parse_outbound_message(text)
            command = normalize(
                command,
                message_id=self._message_id(command, queue_message_id),
                customer_id=self.policy.customer_id,
                service_id=self.policy.service_id,
            )
        except (ValidationError, ValueError) as exc:
            return self._dead_letter_malformed(text, exc, queue_message_id, dequeue_count)
        assert command.messageId is not None
        wait = self._quota_hint()
        if wait > self.policy.quota_wait:
            # This process was just told the quota is full until then: defer without touching
            # storage (a hint can only defer a call, never admit one).
            return self._requeue(command, command.attempts, wait, OutcomeKind.DEFERRED, "quota")
        if wait > 0:
            # Queue visibility has whole-second steps; a shorter wait is cheaper done here.
            self._sleep(wait)
        record = self.store.get(command.messageId)
        if record is None:
            # First seen here: put on the queue directly, not through a send action (which
            # records the message after refusing opted-out recipients), so check them now.
            refusal = self._suppression(command)
            if refusal is not None:
                refused = self._refuse(command, refusal)
                if refused is not None:
                    return refused
            else:
                claimed = self._create_claimed(command)
                if claimed is not None:
                    return self._take_slot_and_send(claimed, command, before=MessageStatus.QUEUED)
            # A record appeared meanwhile (another copy, or another message with this id).
            record = self.store.get(command.messageId)
            if record is None:
                raise RuntimeError(f"message {command.messageId} could not be recorded")
        if record.fingerprint and record.fingerprint != request_fingerprint(command):
            return self._dead_letter_malformed(
                text,
                ValueError(f"messageId {command.messageId} is already used by a different message"),
                queue_message_id,
                dequeue_count,
            )
        return self._advance(record, command)

    # --- the state machine -----------------------------------------------------------------------

    def _advance(self, record: MessageRecord, command: OutboundMessage) -> SendOutcome:
        for _ in range(5):  # each round re-reads after a lost compare-and-swap
            now = self._clock()
            if record.status.is_final:
                self._announce(record)
                return SendOutcome(OutcomeKind.ACKNOWLEDGED, record.message_id)
            lease = record.lease_until
            if record.status is MessageStatus.SENDING and lease is not None and lease > now:
                # Another worker holds the claim (a duplicate queue message): come back when
                # its lease ends; if it finished by then, this copy is simply acknowledged.
                delay = (lease - now).total_seconds() + 1
                return self._requeue(
                    command, record.attempts, delay, OutcomeKind.DEFERRED, "claimed"
                )
            if record.status is MessageStatus.SENDING and not record.operation.carries_request_id:
                # The previous attempt died mid-call; without a RequestId a repeat could send
                # twice, so we stop here (at most once).
                return self._fail(
                    record,
                    FailureInfo(
                        code="outcome-unknown",
                        title="An earlier attempt may have been sent",
                        detail=(
                            f"{record.operation} carries no RequestId, and an attempt was "
                            "interrupted before its outcome was recorded; it is not repeated."
                        ),
                        attempts=record.attempts,
                    ),
                )
            if now >= record.valid_until:
                return self._fail(record, self._expired(record))
            claimed = self.store.swap(
                record,
                status=MessageStatus.SENDING,
                attempts=record.attempts + 1,
                lease_until=now + self.policy.lease,
                next_attempt_at=None,
                updated_at=now,
            )
            if claimed is None:
                reread = self.store.get(record.message_id)
                if reread is None:
                    raise RuntimeError(f"message {record.message_id} vanished while claiming")
                record = reread
                continue
            return self._take_slot_and_send(claimed, command, before=record.status)
        raise RuntimeError(f"message {record.message_id}: record kept changing under the sender")

    def _take_slot_and_send(
        self, claimed: MessageRecord, command: OutboundMessage, *, before: MessageStatus
    ) -> SendOutcome:
        """With the message claimed, take a quota slot and call upstream, or hand it back."""
        if claimed.recipient_count >= 99:  # slots past the first transaction (idempotent)
            self.store.ensure_slots(recipient_slots(command, now=claimed.created_at))
        # The quota slot is taken only now, right before the call: the time between grant and
        # call must stay within the quota's safety margin.
        from shared.quota import QuotaDenied

        decision = self.quota.try_acquire()
        waited = 0.0
        while isinstance(decision, QuotaDenied) and (
            waited + decision.retry_after <= self.policy.quota_wait
        ):
            # A slot frees sooner than the queue could bring the message back (whole seconds):
            # wait for it here, holding the claim, within SMARTDIALOG_SEND_QUOTA_WAIT_SECONDS.
            pause = decision.retry_after + random.uniform(0, QUOTA_WAIT_JITTER)
            self._sleep(pause)
            waited += pause
            decision = self.quota.try_acquire()
        if isinstance(decision, QuotaDenied):
            if str(getattr(decision, "reason", "full")) == "full":
                self._note_quota_full(decision.retry_after)
            now = self._clock()
            self.store.swap(
                claimed,
                status=before,
                attempts=claimed.attempts - 1,
                lease_until=None,
                updated_at=now,
            )
            delay = decision.retry_after + random.uniform(0, DEFERRAL_SPREAD_SECONDS)
            return self._requeue(
                command, claimed.attempts - 1, delay, OutcomeKind.DEFERRED, "quota"
            )
        return self._attempt(claimed, command)

    def _quota_hint(self) -> float:
        with self._hint_lock:
            return self._quota_full_until - time.monotonic()

    def _note_quota_full(self, retry_after: float) -> None:
        with self._hint_lock:
            self._quota_full_until = max(self._quota_full_until, time.monotonic() + retry_after)

    def _attempt(self, record: MessageRecord, command: OutboundMessage) -> SendOutcome:
        self._gate.hold()
        try:
            result = self._call_upstream(command)
        except DuplicateRequestError as exc:
            original = exc.original
            body = original.model_dump(mode="json", by_alias=True, exclude_none=True) if isinstance(
                original, BaseModel
            ) else None  # fmt: skip
            log.info("message %s: RequestId already used upstream: sent", record.message_id)
            return self._sent(record, body, duplicate=True)
        except APIResponseValidationError as exc:
            # 2xx: it was sent even though the answer is odd; keep what we got.
            body = exc.body if isinstance(exc.body, dict) else None
            return self._sent(record, body, duplicate=False)
        except RateLimitError as exc:
            return self._transient(
                record, command, exc.retry_after, "rate-limited", "SmartDialog answered 429",
                exc.message, 429, certainly_not_sent=True,
            )  # fmt: skip
        except InternalServerError as exc:
            return self._transient(
                record, command, None, "upstream-unavailable",
                f"SmartDialog answered {exc.status_code}", exc.message, exc.status_code,
                certainly_not_sent=False,
            )  # fmt: skip
        except APIStatusError as exc:
            if exc.status_code in (408,):
                return self._transient(
                    record, command, None, "upstream-unavailable", "SmartDialog timed out",
                    exc.message, exc.status_code, certainly_not_sent=False,
                )  # fmt: skip
            return self._fail(
                record,
                FailureInfo(
                    code="upstream-rejected",
                    title=f"SmartDialog rejected the message ({exc.status_code})",
                    detail=exc.message,
                    upstreamStatus=exc.status_code,
                    attempts=record.attempts,
                ),
            )
        except APIConnectionError as exc:
            not_sent = isinstance(exc.__cause__, _NOT_SENT)
            return self._transient(
                record, command, None, "upstream-unavailable",
                "SmartDialog could not be reached", exc.message, None,
                certainly_not_sent=not_sent,
            )  # fmt: skip
        except _QuotaDeniedInAttempt as exc:
            return self._transient(
                record, command, exc.retry_after, "rate-limited", "Quota full for a repeat",
                str(exc), None, certainly_not_sent=True,
            )  # fmt: skip
        except CredentialsError as exc:
            return self._transient(
                record, command, None, "configuration", "No usable SmartDialog credentials",
                str(exc), None, certainly_not_sent=True,
            )  # fmt: skip
        return self._sent(record, result, duplicate=False)

    def _call_upstream(self, command: OutboundMessage) -> dict[str, Any]:
        """One upstream attempt; upstream's answer as a dict in upstream casing.

        What is sent carries *our* DLR URL (token-bearing, per message) in ``DlrUrl``; it is put
        in only here, so the stored command, its fingerprint and re-enqueued copies keep the
        caller's own ``DlrUrl``, which the DLR function calls after ours. The envelope's own
        fields (``transactional``, ids, counters) never reach upstream: only ``body`` is sent.
        """
        from shared.inbound import with_delivery_report_url

        command = with_delivery_report_url(command, self.policy.settings)
        client = self.client
        result: BaseModel
        if isinstance(command, SendMessageCommand):
            assert command.customerId
            assert command.serviceId
            result = client.send_message(
                command.body, customer_id=command.customerId, service_id=command.serviceId
            )
        elif isinstance(command, SendReplyMessageCommand):
            assert command.customerId
            assert command.serviceId
            result = client.send_reply_message(
                command.body,
                parent_message_id=command.parentMessageId,
                customer_id=command.customerId,
                service_id=command.serviceId,
            )
        elif isinstance(command, SendDiscussionReplyMessageCommand):
            assert command.customerId
            result = client.send_discussion_reply_message(
                command.body, customer_id=command.customerId
            )
        elif isinstance(command, SendWhatsappTemplateMessageCommand):
            assert command.customerId
            assert command.serviceId
            result = client.send_whatsapp_template_message(
                command.body, customer_id=command.customerId, service_id=command.serviceId
            )
        else:  # pragma: no cover - the union is exhaustive
            raise TypeError(type(command))
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)

    # --- outcomes --------------------------------------------------------------------------------

    def _sent(
        self, record: MessageRecord, body: dict[str, Any] | None, *, duplicate: bool
    ) -> SendOutcome:
        now = self._clock()
        body = body or {}
        upstream_id = body.get("MessageId") or body.get("messageId")
        parts = body.get("MessagePartCount") or body.get("messagePartCount")
        raw = body.get("Recipients") or body.get("recipients") or []
        ids = {
            index: str(r.get("Id") or r.get("id"))
            for index, r in enumerate(raw)
            if isinstance(r, dict) and (r.get("Id") or r.get("id"))
        }
        done = self._swap_until(
            record,
            lambda r: r.status is MessageStatus.SENDING,
            recipient_ids=ids,
            status=MessageStatus.SENT,
            result=json.dumps(body, ensure_ascii=False),
            upstream_message_id=str(upstream_id) if upstream_id else None,
            part_count=int(parts) if isinstance(parts, int) and parts > 0 else record.part_count,
            duplicate=duplicate,
            sent_at=now,
            finished_at=now,
            lease_until=None,
            last_error=None,
            updated_at=now,
        )
        if done is None:  # someone else finished it (a lease that ran out): theirs stands
            current = self.store.get(record.message_id)
            if current is not None and current.status.is_final:
                self._announce(current)
            return SendOutcome(OutcomeKind.ACKNOWLEDGED, record.message_id)
        self._announce(done)
        log.info(
            "message %s sent (upstream %s, attempt %d%s)",
            done.message_id, done.upstream_message_id, done.attempts,
            ", duplicate RequestId" if duplicate else "",
        )  # fmt: skip
        return SendOutcome(OutcomeKind.SENT, done.message_id)

    def _transient(
        self,
        record: MessageRecord,
        command: OutboundMessage,
        advised: float | None,
        code: str,
        title: str,
        detail: str | None,
        upstream_status: int | None,
        *,
        certainly_not_sent: bool,
    ) -> SendOutcome:
        error = FailureInfo(
            code=code, title=title, detail=detail, upstreamStatus=upstream_status,
            attempts=record.attempts,
        )  # fmt: skip
        if not certainly_not_sent and not record.operation.carries_request_id:
            return self._fail(
                record,
                error.model_copy(
                    update={
                        "code": "outcome-unknown",
                        "title": f"{title}; the reply may or may not have been sent",
                        "detail": (
                            f"{record.operation} carries no RequestId, so it is not repeated "
                            f"after an ambiguous failure ({detail})."
                        ),
                    }
                ),
            )
        if record.attempts >= self.policy.max_attempts:
            return self._fail(
                record,
                error.model_copy(
                    update={
                        "code": "attempts-exhausted" if code != "rate-limited" else code,
                        "title": f"Gave up after {record.attempts} attempts: {title}",
                    }
                ),
            )
        backoff = min(
            self.policy.retry_base * 2 ** (record.attempts - 1), self.policy.retry_max
        ) * random.uniform(0.75, 1.0)
        delay = max(advised, backoff) if advised is not None else backoff
        now = self._clock()
        if now + dt.timedelta(seconds=delay) >= record.valid_until:
            return self._fail(record, self._expired(record, last=error))
        updated = self._swap_until(
            record,
            lambda r: r.status is MessageStatus.SENDING,
            status=MessageStatus.QUEUED,
            lease_until=None,
            next_attempt_at=now + dt.timedelta(seconds=delay),
            last_error=error,
            updated_at=now,
        )
        if updated is None:
            return SendOutcome(OutcomeKind.ACKNOWLEDGED, record.message_id)
        log.warning(
            "message %s attempt %d failed (%s); retry in %.1f s",
            record.message_id, record.attempts, title, delay,
        )  # fmt: skip
        return self._requeue(command, updated.attempts, delay, OutcomeKind.RETRY_SCHEDULED, code)

    def _suppression(self, command: OutboundMessage) -> FailureInfo | None:
        """Why ``command`` may not be sent (recipients who opted out of its service), or None."""
        if self._suppressions is None or getattr(command, "transactional", True):
            return None
        if isinstance(command, SendDiscussionReplyMessageCommand):
            return None  # no recipients, no service
        from shared.inbound import refuse_suppressed
        from shared.problems import Problem

        addresses = [r.Address for r in command.body.Recipients]
        try:
            refuse_suppressed(
                self._suppressions,
                command.serviceId,
                addresses,
                field="body.Recipients[{index}].Address",
            )
        except Problem as problem:
            offenders = "; ".join(f"{e.field}: {e.message}" for e in problem.errors)
            return FailureInfo(
                code="suppressed",
                title=problem.title,
                detail=f"{problem.detail} {offenders}".strip(),
            )
        return None

    def _refuse(self, command: OutboundMessage, failure: FailureInfo) -> SendOutcome | None:
        """Record a queue-only message that may not be sent, and fail it at once (failed event,
        dead letter with the reason); nothing goes upstream. None if a record with its id
        appeared meanwhile (the caller then goes on as for any recorded message)."""
        now = self._clock()
        record, slots = new_record(
            command, now=now, validity=self.policy.validity, status=MessageStatus.QUEUED
        )
        stored = self.store.create(record, slots)
        if stored is None:
            return None
        log.info("message %s refused: recipient(s) opted out", record.message_id)
        return self._fail(stored, failure)

    def _fail(self, record: MessageRecord, failure: FailureInfo) -> SendOutcome:
        now = self._clock()
        done = self._swap_until(
            record,
            lambda r: not r.status.is_final,
            status=MessageStatus.FAILED,
            failure=failure,
            finished_at=now,
            lease_until=None,
            updated_at=now,
        )
        if done is None:
            current = self.store.get(record.message_id)
            if current is not None:
                self._announce(current)
            return SendOutcome(OutcomeKind.ACKNOWLEDGED, record.message_id)
        self._announce(done)
        log.warning("message %s failed for good: %s", done.message_id, failure.title)
        return SendOutcome(OutcomeKind.FAILED, done.message_id, detail=failure.code)

    def _expired(self, record: MessageRecord, last: FailureInfo | None = None) -> FailureInfo:
        return FailureInfo(
            code="expired",
            title="Not sent within its validity period",
            detail=(
                f"validUntil {record.valid_until.isoformat()} passed"
                + (f"; last error: {last.title}" if last else "")
            ),
            upstreamStatus=last.upstreamStatus if last else None,
            attempts=record.attempts,
        )

    def _swap_until(
        self,
        record: MessageRecord,
        allowed: Callable[[MessageRecord], bool],
        *,
        recipient_ids: Mapping[int, str | None] | None = None,
        **changes: Any,
    ) -> MessageRecord | None:
        """Compare-and-swap ``changes`` while ``allowed(current)``; None once it is not."""
        current: MessageRecord | None = record
        for _ in range(5):
            if current is None or not allowed(current):
                return None
            done = self.store.swap(current, recipient_ids=recipient_ids, **changes)
            if done is not None:
                return done
            current = self.store.get(record.message_id)
        raise RuntimeError(f"message {record.message_id}: record kept changing under the sender")

    # --- side effects ----------------------------------------------------------------------------

    def _announce(self, record: MessageRecord) -> None:
        """Emit the final state's event (and dead letter) once; repeatable after a crash."""
        if record.announced or record.status is MessageStatus.CANCELLED:
            # Cancellation is announced by whoever cancelled (the status service).
            return
        now = self._clock()
        if record.status is MessageStatus.SENT:
            result = record.result_json() or {}
            raw = result.get("Recipients") or result.get("recipients") or []
            recipients = [
                RecipientOutcome(
                    address=r.get("Address") or r.get("address"), id=r.get("Id") or r.get("id")
                )
                for r in raw
                if isinstance(r, dict)
            ]
            data: BaseModel = MessageSentData(
                messageId=record.message_id,
                operation=record.operation,
                customerId=record.customer_id,
                serviceId=record.service_id,
                requestId=record.request_id,
                upstreamMessageId=record.upstream_message_id,
                messagePartCount=record.part_count,
                threadId=result.get("ThreadId"),
                recipients=recipients,
                attempts=record.attempts,
                duplicate=record.duplicate,
            )
            event_type = MESSAGE_SENT
        elif record.status is MessageStatus.FAILED:
            assert record.failure is not None
            letter = DeadLetter(
                reason=DeadLetterReason.FAILED,
                detail=record.failure.title,
                error=record.failure,
                messageId=record.message_id,
                queue=OUTBOUND_QUEUE,
                deadLetteredAt=now,
                original=record.command,
            )
            self._dead_letters.send_message(letter.model_dump_json(exclude_none=True))
            data = MessageFailedData(
                messageId=record.message_id,
                operation=record.operation,
                customerId=record.customer_id,
                serviceId=record.service_id,
                requestId=record.request_id,
                error=record.failure,
            )
            event_type = MESSAGE_FAILED
        else:
            return
        event = make_event(
            event_type,
            data,
            event_id=f"{record.message_id}:{record.status}",
            subject=record.message_id,
            time=record.finished_at or now,
        )
        self._events.send_message(event.to_json())
        if self.store.swap(record, announced=True) is None:
            log.info("message %s: announcement flag lost a race", record.message_id)

    def _requeue(
        self,
        command: OutboundMessage,
        attempts: int,
        delay: float,
        kind: OutcomeKind,
        reason: str,
    ) -> SendOutcome:
        """Put a copy of the message back with a visibility delay; the host then deletes the
        original when we return (a crash in between leaves a duplicate, which is harmless)."""
        copy = command.model_copy(
            update={
                "attempts": attempts,
                "deferrals": command.deferrals + (1 if kind is OutcomeKind.DEFERRED else 0),
            }
        )
        seconds = _whole_seconds(delay)
        text = OutboundMessageAdapter.dump_json(copy, by_alias=True, exclude_none=True).decode()
        self._outbound.send_message(text, visibility_timeout=seconds)
        log.debug("message %s %s (%s); back in %d s", command.messageId, kind, reason, seconds)
        return SendOutcome(kind, command.messageId, delay_seconds=seconds, detail=reason)

    def _dead_letter_malformed(
        self,
        text: str,
        exc: Exception,
        queue_message_id: str | None,
        dequeue_count: int | None,
    ) -> SendOutcome:
        errors: list[dict[str, Any]] = []
        if isinstance(exc, ValidationError):
            for item in exc.errors(include_url=False, include_input=False):
                where = ".".join(str(p) for p in item["loc"]) or "(message)"
                errors.append({"field": where, "message": item["msg"]})
            detail = f"not a valid outbound message: {exc.error_count()} problem(s)"
        else:
            detail = f"not a valid outbound message: {exc}"
        letter = DeadLetter(
            reason=DeadLetterReason.MALFORMED,
            detail=detail,
            errors=errors,
            queue=OUTBOUND_QUEUE,
            queueMessageId=queue_message_id,
            dequeueCount=dequeue_count,
            deadLetteredAt=self._clock(),
            original=text,
        )
        self._dead_letters.send_message(letter.model_dump_json(exclude_none=True))
        log.warning("outbound queue message %s dead-lettered: %s", queue_message_id, detail)
        return SendOutcome(OutcomeKind.DEAD_LETTERED, detail=detail)

    # --- helpers ---------------------------------------------------------------------------------

    def _message_id(self, command: OutboundMessage, queue_message_id: str | None) -> str:
        if command.messageId:
            return command.messageId
        customer = command.customerId or self.policy.customer_id or ""
        request_id = getattr(command.body, "RequestId", None)
        if request_id:
            return derive_message_id(f"request-id\n{customer}", request_id)
        if queue_message_id:
            return derive_message_id("queue-message", queue_message_id)
        raise ValueError("messageId is missing and cannot be derived")

    def _create_claimed(self, command: OutboundMessage) -> MessageRecord | None:
        """Record a message first seen on the queue, already claimed by this worker (one write
        instead of two); None if a record appeared meanwhile."""
        now = self._clock()
        record, slots = new_record(
            command, now=now, validity=self.policy.validity, status=MessageStatus.SENDING
        )
        if now >= record.valid_until:
            self.store.create(replace(record, status=MessageStatus.QUEUED), slots)
            return None  # expired: the normal path fails it
        claimed = replace(record, attempts=1, lease_until=now + self.policy.lease)
        return self.store.create(claimed, slots)


@lru_cache(maxsize=4)
def _sender_for(settings: Settings) -> OutboundSender:
    from shared import quota
    from shared.inbound import SuppressionStore
    from shared.smartdialog import auth_from_settings
    from shared.storage import queue_client

    store = quota.from_settings(settings)
    gate = _AttemptGate(store)
    # No client-side retries: every retry is a re-enqueued copy, so no invocation sleeps.
    client = SmartDialogClient(
        settings.base_url,
        auth_from_settings(settings),
        before_attempt=gate,
        max_retries=0,
        timeout=httpx.Timeout(
            settings.send_timeout_seconds, connect=min(5.0, settings.send_timeout_seconds)
        ),
    )
    return OutboundSender(
        store=MessageStore.from_settings(settings),
        quota=store,
        client=client,
        gate=gate,
        outbound=queue_client(OUTBOUND_QUEUE, settings),
        dead_letters=_ensured_queue(OUTBOUND_DEAD_LETTER_QUEUE, settings),
        events=_ensured_queue(_events_queue(), settings),
        policy=_Policy.from_settings(settings),
        suppressions=SuppressionStore.from_settings(settings),
    )


def _events_queue() -> str:
    from shared.names import EVENTS_QUEUE

    return EVENTS_QUEUE


def _ensured_queue(name: str, settings: Settings) -> Any:
    """A queue client whose queue exists (created once per process; the host only creates the
    queues it triggers on, and Bicep creates them in Azure)."""
    from azure.core.exceptions import ResourceExistsError

    from shared.storage import queue_client

    client = queue_client(name, settings)
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()
    return client


def reset_sender_cache() -> None:
    """Forget cached senders (tests change settings between cases)."""
    _sender_for.cache_clear()
