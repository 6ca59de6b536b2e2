"""The storage conventions the whole app relies on, checked against a real Azurite."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree

import httpx
from azure.storage.queue import QueueClient, QueueSasPermissions, generate_queue_sas
from azure.storage.queue._shared.base_client import parse_connection_str

from shared import storage
from shared.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent


def test_host_json_stores_queue_messages_as_plain_text() -> None:
    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    assert queues["messageEncoding"] == "none"
    assert queues["maxDequeueCount"] == 5


def _raw_stored_text(queue: QueueClient, connection_string: str) -> str:
    """The message text exactly as the queue service stores it, read over plain HTTP."""
    _, _, credential = parse_connection_str(connection_string, None, "queue")
    assert isinstance(credential, dict)
    sas = generate_queue_sas(
        credential["account_name"],
        queue.queue_name,
        credential["account_key"],
        permission=QueueSasPermissions(read=True, process=True),
        expiry=datetime.now(UTC) + timedelta(minutes=5),
    )
    response = httpx.get(f"{queue.url}/messages?peekonly=true&{sas}")
    response.raise_for_status()
    # Our own local Azurite answered this, not an untrusted party.
    text = ElementTree.fromstring(response.text).findtext(  # noqa: S314
        "./QueueMessage/MessageText"
    )
    assert text is not None
    return text


def test_app_queue_messages_are_stored_as_plain_json(storage_env: str, unique_name: str) -> None:
    queue = storage.queue_client(unique_name, get_settings())
    queue.create_queue()
    body = {"Sender": "Contoso", "Content": "Hyvää päivää €", "n": 1}

    queue.send_message(json.dumps(body, ensure_ascii=False))

    # What Logic Apps and other services read is the JSON itself, not base64 of it.
    assert json.loads(_raw_stored_text(queue, storage_env)) == body
