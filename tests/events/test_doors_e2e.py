"""Events end to end: Microsoft's sample payloads through the three doors (the CloudEvents HTTP
endpoint, the host's Event Grid webhook, the smartdialog-cloud-events queue) to sends at the
sandbox, over real sockets with the dev host and Azurite."""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from azure.core.exceptions import ResourceNotFoundError

from shared.logs import loggable_text
from shared.names import (
    CLOUD_EVENTS_DEAD_LETTER_QUEUE,
    CLOUD_EVENTS_QUEUE,
    EVENTS_QUEUE,
    OUTBOUND_QUEUE,
)
from tests.e2e.conftest import DELIVERED_NUMBER, Stack, poll

FIXTURES = Path(__file__).parent / "fixtures"
ON_CALL = [DELIVERED_NUMBER, "+358401234001"]
REJECTED_NUMBER = "+358400000002"  # the sandbox refuses sends to it (400)
MAX_ID_CHARS = 2048  # the longest event id and source taken (docs/events.md)


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def fresh(event: dict[str, Any]) -> dict[str, Any]:
    """The sample with a new id (each test its own event)."""
    event = copy.deepcopy(event)
    event["id"] = str(uuid.uuid4())
    return event


@pytest.fixture(autouse=True)
def no_rules(stack: Stack) -> None:
    """Each test starts with no rules."""
    for rule in stack.http.get(f"{stack.api}/notification-rules").json()["value"]:
        stack.http.delete(f"{stack.api}/notification-rules/{rule['Id']}")


def create_rule(stack: Stack, rule: dict[str, Any]) -> None:
    response = stack.http.post(f"{stack.api}/notification-rules", json=rule)
    assert response.status_code == 201, response.text


def alert_rule(**changes: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "Id": "cpu-alerts",
        "Match": {
            "EventType": "Microsoft.AlertsManagement.Alert.Activated",
            "Condition": "data.essentials.severity == 'Sev1'",
        },
        "Message": {
            "Sender": "Ops",
            "Content": "ALERT $(data.essentials.alertRule) on "
            "$(data.essentials.configurationItems[0]): "
            "$(data.alertContext.condition.allOf[0].metricValue) ($(id))",
        },
        "Recipients": {"List": "on-call"},
        "SampleEvent": fixture("alert-activated.cloudevent.json"),
    }
    rule.update(changes)
    return rule


def upstream_calls(stack: Stack, token: str) -> list[dict[str, Any]]:
    """Upstream send calls the sandbox answered 2xx whose body holds ``token``."""
    return [
        r
        for r in stack.sandbox_get("/sandbox/requests")
        if r.get("operationId") in ("SendMessage", "SendWhatsappTemplateMessage")
        and 200 <= int(r.get("status") or 0) < 300
        and token in json.dumps(r.get("body"))
    ]


def addresses(calls: list[dict[str, Any]]) -> list[str]:
    found = []
    for call in calls:
        body = call["body"] if isinstance(call["body"], dict) else json.loads(call["body"])
        found += [r["Address"] for r in body["Recipients"]]
    return sorted(found)


def outbound_drained(stack: Stack) -> bool:
    return stack.queue(OUTBOUND_QUEUE).get_queue_properties().approximate_message_count == 0


def post_events(stack: Stack, body: Any, content_type: str) -> httpx.Response:
    return stack.http.post(
        f"{stack.api}/events",
        content=json.dumps(body).encode(),
        headers={"Content-Type": content_type},
    )


def test_an_alert_in_structured_mode_pages_the_on_call_list_once_even_when_delivered_twice(
    stack: Stack,
) -> None:
    put = stack.http.put(f"{stack.api}/recipient-lists/on-call", json={"Numbers": ON_CALL})
    assert put.status_code == 200, put.text
    create_rule(stack, alert_rule())
    alert = fresh(fixture("alert-activated.cloudevent.json"))

    first = post_events(stack, alert, "application/cloudevents+json")
    assert first.status_code == 202, first.text
    assert first.json()["Sends"] == 2
    calls = poll(
        lambda: (
            (c := upstream_calls(stack, alert["id"]))
            and len(c) >= 1
            and len(addresses(c)) == 2
            and c
        ),
        what="both on-call sends",
    )
    assert addresses(calls) == sorted(ON_CALL)
    body = calls[0]["body"]
    assert "ALERT web-01-cpu-high on web-01: 97.25" in json.dumps(body)

    again = post_events(stack, alert, "application/cloudevents+json")  # Event Grid retries
    assert again.status_code == 202
    assert again.json()["Results"][0]["MessageIds"] == first.json()["Results"][0]["MessageIds"]
    poll(lambda: outbound_drained(stack), what="the repeated commands to be processed")
    assert addresses(upstream_calls(stack, alert["id"])) == sorted(ON_CALL)

    sent = poll(
        lambda: [
            e
            for e in map(json.loads, stack.peek(EVENTS_QUEUE))
            if e["type"].endswith("message.sent")
            and e["data"]["messageId"] in first.json()["Results"][0]["MessageIds"]
        ],
        what="the message.sent events",
    )
    assert {e["data"]["origin"]["ruleId"] for e in sent} == {"cpu-alerts"}
    assert {e["data"]["origin"]["eventId"] for e in sent} == {alert["id"]}


def test_the_event_grid_webhook_validates_the_subscription_then_blob_created_sends_a_template(
    stack: Stack,
) -> None:
    webhook = f"{stack.host.url}/runtime/webhooks/eventgrid?functionName=CloudEventsGrid"
    validation = [
        {
            "id": str(uuid.uuid4()),
            "topic": "/subscriptions/0/resourceGroups/media-rg",
            "subject": "",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": "2026-12-03T21:00:00Z",
            "data": {"validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"},
            "dataVersion": "2",
        }
    ]
    answer = stack.http.post(
        webhook, json=validation, headers={"aeg-event-type": "SubscriptionValidation"}
    )
    assert answer.status_code == 200
    assert answer.json() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}

    create_rule(
        stack,
        {
            "Id": "new-invoice",
            "Match": {
                "EventType": "Microsoft.Storage.BlobCreated",
                "Subject": "/blobServices/default/containers/invoices/*",
            },
            "Message": {"TemplateName": "welcome", "BodyParameters": ["$(data.url)"]},
            "Recipients": {"Numbers": [DELIVERED_NUMBER]},
        },
    )
    [blob] = fixture("blob-created.eventgrid.json")
    blob = fresh(blob)
    delivered = stack.http.post(webhook, json=[blob], headers={"aeg-event-type": "Notification"})
    assert delivered.status_code == 202
    calls = poll(lambda: upstream_calls(stack, blob["data"]["url"]), what="the template send")
    assert calls[0]["operationId"] == "SendWhatsappTemplateMessage"
    assert addresses(calls) == [DELIVERED_NUMBER]


def test_blob_created_cloudevent_put_on_the_queue_base64_encoded_as_event_grid_does_is_sent(
    stack: Stack,
) -> None:
    create_rule(
        stack,
        {
            "Id": "new-invoice-queue",
            "Match": {"EventTypePrefix": "Microsoft.Storage."},
            "Message": {"Sender": "Invoices", "Content": "New invoice $(data.url)"},
            "Recipients": {"Numbers": [DELIVERED_NUMBER]},
        },
    )
    blob = fresh(fixture("blob-created.cloudevent.json"))
    stack.queue(CLOUD_EVENTS_QUEUE).send_message(
        base64.b64encode(json.dumps(blob).encode()).decode()
    )
    calls = poll(lambda: upstream_calls(stack, blob["data"]["url"]), what="the queued event's send")
    assert addresses(calls) == [DELIVERED_NUMBER]


def test_a_queue_message_that_is_no_event_is_dead_lettered_with_the_reason(stack: Stack) -> None:
    marker = str(uuid.uuid4())
    stack.queue(CLOUD_EVENTS_QUEUE).send_message(json.dumps({"id": marker}))
    letters = poll(
        lambda: [json.loads(t) for t in stack.peek(CLOUD_EVENTS_DEAD_LETTER_QUEUE) if marker in t],
        what="the dead letter",
    )
    assert letters[0]["reason"] == "malformed"
    assert letters[0]["field"] == "subject"
    assert "eventType" in letters[0]["detail"]
    schema = json.loads((FIXTURES.parents[2] / "schemas/cloud-events-dead-letter.json").read_text())
    jsonschema.validate(letters[0], schema)


def test_a_queued_array_with_one_bad_event_is_dead_lettered_whole_as_events_md_says(
    stack: Stack,
) -> None:
    """The valid events of it are not sent either; the letter's field names the bad one and
    its original holds them all, for an operator to put back without the bad one."""
    create_rule(
        stack,
        {
            "Id": "array",
            "Match": {"EventTypePrefix": "Microsoft.Storage."},
            "Message": {"Sender": "Invoices", "Content": "New invoice $(id)"},
            "Recipients": {"Numbers": [DELIVERED_NUMBER]},
        },
    )
    good = fresh(fixture("blob-created.cloudevent.json"))
    bad = fresh(fixture("blob-created.cloudevent.json"))
    del bad["source"]
    stack.queue(CLOUD_EVENTS_QUEUE).send_message(json.dumps([good, bad]))
    [letter] = poll(
        lambda: [
            json.loads(t) for t in stack.peek(CLOUD_EVENTS_DEAD_LETTER_QUEUE) if good["id"] in t
        ],
        what="the dead letter",
    )
    assert letter["field"] == "[1].source"
    assert json.loads(letter["original"]) == [good, bad]
    assert upstream_calls(stack, good["id"]) == []

    stack.queue(CLOUD_EVENTS_QUEUE).send_message(json.dumps([good]))  # put back, fixed
    calls = poll(lambda: upstream_calls(stack, good["id"]), what="the valid event's send")
    assert addresses(calls) == [DELIVERED_NUMBER]


def test_numbers_from_a_custom_topic_event_keep_to_allowed_countries_and_the_per_event_cap(
    stack: Stack,
) -> None:
    create_rule(
        stack,
        {
            "Id": "shipped",
            "Match": {"EventType": "Contoso.Orders.Shipped"},
            "Message": {"Sender": "Contoso", "Content": "Order $(data.orderId) shipped ($(id))"},
            "Recipients": {
                "FromEvent": "data.customer.phones",
                "AllowedCountryCodes": [358],
                "MaxPerEvent": 1,
            },
        },
    )
    [order] = fixture("custom-topic.eventgrid.json")
    order = fresh(order)
    answer = post_events(stack, [order], "application/json")
    assert answer.status_code == 202, answer.text
    assert answer.json()["Sends"] == 1
    reasons = [s["Reason"] for s in answer.json()["Results"][0]["Skipped"]]
    assert len(reasons) == 3  # +358...9 over the cap, +882, +46
    assert reasons[-1] == "over MaxPerEvent"
    assert reasons[1] == "country code not allowed"
    calls = poll(lambda: upstream_calls(stack, order["id"]), what="the one send")
    assert addresses(calls) == [DELIVERED_NUMBER]


def test_a_quiet_period_keeps_a_flapping_alert_from_paging_twice(stack: Stack) -> None:
    create_rule(
        stack, alert_rule(Id="quiet", QuietMinutes=30, Recipients={"Numbers": [DELIVERED_NUMBER]})
    )
    first = post_events(
        stack, fresh(fixture("alert-activated.cloudevent.json")), "application/cloudevents+json"
    )
    second = post_events(
        stack, fresh(fixture("alert-activated.cloudevent.json")), "application/cloudevents+json"
    )
    assert first.json()["Sends"] == 1
    assert second.json()["Sends"] == 0
    assert second.json()["Results"][0]["Skipped"] == [{"RuleId": "quiet", "Reason": "quiet period"}]


def test_an_event_matching_no_rule_is_counted_and_dropped_with_a_log_line_without_data(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    blob = fresh(fixture("blob-created.cloudevent.json"))
    with caplog.at_level(logging.INFO, "shared.notify"):
        answer = post_events(stack, blob, "application/cloudevents+json")
    assert answer.status_code == 202
    assert answer.json()["Unmatched"] == 1
    assert answer.json()["Sends"] == 0
    [line] = [r.getMessage() for r in caplog.records if "matched no rule" in r.getMessage()]
    assert loggable_text(blob["id"]) in line  # masked as a number where it looks like one
    assert "Microsoft.Storage.BlobCreated" in line
    assert "invoice" not in caplog.text


def test_bad_events_get_a_400_naming_the_field_and_queue_nothing(stack: Stack) -> None:
    create_rule(stack, alert_rule(Recipients={"Numbers": [DELIVERED_NUMBER]}))
    broken = fresh(fixture("alert-activated.cloudevent.json"))
    good = fresh(fixture("alert-activated.cloudevent.json"))
    del broken["source"]
    poll(lambda: outbound_drained(stack), what="an empty outbound queue")
    answer = post_events(stack, [good, broken], "application/cloudevents-batch+json")
    assert answer.status_code == 400
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert answer.json()["errors"][0]["field"] == "[1].source"
    assert stack.peek(OUTBOUND_QUEUE) == []


def test_a_source_with_a_newline_gets_a_400_naming_it(stack: Stack) -> None:
    """Else source "a\nb" + id "c" and source "a" + id "b\nc" made the same message ids."""
    event = fresh(fixture("alert-activated.cloudevent.json"))
    event["source"] = event["source"] + "\n" + event["id"]
    answer = post_events(stack, event, "application/cloudevents+json")
    assert answer.status_code == 400
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert answer.json()["errors"][0]["field"] == "source"


def test_the_cloudevents_abuse_protection_handshake_allows_the_origin(stack: Stack) -> None:
    answer = stack.http.options(
        f"{stack.api}/events", headers={"WebHook-Request-Origin": "eventemitter.example.com"}
    )
    assert answer.status_code == 200
    assert answer.headers["WebHook-Allowed-Origin"] == "eventemitter.example.com"


def test_the_event_grid_schema_validation_handshake_on_the_webhook_door_is_answered(
    stack: Stack,
) -> None:
    """A webhook subscription in the Event Grid schema (the az CLI default) first POSTs a
    SubscriptionValidationEvent; creating the subscription fails unless the answer is 200 with
    the code. The handshake matches no rule, even one matching every event, and queues nothing."""
    create_rule(
        stack,
        {
            "Id": "everything",
            "Match": {"EventTypePrefix": "Microsoft."},
            "Message": {"Sender": "Ops", "Content": "$(type)"},
            "Recipients": {"Numbers": [DELIVERED_NUMBER]},
        },
    )
    poll(lambda: outbound_drained(stack), what="an empty outbound queue")
    code = str(uuid.uuid4())
    validation = [
        {
            "id": str(uuid.uuid4()),
            "topic": "/subscriptions/0/resourceGroups/media-rg/providers/Microsoft.Storage/x",
            "subject": "",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "eventTime": "2026-12-03T21:00:00Z",
            "metadataVersion": "1",
            "data": {
                "validationCode": code,
                "validationUrl": "https://rp-westeurope.eventgrid.azure.net/validate?code=x",
            },
            "dataVersion": "2",
        }
    ]
    answer = stack.http.post(
        f"{stack.api}/events",
        json=validation,
        headers={"aeg-event-type": "SubscriptionValidation"},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"validationResponse": code}
    assert stack.peek(OUTBOUND_QUEUE) == []

    no_code = copy.deepcopy(validation)
    del no_code[0]["data"]["validationCode"]
    refused = stack.http.post(
        f"{stack.api}/events", json=no_code, headers={"aeg-event-type": "SubscriptionValidation"}
    )
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "[0].data.validationCode"


def test_rules_are_validated_when_saved_and_managed_by_their_actions(stack: Stack) -> None:
    bad = stack.http.post(
        f"{stack.api}/notification-rules",
        json=alert_rule(
            Match={"EventType": "x", "Condition": "data.[["},
            Recipients={"Numbers": [DELIVERED_NUMBER]},
        ),
    )
    assert bad.status_code == 400
    assert [e["field"] for e in bad.json()["errors"]] == ["Match.Condition"]
    unknown = stack.http.post(f"{stack.api}/notification-rules", json=alert_rule(Colour="red"))
    assert unknown.status_code == 400
    create_rule(stack, alert_rule(Recipients={"Numbers": [DELIVERED_NUMBER]}))
    again = alert_rule(Recipients={"Numbers": [DELIVERED_NUMBER]})
    assert stack.http.post(f"{stack.api}/notification-rules", json=again).status_code == 409
    updated = alert_rule(QuietMinutes=5, Recipients={"Numbers": [DELIVERED_NUMBER]})
    del updated["Id"]
    put = stack.http.put(f"{stack.api}/notification-rules/cpu-alerts", json=updated)
    assert put.status_code == 200, put.text
    got = stack.http.get(f"{stack.api}/notification-rules/cpu-alerts").json()
    assert got["QuietMinutes"] == 5

    alert = fresh(fixture("alert-activated.cloudevent.json"))
    dry = stack.http.post(f"{stack.api}/notification-rules/dry-run", json={"Event": alert})
    assert dry.status_code == 200, dry.text
    [send] = dry.json()["Sends"]
    assert send["Command"]["body"]["Content"].startswith("ALERT web-01-cpu-high")
    assert upstream_calls(stack, alert["id"]) == []

    assert stack.http.delete(f"{stack.api}/notification-rules/cpu-alerts").status_code == 204
    assert stack.http.get(f"{stack.api}/notification-rules/cpu-alerts").status_code == 404


def test_the_event_grid_webhook_takes_the_cloudevents_schema_after_its_options_handshake(
    stack: Stack,
) -> None:
    webhook = f"{stack.host.url}/runtime/webhooks/eventgrid?functionName=CloudEventsGrid"
    handshake = stack.http.options(
        webhook, headers={"WebHook-Request-Origin": "eventgrid.azure.net"}
    )
    assert handshake.status_code == 200
    assert handshake.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    unknown = stack.http.post(
        webhook.replace("CloudEventsGrid", "NoSuchFunction"),
        json=[],
        headers={"aeg-event-type": "Notification"},
    )
    assert unknown.status_code == 404

    create_rule(stack, alert_rule(Recipients={"Numbers": [DELIVERED_NUMBER]}))
    alert = fresh(fixture("alert-activated.cloudevent.json"))
    delivered = stack.http.post(
        webhook,
        content=json.dumps(alert).encode(),
        headers={"aeg-event-type": "Notification", "Content-Type": "application/cloudevents+json"},
    )
    assert delivered.status_code == 202
    calls = poll(lambda: upstream_calls(stack, alert["id"]), what="the alert's send")
    assert addresses(calls) == [DELIVERED_NUMBER]


def test_numbers_from_events_are_capped_per_hour_and_a_redelivery_keeps_its_allowance(
    stack: Stack,
) -> None:
    create_rule(
        stack,
        {
            "Id": "shipped-hourly",
            "Match": {"EventType": "Contoso.Orders.Shipped"},
            "Message": {"Sender": "Contoso", "Content": "Order $(data.orderId) shipped"},
            "Recipients": {
                "FromEvent": "data.customer.phones[0]",
                "AllowedCountryCodes": [358],
                "MaxPerHour": 1,
            },
        },
    )
    [order] = fixture("custom-topic.eventgrid.json")
    first, second = fresh(order), fresh(order)
    assert post_events(stack, [first], "application/json").json()["Sends"] == 1
    assert post_events(stack, [second], "application/json").json()["Sends"] == 0
    assert post_events(stack, [first], "application/json").json()["Sends"] == 1


def test_a_message_rendered_too_large_for_a_queue_message_goes_by_reference_and_is_sent(
    stack: Stack,
) -> None:
    """Placeholders rendering 80 KB (each parameter within its 1,000 characters): the command
    does not fit a queue message. It was left out, only logged ("message not valid"): the
    event answered 202 and nothing was sent or failed. It now goes to a blob and the queue gets
    a StoredCommand, as a send action's would (docs/sending.md, Sizes): the sender sends it and
    emits its message.sent."""
    create_rule(
        stack,
        {
            "Id": "dump",
            "Match": {"EventType": "Contoso.Orders.Shipped"},
            "Message": {"TemplateName": "welcome", "BodyParameters": ["$(id)"]
                        + ["$(data.blob)"] * 80},
            "Recipients": {"Numbers": [DELIVERED_NUMBER]},
        },
    )  # fmt: skip
    [order] = fixture("custom-topic.eventgrid.json")
    order = fresh(order)
    order["data"]["blob"] = "x" * 1000
    with contextlib.suppress(ResourceNotFoundError):  # its event among the first peeked
        stack.queue(EVENTS_QUEUE).clear_messages()
    answer = post_events(stack, [order], "application/json")
    assert answer.status_code == 202, answer.text
    assert answer.json()["Sends"] == 1
    assert answer.json()["Results"][0]["Skipped"] == []
    [message_id] = answer.json()["Results"][0]["MessageIds"]
    calls = poll(lambda: upstream_calls(stack, order["id"]), what="the large send")
    assert addresses(calls) == [DELIVERED_NUMBER]
    assert json.dumps(calls[0]["body"]).count("x" * 1000) == 80
    poll(
        lambda: [
            e
            for e in map(json.loads, stack.peek(EVENTS_QUEUE))
            if e["type"].endswith("message.sent") and e["data"]["messageId"] == message_id
        ],
        what="its message.sent event",
    )


def test_an_event_id_too_long_for_its_messages_events_is_refused_and_the_longest_taken_is_sent(
    stack: Stack,
) -> None:
    """Each send carries its event's id and source (origin), and so do its message.sent and
    message.failed. A 70 KB id answered 202 and its sends were only logged as "message not
    valid" (too large to queue): no send, no failure. It is refused naming the field; the
    longest id and source taken, of the characters that grow most on a queue, still make
    sends whose outcome events fit."""
    create_rule(
        stack,
        {
            "Id": "long-ids",
            "Match": {"EventType": "Contoso.Orders.Shipped"},
            "Message": {"Sender": "Contoso", "Content": "Order $(data.orderId) shipped"},
            "Recipients": {"Numbers": [DELIVERED_NUMBER, REJECTED_NUMBER]},
        },
    )
    with contextlib.suppress(ResourceNotFoundError):  # ours among the first peeked
        stack.queue(EVENTS_QUEUE).clear_messages()
    [order] = fixture("custom-topic.eventgrid.json")
    huge = fresh(order)
    huge["id"] = "i" * 70_000
    refused = post_events(stack, [huge], "application/json")
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "[0].id"
    too_long_topic = fresh(order)
    too_long_topic["topic"] = "t" * (MAX_ID_CHARS + 1)
    refused = post_events(stack, [too_long_topic], "application/json")
    assert refused.json()["errors"][0]["field"] == "[0].topic"

    longest = fresh(order)
    longest["id"] = ("&\u0001" * MAX_ID_CHARS)[:MAX_ID_CHARS]  # 5 and 6 bytes on a queue
    longest["topic"] = "/&" + "&" * (MAX_ID_CHARS - 2)
    answer = post_events(stack, [longest], "application/json")
    assert answer.status_code == 202, answer.text
    ids = set(answer.json()["Results"][0]["MessageIds"])
    assert len(ids) == 2
    poll(
        lambda: (
            {
                e["type"].rsplit(".", 1)[1]
                for e in map(json.loads, stack.peek(EVENTS_QUEUE))
                if e["data"].get("messageId") in ids
            }
            >= {"sent", "failed"}
        ),
        what="the sends' message.sent and message.failed",
    )
    assert upstream_calls(stack, "event=" + "i" * 200) == []  # the refused event sent nothing


SAMPLES = [
    "alert-activated.cloudevent.json",
    "blob-created.eventgrid.json",
    "blob-created.cloudevent.json",
    "custom-topic.eventgrid.json",
]


def deliver(stack: Stack, door: str, event: dict[str, Any]) -> None:
    """``event`` through ``door`` as its producer would send it."""
    cloud = "specversion" in event
    if door == "http":
        answer = post_events(
            stack,
            event if cloud else [event],
            "application/cloudevents+json" if cloud else "application/json",
        )
        assert answer.status_code == 202, answer.text
    elif door == "eventgrid":
        answer = stack.http.post(
            f"{stack.host.url}/runtime/webhooks/eventgrid?functionName=CloudEventsGrid",
            content=json.dumps(event if cloud else [event]).encode(),
            headers={"aeg-event-type": "Notification", "Content-Type": "application/json"},
        )
        assert answer.status_code == 202, answer.text
    else:  # Event Grid's storage-queue handler: one event per message, base64
        text = base64.b64encode(json.dumps(event).encode()).decode()
        stack.queue(CLOUD_EVENTS_QUEUE).send_message(text)


@pytest.mark.parametrize("door", ["http", "eventgrid", "queue"])
@pytest.mark.parametrize("sample", SAMPLES)
def test_every_sample_through_every_door_reaches_the_sandbox(
    stack: Stack, door: str, sample: str
) -> None:
    loaded = fixture(sample)
    event = fresh(loaded[0] if isinstance(loaded, list) else loaded)
    create_rule(
        stack,
        {
            "Id": "this-event",
            "Match": {"Condition": f"id == '{event['id']}'"},
            "Message": {"Sender": "Ops", "Content": "$(type) $(id)"},
            "Recipients": {"Numbers": [DELIVERED_NUMBER]},
        },
    )
    deliver(stack, door, event)
    calls = poll(lambda: upstream_calls(stack, event["id"]), what=f"{sample} via {door}")
    assert addresses(calls) == [DELIVERED_NUMBER]
    type_name = event.get("type") or event["eventType"]
    assert f"{type_name} {event['id']}" in json.dumps(calls[0]["body"])


@pytest.mark.parametrize("door", ["http", "eventgrid", "queue"])
@pytest.mark.parametrize("schema", ["cloudevents", "eventgrid"])
def test_an_event_whose_time_has_a_utc_offset_is_sent_at_every_door(
    stack: Stack, door: str, schema: str
) -> None:
    """The worker's Event Grid converter refused "+03:00" before CloudEventsGrid ran: the
    batch failed on every retry for 24 hours and the event was never sent."""
    event_id = str(uuid.uuid4())
    event: dict[str, Any] = (
        {"specversion": "1.0", "id": event_id, "source": "/s", "type": "t",
         "time": "2024-05-01T15:34:56+03:00", "data": {"a": 1}}
        if schema == "cloudevents"
        else {"id": event_id, "topic": "/s", "subject": "x", "eventType": "t", "dataVersion": "",
              "eventTime": "2024-05-01T15:34:56.1234567+03:00", "data": {"a": 1}}
    )  # fmt: skip
    create_rule(
        stack,
        {
            "Id": "this-event",
            "Match": {"Condition": f"id == '{event_id}'"},
            "Message": {"Sender": "Ops", "Content": "$(id) at $(time)"},
            "Recipients": {"Numbers": [DELIVERED_NUMBER]},
        },
    )
    deliver(stack, door, event)
    calls = poll(lambda: upstream_calls(stack, event_id), what=f"{schema} via {door}")
    assert addresses(calls) == [DELIVERED_NUMBER]


def test_a_crash_between_an_events_sends_is_healed_by_the_retry_and_nothing_goes_twice(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.core.pipeline.transport import RequestsTransport

    from shared.messages import MessageStatus, MessageStore
    from shared.settings import get_settings
    from tests.crash import crash_once

    put = stack.http.put(f"{stack.api}/recipient-lists/on-call", json={"Numbers": ON_CALL})
    assert put.status_code == 200
    create_rule(stack, alert_rule())
    alert = fresh(fixture("alert-activated.cloudevent.json"))
    puts = iter(range(100))

    def the_events_put(request: Any, **kwargs: Any) -> bool:
        """A Put Message of one of the event's sends (its command names the event)."""
        body = getattr(request, "body", None) or getattr(request, "content", b"")
        return (
            request.method == "POST"
            and request.url.split("?")[0].endswith(f"/{OUTBOUND_QUEUE}/messages")
            and alert["id"].encode() in (body if isinstance(body, bytes) else str(body).encode())
        )

    crash_once(
        monkeypatch,
        RequestsTransport,  # the door's puts are the queue client's requests, however made
        "send",
        "the instance died after queuing the first send",
        when=lambda request, **kwargs: the_events_put(request) and next(puts) == 1,  # the second
    )
    died = post_events(stack, alert, "application/cloudevents+json")
    assert died.status_code == 500
    retried = post_events(stack, alert, "application/cloudevents+json")
    assert retried.status_code == 202
    poll(
        lambda: len(addresses(upstream_calls(stack, alert["id"]))) == 2,
        what="both on-call sends",
    )
    assert addresses(upstream_calls(stack, alert["id"])) == sorted(ON_CALL)
    # The first send's other copy may wait out a claim; it then finds its record final.
    store = MessageStore.from_settings(get_settings())
    ids = retried.json()["Results"][0]["MessageIds"]
    records = poll(
        lambda: (
            (found := [store.get(i) for i in ids])
            and all(r is not None and r.status is MessageStatus.SENT for r in found)
            and found
        ),
        what="both records sent",
    )
    assert [r.attempts for r in records if r is not None] == [1, 1]


def test_a_rules_send_its_connection_has_no_customer_for_is_refused_at_save_and_at_the_door(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rule names no Customer-Id: its connection's CUSTOMER_ID fills it in at the sender. With
    none, a rule was saved (201), the door answered 202 with MessageIds, and every send was
    dead-lettered malformed with no record, so no message.failed event and nothing to look up.
    Now the save is refused naming the setting, and the door answers the 503 configuration
    problem (the producer retries) with nothing queued; once the setting is back it is sent."""
    prefix = "SMARTDIALOG_CONNECTIONS__ACCOUNT2__"
    monkeypatch.setenv(prefix + "ACCESS_TOKEN", "sandbox-token-2")  # the sandbox's account 2
    monkeypatch.setenv(prefix + "SERVICE_ID", "s-2001-oneway")
    rule = {
        "Id": "account2",
        "Match": {"EventTypePrefix": "Microsoft.Storage."},
        "Message": {"Sender": "Invoices", "Content": "New invoice $(data.url)"},
        "Recipients": {"Numbers": [DELIVERED_NUMBER]},
        "Connection": "account2",
    }
    refused = stack.http.post(f"{stack.api}/notification-rules", json=rule)
    assert refused.status_code == 400, refused.text
    [error] = refused.json()["errors"]
    assert error["field"] == "Connection"
    assert prefix + "CUSTOMER_ID" in error["message"]

    monkeypatch.setenv(prefix + "CUSTOMER_ID", "2001")
    create_rule(stack, rule)
    monkeypatch.delenv(prefix + "CUSTOMER_ID")  # removed after the rule was saved
    blob = fresh(fixture("blob-created.cloudevent.json"))
    answer = post_events(stack, blob, "application/cloudevents+json")
    assert answer.status_code == 503, answer.text
    problem = answer.json()
    assert problem["type"] == "urn:smartdialog-functions:problem:configuration"
    assert [e["field"] for e in problem["errors"]] == [prefix + "CUSTOMER_ID"]
    assert not any(blob["id"] in text for text in stack.peek(OUTBOUND_QUEUE))

    monkeypatch.setenv(prefix + "CUSTOMER_ID", "2001")  # fixed: the producer's retry goes
    retried = post_events(stack, blob, "application/cloudevents+json")
    assert retried.status_code == 202, retried.text
    calls = poll(lambda: upstream_calls(stack, blob["data"]["url"]), what="the retried send")
    assert addresses(calls) == [DELIVERED_NUMBER]
