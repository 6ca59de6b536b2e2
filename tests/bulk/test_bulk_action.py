"""SendBulkMessages and GetBulkStatus through the real functions, Azurite and the sandbox."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from shared.clock import ManualClock
from tests.outbound.conftest import (
    HttpAnswer,
    Outbound,
    call_http,
    fresh_number,
    opt_out,
    padding,
)

GOOD = [f"+35840200{i:04d}" for i in range(30)]
TEMPLATE = {"Sender": "Sandbox", "Content": "Hi $(name), your code is $(code)"}


def bulk(body: dict[str, Any], **headers: str) -> HttpAnswer:
    return call_http("SendBulkMessages", "POST", body={**TEMPLATE, **body}, headers=headers)


def batch_status(location: str, details: bool = False) -> HttpAnswer:
    parts = urlsplit(location)
    params = dict(parse_qsl(parts.query))
    if details:
        params["details"] = "true"
    return call_http(
        "GetBulkStatus", "GET",
        route_params={"BatchId": unquote(parts.path.rsplit("/", 1)[-1])}, params=params,
    )  # fmt: skip


def people(*addresses: str) -> list[dict[str, Any]]:
    return [
        {"Address": a, "Personalization": {"name": f"P{i}", "code": i}}
        for i, a in enumerate(addresses)
    ]


def test_bulk_send_is_one_upstream_call_and_every_recipient_keeps_its_personalization(
    outbound: Outbound,
) -> None:
    accepted = bulk({"Recipients": people(*GOOD[:20])})
    assert accepted.status == 202, accepted.body
    assert accepted.body["Accepted"] == 20
    assert accepted.body["Refused"] == []

    outbound.drain()

    calls = outbound.upstream()
    assert len(calls) == 1
    sent = calls[0]["body"]["Recipients"]
    assert len(sent) == 20
    assert {r["Address"]: r["Personalization"]["code"] for r in sent} == {
        a: i for i, a in enumerate(GOOD[:20])
    }
    done = batch_status(accepted.headers["Location"], details=True)
    assert done.status == 200
    assert done.body["Counts"]["sent"] == 20
    ids = {r["Address"]: r["Id"] for r in calls[0]["response"]["Recipients"]}
    assert {m["Address"]: m["RecipientId"] for m in done.body["Recipients"]} == ids
    assert {m["MessageId"] for m in done.body["Recipients"]} == {calls[0]["response"]["MessageId"]}


def test_a_waiting_batch_details_tell_each_member_in_the_state_its_counts_do(
    outbound: Outbound,
) -> None:
    """Once a batch's drivers are on the queue its counts said ``queued`` for its members while
    the details said ``accepted`` ("recorded, not yet queued") for each (found in review)."""
    accepted = bulk({"Recipients": people(*GOOD[:3])})
    assert accepted.status == 202, accepted.body

    waiting = batch_status(accepted.headers["Location"], details=True)

    assert waiting.status == 202
    assert waiting.body["Counts"]["queued"] == 3
    assert [m["Status"] for m in waiting.body["Recipients"]] == ["queued"] * 3
    outbound.drain()
    done = batch_status(accepted.headers["Location"], details=True)
    assert [m["Status"] for m in done.body["Recipients"]] == ["sent"] * 3


def test_a_member_whose_recipient_opted_out_after_the_batch_was_accepted_is_not_sent(
    outbound: Outbound,
) -> None:
    from shared.messages import MessageStatus, MessageStore

    phone = fresh_number()
    accepted = bulk({"Recipients": people(GOOD[0], phone, GOOD[1])})
    assert (accepted.status, accepted.body["Accepted"]) == (202, 3), accepted.body
    opt_out(phone)  # a STOP while the batch waits on the queue

    outbound.drain()

    [call] = outbound.upstream()
    assert sorted(r["Address"] for r in call["body"]["Recipients"]) == GOOD[:2]
    done = batch_status(accepted.headers["Location"], details=True)
    assert (done.body["Counts"]["sent"], done.body["Counts"]["failed"]) == (2, 1)
    [member] = [m for m in done.body["Recipients"] if m["Address"] == phone]
    refused = MessageStore.from_settings().get(member["Id"])
    assert refused is not None
    assert refused.status is MessageStatus.FAILED
    assert refused.failure is not None
    assert refused.failure.code == "suppressed"
    [event] = [e for e in outbound.events() if e["type"].endswith(".failed")]
    assert (event["subject"], event["data"]["error"]["code"]) == (member["Id"], "suppressed")
    assert [d["messageId"] for d in outbound.dead_letters()] == [member["Id"]]


def test_a_pass_that_fails_an_opted_out_member_does_not_come_back_for_it(
    outbound: Outbound,
) -> None:
    """Found in review: the driver counted the member it had just failed 'suppressed' as one
    left open, so after sending the rest it queued itself once more, for nothing."""
    phone = fresh_number()
    accepted = bulk({"Recipients": people(GOOD[0], phone, GOOD[1])})
    assert (accepted.status, accepted.body["Accepted"]) == (202, 3), accepted.body
    opt_out(phone)

    assert outbound.run_once() == 1

    [call] = outbound.upstream()
    assert sorted(r["Address"] for r in call["body"]["Recipients"]) == GOOD[:2]
    assert outbound.queued() == 0  # no driver back: nobody of the pack is left open
    done = batch_status(accepted.headers["Location"])
    assert (done.body["Counts"]["sent"], done.body["Counts"]["failed"]) == (2, 1)


def test_bad_rows_are_listed_by_row_and_the_rest_are_sent(outbound: Outbound) -> None:
    rows = people(GOOD[0], "not a number", GOOD[1], "123")
    accepted = bulk({"Recipients": rows})

    assert accepted.status == 202
    assert [r["row"] for r in accepted.body["Refused"]] == [2, 4]
    outbound.drain()
    pending = batch_status(accepted.headers["Location"])
    assert pending.body["Counts"]["sent"] == 2
    assert pending.body["RefusedCount"] == 2


def test_the_final_answer_a_flow_step_gets_lists_the_refused_rows(outbound: Outbound) -> None:
    """Found in review: the step's output is the final answer of its Location, which has no
    details=true, and only details listed Refused: the rows the 202 refused were lost to the
    flow, the designer offering an always-empty field. Recipients stays with details."""
    accepted = bulk({"Recipients": people(GOOD[0], "not a number", GOOD[1])})
    assert accepted.status == 202, accepted.body
    outbound.drain()

    final = batch_status(accepted.headers["Location"])

    assert (final.status, final.body["Status"]) == (200, "done")
    assert final.body["Refused"] == accepted.body["Refused"]
    assert [(r["row"], r["field"]) for r in final.body["Refused"]] == [(2, "Address")]
    assert "Recipients" not in final.body


def test_a_finished_batchs_answer_echoes_its_link_and_never_extends_it(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """Found in review: every answer signed a fresh StatusUrl, the final 200 too, so a link once
    seen opened the batch (every recipient's number and state) for ever, 29 days at a time.
    A pending answer renews it (a flow polls on); a finished one gives back the link it was
    opened with, so the designer's StatusUrl (plus &details=true) still works until it expires."""
    accepted = bulk({"Recipients": people(*GOOD[:2])})
    outbound.drain()
    first = accepted.headers["Location"]
    manual_clock.advance(29 * 86400)  # the link is still open, for a day more
    done = batch_status(first, details=True)
    assert (done.status, done.body["Status"]) == (200, "done")
    assert done.body["StatusUrl"] == first
    assert "Location" not in done.headers


def test_all_or_nothing_refuses_the_whole_batch_and_queues_nothing(outbound: Outbound) -> None:
    answer = bulk({"Recipients": people(GOOD[0], "nope"), "AllOrNothing": True})

    assert answer.status == 422
    assert [e["field"] for e in answer.body["errors"]] == ["row 2.Address"]
    assert outbound.queued() == 0


def test_csv_rows_are_checked_by_line_and_personalize_by_column(outbound: Outbound) -> None:
    text = f"Address,name,code\n{GOOD[0]},Ada,1\nbroken,Bob,2\n{GOOD[1]},Cy,3\n"
    accepted = bulk({"RecipientsCsv": text})

    assert accepted.status == 202, accepted.body
    assert [r["row"] for r in accepted.body["Refused"]] == [3]
    outbound.drain()
    call = outbound.upstream()[0]
    assert sorted(
        (r["Address"], r["Personalization"]["name"]) for r in call["body"]["Recipients"]
    ) == [
        (GOOD[0], "Ada"),
        (GOOD[1], "Cy"),
    ]


def test_same_idempotency_key_answers_the_same_batch_and_queues_nothing_more(
    outbound: Outbound,
) -> None:
    first = bulk({"Recipients": people(*GOOD[:3])}, **{"Idempotency-Key": "bulk-1"})
    queued = outbound.queued()
    again = bulk({"Recipients": people(*GOOD[:3])}, **{"Idempotency-Key": "bulk-1"})

    assert again.body["Id"] == first.body["Id"]
    assert outbound.queued() == queued


def test_a_replay_writing_its_numbers_another_way_is_the_same_batch(outbound: Outbound) -> None:
    """Found in review: the key's fingerprint took the numbers as typed, so a retry whose
    flow wrote them another way (national, spaced, 00) was refused 422 with no status URL
    while its batch went out. They count as sent, in E.164, as a single send's do."""
    key = {"Idempotency-Key": f"bulk-{uuid.uuid4()}"}
    first = bulk({"Recipients": people(*GOOD[3:6])}, **key)
    queued = outbound.queued()
    written = ["040 200 0003", "00358402000004", "+358 40 2000005"]
    again = bulk({"Recipients": people(*written)}, **key)

    assert (again.status, again.body["Id"]) == (first.status, first.body["Id"])
    assert outbound.queued() == queued


def test_a_bulk_keys_fingerprint_as_typed_is_the_previous_releases() -> None:
    """A retry spanning the upgrade finds the claim the release before wrote (numbers as typed,
    in the formula it used)."""
    from shared.outbound._bulk_members import BulkRecipient, bulk_fingerprint

    rows = [
        BulkRecipient(1, "040 200 0003", {"name": "P0"}),
        BulkRecipient(2, "x", None, ("A", "b")),
    ]
    request = [TEMPLATE, "1001", "s-1", False, True]
    old = [*request, [[r.row, r.address, dict(r.personalization or {}), *r.refusal] for r in rows]]
    expected = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()
    sent, as_typed = bulk_fingerprint(request, rows)
    assert (as_typed, sent != as_typed) == (expected, True)


def test_batch_status_needs_its_token(outbound: Outbound) -> None:
    accepted = bulk({"Recipients": people(GOOD[0])})
    batch_id = accepted.body["Id"]

    assert call_http("GetBulkStatus", "GET", route_params={"BatchId": batch_id}).status == 401
    forged = call_http(
        "GetBulkStatus", "GET", route_params={"BatchId": batch_id}, params={"token": "x.y"}
    )
    assert forged.status == 403


def test_a_refused_list_too_long_for_the_batch_row_keeps_its_count_and_whole_rows(
    outbound: Outbound,
) -> None:
    """500 rows of one number: 499 refused as repeats, more than the batch row's property
    holds. The list used to be cut mid-row, unreadable: the status said RefusedCount 0."""
    accepted = bulk({"Recipients": people(*[GOOD[0]] * 500)})
    assert accepted.status == 202, accepted.body
    assert accepted.body["RefusedCount"] == 499

    status = batch_status(accepted.headers["Location"], details=True)

    assert status.body["RefusedCount"] == 499
    kept = status.body["Refused"]
    assert 100 < len(kept) < 499
    assert kept == accepted.body["Refused"][: len(kept)]


def test_details_name_the_address_of_a_member_whose_command_is_kept_in_a_blob(
    outbound: Outbound,
) -> None:
    """A command over 200,000 UTF-16 units is kept in a blob, its record's command empty: the
    member's Address, read from that command, was missing."""
    from shared.messages import MessageStore
    from shared.messages._records import INLINE_COMMAND_CHARS, record_keys

    long = padding("x" * INLINE_COMMAND_CHARS)
    accepted = bulk({"Recipients": [{"Address": GOOD[0], "Personalization": long}]})
    assert accepted.status == 202, accepted.body

    [member] = batch_status(accepted.headers["Location"], details=True).body["Recipients"]

    stored = MessageStore.from_settings().table.get_entity(*record_keys(member["Id"]))
    assert stored.get("CommandBlob")  # the command is in the blob, not the record
    assert member["Address"] == GOOD[0]


def test_a_replay_with_the_same_key_lists_the_refused_rows_as_the_first_answer_did(
    outbound: Outbound,
) -> None:
    body = {"Recipients": people(GOOD[0], "not a number", GOOD[1])}
    first = bulk(body, **{"Idempotency-Key": "partial-1"})
    assert [r["row"] for r in first.body["Refused"]] == [2]

    again = bulk(body, **{"Idempotency-Key": "partial-1"})

    assert (again.status, again.body["Id"]) == (202, first.body["Id"])
    assert again.body["Refused"] == first.body["Refused"]


def test_a_replay_lists_every_refused_row_even_those_the_batch_row_has_no_room_for(
    outbound: Outbound,
) -> None:
    """More refused rows than the batch row keeps: a replay finds them again in its rows (the
    same rows: the key's fingerprint), the opted-out ones by their not being members."""
    import datetime as dt

    from shared.suppressions import SuppressionStore
    from tests.outbound.conftest import SERVICE

    opted_out = "+358404990001"  # (its own: the opt-out stays in the table)
    store = SuppressionStore.from_settings()
    store.add(SERVICE, opted_out, keyword="STOP", source="inbound", now=dt.datetime.now(dt.UTC))
    rows = people(GOOD[0], "not a number", *[GOOD[1]] * 600, opted_out, GOOD[3])
    first = bulk({"Recipients": rows}, **{"Idempotency-Key": "many-refused-1"})
    assert (first.status, first.body["RefusedCount"]) == (202, 601)
    kept = batch_status(first.headers["Location"], details=True).body["Refused"]
    assert len(kept) < 601  # the batch row keeps only the first ones

    again = bulk({"Recipients": rows}, **{"Idempotency-Key": "many-refused-1"})

    assert again.body["Refused"] == first.body["Refused"]
    assert again.body["Refused"][-1]["message"] == f"This recipient opted out of service {SERVICE}."
    store.remove(SERVICE, opted_out)


def test_a_bulk_send_of_non_ascii_text_is_stored_in_transactions_that_fit_and_sent(
    outbound: Outbound,
) -> None:
    """Thirty members of 60,000 "ä" in values (120 kB as UTF-8, 360 kB as the JSON the Tables
    SDK sends: each "ä" is "\\u00e4"). Sized by UTF-8, ~25 of them went in one ~9 MB
    transaction: refused (413), the caller answered 500, the batch row and its packs left
    orphaned."""
    recipients = people(*GOOD)
    for recipient in recipients:
        recipient["Personalization"].update(padding("ä" * 60_000))
    raw = json.dumps({**TEMPLATE, "Recipients": recipients}, ensure_ascii=False).encode()
    accepted = call_http("SendBulkMessages", "POST", body=raw)  # 3.6 MB: within the limit
    assert accepted.status == 202, accepted.body
    assert accepted.body["Accepted"] == 30

    outbound.drain(timeout=60)

    done = batch_status(accepted.headers["Location"])
    assert done.body["Counts"]["sent"] == 30
    assert sum(len(c["body"]["Recipients"]) for c in outbound.upstream()) == 30


def test_a_recipient_too_long_once_filled_in_is_refused_naming_it_and_nothing_is_queued(
    outbound: Outbound,
) -> None:
    from shared.outbound import MAX_CONTENT_CHARS

    recipients = people(*GOOD[:3])
    recipients[2]["Personalization"]["name"] = "n" * MAX_CONTENT_CHARS  # fits alone, not filled in

    answer = bulk({"Recipients": recipients})

    assert answer.status == 400, answer.body
    assert [e["field"] for e in answer.body["errors"]] == ["Recipients[2].Personalization"]
    recipients[2]["Personalization"]["name"] = "Ada"
    recipients[1]["Personalization"]["code"] = "c" * (MAX_CONTENT_CHARS + 1)
    answer = bulk({"Recipients": recipients})
    assert answer.status == 400, answer.body
    assert [e["field"] for e in answer.body["errors"]] == ["Recipients[1].Personalization.code"]
    assert outbound.queued() == 0
