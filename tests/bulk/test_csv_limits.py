"""A CSV upload is read only as far as its limit: row 10,001 ends the reading, so a huge file
costs no more than a file one row too long."""

from __future__ import annotations

from shared.outbound._bulk import MAX_BULK_RECIPIENTS
from shared.outbound.bulk import _csv_recipients
from shared.problems import Problem
from tests.bulk.test_bulk_raw_csv_and_delivery import upload
from tests.outbound.conftest import Outbound


def refusal(text: str) -> str:
    try:
        _csv_recipients(text)
    except Problem as problem:
        [error] = problem.errors
        return error.message
    raise AssertionError("the CSV was accepted")


def test_reading_stops_at_the_row_after_the_limit() -> None:
    # A broken quote after the limit would be reported if reading went on to it.
    rows = "".join(f"+3584000{i:05d}\n" for i in range(MAX_BULK_RECIPIENTS + 1))
    text = "Address\n" + rows + '"unterminated\n' + "x" * 200_000

    assert refusal(text) == f"At most {MAX_BULK_RECIPIENTS} recipients."


def test_reading_stops_after_as_many_blank_rows() -> None:
    text = "Address\n" + "\n" * (MAX_BULK_RECIPIENTS + 1) + '"unterminated\n' + "x" * 200_000

    assert refusal(text) == f"More than {MAX_BULK_RECIPIENTS} blank rows."


def test_exactly_the_limit_is_read_whole() -> None:
    rows = "".join(f"+3584000{i:05d}\n\n" for i in range(MAX_BULK_RECIPIENTS))
    assert len(_csv_recipients("Address\n" + rows)) == MAX_BULK_RECIPIENTS


def test_a_two_million_row_upload_is_refused_and_nothing_is_queued(outbound: Outbound) -> None:
    answer = upload("Address\n" + "1\n" * 2_000_000)

    assert answer.status == 400, answer.body
    assert [e["field"] for e in answer.body["errors"]] == ["RecipientsCsv"]
    assert outbound.queued() == 0


def test_a_csv_with_only_its_header_row_is_refused_naming_recipientscsv(
    outbound: Outbound,
) -> None:
    """It named Recipients, a field the caller never sent."""
    from tests.bulk.test_bulk_action import bulk

    for answer in (bulk({"RecipientsCsv": "Address,name\n"}), upload("Address;name\r\n\r\n")):
        assert answer.status == 400, answer.body
        assert answer.body["errors"] == [
            {"field": "RecipientsCsv", "message": "The CSV has no recipient rows."}
        ]
    assert outbound.queued() == 0


def test_the_csv_cap_is_the_one_the_docs_and_the_connector_state(outbound: Outbound) -> None:
    from pathlib import Path

    from shared.outbound.bulk import MAX_CSV_CHARS, BulkBody

    stated = f"{MAX_CSV_CHARS:,} characters"
    assert stated in (Path(__file__).parents[2] / "docs" / "sending.md").read_text("utf-8")
    assert stated in str(BulkBody.model_fields["RecipientsCsv"].description)
    head = "Address,note\n+358403000001,"
    answer = upload(head + "x" * (MAX_CSV_CHARS + 1 - len(head)))

    assert answer.status == 400, answer.body
    [error] = answer.body["errors"]
    assert error["field"] == "RecipientsCsv"
    assert str(MAX_CSV_CHARS) in error["message"]
    assert outbound.queued() == 0
