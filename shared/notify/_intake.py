"""The three doors' parsing: CloudEvents 1.0 (HTTP structured, batched and binary modes; JSON on
a queue) and the Event Grid schema, each read into one :class:`IncomingEvent`.

CloudEvents are read by the CNCF ``cloudevents`` SDK, Event Grid events by ``azure-eventgrid``
(both loaded on first use). Anything that is not a valid event raises :class:`InvalidEvent`
with a reason fit for a 400 problem or a dead letter.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, ParamSpec, TypeVar
from urllib.parse import unquote

from shared.clock import as_utc
from shared.logs import cut_text

__all__ = [
    "BATCH_CONTENT_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "IncomingEvent",
    "InvalidEvent",
    "from_cloud_event",
    "from_grid_event",
    "parse_grid_trigger",
    "parse_http",
    "parse_object",
    "parse_queue_text",
    "validation_code",
]

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
#: Most events one request or queue message may carry (Event Grid batches at most 5,000).
MAX_EVENTS = 5000
#: Event Grid schema members that must be present (its documented required fields; Azure's own
#: events send ``dataVersion`` empty, so only presence is required of it; ``data`` is optional:
#: an event without it has ``data`` null).
_GRID_REQUIRED = ("id", "subject", "eventType", "eventTime", "dataVersion")
_GRID_NON_EMPTY = ("id", "eventType", "eventTime")
#: The longest event ``id`` and ``source`` taken, in characters: each send a rule makes carries
#: both (its ``origin``), and so do its ``message.sent`` / ``message.failed`` events, which must
#: fit a queue message (64 KiB) with the rest of what they say.
MAX_ID_CHARS = 2048
#: Control characters (C0, DEL, C1), which no ``source`` may hold.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: The event of Event Grid's subscription-validation handshake for a webhook in its own schema.
VALIDATION_EVENT_TYPE = "Microsoft.EventGrid.SubscriptionValidationEvent"


#: The most of a refusal's message and of its ``field`` kept (a 400's detail, a dead letter's):
#: an SDK's error may quote a value, and quote it again for each layer it passed.
MAX_DETAIL_CHARS, MAX_FIELD_CHARS = 1000, 200
#: The deepest an event's JSON may nest (Json.NET's default, which Azure's host reads with).
MAX_DEPTH = 64


class InvalidEvent(ValueError):
    """Not a valid CloudEvents 1.0 or Event Grid event; ``field`` names the offending member.
    Both are cut (:data:`MAX_DETAIL_CHARS`, :data:`MAX_FIELD_CHARS`; the rest counted)."""

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(cut_text(message, MAX_DETAIL_CHARS))
        self.field = cut_text(field, MAX_FIELD_CHARS)


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _readable(parse: Callable[_P, _T]) -> Callable[_P, _T]:
    """``parse`` with JSON nested deeper than Python's parser follows refused as an
    :class:`InvalidEvent` (a 400, or a dead letter), not a ``RecursionError`` (a 500)."""

    @functools.wraps(parse)
    def reading(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return parse(*args, **kwargs)
        except RecursionError as exc:
            raise InvalidEvent("The event is nested too deeply to read.") from exc

    return reading


@dataclass(frozen=True)
class IncomingEvent:
    """One event, whatever door and schema it came in by.

    ``source`` + ``id`` identify it (CloudEvents; for the Event Grid schema ``source`` is the
    ``topic``, empty when a custom topic's publisher left it out). :meth:`document` is what rule
    conditions and placeholders see.
    """

    id: str
    source: str
    type: str
    subject: str | None
    time: dt.datetime | None
    data: Any
    schema: Literal["cloudevents", "eventgrid"]
    extensions: Mapping[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        """The event as rules read it: ``id``, ``source``, ``type``, ``subject``, ``time``,
        ``data`` and any CloudEvents extension attribute, under the CloudEvents names for
        both schemas (``$(data.alertContext.condition.name)``, ``subject``...)."""
        doc: dict[str, Any] = dict(self.extensions)
        doc.update(
            id=self.id,
            source=self.source,
            type=self.type,
            subject=self.subject,
            time=self.time.isoformat() if self.time else None,
            data=self.data,
        )
        return doc


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _required_id(given: Collection[str], name: str = "id") -> None:
    """Refuse an event without its ``id``: the SDK would make one up, a new one each time the
    event is delivered again, and each delivery would then send its messages again."""
    if name not in given:
        raise InvalidEvent(f"Not a CloudEvents 1.0 event: {name} is required.", field=name)


def _checked_ids(event: IncomingEvent, source_field: str = "source") -> IncomingEvent:
    """``event``, unless its ``id`` or ``source`` is longer than :data:`MAX_ID_CHARS` (its sends
    could not announce their outcome: an event that does not fit a queue message) or its
    ``source`` holds a control character (message ids and the rules' memory join source and id
    with a newline, which must be where the source ends; a URI holds none)."""
    for name, value in (("id", event.id), (source_field, event.source)):
        if len(value) > MAX_ID_CHARS:
            raise InvalidEvent(
                f"{name} is longer than {MAX_ID_CHARS} characters: the messages it makes, and "
                "their events, carry it.",
                field=name,
            )
    if _CONTROL.search(event.source):
        raise InvalidEvent(f"{source_field} must not hold a control character.", field=source_field)
    return event


def _unicode(value: Mapping[str, Any]) -> None:
    """Refuse an event holding text that is not valid Unicode (a lone surrogate, such as the
    JSON escape ``"\\ud800"``), naming the first on its path (``data.x``, ``subject``): its
    messages could not be queued nor its subject remembered, and a batch with it failed whole
    (a 500 on every retry), as the send actions refuse it."""
    from shared.actions._reading import not_unicode

    for error in not_unicode(value)[:1]:
        raise InvalidEvent(error.message, field=error.field)


def _utc(time: dt.datetime, *, field: str = "time") -> dt.datetime:
    """An event's time in UTC (rules see one form of an instant whatever the schema): one
    without an offset is UTC (an Event Grid ``eventTime`` is the producer's UTC time; it was
    read in the host's zone, and near year 1 was a 500); one UTC cannot hold (year 1 at +01:00)
    is refused naming ``field``."""
    try:
        return as_utc(time)
    except OverflowError as exc:
        raise InvalidEvent(
            f"Not a {'CloudEvents 1.0' if field == 'time' else 'Event Grid'} event: {field} "
            f"{time.isoformat()} is outside the years 1 to 9999 in UTC.",
            field=field,
        ) from exc


def from_cloud_event(event: Any, given: Collection[str]) -> IncomingEvent:
    """An SDK ``CloudEvent`` (``cloudevents.core``) as an :class:`IncomingEvent`; ``given``
    names the attributes the sender gave (the SDK fills in ``time`` when there is none: such
    an event has no time here)."""
    attributes = dict(event.get_attributes())
    if "time" not in given:
        attributes.pop("time", None)
    data = event.get_data()
    if isinstance(data, bytes | bytearray):  # data_base64's bytes (binary mode's: read before)
        typed = str(attributes.get("datacontenttype") or "application/json")
        try:  # JSON by its content type is held to the body's rules; other data is as it was
            raw = bytes(data)
            data = _held(_loads(raw, "data"), 2, "data") if _json_type(typed) else json.loads(raw)
        except InvalidEvent:
            raise
        except ValueError:  # no JSON: its text as base64
            data = base64.b64encode(raw).decode("ascii")
    _unicode({**attributes, "data": data})
    known = {"id", "source", "type", "subject", "time", "specversion"}
    time = attributes.get("time")
    incoming = IncomingEvent(
        id=str(attributes["id"]),
        source=str(attributes["source"]),
        type=str(attributes["type"]),
        subject=attributes.get("subject"),
        time=_utc(time) if isinstance(time, dt.datetime) else None,
        data=data,
        schema="cloudevents",
        extensions={k: v for k, v in attributes.items() if k not in known},
    )
    return _checked_ids(incoming)


def from_grid_event(value: Mapping[str, Any]) -> IncomingEvent:
    """An Event Grid schema event (a JSON object) as an :class:`IncomingEvent`."""
    from azure.eventgrid import EventGridEvent

    missing = [name for name in _GRID_REQUIRED if value.get(name) is None]
    missing += [name for name in _GRID_NON_EMPTY if value.get(name) == "" and name not in missing]
    if missing:
        raise InvalidEvent(
            f"Not an Event Grid event: {', '.join(missing)} missing.", field=missing[0]
        )
    _unicode(value)
    try:
        event = EventGridEvent.from_dict(dict(value))
    except (ValueError, TypeError) as exc:  # the one member it reads as more than text or JSON
        # (the SDK's text is nested exception reprs: ours names the member and what it takes)
        raise InvalidEvent(f"Not an Event Grid event: eventTime {_TIME_RULE}", "eventTime") from exc
    time = event.event_time
    incoming = IncomingEvent(
        id=str(event.id),
        source=_text(value.get("topic")),
        type=str(event.event_type),
        subject=event.subject,
        time=_utc(time, field="eventTime") if time else None,
        data=event.data,
        schema="eventgrid",
    )
    return _checked_ids(incoming, source_field="topic")


def _invalid(exc: Exception, given: Mapping[str, Any], *, prefix: str = "") -> InvalidEvent:
    """The SDK's error as an :class:`InvalidEvent` naming the first offending attribute (of
    those ``given``): a ``time`` it cannot read fails before its validation names any."""
    from cloudevents.core.exceptions import CloudEventValidationError

    field, why = "body", str(exc)
    if isinstance(exc, CloudEventValidationError) and exc.errors:
        name, errors = next(iter(exc.errors.items()))
        field, why = prefix + name, f"{name} {_attribute_rule(str(e) for e in errors)}"
    elif "time" in given and not _readable_time(given["time"]):
        field, why = prefix + "time", f"time {_TIME_RULE}"
    return InvalidEvent(f"Not a CloudEvents 1.0 event: {why}", field=field)


#: What a time attribute takes (the SDKs' own errors quote a parser: "Expected 4 digits").
_TIME_RULE = "must be an RFC 3339 date and time, such as 2026-12-07T12:00:00Z."
_TYPE_WORDS = {"str": "a string", "int": "an integer", "bool": "true or false",
               "datetime": "an RFC 3339 date and time", "dict": "a JSON object"}  # fmt: skip


def _attribute_rule(errors: Iterable[str]) -> str:
    """What an attribute the SDK refused takes, in words (its errors: "Attribute 'source' must
    be a <class 'str'>", "Missing required attribute: 'source'")."""
    texts = list(errors)
    if any(t.startswith("Missing required") or "None or empty" in t for t in texts):
        return "is required (a non-empty string)."
    for text in texts:
        if (kind := re.search(r"must be a <class '(\w+)'>", text)) is not None:
            return f"must be {_TYPE_WORDS.get(kind.group(1), kind.group(1))}."
    return "is not valid: " + "; ".join(texts).replace("<class '", "").replace("'>", "") + "."


def _readable_time(time: Any) -> bool:
    """Whether the SDK reads ``time`` (JSON) as a time: an event of it alone, read as it reads
    any (its errors name no attribute: ``12345`` has no len(), ``""`` is too short)."""
    from cloudevents.core.formats.json import JSONFormat

    alone = {"specversion": "1.0", "id": "t", "source": "t", "type": "t", "time": time}
    try:
        JSONFormat().read(None, json.dumps(alone).encode("utf-8"))
    except Exception:
        return False
    return True


def _cloud_event_from_json(value: dict[str, Any]) -> IncomingEvent:
    from cloudevents.core.exceptions import BaseCloudEventException
    from cloudevents.core.formats.json import JSONFormat

    _required_id(value)
    if value.get("data_base64") is not None:  # the SDK decodes unchecked: "!!!" was no data
        try:
            base64.b64decode(value["data_base64"], validate=True)
        except (TypeError, ValueError) as exc:
            raise InvalidEvent(f"Not base64: {exc}", field="data_base64") from exc
    try:
        return from_cloud_event(JSONFormat().read(None, json.dumps(value).encode("utf-8")), value)
    except InvalidEvent:
        raise
    except (BaseCloudEventException, ValueError, TypeError, KeyError) as exc:
        raise _invalid(exc, value) from exc


@_readable
def parse_object(value: Any) -> IncomingEvent:
    """One JSON object in either schema (CloudEvents when it has ``specversion``)."""
    if not isinstance(value, dict):
        raise InvalidEvent("An event must be a JSON object.")
    if "specversion" in value:
        if value.get("specversion") != "1.0":
            raise InvalidEvent("Only CloudEvents 1.0 is accepted.", field="specversion")
        return _cloud_event_from_json(value)
    return from_grid_event(value)


def _objects(value: Any) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise InvalidEvent("The batch is empty.")
    if len(items) > MAX_EVENTS:
        raise InvalidEvent(f"At most {MAX_EVENTS} events at a time.")
    return items


def _json(body: str | bytes) -> Any:
    """``body`` as JSON the doors take: each event (of a batch, on its own) :func:`_held` to
    their rules; what is no JSON is refused."""
    try:
        value = _loads(body, "body")
    except InvalidEvent:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"The body is not JSON: {exc}") from exc
    for item in value if isinstance(value, list) else [value]:
        _held(item, 1, "body")
    return value


def _loads(raw: str | bytes, field: str) -> Any:
    """``raw`` as JSON (``ValueError`` if it is none); nested past what Python's parser follows,
    refused naming ``field``."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidEvent("Nested too deeply to read.", field=field) from None


def _json_type(content_type: str) -> bool:
    """Whether ``content_type`` says JSON, as the CloudEvents SDK reads it."""
    from cloudevents.core.formats.json import JSONFormat

    return re.match(JSONFormat.JSON_CONTENT_TYPE_PATTERN, content_type) is not None


def _held(value: Any, depth: int, field: str) -> Any:
    """``value`` (parsed JSON, at ``depth``), refused as :class:`InvalidEvent` naming ``field``
    when it holds a number that is no JSON number (``NaN``, ``Infinity``, one past a float's
    range: the send actions refuse them too) or nests containers deeper than
    :data:`MAX_DEPTH` (as Json.NET, which Azure's host reads with, counts: containers only; a
    rule's rendering follows them)."""
    level = [(value, depth)]
    while level:
        item, at = level.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise InvalidEvent(f"{item} is no JSON number.", field=field)
        if not isinstance(item, dict | list):
            continue
        if at > MAX_DEPTH:
            raise InvalidEvent(f"Nested deeper than {MAX_DEPTH} levels.", field=field)
        children = item.values() if isinstance(item, dict) else item
        level.extend((child, at + 1) for child in children)
    return value


@_readable
def parse_grid_trigger(text: str | bytes) -> IncomingEvent:
    """The event the Event Grid trigger hands over: one event's JSON text, either schema."""
    return parse_object(_json(text))


@_readable
def parse_http(headers: Mapping[str, str], body: bytes) -> list[IncomingEvent]:
    """The events of one HTTP request: binary mode (``ce-*`` headers), structured mode
    (``application/cloudevents+json``), batched mode (``application/cloudevents-batch+json``),
    or JSON (an object or an array, in either schema). ``headers`` keys are lower-case."""
    if _binary(headers):
        from cloudevents.core.bindings.http import HTTPMessage, from_binary
        from cloudevents.core.exceptions import BaseCloudEventException
        from cloudevents.core.formats.json import JSONFormat

        if headers.get("ce-specversion") != "1.0":
            raise InvalidEvent("Only CloudEvents 1.0 is accepted.", field="ce-specversion")
        _required_id(headers, "ce-id")
        given = {name[3:] for name in headers if name.startswith("ce-")}
        for name in sorted(given):  # the SDK reads a bad escape as U+FFFD: two ids would be one
            try:
                unquote(headers[f"ce-{name}"], errors="strict")
            except UnicodeDecodeError:
                raise InvalidEvent("Not UTF-8 once percent-decoded.", field=f"ce-{name}") from None
        try:
            try:
                event = from_binary(HTTPMessage(headers=dict(headers), body=body), JSONFormat())
            except RecursionError:
                raise InvalidEvent("Nested too deeply to read.", field="data") from None
            # JSON data (the SDK reads it by its content type; text stays text) held to the
            # body's rules, from level 2 as in structured mode
            _held(event.get_data(), 2, "data")
            return [from_cloud_event(event, given)]
        except InvalidEvent as exc:  # an attribute is a ce- header; data is the body
            field = exc.field if re.match(r"data\b", exc.field) else f"ce-{exc.field}"
            raise InvalidEvent(str(exc), field=field) from exc
        except (BaseCloudEventException, ValueError, TypeError, KeyError) as exc:
            values = {n[3:]: unquote(v) for n, v in headers.items() if n.startswith("ce-")}
            raise _invalid(exc, values, prefix="ce-") from exc
    content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    value = _json(body)
    if content_type == STRUCTURED_CONTENT_TYPE and not isinstance(value, dict):
        raise InvalidEvent("Structured mode carries one event, a JSON object.")
    if content_type == BATCH_CONTENT_TYPE and not isinstance(value, list):
        raise InvalidEvent("Batched mode carries a JSON array of events.")
    if content_type in (STRUCTURED_CONTENT_TYPE, BATCH_CONTENT_TYPE):
        # said to be CloudEvents: one without specversion is not read as the Event Grid schema
        for index, item in enumerate(_objects(value)):
            if isinstance(item, dict) and "specversion" not in item:
                at = f"[{index}]." if isinstance(value, list) else ""
                raise InvalidEvent(
                    f"Not a CloudEvents 1.0 event: specversion missing ({content_type}).",
                    field=f"{at}specversion",
                )
    return [
        _at(index, item, len(value) if isinstance(value, list) else 0)
        for index, item in enumerate(_objects(value))
    ]


def _binary(headers: Mapping[str, str]) -> bool:
    """Whether a request is in binary mode: ``ce-*`` headers and a content type that is no
    CloudEvents format (a structured or batched request may carry those headers too: the
    HTTP binding tells the mode by its content type)."""
    content_type = headers.get("content-type", "").strip().lower()
    return not content_type.startswith("application/cloudevents") and any(
        name.startswith("ce-") for name in headers
    )


@_readable
def validation_code(headers: Mapping[str, str], body: bytes) -> str | None:
    """The ``validationCode`` when the request is Event Grid's subscription-validation
    handshake (header ``aeg-event-type: SubscriptionValidation``, or a
    ``SubscriptionValidationEvent`` in the body), else None: the request carries events. A
    handshake that is not one such event with its code raises. Its ``validationUrl`` is never
    fetched. ``headers`` keys are lower-case."""
    if _binary(headers):
        return None  # binary mode: the body is one CloudEvent's data
    said = headers.get("aeg-event-type", "").strip().lower() == "subscriptionvalidation"
    if not said and VALIDATION_EVENT_TYPE.encode() not in body and b"\\u" not in body:
        return None  # (an escape may write the type another way: read then)
    value = _json(body)
    items = value if isinstance(value, list) else [value]
    typed = [isinstance(i, dict) and i.get("eventType") == VALIDATION_EVENT_TYPE for i in items]
    if not said and not any(typed):
        return None
    prefix = "[0]." if isinstance(value, list) else ""
    if len(items) != 1:
        raise InvalidEvent("A subscription validation carries one event, no other.")
    if not typed[0]:
        raise InvalidEvent(
            f"A subscription validation is a {VALIDATION_EVENT_TYPE}.", field=f"{prefix}eventType"
        )
    data = items[0].get("data")
    code = data.get("validationCode") if isinstance(data, dict) else None
    if not isinstance(code, str) or not code:
        raise InvalidEvent(
            "The subscription validation has no validationCode.",
            field=f"{prefix}data.validationCode",
        )
    return code


def _at(index: int, item: Any, batch: int) -> IncomingEvent:
    try:
        return parse_object(item)
    except InvalidEvent as exc:
        if batch:
            raise InvalidEvent(str(exc), field=f"[{index}].{exc.field}") from exc
        raise


@_readable
def parse_queue_text(text: str) -> list[IncomingEvent]:
    """The events of one ``smartdialog-cloud-events`` message: JSON as written, or base64 of
    JSON (what Event Grid's storage-queue handler writes). JSON text starts with ``{`` or
    ``[``, which base64 never contains, so the two cannot be confused."""
    stripped = text.strip()
    if stripped[:1] not in ("{", "["):
        try:
            stripped = base64.b64decode(stripped, validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise InvalidEvent("Neither JSON nor base64-encoded JSON.") from exc
    value = _json(stripped.encode("utf-8"))
    batch = len(value) if isinstance(value, list) else 0
    return [_at(index, item, batch) for index, item in enumerate(_objects(value))]
