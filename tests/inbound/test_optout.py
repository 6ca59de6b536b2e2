"""Opt-out: stop/start keywords, the suppression actions, and the send refusal."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from urllib.parse import parse_qsl, urlsplit

import pytest

from shared import names
from shared.clock import ManualClock
from shared.inbound import classify_keyword, new_nonce, webhook_url
from shared.problems import Problem
from shared.settings import Settings, get_settings
from shared.storage import queue_client
from shared.suppressions import ALL_SERVICES, SuppressionStore, refuse_suppressed
from tests.inbound.conftest import ONE_WAY, TWO_WAY, Inbound

PHONE = "+358401234567"
DEFAULTS = Settings()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("STOP", "stop"),
        ("stop", "stop"),
        ("  Stop!  ", "stop"),
        ("LOPETA", "stop"),
        ("seis.", "stop"),
        ("Stoppa", "stop"),
        ("AVSLUTA", "stop"),
        ("START", "start"),
        ("aloita", "start"),
        ("Starta", "start"),
        ("please stop", None),
        ("STOP IT NOW", None),
        ("", None),
        ("Hello", None),
        ("Stop\u2026", "stop"),  # one-character ellipsis
        ("\uff33\uff34\uff2f\uff30", "stop"),  # fullwidth
        ("Stop\u200b", "stop"),  # zero-width space
        ("\ufeffstart\u200d", "start"),
        ("\u00abSTOP\u00bb", "stop"),
        ('"Lopeta"', "stop"),
        ("\u00bfSTOP?", "stop"),
        ("STOP \u2014 now", None),
        ("ST OP", None),
        # Control characters a gateway pads or mis-decodes (GSM "@" is 0x00): were not
        # honoured (found in review); tab, line breaks are blanks, kept between words.
        ("STOP\x00", "stop"),
        ("\x00\x00STOP\x1b", "stop"),
        ("\x07Stop", "stop"),
        ("STOP\nNOW", None),
        ("\tstart\r\n", "start"),
    ],
)
def test_default_keywords(content: str, expected: str | None) -> None:
    assert classify_keyword(content, DEFAULTS.stop_keyword_set, DEFAULTS.start_keyword_set) == (
        expected
    )


def _post(env: Inbound, content: str, sender: str = "0401234567") -> None:
    url = webhook_url(get_settings(), TWO_WAY, new_nonce())
    answer = env.call(
        "InboundWebhook",
        "POST",
        route_params={"Service": TWO_WAY},
        params=dict(parse_qsl(urlsplit(url).query)),
        body={"sender": sender, "recipient": "+358501234567", "content": content,
              "messageId": str(uuid.uuid4())},
    )  # fmt: skip
    assert answer.status == 202


def _inbound(env: Inbound, content: str, sender: str = "0401234567") -> None:
    """A message through the webhook and the intake processor."""
    _post(env, content, sender)
    assert env.process_intake() == 1


def _check(env: Inbound, service: str = TWO_WAY, phone: str = PHONE) -> dict[str, object]:
    answer = env.call("GetSuppression", "GET", route_params={"Service": service, "Phone": phone})
    assert answer.status == 200
    result: dict[str, object] = answer.body
    return result


def _process_in_order(env: Inbound, *contents: str) -> None:
    """The intake messages on the queue, by their text, through the processor in this order."""
    client = queue_client(names.INBOUND_INTAKE_QUEUE)
    taken = list(client.receive_messages(messages_per_page=32, visibility_timeout=30))
    by_content = {json.loads(m.content)["payload"]["content"]: m for m in taken}
    for content in contents:
        message = by_content[content]
        env.queue_function("InboundProcessor", message.content, 1, message.id)
        client.delete_message(message)


def test_stop_suppresses_the_sender_for_that_service_and_start_lifts_it(inbound: Inbound) -> None:
    _inbound(inbound, "Stop")
    doc = _check(inbound)
    assert doc["Suppressed"] is True
    assert (doc["Keyword"], doc["Source"]) == ("STOP", "inbound")
    assert _check(inbound, service=ONE_WAY)["Suppressed"] is False
    [event] = inbound.read(names.INBOUND_QUEUE)
    assert event["data"]["optOut"] == "stop"  # the flow still sees the message

    _inbound(inbound, "START")
    assert _check(inbound)["Suppressed"] is False


def test_a_stop_padded_with_invisible_characters_is_stored_cut_as_its_trigger(
    inbound: Inbound,
) -> None:
    """Format characters (Cf) do not count in a keyword, so 'STOP' and 19,996 tag spaces is a
    STOP; stored whole, its keyword was 39,996 UTF-16 units, over a Table property's 32K: the
    opt-out failed on every retry and the message went to the poison queue."""
    _inbound(inbound, "STOP" + "\U000e0020" * 19_996)
    doc = _check(inbound)
    assert doc["Suppressed"] is True
    assert len(str(doc["Keyword"])) <= 64


@pytest.mark.parametrize(
    ("sender", "number"),
    [("46701234567", "+46701234567"), ("4790012345", "+4790012345"), ("0401234567", PHONE)],
)
def test_a_stop_from_a_number_written_without_its_plus_suppresses_that_number(
    inbound: Inbound, sender: str, number: str
) -> None:
    """A sender SmartDialog writes without '+' (as its delivery reports may): 46701234567 is no
    number in Finland, so it was stored as that text, and sends to +46701234567 went out; and
    4790012345 (Norway) is also a valid number in Finland, +3584790012345, under which it was
    then stored. Bare digits not starting with 0 are international; 0401234567 is Finnish."""
    _inbound(inbound, "STOP", sender=sender)
    assert _check(inbound, phone=number)["Suppressed"] is True
    _inbound(inbound, "START", sender=sender)
    assert _check(inbound, phone=number)["Suppressed"] is False


def test_a_start_processed_after_a_later_stop_does_not_lift_it(inbound: Inbound) -> None:
    # Intake messages are processed concurrently, not in arrival order: the STOP received last
    # wins even when its START predecessor is processed after it.
    _post(inbound, "START")
    _post(inbound, "STOP")
    _process_in_order(inbound, "STOP", "START")  # the reverse of their arrival
    assert _check(inbound)["Suppressed"] is True
    published = {e["data"]["content"]: e["data"] for e in inbound.read(names.INBOUND_QUEUE)}
    assert set(published) == {"STOP", "START"}  # both still published
    # The START lifted nothing: it said optOut "start" (found in review), and its opt-out
    # subscribers heard "in" last while the number stayed suppressed.
    assert (published["STOP"].get("optOut"), published["START"].get("optOut")) == ("stop", None)
    # A START received after the STOP lifts it.
    _inbound(inbound, "START")
    assert _check(inbound)["Suppressed"] is False
    last = inbound.read(names.INBOUND_QUEUE)[-1]["data"]
    assert (last["content"], last.get("optOut")) == ("START", "start")


def test_a_later_stop_from_a_number_already_opted_out_stands_when_processed_first(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    # The row of the earlier STOP is older than the START: the later STOP must move it on,
    # or the START processed last lifts it.
    _inbound(inbound, "STOP")
    manual_clock.advance(60)
    _post(inbound, "START")
    manual_clock.advance(1)
    _post(inbound, "STOP")
    _process_in_order(inbound, "STOP", "START")
    assert _check(inbound)["Suppressed"] is True
    refused = inbound.call(
        "SendMessage",
        "POST",
        headers={"Customer-Id": "1001", "Service-Id": TWO_WAY},
        body={"Sender": "Sandbox", "Content": "Hi", "Recipients": [{"Address": PHONE}]},
    )
    assert refused.status == 422, refused.body


def _said(inbound: Inbound, content: str, at: dt.datetime | str | None, key: str = "") -> None:
    """``content`` through the webhook with SmartDialog's ``timestamp`` ``at`` (None: none) and
    messageId ``key`` (a new one if empty), and through the intake processor."""
    url = webhook_url(get_settings(), TWO_WAY, new_nonce())
    body = {"sender": "0401234567", "recipient": "+358501234567", "content": content,
            "messageId": key or str(uuid.uuid4())}  # fmt: skip
    if at is not None:
        body["timestamp"] = at if isinstance(at, str) else at.isoformat()
    answer = inbound.call(
        "InboundWebhook", "POST", route_params={"Service": TWO_WAY},
        params=dict(parse_qsl(urlsplit(url).query)), body=body,
    )  # fmt: skip
    assert answer.status == 202
    assert inbound.process_intake() == 1


def test_a_resent_start_does_not_lift_a_stop_sent_after_it(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """SmartDialog resends a message whose 202 it did not get, with its messageId and its
    timestamp; the opt-outs were ordered by our receipt's time, new on each call, so a START
    resent after a later STOP lifted it and sends went out again (found in review)."""
    from shared.clock import utcnow

    start, started = str(uuid.uuid4()), utcnow()
    _said(inbound, "START", started, start)  # its 202 lost
    manual_clock.advance(60)
    _said(inbound, "STOP", utcnow())
    manual_clock.advance(60)

    _said(inbound, "START", started, start)  # SmartDialog's resend

    assert _check(inbound)["Suppressed"] is True
    last = inbound.read(names.INBOUND_QUEUE)[-1]["data"]
    assert (last["content"], last.get("optOut")) == ("START", None)  # it lifted nothing
    # A START sent after the STOP lifts it.
    _said(inbound, "START", utcnow())
    assert _check(inbound)["Suppressed"] is False


@pytest.mark.parametrize(
    ("stop", "start"),
    [("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"), (None, "2025-01-01T00:00:00Z")],
    ids=["dotnet-unset", "a-year-old"],
)
def test_an_implausible_timestamp_counts_as_the_receipt(
    inbound: Inbound, stop: str | None, start: str
) -> None:
    """Taken as it was (a second read of the fix above): .NET's unset 0001-01-01 on a STOP could
    not be stored (the intake went to poison, the STOP never applied), and on a START, or one a
    year old, it lifted nothing, so the recipient could not opt back in."""
    _said(inbound, "STOP", stop)
    assert _check(inbound)["Suppressed"] is True
    _said(inbound, "START", start)
    assert _check(inbound)["Suppressed"] is False


@pytest.mark.parametrize("earlier", ["action", "unstamped-stop"])
def test_a_start_by_a_clock_a_little_behind_lifts_a_suppression_timed_by_ours(
    inbound: Inbound, manual_clock: ManualClock, earlier: str
) -> None:
    """AddSuppression, and a STOP without SmartDialog's time, are timed by our clock, a START by
    SmartDialog's: one sent 10 s after them by a clock 12 s behind lifted nothing (second
    reads). Against such a suppression a START counts at most 5 s past its own time."""
    from shared.clock import utcnow

    if earlier == "action":
        route = {"Service": TWO_WAY, "Phone": PHONE}
        assert inbound.call("AddSuppression", "PUT", route_params=route).status == 200
    else:
        _said(inbound, "STOP", None)
    manual_clock.advance(10)

    _said(inbound, "START", utcnow() - dt.timedelta(seconds=12))

    assert _check(inbound)["Suppressed"] is False


def test_a_resent_start_does_not_lift_a_suppression_the_action_added_after_it(
    inbound: Inbound, manual_clock: ManualClock
) -> None:
    """Counted at its receipt against the action's suppression (a second read of the fix
    above), a START resent a minute after AddSuppression lifted it."""
    from shared.clock import utcnow

    start, started = str(uuid.uuid4()), utcnow()
    _said(inbound, "START", started, start)  # its 202 lost
    manual_clock.advance(60)
    route = {"Service": TWO_WAY, "Phone": PHONE}
    assert inbound.call("AddSuppression", "PUT", route_params=route).status == 200
    manual_clock.advance(60)

    _said(inbound, "START", started, start)  # SmartDialog's resend

    assert _check(inbound)["Suppressed"] is True


def test_custom_keywords_replace_the_defaults(inbound: Inbound) -> None:
    inbound.configure(STOP_KEYWORDS="UNSUBSCRIBE,QUIT")
    _inbound(inbound, "stop")
    assert _check(inbound)["Suppressed"] is False
    _inbound(inbound, "quit")
    assert _check(inbound)["Suppressed"] is True


def test_suppression_actions_add_check_and_remove(inbound: Inbound) -> None:
    route = {"Service": ONE_WAY, "Phone": "040 123 4567"}
    added = inbound.call("AddSuppression", "PUT", route_params=route)
    assert added.status == 200
    assert (added.body["Phone"], added.body["Suppressed"], added.body["Source"]) == (
        PHONE, True, "action",
    )  # fmt: skip
    assert _check(inbound, ONE_WAY)["Suppressed"] is True
    removed = inbound.call("RemoveSuppression", "DELETE", route_params=route)
    assert (removed.status, removed.body["Suppressed"]) == (200, False)
    assert _check(inbound, ONE_WAY)["Suppressed"] is False


def test_checking_or_lifting_a_services_suppression_answers_a_star_one_that_still_refuses(
    inbound: Inbound,
) -> None:
    """GetSuppression read the service's own row only: with a * suppression it said not
    suppressed while sends were refused, and RemoveSuppression said lifted though they still
    were; the 422 named the send's service, sending the operator to a lift that changed
    nothing (found in review)."""
    route = {"Service": TWO_WAY, "Phone": PHONE}
    assert (
        inbound.call("AddSuppression", "PUT", route_params={**route, "Service": "*"}).status == 200
    )

    checked = _check(inbound)
    lifted = inbound.call("RemoveSuppression", "DELETE", route_params=route)
    refused = inbound.call(
        "SendMessage", "POST", headers={"Customer-Id": "1001", "Service-Id": TWO_WAY},
        body={"Sender": "Sandbox", "Content": "Offer", "Recipients": [{"Address": PHONE}]},
    )  # fmt: skip

    assert (checked["Suppressed"], checked["Service"], checked["Source"]) == (True, "*", "action")
    assert (lifted.body["Suppressed"], lifted.body["Service"]) == (True, "*")
    assert refused.status == 422
    assert "opted out of every service (*)" in refused.body["errors"][0]["message"]
    inbound.call("RemoveSuppression", "DELETE", route_params={**route, "Service": "*"})
    assert _check(inbound) == {"Service": TWO_WAY, "Phone": PHONE, "Suppressed": False}


def test_suppression_action_rejects_a_bad_phone_number(inbound: Inbound) -> None:
    answer = inbound.call(
        "AddSuppression", "PUT", route_params={"Service": ONE_WAY, "Phone": "not a number"}
    )
    assert answer.status == 400
    assert answer.body["errors"][0]["field"] == "Phone"


def test_send_to_a_suppressed_recipient_is_refused_unless_transactional(inbound: Inbound) -> None:
    store = SuppressionStore.from_settings()
    _inbound(inbound, "LOPETA", sender=PHONE)
    store.add(
        ALL_SERVICES, "+358409998877", keyword=None, source="action", now=dt.datetime.now(dt.UTC)
    )

    with pytest.raises(Problem) as refused:
        refuse_suppressed(store, TWO_WAY, ["+358400000001", PHONE, "+358409998877"])
    problem = refused.value
    assert problem.status == 422
    assert [e.field for e in problem.errors] == [
        "Recipients[1].Address",
        "Recipients[2].Address",
    ]
    assert "LOPETA" in problem.errors[0].message
    refuse_suppressed(store, TWO_WAY, [PHONE], transactional=True)  # overridden: no error
    refuse_suppressed(store, ONE_WAY, [PHONE])  # another service: allowed
    refuse_suppressed(store, None, [PHONE])  # no service (discussion reply): nothing to check


def test_stop_by_sms_then_a_send_to_that_number_is_refused_unless_transactional(
    inbound: Inbound,
) -> None:
    _inbound(inbound, "STOP", sender=PHONE)
    headers = {"Customer-Id": "1001", "Service-Id": TWO_WAY}
    body = {"Sender": "Sandbox", "Content": "Hi", "Recipients": [{"Address": "0401234567"}]}

    refused = inbound.call("SendMessage", "POST", headers=headers, body=body)

    assert refused.status == 422, refused.body
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert [e["field"] for e in refused.body["errors"]] == ["Recipients[0].Address"]
    assert "STOP" in refused.body["errors"][0]["message"]
    assert inbound.count(names.OUTBOUND_QUEUE) == 0

    accepted = inbound.call(
        "SendMessage", "POST", headers=headers, body={**body, "Transactional": True}
    )
    assert accepted.status == 202, accepted.body
    inbound.run_queue(names.OUTBOUND_QUEUE, "OutboundSender")
    [sent] = [
        r for r in inbound.sandbox.state.snapshot("requests") if r["operationId"] == "SendMessage"
    ]
    assert sent["status"] == 200
    assert "Transactional" not in sent["body"]
