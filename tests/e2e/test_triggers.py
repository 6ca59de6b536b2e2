"""The delivery-report and opt-out triggers with every queue run by the dev host: a flow (a
loopback receiver) subscribes over HTTP, a send and a simulated inbound STOP go through the
sandbox, and the host's sender, DLR endpoint, intake processor, ``TriggerFanout`` and
``InboundDispatcher`` bring each event to the flow."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.e2e.conftest import (
    CUSTOMER,
    DELIVERED_NUMBER,
    ONE_WAY_SERVICE,
    TWO_WAY_SERVICE,
    Stack,
)
from tests.fixtures.sandbox import CallbackReceiver

SENDER = "+358401234599"


@contextmanager
def subscribed(stack: Stack, route: str, service: str, callback: str) -> Iterator[Any]:
    """A trigger subscription for the duration of the block (the tables outlive this module)."""
    response = stack.http.post(
        f"{stack.api}/triggers/{route}/{service}",
        headers={"Customer-Id": CUSTOMER},
        json={"callbackUrl": callback},
    )
    assert response.status_code == 201, response.text
    try:
        yield response
    finally:
        gone = stack.http.delete(response.headers["Location"])
        assert gone.status_code == 200, gone.text


def test_a_sandbox_delivery_report_reaches_the_delivery_report_flow(
    stack: Stack, callback_receiver: CallbackReceiver
) -> None:
    assert stack.has_function("TriggerFanout")
    url = f"{callback_receiver.url}/dlr"
    with subscribed(stack, "delivery-reports", ONE_WAY_SERVICE, url):
        body = {
            "Sender": "Sandbox",
            "Content": "Your appointment is tomorrow",
            "Recipients": [{"Address": DELIVERED_NUMBER}],
            "CustomerData": "reminders:17",
        }
        accepted = stack.http.post(f"{stack.api}/messages", json=body)
        assert accepted.status_code == 202, accepted.text
        [call] = callback_receiver.wait_for(1, timeout=20)
    got = json.loads(call.body)
    assert got["messageId"] == accepted.json()["Id"]
    assert (got["recipient"], got["state"], got["final"]) == (DELIVERED_NUMBER, "delivered", True)
    assert got["customerData"] == "reminders:17"
    assert {k.lower(): v for k, v in call.headers.items()}["ce-type"] == (
        "fi.arena.smartdialog.trigger.delivery-report"
    )


def test_a_stop_by_sms_reaches_the_opt_out_flow(
    stack: Stack, callback_receiver: CallbackReceiver
) -> None:
    # This module's sandbox is new, but Azurite's tables may remember another module's webhook
    # (then subscribing registers none): register ours with this sandbox first.
    registered = stack.http.post(f"{stack.api}/inbound/webhooks/{TWO_WAY_SERVICE}")
    assert registered.status_code == 201, registered.text
    url = f"{callback_receiver.url}/optout"
    with subscribed(stack, "opt-outs", TWO_WAY_SERVICE, url):
        response = stack.http.post(
            f"{stack.sandbox.url}/sandbox/inbound",
            json={
                "sender": SENDER,
                "recipient": "SmartDialog",
                "content": "stop",
                "service": TWO_WAY_SERVICE,
            },
        )
        assert response.status_code == 200, response.text
        assert response.json()["deliveries"], "the sandbox should have called our webhook"
        [call] = callback_receiver.wait_for(1, timeout=20)
    got = json.loads(call.body)
    assert (got["phone"], got["keyword"], got["direction"]) == (SENDER, "STOP", "out")
    assert got["service"] == TWO_WAY_SERVICE
