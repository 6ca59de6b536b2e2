"""A send that may have reached SmartDialog through one connection goes on through that one when
its customer moves to another connection, never through the other account.

Found in review: a default-connection send's attempt lost its answer (it may have gone out);
the operator then moved its customer to a new connection by the README's pause, move, resume
procedure, which does not drain retries waiting on the queue. The retry, routed by the
customer's new claim, went out through the new connection's account, which did not know its
RequestId: the recipient got it twice. A send never attempted still follows its customer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from sandbox.faults import FaultKind, FaultPlan
from sandbox.server import SandboxServer
from shared.clock import ManualClock
from shared.messages import MessageRecord, MessageStatus, MessageStore
from shared.outbound import OutboundSender
from tests.bulk.test_packing import waiting_for_a_slot
from tests.connections.conftest import TwoConnections
from tests.crash import LEASE, crash_once
from tests.fixtures.clock import manual_clock
from tests.ops.conftest import ops
from tests.ops.test_redrive_in_doubt import force_redrive
from tests.outbound.conftest import Outbound, call_http, clear_quota, fresh_number, sms

__all__ = ["manual_clock", "ops"]

#: Another endpoint and token of the default's account: a send routed there would go out.
MOVED_TOKEN = "moved-account-one-token"
#: A customer of that account no connection claims (the default's own, 1001, cannot move).
CUSTOMER = {"Customer-Id": "1002", "Service-Id": "s-1002-oneway"}


@pytest.fixture
def moved() -> Iterator[SandboxServer]:
    server = SandboxServer(dlr_delay=0.05, static_token=MOVED_TOKEN).start()
    yield server
    server.stop()


def _sends(server: SandboxServer) -> list[dict[str, object]]:
    return [r for r in server.state.snapshot("requests") if r.get("operationId") == "SendMessage"]


def _addresses(server: SandboxServer) -> list[str]:
    return [r["Address"] for c in _sends(server) for r in c["body"]["Recipients"]]  # type: ignore[index]


def _record(message_id: str) -> MessageRecord:
    record = MessageStore.from_settings().get(message_id)
    assert record is not None
    return record


def _outcome(message_id: str) -> tuple[MessageStatus, str | None, bool]:
    """How ``message_id`` ended: its status, the connection it went through, a repeat."""
    done = _record(message_id)
    return done.status, done.sent_through, done.duplicate


#: A send in doubt gone on through the connection that tried it: SmartDialog knew its RequestId.
REPEATED_THROUGH_DEFAULT = (MessageStatus.SENT, "default", True)


def _move(two: TwoConnections, moved: SandboxServer, **more: object) -> None:
    """Customer 1002 to connection MOVED (another endpoint and token of its account)."""
    two.set_connection("MOVED", BASE_URL=moved.api_url, ACCESS_TOKEN=MOVED_TOKEN,
                       CUSTOMERS="1002", QUOTA_CALLS=2000, **more)  # fmt: skip


def _accept(content: str, number: str | None = None) -> str:
    """A SendMessage of customer 1002 (the default connection's); its message id."""
    body = sms(number or fresh_number(), content=content)
    accepted = call_http("SendMessage", "POST", body=body, headers=CUSTOMER)
    assert accepted.status == 202, accepted.body
    return str(accepted.body["Id"])


def _answer_lost(env: Outbound, *, limit: int | None = 1) -> None:
    """The sender's next call is accepted upstream and its answer lost: it may have gone out."""
    env.sandbox.app.faults.configure(FaultPlan(rate=1.0, kinds=(FaultKind.LOST_ANSWER,)))
    try:
        if limit is None:
            env.drain()
        else:
            env.run_once(limit=limit)
    finally:
        env.sandbox.app.faults.configure(FaultPlan())


def test_a_send_in_doubt_stays_with_its_connection_when_its_customer_moves(
    two: TwoConnections, moved: SandboxServer
) -> None:
    message_id = _accept("Moved once")
    _answer_lost(two.env)
    record = _record(message_id)
    assert (record.maybe_sent, record.sent_through) == (True, "default")
    before = len(_sends(two.env.sandbox))

    _move(two, moved)
    two.env.drain()

    assert _sends(moved) == []
    assert len(_sends(two.env.sandbox)) == before + 1  # its repeat, under its RequestId
    assert _outcome(message_id) == REPEATED_THROUGH_DEFAULT


def test_a_send_never_attempted_follows_its_customer_to_its_new_connection(
    two: TwoConnections, moved: SandboxServer
) -> None:
    message_id = _accept("Moved before")

    _move(two, moved)
    two.env.drain()

    assert len(_sends(moved)) == 1
    done = _record(message_id)
    assert (str(done.status), done.sent_through) == ("sent", "moved")


def test_a_forced_re_drive_of_a_send_in_doubt_goes_through_the_connection_that_tried_it(
    ops: Outbound, two: TwoConnections, moved: SandboxServer
) -> None:
    """The re-drive cleared the connection it went through, so its repeat followed the moved
    customer into the other account (found in a second read of the fix above)."""
    ops.configure(SEND_MAX_ATTEMPTS=1)
    message_id = _accept("Re-driven")
    _answer_lost(ops, limit=None)
    store = MessageStore.from_settings()
    failed = store.get(message_id)
    assert failed is not None
    assert failed.failure is not None
    assert failed.failure.code == "outcome-unknown"
    _move(two, moved)
    ops.configure(SEND_MAX_ATTEMPTS=3)

    force_redrive(message_id)
    ops.drain()

    assert _sends(moved) == []
    assert _outcome(message_id) == REPEATED_THROUGH_DEFAULT


@pytest.mark.parametrize("service", [True, False], ids=["with-service", "app-default-service"])
def test_a_send_cut_off_mid_call_goes_on_through_its_connection_when_its_customer_moves(
    two: TwoConnections,
    moved: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
    manual_clock: ManualClock,
    service: bool,
) -> None:
    """A worker died after SmartDialog accepted its call: the record stays ``sending``, its
    doubt not written yet. It went out again through the moved customer's new account; and a
    command without ``serviceId`` was taken for another message's (the new connection's own
    default service) and dead-lettered, its record left ``sending`` (second read)."""
    if not service:
        two.env.configure(SERVICE_ID="s-1002-oneway")  # the app's default: customer 1002's
    crash_once(
        monkeypatch, MessageStore, "swap", "the worker died after its call",
        when=lambda record, **changes: changes.get("status") is MessageStatus.SENT,
    )  # fmt: skip
    message_id = f"mid-call-{fresh_number()[-7:]}-{service}"
    command = {"operation": "SendMessage", "messageId": message_id, "customerId": "1002",
               "body": sms(fresh_number())}  # fmt: skip
    if service:
        command["serviceId"] = "s-1002-oneway"
    with pytest.raises(RuntimeError):
        two.env.invoke(json.dumps(command))
    _move(two, moved, SERVICE_ID="s-1002-twoway")
    manual_clock.advance(LEASE + 1)  # the dead worker's claim runs out

    two.env.invoke(json.dumps(command), dequeue_count=2)  # the host delivers it again

    assert _sends(moved) == []
    assert _outcome(message_id) == REPEATED_THROUGH_DEFAULT


def test_a_send_gone_on_through_its_old_connection_leaves_its_lane_to_the_new_one(
    two: TwoConnections, moved: SandboxServer
) -> None:
    """The repeat of a lane member in doubt, forwarded to its old connection, swept its lane
    there: the members never attempted went out through the old account, though they follow
    their customer (second read)."""
    first, *others = (fresh_number() for _ in range(3))
    leader = _accept("Lane moved", first)
    _answer_lost(two.env)
    waiting_for_a_slot(two.env)
    for number in others:
        _accept("Lane moved", number)
    two.env.run_once()  # the quota is full: both wait in the lane, never attempted
    before = len(_addresses(two.env.sandbox))
    _move(two, moved)
    two.env.configure(QUOTA_CALLS=2000, SEND_QUOTA_WAIT_SECONDS=3, LANE_BACKSTOP_SECONDS=60)
    clear_quota()
    record = MessageStore.from_settings().get(leader)
    assert record is not None

    two.env.invoke(record.command)  # the leader's retry comes first

    assert _addresses(two.env.sandbox)[before:] == [first]
    assert not set(others) & set(_addresses(two.env.sandbox))


def _cut_off(two: TwoConnections, monkeypatch: pytest.MonkeyPatch, name: str) -> dict[str, object]:
    """A command of customer 1002 naming no service (the connection's default), its worker dead
    after SmartDialog accepted its call: the record stays ``sending``."""
    crash_once(
        monkeypatch, MessageStore, "swap", "the worker died after its call",
        when=lambda record, **changes: changes.get("status") is MessageStatus.SENT,
    )  # fmt: skip
    command = {"operation": "SendMessage", "messageId": f"{name}-{fresh_number()[-7:]}",
               "customerId": "1002", "body": sms(fresh_number())}  # fmt: skip
    with pytest.raises(RuntimeError):
        two.env.invoke(json.dumps(command))
    return command


def test_a_copy_put_back_by_the_new_connection_still_goes_on_through_the_old_one(
    two: TwoConnections,
    moved: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
    manual_clock: ManualClock,
) -> None:
    """The new connection's quota hint defers a message before reading its record, and puts back
    the command as it would send it: its name and its default service. Forwarded to the old
    connection, that copy was taken for another message's and dead-lettered; the send was lost,
    its record left ``sending`` (found in a third read)."""
    two.env.configure(SERVICE_ID="s-1002-oneway")
    command = _cut_off(two, monkeypatch, "hinted")
    _move(two, moved, SERVICE_ID="s-1002-twoway")
    manual_clock.advance(LEASE + 1)
    put_back = {**command, "Connection": "moved", "serviceId": "s-1002-twoway", "deferrals": 1}

    two.env.invoke(json.dumps(put_back))

    assert two.env.dead_letters() == []
    assert _outcome(str(command["messageId"])) == REPEATED_THROUGH_DEFAULT


def test_a_send_cut_off_whose_connection_was_removed_since_fails_outcome_unknown(
    two: TwoConnections,
    moved: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
    manual_clock: ManualClock,
) -> None:
    """Cut off on connection MOVED, which was removed since (its customer back on the default):
    the repeat was read with no defaults of MOVED, taken for another message's and
    dead-lettered, its record left ``sending`` (third read)."""
    _move(two, moved, SERVICE_ID="s-1002-oneway")
    command = _cut_off(two, monkeypatch, "removed")
    two.remove_connection("MOVED")
    manual_clock.advance(LEASE + 1)

    two.env.invoke(json.dumps(command), dequeue_count=2)

    assert _sends(moved)  # the one call, cut off
    assert [d for d in two.env.dead_letters() if d["reason"] == "malformed"] == []
    done = _record(str(command["messageId"]))
    assert done.status is MessageStatus.FAILED
    assert done.failure is not None
    assert done.failure.code == "outcome-unknown"


@pytest.mark.parametrize("new", ["no-service", "no-credentials"])
def test_a_send_cut_off_goes_on_through_its_connection_whatever_the_new_one_lacks(
    two: TwoConnections,
    moved: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
    manual_clock: ManualClock,
    new: str,
) -> None:
    """The claim routed the repeat to the new connection before its record was read: without a
    SERVICE_ID of its own there (never taken from the plain settings), it was failed
    ``malformed``; without credentials there (that connection's error alone), it waited for
    them until it expired, though the connection that sent it was sound (fourth read)."""
    two.env.configure(SERVICE_ID="s-1002-oneway")
    command = _cut_off(two, monkeypatch, new)
    if new == "no-service":
        _move(two, moved)
    else:
        two.set_connection("MOVED", BASE_URL=moved.api_url, CUSTOMERS="1002",
                           SERVICE_ID="s-1002-twoway")  # fmt: skip
    manual_clock.advance(LEASE + 1)

    two.env.invoke(json.dumps(command), dequeue_count=2)

    assert _sends(moved) == []
    assert _outcome(str(command["messageId"])) == REPEATED_THROUGH_DEFAULT


def test_a_poisoned_copy_of_a_send_cut_off_before_its_customer_moved_is_settled(
    two: TwoConnections,
    moved: SandboxServer,
    monkeypatch: pytest.MonkeyPatch,
    manual_clock: ManualClock,
) -> None:
    """Read with the new connection's default service, the poison copy was taken for another
    message's: kept for ever, its record left ``sending``, and its re-drive said to purge it
    (fourth read)."""
    two.env.configure(SERVICE_ID="s-1002-oneway")
    command = _cut_off(two, monkeypatch, "poisoned")
    _move(two, moved, SERVICE_ID="s-1002-twoway")
    manual_clock.advance(LEASE + 1)
    store = MessageStore.from_settings()
    record = store.get(str(command["messageId"]))
    assert record is not None
    sender = OutboundSender.from_settings()

    assert sender.settle_poisoned(json.dumps(command), owner=record) is True
    assert sender.settle_poisoned(json.dumps(command)) is True
    done = store.get(str(command["messageId"]))
    assert done is not None
    assert done.status is MessageStatus.FAILED
