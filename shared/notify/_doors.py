"""The three doors, host-independent: the CloudEvents HTTP endpoint, the Event Grid trigger and
the ``smartdialog-cloud-events`` queue. Each parses, then hands the events to the
:class:`~shared.notify._notify.Notifier`.
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field

from shared import telemetry
from shared.actions._spec import ActionRequest, ActionResponse
from shared.clock import utcnow
from shared.deadletters import KeptOriginal, original_aside
from shared.logs import loggable_id, loggable_text, redacted, redacted_traceback
from shared.notify._intake import (
    InvalidEvent,
    parse_grid_trigger,
    parse_http,
    parse_queue_text,
    validation_code,
)
from shared.problems import (
    FieldError,
    Problem,
    internal_error,
    request_instance,
    validation_problem,
)

if TYPE_CHECKING:
    from shared.notify._notify import EventResult, Notifier
    from shared.settings import Settings

__all__ = [
    "CloudEventDeadLetter",
    "process_cloud_event_message",
    "receive_cloud_events",
    "receive_grid_event",
]

log = logging.getLogger("shared.notify")

#: The CloudEvents webhook spec's abuse-protection request rate we allow (requests a minute).
ALLOWED_RATE = "120"


@lru_cache(maxsize=4)
def notifier(settings: Settings) -> Notifier:
    """The notifier of ``settings`` (one per settings object: its clients are reused)."""
    from shared.notify._notify import Notifier

    return Notifier(settings)


def _settings(settings: Settings | None) -> Settings:
    from shared.settings import get_settings

    return settings or get_settings()


def receive_cloud_events(
    request: ActionRequest, settings: Settings | None = None
) -> ActionResponse:
    """``/api/events``: OPTIONS is the CloudEvents webhook validation handshake; POST takes
    events in binary, structured or batched mode (or Event Grid schema JSON) and answers 202
    once their sends are queued, 400 naming what is wrong (nothing queued), 500 when our
    storage failed (the producer retries; a retry sends nothing twice). Event Grid's own
    schema validates a subscription by a POST: answered 200 with its ``validationResponse``.
    In a server span continuing the caller's ``traceparent`` header."""
    with telemetry.span(
        "CloudEvents",
        parent=request.header(telemetry.TRACEPARENT),
        kind="server",
        attributes={"smartdialog.tracking_id": loggable_id(request.tracking_id)},
    ) as current:
        response = _receive_cloud_events(request, settings)
        current.set_attribute("http.response.status_code", response.status)
    return response


def _receive_cloud_events(request: ActionRequest, settings: Settings | None) -> ActionResponse:
    instance = request_instance(request.tracking_id)
    logged = loggable_id(request.tracking_id)  # the text is what Azure keeps of a line
    if request.method == "OPTIONS":
        origin = request.header("WebHook-Request-Origin")
        if not origin:
            problem = validation_problem(
                [FieldError("WebHook-Request-Origin", "The validation request names no origin.")]
            )
            return ActionResponse.problem(problem.with_instance(instance))
        headers = {"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": ALLOWED_RATE}
        return ActionResponse.empty(200, headers)
    try:
        try:
            code = validation_code(request.headers, request.body)
            events = [] if code is not None else parse_http(request.headers, request.body)
            results = [] if code is not None else notifier(_settings(settings)).handle(events)
        except InvalidEvent as exc:  # not an event, or too many sends: nothing queued
            raise validation_problem([FieldError(exc.field, str(exc))]) from exc
        if code is not None:  # Event Grid's handshake: no event, no rule
            log.info("Event Grid subscription validation answered")
            response = ActionResponse.json({"validationResponse": code})
        else:
            response = ActionResponse.json(_answer(results), status=202)
    except Problem as problem:
        response = ActionResponse.problem(problem.with_instance(instance))
    except Exception as exc:
        log.error("CloudEvents failed, request %s: %s", logged, redacted_traceback(exc))
        response = ActionResponse.problem(internal_error().with_instance(instance))
    log.info("CloudEvents answered %d, request %s", response.status, logged,
             extra={"trackingId": logged})  # fmt: skip
    return response


def _answer(results: list[EventResult]) -> dict[str, Any]:
    return {
        "Events": len(results),
        "Matched": sum(1 for r in results if r.rules),
        "Unmatched": sum(1 for r in results if not r.rules),
        "Sends": sum(len(r.sends) for r in results),
        "Results": [r.summary() for r in results],
    }


def receive_grid_event(text: str | bytes, settings: Settings | None = None) -> dict[str, Any]:
    """One event of the Event Grid trigger: its JSON (either schema) as the host hands it over.
    An invalid one is logged and dropped (Event Grid retrying it would not help); our storage
    failing raises, so Event Grid delivers it again."""
    with telemetry.span("CloudEventsGrid", kind="consumer"):
        try:
            event = parse_grid_trigger(text)
            return _answer(notifier(_settings(settings)).handle([event]))
        except InvalidEvent as exc:  # not an event, or too many sends: nothing queued
            log.warning("Event Grid delivered an invalid event (%s): %s",
                        loggable_text(exc.field), redacted(str(exc)))  # fmt: skip
            return {"Events": 0, "Invalid": str(exc)}


def process_cloud_event_message(
    text: str,
    *,
    queue_message_id: str | None = None,
    dequeue_count: int | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """One ``smartdialog-cloud-events`` message: JSON or base64 of JSON (as Event Grid's
    storage-queue handler writes it), one event or an array. A message with any event that is
    not valid goes whole to ``smartdialog-cloud-events-deadletter`` with the reason (none of
    its events is sent; see docs/events.md); our storage failing
    raises (the host retries, then moves it to the ``-poison`` queue)."""
    from shared.names import CLOUD_EVENTS_QUEUE

    settings = _settings(settings)
    with telemetry.span(
        f"process {CLOUD_EVENTS_QUEUE}",
        kind="consumer",
        attributes={"messaging.message.id": queue_message_id},
    ):
        try:
            return _answer(notifier(settings).handle(parse_queue_text(text)))
        except InvalidEvent as exc:  # not an event, or too many sends: nothing queued
            dead_letter(text, exc, queue_message_id, dequeue_count, settings)
            return {"Events": 0, "DeadLettered": True}


class CloudEventDeadLetter(KeptOriginal):
    """A message on the smartdialog-cloud-events-deadletter queue: what was refused and why."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        None, description="malformed:<queueMessageId>; the same on every copy of it."
    )
    reason: Literal["malformed"] = "malformed"
    detail: str = Field(description="What is wrong with the message.")
    field: str = Field(description="The offending member, e.g. eventType or [2].source.")
    queue: str
    queueMessageId: str | None = None
    dequeueCount: int | None = None
    deadLetteredAt: dt.datetime


def dead_letter(
    text: str,
    reason: InvalidEvent,
    queue_message_id: str | None,
    dequeue_count: int | None,
    settings: Settings,
) -> None:
    """Put ``text`` on ``smartdialog-cloud-events-deadletter`` with why it was refused."""
    from shared.deadletters import write_dead_letter
    from shared.names import CLOUD_EVENTS_DEAD_LETTER_QUEUE, CLOUD_EVENTS_QUEUE
    from shared.payloads import PayloadStore
    from shared.storage import ensured_queue

    letter = CloudEventDeadLetter(
        id=f"malformed:{queue_message_id}" if queue_message_id else None,
        detail=str(reason),
        field=reason.field,
        queue=CLOUD_EVENTS_QUEUE,
        queueMessageId=queue_message_id,
        dequeueCount=dequeue_count,
        deadLetteredAt=utcnow().astimezone(dt.UTC),
        original=text,
    )
    write_dead_letter(
        ensured_queue(CLOUD_EVENTS_DEAD_LETTER_QUEUE, settings),
        original_aside(letter, PayloadStore.from_settings(settings)).model_dump_json(
            exclude_none=True
        ),
        queue_name=CLOUD_EVENTS_DEAD_LETTER_QUEUE,
    )
    log.warning("cloud event message %s dead-lettered: %s", queue_message_id, redacted(str(reason)))
