"""Values a flow writes into the send actions (the certified connector's fields), read as the
flow meant them or refused naming the field: through the real functions, Azurite and the
sandbox, and on the queue for commands put there directly."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from shared.outbound import parse_queue_message
from shared.outbound._records import command_text
from tests.outbound.conftest import (
    DELIVERED,
    REPLY_SERVICE,
    HttpAnswer,
    Outbound,
    call_http,
    sms,
)

NOT_A_DATE_TIME = [
    "20250601",  # pydantic alone: a Unix time, 1970-08-23T09:10:01Z
    "202506011000",  # 1976
    "1717236000",
    1717236000,
    "2025-06-01",  # a date alone: midnight, without a zone
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC (found in review: sent upstream)
    "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
    "12/24/2025 10:00",
]
BULK_TEMPLATE = {"Sender": "Sandbox", "Content": "Hi $(name)"}


def template_send(**extra: Any) -> HttpAnswer:
    body = {"TemplateName": "welcome", "Recipients": [{"Address": DELIVERED}], **extra}
    return call_http("SendWhatsappTemplateMessage", "POST", body=body)


def bulk_json(**extra: Any) -> HttpAnswer:
    body = {**BULK_TEMPLATE, "Recipients": [{"Address": DELIVERED}], **extra}
    return call_http("SendBulkMessages", "POST", body=body)


def bulk_csv(**query: str) -> HttpAnswer:
    return call_http(
        "SendBulkMessages", "POST", params={**BULK_TEMPLATE, **query},
        headers={"Content-Type": "text/csv"}, body=f"Address,name\n{DELIVERED},Ada\n".encode(),
    )  # fmt: skip


def refused_fields(answer: HttpAnswer) -> list[str]:
    assert answer.status == 400, answer.body
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    return [e["field"] for e in answer.body["errors"]]


@pytest.mark.parametrize("value", NOT_A_DATE_TIME)
def test_a_send_date_time_that_is_not_an_iso_date_time_is_refused_naming_it(
    outbound: Outbound, value: Any
) -> None:
    single = call_http("SendMessage", "POST", body=sms(DELIVERED, SendDateTime=value))
    assert refused_fields(single) == ["SendDateTime"]
    assert refused_fields(template_send(SendDateTime=value)) == ["SendDateTime"]
    assert refused_fields(bulk_json(SendDateTime=value)) == ["SendDateTime"]
    assert outbound.queued() == 0


def test_a_csv_upload_with_a_digit_send_date_time_is_refused_not_sent_in_1970(
    outbound: Outbound,
) -> None:
    assert refused_fields(bulk_csv(SendDateTime="20250601")) == ["SendDateTime"]
    assert outbound.queued() == 0


@pytest.mark.parametrize(
    "value", ["2030-06-01T10:00:00+03:00", "2030-06-01T10:00:00Z", "2030-06-01T10:00:00"]
)
def test_an_iso_send_date_time_goes_upstream_as_given_zone_or_none(
    outbound: Outbound, value: str
) -> None:
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED, SendDateTime=value))
    assert accepted.status == 202, accepted.body
    outbound.drain()
    [sent] = outbound.upstream()
    assert dt.datetime.fromisoformat(sent["body"]["SendDateTime"]) == dt.datetime.fromisoformat(
        value
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("body.SendDateTime", "20250601"),
        ("body.SendDateTime", "2025-06-01"),
        ("body.SendDateTime", 1717236000),
        ("validUntil", "1717236000"),
        ("validUntil", "2099-12-31"),
    ],
)
def test_a_queued_command_with_a_time_that_is_not_iso_is_dead_lettered_not_misread(
    outbound: Outbound, field: str, value: Any
) -> None:
    command: dict[str, Any] = {"operation": "SendMessage", "body": sms(DELIVERED)}
    where = command["body"] if field.startswith("body.") else command
    where[field.removeprefix("body.")] = value
    outbound.enqueue(command)
    outbound.drain()

    [letter] = outbound.dead_letters()
    assert letter["reason"] == "malformed"
    assert [e["field"] for e in letter["errors"]] == [f"SendMessage.{field}"]
    assert outbound.upstream() == []


@pytest.mark.parametrize(
    "when",
    [
        dt.datetime(2030, 6, 1, 10, 0, tzinfo=dt.UTC),
        dt.datetime(2030, 6, 1, 10, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-9.5))),
        dt.datetime(2030, 6, 1, 10, 0),  # no zone: kept without one
        dt.datetime(1601, 1, 1, tzinfo=dt.UTC),
        dt.datetime.max.replace(tzinfo=dt.UTC),
    ],
)
def test_a_command_our_code_wrote_reads_back_with_the_same_times(when: dt.datetime) -> None:
    aware = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    command = parse_queue_message(
        json.dumps(
            {"operation": "SendMessage", "messageId": "m-1", "customerId": "1001",
             "serviceId": "s-1001-oneway", "validUntil": aware.isoformat(),
             "body": {**sms(DELIVERED), "SendDateTime": when.isoformat()}}
        )
    )  # fmt: skip
    again = parse_queue_message(command_text(command))  # type: ignore[arg-type]
    assert again == command
    assert again.body.SendDateTime == when  # type: ignore[union-attr]
    assert again.validUntil == aware  # type: ignore[union-attr]


#: The optional fields the connector says to leave empty, as the classic designer writes an
#: empty dynamic value.
LEFT_EMPTY = {"SendDateTime": "", "RequestId": "", "DlrUrl": "", "AttachmentUri": ""}


def test_empty_optional_fields_of_a_send_read_as_left_out(outbound: Outbound) -> None:
    single = call_http("SendMessage", "POST", body=sms(DELIVERED, **LEFT_EMPTY))
    template = template_send(**{**LEFT_EMPTY, "SendDateTime": " "})
    assert (single.status, template.status) == (202, 202), (single.body, template.body)

    outbound.drain()

    for operation, answer in (("SendMessage", single), ("SendWhatsappTemplateMessage", template)):
        [sent] = outbound.upstream(operation)
        assert "SendDateTime" not in sent["body"]
        assert "AttachmentUri" not in sent["body"]
        assert sent["body"]["RequestId"] == answer.body["Id"]  # ours, as when left out
        assert sent["body"]["DlrUrl"].startswith("http://localhost:7071/api/callbacks/dlr/")


def test_an_empty_request_id_is_no_shared_key_each_send_is_its_own(outbound: Outbound) -> None:
    first = call_http("SendMessage", "POST", body=sms(DELIVERED, RequestId=""))
    second = call_http("SendMessage", "POST", body=sms(DELIVERED, RequestId=""))
    blank = call_http("SendMessage", "POST", body=sms(DELIVERED, RequestId="  "))

    assert {first.status, second.status, blank.status} == {202}
    assert len({first.body["Id"], second.body["Id"], blank.body["Id"]}) == 3
    outbound.drain()
    assert len({s["body"]["RequestId"] for s in outbound.upstream()}) == 3


def test_empty_optional_fields_of_a_bulk_send_read_as_left_out(outbound: Outbound) -> None:
    empty = {k: v for k, v in LEFT_EMPTY.items() if k != "RequestId"}  # a bulk send has none
    as_json = bulk_json(**empty)
    as_csv = bulk_csv(SendDateTime="  ", DlrUrl=" ", AttachmentUri=" ")
    assert (as_json.status, as_csv.status) == (202, 202), (as_json.body, as_csv.body)

    outbound.drain()

    calls = outbound.upstream()
    assert calls
    assert not [c for c in calls if {"SendDateTime", "AttachmentUri"} & c["body"].keys()]


ATTACHMENT = "https://example.com/x.png"


@pytest.mark.parametrize("protocol", [None, "", "SMS"])
def test_an_attachment_on_an_sms_send_is_refused_naming_attachment_uri_on_every_route(
    outbound: Outbound, protocol: str | None
) -> None:
    """docs/actions.md, "Stricter input": the 400 names `AttachmentUri` (it named `body`)."""
    given = {"AttachmentUri": ATTACHMENT, **({} if protocol is None else {"Protocol": protocol})}
    single = call_http("SendMessage", "POST", body=sms(DELIVERED, **given))
    reply = call_http(
        "SendReplyMessage", "POST", route_params={"ParentMessageId": "parent-1"},
        headers={"Service-Id": REPLY_SERVICE}, body=sms(DELIVERED, **given),
    )  # fmt: skip
    for answer in (single, reply, bulk_json(**given), bulk_csv(**given)):
        assert refused_fields(answer) == ["AttachmentUri"]
        assert "WhatsApp" in answer.body["errors"][0]["message"]
    assert outbound.queued() == 0


def test_an_attachment_on_a_whatsapp_send_is_taken_on_every_route(outbound: Outbound) -> None:
    given = {"AttachmentUri": ATTACHMENT, "Protocol": "WhatsApp"}
    single = call_http("SendMessage", "POST", body=sms(DELIVERED, **given))
    assert single.status == 202, single.body
    assert bulk_json(**given).status == 202
    assert bulk_csv(**given).status == 202


@pytest.mark.parametrize(
    "value", ["https://exa mple.com/x", "https://example.com/a\u0001b", "https://example.com:0x/"]
)
def test_an_attachment_uri_that_is_no_url_is_refused_naming_it_and_never_sent(
    outbound: Outbound, value: str
) -> None:
    assert refused_fields(template_send(AttachmentUri=value)) == ["AttachmentUri"]
    whatsapp = sms(DELIVERED, Protocol="WhatsApp", AttachmentUri=value)
    assert refused_fields(call_http("SendMessage", "POST", body=whatsapp)) == ["AttachmentUri"]
    assert outbound.queued() == 0


def test_an_attachment_uri_with_a_non_ascii_or_encoded_path_goes_upstream_as_given(
    outbound: Outbound,
) -> None:
    value = "https://example.com/kuvä%201.png"
    assert template_send(AttachmentUri=value).status == 202
    outbound.drain()
    [sent] = outbound.upstream("SendWhatsappTemplateMessage")
    assert sent["body"]["AttachmentUri"] == value


def test_a_queued_command_with_empty_optional_fields_is_sent_as_without_them(
    outbound: Outbound,
) -> None:
    outbound.enqueue({"operation": "SendMessage", "body": sms(DELIVERED, **LEFT_EMPTY)})
    outbound.enqueue(
        {"operation": "SendWhatsappTemplateMessage",
         "body": {"TemplateName": "welcome", "Recipients": [{"Address": DELIVERED}],
                  **LEFT_EMPTY}}
    )  # fmt: skip
    outbound.drain()

    assert outbound.dead_letters() == []
    for operation in ("SendMessage", "SendWhatsappTemplateMessage"):
        [sent] = outbound.upstream(operation)
        assert not {"SendDateTime", "AttachmentUri"} & sent["body"].keys()
        assert sent["body"]["RequestId"]
        assert sent["body"]["DlrUrl"].startswith("http://localhost:7071/api/callbacks/dlr/")


def recipient(personalization: Any) -> dict[str, Any]:
    return {"Address": DELIVERED, "Personalization": personalization}


def test_a_null_placeholder_value_is_sent_as_empty_text(outbound: Outbound) -> None:
    body = {**sms(), "Recipients": [recipient({"name": None, "code": 7})]}
    accepted = call_http("SendMessage", "POST", body=body)
    assert accepted.status == 202, accepted.body
    outbound.enqueue({"operation": "SendMessage", "body": body})  # likewise on the queue

    outbound.drain()

    assert outbound.dead_letters() == []
    sent = [s["body"]["Recipients"][0]["Personalization"] for s in outbound.upstream()]
    assert sent == [{"name": "", "code": 7}] * 2


@pytest.mark.parametrize("value", [{"first": "Ada"}, ["Ada"]])
def test_an_object_or_list_as_a_placeholder_value_is_one_error_on_that_placeholder(
    outbound: Outbound, value: Any
) -> None:
    body = {**sms(), "Recipients": [recipient({"name": value})]}
    for answer in (call_http("SendMessage", "POST", body=body), bulk_json(**body)):
        assert answer.status == 400, answer.body
        [error] = answer.body["errors"]
        assert error["field"] == "Recipients[0].Personalization.name"
        assert "text, a finite number or a boolean" in error["message"]
    assert outbound.queued() == 0
