"""Where a CSV upload's rows start and end: a quote never closed is refused, naming its line,
rather than taking the rest of the file as one field."""

from __future__ import annotations

from shared.outbound.bulk import _csv_recipients
from tests.bulk.test_bulk_raw_csv_and_delivery import upload
from tests.bulk.test_csv_limits import refusal
from tests.outbound.conftest import Outbound

ROWS = "+358403000001,Ada\n+358403000002,Bob\n+358403000003,Cy\n"


def test_a_quote_never_closed_is_refused_with_its_line_and_nothing_is_queued(
    outbound: Outbound,
) -> None:
    """It used to answer 202 with Total 1: the rows after the quote were its field, neither
    sent nor refused."""
    answer = upload('Address,name\n+358403000001,"Ada\n+358403000002,Bob\n+358403000003,Cy\n')

    assert answer.status == 400, answer.body
    [error] = answer.body["errors"]
    assert error == {"field": "RecipientsCsv", "message": "Line 2: a quoted field is never closed."}
    assert outbound.queued() == 0


def test_a_quote_never_closed_in_the_header_or_the_last_row_is_refused() -> None:
    assert refusal('"Address,name\n' + ROWS) == "Line 1: a quoted field is never closed."
    assert refusal("Address,name\n" + ROWS + '+358403000004,"Dee') == (
        "Line 5: a quoted field is never closed."
    )


def test_quoted_line_breaks_and_a_last_row_without_one_are_read_as_before() -> None:
    text = 'Address,name\n+358403000001,"Ada\nLovelace"\n+358403000002,"Bob ""B"""'

    rows = _csv_recipients(text)

    assert [(r.row, r.address, r.personalization) for r in rows] == [
        (2, "+358403000001", {"name": "Ada\nLovelace"}),
        (4, "+358403000002", {"name": 'Bob "B"'}),
    ]
    # Text after a closing quote stays part of the field, as spreadsheets' readers take it.
    [bob] = _csv_recipients('Address,name\n+358403000002,"Bob" Jr\n')
    assert bob.personalization == {"name": "Bob Jr"}


#: The lines a quoted name spans (its line breaks, filled into "Hi $(name)", within the cap).
SPAN = 4_000


def bob_on_line(target: int) -> str:
    """A CSV whose recipients' quoted names span lines (at most SPAN each) until Bob's row
    starts on line ``target``."""
    rows, line = [], 2
    while line < target:
        span = min(SPAN, target - line)
        rows.append(f'+3584030{len(rows):05d},"' + "\n" * (span - 1) + '"\n')
        line += span
    return "Address,name\n" + "".join(rows) + "+358403099999,Bob\n"


def test_a_recipient_past_line_999999_is_refused_with_its_line(outbound: Outbound) -> None:
    """Its member id would carry a 7-digit row, which the batch's partitions do not take: it
    was stored apart, and the batch's status never saw it."""
    answer = upload(bob_on_line(1_000_000))

    assert answer.status == 400, answer.body
    [error] = answer.body["errors"]
    assert error["field"] == "RecipientsCsv"
    assert error["message"].startswith("Line 1000000: a recipient must start on a line up to")
    assert outbound.queued() == 0


def test_a_recipient_on_line_999999_is_a_member_of_its_batch(outbound: Outbound) -> None:
    from tests.bulk.test_bulk_action import batch_status

    accepted = upload(bob_on_line(999_999))

    assert accepted.status == 202, accepted.body
    outbound.drain()
    done = batch_status(accepted.headers["Location"], details=True)
    starts = [*range(2, 999_999, SPAN), 999_999]
    assert done.body["Counts"]["sent"] == accepted.body["Accepted"] == len(starts)
    assert [m["Row"] for m in done.body["Recipients"]] == starts


def test_a_row_too_long_once_filled_in_or_with_a_value_past_the_cap_is_refused_by_line(
    outbound: Outbound,
) -> None:
    """Content of 500 placeholders filled with 11 characters each is 5,500 characters; a CSV
    value is text of any length. Both were accepted and estimated row by row before the 202."""
    from shared.outbound import MAX_CONTENT_CHARS

    long = "x" * (MAX_CONTENT_CHARS + 1)
    text = (
        f"Address,name,note\n+358403000001,Ada,\n+358403000002,Bartholomew,\n"
        f"+358403000003,Cy,{long}\n"
    )

    answer = upload(text, Content="$(name)" * 500)

    assert answer.status == 400, answer.body
    assert [(e["field"], e["message"][:8]) for e in answer.body["errors"]] == [
        ("RecipientsCsv", "Line 4, "),  # the note: never filled in, still past the cap
        ("RecipientsCsv", "Line 3: "),  # Bartholomew: 5,500 characters
    ]
    assert "5,500 characters" in answer.body["errors"][1]["message"]
    assert outbound.queued() == 0


def test_a_row_with_more_cells_than_the_header_is_refused_by_line(outbound: Outbound) -> None:
    """An unquoted comma in a comma-delimited file shifts every later cell: the cells past the
    header were dropped, and this recipient got "code  Matti", never their code 1234."""
    text = "Address,name,code\n+358403000001,Virtanen, Matti,1234\n+358403000002,Ada,42\n"

    answer = upload(text, Content="Hi $(name), code $(code)")

    assert answer.status == 202, answer.body
    assert answer.body["RefusedCount"] == 1
    assert answer.body["Refused"] == [{
        "row": 2, "field": "RecipientsCsv",
        "message": "4 cells, the header has 3 (a delimiter in an unquoted value?).",
    }]  # fmt: skip
    outbound.drain()
    sent = [r for call in outbound.upstream() for r in call["body"]["Recipients"]]
    assert sent == [{"Address": "+358403000002", "Personalization": {"name": "Ada", "code": "42"}}]


def test_a_row_with_too_many_cells_refuses_an_all_or_nothing_upload(outbound: Outbound) -> None:
    text = "Address,name\n+358403000001,Ada\n+358403000002,Virtanen, Matti\n"

    answer = upload(text, AllOrNothing="true")

    assert answer.status == 422, answer.body
    assert [e["field"] for e in answer.body["errors"]] == ["row 3.RecipientsCsv"]
    assert outbound.queued() == 0


def test_empty_cells_past_the_header_are_no_cells() -> None:
    """Excel writes them (;;) when formatting reaches past the data."""
    [ada] = _csv_recipients("Address;name;code\n+358403000001;Ada;1;; \n")

    assert (ada.refusal, ada.personalization) == ((), {"name": "Ada", "code": "1"})


def test_a_column_with_no_header_cell_is_a_column_of_the_header() -> None:
    """Excel writes a notes column without a heading as "Address;Name;": the header has three
    cells, one empty, and every row filling it was refused as having more cells than the
    header (a whole upload of such rows a 422)."""
    [matti] = _csv_recipients('Address,Name,""\n+358401234567,Matti,note\n')

    assert (matti.refusal, matti.personalization) == ((), {"Name": "Matti"})


def test_a_header_naming_a_column_twice_is_refused_and_nothing_is_queued(
    outbound: Outbound,
) -> None:
    """The later column's values hid the earlier one's: Ada's row went out as "Hi Bob", with
    a 202 (found in review). Names are trimmed, and Address is found in any case."""
    answer = upload("Address,name,name \n+358403000001,Ada,Bob\n", Content="Hi $(name)")

    assert answer.status == 400, answer.body
    [error] = answer.body["errors"]
    assert error == {
        "field": "RecipientsCsv",
        "message": "The header row names name more than once.",
    }
    assert outbound.queued() == 0
    assert (
        refusal("address,name,ADDRESS\n" + ROWS) == "The header row names Address more than once."
    )
