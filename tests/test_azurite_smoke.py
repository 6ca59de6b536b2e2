"""The storage conventions the whole app relies on, checked against a real Azurite."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from azure.storage.queue import QueueClient

ROOT = Path(__file__).resolve().parent.parent


def test_host_json_stores_queue_messages_as_plain_text() -> None:
    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    assert queues["messageEncoding"] == "none"
    assert queues["maxDequeueCount"] == 5


def test_queue_message_round_trips_as_plain_json(storage_env: str, unique_name: str) -> None:
    queue = QueueClient.from_connection_string(storage_env, unique_name)
    queue.create_queue()
    body = {"Sender": "Contoso", "Content": "Hyvää päivää €", "n": 1}

    queue.send_message(json.dumps(body, ensure_ascii=False))
    stored = next(iter(queue.peek_messages(max_messages=1))).content

    # What Logic Apps and other services see is the JSON itself, not base64 of it.
    assert json.loads(stored) == body
    try:
        decoded = base64.b64decode(stored, validate=True)
    except (binascii.Error, ValueError):
        decoded = None
    assert decoded is None or decoded.decode(errors="replace") != json.dumps(body)
