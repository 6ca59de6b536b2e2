"""One trace from a flow's SendMessage to its delivery reports' events, a packed call linked to
each member's trace, and the metrics, checked with the SDK's in-memory exporter and reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from azure.functions.queue import QueueMessage

from shared import names
from shared.clock import ManualClock
from shared.messages import MessageStore
from shared.storage import queue_client
from shared.triggers import TriggerKind
from tests.fixtures.sandbox import CallbackReceiver
from tests.inbound.conftest import CUSTOMER, ONE_WAY, TWO_WAY, Inbound, _app_functions
from tests.outbound.conftest import Outbound, call_http, sms
from tests.telemetry.conftest import Telemetry
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
DELIVERED = "+358400000001"
UNDELIVERABLE = "+358400000003"
CONTENT = "Your code is 4711"
NUMBERS = [f"+35840500{i:04d}" for i in range(5)]


def flow_traceparent() -> tuple[str, int]:
    """A traceparent as a flow's request carries it, and its trace id."""
    trace_id = uuid.uuid4().hex
    return f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01", int(trace_id, 16)


def trace_of(traceparent: str) -> int:
    return int(traceparent.split("-")[1], 16)


def run_sender_as_the_host(env: Inbound) -> None:
    """Take each outbound message and invoke the real sender with it, insertion time included
    (as the host gives it), until the queue is empty."""
    queue = queue_client(names.OUTBOUND_QUEUE)
    deadline = time.monotonic() + 15
    while queue.get_queue_properties().approximate_message_count and time.monotonic() < deadline:
        for message in queue.receive_messages(messages_per_page=16, visibility_timeout=30):
            _app_functions()["OutboundSender"](
                QueueMessage(
                    id=message.id,
                    body=message.content.encode(),
                    dequeue_count=message.dequeue_count,
                    insertion_time=message.inserted_on,
                )
            )
            queue.delete_message(message)


def events_when(env: Inbound, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        events = env.read(names.EVENTS_QUEUE)
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def total(telemetry: Telemetry, metric: str, **attributes: str) -> float:
    """A counter's sum or a histogram's count over the points with ``attributes``."""
    points = telemetry.metric_points(metric)
    matching = [p for a, p in points if all(a.get(k) == v for k, v in attributes.items())]
    return float(sum(getattr(p, "value", None) or getattr(p, "count", 0) for p in matching))


def test_one_trace_runs_from_send_message_to_the_delivery_reports_events(
    served: Inbound, telemetry: Telemetry
) -> None:
    flow, trace_id = flow_traceparent()
    before = {
        "granted": total(telemetry, "smartdialog.quota.slots", result="granted"),
        "sent": total(telemetry, "smartdialog.sends", outcome="sent"),
        "age": total(telemetry, "smartdialog.queue.age", queue=names.OUTBOUND_QUEUE),
        "latency": total(telemetry, "smartdialog.delivery.latency"),
    }

    answer = served.call(
        "SendMessage",
        "POST",
        headers={"Customer-Id": CUSTOMER, "Service-Id": ONE_WAY, "traceparent": flow},
        body={
            "Sender": "Sandbox",
            "Content": CONTENT,
            "Recipients": [{"Address": DELIVERED}, {"Address": UNDELIVERABLE}],
        },
    )
    assert answer.status == 202, answer.body
    message_id = answer.body["Id"]
    [queued] = served.read(names.OUTBOUND_QUEUE)
    assert trace_of(queued["traceparent"]) == trace_id  # the queue message carries it
    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    assert record.traceparent is not None
    assert trace_of(record.traceparent) == trace_id  # and so does the state behind the DLR URL

    run_sender_as_the_host(served)
    events = events_when(served, 3)  # sent, then a delivery report per recipient

    assert sorted(e["type"].rsplit(".", 1)[-1] for e in events) == ["delivery", "delivery", "sent"]
    assert {trace_of(e["traceparent"]) for e in events} == {trace_id}
    [action] = telemetry.spans("SendMessage")
    [processed] = telemetry.spans(f"process {names.OUTBOUND_QUEUE}")
    [call] = telemetry.spans("SmartDialog SendMessage")

    # A report's event goes out inside its span: the span ends a moment after the event.
    def both_reports() -> list[Any] | None:
        found = telemetry.spans("SmartDialog delivery report")
        return found if len(found) == 2 else None

    reports = wait_for(both_reports, what="both delivery-report spans to end")
    for span in [action, processed, call, *reports]:
        assert span.context is not None
        assert span.context.trace_id == trace_id, span.name
    assert call.parent is not None
    assert processed.context is not None
    assert call.parent.span_id == processed.context.span_id
    attributes = dict(call.attributes or {})
    upstream = served.sandbox.state.snapshot("requests")[0]
    assert attributes["smartdialog.message_id"] == message_id
    assert attributes["smartdialog.request_id"] == upstream["body"]["RequestId"]
    assert attributes["smartdialog.upstream_message_id"] == upstream["response"]["MessageId"]
    assert attributes["smartdialog.recipients"] == 2
    # Never a phone number or the content in what is exported.
    exported = json.dumps([dict(s.attributes or {}) for s in telemetry.spans()])
    assert "+358" not in exported
    assert "358400" not in exported
    assert CONTENT not in exported

    assert total(telemetry, "smartdialog.quota.slots", result="granted") > before["granted"]
    [(quota_attributes, _)] = [
        (a, p) for a, p in telemetry.metric_points("smartdialog.quota.slots")
        if a["result"] == "granted"
    ]  # fmt: skip
    assert quota_attributes["connection"] == "default"
    assert total(telemetry, "smartdialog.sends", outcome="sent") == before["sent"] + 1
    assert (
        total(telemetry, "smartdialog.queue.age", queue=names.OUTBOUND_QUEUE) == before["age"] + 1
    )
    assert total(telemetry, "smartdialog.delivery.latency") == before["latency"] + 2


def test_a_packed_call_is_one_span_linked_to_each_members_trace(
    outbound: Outbound, telemetry: Telemetry
) -> None:
    from tests.bulk.test_packing import waiting_for_a_slot

    # One call in 2 s and no wait in the invocation: the sends queue up and form one pack.
    waiting_for_a_slot(outbound, period=2)  # (its own refusal, which says so, before the count)
    refused = total(telemetry, "smartdialog.quota.slots", result="refused", connection="default")
    flows = {}
    for address in ("+358401000001", "+358401000002", "+358401000003"):
        flow, trace_id = flow_traceparent()
        answer = call_http("SendMessage", "POST", headers={"traceparent": flow}, body=sms(address))
        assert answer.status == 202, answer.body
        flows[answer.body["Id"]] = trace_id

    outbound.drain()

    assert len(outbound.upstream()) == 1
    [call] = telemetry.spans("SmartDialog SendMessage")
    assert dict(call.attributes or {})["smartdialog.pack_members"] == 3
    assert dict(call.attributes or {})["smartdialog.recipients"] == 3
    assert sorted(link.context.trace_id for link in call.links) == sorted(flows.values())
    sent = [e for e in outbound.events() if e["type"].endswith(".sent")]
    assert {e["subject"]: trace_of(e["traceparent"]) for e in sent} == flows
    # They waited: the quota refused slots on the way.
    assert total(telemetry, "smartdialog.quota.slots", result="refused") > refused


def test_a_bulk_sends_pack_calls_continue_the_bulk_requests_trace(
    outbound: Outbound, telemetry: Telemetry
) -> None:
    from tests.bulk.test_bulk_action import bulk, people

    flow, trace_id = flow_traceparent()
    outbound.configure(PACK_MAX_RECIPIENTS=2)
    accepted = bulk({"Recipients": people(*NUMBERS[:3])}, traceparent=flow)
    assert accepted.status == 202, accepted.body

    drivers = [m for m in outbound.read(names.OUTBOUND_QUEUE) if m.get("kind") == "pack"]
    assert len(drivers) == 2
    assert {trace_of(d["traceparent"]) for d in drivers} == {trace_id}
    outbound.drain()

    calls = telemetry.spans("SmartDialog SendMessage")
    assert sorted(dict(c.attributes or {})["smartdialog.recipients"] for c in calls) == [1, 2]
    for call in calls:
        assert call.context is not None
        assert call.context.trace_id == trace_id
        assert {link.context.trace_id for link in call.links} == {trace_id}
    events = [e for e in outbound.events() if e["type"].endswith(".sent")]
    assert len(events) == 3
    assert {trace_of(e["traceparent"]) for e in events} == {trace_id}


def test_a_send_queued_by_reference_continues_the_requests_trace_at_every_hop(
    outbound: Outbound, telemetry: Telemetry
) -> None:
    from tests.outbound.conftest import ERROR
    from tests.outbound.test_sizes import personalised

    flow, trace_id = flow_traceparent()
    body = personalised(100, note="n" * 700)  # 70,000+ bytes: queued by reference
    body["Recipients"][0]["Address"] = ERROR  # every call answers 500: retried, by reference
    accepted = call_http("SendMessage", "POST", headers={"traceparent": flow}, body=body)
    assert accepted.status == 202, accepted.body
    [stored] = outbound.read(names.OUTBOUND_QUEUE)
    assert stored["kind"] == "stored"
    assert "traceparent" not in stored  # the previous release's readers forbid it: in the blob

    outbound.drain(timeout=60)

    processed = telemetry.spans(f"process {names.OUTBOUND_QUEUE}")
    calls = telemetry.spans("SmartDialog SendMessage")
    assert len(calls) == 4  # SEND_MAX_ATTEMPTS: each a hop by reference
    assert len(processed) >= len(calls)
    for span in [*processed, *calls]:
        assert span.context is not None
        assert span.context.trace_id == trace_id, span.name
    [failed] = outbound.events()
    assert trace_of(failed["traceparent"]) == trace_id


def test_a_queue_message_without_a_traceparent_is_sent_in_a_trace_of_its_own(
    outbound: Outbound, telemetry: Telemetry
) -> None:
    outbound.enqueue(  # as another service or the previous release writes it
        {"operation": "SendMessage", "customerId": "1001", "serviceId": "s-1001-oneway",
         "body": sms("+358401000009")}
    )  # fmt: skip

    outbound.drain()

    [event] = outbound.events()
    [processed] = telemetry.spans(f"process {names.OUTBOUND_QUEUE}")
    assert processed.parent is None
    assert processed.context is not None
    assert trace_of(event["traceparent"]) == processed.context.trace_id


def test_a_queue_message_with_a_broken_traceparent_is_sent_and_traced_on_its_own(
    outbound: Outbound, telemetry: Telemetry
) -> None:
    outbound.enqueue(
        {"operation": "SendMessage", "customerId": "1001", "serviceId": "s-1001-oneway",
         "traceparent": "00-not-a-trace-01", "body": sms("+358401000008")}
    )  # fmt: skip

    outbound.drain()

    [event] = outbound.events()
    assert event["type"].endswith(".sent")
    [processed] = telemetry.spans(f"process {names.OUTBOUND_QUEUE}")
    assert processed.parent is None
    assert processed.context is not None
    assert trace_of(event["traceparent"]) == processed.context.trace_id


def test_a_queue_message_with_an_absurdly_long_traceparent_is_sent_in_a_trace_of_its_own(
    outbound: Outbound, telemetry: Telemetry
) -> None:
    """It fits a queue message but not the record's column: dropped, as a broken one is
    ignored, rather than failing every run into poison."""
    outbound.enqueue(
        {"operation": "SendMessage", "customerId": "1001", "serviceId": "s-1001-oneway",
         "messageId": "long-tp", "traceparent": "00-" + "a" * 40_000,
         "body": sms("+358401000007")}
    )  # fmt: skip

    outbound.drain()

    [event] = outbound.events()
    assert event["type"].endswith(".sent")
    [processed] = telemetry.spans(f"process {names.OUTBOUND_QUEUE}")
    assert processed.context is not None
    assert trace_of(event["traceparent"]) == processed.context.trace_id
    stored = MessageStore.from_settings().get("long-tp")
    assert stored is not None
    assert stored.traceparent is not None
    assert trace_of(stored.traceparent) == processed.context.trace_id


def _in_a_fresh_interpreter(script: str, **environment: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "APPLICATIONINSIGHTS_CONNECTION_STRING"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**env, **environment},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.split()


def test_without_a_connection_string_nothing_is_configured_and_no_distro_is_imported() -> None:
    script = (
        "import sys, function_app\n"
        "print('otel-at-import', any(m.startswith('opentelemetry') for m in sys.modules))\n"
        "from shared import telemetry\n"
        "with telemetry.span('x'): pass\n"
        "from opentelemetry import trace\n"
        "print('configured', telemetry.configure())\n"
        "print('distro', 'azure.monitor.opentelemetry' in sys.modules)\n"
        "print('provider', type(trace.get_tracer_provider()).__name__)\n"
    )
    assert _in_a_fresh_interpreter(script) == [
        "otel-at-import", "False", "configured", "False", "distro", "False",
        "provider", "ProxyTracerProvider",
    ]  # fmt: skip


def test_with_a_connection_string_the_azure_monitor_distro_is_configured_on_first_use() -> None:
    script = (
        "import os, sys\n"
        "from shared import telemetry\n"
        "with telemetry.span('x'): pass\n"
        "from opentelemetry import trace\n"
        "print('configured', telemetry.configure())\n"
        "print('provider', type(trace.get_tracer_provider()).__module__)\n"
        "sys.stdout.flush(); os._exit(0)\n"  # nothing is listening: skip the final export
    )
    connection = (
        "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
        "IngestionEndpoint=http://127.0.0.1:9/"
    )
    assert _in_a_fresh_interpreter(script, APPLICATIONINSIGHTS_CONNECTION_STRING=connection) == [
        "configured",
        "True",
        "provider",
        "opentelemetry.sdk.trace",
    ]


def test_one_trace_runs_from_the_webhook_through_intake_and_dispatcher_to_the_subscriber(
    served: Inbound, telemetry: Telemetry, callback_receiver: CallbackReceiver
) -> None:
    answer = served.call(
        "NewMessage",
        "POST",
        route_params={"Service": TWO_WAY},
        headers={"Customer-Id": CUSTOMER},
        body={"callbackUrl": f"{callback_receiver.url}/flow"},
    )
    assert answer.status == 201, answer.body
    httpx.post(  # SmartDialog calls our webhook (the dev host) for a message to the service
        f"{served.sandbox.url}/sandbox/inbound",
        json={"sender": "+358401234567", "recipient": "+358501234567", "content": "Hi"},
        timeout=10,
    ).raise_for_status()
    assert served.process_intake() == 1
    assert served.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher") == 1

    [webhook] = telemetry.spans("inbound webhook")
    assert webhook.context is not None
    trace_id = webhook.context.trace_id
    [event] = served.read(names.INBOUND_QUEUE)
    assert trace_of(event["traceparent"]) == trace_id
    [intake] = telemetry.spans(f"process {names.INBOUND_INTAKE_QUEUE}")
    [dispatch] = telemetry.spans(f"process {names.INBOUND_DELIVERIES_QUEUE}")
    [post] = telemetry.spans("POST subscriber")
    for span in (intake, dispatch, post):
        assert span.context is not None
        assert span.context.trace_id == trace_id, span.name
    [call] = callback_receiver.wait_for(1)
    headers = {k.lower(): v for k, v in call.headers.items()}
    assert post.context is not None
    assert headers["traceparent"].startswith(f"00-{trace_id:032x}-{post.context.span_id:016x}-")


def test_a_template_sends_span_carries_smartdialogs_message_id_from_its_camelcase_answer(
    served: Inbound, telemetry: Telemetry
) -> None:
    answer = served.call(
        "SendWhatsappTemplateMessage",
        "POST",
        headers={"Customer-Id": CUSTOMER, "Service-Id": ONE_WAY},
        body={"TemplateName": "welcome", "Recipients": [{"Address": DELIVERED}],
              "BodyParameters": ["Ada"]},
    )  # fmt: skip
    assert answer.status == 202, answer.body
    run_sender_as_the_host(served)

    [call] = telemetry.spans("SmartDialog SendWhatsappTemplateMessage")
    upstream = served.sandbox.state.snapshot("requests")[0]
    assert (
        dict(call.attributes or {})["smartdialog.upstream_message_id"]
        == (upstream["response"]["messageId"])
    )


PREVIOUS_NOTE_SCHEMA = ROOT / "tests" / "fixtures" / "trigger-notification.previous.json"


def test_a_delivery_reports_trigger_event_reaches_its_subscriber_in_the_reports_trace(
    inbound: Inbound,
    telemetry: Telemetry,
    callback_receiver: CallbackReceiver,
    manual_clock: ManualClock,
) -> None:
    from tests.inbound.test_delivery_reports import report
    from tests.inbound.test_triggers import subscribe

    flow, trace_id = flow_traceparent()
    callback = f"{callback_receiver.url}/dlr"
    assert subscribe(inbound, TriggerKind.DELIVERY_REPORT, callback, ONE_WAY).status == 201
    answer = inbound.call(
        "SendMessage",
        "POST",
        headers={"Customer-Id": CUSTOMER, "Service-Id": ONE_WAY, "traceparent": flow},
        body={"Sender": "Sandbox", "Content": CONTENT,
              "Recipients": [{"Address": DELIVERED}, {"Address": UNDELIVERABLE}]},
    )  # fmt: skip
    assert answer.status == 202, answer.body
    message_id = answer.body["Id"]
    inbound.run_queue(names.OUTBOUND_QUEUE, "OutboundSender")

    # During a deploy's overlap the release before may take the note: it has no traceparent,
    # which that release's model (extra fields forbidden) would refuse.
    assert report(inbound, message_id, status="delivered", recipient=DELIVERED).status == 200
    [early] = inbound.read(names.TRIGGER_EVENTS_QUEUE)
    jsonschema.validate(early, json.loads(PREVIOUS_NOTE_SCHEMA.read_text(encoding="utf-8")))
    queue_client(names.TRIGGER_EVENTS_QUEUE).clear_messages()

    manual_clock.advance(names.UPGRADE_WINDOW.total_seconds())
    assert report(inbound, message_id, status="undelivered", recipient=UNDELIVERABLE).status == 200
    [note] = inbound.read(names.TRIGGER_EVENTS_QUEUE)
    assert trace_of(note["traceparent"]) == trace_id
    assert inbound.run_queue(names.TRIGGER_EVENTS_QUEUE, "TriggerFanout") == 1
    assert inbound.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher") == 1

    [dlr] = [
        s for s in telemetry.spans("SmartDialog delivery report")
        if dict(s.attributes or {})["smartdialog.status"] == "undelivered"
    ]  # fmt: skip
    [fanout] = telemetry.spans(f"process {names.TRIGGER_EVENTS_QUEUE}")
    [post] = telemetry.spans("POST subscriber")
    assert dlr.context is not None
    assert fanout.parent is not None
    assert fanout.parent.span_id == dlr.context.span_id  # a child of the report's span
    for span in (fanout, *telemetry.spans(f"process {names.INBOUND_DELIVERIES_QUEUE}"), post):
        assert span.context is not None
        assert span.context.trace_id == trace_id, span.name
    [call] = callback_receiver.wait_for(1)
    assert trace_of({k.lower(): v for k, v in call.headers.items()}["traceparent"]) == trace_id


def test_a_message_too_large_for_a_queue_reaches_its_subscriber_in_the_webhooks_trace(
    inbound: Inbound, telemetry: Telemetry, callback_receiver: CallbackReceiver
) -> None:
    from tests.inbound.test_subscriptions import subscribe
    from tests.inbound.test_webhook import payload, post, token_for

    subscribe(inbound, f"{callback_receiver.url}/flow")
    content = "\U0001f600" * 20_000  # in parts on smartdialog-inbound: delivered by reference
    assert post(inbound, payload(content=content), token=token_for()).status == 202
    assert inbound.process_intake() == 1
    [delivery] = inbound.read(names.INBOUND_DELIVERIES_QUEUE)
    assert "eventBlob" in delivery
    assert inbound.run_queue(names.INBOUND_DELIVERIES_QUEUE, "InboundDispatcher") == 1

    [webhook] = telemetry.spans("inbound webhook")
    assert webhook.context is not None
    trace_id = webhook.context.trace_id
    [dispatch] = telemetry.spans(f"process {names.INBOUND_DELIVERIES_QUEUE}")
    [post_span] = telemetry.spans("POST subscriber")
    for span in (dispatch, post_span):
        assert span.context is not None
        assert span.context.trace_id == trace_id, span.name
    [call] = callback_receiver.wait_for(1)
    assert trace_of({k.lower(): v for k, v in call.headers.items()}["traceparent"]) == trace_id


def test_a_notification_rules_sends_continue_each_events_trace_at_every_door(
    outbound: Outbound, telemetry: Telemetry
) -> None:
    from shared.notify._rules import Rule
    from shared.notify._store import RuleStore
    from shared.settings import get_settings
    from tests.outbound.conftest import app_function

    event_type = f"test.trace.{uuid.uuid4().hex[:8]}"
    rules = RuleStore.from_settings(get_settings())
    rule = {"Id": f"trace-{uuid.uuid4().hex[:8]}", "Match": {"EventType": event_type},
            "Message": {"Sender": "Ops", "Content": "ping $(id)"},
            "Recipients": {"Numbers": [DELIVERED]}}  # fmt: skip
    assert rules.create(Rule.model_validate(rule))

    def event(traceparent: str | None = None) -> dict[str, Any]:
        made = {"specversion": "1.0", "id": uuid.uuid4().hex, "source": "urn:test",
                "type": event_type, "data": {}, "traceparent": traceparent}  # fmt: skip
        return {k: v for k, v in made.items() if v is not None}

    flow, flow_trace = flow_traceparent()  # the HTTP request's
    own, own_trace = flow_traceparent()  # an event's own (the distributed-tracing extension)
    queued, queued_trace = flow_traceparent()
    traced, plain, by_queue, by_grid = event(own), event(), event(queued), event()
    try:
        answer = call_http("CloudEvents", "POST", body=[traced, plain], headers={
            "traceparent": flow, "content-type": "application/cloudevents-batch+json"})  # fmt: skip
        assert answer.status == 202, answer.body
        app_function("CloudEventsQueue")(
            QueueMessage(id="q-1", body=json.dumps(by_queue).encode(), dequeue_count=1)
        )
        app_function("CloudEventsGrid")(json.dumps(by_grid))
    finally:
        rules.delete(rule["Id"])

    [door] = telemetry.spans("CloudEvents")
    [queue_door] = telemetry.spans(f"process {names.CLOUD_EVENTS_QUEUE}")
    [grid_door] = telemetry.spans("CloudEventsGrid")
    assert door.context is not None
    assert queue_door.context is not None
    assert grid_door.context is not None
    assert door.context.trace_id == flow_trace
    spans = {dict(s.attributes or {})["cloudevents.event_id"]: s
             for s in telemetry.spans("notification rules")}  # fmt: skip
    expected = {
        traced["id"]: own_trace,
        plain["id"]: flow_trace,
        by_queue["id"]: queued_trace,
        by_grid["id"]: grid_door.context.trace_id,
    }
    assert {e: s.context.trace_id for e, s in spans.items() if s.context} == expected
    # An event with a trace of its own is linked to the door's span; one without is its child.
    for event_id, span in ((traced["id"], door), (by_queue["id"], queue_door)):
        assert [link.context.span_id for link in spans[event_id].links] == [span.context.span_id]
    for event_id, span in ((plain["id"], door), (by_grid["id"], grid_door)):
        assert spans[event_id].parent is not None
        assert spans[event_id].parent.span_id == span.context.span_id
    commands = {c["origin"]["eventId"]: c for c in outbound.read(names.OUTBOUND_QUEUE)}
    assert {e: trace_of(c["traceparent"]) for e, c in commands.items()} == expected

    outbound.drain()  # and the sends' events are in those traces
    sent = {e["subject"]: trace_of(e["traceparent"]) for e in outbound.events()}
    assert sent == {c["messageId"]: trace_of(c["traceparent"]) for c in commands.values()}


def test_the_halves_of_a_split_pack_continue_the_bulk_requests_trace(
    outbound: Outbound, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.bulk.test_batch_packs import refuse_calls_naming_nobody_with
    from tests.bulk.test_bulk_action import bulk, people

    flow, trace_id = flow_traceparent()
    accepted = bulk({"Recipients": people(*NUMBERS[:4])}, traceparent=flow)
    assert accepted.status == 202, accepted.body
    refuse_calls_naming_nobody_with(monkeypatch, NUMBERS[1])  # the pack is split to find it

    outbound.drain()

    calls = telemetry.spans("SmartDialog SendMessage")
    assert len(calls) >= 3  # the whole pack, then halves
    assert {c.context.trace_id for c in calls if c.context} == {trace_id}


def test_a_status_polls_redrive_continues_the_bulk_requests_trace_not_the_polls(
    outbound: Outbound, telemetry: Telemetry
) -> None:
    import datetime as dt

    from tests.bulk.test_batch_packs import drivers, member_ids, record
    from tests.bulk.test_bulk_action import batch_status, bulk, people

    outbound.configure(SEND_LEASE_SECONDS=3.0, SEND_TIMEOUT_SECONDS=1.0,
                       SEND_QUOTA_WAIT_SECONDS=0.1, SEND_RETRY_MAX_SECONDS=0)  # fmt: skip
    flow, trace_id = flow_traceparent()
    accepted = bulk({"Recipients": people(*NUMBERS[:2])}, traceparent=flow)
    assert accepted.status == 202, accepted.body
    location = accepted.headers["Location"]
    ids = member_ids({"Location": location})
    queue_client(names.OUTBOUND_QUEUE).clear_messages()  # as if its driver were in the poison
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)
    MessageStore.from_settings().swap_many([(record(i), {"updated_at": old}) for i in ids])

    assert batch_status(location).status == 202  # a poll in a trace of its own
    [driver] = drivers(outbound)
    assert trace_of(driver["traceparent"]) == trace_id
    outbound.drain()
    [call] = telemetry.spans("SmartDialog SendMessage")
    assert call.context is not None
    assert call.context.trace_id == trace_id


def reported_send(env: Inbound, **body: Any) -> tuple[str, int]:
    """A send in a flow's trace, sent, and its recipient's delivery report; its message id and
    trace id."""
    from tests.inbound.test_delivery_reports import report

    flow, trace_id = flow_traceparent()
    answer = env.call(
        "SendMessage",
        "POST",
        headers={"Customer-Id": CUSTOMER, "Service-Id": ONE_WAY, "traceparent": flow},
        body={"Sender": "Sandbox", "Content": CONTENT, "Recipients": [{"Address": DELIVERED}],
              **body},
    )  # fmt: skip
    assert answer.status == 202, answer.body
    env.run_queue(names.OUTBOUND_QUEUE, "OutboundSender")
    assert report(env, answer.body["Id"], status="delivered", recipient=DELIVERED).status == 200
    return answer.body["Id"], trace_id


def test_a_delivery_reports_span_links_the_request_that_brought_it(
    inbound: Inbound, telemetry: Telemetry
) -> None:
    reported_send(inbound)

    [request] = telemetry.spans("DeliveryReport")
    [dlr] = telemetry.spans("SmartDialog delivery report")
    assert request.context is not None
    assert [link.context.span_id for link in dlr.links] == [request.context.span_id]


def test_the_forward_to_the_callers_dlr_url_continues_the_sends_trace(
    inbound: Inbound, telemetry: Telemetry, callback_receiver: CallbackReceiver
) -> None:
    _, trace_id = reported_send(inbound, DlrUrl=f"{callback_receiver.url}/mine")

    assert inbound.run_queue(names.DLR_FORWARD_QUEUE, "DlrForwarder") == 1
    [forward] = telemetry.spans(f"process {names.DLR_FORWARD_QUEUE}")
    [get] = telemetry.spans("GET DlrUrl")
    assert forward.context is not None
    assert get.context is not None
    assert forward.context.trace_id == trace_id
    assert get.parent is not None
    assert get.parent.span_id == forward.context.span_id
    [call] = callback_receiver.wait_for(1)
    sent = {k.lower(): v for k, v in call.headers.items()}["traceparent"]
    assert sent.startswith(f"00-{trace_id:032x}-{get.context.span_id:016x}-")


def test_a_re_prompt_is_sent_in_the_trace_of_the_reply_that_asked_for_it(
    inbound: Inbound, telemetry: Telemetry
) -> None:
    from shared.inbound import InboundProcessor
    from shared.inbound._answers import reprompt_message_id
    from shared.settings import get_settings
    from tests.inbound.test_question_costs import _ask, _intake

    number = "+358401112266"
    asked = _ask(number, reprompt="Please reply YES or NO")
    flow, trace_id = flow_traceparent()  # the webhook call's
    intake = {**json.loads(_intake("maybe", sender=number)), "traceparent": flow}

    InboundProcessor.from_settings(get_settings()).process(json.dumps(intake))

    [command] = [c for c in inbound.read(names.OUTBOUND_QUEUE) if c.get("messageId")]
    assert command["messageId"] == reprompt_message_id(asked.question_id)
    assert trace_of(command["traceparent"]) == trace_id


def test_each_dead_letter_is_counted_by_queue_and_reason(
    outbound: Outbound, telemetry: Telemetry
) -> None:
    """The dead-letter alert reads this counter: a metric, which no sampling drops (a sampled-out
    log line would never alert)."""
    letters = names.OUTBOUND_DEAD_LETTER_QUEUE
    before = total(telemetry, "smartdialog.deadletters", queue=letters, reason="malformed")

    outbound.invoke("{not json")

    [letter] = outbound.dead_letters()
    assert letter["reason"] == "malformed"
    assert total(telemetry, "smartdialog.deadletters", queue=letters, reason="malformed") == (
        before + 1
    )


def test_the_failure_rate_metric_counts_each_packed_send_once(
    outbound: Outbound, telemetry: Telemetry
) -> None:
    """docs/operations.md, "Delivery-failure rate": ``smartdialog.sends`` counts each message
    of a packed call once, as a send of its own would be."""
    from tests.bulk.test_packing import accept, waiting_for_a_slot

    before = total(telemetry, "smartdialog.sends", outcome="sent")
    waiting_for_a_slot(outbound)
    accept(*NUMBERS)

    outbound.drain()

    assert len(outbound.upstream()) < len(NUMBERS)  # some of them were packed
    assert total(telemetry, "smartdialog.sends", outcome="sent") == before + len(NUMBERS)


def test_a_tracking_id_that_reads_as_a_number_is_masked_on_spans_and_named_in_the_doors_lines(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller's tracking id went whole onto the span of an action and of the events door (a
    span never carries a phone number, README says), and the events door and SmartDialog's
    callbacks logged it only in ``extra``, which the worker does not ship: a 400 or 500 there
    could not be found by its problem's ``instance``."""
    import logging

    from shared.actions._pipeline import run_action
    from shared.actions._spec import ActionRequest
    from shared.actions.catalog import get_spec
    from shared.inbound._http import receive_inbound
    from shared.notify._doors import receive_cloud_events

    number = {"x-request-id": "0401234567"}
    events = {**number, "Content-Type": "application/cloudevents+json"}
    with caplog.at_level(logging.INFO):
        run_action(get_spec("GetUserCustomers"), ActionRequest("GET", headers=number))
        assert receive_cloud_events(ActionRequest("POST", headers=events, body=b"{")).status == 400
        assert receive_inbound(ActionRequest("POST", headers=number)).status >= 400

    tracking = [str((s.attributes or {}).get("smartdialog.tracking_id")) for s in telemetry.spans()]
    assert "0401234567" not in "".join(tracking)
    assert {"GetUserCustomers", "CloudEvents"} <= {s.name for s in telemetry.spans()}
    lines = [r.getMessage() for r in caplog.records if " answered " in r.getMessage()]
    assert "0401234567" not in caplog.text
    assert sum("request ***" in line for line in lines) >= 3, lines


def test_a_send_whose_storage_keeps_failing_names_its_message_id_on_each_span_and_log_line(
    outbound: Outbound,
    telemetry: Telemetry,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Our storage failing raises to the host, which retries and then moves the message to
    ``-poison``; the span got ``smartdialog.message_id`` only after the sender returned and no
    line named the message: the runbook's searches for a poisoned send's id (README's span
    query, operations.md's ``traces``) found nothing."""
    import logging

    from azure.core.exceptions import ServiceRequestError

    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED))
    assert accepted.status == 202, accepted.body
    message_id = accepted.body["Id"]
    [queued] = queue_client(names.OUTBOUND_QUEUE).peek_messages(max_messages=32)

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ServiceRequestError("storage unreachable")

    for method in ("get", "get_many", "get_with_slots", "swap", "swap_many"):
        monkeypatch.setattr(MessageStore, method, unreachable)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for dequeue_count in range(1, 6):  # the host's retries, up to maxDequeueCount
            with pytest.raises(ServiceRequestError):
                outbound.invoke(queued.content, message_id=queued.id, dequeue_count=dequeue_count)

    processed = telemetry.spans(f"process {names.OUTBOUND_QUEUE}")
    assert len(processed) == 5
    for span in processed:
        assert (span.attributes or {}).get("smartdialog.message_id") == message_id
    named = [
        r.getMessage() for r in caplog.records
        if r.levelno >= logging.WARNING and message_id in r.getMessage()
    ]  # fmt: skip
    assert len(named) == 5, named
    for dequeue_count, line in enumerate(named, start=1):
        assert f"dequeue count {dequeue_count}" in line, line
        assert "storage unreachable" in line


def test_a_queued_command_whose_id_comes_from_its_request_id_is_not_named_by_a_guess(
    outbound: Outbound, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The id of a command with a RequestId and no messageId takes the customer and connection
    it is routed by (a claim, a named connection's own customer), known only once routed: the
    span named one worked out from the raw text with the default customer, an id no record,
    status URL or event has, where storage failed. It is named once the run has routed it."""
    from azure.core.exceptions import ServiceRequestError

    command = {"operation": "SendMessage", "body": sms(DELIVERED, RequestId="req-guess-1")}

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise ServiceRequestError("storage unreachable")

    with monkeypatch.context() as failing:
        for method in ("get", "get_many", "get_with_slots", "swap", "swap_many", "create"):
            failing.setattr(MessageStore, method, unreachable)
        with pytest.raises(ServiceRequestError):
            outbound.invoke(json.dumps(command), message_id="q-1", dequeue_count=1)
    outbound.invoke(json.dumps(command), message_id="q-1", dequeue_count=2)

    failed, done = telemetry.spans(f"process {names.OUTBOUND_QUEUE}")
    assert "smartdialog.message_id" not in (failed.attributes or {})
    [sent] = [e for e in outbound.events() if e["type"].endswith("message.sent")]
    assert (done.attributes or {}).get("smartdialog.message_id") == sent["subject"]


def test_an_accepted_sends_202_line_names_its_message_id_and_a_bulks_its_batch_and_count(
    outbound: Outbound, caplog: pytest.LogCaptureFixture
) -> None:
    """The 202 line named only the request's tracking id: an operator holding a flow's answer
    could not go from its message id to the logs (nor a poisoned send's id back to its
    request). A bulk's line names its batch id and how many it accepted, not every id."""
    import logging

    with caplog.at_level(logging.INFO):
        single = call_http("SendMessage", "POST", body=sms(DELIVERED))
        people = [{"Address": f"+35840300{i:04d}"} for i in range(3)]
        template = {"Sender": "Sandbox", "Content": "Hi", "Recipients": people}
        bulk = call_http("SendBulkMessages", "POST", body=template)
    assert single.status == 202, single.body
    assert bulk.status == 202, bulk.body
    lines = [r.getMessage() for r in caplog.records if " answered 202 " in r.getMessage()]
    [sent] = [line for line in lines if line.startswith("SendMessage ")]
    [batch] = [line for line in lines if line.startswith("SendBulkMessages ")]
    assert f"Id {single.body['Id']}" in sent, sent
    assert f"Id {bulk.body['Id']}, 3 accepted" in batch, batch
