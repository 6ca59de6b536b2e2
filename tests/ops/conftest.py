"""Fixtures for the operations tests: the outbound fixtures (Azurite, a sandbox, the real
sender function) plus an emptied dead-letter index and poison queues.

Until the dead-letter writers call :func:`shared.deadletters.write_dead_letter` themselves,
:func:`index_written_dead_letters` plays that wiring: it takes what a writer put on a
dead-letter queue without indexing it and writes it again through the index, text unchanged.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from shared.deadletters import DEAD_LETTER_QUEUES, DeadLetterIndex, write_dead_letter
from shared.names import DEAD_LETTERS_TABLE, poison_queue
from shared.ops import POISON_SOURCES
from shared.ops.actions import desk
from shared.settings import reset_settings_cache
from shared.storage import ensured_table, queue_client, table_client
from tests.outbound.conftest import Outbound, outbound, outbound_sandbox

__all__ = [
    "Outbound",
    "answer_as_azure",
    "index_written_dead_letters",
    "outbound",
    "outbound_sandbox",
]


def index_written_dead_letters(queue: str) -> list[str]:
    """Move every dead letter on ``queue`` that the index lacks through the index (as the wired
    writer writes them); returns the texts of all of them. Once the writers call
    ``write_dead_letter`` themselves, it only reads."""
    client = queue_client(queue)
    table = ensured_table(DEAD_LETTERS_TABLE)
    texts, unindexed = [], []
    for message in list(client.receive_messages(messages_per_page=32, visibility_timeout=30)):
        texts.append(str(message.content))
        indexed = table.query_entities(f"QueueMessageId eq '{message.id}'", select=["RowKey"])
        if next(iter(indexed), None) is None:
            unindexed.append(str(message.content))
            client.delete_message(message)
        else:
            client.update_message(message, content=message.content, visibility_timeout=0)
    for text in unindexed:
        write_dead_letter(client, text, queue_name=queue)
    return texts


@pytest.fixture
def ops(outbound: Outbound) -> Iterator[Outbound]:
    """``outbound`` in local development, with the dead-letter index, dead-letter and poison
    queues emptied."""
    outbound.monkeypatch.setenv("AZURE_FUNCTIONS_ENVIRONMENT", "Development")
    reset_settings_cache()
    table = table_client(DEAD_LETTERS_TABLE)
    with contextlib.suppress(Exception):
        table.create_table()
    for entity in table.query_entities("PartitionKey ne ''", select=["PartitionKey", "RowKey"]):
        table.delete_entity(entity["PartitionKey"], entity["RowKey"])
    for name in (*DEAD_LETTER_QUEUES, *(poison_queue(q) for q in POISON_SOURCES)):
        client = queue_client(name)
        with contextlib.suppress(Exception):
            client.create_queue()
        client.clear_messages()
    desk.cache_clear()
    yield outbound
    desk.cache_clear()


def answer_as_azure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a delete with a stale pop receipt answer as Azure does, 404 MessageNotFound (Azurite
    answers 400 PopReceiptMismatch): the queue client's call is wrapped, the service unchanged."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
    from azure.storage.queue import QueueClient

    delete = QueueClient.delete_message

    def as_azure(self: QueueClient, *args: Any, **kwargs: Any) -> Any:
        try:
            return delete(self, *args, **kwargs)
        except HttpResponseError as exc:
            if exc.status_code == 400 and "PopReceiptMismatch" in str(exc):
                gone = ResourceNotFoundError(
                    "MessageNotFound: The specified message does not exist."
                )
                gone.status_code = 404
                raise gone from exc
            raise

    monkeypatch.setattr(QueueClient, "delete_message", as_azure)


def index() -> DeadLetterIndex:
    return DeadLetterIndex.from_settings()


def letter(**fields: Any) -> str:
    """A dead letter's text (the outbound shape unless told otherwise)."""
    base: dict[str, Any] = {
        "schemaVersion": 1,
        "reason": "failed",
        "detail": "testing",
        "queue": "smartdialog-outbound",
        "deadLetteredAt": "2026-01-01T00:00:00Z",
        "original": "{}",
    }
    base.update(fields)
    return json.dumps(base)
