"""Suppressions by recipient: one query per recipient, and the upgrade over by-service rows
written by an earlier version (copied once, then again every minute for the first 15)."""

from __future__ import annotations

import datetime as dt

import pytest
from azure.data.tables import TableClient

from shared.clock import ManualClock
from shared.names import UPGRADE_WINDOW
from shared.storage import ensured_table, plain_datetime, safe_key
from shared.suppressions import (
    ALL_SERVICES,
    RECOPY_EVERY,
    SuppressionStore,
    _layouts,
)

PHONE = "+358401112233"
SINCE = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)


@pytest.fixture
def table(storage_env: str, unique_name: str) -> TableClient:
    client = ensured_table(unique_name)
    _layouts.pop(client.url, None)
    return client


def earlier_version_stop(table: TableClient, service: str, phone: str) -> None:
    """A STOP as the earlier version wrote it: the by-service row only."""
    table.upsert_entity(
        {"PartitionKey": safe_key(service), "RowKey": safe_key(phone), "Service": service,
         "Phone": phone, "Keyword": "STOP", "Source": "inbound", "Since": plain_datetime(SINCE)}
    )  # fmt: skip


def test_a_check_is_one_query_and_covers_the_all_services_row(
    table: TableClient, manual_clock: ManualClock
) -> None:
    store = SuppressionStore(table)
    store.add("news", PHONE, keyword="STOP", source="inbound", now=SINCE)
    store.add(ALL_SERVICES, "+358405556666", keyword=None, source="action", now=SINCE)
    hits = store.suppressed("news", [PHONE, "+358405556666", "+358409999999"])
    assert sorted(hits) == [0, 1]
    assert hits[1].service == ALL_SERVICES
    assert store.suppressed("support", [PHONE]) == {}
    assert store.remove("news", PHONE)
    assert store.suppressed("news", [PHONE]) == {}


def test_rows_of_the_earlier_layout_are_copied_and_kept_in_step_for_the_window(
    table: TableClient, manual_clock: ManualClock
) -> None:
    earlier_version_stop(table, "news", PHONE)
    store = SuppressionStore(table)
    assert store.suppressed("news", [PHONE])[0].keyword == "STOP"  # copied on first use
    assert store.suppressed("news", ["+358401112234"]) == {}

    # An earlier version still running: a STOP and a START (its by-service rows only).
    earlier_version_stop(table, "news", "+358401112234")
    table.delete_entity(safe_key("news"), safe_key(PHONE))
    manual_clock.advance(RECOPY_EVERY.total_seconds() + 1)
    assert sorted(store.suppressed("news", [PHONE, "+358401112234"])) == [1]

    # Past the window nothing is copied any more: the by-recipient rows are the truth.
    manual_clock.advance(UPGRADE_WINDOW.total_seconds())
    store.suppressed("news", [PHONE])
    earlier_version_stop(table, "news", PHONE)
    manual_clock.advance(RECOPY_EVERY.total_seconds() + 1)
    assert store.suppressed("news", [PHONE]) == {}


def test_a_start_lifts_both_rows(table: TableClient, manual_clock: ManualClock) -> None:
    store = SuppressionStore(table)
    store.add("news", PHONE, keyword="STOP", source="inbound", now=SINCE)
    assert store.remove_unless_newer("news", PHONE, SINCE + dt.timedelta(seconds=1))
    assert store.suppressed("news", [PHONE]) == {}
    assert store.suppressed_many("news", [PHONE] * 200) == {}
