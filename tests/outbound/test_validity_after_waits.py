"""A send whose ``validUntil`` passes while it waits after its claim (for its token, for a
quota slot) is not sent: the waits come after the last validity check, and before, the call
went out late and the message was recorded ``sent`` (found in review: 2 s late after a quota
wait, up to the send timeout after a token fetch). Now it is handed back, and its next turn
fails it ``expired`` with its event."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest

from shared.clock import ManualClock
from shared.messages import MessageStatus
from shared.outbound import OutboundSender
from shared.outbound._outcomes import OutcomeKind
from tests.bulk.test_batch_packs import NUMBERS, accepted_batch, drivers, member_ids
from tests.outbound.conftest import Outbound
from tests.outbound.test_configuration_after_accept import command, record


class ClockMovingToken:
    """The app's auth provider, its next token taking ``seconds`` of the manual clock (a
    cold start's fetch, a renewal), as slow as the send timeout allows."""

    def __init__(self, inner: Any, clock: ManualClock, seconds: float) -> None:
        self.inner, self.clock, self.delays = inner, clock, [seconds]

    def token(self) -> str:
        if self.delays:
            self.clock.advance(self.delays.pop())
        return str(self.inner.token())

    def invalidate(self, token: str | None = None) -> None:
        self.inner.invalidate(token)


@pytest.fixture
def slow_token(monkeypatch: pytest.MonkeyPatch, manual_clock: ManualClock) -> Callable[[], None]:
    """Make the send ports' next token fetch take 20 s (call it once the settings are final)."""

    def slow() -> None:
        from shared.outbound import send_ports
        from shared.settings import get_settings

        client = send_ports(get_settings()).upstream.client
        monkeypatch.setattr(client, "auth", ClockMovingToken(client.auth, manual_clock, 20.0))

    return slow


def _expired_with_its_event(outbound: Outbound, ids: list[str]) -> None:
    assert outbound.upstream() == []
    for message_id in ids:
        done = record(message_id)
        assert done.status is MessageStatus.FAILED
        assert done.failure is not None
        assert done.failure.code == "expired"
    failed = [e["data"]["messageId"] for e in outbound.events() if e["type"].endswith(".failed")]
    assert sorted(failed) == sorted(ids)


def test_a_send_whose_validity_ends_while_its_token_is_fetched_is_not_sent(
    outbound: Outbound, manual_clock: ManualClock, slow_token: Callable[[], None]
) -> None:
    slow_token()
    valid_until = dt.datetime.fromtimestamp(manual_clock.now(), dt.UTC) + dt.timedelta(seconds=5)
    text = command("m-late-token", validUntil=valid_until.isoformat())

    handed_back = OutboundSender.from_settings().process(text)

    assert (handed_back.kind, handed_back.detail) == (OutcomeKind.DEFERRED, "expired")
    assert outbound.upstream() == []
    assert record("m-late-token").attempts == 0  # no attempt: nothing went out
    failed = OutboundSender.from_settings().process(text)
    assert (failed.kind, failed.detail) == (OutcomeKind.FAILED, "expired")
    _expired_with_its_event(outbound, ["m-late-token"])


def test_bulk_members_whose_validity_ends_while_their_driver_waits_are_not_sent(
    outbound: Outbound, slow_token: Callable[[], None]
) -> None:
    outbound.configure(SEND_VALIDITY_SECONDS=10)
    ids = member_ids(accepted_batch(*NUMBERS[:2]))
    [driver] = drivers(outbound)
    slow_token()

    handed_back = OutboundSender.from_settings().process(json.dumps(driver))

    assert (handed_back.kind, handed_back.detail) == (OutcomeKind.DEFERRED, "expired")
    assert outbound.upstream() == []
    OutboundSender.from_settings().process(json.dumps(driver))
    _expired_with_its_event(outbound, ids)
