"""The inbound events on the queues match the published JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jsonschema

from shared import names
from shared.callback_urls import delivery_report_url
from shared.inbound import DELIVERY_REPORTED, MESSAGE_RECEIVED
from shared.settings import get_settings
from tests.inbound.conftest import CUSTOMER, ONE_WAY, Inbound
from tests.inbound.test_optout import _inbound
from tools.generate_schemas import SCHEMAS_DIR


def load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((Path(SCHEMAS_DIR) / name).read_text(encoding="utf-8"))
    return schema


def test_received_and_delivery_events_match_their_schemas(inbound: Inbound) -> None:
    _inbound(inbound, "STOP", sender="+358401234567")
    [received] = [e for e in inbound.read(names.INBOUND_QUEUE) if e["type"] == MESSAGE_RECEIVED]
    jsonschema.validate(received, load("events/message.received.json"))
    jsonschema.validate(received["data"], load("events/message-received.data.json"))

    answer = inbound.call(
        "SendMessage",
        "POST",
        headers={"Customer-Id": CUSTOMER, "Service-Id": ONE_WAY},
        body={"Sender": "Sandbox", "Content": "Hi", "Recipients": [{"Address": "+358400000001"}]},
    )
    assert answer.status == 202
    inbound.run_queue(names.OUTBOUND_QUEUE, "OutboundSender")
    message_id = answer.body["Id"]
    url = delivery_report_url(get_settings(), message_id)
    token = dict(parse_qsl(urlsplit(url).query))["token"]
    report = inbound.call(
        "DeliveryReport",
        "GET",
        route_params={"MessageId": message_id},
        params={"token": token, "status": "delivered", "recipient": "+358400000001"},
    )
    assert report.status == 200
    [delivery] = [e for e in inbound.read(names.EVENTS_QUEUE) if e["type"] == DELIVERY_REPORTED]
    jsonschema.validate(delivery, load("events/message.delivery.json"))
    jsonschema.validate(delivery["data"], load("events/message-delivery.data.json"))
