"""Two connections against two SmartDialog accounts (two sandbox instances, each accepting only
its own token): each send goes upstream with its connection's token and customer, events,
statuses and dead letters say which connection, and one connection's trouble (its quota held by
a backlog, a revoked token, its removal) never holds up or misroutes the other's sends."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from typing import Any

from shared.clock import ManualClock, utcnow
from shared.connections import CONNECTION_HEADER
from shared.messages import MessageStatus, MessageStore
from shared.names import OUTBOUND_QUEUE
from shared.storage import queue_client
from tests.connections.conftest import (
    SECOND_CUSTOMER,
    SECOND_SERVICE,
    TwoConnections,
    forget_quota_logs,
    forget_settings,
)
from tests.outbound.conftest import CUSTOMER, REJECTED, SERVICE, call_http, sms, status_of

#: host.json's extensions.queues.maxPollingInterval (1 s) plus the issue's 1 s.
PROMPT_SECONDS = 2.0


def send(two: TwoConnections, address: str, connection: str | None = None, **body: Any) -> Any:
    headers = {CONNECTION_HEADER: connection} if connection else {}
    answer = call_http("SendMessage", "POST", body=sms(address, **body), headers=headers)
    assert answer.status == 202, answer.body
    return answer


def command(address: str, **envelope: Any) -> dict[str, Any]:
    return {"operation": "SendMessage", "body": sms(address), **envelope}


def test_each_connection_goes_upstream_with_its_own_token_and_customer(
    two: TwoConnections,
) -> None:
    first = send(two, "+358400000001")
    second = send(two, "+358400000011", connection="second")
    two.env.drain()
    # Each sandbox accepts only its own token: what it received came with that token.
    [default_call] = two.env.upstream()
    [second_call] = two.second_upstream()
    assert default_call["status"] == second_call["status"] == 200
    default_sent = two.env.sandbox.state.snapshot("messages")
    second_sent = two.second.state.snapshot("messages")
    assert [(m["customerId"], m["serviceId"]) for m in default_sent] == [(CUSTOMER, SERVICE)]
    assert [(m["customerId"], m["serviceId"]) for m in second_sent] == [
        (SECOND_CUSTOMER, SECOND_SERVICE)
    ]
    assert status_of(first.headers["Location"]).body["Connection"] == "default"
    assert status_of(second.headers["Location"]).body["Connection"] == "second"
    sent = {e["data"]["messageId"]: e["data"]["connection"] for e in two.env.events()}
    assert sent == {first.body["Id"]: "default", second.body["Id"]: "second"}


def test_queue_commands_name_their_connection_and_old_ones_are_the_default(
    two: TwoConnections,
) -> None:
    two.env.enqueue(command("+358400000001", messageId="old-style"))
    two.env.enqueue(command("+358400000011", messageId="named", Connection="SECOND"))
    two.env.drain()
    assert len(two.env.upstream()) == 1
    assert len(two.second_upstream()) == 1
    connections = {e["data"]["messageId"]: e["data"]["connection"] for e in two.env.events()}
    assert connections == {"old-style": "default", "named": "second"}


def test_a_connection_held_at_its_quota_does_not_delay_the_other(two: TwoConnections) -> None:
    forget_quota_logs()  # earlier tests' calls of the default connection
    two.env.configure(QUOTA_CALLS=2)
    forget_settings()
    for n in range(8):  # distinct contents: none may share a call
        backlog = command("+358400000001", messageId=f"backlog-{n}")
        backlog["body"]["Content"] = f"Backlog {n}"
        two.env.enqueue(backlog)
    two.env.run_once()  # the default's quota is now full, its backlog deferred
    assert len(two.env.upstream()) == 2
    started = time.monotonic()
    two.env.enqueue(command("+358400000011", messageId="other", Connection="second"))
    while not two.second_upstream() and time.monotonic() - started < 10:
        two.env.run_once()
    elapsed = time.monotonic() - started
    assert [r["status"] for r in two.second_upstream()] == [200]
    assert elapsed <= PROMPT_SECONDS, f"the other connection's send took {elapsed:.2f} s"
    assert len(two.env.upstream()) == 2  # still held at its quota: no 429 upstream
    assert all(r["status"] != 429 for r in two.env.upstream())


def test_a_revoked_token_on_one_connection_leaves_the_other_working(two: TwoConnections) -> None:
    two.set_connection("SECOND", ACCESS_TOKEN="revoked-token")
    failed = send(two, "+358400000011", connection="second")
    works = send(two, "+358400000001")
    two.env.drain()
    assert status_of(works.headers["Location"]).status == 200
    answer = status_of(failed.headers["Location"])
    assert answer.status == 422
    assert answer.body["upstreamStatus"] == 401
    assert answer.body["connection"] == "second"
    assert len(two.env.upstream()) == 1  # never sent through the other account
    assert two.env.sandbox.state.snapshot("messages")[0]["customerId"] == CUSTOMER


def test_a_removed_connection_fails_its_queued_sends_with_events(two: TwoConnections) -> None:
    accepted = send(two, "+358400000011", connection="second")
    queued_only = command(
        "+358400000012",
        messageId="queued-only",
        Connection="second",
        customerId=SECOND_CUSTOMER,
        serviceId=SECOND_SERVICE,
    )
    two.env.enqueue(queued_only)
    two.drop_connection(
        "SECOND",
        "BASE_URL",
        "ACCESS_TOKEN",
        "CUSTOMERS",
        "CUSTOMER_ID",
        "SERVICE_ID",
        "QUOTA_CALLS",
    )
    two.env.drain()
    assert two.env.upstream() == []
    assert two.second_upstream() == []
    answer = status_of(accepted.headers["Location"])
    assert answer.status == 422
    assert answer.body["code"] == "connection-removed"
    assert answer.body["connection"] == "second"
    failed = {
        e["data"]["messageId"]: (e["data"]["error"]["code"], e["data"]["connection"])
        for e in two.env.events()
    }
    assert failed == {
        accepted.body["Id"]: ("connection-removed", "second"),
        "queued-only": ("connection-removed", "second"),
    }
    letters = {d["messageId"]: d["connection"] for d in two.env.dead_letters()}
    assert letters == {accepted.body["Id"]: "second", "queued-only": "second"}
    assert all(json.loads(d["original"])["Connection"] == "second" for d in two.env.dead_letters())


def test_a_removed_connections_send_still_claimed_by_an_instance_of_the_old_settings_waits(
    two: TwoConnections, manual_clock: ManualClock
) -> None:
    """During a restart's overlap an instance with the old settings is in the middle of the
    call: a copy seen by one with the new settings does not fail it under that call (it would
    be recorded failed though sent); it comes back when the claim ends."""
    accepted = send(two, "+358400000011", connection="second")
    store = MessageStore.from_settings()
    record = store.get(accepted.body["Id"])
    assert record is not None
    lease = utcnow() + dt.timedelta(seconds=60)
    claimed = store.swap(record, status=MessageStatus.SENDING, attempts=1, lease_until=lease)
    assert claimed is not None
    two.drop_connection(
        "SECOND", "BASE_URL", "ACCESS_TOKEN", "CUSTOMERS", "CUSTOMER_ID", "SERVICE_ID",
        "QUOTA_CALLS",
    )  # fmt: skip

    two.env.run_once()

    held = store.get(accepted.body["Id"])
    assert held is not None
    assert held.status is MessageStatus.SENDING  # not failed under the call
    assert two.env.queued() == 1  # its copy comes back when the claim ends
    queue_client(OUTBOUND_QUEUE).clear_messages()
    manual_clock.advance(61)  # the old instance died: its claim ran out
    two.env.invoke(held.command)  # that copy
    failed = store.get(accepted.body["Id"])
    assert failed is not None
    assert failed.status is MessageStatus.FAILED
    assert failed.failure is not None
    # it died in the middle of the call, so the message may have been sent: it fails as such
    # (re-driven only with force), not as certainly unsent
    assert failed.failure.code == "outcome-unknown"
    assert failed.failure.title.startswith("The message's connection no longer exists")


def test_a_send_accepted_before_a_connection_claimed_its_customer_is_not_stranded(
    two: TwoConnections,
) -> None:
    """Accepted through ``default``, then the operator lists its customer under ``second``
    before the send went: its queue copy is now routed to ``second``. It used to differ from
    its record (no connection then), be dead-lettered as another message's, and leave the
    record queued for good; it goes through the connection that claims its customer now."""
    two.drop_connection("SECOND", "CUSTOMERS", "CUSTOMER_ID")  # the customer is the default's
    accepted = call_http(
        "SendMessage", "POST", body=sms("+358400000013"),
        headers={"Customer-Id": SECOND_CUSTOMER, "Service-Id": SECOND_SERVICE},
    )  # fmt: skip
    assert accepted.status == 202, accepted.body
    two.set_connection("SECOND", CUSTOMERS=SECOND_CUSTOMER, CUSTOMER_ID=SECOND_CUSTOMER)

    two.env.drain()

    assert two.env.dead_letters() == []
    assert status_of(accepted.headers["Location"]).status == 200
    assert len(two.second_upstream()) == 1
    assert two.env.upstream() == []


def test_a_send_rerouted_to_the_connection_claiming_its_customer_says_that_connection(
    two: TwoConnections,
) -> None:
    """Accepted through ``default`` (its record's command names no connection), then sent by
    ``second``, which claims its customer now: its status and ``message.sent`` event (and so
    its delivery reports' events and triggers) say ``second``, the account that sent it, for
    a pack's leader and its members alike."""
    two.drop_connection("SECOND", "CUSTOMERS", "CUSTOMER_ID")  # the customer is the default's
    headers = {"Customer-Id": SECOND_CUSTOMER, "Service-Id": SECOND_SERVICE}
    accepted = [
        call_http("SendMessage", "POST", body=sms(address), headers=headers)
        for address in ("+358400000013", "+358400000023", "+358400000033")
    ]
    assert [a.status for a in accepted] == [202, 202, 202]
    two.set_connection("SECOND", CUSTOMERS=SECOND_CUSTOMER, CUSTOMER_ID=SECOND_CUSTOMER)

    two.env.drain()

    assert two.env.upstream() == []
    assert len(two.second_upstream()) == 1  # one pack
    for answer in accepted:
        assert status_of(answer.headers["Location"]).body["Connection"] == "second"
    sent = {e["data"]["messageId"]: e["data"]["connection"] for e in two.env.events()}
    assert sent == {a.body["Id"]: "second" for a in accepted}


def test_a_different_command_with_a_sends_id_through_a_gone_connection_leaves_that_send_alone(
    two: TwoConnections,
) -> None:
    """Another message under a queued send's id, routed through a connection that does not
    exist: it is not that send, so it is dead-lettered as someone else's, and the send goes."""
    victim = send(two, "+358400000001")
    impostor = command(
        "+358400000002",
        messageId=victim.body["Id"],
        Connection="ghost",
        customerId=CUSTOMER,
        serviceId=SERVICE,
    )
    two.env.invoke(json.dumps(impostor))  # before the send's own copy
    two.env.drain()

    assert status_of(victim.headers["Location"]).status == 200  # was failed connection-removed
    assert [c["body"]["Recipients"][0]["Address"] for c in two.env.upstream()] == ["+358400000001"]
    [letter] = two.env.dead_letters()
    assert letter["reason"] == "malformed"
    assert "already used by a different message" in letter["detail"]
    assert "messageId" not in letter  # its re-drive must leave the send alone


def test_a_re_driven_send_of_a_restored_connection_says_its_connection(
    two: TwoConnections,
) -> None:
    """Removed, its send failed; restored, the operator re-drives it: the ``message.redriven``
    event names the connection, as every other event of the send does, and it goes out through
    that connection's account."""
    from shared.events import MESSAGE_REDRIVEN
    from shared.outbound import OutboundSender, OutcomeKind

    text = json.dumps(
        command(
            "+358400000017",
            messageId="redrive-second",
            Connection="second",
            customerId=SECOND_CUSTOMER,
            serviceId=SECOND_SERVICE,
        )
    )
    removed = ("BASE_URL", "ACCESS_TOKEN", "CUSTOMERS", "CUSTOMER_ID", "SERVICE_ID", "QUOTA_CALLS")
    restored = {s: os.environ[f"SMARTDIALOG_CONNECTIONS__SECOND__{s}"] for s in removed}
    two.drop_connection("SECOND", *removed)
    failed = OutboundSender.from_settings().process(text, queue_message_id="q-redrive")
    assert (failed.kind, failed.detail) == (OutcomeKind.FAILED, "connection-removed")
    two.set_connection("SECOND", **restored)

    # Only this test's letter: others of the suite's shared Azurite may fill the first page.
    listed = call_http(
        "ListDeadLetters", "GET", params={"reason": "failed", "maxAgeSeconds": "60", "top": "200"}
    )
    assert listed.status == 200, listed.body
    [letter] = [i for i in listed.body["value"] if i.get("messageId") == "redrive-second"]
    answer = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter["id"]})
    assert (answer.status, answer.body["outcome"]) == (200, "redriven"), answer.body
    [redriven] = [e for e in two.env.events() if e["type"] == MESSAGE_REDRIVEN]
    assert redriven["data"]["connection"] == "second"
    assert redriven["data"]["previousError"]["code"] == "connection-removed"

    [queued] = [m for m in two.env.read(OUTBOUND_QUEUE) if m.get("messageId") == "redrive-second"]
    sent = OutboundSender.from_settings().process(json.dumps(queued), queue_message_id="q-again")
    assert sent.kind is OutcomeKind.SENT
    assert len(two.second_upstream()) == 1
    assert two.env.upstream() == []


def test_a_connection_no_setting_could_name_is_dead_lettered_malformed_naming_the_field(
    two: TwoConnections, caplog: Any
) -> None:
    """A queue message's ``Connection`` follows the settings' rule for names: one no setting
    could name (a line break, a space, a leading '-') is malformed, dead-lettered with its
    reason, not failed ``connection-removed`` with the raw value in logs and events. Names as
    older releases wrote them (any case, '_', padded) still go."""
    bad = ["second\nINFO forged line", "sec ond", "-second"]
    for name in bad:
        two.env.enqueue(command("+358400000001", Connection=name))
    two.env.enqueue({"kind": "pack", "packId": "pack-" + "0" * 32, "Connection": "a b"})
    two.env.enqueue(command("+358400000011", messageId="padded", Connection=" Second "))
    two.env.drain()

    letters = two.env.dead_letters()
    assert [letter["reason"] for letter in letters] == ["malformed"] * 4
    for letter in letters:
        assert [e["field"].rsplit(".", 1)[-1] for e in letter["errors"]] == ["Connection"]
        assert "a name is 1-64 letters" in letter["errors"][0]["message"]
    assert two.env.upstream() == []
    assert len(two.second_upstream()) == 1
    [event] = two.env.events()  # no message.failed of a malformed name
    assert (event["data"]["messageId"], event["data"]["connection"]) == ("padded", "second")
    assert "forged" not in caplog.text


def test_a_queue_only_send_claimed_when_first_seen_is_recorded_with_its_connection(
    two: TwoConnections,
) -> None:
    """A command put on the queue directly is recorded already claimed (one write): that claim
    too records the connection it goes through, as every other claim does."""
    two.env.enqueue(command("+358400000019", messageId="direct-2", customerId=SECOND_CUSTOMER))
    two.env.enqueue(command("+358400000029", messageId="direct-d"))
    two.env.drain()

    store = MessageStore.from_settings()
    through = {m: getattr(store.get(m), "sent_through", None) for m in ("direct-2", "direct-d")}
    assert through == {"direct-2": "second", "direct-d": "default"}
    assert (len(two.second_upstream()), len(two.env.upstream())) == (1, 1)


def test_a_connection_of_only_whitespace_is_the_default_as_earlier_releases_read_it(
    two: TwoConnections,
) -> None:
    """A command written by hand for an earlier release with ``"Connection": " "`` (which took
    it for the default) is still sent through the default, not dead-lettered malformed."""
    two.env.enqueue(command("+358400000039", messageId="blank-connection", Connection=" \t"))
    two.env.drain()

    assert (two.env.dead_letters(), two.second_upstream()) == ([], [])
    assert len(two.env.upstream()) == 1
    [event] = two.env.events()
    assert (event["data"]["messageId"], event["data"]["connection"]) == (
        "blank-connection",
        "default",
    )


def test_a_re_driven_send_is_claimed_afresh(two: TwoConnections) -> None:
    """Re-driven, a failed send is queued to be claimed again, by the connection claiming it
    then: the claim of its failed attempt is cleared with its attempts."""
    two.env.enqueue(command(REJECTED, messageId="redrive-claim", customerId=SECOND_CUSTOMER))
    two.env.drain()
    store = MessageStore.from_settings()
    failed = store.get("redrive-claim")
    assert failed is not None
    assert (failed.status, failed.sent_through) == (MessageStatus.FAILED, "second")

    now = utcnow()
    redriven = store.redrive(failed, now=now, valid_until=now + dt.timedelta(hours=1))

    assert redriven is not None
    assert (redriven.attempts, redriven.sent_through) == (0, None)
    assert getattr(store.get("redrive-claim"), "sent_through", "gone") is None


def test_a_queue_only_send_whose_connection_does_not_serve_its_customer_is_malformed(
    two: TwoConnections,
) -> None:
    """A command put on the queue directly naming a connection and a customer it does not serve
    (``default`` given a customer ``second`` claims; ``second`` given the default's) is refused
    as the send actions refuse it (their 400), dead-lettered ``malformed`` naming
    ``customerId``: it used to go out on the named account's token and quota (or get its 403)."""
    claimed = command("+358400000041", messageId="served-elsewhere", Connection="default",
                      customerId=SECOND_CUSTOMER, serviceId=SECOND_SERVICE)  # fmt: skip
    another = command("+358400000042", messageId="not-its-customer", Connection="second",
                      customerId=CUSTOMER, serviceId=SERVICE)  # fmt: skip
    two.env.enqueue(claimed)
    two.env.enqueue(another)
    two.env.drain()

    assert (two.env.upstream(), two.second_upstream()) == ([], [])
    letters = {d["messageId"]: d for d in two.env.dead_letters()}
    assert sorted(letters) == ["not-its-customer", "served-elsewhere"]
    for letter, (connection, customer) in (
        (letters["served-elsewhere"], ("default", SECOND_CUSTOMER)),
        (letters["not-its-customer"], ("second", CUSTOMER)),
    ):
        assert letter["reason"] == "malformed"
        [error] = letter["errors"]
        assert error["field"] == "customerId"
        assert f"Connection {connection} does not serve customer {customer}" in error["message"]
        served = f"customerId: Connection {connection} does not serve customer {customer}"
        assert served in letter["detail"]  # the field, then its message (not "customerId is")
    assert two.env.events() == []  # never recorded: nothing to fail
    store = MessageStore.from_settings()
    assert [store.get(m) for m in letters] == [None, None]


def test_a_recorded_send_is_not_refused_when_its_customer_moves_away_from_its_connection(
    two: TwoConnections,
) -> None:
    """Only a command first seen on the queue is checked against the claims: one accepted over
    HTTP was checked then, so a customer moved off its connection meanwhile does not fail it."""
    accepted = send(two, "+358400000043", connection="second")
    two.set_connection("SECOND", CUSTOMERS="2999", CUSTOMER_ID="2999")  # no longer its customer

    two.env.drain()

    assert two.env.dead_letters() == []
    assert status_of(accepted.headers["Location"]).status == 200
    assert len(two.second_upstream()) == 1
