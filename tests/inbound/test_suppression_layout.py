"""Suppressions by recipient: one query per recipient, and the upgrade over by-service rows
written by an earlier version (copied once, then again every minute for the first 15)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError
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


def _laid_out(table: TableClient) -> SuppressionStore:
    """A store whose layout is made (no copy repairs the rows the test looks at)."""
    store = SuppressionStore(table)
    store.for_recipient("news", PHONE)
    return store


def _fail_once(
    monkeypatch: pytest.MonkeyPatch,
    table: TableClient,
    methods: tuple[str, ...],
    by_recipient: bool,
) -> None:
    """The next of ``methods`` on a by-recipient (else by-service) row raises a connection error."""
    armed = [True]

    def wrap(name: str) -> Any:
        real = getattr(table, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            first = args[0] if args else kwargs.get("entity", kwargs.get("partition_key"))
            pk = str(first["PartitionKey"] if isinstance(first, dict) else first)
            if armed and pk.startswith("to:") == by_recipient:
                armed.clear()
                raise ServiceRequestError("connection reset")
            return real(*args, **kwargs)

        return call

    for name in methods:
        monkeypatch.setattr(table, name, wrap(name))


def _agree(store: SuppressionStore, suppressed: bool) -> None:
    """The single send's check, GetSuppression and the bulk check say the same."""
    many = [PHONE] + [f"+35840200{i:04d}" for i in range(250)]
    assert (store.for_recipient("news", PHONE) is not None) is suppressed
    assert (store.get("news", PHONE) is not None) is suppressed
    assert (0 in store.suppressed_many("news", many)) is suppressed


@pytest.mark.parametrize("by_recipient", [True, False], ids=["by-recipient", "by-service"])
def test_a_stop_whose_second_row_failed_is_completed_by_the_retry(
    table: TableClient, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch,
    by_recipient: bool,
) -> None:  # fmt: skip
    store = _laid_out(table)
    _fail_once(
        monkeypatch, table, ("upsert_entity", "create_entity", "update_entity"), by_recipient
    )
    with pytest.raises(ServiceRequestError):
        store.add("news", PHONE, keyword="STOP", source="inbound", now=SINCE)
    store.add("news", PHONE, keyword="STOP", source="inbound", now=SINCE)  # the host's retry
    _agree(store, True)


@pytest.mark.parametrize("by_recipient", [True, False], ids=["by-recipient", "by-service"])
def test_a_start_whose_second_delete_failed_is_completed_by_the_retry(
    table: TableClient, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch,
    by_recipient: bool,
) -> None:  # fmt: skip
    store = _laid_out(table)
    store.add("news", PHONE, keyword="STOP", source="inbound", now=SINCE)
    _fail_once(monkeypatch, table, ("delete_entity",), by_recipient)
    later = SINCE + dt.timedelta(minutes=1)
    with pytest.raises(ServiceRequestError):
        store.remove_unless_newer("news", PHONE, later)
    store.remove_unless_newer("news", PHONE, later)  # the host's retry
    _agree(store, False)


def test_remove_suppression_lifts_a_by_recipient_row_left_alone(
    table: TableClient, manual_clock: ManualClock
) -> None:
    store = _laid_out(table)
    store.add("news", PHONE, keyword="STOP", source="inbound", now=SINCE)
    table.delete_entity(safe_key("news"), safe_key(PHONE))  # as a failed START of main left it
    assert store.remove("news", PHONE)
    _agree(store, False)


def test_a_stop_received_after_a_start_stands_when_processed_first(
    table: TableClient, manual_clock: ManualClock
) -> None:
    store = _laid_out(table)
    store.add("news", PHONE, keyword="STOP", source="inbound", now=SINCE)  # opted out long ago
    start, stop = SINCE + dt.timedelta(days=30), SINCE + dt.timedelta(days=30, seconds=5)
    store.add("news", "040 111 2233", keyword="SEIS", source="inbound", now=stop)
    assert not store.remove_unless_newer("news", PHONE, start)  # the START, processed last
    _agree(store, True)
    hit = store.get("news", PHONE)
    assert hit is not None
    assert (hit.keyword, hit.since) == ("SEIS", stop)
    # A STOP received earlier than the row's does not move it back.
    store.add("news", PHONE, keyword="STOP", source="inbound", now=SINCE)
    assert store.for_recipient("news", PHONE) == hit


def test_a_stop_landing_while_an_earlier_start_runs_keeps_both_rows(
    table: TableClient, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _laid_out(table)
    store.add("news", PHONE, keyword="STOP", source="inbound", now=SINCE)
    start, stop = SINCE + dt.timedelta(days=1), SINCE + dt.timedelta(days=1, seconds=5)
    delete = table.delete_entity
    landed: list[bool] = []

    def stop_lands_after_the_first_delete(*args: Any, **kwargs: Any) -> Any:
        result = delete(*args, **kwargs)
        if not landed:  # the START has deleted one row: the STOP runs now
            landed.append(True)
            store.add("news", PHONE, keyword="STOP", source="inbound", now=stop)
        return result

    monkeypatch.setattr(table, "delete_entity", stop_lands_after_the_first_delete)
    store.remove_unless_newer("news", PHONE, start)
    assert landed
    _agree(store, True)


@pytest.mark.parametrize("earlier", [False, True], ids=["new", "already-suppressed"])
def test_a_lift_running_between_a_stops_two_rows_never_leaves_the_by_service_row_alone(
    table: TableClient, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch, earlier: bool
) -> None:
    """RemoveSuppression lifts by service, then by recipient; a STOP writes by recipient, then by
    service. Run between the STOP's two writes, the lift took the first: the by-service row
    alone would let single sends through while GetSuppression and bulk said suppressed."""
    store = _laid_out(table)
    if earlier:
        store.add("news", PHONE, keyword="STOP", source="inbound", now=SINCE)
    lifted: list[bool] = []

    def wrap(name: str) -> Any:
        real = getattr(table, name)

        def call(entity: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            result = real(entity, *args, **kwargs)
            if not lifted and str(entity["PartitionKey"]).startswith("to:"):
                lifted.append(store.remove("news", PHONE))  # lands right after that write
            return result

        return call

    for name in ("create_entity", "update_entity"):
        monkeypatch.setattr(table, name, wrap(name))
    store.add("news", PHONE, keyword="STOP", source="inbound", now=SINCE + dt.timedelta(days=1))
    assert lifted == [True]
    _agree(store, True)  # the STOP was processed last: it stands, by both rows
