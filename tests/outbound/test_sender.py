"""The queue sender, invoked as the host does, against Azurite and the sandbox."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from shared.clock import ManualClock
from shared.messages import MessageRecord, MessageStatus, MessageStore
from shared.outbound._attempt import Upstream
from shared.outbound._service import send_service
from shared.settings import get_settings
from tests.crash import LEASE, crash_once
from tests.outbound.conftest import (
    CUSTOMER,
    DELIVERED,
    ERROR,
    REJECTED,
    SERVICE,
    SLOW,
    TEMPORARY,
    THROTTLED,
    Outbound,
    sms,
)
from tests.waiting import TIGHT_MARGIN


def test_queued_message_is_sent_once_and_recorded_with_the_sandbox_message_id(
    outbound: Outbound,
) -> None:
    outbound.enqueue({"operation": "SendMessage", "messageId": "m-1", "body": sms(DELIVERED)})
    outbound.drain()

    record = MessageStore.from_settings().get("m-1")
    assert record is not None
    assert record.status is MessageStatus.SENT
    sends = outbound.upstream()
    assert len(sends) == 1
    assert sends[0]["response"]["MessageId"] == record.upstream_message_id
    assert sends[0]["body"]["RequestId"] == "m-1"
    events = outbound.events()
    assert [e["type"] for e in events] == ["fi.arena.smartdialog.message.sent"]
    assert events[0]["data"]["upstreamMessageId"] == record.upstream_message_id
    assert json.loads(record.result or "{}")["MessageId"] == record.upstream_message_id


def send(messageId: str, *addresses: str, **envelope: object) -> dict[str, object]:
    return {"operation": "SendMessage", "messageId": messageId, "body": sms(*addresses), **envelope}


def record(message_id: str) -> MessageRecord:
    found = MessageStore.from_settings().get(message_id)
    assert found is not None
    return found


def test_redelivered_message_whose_record_says_sent_is_acknowledged_not_sent_again(
    outbound: Outbound,
) -> None:
    text = json.dumps(send("m-again", DELIVERED))
    outbound.invoke(text)
    outbound.invoke(text, dequeue_count=2)

    assert record("m-again").status is MessageStatus.SENT
    assert len(outbound.upstream()) == 1
    assert outbound.queued() == 0


def test_crash_between_upstream_success_and_ack_does_not_send_twice(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    crash_once(
        monkeypatch, MessageStore, "swap", "worker died after upstream accepted the message",
        when=lambda record, **changes: changes.get("status") is MessageStatus.SENT,
    )  # fmt: skip
    text = json.dumps(send("m-crash", DELIVERED))
    with pytest.raises(RuntimeError):
        outbound.invoke(text)  # the host keeps the message and delivers it again
    assert record("m-crash").status is MessageStatus.SENDING
    manual_clock.advance(LEASE + 1)  # the crashed worker's claim runs out

    outbound.invoke(text, dequeue_count=2)

    done = record("m-crash")
    accepted = outbound.sandbox.state.snapshot("messages")
    assert len(accepted) == 1  # upstream sent it once; the repeat was a duplicate RequestId
    assert [r["status"] for r in outbound.upstream()] == [200, 409]
    assert done.status is MessageStatus.SENT
    assert done.duplicate
    assert done.upstream_message_id == outbound.upstream()[0]["response"]["MessageId"]
    assert [e["type"] for e in outbound.events()] == ["fi.arena.smartdialog.message.sent"]


def test_copy_arriving_while_another_worker_holds_the_claim_is_deferred(
    outbound: Outbound,
) -> None:
    import datetime as dt
    from dataclasses import replace

    from shared.outbound import new_record, normalize, parse_outbound_message

    text = json.dumps(send("m-claimed", DELIVERED))
    # Another worker has claimed it and is mid-send (its lease runs for 30 s more).
    now = dt.datetime.now(dt.UTC)
    command = normalize(
        parse_outbound_message(text),
        message_id="m-claimed",
        customer_id=CUSTOMER,
        service_id=SERVICE,
    )
    fresh, slots = new_record(
        command, now=now, validity=dt.timedelta(days=1), status=MessageStatus.SENDING
    )
    claimed = replace(fresh, attempts=1, lease_until=now + dt.timedelta(seconds=30))
    assert MessageStore.from_settings().create(claimed, slots) is not None

    outbound.invoke(text, dequeue_count=2)

    assert outbound.upstream() == []
    assert outbound.queued() == 1  # back on the queue, invisible until the lease ends
    assert outbound.run_once() == 0


def test_over_quota_message_is_requeued_with_a_delay_and_not_sent(
    private_outbound: Callable[..., Outbound],
) -> None:
    outbound = private_outbound()
    outbound.configure(QUOTA_CALLS=1, QUOTA_PERIOD_SECONDS=30)
    outbound.invoke(json.dumps(send("m-q1", DELIVERED)))

    outbound.invoke(json.dumps(send("m-q2", DELIVERED)))

    assert len(outbound.upstream()) == 1
    assert record("m-q2").status is MessageStatus.QUEUED
    assert record("m-q2").attempts == 0  # a deferral is not an attempt
    assert outbound.queued() == 1
    assert outbound.run_once() == 0  # invisible: it comes back when a slot frees (~30 s)


def test_rejected_recipient_fails_at_once_with_upstreams_message_and_is_dead_lettered(
    outbound: Outbound,
) -> None:
    outbound.enqueue(send("m-400", REJECTED))
    outbound.drain()

    failed = record("m-400")
    assert failed.status is MessageStatus.FAILED
    assert failed.failure is not None
    assert failed.failure.code == "upstream-rejected"
    assert failed.failure.upstreamStatus == 400
    assert len(outbound.upstream()) == 1
    [letter] = outbound.dead_letters()
    assert letter["reason"] == "failed"
    assert letter["messageId"] == "m-400"
    assert json.loads(letter["original"])["messageId"] == "m-400"
    [event] = outbound.events()
    assert event["type"] == "fi.arena.smartdialog.message.failed"
    assert event["data"]["error"]["code"] == "upstream-rejected"


def test_temporary_503s_are_retried_with_the_same_request_id_until_sent(
    outbound: Outbound,
) -> None:
    outbound.enqueue(send("m-503", TEMPORARY))
    outbound.drain()

    calls = outbound.upstream()
    assert [c["status"] for c in calls] == [503, 503, 200]
    assert {c["body"]["RequestId"] for c in calls} == {"m-503"}
    assert record("m-503").status is MessageStatus.SENT
    assert record("m-503").attempts == 3


def test_persistent_500s_fail_after_max_attempts_and_are_dead_lettered(
    outbound: Outbound,
) -> None:
    outbound.configure(SEND_MAX_ATTEMPTS=3)
    outbound.enqueue(send("m-500", ERROR))
    outbound.drain()

    assert [c["status"] for c in outbound.upstream()] == [500, 500, 500]
    failed = record("m-500")
    assert failed.status is MessageStatus.FAILED
    assert failed.failure is not None
    assert failed.failure.code == "outcome-unknown"  # a 5xx does not prove it was not sent
    assert [d["reason"] for d in outbound.dead_letters()] == ["failed"]


def test_429_honours_retry_after_and_is_dead_lettered_when_it_persists(
    outbound: Outbound,
) -> None:
    outbound.configure(SEND_MAX_ATTEMPTS=2)
    outbound.enqueue(send("m-429", THROTTLED))
    outbound.run_once()

    assert outbound.queued() == 1
    assert outbound.run_once() == 0  # Retry-After: 1 keeps it invisible for a second
    outbound.drain()

    assert [c["status"] for c in outbound.upstream()] == [429, 429]
    failed = record("m-429")
    assert failed.failure is not None
    assert failed.failure.code == "rate-limited"
    assert len(outbound.dead_letters()) == 1
    # Its status answers the rate-limited type with that code (it said upstream-unavailable).
    view = send_service(get_settings()).view(failed)
    assert (view.status, view.body["type"], view.body["code"]) == (
        422, "urn:smartdialog-functions:problem:rate-limited", "rate-limited")  # fmt: skip


def test_a_5xx_retry_after_is_kept_as_upstreams_advice_for_the_retry() -> None:
    """A 503 saying Retry-After: 30 was retried at the sender's own (shorter) backoff."""
    import httpx

    from shared.outbound._attempt import Transient, classify
    from shared.smartdialog import (
        InternalServerError,
        Message,
        Recipient,
        SmartDialogClient,
        StaticTokenAuth,
    )

    answer = httpx.Response(503, headers={"Retry-After": "30"})
    http = httpx.Client(transport=httpx.MockTransport(lambda request: answer))
    client = SmartDialogClient(
        "https://smartdialog.invalid/v1", StaticTokenAuth("t"), http_client=http, max_retries=0
    )
    message = Message(Sender="Acme", Content="Hi", Recipients=[Recipient(Address=DELIVERED)])
    with pytest.raises(InternalServerError) as caught:
        client.send_message(message, customer_id=CUSTOMER, service_id=SERVICE)
    result = classify(caught.value)
    assert isinstance(result, Transient)
    assert (result.upstream_status, result.advised) == (503, 30.0)


def test_a_5xx_retry_after_binds_the_retry_only_up_to_the_longest_backoff() -> None:
    """An outage's advice of a day must not fail a send at once as past its validity: a 5xx's
    Retry-After counts up to SMARTDIALOG_SEND_RETRY_MAX_SECONDS, a 429's in full (quota)."""
    from types import SimpleNamespace
    from typing import cast

    from shared.outbound._attempt import Transient
    from shared.outbound._outcomes import Outcomes
    from shared.outbound._ports import SendPorts

    policy = SimpleNamespace(retry_base=2.0, retry_max=300.0)
    outcomes = Outcomes(cast(SendPorts, SimpleNamespace(policy=policy)))
    outage = Transient("upstream-unavailable", "SmartDialog answered 503", None, 86400.0, 503)
    assert outcomes.retry_delay(1, outage) == 300.0
    assert outcomes.retry_delay(1, Transient("upstream-unavailable", "503", None, 30.0, 503)) == 30
    throttled = Transient("rate-limited", "SmartDialog answered 429", None, 86400.0, 429, True)
    assert outcomes.retry_delay(1, throttled) == 86400.0


def throttled_once(outbound: Outbound, message: dict[str, object], *, retry_after: int) -> None:
    """Queue ``message`` and run the sender once while SmartDialog answers every call 429 with
    ``Retry-After: retry_after``."""
    from sandbox.faults import FaultKind, FaultPlan

    outbound.sandbox.app.faults.configure(
        FaultPlan(rate=1.0, kinds=(FaultKind.THROTTLED,), retry_after=retry_after)
    )
    try:
        outbound.enqueue(message)
        outbound.run_once()
    finally:
        outbound.sandbox.app.faults.configure(FaultPlan())


def test_a_retry_after_longer_than_any_validity_ends_the_message_not_the_sender(
    outbound: Outbound,
) -> None:
    """Retry-After: 10**12 from a 429: now + that overflowed a datetime, the sender raised and
    the message went to poison without its event. Advice that outlasts the validity fails it
    at once as expired, with its event, as any retry that could not come in time."""
    throttled_once(outbound, send("m-advice", DELIVERED), retry_after=10**12)

    failed = record("m-advice")
    assert failed.status is MessageStatus.FAILED
    assert failed.failure is not None
    assert failed.failure.code == "expired"  # it could not go again within its validity
    assert failed.attempts == 1
    assert [e["data"]["messageId"] for e in outbound.events()] == ["m-advice"]


def test_advice_longer_than_the_default_validity_is_honoured_for_a_send_valid_longer(
    outbound: Outbound,
) -> None:
    """A send valid for a week told to come back in two days waits two days, not the default
    validity (24 h), which would only earn another 429."""
    from shared.clock import utcnow

    two_days = 2 * 86400
    week = (utcnow() + dt.timedelta(days=7)).isoformat()
    throttled_once(outbound, send("m-week", DELIVERED, validUntil=week), retry_after=two_days)

    waiting = record("m-week")
    assert waiting.status is MessageStatus.QUEUED
    assert waiting.next_attempt_at is not None
    assert (waiting.next_attempt_at - utcnow()).total_seconds() > two_days - 60


@pytest.mark.parametrize("sends_at", ["0001-01-01T00:00:00", "2030-01-01T09:00:00"])
def test_a_send_date_time_without_a_zone_goes_upstream_as_written(
    outbound: Outbound, sends_at: str
) -> None:
    """Our DLR URL lasts past a scheduled send's SendDateTime: one without a zone is read as
    UTC for that, and year 1 is no time at all (its timestamp() raised: the sender crashed)."""
    message = send("m-" + sends_at[:4], DELIVERED)
    outbound.enqueue({**message, "body": {**sms(DELIVERED), "SendDateTime": sends_at}})
    outbound.drain()

    [call] = outbound.upstream()
    assert call["body"]["SendDateTime"].startswith(sends_at)
    assert record("m-" + sends_at[:4]).status is MessageStatus.SENT


def test_timeout_is_retried_and_a_late_success_is_recognised_by_request_id(
    private_outbound: Callable[..., Outbound],
) -> None:
    # A whole second per attempt: a loaded machine's stall must not pass for the slow answer.
    # The sandbox records a RequestId when it answers (1.3 s); the retry comes after the 1 s
    # timeout, a backoff of 0.75 s at least and a whole-second queue delay: about 0.7 s later.
    outbound = private_outbound(slow_seconds=1.3)
    outbound.configure(SEND_TIMEOUT_SECONDS=1.0, SEND_RETRY_BASE_SECONDS=1)
    outbound.enqueue(send("m-slow", SLOW))
    outbound.drain()

    done = record("m-slow")
    assert done.status is MessageStatus.SENT
    assert done.attempts == 2
    assert done.duplicate  # the timed-out attempt went through; the retry got 409
    assert len(outbound.sandbox.state.snapshot("messages")) == 1


def test_one_attempt_ends_at_the_send_timeout_however_slowly_its_answer_trickles_in(
    outbound: Outbound,
) -> None:
    import socket

    from tests.guard.servers import RawServer, raw_server

    def trickle(conn: socket.socket, server: RawServer) -> None:  # 3 s, each byte in 0.1 s
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n")
        for _ in range(30):
            time.sleep(0.1)
            conn.sendall(b" ")

    with raw_server(trickle) as upstream:
        outbound.configure(BASE_URL=upstream.url, SEND_TIMEOUT_SECONDS=1)
        started = time.monotonic()
        outbound.invoke(json.dumps(send("m-trickle", DELIVERED)))
        took = time.monotonic() - started

    assert took < 2.0  # the send timeout bounds the whole attempt, not each read
    cut = record("m-trickle")
    assert cut.status is MessageStatus.QUEUED  # retried: it may have been taken
    assert cut.maybe_sent
    assert cut.last_error is not None
    assert cut.last_error.code == "upstream-unavailable"


def test_message_past_its_validity_fails_without_an_upstream_call(outbound: Outbound) -> None:
    outbound.enqueue(send("m-old", DELIVERED, validUntil="2020-01-01T00:00:00Z"))
    outbound.drain()

    failed = record("m-old")
    assert failed.status is MessageStatus.FAILED
    assert failed.failure is not None
    assert failed.failure.code == "expired"
    assert outbound.upstream() == []
    assert [d["error"]["code"] for d in outbound.dead_letters()] == ["expired"]


@pytest.mark.parametrize(
    "valid_until",
    [
        "9999-12-31T23:59:59Z",  # the usual "never expires": the previous release sent it
        "9999-12-31T23:59:59.999999Z",  # the last instant Table storage (and Python) keeps
        "9999-12-31T22:59:59.999999-01:00",  # the same instant
        "9998-12-31T12:00:00Z",
    ],
)
def test_a_validity_up_to_the_end_of_9999_in_utc_is_sent(
    outbound: Outbound, valid_until: str
) -> None:
    """Its record keeps it, its DLR URL lasts until then (plus the reporting window)."""
    message_id = "m-far-" + hashlib.sha256(valid_until.encode()).hexdigest()[:8]
    outbound.enqueue(send(message_id, DELIVERED, validUntil=valid_until))
    outbound.drain()

    assert outbound.dead_letters() == []
    [call] = outbound.upstream()
    assert f"/callbacks/dlr/{message_id}?" in call["body"]["DlrUrl"]
    sent = record(message_id)
    assert sent.status is MessageStatus.SENT
    assert sent.valid_until == dt.datetime.fromisoformat(valid_until)


@pytest.mark.parametrize("valid_until", ["1601-01-01T00:00:00Z", "1601-01-01T01:00:00+01:00"])
def test_the_earliest_validity_table_storage_keeps_is_recorded_and_expires(
    outbound: Outbound, valid_until: str
) -> None:
    message_id = "m-early-" + valid_until[-5:].replace(":", "")
    outbound.enqueue(send(message_id, DELIVERED, validUntil=valid_until))
    outbound.drain()

    assert [d["error"]["code"] for d in outbound.dead_letters()] == ["expired"]
    assert record(message_id).valid_until == dt.datetime(1601, 1, 1, tzinfo=dt.UTC)
    assert outbound.upstream() == []


@pytest.mark.parametrize(
    "valid_until",
    [
        "9999-12-31T23:59:59-01:00",  # the year 10000 in UTC
        "1600-12-31T23:59:59.999999Z",
        "1601-01-01T00:59:59+01:00",  # 1600 in UTC
        "0001-01-01T00:00:00Z",
    ],
)
def test_a_validity_table_storage_cannot_keep_is_dead_lettered_naming_it(
    outbound: Outbound, valid_until: str
) -> None:
    """The year 10000 in UTC (or one before 1601) cannot be recorded: writing the record
    raised, and the host retried the message into poison without a reason."""
    outbound.enqueue(send("m-far", DELIVERED, validUntil=valid_until))
    outbound.drain()

    [letter] = outbound.dead_letters()
    assert letter["reason"] == "malformed"
    assert [e["field"].rsplit(".", 1)[-1] for e in letter["errors"]] == ["validUntil"]
    assert outbound.upstream() == []


@pytest.mark.parametrize(
    ("address", "code"),
    [
        (THROTTLED, "expired"),  # a 429 proves nothing was sent
        (ERROR, "outcome-unknown"),  # a 500 does not: it may have been sent
    ],
)
def test_retry_that_would_outlive_validity_fails_as_expired(
    outbound: Outbound, address: str, code: str
) -> None:
    import datetime as dt

    outbound.configure(SEND_RETRY_BASE_SECONDS=3600)
    soon = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)).isoformat()
    outbound.enqueue(send(f"m-short-{code}", address, validUntil=soon))
    outbound.drain()

    assert len(outbound.upstream()) == 1
    assert record(f"m-short-{code}").failure.code == code  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json at all", "json"),
        ("[1, 2, 3]", "object"),
        ('{"operation": "SendFax", "body": {}}', "operation"),
        ('{"kind": "pack", "packId": "pack-not-ours"}', "packId"),
        ('{"kind": "pack", "packId": "pack-' + "0" * 32 + '", "then": "x"}', "then"),
        ('{"operation": "SendMessage", "body": {"Sender": "X"}}', "body.SendMessage.Content"),
        ('{"operation": "SendReplyMessage", "body": {"Sender": "X", "Content": "c",'
         ' "Recipients": [{"Address": "+358400000001"}]}}', "parentMessageId"),
        ('{"operation": "SendMessage", "messageId": "bad id", "body": {}}', "messageId"),
    ],
)  # fmt: skip
def test_malformed_queue_message_is_dead_lettered_with_its_reason(
    outbound: Outbound, text: str, why: str
) -> None:
    outbound.enqueue(text)
    outbound.drain()  # returns normally: no crash loop, nothing left on the queue

    [letter] = outbound.dead_letters()
    assert letter["reason"] == "malformed"
    assert letter["original"] == text
    assert letter["queue"] == "smartdialog-outbound"
    assert why.split(".")[0].lower() in json.dumps(letter).lower()
    assert outbound.upstream() == []


def test_interrupted_discussion_reply_is_not_repeated(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    crash_once(monkeypatch, Upstream, "send", "worker died mid-call")
    text = json.dumps(
        {"operation": "SendDiscussionReplyMessage", "messageId": "m-thread",
         "body": {"ThreadId": "t-1", "Content": "Hi"}}
    )  # fmt: skip
    with pytest.raises(RuntimeError):
        outbound.invoke(text)
    manual_clock.advance(LEASE + 1)  # the crashed worker's claim runs out

    outbound.invoke(text, dequeue_count=2)

    failed = record("m-thread")
    assert failed.failure is not None
    assert failed.failure.code == "outcome-unknown"
    assert outbound.upstream("SendDiscussionReplyMessage") == []


def test_a_storage_error_before_the_call_hands_the_claim_back_and_the_retry_sends_it(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.outbound._quota_wait import QuotaWait

    crash_once(monkeypatch, QuotaWait, "take", "the quota log could not be read (503)")
    text = json.dumps(
        {"operation": "SendDiscussionReplyMessage", "messageId": "m-no-call",
         "body": {"ThreadId": "t-1", "Content": "Hi"}}
    )  # fmt: skip
    with pytest.raises(RuntimeError):
        outbound.invoke(text)  # the host keeps the message and delivers it again
    handed_back = record("m-no-call")
    assert handed_back.status is MessageStatus.QUEUED  # not a claim left as if mid-call
    assert handed_back.attempts == 0
    assert handed_back.lease_until is None
    assert not handed_back.maybe_sent

    outbound.invoke(text, dequeue_count=2)  # no lease to wait out

    assert record("m-no-call").status is MessageStatus.SENT  # not failed outcome-unknown
    assert len(outbound.upstream("SendDiscussionReplyMessage")) == 1


def test_message_without_message_id_gets_a_stable_one_from_its_request_id(
    outbound: Outbound,
) -> None:
    body = {"operation": "SendMessage", "body": sms(DELIVERED, RequestId="ext-1")}
    outbound.enqueue(body)
    outbound.enqueue(body)  # the same command twice: sent once
    outbound.drain()

    assert len(outbound.sandbox.state.snapshot("messages")) == 1
    assert [e["type"] for e in outbound.events()] == ["fi.arena.smartdialog.message.sent"]


# --- a quota grant is only used while it is fresh (issue 4: exact quota) ------------------------


def _record_grants_and_sends(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[float]]:
    """Every grant the quota hands out, and the time each SendMessage request really left
    (the transport is where the bytes go out, after the client's hooks)."""
    import httpx

    from shared.quota import QuotaGrant, QuotaStore

    grants: list[Any] = []
    sends: list[float] = []
    real_acquire = QuotaStore.try_acquire
    real_transport = httpx.HTTPTransport.handle_request

    def acquire(self: QuotaStore) -> Any:
        result = real_acquire(self)
        if isinstance(result, QuotaGrant):
            grants.append(result)
        return result

    def transport(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/messages"):
            sends.append(time.time())
        return real_transport(self, request)

    monkeypatch.setattr(QuotaStore, "try_acquire", acquire)
    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", transport)
    return grants, sends


def _slow_step_before_the_call(monkeypatch: pytest.MonkeyPatch, delays: list[float]) -> None:
    """The sender's work between grant and call (the upstream port's send: the client builds
    the request) takes ``delays`` (one per call of it): a starved thread on a loaded machine."""
    from shared.outbound._attempt import Upstream

    real = Upstream.send

    def slow(self: Upstream, command: Any) -> Any:
        if delays:
            time.sleep(delays.pop(0))
        return real(self, command)

    monkeypatch.setattr(Upstream, "send", slow)


def _slow_preparation(monkeypatch: pytest.MonkeyPatch, delay: float) -> list[float]:
    """Building each call (its numbers to E.164, our DLR URL signed) takes ``delay``: a big
    pack on a loaded machine. When each build ended (the grant must come after it)."""
    from shared.outbound import _records

    real, built = _records.with_delivery_report_url, []

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(delay)
        try:
            return real(*args, **kwargs)
        finally:
            built.append(time.time())

    monkeypatch.setattr(_records, "with_delivery_report_url", slow)
    return built


def test_a_slow_build_of_the_call_comes_before_the_grant_so_it_ages_none(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the sender took its grant and then built the call: a build longer than half
    the margin made the grant stale, and a second slot was spent on the same call."""
    outbound.configure(QUOTA_SAFETY_MARGIN_SECONDS=TIGHT_MARGIN)
    grants, sends = _record_grants_and_sends(monkeypatch)
    built = _slow_preparation(monkeypatch, TIGHT_MARGIN + 0.2)

    outbound.invoke(json.dumps(send("m-slow-build", DELIVERED)))

    assert len(built) == 1
    assert len(grants) == 1  # one grant, taken once the call was built
    assert built[0] <= grants[0].granted_at
    [sent_at] = sends
    assert sent_at - grants[0].granted_at <= TIGHT_MARGIN
    assert record("m-slow-build").status is MessageStatus.SENT


def test_a_grant_gone_stale_before_the_call_is_not_used_a_fresh_one_is(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    margin = TIGHT_MARGIN
    outbound.configure(QUOTA_SAFETY_MARGIN_SECONDS=margin)
    grants, sends = _record_grants_and_sends(monkeypatch)
    _slow_step_before_the_call(monkeypatch, [margin + 0.2])

    outbound.invoke(json.dumps(send("m-stale", DELIVERED)))

    assert len(grants) == 2  # the stale one, then a fresh one taken in-process
    [sent_at] = sends  # one request left, and not with the stale grant
    assert sent_at - grants[0].granted_at > margin
    assert sent_at - grants[1].granted_at <= margin
    assert len(outbound.upstream()) == 1
    done = record("m-stale")
    assert done.status is MessageStatus.SENT
    assert done.attempts == 1  # the stopped request was not an attempt
    assert outbound.queued() == 0


def test_a_message_whose_grants_keep_going_stale_is_deferred_then_sent_once(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbound.configure(QUOTA_SAFETY_MARGIN_SECONDS=TIGHT_MARGIN)
    grants, sends = _record_grants_and_sends(monkeypatch)
    _slow_step_before_the_call(monkeypatch, [0.45, 0.45])

    outbound.invoke(json.dumps(send("m-stale-2", DELIVERED)))

    assert len(grants) == 2
    assert sends == []  # no request left with either stale grant
    assert outbound.upstream() == []
    deferred = record("m-stale-2")
    assert deferred.status is MessageStatus.QUEUED
    assert deferred.attempts == 0  # a quota deferral, not a failed attempt
    assert deferred.last_error is None
    assert outbound.queued() == 1  # back on the queue with a short delay

    outbound.drain()  # polls until the queue brings it back

    assert [c["status"] for c in outbound.upstream()] == [200]
    assert len(sends) == 1
    assert sends[0] - grants[-1].granted_at <= 0.25
    done = record("m-stale-2")
    assert done.status is MessageStatus.SENT
    assert done.attempts == 1
    assert [e["type"] for e in outbound.events()] == ["fi.arena.smartdialog.message.sent"]


class SlowFirstToken:
    """The app's auth provider, its first token taking ``seconds`` (a cold start's msal fetch, or
    a renewal), fetched under a lock as the msal providers do: other threads wait for it."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self.inner, self.delays, self.lock = inner, [seconds], threading.Lock()

    def token(self) -> str:
        with self.lock:
            if self.delays:
                time.sleep(self.delays.pop())
            return str(self.inner.token())

    def invalidate(self, token: str | None = None) -> None:
        self.inner.invalidate(token)


def slow_first_token(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Wrap the send ports' auth provider in :class:`SlowFirstToken`."""
    from shared.outbound import send_ports
    from shared.settings import get_settings

    client = send_ports(get_settings()).upstream.client
    monkeypatch.setattr(client, "auth", SlowFirstToken(client.auth, seconds))


def test_a_slow_token_fetch_comes_before_the_grant_so_no_grant_goes_stale_waiting_for_it(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cold start: 8 senders at once, the first token taking 0.4 s (past half the 0.25 s
    margin). Before, each took its grant, then waited for the token: every grant went stale
    and a second slot was spent per message (16/16 stale in the review's run)."""
    outbound.configure(QUOTA_SAFETY_MARGIN_SECONDS=TIGHT_MARGIN)
    grants, sends = _record_grants_and_sends(monkeypatch)
    slow_first_token(monkeypatch, 0.4)
    texts = [json.dumps(send(f"m-cold-{n}", DELIVERED)) for n in range(8)]

    workers = [threading.Thread(target=outbound.invoke, args=(text,)) for text in texts]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert len(grants) == 8  # one slot per message: none wasted on a stale grant
    assert len(sends) == 8
    assert all(record(f"m-cold-{n}").status is MessageStatus.SENT for n in range(8))


def test_a_token_fetch_that_fails_before_the_grant_waits_spending_no_slot_and_no_attempt(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.outbound import send_ports
    from shared.settings import get_settings
    from shared.smartdialog import CredentialsError

    grants, sends = _record_grants_and_sends(monkeypatch)
    client = send_ports(get_settings()).upstream.client

    def refused() -> str:
        raise CredentialsError("the identity provider refused the credentials: invalid_client")

    monkeypatch.setattr(client.auth, "token", refused)

    outbound.invoke(json.dumps(send("m-refused", DELIVERED)))

    assert (grants, sends) == ([], [])
    waiting = record("m-refused")
    assert waiting.status is MessageStatus.QUEUED  # waits for the credentials to be fixed
    assert waiting.attempts == 0  # a configuration wait, not an attempt
    assert outbound.queued() == 1


class RefusedFirstToken:
    """The app's auth provider, its first token one SmartDialog refuses (401: revoked since it
    was cached); after ``invalidate`` the real one."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.refused = inner, True

    def token(self) -> str:
        return "revoked-since-cached" if self.refused else str(self.inner.token())

    def invalidate(self, token: str | None = None) -> None:
        self.refused = False
        self.inner.invalidate(token)


def test_a_401_re_try_denied_its_slot_says_so_without_the_quotas_partition_key(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-try after a renewed token takes its own slot (acquire(0)); with the quota full
    the attempt ends rate-limited. Its detail went out as str(QuotaExceeded), which names the
    quota's partition key (host~digest) in status answers, events and dead letters."""
    from shared.outbound import send_ports
    from shared.quota import connection_key
    from shared.settings import get_settings

    outbound.configure(QUOTA_CALLS=1, SEND_MAX_ATTEMPTS=1)
    client = send_ports(get_settings()).upstream.client
    monkeypatch.setattr(client, "auth", RefusedFirstToken(client.auth))

    outbound.invoke(json.dumps(send("m-401-full", DELIVERED)))

    assert outbound.upstream() == []  # 401 at the door; the re-try had no slot
    failure = record("m-401-full").failure
    assert failure is not None
    assert failure.code == "rate-limited"
    assert failure.detail is not None
    assert failure.detail.startswith("quota full for a repeated attempt; retry in ")
    key = connection_key(get_settings())
    texts = [failure.detail, json.dumps(outbound.events()), json.dumps(outbound.dead_letters())]
    assert not any(key in text or key.split("~")[-1] in text for text in texts)


def test_neither_a_slow_token_nor_the_quota_wait_eats_into_the_calls_deadline(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SEND_TIMEOUT 1 s: the token takes 0.7 s, the quota wait 0.4 s. The deadline started
    before both, so the call found it spent: ConnectTimeout, a counted attempt with nothing
    sent ("could not be reached"). It starts after the grant now (the token is cached)."""
    from shared.outbound._quota_wait import QuotaWait

    outbound.configure(SEND_TIMEOUT_SECONDS=1)
    slow_first_token(monkeypatch, 0.7)
    real_take = QuotaWait.take

    def slow_take(self: QuotaWait, waited: float, holder: str) -> Any:
        time.sleep(0.4)  # a slot freeing late, within SMARTDIALOG_SEND_QUOTA_WAIT_SECONDS
        return real_take(self, waited, holder)

    monkeypatch.setattr(QuotaWait, "take", slow_take)

    outbound.invoke(json.dumps(send("m-late-slot", DELIVERED)))

    done = record("m-late-slot")
    assert (done.status, done.attempts, done.last_error) == (MessageStatus.SENT, 1, None)
    assert len(outbound.upstream()) == 1


class RenewedInTheAttempt:
    """The app's auth provider: its token is in hand when the sender checks (``ready``), but
    another call's 401 invalidated it before this attempt, whose fetch takes ``seconds``."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self.inner, self.calls, self.seconds = inner, 0, seconds

    def token(self) -> str:
        self.calls += 1
        if self.calls == 2:
            time.sleep(self.seconds)
        return str(self.inner.token())

    def invalidate(self, token: str | None = None) -> None:
        self.inner.invalidate(token)


def test_a_deadline_a_slow_token_used_up_before_the_first_byte_is_not_an_attempt(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attempt's own token fetch outlasts SEND_TIMEOUT: the deadline check ran before the
    grant's freshness check, so a ConnectTimeout counted an attempt with nothing sent. The stale
    grant is found first now: a quota deferral, and the next grant's call goes out."""
    from shared.outbound import send_ports
    from shared.settings import get_settings

    outbound.configure(SEND_TIMEOUT_SECONDS=0.5, QUOTA_SAFETY_MARGIN_SECONDS=TIGHT_MARGIN)
    client = send_ports(get_settings()).upstream.client
    monkeypatch.setattr(client, "auth", RenewedInTheAttempt(client.auth, 0.6))

    outbound.invoke(json.dumps(send("m-renewed", DELIVERED)))

    done = record("m-renewed")
    assert (done.status, done.attempts, done.last_error) == (MessageStatus.SENT, 1, None)
    assert len(outbound.upstream()) == 1


def test_a_claim_too_close_to_its_end_after_the_quota_wait_is_handed_back_not_called(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.quota import QuotaStore

    outbound.configure(  # a call may take 1.275 s (the timeout and its lease margin)
        SEND_LEASE_SECONDS=3.0, SEND_TIMEOUT_SECONDS=1.0, SEND_QUOTA_WAIT_SECONDS=0.1
    )
    real_acquire = QuotaStore.try_acquire
    delays = [2.4]  # the claim's lease then has 0.6 s left, less than a call may take

    def slow_acquire(self: QuotaStore) -> Any:
        if delays:
            time.sleep(delays.pop())
        return real_acquire(self)

    monkeypatch.setattr(QuotaStore, "try_acquire", slow_acquire)

    outbound.invoke(json.dumps(send("m-lease", DELIVERED)))

    assert outbound.upstream() == []
    handed_back = record("m-lease")
    assert handed_back.status is MessageStatus.QUEUED
    assert handed_back.attempts == 0
    assert handed_back.lease_until is None
    outbound.drain()
    assert len(outbound.upstream()) == 1
    assert record("m-lease").status is MessageStatus.SENT


# --- backoff and crash windows of the announcement ---------------------------------------------


def test_a_duplicate_copy_waits_out_the_records_backoff(outbound: Outbound) -> None:
    outbound.configure(SEND_RETRY_BASE_SECONDS=5)
    text = json.dumps(send("m-backoff", TEMPORARY))
    outbound.invoke(text)  # 503: retry scheduled in ~4-5 s
    waiting = record("m-backoff")
    assert waiting.status is MessageStatus.QUEUED
    assert waiting.next_attempt_at is not None

    outbound.invoke(text)  # a duplicate of the queue message, visible at once

    assert len(outbound.upstream()) == 1  # not retried early
    assert record("m-backoff").attempts == 1
    assert outbound.queued() == 2  # the scheduled retry and the deferred duplicate
    assert outbound.run_once() == 0  # both invisible until the backoff ends


def test_a_crash_after_the_retry_was_requeued_leaves_the_original_to_wait_out_the_backoff(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.outbound import send_ports
    from shared.settings import get_settings

    outbound.configure(SEND_RETRY_BASE_SECONDS=30)
    crash_once(
        monkeypatch, send_ports(get_settings()).outbound, "send_message",
        "worker died after requeueing the retry, before the host deleted the original",
        when=lambda text, **options: options.get("visibility_timeout", 0) > 0,
        first=lambda real, queue, *args, **options: real(queue, *args, **options),
    )  # fmt: skip
    text = json.dumps(send("m-requeued", TEMPORARY))
    with pytest.raises(RuntimeError):
        outbound.invoke(text)  # 503: the retry's copy is queued, then the worker dies
    assert outbound.queued() == 1  # that copy, invisible for the backoff
    assert record("m-requeued").next_attempt_at is not None

    outbound.invoke(text, dequeue_count=2)  # the original, which the host delivers again

    assert len(outbound.upstream()) == 1  # not retried before the backoff ends
    assert record("m-requeued").attempts == 1
    assert outbound.queued() == 2  # the retry and the original, deferred to the backoff's end
    assert outbound.run_once() == 0  # both invisible until then


def test_a_crash_before_the_announcement_is_recorded_re_emits_its_event_and_keeps_one_dead_letter(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    crash_once(
        monkeypatch, MessageStore, "swap_many", "worker died after the dead letter and the event",
        when=lambda items, **_: any(changes.get("announced") for _, changes in items),
    )  # fmt: skip
    text = json.dumps(send("m-dead", REJECTED))
    with pytest.raises(RuntimeError):
        outbound.invoke(text)
    outbound.invoke(text, dequeue_count=2)  # the host delivers it again

    letters = outbound.dead_letters()
    assert [d["id"] for d in letters] == ["m-dead:failed"]  # indexed already: not written again
    assert [d["messageId"] for d in letters] == ["m-dead"]
    events = outbound.events()
    assert [e["id"] for e in events] == ["m-dead:failed"] * 2
    assert record("m-dead").announced


def test_a_rule_send_made_again_after_its_rule_was_edited_is_acknowledged_not_dead_lettered(
    outbound: Outbound,
) -> None:
    """A notification rule's send has its id from rule, event and recipient alone: the event
    delivered again after the rule's text was edited queues a different command with the same
    id. It is that send again (not sent twice), not a message that took another's id (a
    malformed dead letter no operator could re-drive)."""
    from shared.outbound import derive_message_id

    number = "+358402000011"
    message_id = derive_message_id("notification-rule", f"disk\ns\ne-1\n{number}")

    def command(content: str, rule_id: str = "disk", to: str = number) -> dict[str, Any]:
        return {
            "operation": "SendMessage",
            "messageId": message_id,
            "origin": {"ruleId": rule_id, "eventId": "e-1", "eventSource": "s"},
            "body": {"Sender": "Ops", "Content": content, "Recipients": [{"Address": to}],
                     "RequestId": message_id},
        }  # fmt: skip

    outbound.enqueue(command("disk full"))
    outbound.drain()
    outbound.enqueue(command("disk full on vm-1"))  # the rule edited, the event again
    outbound.drain()

    assert outbound.dead_letters() == []
    assert [c["body"]["Content"] for c in outbound.upstream()] == ["disk full"]
    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    assert record.status is MessageStatus.SENT

    outbound.enqueue(command("disk gone", rule_id="other"))  # another origin: not a repeat
    outbound.drain()
    [letter] = outbound.dead_letters()
    assert letter["reason"] == "malformed"
    # The same origin but to someone else: the id is not that send's, so no repeat either.
    outbound.enqueue(command("disk full", to="+358402000099"))
    outbound.drain()
    assert [d["reason"] for d in outbound.dead_letters()] == ["malformed", "malformed"]
    assert len(outbound.upstream()) == 1


def test_a_single_send_that_expires_after_a_failed_attempt_quotes_its_last_error(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """Its failure, event and dead letter say what the last attempt got, as a bulk member's
    do (operations.md: an ``outcome-unknown`` quotes the last error, so an operator can judge
    whether SmartDialog has it). Found in review: the single path dropped it."""
    outbound.configure(SEND_RETRY_BASE_SECONDS=5, SEND_RETRY_MAX_SECONDS=5)
    now = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC)
    text = json.dumps(
        send("m-expires-after-500", ERROR, validUntil=(now + dt.timedelta(seconds=120)).isoformat())
    )
    from shared.outbound import OutboundSender, OutcomeKind

    first = OutboundSender.from_settings().process(text)
    assert first.kind is OutcomeKind.RETRY_SCHEDULED  # a 500: it may have gone through
    manual_clock.advance(200)  # its copy is back after its validity

    assert OutboundSender.from_settings().process(text).kind is OutcomeKind.FAILED

    failure = record("m-expires-after-500").failure
    assert failure is not None
    assert (failure.code, failure.upstreamStatus) == ("outcome-unknown", 500)
    assert "validUntil" in (failure.detail or "")
    assert "last error: SmartDialog answered 500" in (failure.detail or "")
    [event] = [e for e in outbound.events() if e["type"].endswith("failed")]
    assert event["data"]["error"]["upstreamStatus"] == 500
