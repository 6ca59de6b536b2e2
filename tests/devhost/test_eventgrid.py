"""The host's Event Grid webhook through the dev host: the validation handshakes, one
invocation per event in either schema, failures answered 500 so Event Grid retries."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import httpx
import pytest

from devhost import DevHost
from tests.devhost.conftest import host_options

app = func.FunctionApp()
received: list[Any] = []
lock = threading.Lock()


@app.function_name("OnEvent")
@app.event_grid_trigger(arg_name="event")
def on_event(event: func.EventGridEvent) -> None:
    if event.id == "boom":
        raise RuntimeError("the function failed")
    with lock:
        received.append(event)


@app.function_name("OnEventText")
@app.event_grid_trigger(arg_name="event")
def on_event_text(event: str) -> None:
    with lock:
        received.append(event)


@app.function_name("OnEventBytes")
@app.event_grid_trigger(arg_name="event")
def on_event_bytes(event: bytes) -> None:
    with lock:
        received.append(event)


@pytest.fixture(scope="module")
def host() -> Iterator[DevHost]:
    with DevHost(app, host_options(), port=0, queues=False) as running:
        yield running


@pytest.fixture
def webhook(host: DevHost) -> Iterator[tuple[httpx.Client, str]]:
    received.clear()
    with httpx.Client(timeout=5) as http:
        yield http, f"{host.url}/runtime/webhooks/eventgrid?functionName=OnEvent"


def grid_event(event_id: str) -> dict[str, Any]:
    return {
        "id": event_id,
        "topic": "/subscriptions/0/topics/t",
        "subject": "orders/1",
        "eventType": "Contoso.Orders.Shipped",
        "eventTime": "2026-12-03T21:30:00Z",
        "data": {"orderId": "1"},
        "dataVersion": "1.0",
    }


def test_the_subscription_validation_event_is_answered_and_calls_nothing(
    webhook: tuple[httpx.Client, str],
) -> None:
    http, url = webhook
    event = {**grid_event("v"), "data": {"validationCode": "code-1"}}
    answer = http.post(url, json=[event], headers={"aeg-event-type": "SubscriptionValidation"})
    assert answer.status_code == 200
    assert answer.json() == {"validationResponse": "code-1"}
    assert received == []


def test_each_event_grid_event_is_one_invocation_with_its_fields(
    webhook: tuple[httpx.Client, str],
) -> None:
    http, url = webhook
    answer = http.post(
        url, json=[grid_event("a"), grid_event("b")], headers={"aeg-event-type": "Notification"}
    )
    assert answer.status_code == 202
    # The events of a batch run at once, as the host runs them: in no particular order.
    assert sorted((e.id, e.event_type, e.get_json()) for e in received) == [
        ("a", "Contoso.Orders.Shipped", {"orderId": "1"}),
        ("b", "Contoso.Orders.Shipped", {"orderId": "1"}),
    ]


def test_a_cloudevent_reaches_the_function_as_the_worker_decodes_it(
    webhook: tuple[httpx.Client, str],
) -> None:
    http, url = webhook
    handshake = http.options(url, headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert handshake.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    event = {"specversion": "1.0", "id": "c", "source": "/s", "type": "t", "data": {"x": 1}}
    answer = http.post(url, json=event, headers={"aeg-event-type": "Notification"})
    assert answer.status_code == 202
    [got] = received
    assert isinstance(got, func.CloudEvent)
    assert (got.id, got.source, got.get_json()) == ("c", "/s", {"x": 1})


@pytest.mark.parametrize(
    ("query", "headers", "status"),
    [
        ("functionName=OnEvent", {"aeg-event-type": "Unsubscribe"}, 202),
        ("functionName=OnEvent", {"aeg-event-type": "Mystery"}, 400),
        ("functionName=Nobody", {"aeg-event-type": "Notification"}, 404),
    ],
)
def test_other_requests(host: DevHost, query: str, headers: dict[str, str], status: int) -> None:
    url = f"{host.url}/runtime/webhooks/eventgrid?{query}"
    assert httpx.post(url, json=[grid_event("x")], headers=headers).status_code == status


def test_a_failing_function_is_answered_500_so_event_grid_retries(
    webhook: tuple[httpx.Client, str],
) -> None:
    http, url = webhook
    answer = http.post(url, json=[grid_event("boom")], headers={"aeg-event-type": "Notification"})
    assert answer.status_code == 500


def test_a_batch_runs_every_event_even_after_one_fails_then_answers_500(
    webhook: tuple[httpx.Client, str],
) -> None:
    """As the host's extension does: all events of a batch run (at once), and the batch is
    answered 500 if any failed, so Event Grid delivers it again, the ones that ran included."""
    http, url = webhook
    batch = [grid_event("1"), grid_event("boom"), grid_event("3"), grid_event("4")]
    answer = http.post(url, json=batch, headers={"aeg-event-type": "Notification"})
    assert answer.status_code == 500
    assert sorted(e.id for e in received) == ["1", "3", "4"]


def test_a_parameter_annotated_str_gets_the_events_json_unconverted(
    webhook: tuple[httpx.Client, str],
) -> None:
    """As the worker binds it (generic): no converter, so a time with a UTC offset, which the
    converter refuses, reaches the function."""
    http, url = webhook
    event = {**grid_event("t"), "eventTime": "2024-05-01T15:34:56.1234567+03:00"}
    answer = http.post(url.replace("OnEvent", "OnEventText"), json=[event],
                       headers={"aeg-event-type": "Notification"})  # fmt: skip
    assert answer.status_code == 202
    assert [json.loads(text) for text in received] == [event]


def test_a_parameter_annotated_bytes_gets_the_events_json_as_text_as_the_worker_passes_it(
    webhook: tuple[httpx.Client, str],
) -> None:
    """The worker's generic binding hands over the JSON as str whatever the annotation; the dev
    host passed bytes, so a function that worked locally would meet str in Azure."""
    http, url = webhook
    event = grid_event("b")
    answer = http.post(url.replace("OnEvent", "OnEventBytes"), json=[event],
                       headers={"aeg-event-type": "Notification"})  # fmt: skip
    assert answer.status_code == 202
    assert [type(text) for text in received] == [str]
    assert [json.loads(text) for text in received] == [event]
