"""What a pending status answers while its send waits for something other than the quota: its
identity provider, refused credentials, a broken setting, each after a failed attempt too, and
once the setting is fixed. Found in review: each of the first four answered ``Retry-After: 1``
(a flow polled every second for the whole outage: the handed-back claim recorded no time, and a
failed attempt's ``LastError`` hid the setting's wait), and the last answered 30 for a send done
in 8 s (the setting's ``LastError`` stays until the next claim).

A handed-back claim now records when its copy comes back (``waits_until``, in the write it made
anyway; for the status only), and a broken setting is read from the settings of the connection
the sender routes the send through, not from the ``LastError``.
"""

from __future__ import annotations

import math
import os
import socket
import uuid

import pytest

from shared.clock import ManualClock
from shared.names import OUTBOUND_QUEUE
from shared.outbound import OutboundSender, OutcomeKind, SendOutcome
from shared.settings import get_settings
from shared.storage import queue_client
from shared.unconfigured import RECHECK_SECONDS
from tests.outbound.conftest import DELIVERED, TEMPORARY, Outbound, call_http, sms, status_of
from tests.outbound.test_configuration_after_accept import record, refused_secret


def accepted(number: str) -> tuple[str, str, str]:
    """A SendMessage sent alone: its id, its status URL and its queue copy (taken off)."""
    body = sms(number, content="waits", RequestId=f"waits-{uuid.uuid4().hex[:12]}")
    answer = call_http("SendMessage", "POST", body=body)
    assert answer.status == 202, answer.body
    queue = queue_client(OUTBOUND_QUEUE)
    [copy] = queue.receive_messages()
    queue.delete_message(copy)
    return answer.body["Id"], answer.headers["Location"], copy.content


def polled(location: str) -> tuple[int, int, str | None]:
    answer = status_of(location)
    code = answer.body.get("LastError", {}).get("code")
    return answer.status, int(answer.headers["Retry-After"]), code


def once_failed(number: str, outbound: Outbound, clock: ManualClock) -> tuple[str, str, str]:
    """A send whose first attempt got a 503, its backoff over: its copy is back."""
    message_id, location, text = accepted(number)
    failed = OutboundSender.from_settings().process(text)
    assert failed.kind is OutcomeKind.RETRY_SCHEDULED
    clock.advance(failed.delay_seconds)
    return message_id, location, text


def longest() -> int:
    return get_settings().send_status_retry_after_seconds


def no_identity_provider(outbound: Outbound) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    outbound.configure(
        ACCESS_TOKEN="", CLIENT_ID="app-1", CLIENT_SECRET="s3cret-s3cret",
        AUTHORITY=f"https://127.0.0.1:{port}/tenant",
        SEND_RETRY_BASE_SECONDS=4, SEND_RETRY_MAX_SECONDS=300,
    )  # fmt: skip


def test_a_send_waiting_for_its_identity_provider_is_polled_when_it_tries_again(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    _, location, text = accepted(DELIVERED)
    no_identity_provider(outbound)
    waits: list[SendOutcome] = []
    answers = []
    for deferrals in range(6):  # its copies, each back after its backoff
        copy = text.replace('"deferrals":0', f'"deferrals":{deferrals}')
        assert deferrals == 0 or copy != text
        waits.append(OutboundSender.from_settings().process(copy))
        answers.append(polled(location))
        manual_clock.advance(waits[-1].delay_seconds)

    assert {w.detail for w in waits} == {"identity-provider"}
    assert record(waits[0].message_id or "").attempts == 0
    assert [a[1] for a in answers] == [min(w.delay_seconds, longest()) for w in waits]
    assert answers[-1][1] == longest()  # its backoff is past the bound by now


def test_a_send_held_by_a_setting_after_a_failed_attempt_is_polled_at_the_recheck(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    _, location, text = once_failed(TEMPORARY, outbound, manual_clock)
    outbound.configure(ACCESS_TOKEN="")  # no credentials: broken meanwhile

    waits = OutboundSender.from_settings().process(text)

    assert (waits.kind, waits.detail) == (OutcomeKind.DEFERRED, "configuration")
    # The failed attempt's LastError stands (more specific), yet the poll is the setting's.
    assert polled(location) == (202, min(RECHECK_SECONDS, longest()), "upstream-unavailable")


def test_a_send_held_by_refused_credentials_after_a_failed_attempt_is_polled_at_the_recheck(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    _, location, text = once_failed(TEMPORARY, outbound, manual_clock)
    refused_secret(outbound)

    waits = OutboundSender.from_settings().process(text)

    assert (waits.kind, waits.detail) == (OutcomeKind.DEFERRED, "configuration")
    assert polled(location) == (202, min(waits.delay_seconds, longest()), "upstream-unavailable")


def test_a_send_whose_setting_was_fixed_is_polled_at_its_quota_slot(
    outbound: Outbound, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.outbound import _quota_wait
    from tests.bulk.test_pack_recovery import _sender_waiting_with
    from tests.outbound.test_slot_holds import told_full

    message_id, location, text = accepted(DELIVERED)
    token = os.environ["SMARTDIALOG_ACCESS_TOKEN"]
    outbound.configure(ACCESS_TOKEN="")  # no credentials
    held = OutboundSender.from_settings().process(text)
    assert held.detail == "configuration"
    assert polled(location) == (202, min(RECHECK_SECONDS, longest()), "configuration")
    outbound.configure(ACCESS_TOKEN=token)  # fixed
    manual_clock.advance(held.delay_seconds)  # its copy is back, and the quota is full
    waits = told_full(manual_clock)  # its slots free in 8, 9 and 10 s
    monkeypatch.setattr(_quota_wait, "quota_wait", lambda settings: waits)

    deferred = _sender_waiting_with(waits).process(text)
    manual_clock.advance(0.01)  # past the quota's whole milliseconds

    assert (deferred.kind, deferred.detail) == (OutcomeKind.DEFERRED, "quota")
    # Its LastError still names the setting (the next claim clears it); the poll is its slot's.
    assert polled(location) == (202, math.ceil(8.0), "configuration")
    assert record(message_id).attempts == 0


def test_a_waits_time_is_for_the_status_only_its_pack_goes_once_the_wait_is_over(
    outbound: Outbound, manual_clock: ManualClock
) -> None:
    """Found in the second read: the handed-back wait was first recorded as the members'
    ``next_attempt_at``, which the sender and the gather read as a backoff: once the
    credentials were fixed, the pack's other copies were put back until the leader's wait was
    over (a minute here, up to 300 s for an identity provider), and new sends of the key went
    alone."""
    from tests.bulk.test_packing import NUMBERS
    from tests.bulk.test_packing import accept as accept_lane
    from tests.bulk.test_packing import record as lane_record

    outbound.configure(LANE_BACKSTOP_SECONDS=120)
    ids = accept_lane(*NUMBERS[:3], content=f"Lane {uuid.uuid4().hex[:8]} for $(name)")
    fixed = refused_secret(outbound)
    held = OutboundSender.from_settings().process(lane_record(ids[0]).command)
    assert (held.kind, held.detail) == (OutcomeKind.DEFERRED, "configuration")
    assert all(lane_record(i).waits_until is not None for i in ids)  # its status's wait
    outbound.configure(**fixed)
    manual_clock.advance(2)  # fixed well before the leader's copy is back

    sent = OutboundSender.from_settings().process(lane_record(ids[1]).command)

    assert sent.kind is OutcomeKind.SENT
    assert [len(call["body"]["Recipients"]) for call in outbound.upstream()] == [3]
