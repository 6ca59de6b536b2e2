"""SendBulkMessages with a raw ``text/csv`` body, and each recipient's delivery state in
GetBulkStatus (through the real functions, Azurite, the sandbox and its delivery reports)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

from shared.outbound.bulk import csv_delimiter
from tests.bulk.test_bulk_action import GOOD, batch_status, bulk, people
from tests.outbound.conftest import UNDELIVERABLE, HttpAnswer, Outbound, call_http, sms
from tests.waiting import wait_for


def upload(csv_text: str | bytes, content_type: str = "text/csv", **query: str) -> HttpAnswer:
    """POST a raw CSV body; the template comes as query parameters (with a function key, as
    a curl caller sends it, which the action ignores)."""
    params = {"code": "function-key", "Sender": "Sandbox", "Content": "Hi $(name)", **query}
    body = csv_text if isinstance(csv_text, bytes) else csv_text.encode()
    return call_http(
        "SendBulkMessages", "POST", params=params, headers={"Content-Type": content_type},
        body=body,
    )  # fmt: skip


def sent_personalization(outbound: Outbound) -> dict[str, Any]:
    outbound.drain()
    return {
        r["Address"]: r.get("Personalization", {}).get("name")
        for call in outbound.upstream()
        for r in call["body"]["Recipients"]
    }


def test_a_raw_csv_upload_is_sent_with_the_template_from_the_query(outbound: Outbound) -> None:
    text = f"Address,name\r\n{GOOD[0]},Ada\r\n{GOOD[1]},Bob\r\n"

    accepted = upload(text, "text/csv; charset=utf-8")

    assert accepted.status == 202, accepted.body
    assert accepted.body["Accepted"] == 2
    assert accepted.body["Counts"]["queued"] == 2
    assert sent_personalization(outbound) == {GOOD[0]: "Ada", GOOD[1]: "Bob"}
    assert {c["body"]["Content"] for c in outbound.upstream()} == {"Hi $(name)"}


def test_semicolons_a_bom_and_quoted_fields_as_excel_exports_them(outbound: Outbound) -> None:
    # Excel in a Finnish locale: ';' between fields, UTF-8 with a BOM, quotes around a field
    # holding the delimiter, a quote and a line break.
    text = (
        "\ufeffAddress;name\r\n"
        f'{GOOD[0]};"Virtanen; Ada"\r\n'
        f'"{GOOD[1]}";"Bob ""B"" Smith"\r\n'
        f'{GOOD[2]};"Cy\r\nÄäkkönen"\r\n'
    )

    accepted = upload(text.encode("utf-8"))

    assert accepted.status == 202, accepted.body
    assert sent_personalization(outbound) == {
        GOOD[0]: "Virtanen; Ada",
        GOOD[1]: 'Bob "B" Smith',
        GOOD[2]: "Cy\r\nÄäkkönen",
    }


def test_bad_rows_are_listed_by_csv_line_and_the_rest_are_sent(outbound: Outbound) -> None:
    text = f'Address;name\n{GOOD[0]};Ada\nnot a number;Bob\n"{GOOD[1]}";"two\nlines"\n123;Eve\n'

    accepted = upload(text)

    assert accepted.status == 202, accepted.body
    assert [(e["row"], e["field"]) for e in accepted.body["Refused"]] == [
        (3, "Address"), (6, "Address"),
    ]  # fmt: skip
    assert sorted(sent_personalization(outbound)) == sorted(GOOD[:2])


def test_all_or_nothing_from_the_query_refuses_the_upload(outbound: Outbound) -> None:
    text = f"Address,name\n{GOOD[0]},Ada\nnot a number,Bob\n"

    refused = upload(text, AllOrNothing="true")

    assert refused.status == 422, refused.body
    assert [e["field"] for e in refused.body["errors"]] == ["row 3.Address"]
    assert outbound.queued() == 0


def test_a_raw_upload_is_validated_like_a_json_one(outbound: Outbound) -> None:
    missing = upload(f"Address\n{GOOD[0]}\n", Sender="")
    assert missing.status == 400
    assert any("Sender" in e["field"] for e in missing.body["errors"])
    no_address = upload("Phone,name\n0401234567,Ada\n")
    assert no_address.status == 400
    assert [e["field"] for e in no_address.body["errors"]] == ["RecipientsCsv"]
    latin = upload("Address,name\n0401234567,\xc4\n".encode("latin-1"))
    assert latin.status == 400
    assert "UTF-8" in latin.body["errors"][0]["message"]
    assert outbound.queued() == 0


def test_a_json_body_still_goes_the_json_way(outbound: Outbound) -> None:
    answer = call_http(
        "SendBulkMessages", "POST", headers={"Content-Type": "application/json"},
        body={"Sender": "Sandbox", "Content": "Hi", "RecipientsCsv": f"Address\n{GOOD[0]}\n"},
    )  # fmt: skip
    assert answer.status == 202, answer.body


@pytest.mark.parametrize(
    ("header", "expected"),
    [("Address,name", ","), ("Address;name", ";"), ("Address\tname", "\t"),
     ('"Address;x",name', ","), ("Address", ",")],
)  # fmt: skip
def test_the_delimiter_is_read_from_the_header_row(header: str, expected: str) -> None:
    assert csv_delimiter(f"{header}\n1;2,3\t4\n") == expected


def test_batch_details_carry_each_recipients_delivery_state(outbound: Outbound) -> None:
    accepted = upload(f"Address,name\n{GOOD[0]},Ada\n{UNDELIVERABLE},Bob\n{GOOD[1]},Cy\n")
    assert accepted.status == 202, accepted.body
    assert accepted.body["DeliveryCounts"]["pending"] == 3
    outbound.drain()
    sent = batch_status(accepted.headers["Location"], details=True)
    assert sent.body["DeliveryCounts"]["sent"] == 3
    assert {m["Delivery"] for m in sent.body["Recipients"]} == {"sent"}

    # Reports of earlier tests' sends may still arrive in the sandbox's log: only this batch's.
    calls = {c["response"]["MessageId"] for c in outbound.upstream()}

    def this_batchs() -> list[dict[str, Any]]:
        log = outbound.sandbox.state.snapshot("delivery_reports")
        return [r for r in log if r["messageId"] in calls]

    wait_for(lambda: len(this_batchs()) >= 3, what="the batch's 3 delivery reports")
    for report in this_batchs():
        parts = urlsplit(report["url"])  # our DLR URL (the host is not up): replay it
        answer = call_http(
            "DeliveryReport", "GET",
            route_params={"MessageId": unquote(parts.path.rsplit("/", 1)[-1])},
            params=dict(parse_qsl(parts.query)),
        )  # fmt: skip
        assert answer.status == 200, answer.body

    done = batch_status(accepted.headers["Location"], details=True)
    assert done.status == 200
    assert done.body["Counts"]["sent"] == 3
    assert {m["Address"]: m["Delivery"] for m in done.body["Recipients"]} == {
        GOOD[0]: "delivered", UNDELIVERABLE: "undelivered", GOOD[1]: "delivered",
    }  # fmt: skip
    counts = done.body["DeliveryCounts"]
    assert (counts["delivered"], counts["undelivered"], counts["sent"]) == (2, 1, 0)
    summary = batch_status(accepted.headers["Location"])
    assert summary.body["DeliveryCounts"] == counts
    assert "Recipients" not in summary.body


def test_a_packs_reports_reach_its_members_though_a_queued_message_took_the_packs_id(
    outbound: Outbound,
) -> None:
    """A queue producer may name its message as it likes, a pack's id too (it is logged, and is
    the pack's RequestId): its DLR URL is then the pack's, and the message record was read
    first, so the pack's reports were answered ``unmatched`` and its members stayed ``sent``
    (found in review)."""
    accepted = bulk({"Recipients": people(*GOOD[2:4])})
    assert accepted.status == 202, accepted.body
    outbound.drain()
    [call] = outbound.upstream()
    dlr = urlsplit(call["body"]["DlrUrl"])
    pack_id, token = unquote(dlr.path.rsplit("/", 1)[-1]), dict(parse_qsl(dlr.query))["token"]
    assert pack_id.startswith("pack-")
    outbound.enqueue({"operation": "SendMessage", "messageId": pack_id, "body": sms(GOOD[4])})
    outbound.drain()

    answer = call_http(
        "DeliveryReport", "GET", route_params={"MessageId": pack_id},
        params={"token": token, "recipient": GOOD[2], "status": "delivered",
                "messageId": call["response"]["MessageId"]},
    )  # fmt: skip

    assert answer.status == 200, answer.body
    assert answer.body["status"] != "unmatched"
    done = batch_status(accepted.headers["Location"], details=True)
    assert {m["Address"]: m["Delivery"] for m in done.body["Recipients"]} == {
        GOOD[2]: "delivered", GOOD[3]: "sent",
    }  # fmt: skip


def test_an_action_without_a_raw_body_still_takes_json_only(outbound: Outbound) -> None:
    answer = call_http(
        "SendMessage", "POST", params={"Sender": "Sandbox", "Content": "Hi"},
        headers={"Content-Type": "text/csv"}, body=f"Address\n{GOOD[0]}\n".encode(),
    )  # fmt: skip
    assert answer.status == 400
    assert "not valid JSON" in answer.body["errors"][0]["message"]
    assert outbound.queued() == 0


def test_a_file_with_cr_line_ends_has_its_header_rows_delimiter(outbound: Outbound) -> None:
    """The delimiter was counted over the whole file (its first \\n-ended line), so the commas
    of the data outvoted the header's ';' and the upload was told it had no Address column."""
    text = f"Address;name\r{GOOD[0]};Virtanen, Matti, Jr\r{GOOD[1]};Korhonen, Liisa, Sr\r"

    assert csv_delimiter(text) == ";"
    accepted = upload(text)

    assert accepted.status == 202, accepted.body
    assert sent_personalization(outbound) == {
        GOOD[0]: "Virtanen, Matti, Jr", GOOD[1]: "Korhonen, Liisa, Sr",
    }  # fmt: skip


def test_a_placeholder_without_a_column_refuses_the_upload(outbound: Outbound) -> None:
    """Placeholders match their column exactly: $(nimi) has no value from a column Nimi, and
    every recipient got "Hei , koodisi on "."""
    text = f"Address;Nimi;Koodi\n{GOOD[0]};Ada;1\n"

    refused = upload(text, Content="Hei $(nimi), koodisi on $(koodi), $(Nimi)")

    assert refused.status == 400, refused.body
    assert refused.body["errors"] == [{
        "field": "RecipientsCsv",
        "message": "No column for $(nimi) (Nimi?), $(koodi) (Koodi?) of Content: a placeholder "
        "is filled from the column of exactly its name, other than Address.",
    }]  # fmt: skip
    assert outbound.queued() == 0


def test_a_placeholder_with_a_column_is_filled_even_where_a_row_has_no_cell(
    outbound: Outbound,
) -> None:
    accepted = upload(f"Address,name,code\n{GOOD[0]},Ada\n", Content="Hi $(name) $(code)")

    assert accepted.status == 202, accepted.body
    assert sent_personalization(outbound) == {GOOD[0]: "Ada"}
