"""Delivery reports: our DLR URL in every send, a monotonic per-recipient state, events, and the
caller's own DlrUrl called after ours."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from shared import names
from shared.callback_urls import delivery_report_url
from shared.inbound import DELIVERY_REPORTED, DispatchOutcome, _dispatch, parse_report
from shared.inbound._dlr_forward import DlrForwarder
from shared.messages import RecipientStatus
from shared.outbound import parse_outbound_message
from shared.outbound._records import with_delivery_report_url
from shared.settings import get_settings
from shared.signing import TokenPurpose, sign
from shared.storage import queue_client
from tests.fixtures.sandbox import CallbackReceiver
from tests.inbound.conftest import CUSTOMER, ONE_WAY, SECRET, Inbound
from tests.inbound.test_webhook import storage_requests

__all__ = ["storage_requests"]  # a fixture

DELIVERED = "+358400000001"
UNDELIVERABLE = "+358400000003"
OTHER = "+358401112233"


def send(env: Inbound, *addresses: str, **extra: Any) -> str:
    body = {
        "Sender": "Sandbox",
        "Content": "Hello",
        "Recipients": [{"Address": a} for a in addresses],
        **extra,
    }
    answer = env.call(
        "SendMessage",
        "POST",
        headers={"Customer-Id": CUSTOMER, "Service-Id": ONE_WAY},
        body=body,
    )
    assert answer.status == 202, answer.body
    env.run_queue(names.OUTBOUND_QUEUE, "OutboundSender")
    return str(answer.body["Id"])


def status(env: Inbound, message_id: str) -> dict[str, Any]:
    from shared.outbound._service import SendService

    url = SendService(get_settings()).status_url(message_id)
    answer = env.call(
        "GetMessageStatus",
        "GET",
        route_params={"MessageId": message_id},
        params=dict(parse_qsl(urlsplit(url).query)),
    )
    assert answer.status == 200, answer.body
    result: dict[str, Any] = answer.body
    return result


def report(env: Inbound, message_id: str, token: str | None = "valid", **params: str) -> Any:
    query = dict(params)
    if token == "valid":
        query["token"] = dict(
            parse_qsl(urlsplit(delivery_report_url(get_settings(), message_id)).query)
        )["token"]
    elif token is not None:
        query["token"] = token
    return env.call("DeliveryReport", "GET", route_params={"MessageId": message_id}, params=query)


def delivery_events(env: Inbound) -> list[dict[str, Any]]:
    return [e for e in env.read(names.EVENTS_QUEUE) if e["type"] == DELIVERY_REPORTED]


def wait_for_status(env: Inbound, message_id: str, wanted: list[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        doc = status(env, message_id)
        if [r.get("Status") for r in doc["Recipients"]] == wanted or time.monotonic() > deadline:
            return doc
        time.sleep(0.05)


def test_sandbox_delivery_reports_move_recipients_to_their_final_state(
    served: Inbound, callback_receiver: CallbackReceiver
) -> None:
    own = f"{callback_receiver.url}/mine?ref=42#top"  # (the parameters go in the query)
    message_id = send(served, DELIVERED, UNDELIVERABLE, DlrUrl=own)
    [sent] = [
        r for r in served.sandbox.state.snapshot("requests") if r["operationId"] == "SendMessage"
    ]
    assert f"/api/callbacks/dlr/{message_id}?token=" in sent["body"]["DlrUrl"]

    doc = wait_for_status(served, message_id, ["delivered", "undelivered"])
    assert [r["Status"] for r in doc["Recipients"]] == ["delivered", "undelivered"]
    # A report advances the status just before its event and its forward: wait for both forwards.
    deadline = time.monotonic() + 5
    while served.count(names.DLR_FORWARD_QUEUE) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    events = delivery_events(served)
    assert sorted(e["data"]["status"] for e in events) == ["delivered", "undelivered"]
    assert {e["subject"] for e in events} == {message_id}
    assert all(e["data"]["raw"]["statusCode"] in ("1", "2") for e in events)

    # The caller's own DlrUrl got each report after ours, from the forward queue, query kept.
    assert callback_receiver.calls == []
    assert served.run_queue(names.DLR_FORWARD_QUEUE, "DlrForwarder") == 2
    calls = callback_receiver.wait_for(2)
    assert {c.query["ref"] for c in calls} == {"42"}
    assert sorted(c.query["status"] for c in calls) == ["delivered", "failed"]
    assert all("token" not in c.query for c in calls)


def test_a_dlr_forward_finding_no_callback_slot_is_put_back_unattempted(
    served: Inbound, callback_receiver: CallbackReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forwarder takes a callback slot as the dispatcher does (inbound.md): none free, the
    forward is put back, no call made and no attempt spent; with one free, it is delivered."""
    monkeypatch.setenv("PYTHON_THREADPOOL_THREAD_COUNT", "2")  # one slot
    _dispatch._slots.cache_clear()
    message_id = send(served, DELIVERED, DlrUrl=f"{callback_receiver.url}/mine")
    wait_for_status(served, message_id, ["delivered"])
    deadline = time.monotonic() + 5
    while served.count(names.DLR_FORWARD_QUEUE) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    [taken] = queue_client(names.DLR_FORWARD_QUEUE).receive_messages(visibility_timeout=60)
    slots = _dispatch._slots()
    assert slots.count == 1
    assert slots.take("elsewhere.example")  # another host's call holds the one slot
    try:
        busy = DlrForwarder.from_settings().process(taken.content)
    finally:
        slots.give("elsewhere.example")

    assert (busy.outcome, busy.status) == (DispatchOutcome.RETRY_SCHEDULED, None)
    assert "no free callback slot" in (busy.detail or "")
    assert callback_receiver.calls == []
    assert DlrForwarder.from_settings().process(taken.content).outcome is DispatchOutcome.DELIVERED
    assert len(callback_receiver.wait_for(1)) == 1
    _dispatch._slots.cache_clear()


def test_late_sent_after_delivered_stays_delivered_and_duplicates_are_ignored(
    inbound: Inbound,
) -> None:
    message_id = send(inbound, DELIVERED)
    delivered = report(inbound, message_id, recipient=DELIVERED, status="delivered", statusCode="1")
    assert delivered.status == 200
    assert delivered.body == {"status": "recorded", "recipientStatus": "delivered"}
    late = report(inbound, message_id, recipient=DELIVERED, status="sent")
    assert late.body == {"status": "recorded", "recipientStatus": "delivered"}
    again = report(inbound, message_id, recipient=DELIVERED, status="DELIVRD")
    assert again.body["status"] == "duplicate"
    assert [r["Status"] for r in status(inbound, message_id)["Recipients"]] == ["delivered"]
    assert len(delivery_events(inbound)) == 1
    assert len(inbound.rows(names.DELIVERY_REPORTS_TABLE)) == 2  # delivered, sent


def test_reports_are_deduplicated_per_recipient_and_status_not_per_message(
    inbound: Inbound,
) -> None:
    message_id = send(inbound, DELIVERED, OTHER)
    assert (
        report(inbound, message_id, recipient=DELIVERED, status="sent").body["status"] == "recorded"
    )
    assert report(inbound, message_id, recipient=OTHER, status="sent").body["status"] == "recorded"
    assert report(inbound, message_id, recipient=OTHER, stat="DELIVRD").body["status"] == "recorded"
    assert [r["Status"] for r in status(inbound, message_id)["Recipients"]] == ["sent", "delivered"]
    # A sent report on a sent message changes nothing shown, but is the operator's acceptance:
    # its event is sent after sent (docs/inbound.md), once per recipient.
    moves = [(e["data"]["previousStatus"], e["data"]["status"]) for e in delivery_events(inbound)]
    assert moves == [("sent", "sent"), ("sent", "sent"), ("sent", "delivered")]


def test_an_unknown_status_with_an_error_code_of_1_is_never_read_as_delivered(
    inbound: Inbound,
) -> None:
    message_id = send(inbound, DELIVERED)
    unknown = report(inbound, message_id, recipient=DELIVERED, status="unknown", err="1")
    assert unknown.body["status"] == "recorded"
    assert [r["Status"] for r in status(inbound, message_id)["Recipients"]] == ["sent"]
    assert delivery_events(inbound) == []
    failed = report(inbound, message_id, recipient=DELIVERED, status="NotDelivered", errorCode="1")
    assert failed.body == {"status": "recorded", "recipientStatus": "undelivered"}
    assert [r["Status"] for r in status(inbound, message_id)["Recipients"]] == ["undelivered"]
    [event] = delivery_events(inbound)
    assert (event["data"]["status"], event["data"]["statusCode"]) == ("undelivered", "1")


def test_a_report_for_an_unknown_recipient_is_kept_but_changes_nothing(inbound: Inbound) -> None:
    message_id = send(inbound, DELIVERED, OTHER)
    answer = report(inbound, message_id, recipient="+358409999999", status="delivered")
    assert answer.body["status"] == "unmatched"
    assert [r["Status"] for r in status(inbound, message_id)["Recipients"]] == ["sent", "sent"]
    assert delivery_events(inbound) == []


@pytest.mark.parametrize(
    "token",
    [None, "v1.0.forged", sign(TokenPurpose.STATUS, "{id}", secrets=[SECRET]), "other-message"],
    ids=["missing", "forged", "status-purpose", "other-message"],
)
def test_forged_delivery_report_gets_401_and_leaves_no_trace(
    inbound: Inbound, token: str | None
) -> None:
    message_id = send(inbound, DELIVERED)
    if token == "other-message":
        token = sign(TokenPurpose.DLR, "another-id", secrets=[SECRET])
    answer = report(inbound, message_id, token=token, recipient=DELIVERED, status="delivered")
    assert (answer.status, answer.body["type"]) == (
        401,
        "urn:smartdialog-functions:problem:unauthorized",
    )
    assert inbound.rows(names.DELIVERY_REPORTS_TABLE) == []
    assert delivery_events(inbound) == []
    assert [r["Status"] for r in status(inbound, message_id)["Recipients"]] == ["sent"]


@pytest.mark.parametrize(
    ("query", "state"),
    [
        ({"status": "delivered"}, RecipientStatus.DELIVERED),
        ({"Status": "DELIVRD"}, RecipientStatus.DELIVERED),
        ({"stat": "UNDELIV"}, RecipientStatus.UNDELIVERED),
        ({"status": "failed", "statusCode": "2"}, RecipientStatus.UNDELIVERED),
        ({"state": "EXPIRED"}, RecipientStatus.UNDELIVERED),
        ({"status": "accepted"}, RecipientStatus.SENT),
        ({"dlr": "1"}, RecipientStatus.DELIVERED),
        ({"dlr": "16"}, RecipientStatus.UNDELIVERED),
        ({"dlr": "8"}, RecipientStatus.SENT),
        ({"status": "1"}, RecipientStatus.DELIVERED),
        ({"statusCode": "2"}, RecipientStatus.UNDELIVERED),
        ({"status": "delivered", "statusCode": "1"}, RecipientStatus.DELIVERED),
        ({"status": "NotDelivered", "errorCode": "1"}, RecipientStatus.UNDELIVERED),
        ({"status": "not delivered", "dlr": "1"}, RecipientStatus.UNDELIVERED),
        ({"status": "Delivery-OK"}, RecipientStatus.DELIVERED),
        ({"status": "unknown", "err": "1"}, None),
        # A word we do not know: the event number decides, if there is one.
        ({"status": "weird", "statusCode": "1"}, RecipientStatus.DELIVERED),
        ({"status": "DeliveredToTerminal"}, RecipientStatus.DELIVERED),
        ({"status": "DeliveredToNetwork"}, RecipientStatus.SENT),
        ({"status": "DeliveryImpossible"}, RecipientStatus.UNDELIVERED),
        ({"status": "3", "dlr": "1"}, RecipientStatus.DELIVERED),
        ({"status": "weird", "errorCode": "1"}, None),
        ({"status": "-1"}, None),  # no event number of Kannel's
        ({"status": " 2 "}, RecipientStatus.UNDELIVERED),
        ({"errorCode": "1"}, None),  # an error code is no event number
        ({"code": "1"}, None),
        ({"status": "weird"}, None),
        ({}, None),
    ],
)
def test_report_status_vocabulary(query: dict[str, str], state: RecipientStatus) -> None:
    assert parse_report(query).state is state


def test_report_parameters_are_read_under_common_names_and_kept_raw() -> None:
    parsed = parse_report(
        {"token": "t", "MSISDN": "+358401234567", "RecipientId": "r-1", "MessageId": "m-9",
         "timestamp": "2026-01-31T12:00:00.123Z", "status": "delivered", "extra": "x"}
    )  # fmt: skip
    assert (parsed.recipient, parsed.recipient_id, parsed.upstream_message_id) == (
        "+358401234567", "r-1", "m-9",
    )  # fmt: skip
    assert parsed.reported_at is not None
    assert parsed.reported_at.tzinfo is not None
    assert "token" not in parsed.raw
    assert parsed.raw["extra"] == "x"


@pytest.mark.parametrize(
    ("timestamp", "reported_at"),
    [
        ("2025-06-01 10:00:00", dt.datetime(2025, 6, 1, 10, tzinfo=dt.UTC)),  # no zone: UTC
        ("2025-06-01T12:00:00+02:00", dt.datetime(2025, 6, 1, 10, tzinfo=dt.UTC)),
        ("2025-06-01T10:00Z", dt.datetime(2025, 6, 1, 10, tzinfo=dt.UTC)),
        ("2025-06-01t10:00:00z", dt.datetime(2025, 6, 1, 10, tzinfo=dt.UTC)),  # RFC 3339 allows
        # fromisoformat reads each of these as a midnight: none is a time of the report
        ("20250601", None),
        ("25060110", None),  # would be 2506-01-10
        ("2025-W22-1", None),  # would be 2025-05-26
        ("2025-06-01", None),
        ("2025-06-01T10", None),
        ("0001-01-01T00:00:00+01:00", None),  # before year 1 in UTC
    ],
)
def test_a_report_time_is_read_only_from_a_full_date_time(
    timestamp: str, reported_at: dt.datetime | None
) -> None:
    """Anything less than a date and a time leaves ``reported_at`` empty, so the report's
    arrival is its time (its ``reportedAt``, its event's ``time``)."""
    assert parse_report({"status": "delivered", "timestamp": timestamp}).reported_at == reported_at


def test_our_dlr_url_replaces_the_callers_only_in_what_is_sent(inbound: Inbound) -> None:
    command = parse_outbound_message(
        '{"operation": "SendMessage", "messageId": "m-1", "body": {"Sender": "S", "Content": "c",'
        ' "Recipients": [{"Address": "+358401234567"}], "DlrUrl": "https://mine.example/dlr"}}'
    )
    sent = with_delivery_report_url(command, get_settings())
    assert sent.body.DlrUrl.startswith("http://localhost:7071/api/callbacks/dlr/m-1?token=")  # type: ignore[union-attr]
    assert command.body.DlrUrl == "https://mine.example/dlr"  # type: ignore[union-attr]


def test_matching_reports_by_number_parses_each_stored_number_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A report without upstream's recipient id is matched by number to one of its message's
    recipients: each stored number is parsed once per process, not once per report."""
    import random

    from shared import phone
    from shared.inbound._dlr import DeliveryReport, _match
    from shared.messages import RecipientSlot

    numbers = [f"+35840{n:07d}" for n in random.sample(range(10**7), 300)]  # none parsed yet
    slots = [RecipientSlot("m", i, number, 1) for i, number in enumerate(numbers)]
    parse = phone.parse_phone_number
    parsed: list[str] = []

    def counted(text: str, *args: Any, **kwargs: Any) -> str:
        parsed.append(text)
        return parse(text, *args, **kwargs)

    monkeypatch.setattr(phone, "parse_phone_number", counted)
    reports = [numbers[-1], numbers[-2], numbers[-1][1:]]  # the last as written without its +
    for number in reports:
        report = DeliveryReport(RecipientStatus.DELIVERED, {}, recipient=number)
        assert _match(report, slots) is slots[numbers.index("+" + number.lstrip("+"))]

    assert len(parsed) <= len(numbers) + len(reports)


def test_the_callers_dlr_url_gets_every_distinct_report_once(inbound: Inbound) -> None:
    """A report per part (or a WhatsApp ``read`` after ``delivered``) repeats a recipient's
    state: our event comes once, but the caller's DlrUrl gets each report; SmartDialog's retry
    of one it already got is not passed on again."""
    message_id = send(inbound, DELIVERED, Content="x" * 400, DlrUrl="https://example.com/dlr")
    parts = [("1", "DELIVRD", {}), ("2", "UNDELIV", {"err": "34"}), ("3", "DELIVRD", {})]
    for part, stat, extra in parts:
        answer = report(inbound, message_id, recipient=DELIVERED, status=stat, part=part, **extra)
        assert answer.body == {"status": "recorded", "recipientStatus": "delivered"}
    again = report(inbound, message_id, recipient=DELIVERED, status="DELIVRD", part="3")
    assert again.body == {"status": "duplicate", "recipientStatus": "delivered"}

    forwarded = [f["params"] for f in inbound.read(names.DLR_FORWARD_QUEUE)]
    assert sorted((p["part"], p["status"]) for p in forwarded) == [
        ("1", "DELIVRD"), ("2", "UNDELIV"), ("3", "DELIVRD"),
    ]  # fmt: skip
    assert [e["data"]["status"] for e in delivery_events(inbound)] == ["delivered"]
    assert [r["Status"] for r in status(inbound, message_id)["Recipients"]] == ["delivered"]


def test_a_recipient_is_delivered_once_any_report_says_so(inbound: Inbound) -> None:
    """What docs/inbound.md promises for a message in parts: a first part's UNDELIV, then a
    DELIVRD, shows delivered (a state never moves back); each report is kept."""
    message_id = send(inbound, DELIVERED, Content="x" * 400)
    report(inbound, message_id, recipient=DELIVERED, status="UNDELIV", part="1", err="34")
    assert [r["Status"] for r in status(inbound, message_id)["Recipients"]] == ["undelivered"]
    report(inbound, message_id, recipient=DELIVERED, status="DELIVRD", part="2")
    assert [r["Status"] for r in status(inbound, message_id)["Recipients"]] == ["delivered"]
    events = [(e["data"]["previousStatus"], e["data"]["status"]) for e in delivery_events(inbound)]
    assert events == [("sent", "undelivered"), ("undelivered", "delivered")]
    assert len(inbound.rows(names.DELIVERY_REPORTS_TABLE)) == 2


def test_a_number_reported_without_its_plus_matches_its_recipient_and_never_two(
    inbound: Inbound,
) -> None:
    swedish = "+46701234567"
    message_id = send(inbound, OTHER, swedish)
    answer = report(inbound, message_id, recipient="46701234567", status="DELIVRD")
    assert answer.body == {"status": "recorded", "recipientStatus": "delivered"}
    national = report(inbound, message_id, recipient="0401112233", status="UNDELIV")  # OTHER
    assert national.body == {"status": "recorded", "recipientStatus": "undelivered"}
    assert [r["Status"] for r in status(inbound, message_id)["Recipients"]] == [
        "undelivered", "delivered",
    ]  # fmt: skip

    # 4540123456 is +3584540123456 read in Finland and +4540123456 (Denmark) as international:
    # with both among the recipients, the report is about neither.
    both = send(inbound, "+3584540123456", "+4540123456")
    ambiguous = report(inbound, both, recipient="4540123456", status="DELIVRD")
    assert ambiguous.body == {"status": "unmatched"}
    assert [r["Status"] for r in status(inbound, both)["Recipients"]] == ["sent", "sent"]


def test_previous_status_is_what_the_status_page_showed_also_after_a_crash(
    inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slot of a sent message still says pending (the sender records the outcome on the
    record only); the event says what GetMessageStatus showed: sent. A worker that died after
    moving the slot and before the event repeats it with the same id and payload."""
    from shared.inbound._http import _reports
    from tests.crash import crash_once

    message_id = send(inbound, DELIVERED)
    assert [r["Status"] for r in status(inbound, message_id)["Recipients"]] == ["sent"]
    events = _reports(get_settings())._events
    crash_once(monkeypatch, events, "send_message", "worker died before the event went out")
    assert report(inbound, message_id, recipient=DELIVERED, status="DELIVRD").status == 500
    assert [r["Status"] for r in status(inbound, message_id)["Recipients"]] == ["delivered"]
    retried = report(inbound, message_id, recipient=DELIVERED, status="DELIVRD")
    assert retried.body == {"status": "recorded", "recipientStatus": "delivered"}
    [event] = delivery_events(inbound)
    assert (event["data"]["previousStatus"], event["data"]["status"]) == ("sent", "delivered")


def test_a_report_costs_three_table_writes_with_or_without_a_dlr_url(
    inbound: Inbound, storage_requests: list[str]
) -> None:
    """Row, slot, mark: a send without a DlrUrl gets no forward row (and no second mark); with
    one, its forward row is written with the mark, in one call, not claimed on its own."""
    reports_table = names.DELIVERY_REPORTS_TABLE

    def writes() -> list[str]:
        tables = (reports_table, names.MESSAGES_TABLE, "$batch")
        return [
            r for r in storage_requests if r.split()[0] != "GET" and any(t in r for t in tables)
        ]

    plain = send(inbound, DELIVERED)
    storage_requests.clear()
    assert (
        report(inbound, plain, recipient=DELIVERED, status="DELIVRD").body["status"] == "recorded"
    )
    assert len(writes()) == 3, storage_requests
    assert len(inbound.rows(reports_table)) == 1  # no forward row

    own = send(inbound, DELIVERED, DlrUrl="https://example.com/dlr")
    storage_requests.clear()
    assert report(inbound, own, recipient=DELIVERED, status="DELIVRD").body["status"] == "recorded"
    assert len(writes()) == 3, storage_requests
    storage_requests.clear()
    repeat = report(inbound, own, recipient=DELIVERED, status="DELIVRD", part="2")
    assert repeat.body["status"] == "recorded"
    assert len(writes()) == 2, storage_requests  # its row's insert (a conflict), its forward row
    retried = report(inbound, own, recipient=DELIVERED, status="DELIVRD", part="2")
    assert retried.body["status"] == "duplicate"
    assert len(inbound.read(names.DLR_FORWARD_QUEUE)) == 2
    rows = {r["RowKey"]: r for r in inbound.rows(reports_table) if r["PartitionKey"] == own}
    assert len(rows) == 3
    assert all(r["Processed"] for r in rows.values())
    # The state row keeps the first report; the forward row keeps only the one it alone has.
    assert sum("Raw" in r for r in rows.values()) == 2


def test_a_pack_member_with_both_readings_of_a_bare_number_is_one_candidate() -> None:
    """4540123456 reads as +3584540123456 and +4540123456: a pack member sent to both is the one
    member the report is about (it was taken for two and answered 404, the report lost); two
    members, one reading each, are still two."""
    from shared.inbound._dlr import _by_number

    both = ["+4540123456", "+3584540123456"]
    assert _by_number("4540123456", [("m-1", [OTHER]), ("m-2", both)]) == "m-2"
    assert _by_number("4540123456", [("m-1", both[:1]), ("m-2", both[1:])]) is None


def test_a_delivered_stands_in_for_an_undelivered_whose_event_failed(
    inbound: Inbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part's UNDELIV moves the slot but its event cannot be sent (500); another part's
    DELIVRD comes before SmartDialog's retry. The delivered is then the recipient's first final
    state (previousStatus sent, so final: a "final states only" flow runs once), and the
    UNDELIV's retry, finding the slot delivered, sends nothing: no event points to one never
    sent."""
    from shared.inbound._http import _reports
    from tests.crash import crash_once

    message_id = send(inbound, DELIVERED, Content="x" * 400)
    events = _reports(get_settings())._events
    crash_once(monkeypatch, events, "send_message", "events queue unavailable")
    undeliv = {"recipient": DELIVERED, "status": "UNDELIV", "part": "1", "err": "34"}
    assert report(inbound, message_id, **undeliv).status == 500
    delivrd = report(inbound, message_id, recipient=DELIVERED, status="DELIVRD", part="2")
    assert delivrd.body == {"status": "recorded", "recipientStatus": "delivered"}
    retried = report(inbound, message_id, **undeliv)
    assert retried.body == {"status": "recorded", "recipientStatus": "delivered"}
    events_sent = [
        (e["data"]["previousStatus"], e["data"]["status"]) for e in delivery_events(inbound)
    ]
    assert events_sent == [("sent", "delivered")]
    assert [r["Status"] for r in status(inbound, message_id)["Recipients"]] == ["delivered"]


def test_a_report_naming_someone_else_is_unmatched_even_on_a_one_recipient_message(
    inbound: Inbound,
) -> None:
    """The only recipient of a message is taken for a report that names nobody; a report naming
    another number, or another recipient id than the one SmartDialog gave ours, is about someone
    else: stored (unmatched), nothing moved, no event. The same number written another way, or
    the recipient's own id, still matches."""
    message_id = send(inbound, DELIVERED)
    from shared.messages import MessageStore

    [slot] = MessageStore.from_settings(get_settings()).get_with_slots(message_id)[1]
    assert slot.upstream_recipient_id  # from the send's answer
    for who in ({"recipient": "+358409999999"}, {"recipientId": "someone-else"}):
        answer = report(inbound, message_id, status="delivered", **who)
        assert answer.body == {"status": "unmatched"}, who
    assert [r["Status"] for r in status(inbound, message_id)["Recipients"]] == ["sent"]
    assert delivery_events(inbound) == []

    national = report(inbound, message_id, recipient="0400000001", status="sent")
    assert national.body == {"status": "recorded", "recipientStatus": "sent"}
    by_id = report(inbound, message_id, recipientId=slot.upstream_recipient_id, status="UNDELIV")
    assert by_id.body == {"status": "recorded", "recipientStatus": "undelivered"}
    nobody = report(inbound, message_id, status="DELIVRD")
    assert nobody.body == {"status": "recorded", "recipientStatus": "delivered"}
