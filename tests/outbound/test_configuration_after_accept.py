"""A setting a send needs (callback secrets, the public URL) that breaks after a message was
accepted, or a command put straight on ``smartdialog-outbound`` while it is broken: the sender
defers the message before claiming it or taking a quota slot (no attempt, no upstream call),
sends it once the setting is fixed, and fails it ``expired`` with its event when its validity
ends. Before, it raised while building the delivery-report URL, after taking a slot, and after
the host's retries landed in ``smartdialog-outbound-poison`` with no reason and no event."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from typing import Any

import pytest

from shared.clock import ManualClock, utcnow
from shared.logs import HeldSends
from shared.messages import MessageRecord, MessageStatus, MessageStore
from shared.names import OUTBOUND_QUEUE
from shared.outbound import OutboundSender, _outcomes, derive_message_id
from shared.outbound._outcomes import CONFIGURATION_RECHECK_SECONDS, OutcomeKind
from shared.quota import QuotaStore
from shared.settings import get_settings
from shared.storage import queue_client
from shared.unconfigured import RECHECK_SECONDS
from tests.bulk.test_batch_packs import NUMBERS, accepted_batch, drivers, member_ids
from tests.outbound.conftest import DELIVERED, SECRET, Outbound, call_http, sms, status_of

SHORT_SECRET = "too-short-a-secret"


@pytest.fixture
def slots(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every quota decision the senders ask for (the real store answers)."""
    asked: list[object] = []
    real = QuotaStore.try_acquire

    def counted(self: QuotaStore) -> Any:
        decision = real(self)
        asked.append(decision)
        return decision

    monkeypatch.setattr(QuotaStore, "try_acquire", counted)
    return asked


def command(message_id: str, **envelope: object) -> str:
    return json.dumps(
        {"operation": "SendMessage", "messageId": message_id, "body": sms(DELIVERED), **envelope}
    )


def record(message_id: str) -> MessageRecord:
    found = MessageStore.from_settings().get(message_id)
    assert found is not None
    return found


def no_public_url(outbound: Outbound) -> None:
    for name in ("WEBSITE_HOSTNAME", "AZURE_FUNCTIONS_ENVIRONMENT"):
        outbound.monkeypatch.delenv(name, raising=False)
    outbound.configure(PUBLIC_BASE_URL="")


def test_a_queued_command_with_a_short_secret_waits_unclaimed_and_is_sent_once_fixed(
    outbound: Outbound, slots: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    outbound.configure(CALLBACK_SECRETS=SHORT_SECRET)
    text = command("m-config")

    with caplog.at_level(logging.DEBUG, logger="shared.outbound.sender"):
        deferred = OutboundSender.from_settings().process(text)

    assert deferred.kind is OutcomeKind.DEFERRED
    assert deferred.detail == "configuration"
    assert deferred.delay_seconds == CONFIGURATION_RECHECK_SECONDS
    assert outbound.queued() == 1  # its copy, back after the recheck delay
    assert slots == []  # no quota slot taken
    assert outbound.upstream() == []
    waiting = record("m-config")
    assert waiting.status is MessageStatus.QUEUED
    assert waiting.attempts == 0  # a deferral is not an attempt
    assert waiting.lease_until is None
    assert outbound.events() == []
    assert outbound.dead_letters() == []
    lines = " ".join(r.getMessage() for r in caplog.records)
    assert "message m-config not sent: setting SMARTDIALOG_CALLBACK_SECRETS" in lines
    assert SHORT_SECRET not in lines  # the setting is named, never its value

    outbound.configure(CALLBACK_SECRETS=SECRET)  # fixed: the copy comes back and is sent
    sent = OutboundSender.from_settings().process(text)

    assert sent.kind is OutcomeKind.SENT
    assert len(outbound.upstream()) == 1
    assert record("m-config").status is MessageStatus.SENT
    assert [e["type"] for e in outbound.events()] == ["fi.arena.smartdialog.message.sent"]


def test_a_queued_command_without_credentials_waits_unclaimed_and_is_sent_once_they_are_set(
    outbound: Outbound, slots: list[object]
) -> None:
    token = os.environ["SMARTDIALOG_ACCESS_TOKEN"]
    outbound.configure(ACCESS_TOKEN="")  # forgotten: no credentials at all
    text = command("m-no-credentials")

    deferred = OutboundSender.from_settings().process(text)

    assert deferred.kind is OutcomeKind.DEFERRED
    assert deferred.detail == "configuration"
    assert slots == []
    assert outbound.upstream() == []
    assert record("m-no-credentials").attempts == 0  # no attempt spent while unconfigured
    assert outbound.dead_letters() == []

    outbound.configure(ACCESS_TOKEN=token)
    assert OutboundSender.from_settings().process(text).kind is OutcomeKind.SENT
    assert len(outbound.upstream()) == 1


def test_a_message_waiting_for_its_setting_fails_expired_with_its_event_when_validity_ends(
    outbound: Outbound, slots: list[object], manual_clock: ManualClock
) -> None:
    no_public_url(outbound)
    valid_until = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC) + dt.timedelta(seconds=20)
    text = command("m-config-late", validUntil=valid_until.isoformat())

    deferred = OutboundSender.from_settings().process(text)
    assert deferred.kind is OutcomeKind.DEFERRED
    assert deferred.detail == "configuration"
    assert deferred.delay_seconds == 20  # back when its validity ends, not later

    manual_clock.advance(21)
    failed = OutboundSender.from_settings().process(text)

    assert failed.kind is OutcomeKind.FAILED
    assert failed.detail == "expired"
    assert slots == []
    assert outbound.upstream() == []
    done = record("m-config-late")
    assert done.status is MessageStatus.FAILED
    assert done.failure is not None
    assert done.failure.code == "expired"
    events = outbound.events()
    assert [e["type"] for e in events] == ["fi.arena.smartdialog.message.failed"]
    assert events[0]["data"]["error"]["code"] == "expired"
    # It says what it waited for (it used to say only "validUntil ... passed").
    assert "waited for setting SMARTDIALOG_PUBLIC_BASE_URL" in done.failure.detail
    assert [d["messageId"] for d in outbound.dead_letters()] == ["m-config-late"]


def test_a_bulk_pack_waits_unclaimed_for_its_setting_and_is_sent_once_fixed(
    outbound: Outbound, slots: list[object]
) -> None:
    batch = accepted_batch(*NUMBERS[:3])
    ids = member_ids(batch)
    [driver] = drivers(outbound)
    before = {i: record(i).status for i in ids}
    outbound.configure(CALLBACK_SECRETS=SHORT_SECRET)

    deferred = OutboundSender.from_settings().process(json.dumps(driver))

    assert deferred.kind is OutcomeKind.DEFERRED
    assert deferred.detail == "configuration"
    assert slots == []
    assert outbound.upstream() == []
    assert {i: record(i).status for i in ids} == before  # no member claimed
    assert all(record(i).attempts == 0 for i in ids)

    outbound.configure(CALLBACK_SECRETS=SECRET)
    OutboundSender.from_settings().process(json.dumps(driver))

    calls = outbound.upstream()
    assert len(calls) == 1
    assert len(calls[0]["body"]["Recipients"]) == 3
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


# --- credentials the identity provider refuses, an identity provider that fails -----------------


def refused_secret(outbound: Outbound) -> dict[str, str]:
    """Client credentials the sandbox's identity provider refuses (invalid_client); the access
    token to put back."""
    token = os.environ["SMARTDIALOG_ACCESS_TOKEN"]
    outbound.configure(
        ACCESS_TOKEN="",
        CLIENT_ID="sandbox-client",
        CLIENT_SECRET="not-the-secret",
        AUTHORITY=outbound.sandbox.authority,
    )
    return {"ACCESS_TOKEN": token, "CLIENT_ID": "", "CLIENT_SECRET": "", "AUTHORITY": ""}


def test_refused_credentials_are_a_configuration_wait_not_attempts_until_fixed(
    outbound: Outbound, slots: list[object], manual_clock: ManualClock
) -> None:
    """Before, each refusal counted an attempt with its backoff: after SEND_MAX_ATTEMPTS the
    send failed attempts-exhausted and was dead-lettered while the setting was still wrong."""
    fixed = refused_secret(outbound)
    outbound.configure(SEND_MAX_ATTEMPTS=2)
    text = command("m-refused-creds")

    for _ in range(3):  # more often than SEND_MAX_ATTEMPTS allows attempts
        deferred = OutboundSender.from_settings().process(text)
        assert (deferred.kind, deferred.detail) == (OutcomeKind.DEFERRED, "configuration")
        assert deferred.delay_seconds == CONFIGURATION_RECHECK_SECONDS
        manual_clock.advance(deferred.delay_seconds)  # its copy is back

    assert slots == []
    assert outbound.upstream() == []
    waiting = record("m-refused-creds")
    assert (waiting.status, waiting.attempts, waiting.lease_until) == (
        MessageStatus.QUEUED,
        0,
        None,
    )
    assert outbound.events() == []
    assert outbound.dead_letters() == []

    outbound.configure(**fixed)
    assert OutboundSender.from_settings().process(text).kind is OutcomeKind.SENT
    assert len(outbound.upstream()) == 1


def test_a_send_waiting_for_refused_credentials_fails_expired_with_its_event(
    outbound: Outbound,
    slots: list[object],
    manual_clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused_secret(outbound)
    outbound.monkeypatch.setattr(_outcomes, "held", HeldSends(_outcomes.log))
    valid_until = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC) + dt.timedelta(seconds=20)
    text = command("m-refused-late", validUntil=valid_until.isoformat())

    with caplog.at_level(logging.WARNING, logger="shared.outbound.sender"):
        deferred = OutboundSender.from_settings().process(text)
    # It says what is true: the setting, refused by the identity provider; /api/health, which
    # checks only that it is set, answers 200 (it used to say "see /api/health").
    [warning] = [r.getMessage() for r in caplog.records]
    assert (
        "credentials of connection default: SMARTDIALOG_CLIENT_SECRET could not be used: "
        "the identity provider refused the credentials: invalid_client" in warning
    )
    assert "/api/health checks only that they are set" in warning
    assert "not-the-secret" not in warning
    assert (deferred.detail, deferred.delay_seconds) == ("configuration", 20)
    manual_clock.advance(21)
    failed = OutboundSender.from_settings().process(text)

    assert (failed.kind, failed.detail) == (OutcomeKind.FAILED, "expired")
    assert slots == []
    assert record("m-refused-late").attempts == 0
    failure = record("m-refused-late").failure
    assert failure is not None
    assert "the identity provider refused the credentials" in str(failure.detail)
    events = outbound.events()
    assert [e["data"]["error"]["code"] for e in events] == ["expired"]
    assert [d["messageId"] for d in outbound.dead_letters()] == ["m-refused-late"]


def test_a_bulk_pack_waits_for_refused_credentials_its_members_unattempted(
    outbound: Outbound, slots: list[object], manual_clock: ManualClock
) -> None:
    batch = accepted_batch(*NUMBERS[:3])
    ids = member_ids(batch)
    [driver] = drivers(outbound)
    fixed = refused_secret(outbound)

    deferred = OutboundSender.from_settings().process(json.dumps(driver))

    assert (deferred.kind, deferred.detail) == (OutcomeKind.DEFERRED, "configuration")
    assert slots == []
    assert outbound.upstream() == []
    assert all(record(i).attempts == 0 for i in ids)
    assert {record(i).status for i in ids} == {MessageStatus.QUEUED}
    now = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC)
    # Each member is due when its driver is back, so its status tells a poller so.
    due = {(record(i).waits_until or now) - now for i in ids}
    assert due == {dt.timedelta(seconds=CONFIGURATION_RECHECK_SECONDS)}

    outbound.configure(**fixed)
    manual_clock.advance(deferred.delay_seconds)  # the driver is back
    OutboundSender.from_settings().process(json.dumps(driver))
    [call] = outbound.upstream()
    assert len(call["body"]["Recipients"]) == 3
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


def test_an_index_pack_waits_for_refused_credentials_its_members_unattempted(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.outbound import _outcomes
    from tests.bulk.test_packing import accept, park, waiting_for_a_slot
    from tests.waiting import wait_for

    monkeypatch.setattr(_outcomes, "CONFIGURATION_RECHECK_SECONDS", 1.0)  # drain() waits for it
    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:3])
    park(outbound)  # each met the full quota once: deferred and indexed, a pack forms next
    fixed = refused_secret(outbound)

    wait_for(outbound.run_once, timeout=10, what="a parked send back, to lead its pack")

    assert outbound.upstream() == []
    assert all(record(i).attempts == 0 for i in ids)
    assert {record(i).status for i in ids} == {MessageStatus.QUEUED}
    assert outbound.dead_letters() == []

    outbound.configure(**fixed)
    outbound.drain()
    [call] = outbound.upstream()
    assert len(call["body"]["Recipients"]) == 3
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


def test_an_identity_provider_that_fails_defers_with_backoff_not_attempts(
    outbound: Outbound, slots: list[object], manual_clock: ManualClock
) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = os.environ["SMARTDIALOG_ACCESS_TOKEN"]
    outbound.configure(
        ACCESS_TOKEN="", CLIENT_ID="app-1", CLIENT_SECRET="s3cret-s3cret",
        AUTHORITY=f"https://127.0.0.1:{port}/tenant", SEND_MAX_ATTEMPTS=1,
        SEND_RETRY_BASE_SECONDS=4, SEND_RETRY_MAX_SECONDS=8,
    )  # fmt: skip
    text = command("m-no-idp")

    first = OutboundSender.from_settings().process(text)
    manual_clock.advance(first.delay_seconds)
    again = OutboundSender.from_settings().process(command("m-no-idp", deferrals=1))  # its copy

    assert (first.kind, first.detail) == (OutcomeKind.DEFERRED, "identity-provider")
    assert first.delay_seconds in (3, 4)  # the base backoff, jittered
    assert again.delay_seconds in (6, 7, 8)  # twice that after one deferral
    assert slots == []
    assert record("m-no-idp").attempts == 0  # SEND_MAX_ATTEMPTS=1 would have failed it
    assert outbound.dead_letters() == []

    outbound.configure(ACCESS_TOKEN=token, CLIENT_ID="", CLIENT_SECRET="", AUTHORITY="")
    manual_clock.advance(again.delay_seconds)
    assert OutboundSender.from_settings().process(text).kind is OutcomeKind.SENT


def test_queued_sends_waiting_for_a_broken_setting_warn_once_a_minute_not_once_each(
    outbound: Outbound, manual_clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Every queued send wrote a warning at every recheck: 10,000 sends, 10,000 lines a
    minute, the one that matters sampled away. Now each send's line is at DEBUG, with its
    message id, and one warning a minute counts them."""
    outbound.configure(CALLBACK_SECRETS=SHORT_SECRET)
    outbound.monkeypatch.setattr(_outcomes, "held", HeldSends(_outcomes.log))
    texts = [command(f"m-held-{i}") for i in range(12)]

    with caplog.at_level(logging.DEBUG, logger="shared.outbound.sender"):
        for text in texts:
            assert OutboundSender.from_settings().process(text).detail == "configuration"
        manual_clock.advance(CONFIGURATION_RECHECK_SECONDS)
        OutboundSender.from_settings().process(texts[0])

    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        "a send is waiting for the settings of connection default: setting "
        "SMARTDIALOG_CALLBACK_SECRETS is not configured (see /api/health); more such waits "
        "are counted, one line a minute",
        "12 send(s) waiting for the settings of connection default in the last 60 s: setting "
        "SMARTDIALOG_CALLBACK_SECRETS is not configured (see /api/health)",
    ]
    debug = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    assert all(f"message m-held-{i} not sent: setting" in debug for i in range(12))


def test_a_send_waiting_for_two_settings_names_both_in_one_sentence(
    outbound: Outbound, caplog: pytest.LogCaptureFixture
) -> None:
    outbound.configure(ACCESS_TOKEN="", CALLBACK_SECRETS=SHORT_SECRET)

    with caplog.at_level(logging.DEBUG, logger="shared.outbound.sender"):
        assert OutboundSender.from_settings().process(command("m-two")).detail == "configuration"

    assert "message m-two not sent: settings SMARTDIALOG_ACCESS_TOKEN, " in caplog.text
    assert "SMARTDIALOG_CALLBACK_SECRETS are not configured;" in caplog.text


def test_a_policy_of_held_settings_names_those_held_at_their_defaults(outbound: Outbound) -> None:
    """Held settings (a lenient function's) hold a refused setting at its default: a policy made
    of them names it, so nothing that trusts ``broken_settings`` sends with it."""
    from shared.outbound._ports import SendPolicy
    from shared.settings_leniency import leniently

    outbound.configure(PUBLIC_BASE_URL="nourl")
    with leniently():
        policy = SendPolicy.from_settings(get_settings())
    assert "SMARTDIALOG_PUBLIC_BASE_URL" in policy.broken_settings


def test_a_send_waiting_for_refused_credentials_says_so_on_its_status(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """Before, its status answered ``queued``, Retry-After 1, no LastError for up to a day."""
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED, content="refused wait"))
    fixed = refused_secret(outbound)
    [copy] = queue_client(OUTBOUND_QUEUE).receive_messages()
    waits = OutboundSender.from_settings().process(copy.content)
    assert waits.detail == "configuration"

    polled = status_of(accepted.headers["Location"])

    assert polled.status == 202
    assert polled.body["Attempts"] == 0
    assert polled.body["LastError"]["code"] == "configuration"
    assert "SMARTDIALOG_CLIENT_SECRET could not be used" in polled.body["LastError"]["detail"]
    assert "not-the-secret" not in json.dumps(polled.body)
    longest = get_settings().send_status_retry_after_seconds
    assert polled.headers["Retry-After"] == str(min(RECHECK_SECONDS, longest))

    outbound.configure(**fixed)
    manual_clock.advance(waits.delay_seconds)  # its copy is back
    assert OutboundSender.from_settings().process(copy.content).kind is OutcomeKind.SENT
    assert status_of(accepted.headers["Location"]).status == 200


def test_a_setting_s_wait_is_recorded_once_not_for_each_recheck(outbound: Outbound) -> None:
    outbound.configure(CALLBACK_SECRETS=SHORT_SECRET)
    text = command("m-noted")
    OutboundSender.from_settings().process(text)
    first = record("m-noted")
    assert first.last_error is not None
    assert first.last_error.code == "configuration"
    assert "SMARTDIALOG_CALLBACK_SECRETS" in (first.last_error.detail or "")
    assert SHORT_SECRET not in (first.last_error.detail or "")

    OutboundSender.from_settings().process(text)  # its recheck: nothing written

    assert record("m-noted").etag == first.etag
    outbound.configure(CALLBACK_SECRETS=SECRET)
    assert OutboundSender.from_settings().process(text).kind is OutcomeKind.SENT
    assert record("m-noted").last_error is None


def test_an_index_pack_s_members_claimed_by_its_leader_lose_their_wait_s_last_error(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, only the leader's claim cleared it: the members said "Waiting for a setting to
    be fixed" (Retry-After 30) during their call, and kept it if handed back."""
    from shared.outbound._attempt import Upstream
    from tests.bulk.test_packing import accept, waiting_for_a_slot

    monkeypatch.setattr(_outcomes, "CONFIGURATION_RECHECK_SECONDS", 1.0)  # drain() waits for it
    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:3])
    outbound.configure(CALLBACK_SECRETS=SHORT_SECRET)
    outbound.run_once()  # each copy meets the broken setting
    assert {(e := record(i).last_error) and e.code for i in ids} == {"configuration"}
    outbound.configure(CALLBACK_SECRETS=SECRET, SEND_QUOTA_WAIT_SECONDS=3)
    during: list[object] = []
    real = Upstream.attempt

    def seen(self: Upstream, *args: Any, **kwargs: Any) -> Any:
        during.extend(record(i).last_error for i in ids)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Upstream, "attempt", seen)
    outbound.drain()

    [call] = outbound.upstream()
    assert len(call["body"]["Recipients"]) == 3
    assert during == [None, None, None]


def test_an_index_pack_handed_back_for_refused_credentials_says_so_on_every_member(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, only the leader's hand-back wrote it: the other members answered queued,
    Retry-After 1, no LastError."""
    from tests.bulk.test_packing import accept, park, waiting_for_a_slot
    from tests.waiting import wait_for

    monkeypatch.setattr(_outcomes, "CONFIGURATION_RECHECK_SECONDS", 1.0)
    waiting_for_a_slot(outbound)
    ids = accept(*NUMBERS[:3])
    park(outbound)
    refused_secret(outbound)

    wait_for(outbound.run_once, timeout=10, what="a parked send back, to lead its pack")

    assert outbound.upstream() == []
    errors = [record(i).last_error for i in ids]
    assert [e and e.code for e in errors] == ["configuration"] * 3
    assert all("SMARTDIALOG_CLIENT_SECRET" in ((e and e.detail) or "") for e in errors)


def test_a_bulk_member_in_backoff_keeps_its_last_error_while_its_pack_waits_for_a_setting(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """Before, the pack's wait wrote ``configuration`` over it and the next claim cleared it."""
    from shared.messages import FailureInfo

    ids = member_ids(accepted_batch(*NUMBERS[:3]))
    [driver] = drivers(outbound)
    store = MessageStore.from_settings()
    failed = FailureInfo(code="upstream-unavailable", title="SmartDialog answered 503")
    later = utcnow() + dt.timedelta(seconds=30)
    assert store.swap(
        record(ids[0]), status=MessageStatus.QUEUED, last_error=failed, next_attempt_at=later
    )  # fmt: skip  (its pack's last call failed)
    outbound.configure(CALLBACK_SECRETS=SHORT_SECRET)

    OutboundSender.from_settings().process(json.dumps(driver))

    assert record(ids[0]).last_error == failed
    assert [(e := record(i).last_error) and e.code for i in ids[1:]] == ["configuration"] * 2
    outbound.configure(CALLBACK_SECRETS=SECRET)
    manual_clock.advance(31)
    OutboundSender.from_settings().process(json.dumps(driver))
    assert {record(i).status for i in ids} == {MessageStatus.SENT}


@pytest.mark.parametrize("size", ["small", "at-the-limit"])
def test_a_command_naming_no_message_put_back_while_unconfigured_is_not_sent_again(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, size: str
) -> None:
    """Found in review: a command with neither ``messageId`` nor ``RequestId`` takes its id
    from its queue message. Delivered again after it was sent (a crash before its delete) while
    a setting did not validate, it was put back unchanged as a new queue message, so once the
    setting was fixed it was a new message with a new RequestId, sent a second time. (A second
    read: one whose copy with its id no longer fit a queue message still went back unnamed; it
    goes by reference.)"""
    import shared.unconfigured
    from shared.payloads import QUEUE_MESSAGE_BUDGET, queue_message_bytes

    monkeypatch.setattr(shared.unconfigured, "RECHECK_SECONDS", 0)  # the copy visible at once
    content = "Put back"
    if size == "at-the-limit":  # 20 bytes to spare: the copy's messageId needs about 50
        empty = {"operation": "SendMessage", "body": sms(DELIVERED, content="")}
        content = "x" * (QUEUE_MESSAGE_BUDGET - queue_message_bytes(json.dumps(empty)) - 20)
    text = json.dumps({"operation": "SendMessage", "body": sms(DELIVERED, content=content)})
    queue_id = f"q-{uuid.uuid4()}"  # its message id derives from it: new to the shared tables
    outbound.invoke(text, message_id=queue_id)  # sent
    outbound.invoke(text, message_id=queue_id, dequeue_count=2)  # delivered again: recognised
    assert len(outbound.upstream()) == 1
    outbound.configure(QUOTA_CALLS=0)  # a setting that does not validate
    outbound.invoke(text, message_id=queue_id, dequeue_count=3)  # put back as a new message
    outbound.configure(QUOTA_CALLS=2000)  # fixed
    [copy] = outbound.read(OUTBOUND_QUEUE)
    assert copy["messageId"] == derive_message_id("queue-message", queue_id)  # its id, kept
    assert copy.get("kind") == ("stored" if size == "at-the-limit" else None)
    outbound.drain()
    assert len(outbound.upstream()) == 1
