"""The send actions end to end: 202 + Location -> queue -> sender -> status 200, against
Azurite and the sandbox, through the app's real HTTP and queue-trigger functions."""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from shared.clock import ManualClock, utcnow
from shared.messages import MessageRecord, MessageStatus, MessageStore, idempotency_key_hash
from shared.names import IDEMPOTENCY_TABLE
from shared.settings import get_settings
from shared.suppressions import SuppressionStore
from tests.crash import crash_once
from tests.outbound.conftest import (
    CUSTOMER,
    DELIVERED,
    REJECTED,
    REPLY_SERVICE,
    SECRET,
    SERVICE,
    Outbound,
    call_http,
    sms,
    status_of,
)


def post(body: dict[str, object], **headers: str) -> object:
    return call_http("SendMessage", "POST", body=body, headers=headers)


def test_send_answers_202_and_the_status_url_ends_200_with_the_sandbox_message_id(
    outbound: Outbound,
) -> None:
    accepted = call_http("SendMessage", "POST", body=sms("040 0000001"))

    assert accepted.status == 202
    location = accepted.headers["Location"]
    assert location.startswith("http://localhost:7071/api/messages/")
    assert int(accepted.headers["Retry-After"]) >= 1
    assert accepted.body["Status"] == "queued"
    assert status_of(location).status == 202

    outbound.drain()

    final = status_of(location)
    assert final.status == 200
    [sent] = outbound.upstream()
    assert sent["body"]["Recipients"][0]["Address"] == DELIVERED  # E.164 from "040 0000001"
    assert sent["headers"].get("Customer-Id", sent["headers"].get("customer-id")) == CUSTOMER
    assert final.body["MessageId"] == sent["response"]["MessageId"]
    assert final.body["Recipients"][0]["Id"] == sent["response"]["Recipients"][0]["Id"]
    assert final.body["Recipients"][0]["Status"] == "sent"
    assert final.body["Status"] == "sent"
    assert final.body["Id"] == accepted.body["Id"]
    assert final.body["MessagePartCount"] == 1
    assert sent["body"]["RequestId"] == accepted.body["RequestId"]


def test_second_post_with_same_idempotency_key_returns_first_answer_and_enqueues_nothing(
    outbound: Outbound,
) -> None:
    first = call_http("SendMessage", "POST", body=sms(DELIVERED), headers={"Idempotency-Key": "k1"})
    again = call_http("SendMessage", "POST", body=sms(DELIVERED), headers={"Idempotency-Key": "k1"})

    assert (first.status, again.status) == (202, 202)
    # The same status URL; its token is signed afresh (its expiry is in whole seconds, so two
    # calls either side of a second boundary carry different, equally valid tokens).
    assert again.headers["Location"].split("?")[0] == first.headers["Location"].split("?")[0]
    assert again.body["Id"] == first.body["Id"]
    assert outbound.queued() == 1
    outbound.drain()
    after = call_http("SendMessage", "POST", body=sms(DELIVERED), headers={"Idempotency-Key": "k1"})
    assert after.status == 200  # the first answer, now final: the message was sent
    assert after.body["Id"] == first.body["Id"]
    # As its status URL answers it, each recipient's state too (found in review: a repeat's
    # Recipients had no Status, so a flow's retry read another shape than its first run).
    assert after.body == status_of(first.headers["Location"]).body
    assert after.body["Recipients"][0]["Status"] in ("sent", "delivered")
    assert outbound.queued() == 0
    assert len(outbound.upstream()) == 1


@pytest.mark.parametrize("twins", [25])
def test_concurrent_identical_posts_enqueue_once_and_send_once(
    outbound: Outbound, twins: int
) -> None:
    start = threading.Barrier(twins)
    answers: list[object] = [None] * twins

    def post_twin(index: int) -> None:
        start.wait()
        answers[index] = post(sms(DELIVERED), **{"Idempotency-Key": "k-concurrent"})

    threads = [threading.Thread(target=post_twin, args=(i,)) for i in range(twins)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert {a.status for a in answers} == {202}  # type: ignore[attr-defined]
    assert len({a.body["Id"] for a in answers}) == 1  # type: ignore[attr-defined]
    assert outbound.queued() == 1  # one queue message, however many twins
    outbound.drain()
    assert outbound.invocations == 1
    assert len(outbound.upstream()) == 1


def test_body_request_id_is_the_idempotency_key_without_a_header(outbound: Outbound) -> None:
    first = post(sms(DELIVERED, RequestId="order-42"))
    again = post(sms(DELIVERED, RequestId="order-42"))

    assert again.body["Id"] == first.body["Id"]
    assert outbound.queued() == 1
    outbound.drain()
    assert outbound.upstream()[0]["body"]["RequestId"] == "order-42"


def test_same_idempotency_key_with_a_different_body_is_422(outbound: Outbound) -> None:
    post(sms(DELIVERED), **{"Idempotency-Key": "k2"})
    other = post(sms(DELIVERED, content="Something else"), **{"Idempotency-Key": "k2"})

    assert other.status == 422
    assert other.headers["Content-Type"] == "application/problem+json"
    assert outbound.queued() == 1


def test_invalid_send_lists_every_bad_field_and_enqueues_nothing(outbound: Outbound) -> None:
    body = {"Sender": "", "Content": "Hi", "Recipients": [{"Address": "not a number"}],
            "AttachmentUri": "https://example.com/a.png"}  # fmt: skip
    answer = post(body)

    assert answer.status == 400
    fields = {e["field"] for e in answer.body["errors"]}
    assert {"Sender", "Recipients[0].Address"} <= fields
    assert outbound.queued() == 0


def test_status_needs_the_token_of_its_own_message(outbound: Outbound) -> None:
    first = post(sms(DELIVERED))
    second = post(sms(DELIVERED))
    first_id = first.body["Id"]
    second_token = dict(parse_qsl(urlsplit(second.headers["Location"]).query))["token"]

    missing = call_http("GetMessageStatus", "GET", route_params={"MessageId": first_id})
    foreign = call_http(
        "GetMessageStatus", "GET", route_params={"MessageId": first_id},
        params={"token": second_token},
    )  # fmt: skip
    assert (missing.status, foreign.status) == (401, 403)
    # A token refusal is not a validation error: a flow branching on the type must see it.
    assert (missing.body["type"], foreign.body["type"]) == (
        "urn:smartdialog-functions:problem:unauthorized",
        "urn:smartdialog-functions:problem:forbidden",
    )


def test_status_of_an_unknown_message_is_404(outbound: Outbound) -> None:
    from shared.signing import TokenPurpose, sign

    token = sign(TokenPurpose.STATUS, "nope", secrets=[SECRET])
    answer = call_http(
        "GetMessageStatus", "GET", route_params={"MessageId": "nope"}, params={"token": token}
    )
    assert answer.status == 404


def test_cancel_before_sending_means_it_is_never_sent(outbound: Outbound) -> None:
    accepted = post(sms(DELIVERED))
    message_id = accepted.body["Id"]

    cancelled = call_http("CancelMessage", "DELETE", route_params={"MessageId": message_id})
    outbound.drain()

    assert cancelled.status == 200
    assert cancelled.body["Status"] == "cancelled"
    assert outbound.upstream() == []
    assert status_of(accepted.headers["Location"]).status == 410
    assert [e["type"] for e in outbound.events()] == ["fi.arena.smartdialog.message.cancelled"]


def test_a_cancel_at_the_sends_location_as_given_is_taken(outbound: Outbound) -> None:
    """DELETE on the 202's Location (its ?token=... included), the obvious cancel in a Logic
    App, was refused 400 naming ``token`` once undeclared query parameters were refused."""
    from urllib.parse import parse_qs, urlsplit

    accepted = post(sms(DELIVERED))
    query = {k: v[0] for k, v in parse_qs(urlsplit(accepted.headers["Location"]).query).items()}
    assert set(query) == {"token"}
    route = {"MessageId": accepted.body["Id"]}

    cancelled = call_http("CancelMessage", "DELETE", route_params=route, params=query)

    assert (cancelled.status, cancelled.body["Status"]) == (200, "cancelled")
    outbound.drain()
    assert outbound.upstream() == []


def test_cancel_after_sending_is_409(outbound: Outbound) -> None:
    accepted = post(sms(DELIVERED))
    outbound.drain()

    answer = call_http("CancelMessage", "DELETE", route_params={"MessageId": accepted.body["Id"]})
    assert answer.status == 409


def test_failed_send_status_is_a_problem_with_upstreams_message(outbound: Outbound) -> None:
    accepted = post(sms(REJECTED))
    outbound.drain()

    final = status_of(accepted.headers["Location"])
    assert final.status == 422
    assert final.headers["Content-Type"] == "application/problem+json"
    assert final.body["code"] == "upstream-rejected"
    assert "rejected" in final.body["detail"]
    assert final.body["upstreamStatus"] == 400


@pytest.mark.parametrize("status", [400, 503])
def test_a_secret_upstream_quotes_is_cut_from_the_failure_wherever_it_goes(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    """Upstream's message became the failure's detail as is: a refusal (or a 5xx) quoting the
    DLR URL we sent put its token in the 422 detail, the event and the dead letter."""
    import httpx

    from shared.outbound._attempt import Upstream
    from shared.smartdialog import BadRequestError, InternalServerError

    quoted: list[str] = []

    def quoting(self: Upstream, command: Any) -> dict[str, Any]:
        dlr = command.body.DlrUrl
        quoted.append(dict(parse_qsl(urlsplit(dlr).query))["token"])
        said = f"DlrUrl {dlr} not reachable with Authorization: Bearer eyJhbGciOi.e30.bearer"
        error = BadRequestError if status == 400 else InternalServerError
        where = {"operation_id": "SendMessage", "method": "POST", "path": "/"}
        raise error(said, status_code=status, body=None, headers=httpx.Headers(), **where)

    monkeypatch.setattr(Upstream, "send", quoting)
    outbound.configure(SEND_MAX_ATTEMPTS=1)
    accepted = post(sms(DELIVERED))
    outbound.drain()

    final = status_of(accepted.headers["Location"])
    assert final.status == 422
    assert "?token=***" in final.body["detail"]
    assert "Bearer ***" in final.body["detail"]
    [event] = outbound.events()
    assert event["type"] == "fi.arena.smartdialog.message.failed"
    everywhere = json.dumps([final.body, event, outbound.dead_letters()])
    assert quoted
    assert not [token for token in quoted if token in everywhere]
    assert "eyJhbGciOi" not in everywhere


def test_a_thread_id_no_id_could_be_is_refused_naming_it(outbound: Outbound) -> None:
    """A ThreadId of 70,000 characters was accepted, sent, and echoed in SmartDialog's answer:
    its message.sent could not fit a queue message, so it was never sent (second read)."""
    answer = call_http(
        "SendDiscussionReplyMessage", "POST", body={"ThreadId": "t" * 101, "Content": "Hi"}
    )

    assert answer.status == 400
    assert [e["field"] for e in answer.body["errors"]] == ["ThreadId"]
    assert outbound.queued() == 0


def test_reply_discussion_and_whatsapp_template_sends_reach_upstream(outbound: Outbound) -> None:
    reply = call_http(
        "SendReplyMessage", "POST", route_params={"ParentMessageId": "parent-1"},
        headers={"Service-Id": REPLY_SERVICE}, body=sms(DELIVERED),
    )  # fmt: skip
    discussion = call_http(
        "SendDiscussionReplyMessage", "POST", body={"ThreadId": "thread-1", "Content": "Thanks!"}
    )
    template = call_http(
        "SendWhatsappTemplateMessage", "POST",
        body={"TemplateName": "welcome", "Recipients": [{"Address": DELIVERED}],
              "BodyParameters": ["Ada"]},
    )  # fmt: skip
    assert (reply.status, discussion.status, template.status) == (202, 202, 202)

    outbound.drain()

    assert status_of(reply.headers["Location"]).status == 200
    assert len(outbound.upstream("SendReplyMessage")) == 1
    done = status_of(discussion.headers["Location"])
    assert done.status == 200, done.body
    assert outbound.upstream("SendDiscussionReplyMessage")[0]["body"] == {
        "ThreadId": "thread-1", "Content": "Thanks!",
    }  # fmt: skip
    camel = status_of(template.headers["Location"])
    assert camel.status == 200
    assert (
        camel.body["messageId"]
        == outbound.upstream("SendWhatsappTemplateMessage")[0]["response"]["messageId"]
    )
    assert camel.body["recipients"][0]["status"] == "sent"


def test_a_template_sends_button_data_goes_upstream_as_given_blank_or_missing(
    outbound: Outbound,
) -> None:
    """docs/actions.md, "Stricter input": the one blank value a send passes on (SmartDialog's
    definition of the send does not require a button's Data; a new template's is required)."""
    buttons = [{"Type": "QuickReply", "Data": ""}, {"Type": "QuickReply"}, {"Type": "Url"}]
    template = call_http(
        "SendWhatsappTemplateMessage",
        "POST",
        body={
            "TemplateName": "welcome",
            "Recipients": [{"Address": DELIVERED}],
            "Buttons": buttons,
        },
    )
    assert template.status == 202, template.body
    outbound.drain()
    [call] = outbound.upstream("SendWhatsappTemplateMessage")
    assert call["body"]["Buttons"] == buttons


def test_a_send_whose_enqueue_died_is_enqueued_once_by_the_callers_retry(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    """The request died at its enqueue (500) with its key claimed; the caller's retry, seconds
    later, waits a moment for a record that does not come, then enqueues and records the
    message itself (it used to answer 202 for a message nobody enqueued: its status URL 404)."""
    from shared.outbound import _service

    queue = _service.outbound_queue(get_settings())
    crash_once(monkeypatch, queue, "send_message", "the request died at its enqueue")
    key = idempotency_key_hash(CUSTOMER, "crash-1")

    def recorded() -> list[MessageRecord]:
        return [r for r in _records(MessageStore.from_settings()) if r.idempotency_key_hash == key]

    failed = post(sms(DELIVERED), **{"Idempotency-Key": "crash-1"})
    assert failed.status == 500
    assert recorded() == []  # a record only after its enqueue
    assert outbound.queued() == 0

    started = manual_clock.now()
    retry = post(sms(DELIVERED), **{"Idempotency-Key": "crash-1"})
    assert retry.status == 202
    assert manual_clock.now() - started >= _service.CLAIM_WAIT_SECONDS  # it waited first
    assert outbound.queued() == 1
    [stored] = recorded()
    assert stored.message_id == retry.body["Id"]
    assert status_of(retry.headers["Location"]).status == 202  # found, not 404

    again = post(sms(DELIVERED), **{"Idempotency-Key": "crash-1"})  # and once more
    assert again.body["Id"] == retry.body["Id"]
    assert outbound.queued() == 1
    outbound.drain()
    assert len(outbound.upstream()) == 1


def test_a_send_whose_request_died_after_its_enqueue_is_recorded_and_sent_by_the_sender(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_once(
        monkeypatch, MessageStore, "create", "the request died after its enqueue",
        when=lambda record, slots: record.idempotency_key_hash is not None,
    )  # fmt: skip
    failed = post(sms(DELIVERED), **{"Idempotency-Key": "crash-2"})
    assert failed.status == 500
    assert outbound.queued() == 1

    outbound.drain()  # the sender records the command it finds unrecorded, and sends it
    retry = post(sms(DELIVERED), **{"Idempotency-Key": "crash-2"})

    assert retry.status == 200  # the same message, sent meanwhile
    assert len(outbound.upstream()) == 1
    assert outbound.queued() == 0


def test_an_accepted_record_of_the_previous_release_is_enqueued_by_a_status_poll(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    # The previous release wrote the record (accepted) before enqueueing; a crash in between
    # left it accepted with nothing queued. Its status poll recovers it.
    from shared.outbound import _service, new_record, normalize, parse_outbound_message

    command = normalize(
        parse_outbound_message(json.dumps({"operation": "SendMessage", "body": sms(DELIVERED)})),
        message_id="m-old-accepted",
        customer_id=CUSTOMER,
        service_id="s-1001-oneway",
    )
    record, slots = new_record(
        command, now=utcnow(), validity=dt.timedelta(days=1), status=MessageStatus.ACCEPTED
    )
    assert MessageStore.from_settings().create(record, slots) is not None
    location = _service.SendService(get_settings()).status_url("m-old-accepted")
    assert status_of(location).status == 202
    assert outbound.queued() == 0  # too early to tell a lost enqueue from a slow one

    manual_clock.advance(_service.STUCK_ACCEPTED_AFTER.total_seconds())
    assert status_of(location).status == 202
    assert outbound.queued() == 1
    outbound.drain()
    assert status_of(location).status == 200


def _records(store: MessageStore) -> list:  # type: ignore[type-arg]
    from shared.messages import MessageRecord

    return [  # a single send's own partition or its lane's (RowKey ``<row>.message``)
        MessageRecord.from_entity(e)
        for e in store.table.list_entities()
        if str(e["RowKey"]).endswith("message")
    ]


def test_a_claim_whose_insert_was_committed_but_answered_5xx_is_the_requests_own(
    outbound: Outbound,
) -> None:
    """Storage commits the key's claim but answers 500; the client retries the POST and gets
    409. The claim it then reads is this request's own: a refusal (the recipient opted out)
    still frees the key, and nothing waits for a record as if another request made it."""
    from azure.core.exceptions import ResourceExistsError
    from azure.data.tables import TableClient

    phone = "+358419876543"
    SuppressionStore.from_settings().add(
        SERVICE, phone, keyword="STOP", source="inbound", now=dt.datetime.now(dt.UTC)
    )
    create = TableClient.create_entity

    def committed_then_lost(self: TableClient, *args: Any, **kwargs: Any) -> Any:
        created = create(self, *args, **kwargs)
        if self.table_name == IDEMPOTENCY_TABLE:
            raise ResourceExistsError("The specified entity already exists.")
        return created

    reads: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TableClient, "create_entity", committed_then_lost)
        patch.setattr(MessageStore, "get", lambda self, message_id: reads.append(message_id))
        refused = post(sms(phone), **{"Idempotency-Key": "k-lost-answer"})

    assert refused.status == 422, refused.body
    assert reads == []  # no record awaited: the claim is new
    again = post(sms(DELIVERED), **{"Idempotency-Key": "k-lost-answer"})
    assert again.status == 202, again.body  # the refusal freed the key


def test_a_send_sent_away_for_the_quota_is_polled_when_its_own_slot_frees(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each send the sender sent away for the quota holds a slot of its own: its status tells a
    poller when that slot frees, not when the first does (before, every send far back in the
    queue said the first slot, and its flow polled again at each slot before its own). This
    process's way to the quota: 2 calls a 10 s, taken 4 s apart, on a manual clock."""
    from shared.outbound import _quota_wait
    from shared.outbound._quota_wait import QuotaWait, slot_holder
    from shared.quota import InMemoryQuotaStore, QuotaDenied

    clock = ManualClock(1_000.0)
    waits = QuotaWait(InMemoryQuotaStore(calls=2, period=10.0, clock=clock), 1.0, clock)
    monkeypatch.setattr(_quota_wait, "quota_wait", lambda settings: waits)
    first, second, third = (
        post(sms(DELIVERED, content="own slot", RequestId=f"own-slot-{k}")) for k in range(3)
    )
    waits.take(0.0, slot_holder(None, "earlier-1"))
    clock.advance(4.0)
    waits.take(0.0, slot_holder(None, "earlier-2"))
    full, _ = waits.take(0.0, slot_holder(None, first.body["Id"]))
    assert isinstance(full, QuotaDenied)  # the slots free at 1,010 and 1,014; it is 1,004
    for accepted in (first, second):  # RequestIds: sent alone, each holds a slot of its own
        waits.come_back_in(full, slot_holder(None, accepted.body["Id"]))

    polls = [status_of(accepted.headers["Location"]) for accepted in (first, second, third)]

    assert [poll.status for poll in polls] == [202, 202, 202]
    # The first slot, the second, and (never sent away) the first slot the senders were told.
    assert [poll.headers["Retry-After"] for poll in polls] == ["6", "10", "6"]


def test_every_field_of_a_sends_answers_is_declared_in_the_connector(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """A flow's dynamic content comes from the connector's schemas. Found in review: the
    pending answer's LastError, CreatedAt, ValidUntil and Connection and the final answer's
    Attempts and Connection, which docs/sending.md promises, were declared nowhere."""
    from shared.names import OUTBOUND_QUEUE
    from shared.outbound import OutboundSender
    from tests.outbound.conftest import TEMPORARY
    from tools.generate_connector import DEFINITION_PATH

    definition = json.loads(DEFINITION_PATH.read_text("utf-8"))
    [send] = [
        op
        for path in definition["paths"].values()
        for op in path.values()
        if isinstance(op, dict) and op.get("operationId") == "SendMessage"
    ]

    def declared(status: str) -> set[str]:
        return set(send["responses"][status]["schema"]["properties"])

    retried = post(sms(TEMPORARY, content="declared"))  # a 503: its status shows LastError
    [copy] = outbound.read(OUTBOUND_QUEUE)
    OutboundSender.from_settings().process(json.dumps(copy))
    pending = status_of(retried.headers["Location"])
    done = post(sms(DELIVERED, content="declared"))
    outbound.drain()
    final = status_of(done.headers["Location"])

    assert (pending.status, final.status) == (202, 200)
    assert "LastError" in pending.body
    assert set(pending.body["LastError"]) <= set(
        send["responses"]["202"]["schema"]["properties"]["LastError"]["properties"]
    )
    assert set(pending.body) <= declared("202")
    assert set(final.body) <= declared("200")
