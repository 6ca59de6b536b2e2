"""Re-drives done again: a re-drive that stopped after its record write, a re-driven send that
fails again, a poison command reusing a failed message's id, and bulk re-drives whose first
letters all stay.

Through the real functions, Azurite and the sandbox, as the rest of tests/ops.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from shared.deadletters import write_dead_letter
from shared.events import MESSAGE_FAILED, MESSAGE_REDRIVEN
from shared.messages import MessageStatus, MessageStore
from shared.names import OUTBOUND_DEAD_LETTER_QUEUE
from shared.ops import keep_poison
from shared.settings import reset_settings_cache
from shared.storage import ensured_queue
from shared.triggers import TriggerNotifier
from tests.ops.conftest import Outbound, index_written_dead_letters, letter
from tests.ops.test_poisoned_sends import given_up_on, recorded_then_storage_failed
from tests.outbound.conftest import DELIVERED, REJECTED, call_http, sms


def _failed_letter(ops: Outbound, message_id: str, **command: Any) -> dict[str, Any]:
    """The one listed dead letter of a send that failed (``command`` makes it fail)."""
    ops.enqueue({"operation": "SendMessage", "messageId": message_id, **command})
    ops.drain()
    index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)
    [item] = call_http("ListDeadLetters", "GET").body["value"]
    return dict(item)


def _redrive(letter_id: str) -> Any:
    return call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": letter_id})


def test_a_redrive_stopped_after_its_record_write_leaves_it_sendable(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fresh validity is in the re-drive's own write: a re-drive that stopped after writing
    the record never leaves it queued with the validity it expired with, so the next re-drive
    sends it (before, the second write was lost and the copy expired at once, unsent)."""
    item = _failed_letter(ops, "rv-valid", validUntil="2020-01-01T00:00:00Z", body=sms(DELIVERED))
    store = MessageStore.from_settings()
    swap = MessageStore.swap
    blips: list[str] = []

    def dies_after_the_redrive(self: MessageStore, record: Any, **changes: Any) -> Any:
        written = swap(self, record, **changes)
        if changes.get("_redrive") and not blips:
            blips.append(record.message_id)
            raise RuntimeError("the process died after the re-drive's record write")
        if "valid_until" in changes and not changes.get("_redrive"):
            raise AssertionError("a re-drive's validity written apart from its transition")
        return written

    monkeypatch.setattr(MessageStore, "swap", dies_after_the_redrive)
    assert _redrive(item["id"]).status == 500
    monkeypatch.setattr(MessageStore, "swap", swap)

    again = _redrive(item["id"])
    ops.drain()

    assert (again.status, again.body["outcome"]) == (200, "redriven")
    assert getattr(store.get("rv-valid"), "status", None) is MessageStatus.SENT
    assert len(ops.upstream()) == 1


@pytest.mark.parametrize("kept", [False, True], ids=["poison", "kept-poison"])
def test_a_poison_command_reusing_a_failed_message_id_leaves_that_message_alone(
    ops: Outbound, kept: bool
) -> None:
    """A command on the outbound poison queue that reused the id of failed message M (not M's
    own, by the sender's check) is kept, not re-driven: M stays failed, no re-drive event, and
    the letter stays listed (before, M went back to queued and stayed so for ever once the
    sender dead-lettered the command as not M's)."""
    message_id = f"rv-foreign-{kept}"
    _failed_letter(ops, message_id, body=sms(REJECTED))
    foreign = {"operation": "SendMessage", "messageId": message_id}
    text = json.dumps({**foreign, "body": sms(DELIVERED, content="Something else")})
    given_up_on(text)
    if kept:
        assert keep_poison() == 1
    [item] = call_http("ListDeadLetters", "GET", params={"reason": "poison"}).body["value"]

    answer = _redrive(item["id"])
    ops.drain()

    assert (answer.status, answer.body["outcome"]) == (200, "kept")
    assert "another message's" in answer.body["detail"]
    assert getattr(MessageStore.from_settings().get(message_id), "status", None) is (
        MessageStatus.FAILED
    )
    assert MESSAGE_REDRIVEN not in {e["type"] for e in ops.events()}
    assert len(ops.upstream()) == 1  # its own first attempt only
    listed = call_http("ListDeadLetters", "GET", params={"reason": "poison"}).body["value"]
    assert [i["messageId"] for i in listed] == [message_id]


def test_a_poison_copy_of_a_rule_send_made_again_after_its_rule_was_edited_is_kept_as_stale(
    ops: Outbound,
) -> None:
    """A rule's send has its id from rule, event and recipient alone: the event delivered again
    after the rule's text was edited made a different command with the same id. Its poison copy
    is kept (re-driven, the sender would only acknowledge it and the failed message would stay
    queued) and the detail says what it is: not "another message's" alone."""
    from shared.outbound import derive_message_id

    message_id = derive_message_id("notification-rule", f"disk\ns\ne-1\n{REJECTED}")
    origin = {"ruleId": "disk", "eventId": "e-1", "eventSource": "s"}
    _failed_letter(ops, message_id, origin=origin, body=sms(REJECTED, content="disk full"))
    edited = {"operation": "SendMessage", "messageId": message_id, "origin": origin}
    given_up_on(json.dumps({**edited, "body": sms(REJECTED, content="disk full on vm-1")}))
    [item] = call_http("ListDeadLetters", "GET", params={"reason": "poison"}).body["value"]

    answer = _redrive(item["id"])

    assert (answer.status, answer.body["outcome"]) == (200, "kept"), answer.body
    assert "a rule's send made again after the rule was edited" in answer.body["detail"]
    assert getattr(MessageStore.from_settings().get(message_id), "status", None) is (
        MessageStatus.FAILED
    )


def test_a_poison_command_of_its_own_message_is_still_redriven(ops: Outbound) -> None:
    """The check lets a message's own poisoned command through: re-driven, it is sent."""
    command = {"operation": "SendMessage", "messageId": "rv-own", "body": sms(DELIVERED)}
    recorded_then_storage_failed(ops, command)
    given_up_on(json.dumps(command))
    [item] = call_http("ListDeadLetters", "GET", params={"reason": "poison"}).body["value"]

    answer = _redrive(item["id"])
    ops.drain()

    assert answer.body["outcome"] == "redriven"
    assert getattr(MessageStore.from_settings().get("rv-own"), "status", None) is (
        MessageStatus.SENT
    )


def test_a_redriven_send_that_fails_again_is_a_new_failure(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its second ``message.failed``, dead letter and *When a send fails* note have ids of their
    own (consumers and our dispatcher de-duplicate on ids: before, the second failure reused the
    first's and was never heard); the first keeps ``<id>:failed``. Its new letter is listed."""
    notes: list[str] = []
    notify = TriggerNotifier.notify

    def noted(self: TriggerNotifier, *args: Any, **kwargs: Any) -> Any:
        notes.append(kwargs["event_id"])
        return notify(self, *args, **kwargs)

    monkeypatch.setattr(TriggerNotifier, "notify", noted)
    first = _failed_letter(ops, "rv-refail", body=sms(REJECTED))

    assert _redrive(first["id"]).body["outcome"] == "redriven"
    ops.drain()
    index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)

    [once, again] = [e["id"] for e in ops.events() if e["type"] == MESSAGE_FAILED]
    assert once == "rv-refail:failed"
    assert again.startswith("rv-refail:failed:")
    assert notes == ["rv-refail:failed:trigger", f"{again}:trigger"]
    [letter] = call_http("ListDeadLetters", "GET").body["value"]
    assert (letter["messageId"], letter["code"]) == ("rv-refail", "upstream-rejected")
    assert letter["id"] != first["id"]
    shown = call_http("GetDeadLetter", "GET", route_params={"DeadLetterId": letter["id"]})
    assert json.loads(shown.body["text"])["id"] == again


def test_a_bulk_redrive_loop_goes_past_letters_that_stay(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls "until more is false", each passing the previous continuationToken, reach a
    sendable letter behind more letters that stay than one call passes over, and end (before,
    every call saw the same first ones and answered more for ever)."""
    monkeypatch.setattr("shared.ops.actions.BULK_LIMIT", 2)  # passes over 10 in one call
    queue = ensured_queue(OUTBOUND_DEAD_LETTER_QUEUE)
    for n in range(12):  # they stay: their stored original is gone
        gone = json.loads(letter(originalBlob=f"original/gone-{n}", messageId=f"gone-{n}"))
        del gone["original"]
        write_dead_letter(queue, json.dumps(gone), queue_name=OUTBOUND_DEAD_LETTER_QUEUE)
    _failed_letter_behind(ops)

    answers, token = [], None
    for _ in range(5):
        params = {"reason": "failed", **({"continuationToken": token} if token else {})}
        answer = call_http("RedriveDeadLetters", "POST", params=params)
        assert answer.status == 200, answer.body
        answers.append((answer.body["originalGone"], answer.body["redriven"], answer.body["more"]))
        token = answer.body.get("continuationToken")
        if not answer.body["more"]:
            break
    ops.drain()

    assert answers == [(10, 0, True), (2, 1, False)]
    assert [r["body"]["RequestId"] for r in ops.upstream()] == ["rv-behind"]


def _failed_letter_behind(ops: Outbound, message_id: str = "rv-behind") -> None:
    ops.enqueue({"operation": "SendMessage", "messageId": message_id,
                 "validUntil": "2020-01-01T00:00:00Z", "body": sms(DELIVERED)})  # fmt: skip
    ops.drain()
    index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)


@pytest.mark.parametrize(
    "token",
    ["nonsense", "a~b/c", "eyJmb28iOiAiYmFyIn0", f"{OUTBOUND_DEAD_LETTER_QUEUE}~99999999"],
)
def test_a_bulk_call_with_a_token_no_call_answered_is_a_400_naming_it(
    ops: Outbound, token: str
) -> None:
    _failed_letter_behind(ops, f"rv-token-{token[:3]}")
    for action in ("RedriveDeadLetters", "PurgeDeadLetters"):
        params = {"reason": "failed", "continuationToken": token}
        answer = call_http(action, "POST", params=params)
        assert answer.status == 400, answer.body
        assert [e["field"] for e in answer.body["errors"]] == ["continuationToken"]
    assert len(call_http("ListDeadLetters", "GET").body["value"]) == 1  # nothing changed
    assert ops.upstream() == []


def test_a_bulk_redrive_loop_over_sends_that_fail_again_ends_after_one_pass(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-driven send that fails again while the loop runs writes a new letter, after the
    token's place: a loop looks only at letters written before it began, so it re-drives each
    once and ends; the new ones wait for the next loop (before, it re-drove them for ever, each
    lap another message.failed and trigger note)."""
    monkeypatch.setattr("shared.ops.actions.BULK_LIMIT", 2)
    for n in range(3):
        ops.enqueue(
            {"operation": "SendMessage", "messageId": f"rv-loop-{n}", "body": sms(REJECTED)}
        )
    ops.drain()
    index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)

    answers, token = [], None
    for _ in range(4):
        params = {"reason": "failed", **({"continuationToken": token} if token else {})}
        body = call_http("RedriveDeadLetters", "POST", params=params).body
        answers.append((body["redriven"], body["more"]))
        token = body.get("continuationToken")
        ops.drain()  # the sender fails them again while the loop runs
        index_written_dead_letters(OUTBOUND_DEAD_LETTER_QUEUE)
        if not body["more"]:
            break

    assert answers == [(2, True), (1, False)]
    assert len(ops.upstream()) == 6  # each sent once more
    assert len(call_http("ListDeadLetters", "GET").body["value"]) == 3  # for the next loop


def test_a_continuation_token_goes_only_with_its_action_and_filters(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signed with the action, filters and place it was answered for: with other filters or
    another action, or its place altered, it is a 400 naming it, nothing done (before, any
    letter id was a place, and a token given other filters skipped their letters silently)."""
    monkeypatch.setattr("shared.ops.actions.BULK_LIMIT", 1)
    for n in range(3):
        _failed_letter_behind(ops, f"rv-bound-{n}")
    token = call_http("PurgeDeadLetters", "POST", params={"reason": "failed"}).body[
        "continuationToken"
    ]
    place, _, signature = token.partition(".")
    start, _ = json.loads(base64.urlsafe_b64decode(place + "=" * (-len(place) % 4)))
    elsewhere = json.dumps([start, f"{OUTBOUND_DEAD_LETTER_QUEUE}~99999999"]).encode()
    moved = f"{base64.urlsafe_b64encode(elsewhere).decode().rstrip('=')}.{signature}"
    for action, params in (
        ("PurgeDeadLetters", {"reason": "failed", "queue": OUTBOUND_DEAD_LETTER_QUEUE}),
        ("PurgeDeadLetters", {"queue": OUTBOUND_DEAD_LETTER_QUEUE}),
        ("RedriveDeadLetters", {"reason": "failed"}),
        ("PurgeDeadLetters", {"reason": "failed", "continuationToken": moved}),
    ):
        answer = call_http(action, "POST", params={"continuationToken": token, **params})
        assert answer.status == 400, (action, params, answer.body)
        assert [e["field"] for e in answer.body["errors"]] == ["continuationToken"]
    assert len(call_http("ListDeadLetters", "GET").body["value"]) == 2  # nothing changed

    again = call_http(
        "PurgeDeadLetters", "POST", params={"reason": "failed", "continuationToken": token}
    )
    assert (again.body["purged"], again.body["more"]) == (1, True), again.body


def test_without_callback_secrets_a_bulk_call_is_a_503_and_does_nothing(
    ops: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its continuationToken is signed: the missing secrets are said before any letter is
    handled, not after."""
    _failed_letter_behind(ops, "rv-unsigned")
    secrets = os.environ["SMARTDIALOG_CALLBACK_SECRETS"]
    monkeypatch.delenv("SMARTDIALOG_CALLBACK_SECRETS")
    reset_settings_cache()

    answer = call_http("PurgeDeadLetters", "POST", params={"reason": "failed"})

    assert answer.status == 503, answer.body
    assert [e["field"] for e in answer.body["errors"]] == ["SMARTDIALOG_CALLBACK_SECRETS"]
    monkeypatch.setenv("SMARTDIALOG_CALLBACK_SECRETS", secrets)
    reset_settings_cache()
    assert len(call_http("ListDeadLetters", "GET").body["value"]) == 1


def test_the_connector_says_every_reason_a_redrive_keeps_a_letter() -> None:
    """Kept is not only a recipient who opts out: an outcome-unknown send without force, a
    poison command naming no message, one that reused another message's id."""
    paths = json.loads(
        (Path(__file__).parents[2] / "connector/apiDefinition.swagger.json").read_text()
    )["paths"]
    one = paths["/deadletters/{DeadLetterId}/redrive"]["post"]["responses"]["200"]["schema"]
    many = paths["/deadletters/redrive"]["post"]["responses"]["200"]["schema"]
    outcome = one["properties"]["outcome"]["description"]
    kept = many["properties"]["kept"]["description"]
    for text in (outcome, kept):
        for reason in ("opts out", "outcome-unknown", "force", "naming no message", "another",
                       "rule was edited", "connection is unsure"):  # fmt: skip
            assert reason in text, (reason, text)
