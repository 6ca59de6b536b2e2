"""Found by the fault soak (50% faults, seed 5): a message whose answer was lost after SmartDialog
accepted it, and whose every retry then failed too, ends ``failed`` with code
``attempts-exhausted``, a dead letter and a ``message.failed`` event, although it was sent.

Giving up (then ``Outcomes.give_up``, now ``give_up`` in shared/outbound/_giving_up.py) saw only
the last error. Now the record remembers (``maybe_sent``) that an earlier attempt may have got
through, and giving up says so (code ``outcome-unknown``), which the invariants accept for a
message sent once."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from devhost.azurite import Azurite
from sandbox.faults import FaultKind, FaultPlan
from shared.clock import ManualClock
from shared.messages import MessageRecord, MessageStatus, MessageStore
from shared.names import EVENTS_QUEUE
from tests.crash import LEASE, crash_once
from tests.invariants import QueueDrain, check_invariants
from tests.outbound.conftest import DELIVERED, Outbound, call_http, sms


def test_a_message_sent_but_unanswered_whose_retries_fail_does_not_end_failed_as_not_sent(
    private_outbound: Callable[..., Outbound], azurite: Azurite
) -> None:
    env = private_outbound(faults=FaultPlan(rate=1.0, kinds=(FaultKind.LOST_ANSWER,)))
    env.configure(SEND_MAX_ATTEMPTS=2)
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED))

    env.run_once()  # attempt 1: accepted upstream, the answer lost
    env.sandbox.app.faults.configure(FaultPlan(rate=1.0, kinds=(FaultKind.UNAVAILABLE,)))
    env.drain()  # attempt 2: 503, the last attempt

    report = check_invariants(
        azurite.connection_string,
        [accepted.body["Id"]],
        events=QueueDrain(azurite.connection_string, EVENTS_QUEUE).json(),
        upstream=env.sandbox.state.snapshot("messages"),
    )
    report.assert_holds()


def test_the_doubt_stays_after_a_later_attempt_that_certainly_did_not_send(
    private_outbound: Callable[..., Outbound], azurite: Azurite
) -> None:
    env = private_outbound(faults=FaultPlan(rate=1.0, kinds=(FaultKind.LOST_ANSWER,)))
    env.configure(SEND_MAX_ATTEMPTS=2)
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED))
    message_id = accepted.body["Id"]

    env.run_once()  # attempt 1: accepted upstream, the answer lost
    assert stored(message_id).maybe_sent
    env.sandbox.app.faults.configure(FaultPlan(rate=1.0, kinds=(FaultKind.THROTTLED,)))
    env.drain()  # attempt 2: 429, which proves only that this attempt was not sent

    failed = stored(message_id)
    assert failed.failure is not None
    assert failed.failure.code == "outcome-unknown"  # not rate-limited
    assert "may have been sent" in failed.failure.title
    [event] = env.events()
    assert event["data"]["error"]["code"] == "outcome-unknown"


def test_a_bulk_pack_that_gives_up_after_an_ambiguous_attempt_says_it_may_have_been_sent(
    private_outbound: Callable[..., Outbound], azurite: Azurite
) -> None:
    from tests.bulk.test_batch_packs import NUMBERS, accepted_batch, member_ids

    env = private_outbound(faults=FaultPlan(rate=1.0, kinds=(FaultKind.LOST_ANSWER,)))
    env.configure(SEND_MAX_ATTEMPTS=2)
    ids = member_ids(accepted_batch(*NUMBERS[:3]))

    env.run_once()  # the pack's call: accepted upstream, the answer lost
    assert all(stored(i).maybe_sent for i in ids)
    env.sandbox.app.faults.configure(FaultPlan(rate=1.0, kinds=(FaultKind.UNAVAILABLE,)))
    env.drain()

    assert {stored(i).failure.code for i in ids} == {"outcome-unknown"}  # type: ignore[union-attr]
    report = check_invariants(
        azurite.connection_string,
        ids,
        events=QueueDrain(azurite.connection_string, EVENTS_QUEUE).json(),
        upstream=env.sandbox.state.snapshot("messages"),
    )
    report.assert_holds()


def stored(message_id: str) -> MessageRecord:
    found = MessageStore.from_settings().get(message_id)
    assert found is not None
    return found


def test_a_message_whose_worker_died_after_upstream_accepted_it_gives_up_as_outcome_unknown(
    private_outbound: Callable[..., Outbound],
    azurite: Azurite,
    monkeypatch: pytest.MonkeyPatch,
    manual_clock: ManualClock,
) -> None:
    env = private_outbound()
    env.configure(SEND_MAX_ATTEMPTS=2)
    crash_once(
        monkeypatch, MessageStore, "swap", "worker died after upstream accepted the message",
        when=lambda record, **changes: changes.get("status") is MessageStatus.SENT,
    )  # fmt: skip
    text = json.dumps({"operation": "SendMessage", "messageId": "m-died", "body": sms(DELIVERED)})
    with pytest.raises(RuntimeError):
        env.invoke(text)  # accepted upstream; the worker died before recording it
    env.sandbox.app.faults.configure(FaultPlan(rate=1.0, kinds=(FaultKind.THROTTLED,)))
    manual_clock.advance(LEASE + 1)  # its claim runs out

    env.invoke(text, dequeue_count=2)  # the last attempt: 429, proof only that it was not sent

    failed = stored("m-died")
    assert failed.failure is not None
    assert failed.failure.code == "outcome-unknown"
    check_invariants(
        azurite.connection_string,
        ["m-died"],
        events=QueueDrain(azurite.connection_string, EVENTS_QUEUE).json(),
        upstream=env.sandbox.state.snapshot("messages"),
    ).assert_holds()


def test_a_message_whose_worker_died_mid_call_and_whose_validity_ended_is_not_failed_as_expired(
    outbound: Outbound, monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock
) -> None:
    crash_once(
        monkeypatch, MessageStore, "swap", "worker died after upstream accepted the message",
        when=lambda record, **changes: changes.get("status") is MessageStatus.SENT,
    )  # fmt: skip
    text = json.dumps(
        {"operation": "SendMessage", "messageId": "m-died-late", "body": sms(DELIVERED)}
    )
    with pytest.raises(RuntimeError):
        outbound.invoke(text)
    manual_clock.advance(2 * 24 * 3600)  # its claim and its validity (24 h) ran out

    outbound.invoke(text, dequeue_count=2)

    failed = stored("m-died-late")
    assert failed.failure is not None
    assert failed.failure.code == "outcome-unknown"  # not expired: it was sent
    assert len(outbound.upstream()) == 1


def test_a_send_whose_token_cannot_be_had_ends_expired_as_certainly_not_sent(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """The identity provider unreachable: nothing is sent and no slot or attempt spent (the send
    waits, deferred; no bare exception for the host to retry into the poison queue), and when it
    gives up at the end of its validity it says ``expired``, never ``outcome-unknown``."""
    import datetime as dt
    import socket

    from shared.outbound import OutboundSender, OutcomeKind

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outbound.configure(
        ACCESS_TOKEN="",
        CLIENT_ID="app-1",
        CLIENT_SECRET="s3cret-s3cret",
        AUTHORITY=f"https://127.0.0.1:{port}/tenant",
        SEND_MAX_ATTEMPTS=2,
    )
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED))
    [text] = [json.dumps(m) for m in outbound.read("smartdialog-outbound")]

    deferred = OutboundSender.from_settings().process(text)
    assert (deferred.kind, deferred.detail) == (OutcomeKind.DEFERRED, "identity-provider")
    waiting = stored(accepted.body["Id"])
    assert (waiting.status, waiting.attempts) == (MessageStatus.QUEUED, 0)
    now = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC)
    manual_clock.advance((waiting.valid_until - now).total_seconds() + 1)
    OutboundSender.from_settings().process(text)

    failed = stored(accepted.body["Id"])
    assert failed.status is MessageStatus.FAILED
    assert failed.failure is not None
    assert failed.failure.code == "expired"
    assert not failed.maybe_sent
    assert outbound.upstream() == []
    # It says what it waited for, and how the identity provider failed (more than a type).
    assert "waited for no token: the identity provider could not be reached (ConnectError)" in (
        failed.failure.detail or ""
    )


def test_a_refusal_naming_nobody_after_an_ambiguous_attempt_says_it_may_have_been_sent(
    outbound: Outbound,
) -> None:
    """SmartDialog's definition does not say how it answers a repeated RequestId (the sandbox
    answers 409 with the original). After an attempt that may have gone through, a refusal
    naming no recipient may be that answer: the message may have been sent (and a pack's
    members must not go again alone under new RequestIds). One naming a recipient was about
    the content, which the first attempt carried too."""
    from dataclasses import replace

    from shared.outbound._attempt import Refused
    from shared.outbound._giving_up import refusal_failure

    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED))
    record = stored(accepted.body["Id"])
    doubtful = replace(record, maybe_sent=True)
    refused = Refused(400, "Bad request")

    assert refusal_failure(refused, doubtful, named=False).code == "outcome-unknown"
    assert refusal_failure(refused, doubtful, named=True).code == "upstream-rejected"
    assert refusal_failure(refused, record, named=False).code == "upstream-rejected"


def test_a_pack_refused_naming_nobody_after_an_ambiguous_call_is_not_sent_again_alone(
    private_outbound: Callable[..., Outbound],
) -> None:
    """The pack's call reached upstream but its answer was lost; its repeat is refused naming
    nobody (+358400000008: how SmartDialog might answer a repeated RequestId). Split into
    members sent alone under new RequestIds, each could reach its recipient twice: every
    member fails outcome-unknown instead, and nothing more goes upstream."""
    refused = "+358400000008"
    env = private_outbound(faults=FaultPlan(rate=1.0, kinds=(FaultKind.LOST_ANSWER,)))
    ids = [
        call_http("SendMessage", "POST", body=sms(address, content="Same text")).body["Id"]
        for address in (DELIVERED, "+358401110001", refused)
    ]

    env.run_once()  # one pack's call: handled upstream, the answer lost
    assert all(stored(i).maybe_sent for i in ids)
    env.sandbox.app.faults.configure(FaultPlan())
    env.drain()  # its repeat, same RequestId: refused naming nobody

    failures = [stored(i).failure for i in ids]
    assert [f.code if f else None for f in failures] == ["outcome-unknown"] * 3
    assert len(env.upstream()) == 2  # the call and its repeat, none alone
