"""The dead-letter actions through the real functions, Azurite and the sandbox: list (filters,
paging), show, re-drive (once, never twice), purge; poison messages; bad input changes nothing."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest

from shared.deadletters import DeadLetterIndex, write_dead_letter
from shared.events import MESSAGE_FAILED, MESSAGE_REDRIVEN, MESSAGE_SENT
from shared.messages import MessageStatus, MessageStore
from shared.names import (
    INBOUND_DEAD_LETTER_QUEUE,
    INBOUND_DELIVERIES_QUEUE,
    OUTBOUND_DEAD_LETTER_QUEUE,
    OUTBOUND_QUEUE,
    poison_queue,
)
from shared.ops import keep_poison
from shared.storage import ensured_queue, queue_client
from tests.ops.conftest import Outbound, index_written_dead_letters, letter
from tests.outbound.conftest import DELIVERED, REJECTED, HttpAnswer, call_http, sms, status_of

EXPIRED = "2020-01-01T00:00:00Z"


def expired_send(ops: Outbound, message_id: str) -> str:
    """A send that fails as expired, its dead letter indexed; returns the dead letter's id."""
    ops.enqueue(
        {
            "operation": "SendMessage",
            "messageId": message_id,
            "validUntil": EXPIRED,
            "body": sms(DELIVERED),
        }
    )
    ops.drain()
    [text] = index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)
    assert json.loads(text)["error"]["code"] == "expired"
    return only_letter(ops)["id"]


def list_letters(**params: str) -> HttpAnswer:
    return call_http("ListDeadLetters", "GET", params=params)


def only_letter(ops: Outbound) -> dict[str, Any]:
    answer = list_letters()
    assert answer.status == 200, answer.body
    [item] = answer.body["value"]
    return item  # type: ignore[no-any-return]


def queue_texts(name: str) -> list[str]:
    return [str(m.content) for m in queue_client(name).peek_messages(max_messages=32)]


def test_a_dead_letter_is_indexed_with_its_reason_and_kept_until_handled(ops: Outbound) -> None:
    item = letter(messageId="m-1", error={"code": "expired", "title": "t"})
    sent = write_dead_letter(
        queue_client(OUTBOUND_DEAD_LETTER_QUEUE), item, queue_name=OUTBOUND_DEAD_LETTER_QUEUE
    )

    [listed] = list_letters().body["value"]
    assert (listed["reason"], listed["code"], listed["messageId"]) == ("failed", "expired", "m-1")
    assert listed["queue"] == OUTBOUND_DEAD_LETTER_QUEUE
    assert listed["sourceQueue"] == OUTBOUND_QUEUE
    [stored] = queue_client(OUTBOUND_DEAD_LETTER_QUEUE).peek_messages()
    assert stored.id == sent.id
    # time_to_live=-1: the service reports "never" as the end of year 9999.
    assert stored.expires_on is not None
    assert stored.expires_on.year == 9999
    shown = call_http("GetDeadLetter", "GET", route_params={"DeadLetterId": listed["id"]})
    assert shown.status == 200
    assert shown.body["text"] == item


def test_a_dead_letter_too_large_for_its_queue_is_refused_before_its_row_is_written(
    ops: Outbound,
) -> None:
    """The row went first, then the queue refused the letter: each retry of the host left one
    more row naming a letter that is on no queue."""
    item = letter(detail="Z" * 70_000)
    with pytest.raises(ValueError, match="does not fit a queue message"):
        write_dead_letter(
            queue_client(OUTBOUND_DEAD_LETTER_QUEUE), item, queue_name=OUTBOUND_DEAD_LETTER_QUEUE
        )

    assert list_letters().body["value"] == []
    assert queue_client(OUTBOUND_DEAD_LETTER_QUEUE).peek_messages() == []


@pytest.fixture(params=["azurite", "azure"])
def tables_as(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Pages as Azurite answers them, or as Azure may at a partition boundary (documented:
    "x-ms-continuation-NextRowKey might be null"): no next row key, which the SDK hands over as
    None. Found in review: the list refused its own token then (a 400), so paging stopped at
    the first queue's letters."""
    if request.param == "azure":
        from azure.data.tables._models import TableEntityPropertiesPaged

        extract, get_next = (
            TableEntityPropertiesPaged._extract_data_cb,
            TableEntityPropertiesPaged._get_next_cb,
        )
        first_rows: dict[str, str] = {}

        def at_a_boundary(self: Any, answer: Any) -> Any:
            token, rows = extract(self, answer)
            if token and rows and token["PartitionKey"] != rows[-1]["PartitionKey"]:
                first_rows[token["PartitionKey"]] = token["RowKey"]
                token = {"PartitionKey": token["PartitionKey"], "RowKey": None}
            return token, rows

        def from_the_partitions_start(self: Any, token: Any, **kwargs: Any) -> Any:
            if token and token.get("RowKey") is None and token["PartitionKey"] in first_rows:
                token = {**token, "RowKey": first_rows[token["PartitionKey"]]}  # as Azure does
            return get_next(self, token, **kwargs)

        monkeypatch.setattr(TableEntityPropertiesPaged, "_extract_data_cb", at_a_boundary)
        monkeypatch.setattr(TableEntityPropertiesPaged, "_get_next_cb", from_the_partitions_start)
    return str(request.param)


def test_list_filters_by_reason_queue_and_age_and_pages_with_a_continuation_token(
    ops: Outbound, tables_as: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    outbound_dl = queue_client(OUTBOUND_DEAD_LETTER_QUEUE)
    inbound_dl = queue_client(INBOUND_DEAD_LETTER_QUEUE)
    for age_hours, reason in ((5, "failed"), (4, "malformed"), (3, "failed"), (1, "failed")):
        write_dead_letter(
            outbound_dl,
            letter(reason=reason),
            queue_name=OUTBOUND_DEAD_LETTER_QUEUE,
            now=now - dt.timedelta(hours=age_hours),
        )
    write_dead_letter(
        inbound_dl, letter(reason="rejected"), queue_name=INBOUND_DEAD_LETTER_QUEUE, now=now
    )

    seen: list[dict[str, Any]] = []
    token: str | None = None
    pages = 0
    while True:
        params = {"top": "2"} | ({"continuationToken": token} if token else {})
        body = list_letters(**params).body
        assert len(body["value"]) <= 2
        seen += body["value"]
        pages += 1
        token = body.get("continuationToken")
        if not token:
            break
    assert pages >= 3
    assert len(seen) == 5
    assert len({s["id"] for s in seen}) == 5
    assert {s["queue"] for s in seen} == {OUTBOUND_DEAD_LETTER_QUEUE, INBOUND_DEAD_LETTER_QUEUE}

    assert {s["reason"] for s in list_letters(reason="failed").body["value"]} == {"failed"}
    assert len(list_letters(reason="failed").body["value"]) == 3
    old = list_letters(minAgeSeconds=str(2 * 3600)).body["value"]
    assert sorted(s["reason"] for s in old) == ["failed", "failed", "malformed"]
    recent = list_letters(maxAgeSeconds=str(2 * 3600)).body["value"]
    assert sorted(s["reason"] for s in recent) == ["failed", "rejected"]
    inbound = list_letters(queue=INBOUND_DEAD_LETTER_QUEUE).body["value"]
    assert [s["reason"] for s in inbound] == ["rejected"]


def test_a_token_whose_keys_azure_refuses_answers_400_naming_it(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token is not signed: one made up of keys the service never handed out is refused
    by Azure (400 InvalidInput; Azurite answers an empty page), a 400 naming the field."""
    import base64

    from azure.core.exceptions import HttpResponseError
    from azure.data.tables._models import TableEntityPropertiesPaged

    def as_azure(self: Any, token: Any, **kwargs: Any) -> Any:
        error = HttpResponseError(message="InvalidInput: the continuation keys are not valid")
        error.status_code = 400
        raise error

    monkeypatch.setattr(TableEntityPropertiesPaged, "_get_next_cb", as_azure)
    made_up = base64.urlsafe_b64encode(b'{"PartitionKey":"x","RowKey":"y"}').decode()
    answer = list_letters(continuationToken=made_up)
    assert answer.status == 400, answer.body
    assert [e["field"] for e in answer.body["errors"]] == ["continuationToken"]


def test_bad_filters_answer_400_naming_the_field(ops: Outbound) -> None:
    for params, field in (
        ({"queue": "smartdialog-outbound"}, "queue"),
        ({"continuationToken": "not-a-token"}, "continuationToken"),
        ({"top": "0"}, "top"),
        ({"minAgeSeconds": "-1"}, "minAgeSeconds"),
    ):
        answer = list_letters(**params)
        assert answer.status == 400, params
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert [e["field"] for e in answer.body["errors"]] == [field]


def test_redriving_a_failed_send_sends_it_once_with_its_original_id(ops: Outbound) -> None:
    letter_id = expired_send(ops, "ops-redrive-1")
    assert ops.upstream() == []

    answer = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    assert answer.status == 200, answer.body
    assert answer.body["outcome"] == "redriven"
    assert list_letters().body["value"] == []
    assert queue_texts(OUTBOUND_DEAD_LETTER_QUEUE) == []
    [redriven] = [e for e in ops.events() if e["type"] == MESSAGE_REDRIVEN]
    assert redriven["subject"] == "ops-redrive-1"
    assert redriven["data"]["previousError"]["code"] == "expired"

    ops.drain()
    [request] = ops.upstream()
    assert request["body"]["RequestId"] == "ops-redrive-1"
    record = MessageStore.from_settings().get("ops-redrive-1")
    assert record is not None
    assert record.status is MessageStatus.SENT


def test_redriving_the_letter_of_a_command_whose_id_another_message_has_leaves_that_one_alone(
    ops: Outbound,
) -> None:
    """A command put on the queue with the id of a message that exists (and failed) but with
    other content is dead-lettered without touching that message; re-driving its letter must
    not revive that message either (it would be queued again with no command on the queue)."""
    letter_id = expired_send(ops, "ops-taken")
    ops.enqueue({"operation": "SendMessage", "messageId": "ops-taken",
                 "body": sms(DELIVERED, content="Something else")})  # fmt: skip
    ops.drain()
    index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)
    [taken] = [item for item in list_letters().body["value"] if item["id"] != letter_id]

    answer = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": taken["id"]})
    assert answer.status == 200, answer.body
    ops.drain()

    record = MessageStore.from_settings().get("ops-taken")
    assert record is not None
    assert record.status is MessageStatus.FAILED
    assert record.failure is not None
    assert record.failure.code == "expired"
    assert ops.upstream() == []
    assert [e for e in ops.events() if e["type"] == MESSAGE_REDRIVEN] == []


def test_a_send_refused_for_an_opt_out_is_re_driven_only_once_the_recipient_opted_back_in(
    ops: Outbound,
) -> None:
    """Re-driving it (or every letter of reason failed) would send to a number that said STOP:
    while the opt-out stands the letter is kept with the reason, and nothing is sent; once the
    opt-out is removed, the re-drive sends it."""
    from shared.suppressions import SuppressionStore

    phone = "+358409998877"
    suppressions = SuppressionStore.from_settings()
    suppressions.add(
        "s-1001-oneway", phone, keyword="STOP", source="test", now=dt.datetime.now(dt.UTC)
    )
    ops.enqueue({"operation": "SendMessage", "messageId": "ops-opted-out", "body": sms(phone)})
    ops.drain()
    index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)
    letter_id = only_letter(ops)["id"]

    kept = call_http("RedriveDeadLetters", "POST", params={"reason": "failed"})

    assert kept.status == 200, kept.body
    assert (kept.body["redriven"], kept.body["kept"]) == (0, 1)
    assert "opts out" in kept.body["items"][0]["detail"]
    assert only_letter(ops)["id"] == letter_id  # the letter stays
    record = MessageStore.from_settings().get("ops-opted-out")
    assert record is not None
    assert record.status is MessageStatus.FAILED
    assert ops.upstream() == []

    assert suppressions.remove("s-1001-oneway", phone)  # START
    again = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    assert again.body["outcome"] == "redriven", again.body
    ops.drain()
    assert [r["body"]["Recipients"][0]["Address"] for r in ops.upstream()] == [phone]


def test_a_send_that_may_have_been_sent_is_re_driven_only_with_force(ops: Outbound) -> None:
    """SmartDialog accepted it, the answer was lost, and it gave up (outcome-unknown):
    ``RedriveDeadLetters?reason=failed``, as the runbook shows, must not send it a second time
    on its own. The letter is kept with the reason; ``force=true`` re-drives it."""
    from sandbox.faults import FaultKind, FaultPlan

    ops.configure(SEND_MAX_ATTEMPTS=1)
    ops.sandbox.app.faults.configure(FaultPlan(rate=1.0, kinds=(FaultKind.LOST_ANSWER,)))
    try:
        ops.enqueue(
            {"operation": "SendMessage", "messageId": "ops-unknown", "body": sms(DELIVERED)}
        )
        ops.drain()
    finally:
        ops.sandbox.app.faults.configure(FaultPlan())
    index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)
    letter_id = only_letter(ops)["id"]
    assert len(ops.upstream()) == 1

    kept = call_http("RedriveDeadLetters", "POST", params={"reason": "failed"})
    single = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    ops.drain()

    assert (kept.body["redriven"], kept.body["kept"]) == (0, 1), kept.body
    assert "may have been sent" in kept.body["items"][0]["detail"]
    assert single.body["outcome"] == "kept", single.body
    assert only_letter(ops)["id"] == letter_id
    assert len(ops.upstream()) == 1
    assert [e for e in ops.events() if e["type"] == MESSAGE_REDRIVEN] == []

    forced = call_http(
        "RedriveDeadLetter",
        "POST",
        route_params={"DeadLetterId": letter_id},
        params={"force": "true"},
    )
    ops.drain()
    assert forced.body["outcome"] == "redriven", forced.body
    record = MessageStore.from_settings().get("ops-unknown")
    assert record is not None
    assert record.status is MessageStatus.SENT
    assert record.duplicate  # the repeat of its RequestId, answered with the first answer


def test_redriving_a_letter_of_a_message_sent_meanwhile_sends_nothing(ops: Outbound) -> None:
    letter_id = expired_send(ops, "ops-redrive-2")
    entry = DeadLetterIndex.from_settings().get(letter_id)
    assert entry is not None
    # The crash window of the writer: the same dead letter written twice.
    write_dead_letter(
        queue_client(OUTBOUND_DEAD_LETTER_QUEUE), entry.text, queue_name=OUTBOUND_DEAD_LETTER_QUEUE
    )
    call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    ops.drain()
    assert len(ops.upstream()) == 1

    answer = call_http("RedriveDeadLetters", "POST", params={"reason": "failed"})
    assert answer.status == 200, answer.body
    assert (answer.body["redriven"], answer.body["skipped"]) == (0, 1)
    assert "sent already" in answer.body["items"][0]["detail"]
    ops.drain()
    assert len(ops.upstream()) == 1
    assert ops.queued(OUTBOUND_QUEUE) == 0
    assert list_letters().body["value"] == []


def test_purge_deletes_the_letter_even_when_its_pop_receipt_is_stale(ops: Outbound) -> None:
    queue = queue_client(OUTBOUND_DEAD_LETTER_QUEUE)
    write_dead_letter(queue, letter(messageId="a"), queue_name=OUTBOUND_DEAD_LETTER_QUEUE)
    write_dead_letter(queue, letter(messageId="b"), queue_name=OUTBOUND_DEAD_LETTER_QUEUE)
    # Someone received the messages (Storage Explorer's "dequeue"): the stored receipts are stale.
    for message in list(queue.receive_messages(visibility_timeout=30)):
        queue.update_message(message, content=message.content, visibility_timeout=0)
    first = next(i for i in list_letters().body["value"] if i["messageId"] == "a")

    answer = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": first["id"]})

    assert answer.status == 200
    assert answer.body["outcome"] == "purged"
    assert [json.loads(t)["messageId"] for t in queue_texts(OUTBOUND_DEAD_LETTER_QUEUE)] == ["b"]
    assert [i["messageId"] for i in list_letters().body["value"]] == ["b"]
    again = call_http("PurgeDeadLetter", "DELETE", route_params={"DeadLetterId": first["id"]})
    assert again.status == 404


def test_bulk_purge_needs_a_filter_and_then_purges_only_what_matches(ops: Outbound) -> None:
    queue = queue_client(OUTBOUND_DEAD_LETTER_QUEUE)
    for reason in ("failed", "malformed", "malformed"):
        write_dead_letter(queue, letter(reason=reason), queue_name=OUTBOUND_DEAD_LETTER_QUEUE)

    refused = call_http("PurgeDeadLetters", "POST")
    assert refused.status == 400
    assert [e["field"] for e in refused.body["errors"]] == ["reason"]
    assert len(list_letters().body["value"]) == 3

    answer = call_http("PurgeDeadLetters", "POST", params={"reason": "malformed"})
    assert (answer.body["purged"], answer.body["more"]) == (2, False)
    assert [i["reason"] for i in list_letters().body["value"]] == ["failed"]
    assert [json.loads(t)["reason"] for t in queue_texts(OUTBOUND_DEAD_LETTER_QUEUE)] == ["failed"]


def test_poison_messages_are_listed_with_their_dequeue_count_and_redriven_to_their_queue(
    ops: Outbound,
) -> None:
    poison = queue_client(poison_queue(OUTBOUND_QUEUE))
    text = json.dumps(
        {"operation": "SendMessage", "messageId": "ops-poison-1", "body": sms(DELIVERED)}
    )
    poison.send_message(text)  # as the host does: a fresh copy, its dequeue count 0

    [item] = list_letters(reason="poison").body["value"]
    assert (item["queue"], item["sourceQueue"]) == (poison_queue(OUTBOUND_QUEUE), OUTBOUND_QUEUE)
    assert item["dequeueCount"] == 5  # host.json's maxDequeueCount: what the host had tried
    assert item["detail"] == "the host gave up after 5 deliveries"
    assert item["messageId"] == "ops-poison-1"

    answer = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": item["id"]})
    assert answer.body["outcome"] == "redriven"
    assert queue_texts(poison_queue(OUTBOUND_QUEUE)) == []
    ops.drain()
    [request] = ops.upstream()
    assert request["body"]["RequestId"] == "ops-poison-1"


def test_an_inbound_delivery_is_redriven_with_all_its_attempts_again(ops: Outbound) -> None:
    delivery = {
        "service": "s",
        "subscriptionId": "sub",
        "event": {},
        "attempts": 8,
        "firstQueuedAt": "2026-01-01T00:00:00Z",
    }
    write_dead_letter(
        queue_client(INBOUND_DEAD_LETTER_QUEUE),
        json.dumps(
            {"reason": "attempts-exhausted", "detail": "x", "original": json.dumps(delivery)}
        ),
        queue_name=INBOUND_DEAD_LETTER_QUEUE,
    )
    deliveries = ensured_queue(INBOUND_DELIVERIES_QUEUE)
    deliveries.clear_messages()

    answer = call_http("RedriveDeadLetters", "POST", params={"queue": INBOUND_DEAD_LETTER_QUEUE})

    assert answer.body["redriven"] == 1
    [requeued] = [json.loads(t) for t in queue_texts(INBOUND_DELIVERIES_QUEUE)]
    assert requeued == {**delivery, "attempts": 0}
    deliveries.clear_messages()


class _QueueDown:
    def send_message(self, content: Any, **kwargs: Any) -> Any:
        raise ConnectionError("storage unreachable")


def test_a_letter_whose_queue_write_failed_is_still_listed_and_can_be_redriven(
    ops: Outbound,
) -> None:
    command = {"operation": "SendMessage", "messageId": "ops-lost-1", "body": sms(DELIVERED)}
    text = letter(messageId="ops-lost-1", original=json.dumps(command))

    with pytest.raises(ConnectionError):
        write_dead_letter(_QueueDown(), text, queue_name=OUTBOUND_DEAD_LETTER_QUEUE)

    [item] = list_letters().body["value"]
    answer = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": item["id"]})
    assert answer.body["outcome"] == "redriven"
    assert list_letters().body["value"] == []
    ops.drain()
    [request] = ops.upstream()
    assert request["body"]["RequestId"] == "ops-lost-1"


def test_poison_messages_are_kept_for_good_indexed_with_their_dequeue_count(
    ops: Outbound,
) -> None:
    poison = queue_client(poison_queue(OUTBOUND_QUEUE))
    text = json.dumps(
        {"operation": "SendMessage", "messageId": "ops-kept-1", "body": sms(DELIVERED)}
    )
    # As the host does: a fresh copy (dequeue count 0), the queue default of 7 days to live.
    poison.send_message(text)

    assert keep_poison() == 1
    assert keep_poison() == 0

    [stored] = poison.peek_messages()
    assert stored.content == text
    assert stored.expires_on is not None
    assert stored.expires_on.year == 9999
    [item] = list_letters().body["value"]
    assert (item["reason"], item["dequeueCount"], item["messageId"]) == ("poison", 5, "ops-kept-1")
    assert item["detail"] == "the host gave up after 5 deliveries"
    answer = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": item["id"]})
    assert answer.body["outcome"] == "redriven"
    assert poison.peek_messages() == []
    assert list_letters().body["value"] == []


def test_a_send_the_host_gave_up_on_fails_poisoned_and_is_re_driven_from_its_letter(
    ops: Outbound,
) -> None:
    """About 50 s of Table errors made every delivery of a send command raise and the host
    moved it to the poison queue: its record stayed queued, with no event and no dead-letter
    reason, and its status URL answered 202 for ever."""
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED))
    location, message_id = accepted.headers["Location"], accepted.body["Id"]
    sending = queue_client(OUTBOUND_QUEUE)
    [command] = list(sending.receive_messages())
    queue_client(poison_queue(OUTBOUND_QUEUE)).send_message(command.content)  # as the host does
    sending.delete_message(command)

    assert keep_poison() == 1
    failed = status_of(location)
    [item] = list_letters().body["value"]
    answer = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": item["id"]})
    record = MessageStore.from_settings().get(message_id)
    ops.drain()

    assert (failed.status, failed.body["code"]) == (422, "poisoned"), failed.body
    assert queue_texts(poison_queue(OUTBOUND_QUEUE)) == []  # its failure's letter holds it
    assert (item["reason"], item["code"], item["messageId"]) == ("failed", "poisoned", message_id)
    [event, redriven, sent] = ops.events()
    assert (event["type"], event["data"]["error"]["code"]) == (MESSAGE_FAILED, "poisoned")
    assert redriven["type"] == MESSAGE_REDRIVEN
    assert answer.body["outcome"] == "redriven", answer.body
    assert record is not None
    assert record.status is MessageStatus.QUEUED
    assert status_of(location).status == 200
    assert sent["type"] == MESSAGE_SENT
    assert len(ops.upstream()) == 1
    assert keep_poison() == 0


def test_a_poisoned_send_that_may_have_been_sent_fails_outcome_unknown_and_one_sent_is_kept(
    ops: Outbound,
) -> None:
    """A send whose worker stopped mid-call (it may have reached SmartDialog) must not be
    re-driven without force; one sent meanwhile stays a poison letter (its re-drive skips)."""
    store = MessageStore.from_settings()
    done = {"operation": "SendMessage", "messageId": "ops-sent", "body": sms(DELIVERED)}
    ops.enqueue(done)
    ops.drain()
    message_id = call_http("SendMessage", "POST", body=sms(DELIVERED)).body["Id"]
    sending = queue_client(OUTBOUND_QUEUE)
    [command] = list(sending.receive_messages())
    sending.delete_message(command)
    record = store.get(message_id)
    assert record is not None
    long_ago = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)  # its worker's lease, run out
    assert store.swap(record, status=MessageStatus.SENDING, attempts=1, lease_until=long_ago)
    poison = queue_client(poison_queue(OUTBOUND_QUEUE))
    for text in (command.content, json.dumps(done)):
        poison.send_message(text)  # as the host does

    assert keep_poison() == 2
    listed = {i["messageId"]: i for i in list_letters().body["value"]}
    kept = call_http(
        "RedriveDeadLetter", "POST", route_params={"DeadLetterId": listed[message_id]["id"]}
    )

    assert (listed[message_id]["reason"], listed[message_id]["code"]) == (
        "failed",
        "outcome-unknown",
    )
    assert listed["ops-sent"]["reason"] == "poison"
    assert kept.body["outcome"] == "kept", kept.body
    assert len(ops.upstream()) == 1


def test_a_letter_whose_own_dequeue_count_is_not_a_number_is_listed_and_shown(
    ops: Outbound,
) -> None:
    """An index entry without a count falls back to its letter's, which for a kept poison
    message is whatever the foreign message carried: never a 500 for the list or the page."""
    from tests.ops.test_page import get_page

    write_dead_letter(
        queue_client(poison_queue(OUTBOUND_QUEUE)),
        json.dumps({"dequeueCount": "x", "messageId": "odd-1"}),
        queue_name=poison_queue(OUTBOUND_QUEUE),
        index=DeadLetterIndex.from_settings(),
        reason="poison",
        detail="the host gave up",
        dequeue_count=0,
    )
    listed = list_letters()
    page = get_page()

    assert listed.status == 200, listed.body
    [item] = listed.body["value"]
    assert item["dequeueCount"] == 0
    assert page.status_code == 200


def test_an_id_longer_than_any_dead_letter_has_is_not_looked_up() -> None:
    """The page's form takes any id: one past Table storage's 1 KiB key limit would be refused
    by the service (a 400, then our 500), so it is not found without asking."""

    class NoTable:
        def get_entity(self, *_: object) -> None:
            raise AssertionError("looked up")

    index = DeadLetterIndex(NoTable())  # type: ignore[arg-type]
    assert index.get(OUTBOUND_DEAD_LETTER_QUEUE + "~" + "2" * 5000) is None


def test_a_bulk_re_drive_reaches_the_letters_behind_those_it_keeps(ops: Outbound) -> None:
    """Kept letters stay first in the index: counted against the limit, they made every call
    handle the same kept letters and never reach a sendable one behind them."""
    from shared.deadletters import DeadLetterFilter
    from shared.ops.actions import desk
    from shared.settings import get_settings
    from shared.suppressions import SuppressionStore

    phone = "+358409998866"
    SuppressionStore.from_settings().add(
        "s-1001-oneway", phone, keyword="STOP", source="test", now=dt.datetime.now(dt.UTC)
    )
    for n in range(3):
        ops.enqueue({"operation": "SendMessage", "messageId": f"ops-kept-{n}", "body": sms(phone)})
    ops.drain()
    ops.enqueue({"operation": "SendMessage", "messageId": "ops-behind",
                 "validUntil": EXPIRED, "body": sms(DELIVERED)})  # fmt: skip
    ops.drain()
    index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)

    done, _, _ = desk(get_settings()).redrive_matching(DeadLetterFilter(reason="failed"), limit=2)

    assert sorted(h.kind for h in done) == ["kept", "kept", "kept", "redriven"]
    ops.drain()
    [request] = ops.upstream()
    assert request["body"]["RequestId"] == "ops-behind"


def test_poison_messages_no_letter_could_hold_are_kept_too_and_one_that_fails_holds_up_none(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbound_poison = queue_client(poison_queue(OUTBOUND_QUEUE))
    deep = "[" * 30_000 + "]" * 30_000  # json.loads raises RecursionError
    long_id = json.dumps({"messageId": "x" * 40_000})  # a Table property holds 64 KiB
    failing = json.dumps({"messageId": "ops-fails-to-keep"})
    for text in (deep, long_id, failing):
        outbound_poison.send_message(text)
    ensured_queue(poison_queue(INBOUND_DELIVERIES_QUEUE)).send_message('{"attempts": 1}')
    assert list_letters().status == 200  # peeked before they are kept: no 500 either

    begin = DeadLetterIndex.begin

    def refusing(self: DeadLetterIndex, queue: str, text: str, **kwargs: Any) -> Any:
        if text == failing:
            raise ConnectionError("storage refused this one")
        return begin(self, queue, text, **kwargs)

    monkeypatch.setattr(DeadLetterIndex, "begin", refusing)
    assert keep_poison() == 3  # was a RecursionError, then a 400 from Table storage: none kept

    monkeypatch.setattr(DeadLetterIndex, "begin", begin)
    assert keep_poison() == 1  # the one that failed is still there, and kept now
    listed = list_letters().body["value"]
    assert len(listed) == 4
    assert {item.get("messageId") for item in listed} == {None, "ops-fails-to-keep"}


def test_a_kept_poison_message_is_redriven_as_it_came_whatever_fields_it_has(
    ops: Outbound,
) -> None:
    text = json.dumps({"original": "not the message", "originalBlob": "kind/none"})
    ensured_queue(poison_queue(INBOUND_DELIVERIES_QUEUE)).send_message(text)
    assert keep_poison() == 1

    [item] = list_letters().body["value"]
    shown = call_http("GetDeadLetter", "GET", route_params={"DeadLetterId": item["id"]})
    assert shown.body["original"] == text
    answer = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": item["id"]})
    assert answer.body["outcome"] == "redriven", answer.body
    assert queue_texts(INBOUND_DELIVERIES_QUEUE) == [text]


def test_a_poisoned_command_that_names_no_message_is_re_driven_only_with_force(
    ops: Outbound,
) -> None:
    """Without messageId or RequestId, the sender derives a send's id from its queue message;
    the host's poison copy is another queue message. Had the host given up after the send,
    a re-drive would have sent it again as a new message."""
    text = json.dumps({"operation": "SendMessage", "body": sms(DELIVERED)})
    ops.enqueue(text)
    ops.drain()
    assert len(ops.upstream()) == 1
    ensured_queue(poison_queue(OUTBOUND_QUEUE)).send_message(text)  # as the host poisons one

    [item] = list_letters().body["value"]
    kept = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": item["id"]})
    ops.drain()
    assert kept.body["outcome"] == "kept", kept.body
    assert "names no message" in kept.body["detail"]
    assert len(ops.upstream()) == 1

    forced = call_http(
        "RedriveDeadLetter",
        "POST",
        route_params={"DeadLetterId": item["id"]},
        params={"force": "true"},
    )
    ops.drain()
    assert forced.body["outcome"] == "redriven", forced.body
    assert len(ops.upstream()) == 2  # the operator's call: as a new message


def test_a_failed_questions_status_url_keeps_the_question_shape_once_its_send_is_redriven(
    ops: Outbound,
) -> None:
    """Found in review: a question ended ``failed`` answers its send's problem; once an
    operator re-drove that send, its status URL answered the send's 202 without Location or
    Retry-After, then its 200 in the SentDoc shape, with no question fields. It stays the
    question's final answer: 200, Status failed."""
    body = {"Sender": "Clinic", "Content": "Reply YES or NO", "Recipient": REJECTED}
    route = {"Service": "s-1001-twoway"}  # its replies come through our webhook
    assert call_http("RegisterInboundWebhook", "POST", route_params=route).status == 201
    asked = call_http(
        "SendMessageAndWaitForReply", "POST", body=body, headers={"Service-Id": "s-1001-twoway"}
    )
    assert asked.status == 202, asked.body
    ops.drain()
    location = asked.headers["Location"]
    parts = urlsplit(location)
    question_id = unquote(parts.path.rsplit("/", 1)[-1])

    def poll() -> HttpAnswer:
        return call_http("GetQuestionStatus", "GET", route_params={"QuestionId": question_id},
                         params=dict(parse_qsl(parts.query)))  # fmt: skip

    failed = poll()
    assert (failed.status, failed.body["questionId"]) == (422, question_id), failed.body
    index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)
    letter_id = only_letter(ops)["id"]
    redriven = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})
    assert redriven.body["outcome"] == "redriven", redriven.body

    answer = poll()

    assert answer.status == 200, answer.body
    assert (answer.body["QuestionId"], answer.body["Status"]) == (question_id, "failed")


def test_the_list_and_bulk_actions_filter_by_error_code(
    ops: Outbound,
) -> None:
    """The runbook says: re-drive `expired` letters, purge `upstream-rejected` ones. The list
    shows each letter's `code`, but the bulk actions could not filter by it, and `code=` (the
    Functions host's key parameter, exempt from the unknown-parameter check) was ignored: a
    purge "of the rejected" purged the expired too (found in review). `errorCode` filters."""
    queue = queue_client(OUTBOUND_DEAD_LETTER_QUEUE)
    for code in ("expired", "upstream-rejected", "upstream-rejected"):
        error = {"code": code, "title": code}
        write_dead_letter(queue, letter(error=error), queue_name=OUTBOUND_DEAD_LETTER_QUEUE)
    poison = queue_client(poison_queue(OUTBOUND_QUEUE))
    poison.send_message(json.dumps({"operation": "SendMessage", "messageId": "p-1"}))

    listed = list_letters(errorCode="upstream-rejected").body["value"]
    assert [i["code"] for i in listed] == ["upstream-rejected", "upstream-rejected"]
    answer = call_http("PurgeDeadLetters", "POST", params={"errorCode": "upstream-rejected"})

    assert (answer.body["purged"], answer.body["more"]) == (2, False)
    left = list_letters().body["value"]
    assert sorted((i["reason"], i.get("code")) for i in left) == [
        ("failed", "expired"),
        ("poison", None),
    ]
    refused = call_http("PurgeDeadLetters", "POST", params={"errorCode": "Expired!"})
    assert refused.status == 400
    assert [e["field"] for e in refused.body["errors"]] == ["errorCode"]
