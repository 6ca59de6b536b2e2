"""``SmartDialogInboundSeen`` keeps what the dispatcher gave each subscription for a week: the
``InboundSeenSweeper`` timer deletes older rows (by the table's own ``Timestamp``), a transaction
per 100 rows of one partition."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from shared import names, storage
from shared.clock import utcnow
from shared.inbound import DeliveriesSeen
from shared.inbound._dispatch import SEEN_KEPT
from shared.storage import StorageOp, table_client
from tests.inbound.conftest import Inbound


def _remember(seen: DeliveriesSeen, subscriptions: dict[str, int]) -> None:
    for subscription, count in subscriptions.items():
        for i in range(count):
            seen.add(subscription, f"s-1001-twoway:m{i}", utcnow())


def _rows() -> list[tuple[str, str]]:
    table = table_client(names.INBOUND_SEEN_TABLE)
    return [(e["PartitionKey"], e["RowKey"]) for e in table.list_entities()]


def test_rows_older_than_a_week_are_swept_a_transaction_per_hundred_of_a_partition(
    inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = DeliveriesSeen.from_settings()
    _remember(seen, {"sub-a": 150, "sub-b": 3})
    table_client(names.INBOUND_SEEN_TABLE).upsert_entity(  # an earlier release's claim row
        {"PartitionKey": "c-s-1001-twoway", "RowKey": "m0", "Claimed": True}
    )
    assert seen.sweep(now=utcnow()) == 0  # all younger than a week
    assert len(_rows()) == 154

    monkeypatch.setattr(storage, "_round_trips", None)
    counter = storage.count_round_trips()
    seen = DeliveriesSeen.from_settings()
    before = counter.snapshot()
    assert seen.sweep(now=utcnow() + SEEN_KEPT + dt.timedelta(minutes=1), limit=120) == 120
    calls = counter.snapshot() - before
    transactions = calls[StorageOp.TABLE_TRANSACTION, names.INBOUND_SEEN_TABLE]
    assert transactions == 3  # the claim row's partition; 100 and 19 rows of sub-a's
    assert len(_rows()) == 34

    assert seen.sweep(now=utcnow() + SEEN_KEPT + dt.timedelta(minutes=1)) == 34
    assert _rows() == []


def test_a_row_deleted_meanwhile_does_not_stop_the_sweep(
    inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = DeliveriesSeen.from_settings()
    _remember(seen, {"sub-a": 5})
    table = seen._table
    real = table.submit_transaction

    def another_sweeper_first(operations: list[Any], **kwargs: Any) -> Any:
        # Another instance's sweep deleted a row of the chunk: Azure refuses the whole
        # transaction (Azurite lets it through, so the refusal is injected).
        _, first = operations[0]
        table.delete_entity(first["PartitionKey"], first["RowKey"])
        monkeypatch.setattr(table, "submit_transaction", real)
        raise HttpResponseError("The specified resource does not exist.")

    monkeypatch.setattr(table, "submit_transaction", another_sweeper_first)
    deleted: list[str] = []
    one_by_one = table.delete_entity

    def delete(partition: str, row: str, **kwargs: Any) -> None:
        deleted.append(row)
        one_by_one(partition, row, **kwargs)

    monkeypatch.setattr(table, "delete_entity", delete)
    seen.sweep(now=utcnow() + SEEN_KEPT + dt.timedelta(minutes=1))
    assert _rows() == []
    assert len(deleted) == 1 + 5  # the other sweep's, then the chunk's one by one
