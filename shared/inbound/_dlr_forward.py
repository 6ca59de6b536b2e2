"""Passing delivery reports on to a send's own ``DlrUrl``, from a queue.

The delivery-report function never calls the caller's URL itself (a slow or hostile URL would
hold SmartDialog's request): it puts one :class:`DlrForward` on ``smartdialog-dlr-forward``.
:class:`DlrForwarder` (queue trigger ``DlrForwarder``) reads the URL from the message's record
(it is not on the queue: it may carry its owner's secret), GETs it with the report's parameters
appended through the guarded client, and follows the New Message dispatcher's conventions
(:func:`shared.inbound._dispatch.judge_call`): a failure that may pass later is re-enqueued with
backoff (``SMARTDIALOG_DISPATCH_RETRY_BASE_SECONDS``, the URL's Retry-After if longer); after
``SMARTDIALOG_DISPATCH_MAX_ATTEMPTS`` calls, or at once when the URL answers another 4xx or 3xx or
the guard refuses it, a :class:`DlrForwardDeadLetter` goes to
``smartdialog-dlr-forward-deadletter``. Only our own storage failing raises.

Delivery is at least once: a crash after the forward is queued and before the report is marked
processed queues it again on SmartDialog's retry.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import telemetry
from shared.clock import utcnow
from shared.deadletters import KeptOriginal, original_aside, write_dead_letter
from shared.guarded_http import GuardedClient
from shared.inbound._dispatch import (
    DispatchOutcome,
    DispatchResult,
    GiveUp,
    after_failure,
    judge_call,
)
from shared.logs import loggable_id
from shared.messages import MESSAGE_ID_PATTERN
from shared.names import DLR_FORWARD_DEAD_LETTER_QUEUE, DLR_FORWARD_QUEUE
from shared.payloads import PayloadStore
from shared.storage import QueueLike, ensured_queue

if TYPE_CHECKING:
    from shared.messages import MessageRecord, MessageStore
    from shared.settings import Settings

__all__ = [
    "DlrForward",
    "DlrForwardDeadLetter",
    "DlrForwarder",
    "own_dlr_url",
    "reset_forwarder_cache",
]

log = logging.getLogger("shared.inbound.dlr_forward")


class DlrForward(BaseModel):
    """One message on ``smartdialog-dlr-forward``: pass one report on to the send's DlrUrl."""

    model_config = ConfigDict(extra="forbid")

    schemaVersion: Literal[1] = 1
    messageId: str = Field(
        pattern=MESSAGE_ID_PATTERN,
        description="Our message id: its record holds the caller's DlrUrl.",
    )
    params: dict[str, str] = Field(description="The report's query parameters, our token excluded.")
    attempts: int = Field(0, ge=0, description="Calls made so far.")
    firstQueuedAt: dt.datetime


class DlrForwardDeadLetter(KeptOriginal):
    """One message on ``smartdialog-dlr-forward-deadletter``: a forward given up."""

    model_config = ConfigDict(extra="forbid")

    schemaVersion: Literal[1] = 1
    reason: Literal["attempts-exhausted", "rejected", "refused", "malformed"]
    detail: str = Field(description="Why; names the host, never the URL.")
    messageId: str | None = None
    attempts: int = 0
    lastStatus: int | None = Field(None, description="HTTP status of the last call, if any.")
    deadLetteredAt: dt.datetime


def own_dlr_url(record: MessageRecord) -> str | None:
    """The caller's own ``DlrUrl`` kept in a send's stored command, if it gave one."""
    try:
        command = json.loads(record.command)
    except ValueError:
        return None
    body = command.get("body") if isinstance(command, dict) else None
    url = body.get("DlrUrl") if isinstance(body, dict) else None
    return url if isinstance(url, str) and url else None


class DlrForwarder:
    """Processes ``smartdialog-dlr-forward`` messages. Build with :meth:`from_settings`."""

    def __init__(
        self,
        *,
        messages: MessageStore,
        forwards: QueueLike,
        dead_letters: QueueLike,
        http: GuardedClient,
        max_attempts: int,
        retry_base_seconds: float,
        payloads: PayloadStore | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.messages = messages
        self._payloads = payloads
        self._forwards = forwards
        self._dead_letters = dead_letters
        self._http = http
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> DlrForwarder:
        from shared.settings import get_settings

        return _forwarder_for(settings or get_settings())

    def process(self, text: str) -> DispatchResult:
        """Call the send's DlrUrl once for one queued report (see the module docstring), in a
        span that continues the send's trace (its record keeps it, as for the report itself)."""
        malformed = ""
        try:
            forward: DlrForward | None = DlrForward.model_validate_json(text)
        except ValidationError as exc:
            where = ", ".join(".".join(map(str, e["loc"])) or "(message)" for e in exc.errors())
            malformed = f"not a DLR forward: {exc.error_count()} problem(s), at {where[:300]}"
            forward = None
        record = self.messages.get(forward.messageId) if forward is not None else None
        with telemetry.span(
            f"process {DLR_FORWARD_QUEUE}",
            parent=record.traceparent if record is not None else None,
            kind="consumer",
            attributes={"smartdialog.message_id": forward.messageId if forward else None},
        ) as current:
            if forward is None:
                result = self._dead_letter("malformed", malformed, text)
            else:
                result = self._forward(text, forward, record)
            current.set_attribute("smartdialog.outcome", str(result.outcome))
        return result

    def _forward(
        self, text: str, forward: DlrForward, record: MessageRecord | None
    ) -> DispatchResult:
        url = own_dlr_url(record) if record is not None else None
        if url is None:
            log.info(
                "message %s has no DlrUrl (any more); forward dropped",
                loggable_id(forward.messageId),
            )
            return DispatchResult(DispatchOutcome.UNSUBSCRIBED)
        # The report's parameters join the URL's own query (a fragment is never sent anyway).
        parts = urlsplit(url)
        query = "&".join(q for q in (parts.query, urlencode(forward.params)) if q)
        target = parts._replace(query=query, fragment="").geturl()
        with telemetry.span(
            "GET DlrUrl", kind="client", attributes={"server.address": parts.hostname}
        ) as call:
            verdict = judge_call(
                lambda: self._http.get(target, headers=telemetry.inject_traceparent({})),
                parts.hostname,
                now=lambda: self._clock().timestamp(),
            )
            if verdict.status is not None:
                call.set_attribute("http.response.status_code", verdict.status)
        attempts = forward.attempts + verdict.attempts
        if verdict.kind == "delivered":
            return DispatchResult(DispatchOutcome.DELIVERED, verdict.status)
        step = after_failure(
            verdict, attempts, max_attempts=self.max_attempts, base=self.retry_base_seconds
        )
        if isinstance(step, GiveUp):
            return self._dead_letter(
                step.reason,
                step.detail,
                text,
                message_id=forward.messageId,
                attempts=attempts,
                status=verdict.status,
            )
        copy = forward.model_copy(update={"attempts": attempts})
        self._forwards.send_message(copy.model_dump_json(), visibility_timeout=step)
        log.log(
            logging.WARNING if verdict.attempts else logging.INFO,
            "message %s: the caller's DlrUrl %s (%s); attempt %d, retry in %d s",
            loggable_id(forward.messageId),
            "failed" if verdict.attempts else "put back, not attempted",
            verdict.detail,
            attempts,
            step,
        )
        return DispatchResult(DispatchOutcome.RETRY_SCHEDULED, verdict.status, step, verdict.detail)

    def _dead_letter(
        self,
        reason: Literal["attempts-exhausted", "rejected", "refused", "malformed"],
        detail: str,
        text: str,
        *,
        message_id: str | None = None,
        attempts: int = 0,
        status: int | None = None,
    ) -> DispatchResult:
        letter = DlrForwardDeadLetter(
            reason=reason,
            detail=detail,
            messageId=message_id,
            attempts=attempts,
            lastStatus=status,
            deadLetteredAt=self._clock(),
            original=text,
        )
        write_dead_letter(
            self._dead_letters,
            original_aside(letter, self._payloads).model_dump_json(exclude_none=True),
            queue_name=DLR_FORWARD_DEAD_LETTER_QUEUE,
        )
        log.warning("DLR forward dead-lettered (%s): %s", reason, detail)
        return DispatchResult(DispatchOutcome.DEAD_LETTERED, status, detail=detail)


@lru_cache(maxsize=4)
def _forwarder_for(settings: Settings) -> DlrForwarder:
    from shared.messages import MessageStore

    return DlrForwarder(
        messages=MessageStore.from_settings(settings),
        forwards=ensured_queue(DLR_FORWARD_QUEUE, settings),
        dead_letters=ensured_queue(DLR_FORWARD_DEAD_LETTER_QUEUE, settings),
        http=GuardedClient.from_settings(settings),
        max_attempts=settings.dispatch_max_attempts,
        retry_base_seconds=settings.dispatch_retry_base_seconds,
        payloads=PayloadStore.from_settings(settings),
    )


def reset_forwarder_cache() -> None:
    """Forget cached forwarders (tests change settings between cases)."""
    _forwarder_for.cache_clear()
