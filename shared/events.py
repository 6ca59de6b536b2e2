"""The one event envelope: CloudEvents 1.0 in JSON (structured mode), one event per queue message.

Every event we put on a queue (``smartdialog-events``, ``smartdialog-inbound``) is a
:class:`CloudEvent` whose ``data`` is a JSON object described by a model of the emitting
component. ``id`` is deterministic where the event can be emitted twice (a re-delivered queue
message re-emits the same ``id``), so consumers de-duplicate on ``source`` + ``id`` as the
CloudEvents spec asks. ``subject`` is our message id (or the inbound message id); ``type`` is
one of the ``fi.arena.smartdialog.*`` names below. JSON Schemas: ``schemas/events/``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, Generic, Literal, TypeVar, cast
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from shared.clock import utcnow
from shared.telemetry import current_traceparent

__all__ = [
    "EVENT_SOURCE",
    "MESSAGE_CANCELLED",
    "MESSAGE_FAILED",
    "MESSAGE_REDRIVEN",
    "MESSAGE_SENT",
    "CloudEvent",
    "binary_mode_headers",
    "events_in_parts",
    "make_event",
    "parse_event",
    "publish",
]

#: ``source`` of every event this app emits (a URI reference, as CloudEvents requires).
EVENT_SOURCE = "urn:smartdialog-functions"

#: A send was accepted by SmartDialog (data: ``shared.outbound.MessageSentData``).
MESSAGE_SENT = "fi.arena.smartdialog.message.sent"
#: A send failed for good (data: ``shared.outbound.MessageFailedData``).
MESSAGE_FAILED = "fi.arena.smartdialog.message.failed"
#: A send was cancelled before it was sent (data: ``shared.outbound.MessageCancelledData``).
MESSAGE_CANCELLED = "fi.arena.smartdialog.message.cancelled"
#: A failed send was put back by an operator (data: ``shared.outbound.MessageRedrivenData``);
#: its ``message.sent`` or ``message.failed`` follows as for any send.
MESSAGE_REDRIVEN = "fi.arena.smartdialog.message.redriven"

DataT = TypeVar("DataT", bound=BaseModel)

#: The attributes a binary-mode delivery carries as ``ce-`` headers.
_BINARY_MODE_ATTRIBUTES = ("specversion", "id", "source", "type", "time", "subject")
# What a binary-mode header value keeps as it is (CloudEvents HTTP binding 3.1.3.2): printable
# ASCII but space, '"' and '%'. Everything else is percent-encoded, as UTF-8.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ' "%')


class CloudEvent(BaseModel, Generic[DataT]):
    """A CloudEvents 1.0 event in the JSON format, with a typed ``data`` object."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, description="Unique per source; repeated on a re-emission.")
    source: str = Field(EVENT_SOURCE, min_length=1)
    type: str = Field(min_length=1, description="Reverse-DNS event type, fi.arena.smartdialog.*")
    time: dt.datetime = Field(description="When the occurrence happened (RFC 3339, UTC).")
    subject: str | None = Field(None, description="Our message id (or the inbound message id).")
    datacontenttype: Literal["application/json"] = "application/json"
    traceparent: str | None = Field(
        None, description="W3C trace context (the CloudEvents distributed-tracing extension)."
    )
    data: DataT

    def to_json(self) -> str:
        """The event as the JSON text put on a queue (plain UTF-8, no base64)."""
        return self.model_dump_json(exclude_none=True)


def make_event(
    event_type: str,
    data: DataT,
    *,
    event_id: str,
    subject: str | None = None,
    time: dt.datetime | None = None,
    source: str = EVENT_SOURCE,
) -> CloudEvent[DataT]:
    """A :class:`CloudEvent` with ``time`` defaulting to now (UTC) and the current span's
    ``traceparent``."""
    # Parametrize with the data's own class so it serializes with all its fields.
    model = cast("type[CloudEvent[DataT]]", CloudEvent[type(data)])  # type: ignore[misc]
    return model(
        id=event_id,
        source=source,
        type=event_type,
        time=time or utcnow(),
        subject=subject,
        traceparent=current_traceparent(),
        data=data,
    )


def events_in_parts(
    event_type: str,
    data: DataT,
    *,
    items: str,
    event_id: str,
    subject: str | None = None,
    time: dt.datetime | None = None,
) -> list[CloudEvent[DataT]]:
    """The event of ``data``, or, when it is too large for a queue message, several: each with
    the same ``data`` but a share of its list field ``items``, and its ``part`` (1-based) and
    ``parts`` set (``data`` has those fields). Ids: ``event_id`` for one event, else
    ``<event_id>:<part>``. Every event fits a queue message, measured after encoding; each
    item must fit one on its own."""
    from shared.payloads import QUEUE_MESSAGE_BUDGET, fits_queue, queue_message_bytes

    whole = make_event(event_type, data, event_id=event_id, subject=subject, time=time)
    if fits_queue(whole.to_json()):
        return [whole]
    everything: list[BaseModel] = list(getattr(data, items))
    # The event without its items, with room for the longest part id and part numbers.
    bare = data.model_copy(update={items: [], "part": 99_999, "parts": 99_999})
    frame = make_event(event_type, bare, event_id=f"{event_id}:99999", subject=subject, time=time)
    budget = QUEUE_MESSAGE_BUDGET - queue_message_bytes(frame.to_json())
    groups: list[list[BaseModel]] = [[]]
    used = 0
    for item in everything:
        size = queue_message_bytes(item.model_dump_json(exclude_none=True)) + 1  # and a comma
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += size
    return [
        make_event(
            event_type,
            data.model_copy(update={items: group, "part": index, "parts": len(groups)}),
            event_id=f"{event_id}:{index}",
            subject=subject,
            time=time,
        )
        for index, group in enumerate(groups, 1)
    ]


def publish(event: CloudEvent[Any], queue: str | None = None) -> None:
    """Put ``event`` on ``queue`` (default: ``smartdialog-events``) as plain JSON text."""
    from shared.names import EVENTS_QUEUE
    from shared.storage import queue_client

    queue_client(queue or EVENTS_QUEUE).send_message(event.to_json())


def binary_mode_headers(event: Mapping[str, Any]) -> dict[str, str]:
    """The HTTP headers of ``event`` (a CloudEvent as JSON) in CloudEvents' binary mode: its
    attributes as ``ce-`` headers, each value percent-encoded as the HTTP binding requires, so
    any id or subject (non-ASCII, a line break) can be carried and reads back as it was (the
    ``cloudevents`` SDK's ``from_binary`` decodes it); the body is its ``data`` as JSON."""
    headers = {"Content-Type": "application/json"}
    for attribute in _BINARY_MODE_ATTRIBUTES:
        value = event.get(attribute)
        if value is not None:
            headers[f"ce-{attribute}"] = quote(str(value), safe=_HEADER_SAFE)
    return headers


def parse_event(text: str | bytes) -> dict[str, Any]:
    """A queued event as a plain dict (for consumers and tests that don't need the models)."""
    value = json.loads(text)
    if not isinstance(value, dict) or value.get("specversion") != "1.0":
        raise ValueError("not a CloudEvents 1.0 JSON event")
    return value
