"""Inbound per connection: a named connection's webhook is registered with its own account, its
URL says which connection (signed into its token), and the events it produces say so."""

from __future__ import annotations

import contextlib
import uuid
from urllib.parse import parse_qsl, urlsplit

from azure.functions.queue import QueueMessage

from shared import names
from shared.connections import CONNECTION_HEADER
from shared.storage import queue_client
from tests.connections.conftest import SECOND_TWO_WAY, TwoConnections
from tests.outbound.conftest import app_function, call_http


def fresh_inbound_queues() -> None:
    for name in (names.INBOUND_INTAKE_QUEUE, names.INBOUND_QUEUE):
        queue = queue_client(name)
        with contextlib.suppress(Exception):
            queue.create_queue()
        queue.clear_messages()


def process_intake() -> None:
    intake = queue_client(names.INBOUND_INTAKE_QUEUE)
    for message in intake.receive_messages(messages_per_page=16, visibility_timeout=30):
        app_function("InboundProcessor")(
            QueueMessage(id=message.id, body=message.content.encode(), dequeue_count=1)
        )
        intake.delete_message(message)


def test_a_named_connections_webhook_and_its_events_say_which_connection(
    two: TwoConnections,
) -> None:
    fresh_inbound_queues()
    registered = call_http(
        "RegisterInboundWebhook",
        "POST",
        route_params={"Service": SECOND_TWO_WAY},
        headers={CONNECTION_HEADER: "second"},
    )
    assert registered.status == 201, registered.body
    assert two.env.sandbox.state.actions_for(SECOND_TWO_WAY) == []
    [action] = two.second.state.actions_for(SECOND_TWO_WAY)
    query = dict(parse_qsl(urlsplit(action["endpointUrl"]).query))
    assert query["connection"] == "second"

    message_id = str(uuid.uuid4())
    body = {"sender": "+358401234567", "recipient": "+358501234567", "content": "Hi",
            "messageId": message_id}  # fmt: skip
    route = {"Service": SECOND_TWO_WAY}
    # The connection is signed into the token: another label (or none) does not open it.
    for forged in ({"token": query["token"]}, {**query, "connection": "default"}):
        answer = call_http("InboundWebhook", "POST", route_params=route, params=forged, body=body)
        assert answer.status == 401
    answer = call_http("InboundWebhook", "POST", route_params=route, params=query, body=body)
    assert answer.status == 202, answer.body
    process_intake()
    [event] = [e for e in two.env.read(names.INBOUND_QUEUE) if e["subject"] == message_id]
    assert event["data"]["connection"] == "second"
    assert event["data"]["service"] == SECOND_TWO_WAY


def test_every_connection_shares_the_apps_subscriber_index(two: TwoConnections) -> None:
    """A subscription made through ``second`` is seen at once by this instance's notifier,
    which the processor and the fan-out read (they use the app's settings)."""
    from shared.connections import connection_settings
    from shared.settings import get_settings
    from shared.triggers import TriggerNotifier

    second = TriggerNotifier.for_settings(connection_settings("second"))
    assert second is TriggerNotifier.for_settings(get_settings())
