"""The doors' parsing: Microsoft's sample events in every mode and schema, and what is refused."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from shared.notify._intake import (
    VALIDATION_EVENT_TYPE,
    InvalidEvent,
    parse_http,
    parse_object,
    parse_queue_text,
    validation_code,
)

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_structured_mode_reads_the_alert_with_its_data() -> None:
    body = (FIXTURES / "alert-activated.cloudevent.json").read_bytes()
    [event] = parse_http({"content-type": "application/cloudevents+json"}, body)
    assert event.type == "Microsoft.AlertsManagement.Alert.Activated"
    assert event.schema == "cloudevents"
    assert event.document()["data"]["essentials"]["alertRule"] == "web-01-cpu-high"


def test_batched_mode_reads_every_event() -> None:
    one = fixture("alert-activated.cloudevent.json")
    two = fixture("blob-created.cloudevent.json")
    body = json.dumps([one, two]).encode()
    events = parse_http({"content-type": "application/cloudevents-batch+json"}, body)
    assert [e.id for e in events] == [one["id"], two["id"]]


def test_binary_mode_reads_attributes_from_ce_headers_and_data_from_the_body() -> None:
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "b-1",
        "ce-source": "/contoso/orders",
        "ce-type": "Contoso.Orders.Shipped",
        "ce-subject": "orders/eu/1",
        "content-type": "application/json",
    }
    [event] = parse_http(headers, b'{"orderId": "1"}')
    assert (event.id, event.source, event.subject) == ("b-1", "/contoso/orders", "orders/eu/1")
    assert event.data == {"orderId": "1"}


def test_event_grid_schema_blob_created_with_its_empty_data_version_is_read() -> None:
    [event] = parse_http(
        {"content-type": "application/json"},
        json.dumps(fixture("blob-created.eventgrid.json")).encode(),
    )
    assert event.schema == "eventgrid"
    assert event.type == "Microsoft.Storage.BlobCreated"
    assert event.source.endswith("/storageAccounts/mediastore01")
    assert event.document()["data"]["url"].endswith("invoice-4711.pdf")


@pytest.mark.parametrize(
    ("headers", "body", "field"),
    [
        ({"content-type": "application/cloudevents+json"}, b"{not json", "body"),
        (
            {"content-type": "application/cloudevents+json"},
            b'{"specversion": "1.0", "id": "1", "type": "t"}',
            "source",
        ),
        (
            {"content-type": "application/cloudevents+json"},
            b'{"specversion": "0.3", "id": "1", "source": "s", "type": "t"}',
            "specversion",
        ),
        ({"content-type": "application/cloudevents-batch+json"}, b'{"specversion": "1.0"}', "body"),
        (
            {"content-type": "application/json"},
            b'[{"id": "1", "subject": "s", "eventTime": "2026-01-01T00:00:00Z", "data": {}, '
            b'"dataVersion": ""}]',
            "[0].eventType",
        ),
        ({"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t"}, b"{}", "ce-source"),
        # Without its id the SDK would make one up, another on each delivery: sent each time.
        (
            {"content-type": "application/cloudevents+json"},
            b'{"specversion": "1.0", "source": "s", "type": "t"}',
            "id",
        ),
        (
            {"content-type": "application/cloudevents-batch+json"},
            b'[{"specversion": "1.0", "source": "s", "type": "t"}]',
            "[0].id",
        ),
        ({"ce-specversion": "1.0", "ce-source": "s", "ce-type": "t"}, b"{}", "ce-id"),
        # A bad escape was read as U+FFFD, so "order-%FF" and "order-%FE" were one event
        (
            {"ce-specversion": "1.0", "ce-id": "order-%FF", "ce-source": "s", "ce-type": "t"},
            b"{}",
            "ce-id",
        ),
        (
            {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s%C3", "ce-type": "t"},
            b"{}",
            "ce-source",
        ),
        ({"content-type": "application/json"}, b"[]", "body"),
        # JSON nested deeper than the parser follows: refused (400), not a RecursionError (500)
        ({"content-type": "application/json"}, b"[" * 5000, "body"),
        ({"content-type": "application/cloudevents+json"}, b'{"a":' * 5000, "body"),
        ({"content-type": "application/cloudevents-batch+json"}, b"[" * 5000, "body"),
        (
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "s",
                "ce-type": "t",
                "content-type": "application/json",
            },
            b"[" * 5000,
            "data",  # binary mode's body is the event's data
        ),
    ],
)
def test_what_is_not_an_event_is_refused_naming_the_field(
    headers: dict[str, str], body: bytes, field: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_http(headers, body)
    assert caught.value.field == field
    assert_readable(caught.value)


def test_an_event_without_a_time_has_none_not_the_time_it_was_read() -> None:
    structured = {"specversion": "1.0", "id": "1", "source": "s", "type": "t"}
    binary = {f"ce-{name}": value for name, value in structured.items()}
    assert parse_object(structured).time is None
    assert parse_http(binary, b"")[0].time is None
    assert parse_queue_text(json.dumps([structured]))[0].time is None
    with pytest.raises(InvalidEvent) as caught:
        parse_queue_text(json.dumps({k: v for k, v in structured.items() if k != "id"}))
    assert caught.value.field == "id"


#: What an SDK's own error text shows that a caller's 400 (and the dead letter) must not: Python
#: reprs of types and nested exceptions ("must be a <class 'str'>", "DeserializationError(").
SDK_TEXT = re.compile(r"<class |Error\(|Exception\(|has no len\(\)|Expected \d digits")


def assert_readable(refused: InvalidEvent) -> None:
    """A refusal that says what the field takes in words."""
    assert SDK_TEXT.search(str(refused)) is None, str(refused)


def assert_each_refused(cases: list[tuple[Any, str]]) -> None:
    """Each parse (a callable) raises InvalidEvent naming its field, readably."""
    for parse, field in cases:
        with pytest.raises(InvalidEvent) as refused:
            parse()
        assert refused.value.field == field
        assert_readable(refused.value)


def test_a_queue_message_nested_too_deep_is_refused_not_crashed_on() -> None:
    with pytest.raises(InvalidEvent):
        parse_queue_text("[" * 5000)


def test_a_queue_message_is_read_as_event_grid_writes_it_in_base64_or_as_plain_json() -> None:
    event = fixture("blob-created.cloudevent.json")
    text = json.dumps(event)
    encoded = base64.b64encode(text.encode()).decode()
    assert parse_queue_text(encoded)[0].id == event["id"]
    assert parse_queue_text(text)[0].id == event["id"]
    with pytest.raises(InvalidEvent):
        parse_queue_text("not-base64!")


def test_both_schemas_give_the_same_document_names() -> None:
    grid = parse_object(fixture("custom-topic.eventgrid.json")[0]).document()
    assert set(grid) >= {"id", "source", "type", "subject", "time", "data"}
    assert grid["type"] == "Contoso.Orders.Shipped"


def test_both_schemas_give_rules_the_same_instant_in_the_same_form_in_utc() -> None:
    """A rule's ``$(time)`` read a CloudEvents time in its producer's offset and an Event Grid
    eventTime in UTC: the same instant rendered two ways, by schema."""
    cloud = fixture("blob-created.cloudevent.json")
    grid = fixture("blob-created.eventgrid.json")[0]
    binary = {
        "ce-specversion": "1.0",
        "ce-id": "1",
        "ce-source": "s",
        "ce-type": "t",
        "ce-time": "2024-05-01T15:34:56%2B03:00",
        "content-type": "application/json",
    }
    times = [
        parse_object({**cloud, "time": "2024-05-01T15:34:56+03:00"}).document()["time"],
        parse_object({**grid, "eventTime": "2024-05-01T15:34:56+03:00"}).document()["time"],
        parse_object({**cloud, "time": "2024-05-01T12:34:56Z"}).document()["time"],
        parse_http(binary, b"{}")[0].document()["time"],
    ]  # fmt: skip
    assert times == ["2024-05-01T12:34:56+00:00"] * 4


def test_an_event_grid_event_without_data_is_taken_its_data_null() -> None:
    """The schema makes data optional; such an event was refused (a 400, a dead letter)."""
    bare = {"id": "1", "topic": "/t", "subject": "s", "eventType": "t", "dataVersion": "",
            "eventTime": "2026-01-01T00:00:00Z"}  # fmt: skip
    [event] = parse_http({"content-type": "application/json"}, json.dumps([bare]).encode())
    assert (event.id, event.document()["data"]) == ("1", None)
    assert parse_queue_text(json.dumps(bare))[0].data is None
    with pytest.raises(InvalidEvent) as refused:
        parse_object({k: v for k, v in bare.items() if k != "dataVersion"})
    assert refused.value.field == "dataVersion"


def test_only_event_grids_subscription_validation_is_taken_for_its_handshake() -> None:
    handshake = {"aeg-event-type": "SubscriptionValidation", "content-type": "application/json"}
    data = {"validationCode": "c0de", "validationUrl": "https://x.test/validate"}
    validation = {
        "id": "v",
        "subject": "",
        "eventType": VALIDATION_EVENT_TYPE,
        "eventTime": "2026-12-03T21:00:00Z",
        "dataVersion": "2",
        "data": data,
    }
    assert validation_code(handshake, json.dumps([validation]).encode()) == "c0de"
    assert validation_code({}, json.dumps(validation).encode()) == "c0de"  # no header
    # Events that only mention it, in data or as a binary-mode body, are events.
    blob = fixture("blob-created.cloudevent.json")
    blob["data"]["note"] = VALIDATION_EVENT_TYPE
    assert validation_code({}, json.dumps(blob).encode()) is None
    binary = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t"}
    assert validation_code(binary, json.dumps([validation]).encode()) is None
    with pytest.raises(InvalidEvent) as mixed:
        validation_code({}, json.dumps([validation, blob]).encode())
    assert mixed.value.field == "body"
    with pytest.raises(InvalidEvent) as other:
        validation_code(handshake, json.dumps([blob]).encode())
    assert other.value.field == "[0].eventType"


def test_an_id_or_source_longer_than_its_sends_events_can_carry_is_refused_in_every_mode() -> None:
    from shared.notify._intake import MAX_ID_CHARS

    cloud = fixture("blob-created.cloudevent.json")
    assert parse_object({**cloud, "id": "i" * MAX_ID_CHARS}).id == "i" * MAX_ID_CHARS
    long = "x" * (MAX_ID_CHARS + 1)
    cases: list[tuple[Any, str]] = [
        (lambda: parse_object({**cloud, "id": long}), "id"),
        (lambda: parse_object({**cloud, "source": long}), "source"),
        (lambda: parse_queue_text(json.dumps([cloud, {**cloud, "id": long}])), "[1].id"),
        (lambda: parse_object({**fixture("blob-created.eventgrid.json")[0], "topic": long}),
         "topic"),
        (lambda: parse_http({"ce-specversion": "1.0", "ce-id": "1", "ce-source": long,
                             "ce-type": "t"}, b"{}"), "ce-source"),
    ]  # fmt: skip
    assert_each_refused(cases)


def test_a_refusal_of_a_long_value_is_short_for_its_400_and_its_dead_letter() -> None:
    """The SDK quotes an eventTime it cannot read once per layer: 20 KB became a 100 KB
    message, in the 400's detail and the dead letter's (which then fitted no queue message).
    The refusal says what eventTime takes instead, and a text we quote is cut."""
    grid = {"id": "1", "subject": "s", "data": {}, "eventType": "t", "dataVersion": "1",
            "eventTime": "Z" * 20_000}  # fmt: skip
    with pytest.raises(InvalidEvent) as refused:
        parse_object(grid)
    assert str(refused.value) == (
        "Not an Event Grid event: eventTime must be an RFC 3339 date and time, such as "
        "2026-12-07T12:00:00Z."
    )
    assert len(str(InvalidEvent("x" * 20_000))) < 1_100
    assert len(InvalidEvent("x", field="f" * 5_000).field) < 300


def test_a_source_with_a_control_character_is_refused_so_source_and_id_stay_apart() -> None:
    """Message ids and the rules' memory key an event by source and id joined with a newline:
    source "a\\nb" with id "c" was the same event as source "a" with id "b\\nc" (the second's
    sends taken for re-deliveries of the first's, so never sent). A source cannot hold one (a
    URI does not), so the keys of every event taken before are unchanged."""
    cloud = fixture("blob-created.cloudevent.json")
    grid = fixture("blob-created.eventgrid.json")[0]
    assert parse_object({**cloud, "source": "a", "id": "b\nc"}).id == "b\nc"
    cases: list[tuple[Any, str]] = [
        (lambda: parse_object({**cloud, "source": "a\nb", "id": "c"}), "source"),
        (lambda: parse_object({**cloud, "source": "a\tb"}), "source"),
        (lambda: parse_object({**grid, "topic": "/subscriptions/x\r\n"}), "topic"),
        (lambda: parse_queue_text(json.dumps([cloud, {**cloud, "source": "\x7f"}])), "[1].source"),
        (lambda: parse_http({"ce-specversion": "1.0", "ce-id": "1", "ce-source": "a\u0085b",
                             "ce-type": "t"}, b"{}"), "ce-source"),
    ]  # fmt: skip
    assert_each_refused(cases)


def test_text_that_is_not_valid_unicode_is_refused_naming_it_in_every_mode() -> None:
    """A lone surrogate (the JSON escape "\\ud800") in data, an attribute or an extension was
    taken: its sends could not be queued, nor its subject hashed for a quiet period (a 500 on
    every retry of the batch). Refused as the send actions refuse it, naming its path."""
    cloud = fixture("blob-created.cloudevent.json")
    grid = fixture("blob-created.eventgrid.json")[0]
    batch = {"content-type": "application/cloudevents-batch+json"}
    binary = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t",
              "content-type": "application/json"}  # fmt: skip

    def sent(*events: Any) -> str:
        return json.dumps(list(events))  # \ud800 stays the JSON escape, as a producer sends it

    cases: list[tuple[Any, str]] = [
        (lambda: parse_http(batch, sent(cloud, {**cloud, "data": {"x": "\ud800"}}).encode()),
         "[1].data.x"),
        (lambda: parse_http(batch, sent(cloud, {**cloud, "subject": "\udc80"}).encode()),
         "[1].subject"),
        (lambda: parse_object({**cloud, "type": "a\ud800"}), "type"),
        (lambda: parse_object({**cloud, "myext": "\ud800"}), "myext"),
        (lambda: parse_object({**cloud, "id": "\ud800"}), "id"),
        (lambda: parse_object({**cloud, "source": "\ud800"}), "source"),
        (lambda: parse_queue_text(sent(cloud, {**cloud, "data": ["ok", "\ud800"]})),
         "[1].data[1]"),
        (lambda: parse_object({**grid, "eventType": "\ud800"}), "eventType"),
        (lambda: parse_object({**grid, "data": {"url": "\ud800"}}), "data.url"),
        (lambda: parse_http(binary, b'{"note": "\\ud800"}'), "data.note"),
        # In a field name, nested, upper case, as raw UTF-8 bytes of a surrogate, with a time.
        (lambda: parse_object({**cloud, "data": {"k\udc00": 1}}), "data.k\\udc00"),
        (lambda: parse_object({**cloud, "data": {"a": [{"b": {"c": ["x", "\udbff"]}}]}}),
         "data.a[0].b.c[1]"),
        (lambda: parse_http(batch, b'[{"specversion": "1.0", "id": "1", "source": "s", '
                            b'"type": "t", "time": "2024-01-01T00:00:00Z", '
                            b'"data": {"x": "\\uDFFF"}}]'), "[0].data.x"),
        (lambda: parse_http({}, b'{"specversion": "1.0", "id": "1", "source": "s", '
                            b'"type": "t", "data": {"x": "\xed\xa0\x80"}}'), "data.x"),
        (lambda: parse_object({**grid, "data": {"\ud800": {"ok": 1}}}), "data.\\ud800"),
    ]  # fmt: skip
    assert_each_refused(cases)
    assert parse_object({**cloud, "data": {"x": "\U0001f600"}}).data == {"x": "\U0001f600"}
    paired = b'{"specversion": "1.0", "id": "1", "source": "s", "type": "t", '
    paired += b'"data": "\\ud83d\\ude00"}'
    assert parse_http({}, paired)[0].data == "\U0001f600"  # a pair of escapes is one character


def test_a_time_that_is_no_time_is_refused_naming_it_in_every_mode() -> None:
    """docs/events.md promises a 400 naming the field: a time the SDK could not even start to
    read (12345, null, {}, "") and an Event Grid eventTime that is no date were refused naming
    ``body``."""
    cloud = fixture("blob-created.cloudevent.json")
    grid = fixture("blob-created.eventgrid.json")[0]
    batch = {"content-type": "application/cloudevents-batch+json"}
    binary = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "s", "ce-type": "t",
              "content-type": "application/json"}  # fmt: skip
    cases: list[tuple[Any, str]] = [
        *((lambda t=t: parse_object({**cloud, "time": t}), "time")
          for t in (12345, None, {}, "", True, "2025-06-01", "0001-01-01T00:00:00+01:00",
                    "9999-12-31T23:59:59-05:00")),
        (lambda: parse_http({**binary, "ce-time": "0001-01-01T00:00:00+01:00"}, b"{}"), "ce-time"),
        (lambda: parse_http(batch, json.dumps([cloud, {**cloud, "time": 5}]).encode()),
         "[1].time"),
        (lambda: parse_queue_text(json.dumps([cloud, {**cloud, "time": None}])), "[1].time"),
        (lambda: parse_http({**binary, "ce-time": "garbage"}, b"{}"), "ce-time"),
        *((lambda t=t: parse_object({**grid, "eventTime": t}), "eventTime")
          for t in ("garbage", 12345, "20250601", "9999-12-31T23:59:59-05:00")),
        (lambda: parse_http({"content-type": "application/json"},
                            json.dumps([grid, {**grid, "eventTime": "x"}]).encode()),
         "[1].eventTime"),
    ]  # fmt: skip
    assert_each_refused(cases)
    assert parse_object({**cloud, "time": "2025-06-01T10:00:00Z"}).time is not None


def test_an_event_grid_time_without_an_offset_is_utc_whatever_the_host_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An eventTime with no offset was read in the host's zone (WEBSITE_TIME_ZONE sets it):
    12:00 became 09:00 under Helsinki; near year 1 it was a ValueError, a 500 at the HTTP door
    and a poison message at the queue door. It is the producer's UTC time (as_utc)."""
    import time as _time

    grid = fixture("blob-created.eventgrid.json")[0]
    monkeypatch.setenv("TZ", "Europe/Helsinki")
    _time.tzset()
    try:
        given = ("2024-05-01T12:00:00", "0001-01-01T00:00:00", "9999-12-31T23:59:59")
        at = [parse_object({**grid, "eventTime": t}).document()["time"] for t in given]
        assert at == ["2024-05-01T12:00:00+00:00", "0001-01-01T00:00:00+00:00",
                      "9999-12-31T23:59:59+00:00"]  # fmt: skip
        queued = base64.b64encode(json.dumps({**grid, "eventTime": "0001-01-01T00:00:00"}).encode())
        assert parse_queue_text(queued.decode())[0].time is not None
    finally:
        monkeypatch.delenv("TZ")
        _time.tzset()


def test_a_cloudevents_content_type_without_specversion_is_refused_naming_it() -> None:
    """An object sent as application/cloudevents+json (or in a cloudevents batch) with no
    specversion was read as the Event Grid schema: its 400 named ``subject``, a field of a
    schema the producer is not using."""
    cloud = {k: v for k, v in fixture("blob-created.cloudevent.json").items() if k != "specversion"}
    structured = {"content-type": "application/cloudevents+json; charset=utf-8"}
    batch = {"content-type": "application/cloudevents-batch+json"}
    assert_each_refused([
        (lambda: parse_http(structured, json.dumps(cloud).encode()), "specversion"),
        (lambda: parse_http(batch, json.dumps([{**cloud, "specversion": "1.0"}, cloud]).encode()),
         "[1].specversion"),
    ])  # fmt: skip
    grid = fixture("blob-created.eventgrid.json")
    assert parse_http({"content-type": "application/json"}, json.dumps(grid).encode())


CE_HEADERS = {"ce-specversion": "1.0", "ce-id": "h-1", "ce-source": "s", "ce-type": "t"}


@pytest.mark.parametrize("mode", ["structured", "batched"])
def test_a_cloudevents_content_type_is_read_as_its_mode_whatever_ce_headers_come_with_it(
    mode: str,
) -> None:
    """Any ce- header made it binary mode (found in review): a structured event's whole
    envelope became the data of one event, and a batch of three was one event named by the
    headers, both answered 202. The HTTP binding tells the mode by the content type."""
    events = [{"specversion": "1.0", "id": f"e-{i}", "source": "src", "type": "disk.full",
               "data": {"disk": f"C{i}:"}} for i in range(3)]  # fmt: skip
    kind = "application/cloudevents+json" if mode == "structured" else BATCH
    body = json.dumps(events[0] if mode == "structured" else events).encode()

    read = parse_http({**CE_HEADERS, "content-type": f"{kind}; charset=utf-8"}, body)

    expected = events[:1] if mode == "structured" else events
    assert [(e.id, e.data) for e in read] == [(e["id"], e["data"]) for e in expected]


BATCH = "application/cloudevents-batch+json"


@pytest.mark.parametrize("value", ["!!!", "aGVsbG8", "not base64 at all", 5])
def test_data_base64_that_is_no_base64_is_refused_naming_it(value: object) -> None:
    """The SDK decodes without checking: '!!!' was read as empty data (a 202), others were
    refused naming the body (found in review)."""
    event = {"specversion": "1.0", "id": "b", "source": "s", "type": "t", "data_base64": value}
    cases = [
        (lambda: parse_object(event), "data_base64"),
        (lambda: parse_http({"content-type": BATCH}, json.dumps([event]).encode()),
         "[0].data_base64"),
    ]  # fmt: skip
    assert_each_refused(cases)
    fine = {**event, "data_base64": base64.b64encode(b'{"a": 1}').decode()}
    assert parse_object(fine).data == {"a": 1}


def test_a_subscription_validation_written_with_escapes_is_still_the_handshake() -> None:
    """Its type looked for as bytes: written with a JSON escape it was no handshake and reached
    the rules, its validationCode in a message (found in review)."""
    escaped = (
        b'{"id": "v", "subject": "", "eventTime": "2026-12-03T21:00:00Z", "dataVersion": "2",'
        b' "eventType": "Microsoft.EventGrid.SubscriptionValidation\\u0045vent",'
        b' "data": {"validationCode": "c0de"}}'
    )
    assert validation_code({"content-type": "application/json"}, escaped) == "c0de"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_no_json_numbers_at_any_door(constant: str) -> None:
    """Taken as floats, 'cpu $(data.cpu)' went out as 'cpu nan' (found in review); the send
    actions refuse them."""
    attributes = '"specversion": "1.0", "id": "n", "source": "s", "type": "t"'
    body = f'{{{attributes}, "data": {{"cpu": {constant}}}}}'
    assert_each_refused(
        [
            (lambda: parse_http({"content-type": "application/json"}, body.encode()), "body"),
            (lambda: parse_queue_text(body), "body"),
        ]
    )


def test_data_nested_deeper_than_64_levels_is_refused_at_every_door() -> None:
    """Accepted as deep as the parser went, it failed in rendering (RecursionError) at the Event
    Grid trigger's door: a 5xx and a retry (found in review)."""
    from shared.notify._intake import MAX_DEPTH, parse_grid_trigger

    def event(depth: int) -> str:
        data = "[" * (depth - 1) + "]" * (depth - 1)
        return f'{{"specversion": "1.0", "id": "d", "source": "s", "type": "t", "data": {data}}}'

    assert parse_grid_trigger(event(MAX_DEPTH)).id == "d"
    assert_each_refused(
        [
            (lambda: parse_grid_trigger(event(MAX_DEPTH + 1)), "body"),
            (lambda: parse_queue_text(event(MAX_DEPTH + 1)), "body"),
            (lambda: parse_http({}, event(MAX_DEPTH + 1).encode()), "body"),
        ]
    )


def test_data_in_binary_mode_or_base64_is_held_to_the_same_json_as_the_body() -> None:
    """A second read of the doors' fix: binary mode's body and data_base64's bytes were read
    by plain json.loads, so NaN, Infinity, 1e999 (read as inf) and any depth still went out
    ('cpu nan'); 1e999 in the body too."""
    from shared.notify._intake import MAX_DEPTH

    deep = ("[" * MAX_DEPTH + "]" * MAX_DEPTH).encode()  # the body's data, at level 2 and on

    def based(data: bytes) -> bytes:
        encoded = base64.b64encode(data).decode()
        event = {"specversion": "1.0", "id": "b", "source": "s", "type": "t"}
        return json.dumps({**event, "data_base64": encoded}).encode()

    structured = {"content-type": "application/cloudevents+json"}
    huge = b'{"specversion": "1.0", "id": "h", "source": "s", "type": "t", "data": 1e999}'
    assert_each_refused(
        [
            (lambda: parse_http(CE_HEADERS, b'{"cpu": NaN}'), "data"),
            (lambda: parse_http(CE_HEADERS, b"Infinity"), "data"),
            (lambda: parse_http(CE_HEADERS, deep), "data"),
            (lambda: parse_http(structured, based(b'{"cpu": NaN}')), "data"),
            (lambda: parse_http(structured, based(deep)), "data"),
            (lambda: parse_http(structured, huge), "body"),
        ]
    )  # fmt: skip
    [fine] = parse_http(CE_HEADERS, deep[1:-1])  # one level less
    assert fine.data is not None


def test_a_null_data_base64_is_unset_and_a_batch_nests_as_deep_as_one_event() -> None:
    """A second read: null was refused as no base64 (the JSON format reads null as unset), and
    a batch's array counted as a level, so an event taken alone was refused in a batch."""
    from shared.notify._intake import MAX_DEPTH

    event = {"specversion": "1.0", "id": "n", "source": "s", "type": "t", "data_base64": None}
    assert parse_object(event).data is None
    deepest = {**event, "data": json.loads("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))}
    del deepest["data_base64"]
    body = json.dumps([deepest]).encode()
    assert [e.id for e in parse_http({"content-type": BATCH}, body)] == ["n"]


def test_binary_data_of_a_text_type_is_text_however_it_reads_and_depth_names_data() -> None:
    """A second read of the doors' fix: binary mode's body was held to the JSON rules whatever
    its content type, so a text/plain 'NaN' (text data, as the SDK reads it) was refused; and
    data nested past Python's parser was named body (in a batch [1].body)."""
    text = {**CE_HEADERS, "content-type": "text/plain; charset=utf-8"}
    for body in (b"NaN", b"Infinity", b'{"reading": NaN}', b"[" * 70 + b"]" * 70):
        [event] = parse_http(text, body)
        assert event.data == body.decode()
    encoded = base64.b64encode(b"[" * 100_000).decode()
    event = {"specversion": "1.0", "id": "d", "source": "s", "type": "t", "data_base64": encoded}
    assert_each_refused(
        [
            (lambda: parse_http({**CE_HEADERS, "content-type": "application/json"},
                                b"[" * 100_000), "data"),
            (lambda: parse_http({"content-type": BATCH}, json.dumps([event, event]).encode()),
             "[0].data"),
        ]
    )  # fmt: skip
