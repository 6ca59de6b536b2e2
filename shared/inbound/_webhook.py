"""The inbound webhook: one storage call, the intake message or the event itself (two when its
URL's nonce was not checked in the last 30 s: the revocation read, ``shared.inbound._registry``).

The webhook answers fast: it checks, then makes one or two storage calls::

    InboundWebhook:  token signature (401) -> not revoked: one read (401) -> size (413 above 1 MiB)
                     -> JSON payload (400)
                     -> needs no processing: its CloudEvent on smartdialog-inbound -> 202 Accepted
                     -> else one InboundIntake on smartdialog-inbound-intake -> 202 Accepted
                        (a payload too large for it goes first to a blob it names)

A message needs no processing when it is no opt-out keyword, its service never asked a question
and has no New Message subscriber on its connection (the cached subscriber index of
:mod:`shared.triggers` says both), and its event fits one queue message (docs/inbound.md, "Two
paths"). Everything else happens in the queue-triggered ``InboundProcessor``
(:mod:`shared.inbound._processor`, re-exported here), once per intake message.

Nothing is stored before the token and the payload are checked, so forged, stale or malformed
calls leave no trace, not even on the intake queue. ``202`` means "stored": the call is
acknowledged only once its message is durably stored, and any failure to store it is a 500, so
SmartDialog retries. SmartDialog may also retry after a 202 (a lost answer): that is the same
event (the same id) again, which consumers and the dispatcher recognise.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from shared import telemetry
from shared.clock import utcnow
from shared.inbound._keywords import connection_keyword
from shared.inbound._models import InboundIntake, NewMessagePayload
from shared.inbound._processor import (
    InboundProcessor,
    MalformedIntake,
    ProcessResult,
    message_event,
    received_event,
    received_events,
)
from shared.inbound._registry import WebhookRegistry, verify_webhook_token
from shared.logs import loggable_id, redacted_traceback
from shared.names import DEFAULT_CONNECTION, INBOUND_INTAKE_QUEUE, INBOUND_QUEUE
from shared.payloads import PayloadStore, fits_queue
from shared.problems import FieldError, Problem, ProblemType
from shared.storage import QueueLike, send_creating
from shared.triggers import TriggerKind, TriggerNotifier

if TYPE_CHECKING:
    from shared.settings import Settings
    from shared.signing import VerifiedToken

__all__ = [
    "MAX_INBOUND_BODY_BYTES",
    "InboundProcessor",
    "InboundReceiver",
    "InboundResult",
    "MalformedIntake",
    "ProcessResult",
    "inbound_message_key",
    "received_event",
    "received_events",
]

log = logging.getLogger("shared.inbound.webhook")

#: The largest webhook body accepted; a larger one is answered 413 (SmartDialog's own messages
#: are far smaller: 20,000 characters of content and a few attachments).
MAX_INBOUND_BODY_BYTES = 1024 * 1024


def inbound_message_key(payload: NewMessagePayload, received_at: dt.datetime) -> str:
    """SmartDialog's ``messageId``, or (without one) a hash of the payload that stays the same
    across SmartDialog's retries of the same message. Without a ``timestamp`` either, nothing
    tells a retry from a second message of the same text (a second "YES" hours later), so the
    hash takes in ``received_at`` too: each webhook call is a message of its own (a retry after
    a lost answer may come twice; no message is ever taken for an earlier one and dropped). A
    ``timestamp`` is hashed as written (a zone or none, as the previous release did; one we
    cannot read as its text), so a retry that spans a deploy keeps its id."""
    if payload.messageId:
        return payload.messageId
    material = payload.model_dump(mode="json", exclude={"messageId"})
    if payload._unread_timestamp is not None:  # the same text on every retry of it
        material["timestamp"] = payload._unread_timestamp
    elif payload.timestamp is None:
        material["receivedAt"] = received_at.isoformat()
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256-" + hashlib.sha256(canonical.encode()).hexdigest()


# --- the webhook: token, payload, one intake message ---------------------------------------------


@dataclass(frozen=True)
class InboundResult:
    """What the webhook did: the call is stored (on the intake queue, or its event on
    ``smartdialog-inbound``); ``event_id`` is the id its event has (or had, for a message
    SmartDialog delivered before) on ``smartdialog-inbound``."""

    event_id: str
    outcome: Literal["accepted"] = "accepted"

    def body(self) -> dict[str, Any]:
        return {"status": self.outcome, "id": self.event_id}


class InboundReceiver:
    """Handles one webhook POST (host-independent): one storage call per accepted request (the
    intake message or the event), and now and then the revocation check and the subscriber
    index's reads (each cached 30 s). Build with :meth:`from_settings`."""

    def __init__(
        self,
        settings: Settings,
        *,
        intake: QueueLike,
        registry: WebhookRegistry | None = None,
        payloads: PayloadStore | None = None,
        inbound: QueueLike | None = None,
        index: TriggerNotifier | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.settings = settings
        self._intake = intake
        self._inbound = inbound
        self._index = index
        self._registry = registry
        self._payloads = payloads
        self._clock = clock or utcnow

    @classmethod
    def from_settings(cls, settings: Settings) -> InboundReceiver:
        from shared.storage import queue_client

        # Not ensured_queue: that would add a request; send_creating creates it on a 404 only.
        return cls(
            settings,
            intake=queue_client(INBOUND_INTAKE_QUEUE, settings),
            registry=WebhookRegistry.for_webhook(settings),
            payloads=PayloadStore.from_settings(settings),
            inbound=queue_client(INBOUND_QUEUE, settings),
            index=TriggerNotifier.for_settings(settings),
        )

    def authenticate(self, service: str, token: str | None, connection: str | None = None) -> None:
        """401 unless ``token`` opens the webhook of ``service`` on ``connection`` (the URL's
        parameter, None if it has none) under one of the secrets and its registration was not
        revoked (the signature first: a forged token costs no storage)."""
        verified = verify_webhook_token(self.settings, service, token, connection)
        if verified is None or self._revoked(service, verified):
            raise Problem(
                401,
                "Invalid or missing token",
                "This webhook URL's token is not valid for this service (forged, signed with a "
                "secret that is no longer configured, or its registration was removed). Register "
                "the webhook again.",
                type=ProblemType.UNAUTHORIZED,
                headers={"WWW-Authenticate": 'Bearer realm="smartdialog-webhook"'},
            )

    def _revoked(self, service: str, token: VerifiedToken) -> bool:
        if self._registry is None:
            self._registry = WebhookRegistry.for_webhook(self.settings)
        return self._registry.revoked(service, token)

    @staticmethod
    def parse(body: bytes) -> NewMessagePayload:
        """The New Message payload in ``body``, or a 400 problem naming what is wrong."""
        try:
            return NewMessagePayload.model_validate_json(body or b"null")
        except ValidationError as exc:
            errors = [
                FieldError(
                    ".".join(str(p) for p in e["loc"]) or "body",
                    str(e["msg"]).rstrip(".") + ".",
                )
                for e in exc.errors(include_url=False, include_input=False)
            ]
            raise Problem(
                400,
                "Not a New Message payload",
                "The body must be SmartDialog's New Message JSON object.",
                type=ProblemType.VALIDATION,
                errors=errors,
            ) from None

    def receive(
        self, service: str, token: str | None, body: bytes, *, connection: str | None = None
    ) -> InboundResult:
        """Authenticate, parse, then publish the event of a message that needs no processing
        (:meth:`_publish_plain`) or put one intake message (a payload too large for one goes by
        reference: a blob, then the intake message naming it). ``connection``: the URL's
        connection parameter (None: a URL made before connections, the default one). Raises
        :class:`Problem` (401, 413, 400); a storage error propagates (500, SmartDialog
        retries)."""
        self.authenticate(service, token, connection)
        if len(body) > MAX_INBOUND_BODY_BYTES:
            raise Problem(
                413,
                "The message is too large",
                f"The body is {len(body):,} bytes; at most {MAX_INBOUND_BODY_BYTES:,} are "
                "accepted.",
                type=ProblemType.VALIDATION,
                errors=[FieldError("body", f"At most {MAX_INBOUND_BODY_BYTES:,} bytes.")],
            )
        payload = self.parse(body)
        received_at = self._clock()
        key = inbound_message_key(payload, received_at)
        with telemetry.span(
            "inbound webhook", kind="server", attributes={"smartdialog.service": service}
        ):
            intake = InboundIntake(
                service=service,
                connection=connection or DEFAULT_CONNECTION,
                messageKey=key,
                receivedAt=received_at,
                traceparent=telemetry.current_traceparent(),
                payload=payload,
            )
            if self._publish_plain(intake, payload):
                return InboundResult(f"{service}:{key}")
            text = intake.model_dump_json(exclude_none=True)
            if not fits_queue(text):
                if self._payloads is None:
                    raise RuntimeError("an inbound message this large needs the payload store")
                blob = payload.model_dump_json(exclude_none=True)
                name = self._payloads.put(blob, kind="inbound")
                by_reference = intake.model_copy(update={"payload": None, "payloadBlob": name})
                text = by_reference.model_dump_json(exclude_none=True)
            send_creating(self._intake, text)
        return InboundResult(f"{service}:{key}")

    def _publish_plain(self, intake: InboundIntake, payload: NewMessagePayload) -> bool:
        """Publish the event of a message that needs no processing onto ``smartdialog-inbound``
        at once (one storage call, as the intake message would be): no opt-out keyword of its
        connection, a service that never asked a question and has no New Message subscriber on
        this connection (the cached subscriber index says both), an event that fits one queue
        message. False (nothing written) for every other message: the processor's."""
        if self._inbound is None or self._index is None:
            return False
        service = intake.service
        if connection_keyword(payload.content, intake.connection, self.settings) is not None:
            return False
        try:
            if self._index.asks_questions(service) or self._index.subscribers(
                TriggerKind.NEW_MESSAGE, service, connection=intake.connection
            ):
                return False
        except Exception as exc:  # the index unreadable: the processor decides (it retries)
            log.warning("the subscriber index of %s could not be read; the message goes to the "
                        "processor: %s", service, redacted_traceback(exc))  # fmt: skip
            return False
        _, texts = message_event(intake, payload, None)
        if len(texts) != 1:
            return False
        send_creating(self._inbound, texts[0])
        # Debug, as the callback's 2xx answer is (shared.inbound._http): the host logs every
        # invocation, and a line at info per message costs a busy instance its log lock.
        log.debug("inbound %s for service %s published", loggable_id(intake.messageKey), service)
        return True
