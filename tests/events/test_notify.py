"""From events to sends against Azurite: what counts against the hourly cap and the quiet
period, and every recipient a matched rule leaves out is reported with its reason."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from azure.data.tables import TableClient, UpdateMode
from azure.storage.queue import QueueClient

from shared.actions import ActionRequest, ActionResponse, handle
from shared.clock import ManualClock, utcnow
from shared.notify._intake import IncomingEvent, parse_object
from shared.notify._notify import EventResult, Notifier
from shared.notify._rules import Rule
from shared.notify._store import NotifyState, RuleStore
from shared.storage import chunked, ensure_table

N1, N2 = "+358401234561", "+358401234562"


@dataclass
class Notify:
    notifier: Notifier
    rules: RuleStore
    state: NotifyState
    queue: QueueClient

    def rule(self, **changes: Any) -> Rule:
        document: dict[str, Any] = {
            "Id": "disk",
            "Match": {"EventType": "t"},
            "Message": {"Sender": "Ops", "Content": "disk $(data.disk)"},
            "Recipients": {"FromEvent": "data.phones", "AllowedCountryCodes": [358]},
        }
        document.update(changes)
        rule = Rule.model_validate(document)
        assert self.rules.create(rule)
        return rule

    def handle(self, event: IncomingEvent) -> EventResult:
        [result] = self.notifier.handle([event])
        return result

    def queued(self) -> list[dict[str, Any]]:
        return [json.loads(m.content) for m in self.queue.peek_messages(max_messages=32)]


def event(event_id: str, subject: str = "vm-1", **data: Any) -> IncomingEvent:
    return parse_object({"specversion": "1.0", "id": event_id, "source": "s", "type": "t",
                         "subject": subject, "data": {"disk": "C:", **data}})  # fmt: skip


def reasons(result: EventResult) -> list[str]:
    return [s.reason for s in result.skipped]


def sent_to(result: EventResult) -> list[str]:
    return [s.address for s in result.sends]


@pytest.fixture
def notify(storage_env: str, unique_name: str) -> Notify:
    from shared.settings import get_settings

    def table(suffix: str) -> TableClient:
        name = unique_name.replace("-", "") + suffix
        return ensure_table(TableClient.from_connection_string(storage_env, name))

    rules, state = RuleStore(table("rules")), NotifyState(table("state"))
    queue = QueueClient.from_connection_string(storage_env, unique_name)
    queue.create_queue()
    notifier = Notifier(get_settings(), rules=rules, state=state, queue=queue)
    return Notify(notifier, rules, state, queue)


def test_a_number_the_quiet_period_holds_back_takes_no_unit_of_the_hourly_cap(
    notify: Notify, manual_clock: ManualClock
) -> None:
    """A flapping alert (QuietMinutes 60) used up MaxPerHour with messages never sent, and
    another subject's alert later that hour was skipped "over MaxPerHour"."""
    notify.rule(QuietMinutes=60, Recipients={"FromEvent": "data.phones",
                "AllowedCountryCodes": [358], "MaxPerHour": 2})  # fmt: skip

    assert sent_to(notify.handle(event("e1", "vm-1", phones=[N1]))) == [N1]
    for flap in range(3):
        held = notify.handle(event(f"flap{flap}", "vm-1", phones=[N1]))
        assert (sent_to(held), reasons(held)) == ([], ["quiet period"])
    assert sent_to(notify.handle(event("e2", "vm-2", phones=[N1]))) == [N1]
    assert reasons(notify.handle(event("e3", "vm-3", phones=[N1]))) == ["over MaxPerHour"]


def test_a_number_the_cap_refuses_starts_no_quiet_period(
    notify: Notify, manual_clock: ManualClock
) -> None:
    """Its quiet period would hold the next alert about that subject back, though nothing was
    sent."""
    notify.rule(QuietMinutes=120, Recipients={"FromEvent": "data.phones",
                "AllowedCountryCodes": [358], "MaxPerHour": 1})  # fmt: skip

    assert sent_to(notify.handle(event("e1", "vm-1", phones=[N1]))) == [N1]
    assert reasons(notify.handle(event("e2", "vm-2", phones=[N1]))) == ["over MaxPerHour"]
    manual_clock.advance(3600)  # the next hour: the cap has room again
    assert sent_to(notify.handle(event("e3", "vm-2", phones=[N1]))) == [N1]


class _ReadBeforeAnotherClaimed(NotifyState):
    """Another event claims every quiet period between our read and our write."""

    def quiet_held(self, *args: Any, **kwargs: Any) -> bool:
        return False


def test_a_quiet_period_claimed_by_another_event_after_the_cap_was_taken_gives_the_unit_back(
    notify: Notify, manual_clock: ManualClock
) -> None:
    notify.rule(QuietMinutes=60, Recipients={"FromEvent": "data.phones",
                "AllowedCountryCodes": [358], "MaxPerHour": 1})  # fmt: skip
    state = notify.state
    assert state.quiet_claim("disk", "vm-1", N1, "s\nother", minutes=60, now=utcnow())
    notify.notifier.state = _ReadBeforeAnotherClaimed(state._table)

    lost = notify.handle(event("e1", "vm-1", phones=[N1]))

    assert (sent_to(lost), reasons(lost)) == ([], ["quiet period"])
    assert sent_to(notify.handle(event("e2", "vm-2", phones=[N1]))) == [N1]


def test_a_message_that_is_not_valid_is_not_queued_and_takes_no_unit_of_the_cap(
    notify: Notify, manual_clock: ManualClock
) -> None:
    """A placeholder that finds nothing renders empty: the queue model's Content is any text,
    so a blank SMS was queued (and took a unit of the cap). The send actions' rules apply."""
    notify.rule(Message={"Sender": "Ops", "Content": "$(data.note)"},
                Recipients={"FromEvent": "data.phones", "AllowedCountryCodes": [358],
                            "MaxPerHour": 1})  # fmt: skip

    blank = notify.handle(event("e1", phones=[N1]))
    assert sent_to(blank) == []
    assert reasons(blank) == ["message not valid: Message.Content: Must not be empty or blank."]
    assert notify.queued() == []
    assert sent_to(notify.handle(event("e2", phones=[N1], note="disk full"))) == [N1]


def test_a_placeholder_value_longer_than_its_field_takes_is_sent_cut_to_it_saying_so(
    notify: Notify, caplog: pytest.LogCaptureFixture
) -> None:
    """A value over the field's 2,000 (1,000) characters made no message: a long alert (its
    description, an alertContext dump) was dropped, only a log line saying so. It goes out cut,
    the value ending "...", the whole as long as the field may be (what bounds a forged event)."""
    notify.rule(Recipients={"Numbers": [N1]})
    template = {"TemplateName": "disk_full", "BodyParameters": ["ok", "$(data.disk)"]}
    notify.rule(Id="tpl", Message=template, Recipients={"Numbers": [N2]})

    with caplog.at_level(logging.WARNING, "shared.notify"):
        long = notify.handle(event("e1", disk="x" * 60_000))

    assert (sorted(sent_to(long)), reasons(long)) == ([N1, N2], [])
    bodies = {q["origin"]["ruleId"]: q["body"] for q in notify.queued()}
    assert bodies["disk"]["Content"] == "disk " + "x" * 1992 + "..."
    assert bodies["tpl"]["BodyParameters"] == ["ok", "x" * 997 + "..."]
    cut = "rule disk: placeholder values cut in event e1: 60,005 characters rendered, at most 2,000"
    assert cut in caplog.text
    assert "rule tpl: placeholder values cut" in caplog.text
    assert "x" * 100 not in caplog.text


def test_a_blank_whatsapp_template_parameter_is_not_queued_naming_it(notify: Notify) -> None:
    template = {"TemplateName": "disk_full", "BodyParameters": ["$(data.disk)", " $(data.nope) "]}
    notify.rule(Message=template, Recipients={"Numbers": [N1]})

    result = notify.handle(event("e1"))

    assert sent_to(result) == []
    assert reasons(result) == [
        "message not valid: Message.BodyParameters[1]: Must not be empty or blank."
    ]
    assert notify.queued() == []


def test_numbers_from_the_event_take_json_integers_and_report_what_is_not_a_number(
    notify: Notify, caplog: pytest.LogCaptureFixture
) -> None:
    """Objects and JSON numbers were dropped without a word; an integer is read as the text of
    its digits (as "358401234562" is: Finnish, by the country code it starts with)."""
    notify.rule()
    phones = [N1, 358401234562, {"number": N1}, 3.5, True, None, "not-a-number"]

    with caplog.at_level(logging.INFO, "shared.notify"):
        result = notify.handle(event("e1", phones=phones))

    assert sent_to(result) == [N1, N2]
    assert reasons(result) == ["not a phone number"] * 5
    assert result.summary()["Skipped"] == [{"RuleId": "disk", "Reason": "not a phone number"}] * 5
    assert "disk: not a phone number (x5)" in caplog.text
    assert "FromEvent gave a value of type object, not a phone number" in caplog.text


def test_a_condition_or_from_event_that_fails_on_the_event_is_reported_and_logged(
    notify: Notify, caplog: pytest.LogCaptureFixture
) -> None:
    notify.rule(Id="sized", Match={"EventType": "t", "Condition": "length(data.size) > `1`"},
                Recipients={"Numbers": [N1]})  # fmt: skip
    notify.rule(Id="counted", Recipients={"FromEvent": "abs(data.phones)",
                "AllowedCountryCodes": [358]})  # fmt: skip

    with caplog.at_level(logging.WARNING, "shared.notify"):
        result = notify.handle(event("e1", size=1234567, phones="+358401234561"))

    assert result.rules == ["counted"]
    assert result.summary()["Skipped"] == [
        {"RuleId": "counted", "Reason": "FromEvent failed: abs() was given a string, not a number"},
        {"RuleId": "sized", "Reason": "condition failed: length() was given a number, not a "
                                      "string or array or object"},
    ]  # fmt: skip
    assert "rule sized: its Condition failed on event e1" in caplog.text
    assert "rule counted: its FromEvent failed on event e1" in caplog.text
    assert "1234567" not in caplog.text
    assert "358401234561" not in caplog.text


def test_an_events_id_and_type_are_logged_escaped_bounded_and_masked(
    notify: Notify, caplog: pytest.LogCaptureFixture
) -> None:
    """An event's id and type may hold control characters: logged raw, they forged log lines
    (and a number in them went unmasked)."""
    notify.rule(Id="sized", Match={"EventType": "t", "Condition": "length(data.size) > `1`"},
                Recipients={"Numbers": [N1]})  # fmt: skip
    notify.rule(Recipients={"FromEvent": "data.phones", "AllowedCountryCodes": [358]},
                Message={"Sender": "Ops", "Content": "disk $(data.missing)"})  # fmt: skip
    forged_id = "a\nERROR forged +358401234567 " + "i" * 1_000
    unmatched = parse_object({"specversion": "1.0", "id": forged_id, "source": "s",
                              "type": "t\r\nWARNING x +358401234567", "data": {}})  # fmt: skip

    with caplog.at_level(logging.INFO, "shared.notify"):
        notify.handle(event(forged_id, size=1, phones=["not-a-number", N1]))
        notify.handle(unmatched)

    lines = [r.getMessage() for r in caplog.records if r.name.startswith("shared.notify")]
    assert len(lines) >= 5  # matched, skipped, its Condition failed, matched no rule, and
    assert any("placeholder data.missing found nothing" in line for line in lines)  # render
    for line in lines:
        assert not {"\n", "\r"} & set(line), line
        assert "+358401234567" not in line, line
        assert len(line) < 600, line
    assert any("id a\\x0aERROR forged ***4567 iii" in line for line in lines)
    assert any("type t\\x0d\\x0aWARNING x ***4567" in line for line in lines)


def test_a_refused_events_log_line_is_bounded_and_masked_and_its_dead_letter_fits(
    storage_env: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK's refusal of a 20 KB eventTime quotes it five times: logged whole (100 KB, the
    number in it unmasked), and on the queue door its dead letter no longer fitted a queue
    message: the write failed after its index row was written, once per delivery."""
    from shared.deadletters import DeadLetterIndex
    from shared.notify._doors import process_cloud_event_message, receive_grid_event

    event = {"id": "1", "subject": "s", "data": {}, "eventType": "t", "dataVersion": "1",
             "eventTime": "+358401234567\nERROR forged " + "Z" * 20_000}  # fmt: skip
    marker = uuid.uuid4().hex
    with caplog.at_level(logging.WARNING, "shared.notify"):
        answer = receive_grid_event(json.dumps(event))
        dead = process_cloud_event_message(json.dumps(event), queue_message_id=marker)

    assert answer["Events"] == 0
    assert len(answer["Invalid"]) < 1_100
    assert dead == {"Events": 0, "DeadLettered": True}
    lines = [r.getMessage() for r in caplog.records if "eventTime must be" in r.getMessage()]
    assert len(lines) == 2  # the grid door's refusal, the queue door's dead letter
    for line in lines:
        assert "Z" * 50 not in line  # what eventTime takes, not the value quoted
        assert "+358401234567" not in line
        assert "\n" not in line
        assert len(line) < 1_500
    index = DeadLetterIndex.from_settings()
    [row] = [e for e in index._table.list_entities() if marker in str(e.get("MessageId", ""))
             or marker in str(e.get("Text0", ""))]  # fmt: skip
    assert row.get("QueueMessageId")  # the letter is on its queue, linked to its row
    letter = json.loads(row["Text0"])
    assert letter["id"] == f"malformed:{marker}"
    assert len(letter["detail"]) < 1_100
    assert letter["original"] == json.dumps(event)  # kept whole


def test_a_list_that_does_not_exist_is_reported(notify: Notify) -> None:
    notify.rule(Recipients={"List": "on-call", "Numbers": [N1]})

    result = notify.handle(event("e1"))

    assert sent_to(result) == [N1]
    assert reasons(result) == ["list on-call not found"]


BAD_LISTS = [
    {"Numbers": "[+358401234567]"},
    {},
    {"Numbers": '"+358401234567"'},
    {"Numbers": "[" * 5000 + "]" * 5000},  # json.loads raises RecursionError
]


def test_a_list_whose_row_does_not_read_skips_its_rules_only_saying_so(
    notify: Notify, caplog: pytest.LogCaptureFixture
) -> None:
    """One torn list row (not JSON, no Numbers, a JSON string, arrays nested too deeply to
    read) failed every event at every door: the rules' read raised, or a string's characters
    became its "numbers"."""
    notify.rule(Recipients={"List": "good"})
    notify.rules.put_list("good", [N1])
    for index, row in enumerate(BAD_LISTS):
        notify.rule(Id=f"bad{index}", Recipients={"List": f"bad{index}", "Numbers": [N2]})
        notify.rules._table.create_entity({"PartitionKey": "list", "RowKey": f"bad{index}", **row})
    notify.rules._forget()

    with caplog.at_level(logging.ERROR, "shared.notify"):
        result = notify.handle(event("e1"))

    assert sorted(sent_to(result)) == [N1] + [N2] * len(BAD_LISTS)
    assert reasons(result) == [f"list bad{index} unreadable" for index in range(len(BAD_LISTS))]
    assert "recipient list bad2 is skipped" in caplog.text
    assert "recipient list bad3 is skipped: its stored row does not read (RecursionError)" in (
        caplog.text
    )
    for index in range(len(BAD_LISTS)):
        with pytest.raises(LookupError, match=f"Recipient list bad{index}"):
            notify.rules.get_list(f"bad{index}")
    assert notify.rules.delete_list("bad0")
    assert not notify.rules.delete_list("bad0")


def call(operation: str, method: str, body: Any = None, **route: str) -> ActionResponse:
    """One action by its operation id, as the HTTP function would hand it over."""
    raw = b"" if body is None else json.dumps(body).encode()
    request = ActionRequest(method, route_params=route, body=raw,
                            headers={"Content-Type": "application/json"})  # fmt: skip
    return handle(operation, request)


def test_a_list_whose_row_does_not_read_answers_409_or_400_naming_it_not_500(
    storage_env: str, unique_name: str
) -> None:
    from shared.settings import get_settings

    store = RuleStore.from_settings(get_settings())
    store._table.create_entity({"PartitionKey": "list", "RowKey": unique_name, **BAD_LISTS[0]})
    try:
        shown = call("GetRecipientList", "GET", ListName=unique_name)
        assert shown.status == 409, shown.body
        assert "PutRecipientList" in shown.body["detail"]
        rule = {
            "Id": unique_name,
            "Match": {"EventType": "t"},
            "Message": {"Sender": "Ops", "Content": "hi"},
            "Recipients": {"List": unique_name},
        }
        refused = call("CreateNotificationRule", "POST", rule)
        assert refused.status == 400, refused.body
        assert [e["field"] for e in refused.body["errors"]] == ["Recipients.List"]
    finally:
        assert call("DeleteRecipientList", "DELETE", ListName=unique_name).status == 204


def test_a_number_in_the_rule_and_the_event_is_sent_once_and_not_counted_against_the_cap(
    notify: Notify, manual_clock: ManualClock
) -> None:
    notify.rule(Recipients={"Numbers": [N1], "FromEvent": "data.phones",
                "AllowedCountryCodes": [358], "MaxPerHour": 1})  # fmt: skip

    assert sent_to(notify.handle(event("e1", phones=[N1]))) == [N1]
    assert sent_to(notify.handle(event("e2", phones=[N1, N2]))) == [N1, N2]


def test_a_stored_rule_that_no_longer_reads_is_skipped_listed_and_deletable(
    notify: Notify, caplog: pytest.LogCaptureFixture
) -> None:
    """A row no release reads as a rule (a 101-character Sender; a torn document) made every
    event fail."""
    notify.rule(Recipients={"Numbers": [N1]})
    old = notify.rule(Id="old", Recipients={"Numbers": [N2]}).model_dump(exclude_none=True)
    old["Message"]["Sender"] = "S" * 101
    notify.rules._table.upsert_entity(
        {"PartitionKey": "rule", "RowKey": "old", **chunked("Document", json.dumps(old))},
        mode=UpdateMode.REPLACE,
    )
    notify.rules._table.create_entity({"PartitionKey": "rule", "RowKey": "torn", "Document": "{"})
    # a chunk count that is no number (found in review: a ValueError every event failed on)
    torn = {"PartitionKey": "rule", "RowKey": "uncounted", "DocumentChunks": "x", "Document0": "{"}
    notify.rules._table.create_entity(torn)
    notify.rules._forget()

    with caplog.at_level(logging.ERROR, "shared.notify"):
        result = notify.handle(event("e1"))

    assert (result.rules, sent_to(result)) == (["disk"], [N1])
    assert "notification rule old is skipped" in caplog.text
    assert "notification rule torn is skipped" in caplog.text
    rules, unreadable = notify.rules.list_rules()
    assert ([r.Id for r in rules], unreadable) == (["disk"], ["old", "torn", "uncounted"])
    assert notify.rules.delete("old")
    assert notify.rules.list_rules()[1] == ["torn", "uncounted"]


def test_a_500s_traceback_is_logged_with_the_secrets_it_quotes_cut(
    storage_env: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The CloudEvents door logged the traceback whole: an error quoting a URL logged its sig=."""
    from shared.actions import ActionRequest
    from shared.notify._doors import receive_cloud_events
    from tests.crash import crash_once

    crash_once(
        monkeypatch,
        Notifier,
        "handle",
        "queue down: https://q.test/intake?sv=1&sig=SASsignatureQUOTED1",
    )
    body = json.dumps({"specversion": "1.0", "id": "e-1", "source": "s", "type": "t"}).encode()
    request = ActionRequest(
        "POST", headers={"Content-Type": "application/cloudevents+json"}, body=body
    )
    with caplog.at_level(logging.ERROR, logger="shared"):
        assert receive_cloud_events(request).status == 500
    assert "queue down: https://q.test/intake?sv=1&sig=***" in caplog.text
    assert "SASsignaturehttps://q.test/intake?sv=1&sig=SASsignatureQUOTED1D1" not in caplog.text


def test_a_rule_naming_a_list_that_does_not_exist_or_a_sender_no_send_takes_is_a_400(
    storage_env: str, unique_name: str
) -> None:
    """Such a rule was saved and could never send: a list that is not there sent nothing (only
    a log line); a blank or 21-character Sender made every send fail."""

    def fields(answer: ActionResponse) -> list[str]:
        assert answer.status == 400, answer.body
        return [e["field"] for e in answer.body["errors"]]

    rule = {
        "Id": unique_name,
        "Match": {"EventType": "t"},
        "Message": {"Sender": "Ops", "Content": "hi"},
        "Recipients": {"List": unique_name},
    }
    assert fields(call("CreateNotificationRule", "POST", rule)) == ["Recipients.List"]
    for sender in ("", "S" * 21):
        long = {**rule, "Message": {"Sender": sender, "Content": "hi"}}
        # (the pipeline names a body field by its own name, as for any action's body)
        assert "Message.Sender" in fields(call("CreateNotificationRule", "POST", long))

    put = call("PutRecipientList", "PUT", {"Numbers": [N1]}, ListName=unique_name)
    assert put.status == 200, put.body
    try:
        assert call("CreateNotificationRule", "POST", rule).status == 201
        update = {k: v for k, v in rule.items() if k != "Id"}
        update["Recipients"] = {"List": unique_name + "-gone"}
        refused = call("UpdateNotificationRule", "PUT", update, RuleId=unique_name)
        assert fields(refused) == ["Recipients.List"]
    finally:
        call("DeleteNotificationRule", "DELETE", RuleId=unique_name)
        call("DeleteRecipientList", "DELETE", ListName=unique_name)


def test_an_unreadable_stored_rule_answers_409_saying_what_to_do_not_500(
    storage_env: str, unique_name: str
) -> None:
    from shared.settings import get_settings

    store = RuleStore.from_settings(get_settings())
    store._table.create_entity({"PartitionKey": "rule", "RowKey": unique_name, "Document": "{"})
    try:
        shown = call("GetNotificationRule", "GET", RuleId=unique_name)
        tried = call(
            "DryRunNotificationRules",
            "POST",
            {
                "RuleId": unique_name,
                "Event": {"specversion": "1.0", "id": "e1", "source": "s", "type": "t"},
            },
        )
        assert shown.status == 409, shown.body
        assert "UpdateNotificationRule" in shown.body["detail"]
        assert tried.status == 409, tried.body
    finally:
        assert call("DeleteNotificationRule", "DELETE", RuleId=unique_name).status == 204


def test_a_stored_rule_with_a_sender_a_send_refuses_still_reads_and_says_why_it_sends_nothing(
    notify: Notify,
) -> None:
    """A release took a Sender of up to 100 characters: such a stored rule must keep reading
    (a template rule never uses its Sender and kept sending), and a text rule's send says why
    it is not made, rather than the rule vanishing into "unreadable"."""
    notify.rule(Message={"Sender": "S" * 30, "Content": "disk"}, Recipients={"Numbers": [N1]})
    template = {"Sender": "Contoso Monitoring Alerts", "TemplateName": "disk_full"}
    notify.rule(Id="tpl", Message=template, Recipients={"Numbers": [N2]})

    result = notify.handle(event("e1"))

    assert notify.rules.list_rules()[1] == []  # both read
    assert sent_to(result) == [N2]
    [reason] = reasons(result)
    assert reason.startswith("message not valid: Message.Sender: "), reason


def test_two_copies_of_an_event_keeping_less_of_the_cap_count_what_they_sent_once(
    notify: Notify,
) -> None:
    """Giving back subtracted: two copies of event A (granted 2, one number's quiet period
    then won by event B) each gave one back, so A's count fell to 0 though it sent one."""
    now = utcnow()
    assert notify.state.cap_take("r", "A", 2, per_hour=3, now=now) == 2
    notify.state.cap_keep("r", "A", 1, now=now)
    notify.state.cap_keep("r", "A", 1, now=now)  # the other copy, the same outcome

    assert notify.state.cap_take("r", "C", 5, per_hour=3, now=now) == 2  # 3 - A's 1


def test_the_quiet_period_is_one_for_a_subject_in_any_letter_case(
    notify: Notify, manual_clock: ManualClock
) -> None:
    """A rule's Subject ignores case (Azure resource ids do), its quiet period did not: the
    same VM's alerts in two spellings each sent."""
    notify.rule(QuietMinutes=30, Match={"EventType": "t", "Subject": "/subs/*/vm-*"})

    assert sent_to(notify.handle(event("e1", "/subs/x/VM-1", phones=[N1]))) == [N1]
    held = notify.handle(event("e2", "/SUBS/x/vm-1", phones=[N1]))
    assert (sent_to(held), reasons(held)) == ([], ["quiet period"])


def test_a_condition_on_a_number_no_float_holds_is_reported_not_a_500(notify: Notify) -> None:
    """floor() of 1e999 raised OverflowError, which nothing caught: the HTTP door answered 500
    (the producer retried for ever) and the queue door's message went to poison."""
    notify.rule(Id="big", Match={"EventType": "t", "Condition": "floor(to_number(data.s)) > `1`"},
                Recipients={"Numbers": [N1]})  # fmt: skip

    result = notify.handle(event("e1", s="1e999"))

    assert result.summary()["Skipped"] == [
        {"RuleId": "big", "Reason": "condition failed: a number it cannot use (OverflowError)"}
    ]


def test_a_string_compared_with_a_number_is_reported_and_the_other_rules_still_send(
    notify: Notify,
) -> None:
    """Found in review: jmespath compares a string with a number in Python, which raises a
    plain TypeError that nothing caught: every door answered 500 for the event ("97" where
    the rule's sample had 95), Event Grid retried it for a day, the queue door's went to
    poison, and the other rules matching it sent nothing."""
    notify.rule(Id="hot", Match={"EventType": "t", "Condition": "data.value > `90`"},
                Recipients={"Numbers": [N1]})  # fmt: skip
    notify.rule(Id="who", Recipients={"FromEvent": "data.people[?level > `1`].phone",
                                      "AllowedCountryCodes": [358]})  # fmt: skip
    notify.rule(Id="any", Message={"Sender": "Ops", "Content": "Disk $(data.value > `9` && 'HOT')"},
                Recipients={"Numbers": [N2]})  # fmt: skip

    result = notify.handle(event("e1", value="97", people=[{"level": "2", "phone": N1}]))

    assert sent_to(result) == [N2]  # its placeholder rendered empty
    why = "values it cannot compare or combine ('>' not supported between instances of 'str' "
    assert sorted(result.summary()["Skipped"], key=lambda s: s["RuleId"]) == [
        {"RuleId": "hot", "Reason": f"condition failed: {why}and 'int')"},
        {"RuleId": "who", "Reason": f"FromEvent failed: {why}and 'int')"},
    ]


def test_an_event_with_a_lone_surrogate_is_refused_at_every_door_and_never_a_500(
    notify: Notify, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """B of a batch [A, B, C] with "\\ud800" in data (or its subject, with a quiet period):
    A was queued, B raised, the door answered 500 on every retry and C never went; on the queue
    door the message went to -poison with no reason. Now a 400 naming it with nothing queued,
    a dead letter with the reason, and the Event Grid trigger logs and drops it."""
    from shared.actions import ActionRequest
    from shared.names import CLOUD_EVENTS_DEAD_LETTER_QUEUE
    from shared.notify import _doors
    from shared.storage import ensured_queue

    monkeypatch.setattr(_doors, "notifier", lambda settings: notify.notifier)
    notify.rule(QuietMinutes=5, Message={"Sender": "Ops", "Content": "disk $(data.x)"},
                Recipients={"Numbers": [N1]})  # fmt: skip
    good = {"specversion": "1.0", "source": "s", "type": "t", "data": {"x": "C"}}
    batch = [{**good, "id": i, "subject": i} for i in "abc"]
    batch[1]["data"] = {"x": "\ud800"}
    body = json.dumps(batch).encode()  # the JSON escape, as a producer sends it
    request = ActionRequest(
        "POST", headers={"Content-Type": "application/cloudevents-batch+json"}, body=body
    )

    for _ in range(2):  # the producer's retry gets the same answer
        answer = _doors.receive_cloud_events(request)
        assert answer.status == 400, answer.body
        assert [e["field"] for e in answer.body["errors"]] == ["[1].data.x"]
    assert notify.queued() == []

    marker = uuid.uuid4().hex
    _doors.process_cloud_event_message(
        json.dumps([batch[0], {**good, "id": "d", "subject": "\udc80"}]), queue_message_id=marker
    )
    letters = ensured_queue(CLOUD_EVENTS_DEAD_LETTER_QUEUE).peek_messages(max_messages=32)
    [letter] = [json.loads(m.content) for m in letters if marker in m.content]
    assert (letter["reason"], letter["field"]) == ("malformed", "[1].subject")

    with caplog.at_level(logging.WARNING, "shared.notify"):
        dropped = _doors.receive_grid_event(json.dumps({**good, "id": "e", "myext": "\ud800"}))
    assert dropped["Events"] == 0
    assert "Event Grid delivered an invalid event (myext)" in caplog.text
    assert notify.queued() == []


def test_numbers_from_the_event_that_charge_extra_are_skipped_saying_so(notify: Notify) -> None:
    """An allowed country code was all a number from a forged event needed: a Finnish
    premium-rate (+358 600) or a Spanish shared-cost (+34 901) number was queued."""
    notify.rule(Recipients={"FromEvent": "data.phones", "AllowedCountryCodes": [358, 34]})

    result = notify.handle(event("e1", phones=["+358600123456", N1, "+34901123456"]))

    assert sent_to(result) == [N1]
    assert reasons(result) == ["premium-rate number", "shared-cost number"]


def test_a_stored_rule_allowing_a_code_that_is_none_allows_no_number_it_prefixes(
    notify: Notify,
) -> None:
    """A release saved AllowedCountryCodes [35] (only 1 to 999 was checked), and as a prefix
    it allowed +351 to +359. Such a rule still reads and sends to its own numbers; codes are
    compared whole, so it takes no number from the event."""
    notify.rule(Recipients={"Numbers": [N2], "FromEvent": "data.phones",
                            "AllowedCountryCodes": [35]})  # fmt: skip

    result = notify.handle(event("e1", phones=[N1, "+351912345678"]))

    assert sent_to(result) == [N2]
    assert reasons(result) == ["country code not allowed"] * 2


def test_an_event_a_rule_would_send_for_without_its_connections_ids_queues_nothing(
    notify: Notify, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender fills a rule's send's customer and service in from its connection; with no
    SMARTDIALOG_CUSTOMER_ID it dead-lettered every send malformed (no record, no event) after
    the door had answered 202. Now the event is refused as a configuration error (the door's
    503, the queue's message kept) with nothing queued; a dry run says why in Skipped; a rule
    with its own ServiceId needs no SMARTDIALOG_SERVICE_ID."""
    from shared.settings import SettingsInvalid, reset_settings_cache

    rule = notify.rule()
    monkeypatch.delenv("SMARTDIALOG_CUSTOMER_ID")
    monkeypatch.delenv("SMARTDIALOG_SERVICE_ID")
    reset_settings_cache()
    with pytest.raises(SettingsInvalid) as refused:
        notify.handle(event("e1", phones=[N1]))
    assert [e.field for e in refused.value.errors] == ["SMARTDIALOG_CUSTOMER_ID"]
    assert notify.queued() == []
    assert sent_to(notify.handle(event("e2", phones=[]))) == []  # nothing to send: no refusal
    dry = notify.notifier.plan(event("e1", phones=[N1]), dry_run=True)
    assert (sent_to(dry), reasons(dry)) == ([], [
        "not sendable: Connection default: CUSTOMER_ID is not set, and a notification rule's "
        "sends name no customer of their own. Set SMARTDIALOG_CUSTOMER_ID."
    ])  # fmt: skip

    monkeypatch.setenv("SMARTDIALOG_CUSTOMER_ID", "1001")
    reset_settings_cache()
    notify.rules.replace(rule.model_copy(update={"ServiceId": "s-1001-oneway"}))
    assert sent_to(notify.handle(event("e1", phones=[N1]))) == [N1]
    assert [m["serviceId"] for m in notify.queued()] == ["s-1001-oneway"]


def test_a_refused_event_leaves_no_quiet_period_cap_or_send_of_another_rule_or_event(
    notify: Notify, manual_clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rule that cannot send (its connection lacks SMARTDIALOG_SERVICE_ID) refuses the
    request; a good rule matched before it took its quiet period and cap first, and an earlier
    event of the request was queued, so a producer retrying with new ids (or giving up) found
    the next event held 'quiet period' with nothing ever sent, or got the earlier one twice."""
    from shared.settings import SettingsInvalid, reset_settings_cache

    notify.rule(Id="a", ServiceId="s-1001-oneway", QuietMinutes=60, Recipients={"Numbers": [N2]})
    notify.rule(Id="b")  # no ServiceId of its own: needs the connection's
    monkeypatch.delenv("SMARTDIALOG_SERVICE_ID")
    reset_settings_cache()
    with pytest.raises(SettingsInvalid):  # rule a sends for e1 before rule b refuses it
        notify.handle(event("e1", "vm-1", phones=[N1]))
    assert notify.queued() == []
    with pytest.raises(SettingsInvalid):  # e2 (only rule a sends) comes before e3 is refused
        notify.notifier.handle([event("e2", "vm-2", phones=[]), event("e3", "vm-3", phones=[N1])])
    assert notify.queued() == []

    notify.rules.delete("b")  # the operator removes the broken rule; the producer gave up
    for retry, subject in (("e4", "vm-1"), ("e5", "vm-2")):  # no quiet period was started
        assert sent_to(notify.handle(event(retry, subject, phones=[]))) == [N2]


def test_an_events_sends_on_the_outbound_queue_never_expire_and_read_back_as_made(
    notify: Notify,
) -> None:
    """The door puts its sends as the webhook puts its messages (``put_message``): through the
    queue client's pipeline, so a send that waits unseen longer than 7 days is still kept."""
    from shared.names import OUTBOUND_QUEUE
    from shared.settings import get_settings
    from shared.storage import ensured_queue

    outbound = ensured_queue(OUTBOUND_QUEUE)
    outbound.clear_messages()
    notifier = Notifier(get_settings(), rules=notify.rules, state=notify.state)
    notify.rule(Recipients={"Numbers": [N1, N2]})
    awkward = "C:<&>'\"]]> \ufffe Hyvää 👋"
    [result] = notifier.handle([event(f"kept-{uuid.uuid4()}", disk=awkward)])

    ids = {send.message_id for send in result.sends}
    queued = outbound.peek_messages(max_messages=32)
    assert len(ids) == 2
    assert {json.loads(m.content)["messageId"] for m in queued} == ids
    for message in queued:
        assert message.expires_on is not None
        assert message.expires_on.year == 9999
        assert json.loads(message.content)["body"]["Content"] == f"disk {awkward}"


def test_events_making_more_sends_than_one_delivery_may_are_refused_whole_at_every_door(
    notify: Notify, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Events x recipients had no bound: 20 events to a rule of 100 numbers took 2,000 serial
    queue writes and 28 s on Azurite, 5,000 of them 500,000 writes planned in memory first (found
    in review). Past MAX_SENDS a delivery is refused whole (here the cap is 24): a 400 naming the
    body, a dead letter, a logged drop; nothing queued, no quiet period or cap taken."""
    from shared.actions import ActionRequest
    from shared.names import CLOUD_EVENTS_DEAD_LETTER_QUEUE
    from shared.notify import _doors, _notify
    from shared.storage import ensured_queue

    monkeypatch.setattr(_doors, "notifier", lambda settings: notify.notifier)
    monkeypatch.setattr(_notify, "MAX_SENDS", 24)
    numbers = [f"+3584012345{n:02d}" for n in range(10)]
    notify.rule(QuietMinutes=5, Recipients={"Numbers": numbers})
    good = {"specversion": "1.0", "source": "s", "type": "t", "data": {"disk": "C"}}
    batch = [{**good, "id": i, "subject": i} for i in "abc"]  # 30 sends
    request = ActionRequest("POST", headers={"Content-Type": "application/cloudevents-batch+json"},
                            body=json.dumps(batch).encode())  # fmt: skip

    answer = _doors.receive_cloud_events(request)

    assert answer.status == 400, answer.body
    [error] = answer.body["errors"]
    assert error["field"] == "body"
    assert "more than 24 sends (30 by event 3)" in error["message"]
    marker = uuid.uuid4().hex
    _doors.process_cloud_event_message(json.dumps(batch), queue_message_id=marker)
    letters = ensured_queue(CLOUD_EVENTS_DEAD_LETTER_QUEUE).peek_messages(max_messages=32)
    [letter] = [json.loads(m.content) for m in letters if marker in m.content]
    assert (letter["reason"], letter["field"]) == ("malformed", "body")
    monkeypatch.setattr(_notify, "MAX_SENDS", 9)
    with caplog.at_level(logging.WARNING, "shared.notify"):
        assert _doors.receive_grid_event(json.dumps(batch[0]))["Events"] == 0
    assert "Event Grid delivered an invalid event (body)" in caplog.text
    assert notify.queued() == []

    monkeypatch.setattr(_notify, "MAX_SENDS", 24)
    two = ActionRequest("POST", headers={"Content-Type": "application/cloudevents-batch+json"},
                        body=json.dumps(batch[:2]).encode())  # fmt: skip
    assert _doors.receive_cloud_events(two).status == 202  # no quiet period was taken before
    assert len(notify.queued()) == 20


def test_a_dry_run_of_an_event_its_rules_make_too_many_sends_of_says_every_door_refuses_it(
    storage_env: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dry run listed all the sends of an event that every door refuses whole (second
    read): it answers 400 naming Event now (the cap is 5 here)."""
    from shared.notify import _notify

    monkeypatch.setattr(_notify, "MAX_SENDS", 5)
    rule = {"Id": unique_name, "Match": {"EventType": "t"},
            "Message": {"Sender": "Ops", "Content": "hi"},
            "Recipients": {"Numbers": [f"+3584012345{n:02d}" for n in range(6)]}}  # fmt: skip
    assert call("CreateNotificationRule", "POST", rule).status == 201
    try:
        event = {"specversion": "1.0", "id": "e1", "source": "s", "type": "t"}
        tried = call("DryRunNotificationRules", "POST", {"RuleId": unique_name, "Event": event})
        assert tried.status == 400, tried.body
        [error] = tried.body["errors"]
        assert error["field"] == "Event"
        assert "6 sends of it, more than the 5" in error["message"]
    finally:
        assert call("DeleteNotificationRule", "DELETE", RuleId=unique_name).status == 204


def test_a_rules_placeholders_are_applied_once_per_event_within_the_rules_one_budget(
    notify: Notify,
) -> None:
    """Each rule's expressions share one budget per event (shared/notify/_budget.py), and a
    placeholder is applied once per event, not once per recipient: a costly one (about two
    thirds of the budget here) renders for all five recipients of each of two rules."""
    costly = "$(join('', [" + ", ".join(["data.s"] * 10) + "]))"
    phones = [f"+3584012345{i:02d}" for i in range(5)]
    for rule_id in ("one", "two"):
        notify.rule(Id=rule_id, Message={"Sender": "Ops", "Content": costly})

    result = notify.handle(event("e1", s="x" * 15_000, phones=phones))

    assert reasons(result) == []
    assert sorted(sent_to(result)) == sorted(phones * 2)
    contents = [q["body"]["Content"] for q in notify.queued()]
    assert contents
    assert all(c.startswith("x" * 1000) for c in contents), contents[-1][:50]


def test_a_from_event_of_many_values_reads_the_first_thousand_and_logs_missing_values_once(
    notify: Notify, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in a second review: 200,000 values were each parsed (4 s, 200,000 Skipped), and a
    text of 249 missing placeholders logged 249 lines per recipient."""
    content = "$(data.missing) " * 100
    notify.rule(Message={"Sender": "Ops", "Content": content + "$(data.disk)"})

    with caplog.at_level(logging.WARNING, "shared.notify"):
        result = notify.handle(event("e1", phones=["12"] * 5000 + [N1]))

    assert "values past the first 1,000 not read" in reasons(result)
    assert len(result.skipped) == 1001  # 1,000 read, not phone numbers, and that one
    missing = [r for r in caplog.records if "found nothing" in r.getMessage()]
    assert len(missing) == 0  # no recipient: nothing rendered
    result = notify.handle(event("e2", phones=[N1, N2]))
    missing = [r.getMessage() for r in caplog.records if "found nothing" in r.getMessage()]
    assert missing == [
        "rule disk: placeholder data.missing found nothing in event e2 (and 99 more)"
    ]
