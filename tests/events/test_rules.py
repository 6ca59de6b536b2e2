"""Rules: what is refused when saved, what matches, how messages are rendered."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shared.notify._intake import parse_object
from shared.notify._rules import Rule, render, rule_errors

ALERT = json.loads(
    (Path(__file__).parent / "fixtures" / "alert-activated.cloudevent.json").read_text()
)


def rule(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "Id": "cpu",
        "Match": {"EventType": "Microsoft.AlertsManagement.Alert.Activated"},
        "Message": {"Sender": "Ops", "Content": "$(data.essentials.alertRule) fired"},
        "Recipients": {"Numbers": ["+358400000001"]},
    }
    base.update(changes)
    return base


def errors(document: dict[str, Any]) -> list[str]:
    return [field for field, _ in rule_errors(Rule.model_validate(document))]


def test_a_good_rule_with_a_sample_event_has_no_errors() -> None:
    assert errors(rule(SampleEvent=ALERT)) == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"Match": {"Condition": "data.[["}}, "Match.Condition"),
        ({"Recipients": {"Numbers": ["12"]}}, "Recipients.Numbers[0]"),
        (  # 35 is no calling code: as a prefix it allowed every +351 to +359 number
            {"Recipients": {"FromEvent": "data.p", "AllowedCountryCodes": [358, 35]}},
            "Recipients.AllowedCountryCodes[1]",
        ),
        ({"Connection": "sales"}, "Connection"),
        (
            {"SampleEvent": ALERT, "Message": {"Sender": "Ops", "Content": "$(data.nope)"}},
            "Message.Content",
        ),
        (
            {"Message": {"TemplateName": "welcome", "BodyParameters": ["$(data.[[)"]}},
            "Message.BodyParameters[0]",
        ),
    ],
)
def test_a_rule_is_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    assert field in errors(rule(**changes))


@pytest.mark.parametrize(
    "changes",
    [
        {"Surprise": 1},
        {"Recipients": {"FromEvent": "data.phones"}},  # no AllowedCountryCodes
        {"Message": {"Content": "no sender"}},
        {"Match": {"EventType": "a", "EventTypePrefix": "a"}},
        {"Recipients": {}},
    ],
)
def test_a_rule_that_does_not_parse_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Rule.model_validate(rule(**changes))


@pytest.mark.parametrize("sender", ["", "   ", "S" * 21])
def test_a_sender_no_send_would_take_is_refused_as_a_send_refuses_it(sender: str) -> None:
    """A rule took "" and up to 100 characters, and every send it made was then refused. A
    stored rule with one still reads (a release's rows must), and a template rule's sender is
    not a send's (it sends none)."""
    assert errors(rule(Message={"Sender": sender, "Content": "hi"})) == ["Message.Sender"]
    assert errors(rule(Message={"Sender": "S" * 20, "Content": "hi"})) == []
    template = {"Sender": sender, "TemplateName": "disk_full"}
    assert "Message.Sender" not in errors(rule(Message=template))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"Match": {"Condition": "abs(data.essentials.severity) > `1`"}}, "Match.Condition"),
        (
            {
                "Recipients": {
                    "FromEvent": "abs(data.essentials.severity)",
                    "AllowedCountryCodes": [358],
                }
            },
            "Recipients.FromEvent",
        ),
    ],
)
def test_a_condition_or_from_event_that_fails_on_the_sample_event_is_refused(
    changes: dict[str, Any], field: str
) -> None:
    """It would fail on every such event (abs() of a text)."""
    assert errors(rule(SampleEvent=ALERT, **changes)) == [field]
    assert errors(rule(**changes)) == []  # without a sample, events will tell


def test_the_subject_glob_ignores_letter_case_as_azure_resource_ids_do() -> None:
    event = parse_object(ALERT)  # .../resourcegroups/ops-rg/providers/microsoft.compute/...
    glob = Rule.model_validate(rule(Match={"Subject": "*/resourceGroups/OPS-rg/*/WEB-01"}))
    assert glob.matches(event, event.document())


def test_a_source_that_is_an_azure_resource_id_ignores_letter_case_any_other_does_not() -> None:
    """Subject ignored letter case, as Azure resource ids do, while Source, the same kind of id
    for a system topic, was compared exactly."""
    topic = "/subscriptions/0/resourceGroups/Media-RG/providers/Microsoft.Storage/storageAccounts/m"
    grid = {"id": "1", "subject": "x", "eventType": "t", "eventTime": "2024-05-01T12:00:00Z",
            "data": {}, "dataVersion": "", "topic": topic.lower()}  # fmt: skip
    for source, wanted, matches in [
        (topic.lower(), topic, True),
        ("urn:contoso:Orders", "urn:contoso:orders", False),
        ("urn:contoso:orders", "urn:contoso:orders", True),
    ]:
        event = parse_object({**grid, "topic": source})
        found = Rule.model_validate(rule(Match={"Source": wanted})).matches(event, {})
        assert found is matches, (source, wanted)


def test_matching_uses_type_prefix_source_subject_glob_and_the_condition() -> None:
    event = parse_object(ALERT)
    doc = event.document()
    match = Rule.model_validate(
        rule(
            Match={
                "EventTypePrefix": "Microsoft.AlertsManagement.",
                "Subject": "*/virtualmachines/web-*",
                "Condition": "data.essentials.severity == 'Sev1'",
            }
        )
    )
    assert match.matches(event, doc)
    for other in (
        {"Condition": "data.essentials.severity == 'Sev4'"},
        {"Subject": "*/virtualmachines/db-*"},
        {"Source": "/elsewhere"},
        {"EventType": "Microsoft.AlertsManagement.Alert"},
    ):
        assert not Rule.model_validate(rule(Match=other)).matches(event, doc)
    assert not Rule.model_validate(rule(Enabled=False)).matches(event, doc)


def test_a_missing_placeholder_renders_empty_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    doc = parse_object(ALERT).document()
    with caplog.at_level(logging.WARNING, "shared.notify"):
        text = render(
            "$(data.essentials.alertRule): "
            "$(data.alertContext.condition.allOf[0].metricValue) [$(data.nope)]",
            doc,
            rule_id="cpu",
            event_id="e",
        )
    assert text == "web-01-cpu-high: 97.25 []"
    assert "data.nope" in caplog.text


@pytest.mark.parametrize(
    "condition",
    ["!" * 999 + "a", "[" * 499 + "a" + "]" * 499, "a" + "|b" * 499, "a" + "[]" * 499],
)
def test_a_condition_nested_deeper_than_python_follows_is_refused_when_saved(
    condition: str,
) -> None:
    """The JMESPath parser and its interpreter recurse per level: such a rule was a 500 when
    saved, or, saved, made every event fail (a 500, a retry, a poisoned queue message)."""
    assert errors(rule(Match={"EventType": "t", "Condition": condition})) == ["Match.Condition"]


def test_a_stored_condition_too_deep_to_apply_matches_nothing_rather_than_fail() -> None:
    from shared.notify._rules import search

    assert search("a" + "|b" * 499, {"a": 1}) is None


DOUBLINGS = 45  # 791 characters; each doubles the work


@pytest.mark.parametrize(
    ("field", "expression"),
    [
        ("Match.Condition", "'a'" + " | join('', [@, @])" * DOUBLINGS + " | length(@) > `0`"),
        ("Match.Condition", "@" + " | [@, @]" * DOUBLINGS + " | to_string(@) == ''"),
        ("Recipients.FromEvent", "@" + " | [@, @]" * DOUBLINGS + " | @" + " | []" * DOUBLINGS),
    ],
)
def test_an_expression_whose_work_doubles_with_each_step_is_refused_when_saved(
    field: str, expression: str
) -> None:
    """Found by an attacker's look: saving the first rule took all of the worker's memory
    (about 23 GB before the kernel killed it), ending every function of the process."""
    changes: dict[str, Any] = {"Match": {"EventType": "t"}}
    if field == "Match.Condition":
        changes["Match"]["Condition"] = expression
    else:
        changes["Recipients"] = {"FromEvent": expression, "AllowedCountryCodes": [358]}
    found = rule_errors(Rule.model_validate(rule(**changes)))
    assert [f for f, _ in found] == [field]
    assert "more work than a rule may" in found[0][1]


def test_an_expression_whose_work_grows_with_the_event_fails_on_it_and_stays_bounded() -> None:
    """One that does nothing on the empty document a rule is checked against when saved, and
    doubles a string of the event with each step."""
    from shared.notify._rules import ExpressionFailed, evaluate

    expression = "data.s" + " | join('', [@, @])" * DOUBLINGS
    assert errors(rule(Match={"EventType": "t", "Condition": expression})) == []
    with pytest.raises(ExpressionFailed, match="more work than a rule may"):
        evaluate(expression, {"data": {"s": "x" * 100}})
    ordinary = "length(data.items[?price > `10`].name | join(',', @))"
    items = [{"price": i, "name": f"n{i}"} for i in range(5000)]
    assert evaluate(ordinary, {"data": {"items": items}}) == len(
        ",".join(f"n{i}" for i in range(11, 5000))
    )  # an ordinary rule on a large event is well within its budget


def test_a_placeholder_whose_value_doubles_with_each_step_is_refused_when_saved() -> None:
    """Found in review: a bare [@, @] is no function and no comparison, so 40 of them cost
    120 steps, and rendering the value wrote out 2**40 leaves. What an expression finds is
    paid for too."""
    content = "disk $(@" + " | [@, @]" * 40 + ")"
    found = rule_errors(Rule.model_validate(rule(Message={"Sender": "Ops", "Content": content})))
    assert [f for f, _ in found] == ["Message.Content"]


def test_join_pays_for_what_it_makes_before_making_it() -> None:
    """Found in review: a separator of s characters between n items makes s*n characters,
    where s + n had been paid for: 2 GB held before the budget said no."""
    import tracemalloc

    from shared.notify._rules import ExpressionFailed, evaluate

    document = {"data": {"s": "x" * 20_000, "l": [""] * 10_000}}  # 200 million characters
    tracemalloc.start()
    try:
        with pytest.raises(ExpressionFailed, match="more work than a rule may"):
            evaluate("join(data.s, data.l) == ''", document)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000


def test_one_budget_serves_every_expression_of_a_rule_for_an_event() -> None:
    """Found in review: 300 placeholders each just within a budget of its own took 20 s per
    save and per send."""
    from shared.notify._budget import BASE_UNITS, OverBudget, allowance, one_budget
    from shared.notify._budget import search_within_budget as apply
    from shared.notify._rules import compile_expression

    heavy = compile_expression("join('', [@, @, @, @, @, @, @, @, @, @])")  # 10 x the text
    text = "x" * (BASE_UNITS // 30)  # each application: about a third of the budget
    apply(heavy, text)  # alone: within its own budget
    with one_budget(allowance(text)), pytest.raises(OverBudget):  # noqa: PT012
        for _ in range(4):
            apply(heavy, text)


TEN = "[" + ", ".join(["@"] * 10) + "]"


@pytest.mark.parametrize(
    "expression",
    [
        # Found in a second review: a flatten made 10**10 references before paying for them.
        "`[0,0,0,0,0,0,0,0,0,0]`" + f" | {TEN}[]" * 4 + f" | {TEN}" * 4 + " | @[][][][]",
        # ... and a number was one unit however long: 393,216 copies of 882 digits rendered.
        "`" + "9" * 800 + "`" + " | [@,@,@,@,@,@,@,@]" * 5 + f" | {TEN}",
    ],
)
def test_what_a_flatten_makes_and_how_long_a_number_is_are_paid_for(expression: str) -> None:
    import tracemalloc

    from shared.notify._rules import ExpressionFailed, evaluate

    assert errors(rule(Match={"EventType": "t", "Condition": expression})) == ["Match.Condition"]

    tracemalloc.start()
    try:
        with pytest.raises(ExpressionFailed, match="more work than a rule may"):
            evaluate(f"data && ({expression})", {"data": {"pad": "x" * 100_000}})
        assert tracemalloc.get_traced_memory()[1] < 200_000_000
    finally:
        tracemalloc.stop()


def test_a_placeholder_never_renders_a_lone_surrogate_or_an_integer_python_will_not_write() -> None:
    """Found in a second review: a JSON literal's "\ud800" made every matching event a 500
    (the queue message could not be written); sum() of two 4,300-digit numbers raised too."""
    literal = 'disk $(`"\ud800"`) $(sum(data.n))!'
    big = int("9" * 4300)
    text = render(literal, {"data": {"n": [big, big]}}, rule_id="r", event_id="e")
    assert text == "disk \ufffd !"


def test_a_text_is_read_past_ten_unclosed_placeholders_at_most() -> None:
    """Found in a second review: each $( nothing closed was looked for to the end, 380 texts
    of 498 took 8.9 s and answered 189,240 errors. A third: reading none past the first left
    the placeholders after it unrendered in rules the first release stored."""
    found = rule_errors(Rule.model_validate(rule(Message={"Sender": "Ops", "Content": "$(" * 998})))
    assert [why for _, why in found] == [
        f"The $( at character {2 * i + 1} has no ) closing it (text: write $ ( )."
        for i in range(10)
    ]
    stored = "Balance low :-$( on $(data.name)"  # (saved by ec7daff, before the check)
    rendered = render(stored, {"data": {"name": "web-1"}}, rule_id="r", event_id="e")
    assert rendered == "Balance low :-$( on web-1"
    params = {"TemplateName": "t", "BodyParameters": ["x"] * 101}
    assert errors(rule(Message=params)) == ["Message.BodyParameters"]


@pytest.mark.parametrize("text", ["Ошибка сервера " * 4000, "🔥 burning " * 4000])
def test_an_ordinary_expression_on_a_large_event_of_any_script_is_within_its_budget(
    text: str,
) -> None:
    """Found in review: to_string escapes each non-ASCII character to six or twelve, which the
    budget counted against an event measured in characters: Cyrillic from 22,223 characters
    on, emoji from 9,524, failed."""
    from shared.notify._rules import evaluate

    document = {"data": {"message": text, "rows": [[text[:40]] * 6] * 2000}}
    condition = "contains(to_string(data), 'ERROR') || contains(to_string(data), 'FATAL')"
    assert evaluate(condition, document) is False


@pytest.mark.parametrize("condition", ["'97' > `90`", '`"b"` >= `2`'])
def test_a_comparison_of_literals_python_cannot_make_is_a_400_not_a_500(condition: str) -> None:
    """Found in review: it raised a plain TypeError out of the save check."""
    found = rule_errors(Rule.model_validate(rule(Match={"EventType": "t", "Condition": condition})))
    assert [f for f, _ in found] == ["Match.Condition"]
    assert "cannot compare or combine" in found[0][1]


@pytest.mark.parametrize("condition", ["floor(`1e999`) > `1`", "floor(`NaN`) > `1`"])
def test_an_expression_on_a_number_no_float_holds_is_a_400_field_not_a_500(
    condition: str,
) -> None:
    assert errors(rule(Match={"EventType": "t", "Condition": condition})) == ["Match.Condition"]


def test_a_value_never_makes_a_placeholder_smartdialog_would_blank() -> None:
    """SmartDialog fills $(word) from a send's Personalization, which rule-made sends have
    none of: "Disk $(C) full" from an event arrived as "Disk  full". The rule's own text is
    kept; what a value holds, or makes with what is next to it, becomes "$ (" instead."""
    from shared.sms import personalize

    doc = {"data": {"disk": "$(C)", "cost": "US$", "unit": "(EUR)", "note": "a$(b)$(c)"}}
    text = render(
        "Disk $(data.disk) full; $(data.cost)(net) $$(data.unit) $$(data.nope)(x) $(data.note)",
        doc,
        rule_id="r",
        event_id="e",
    )
    assert text == "Disk $ (C) full; US$ (net) $ (EUR) $ (x) a$ (b)$ (c)"
    assert personalize(text, None) == text


def test_placeholders_nest_parentheses_and_quote_them_to_any_depth() -> None:
    """One level of parentheses was all a placeholder took: $(to_string(length(data.items)))
    went upstream as its own text, and the rule saved, its SampleEvent notwithstanding."""
    doc = {"data": {"items": [1, 2, 3], "tags": ["ab", "b"], "s": "x)y", "q": {"a)b": "k"}}}
    text = (
        "$(to_string(length(data.items))) $(join(', ', data.tags[?starts_with(@, 'a')]))"
        " $(data.s || ')') $(data.q.\"a)b\") $(`\")\"`) $('it\\'s)')"
    )
    assert render(text, doc, rule_id="r", event_id="e") == "3 ab x)y k ) it's)"
    sample = {"specversion": "1.0", "id": "1", "source": "s", "type": "t", "data": doc["data"]}
    nested = {"Sender": "Ops", "Content": "$(to_string(length(data.nope)))"}
    assert errors(rule(SampleEvent=sample, Message=nested)) == ["Message.Content"]
    assert errors(rule(SampleEvent=sample, Message={"Sender": "Ops", "Content": text})) == []


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"Sender": "Ops", "Content": "n=$(length(data.items)"}, "Message.Content"),
        ({"Sender": "Ops", "Content": "$('x) and $(data.s)"}, "Message.Content"),
        ({"TemplateName": "t", "BodyParameters": ["ok", "$(("]}, "Message.BodyParameters[1]"),
    ],
)
def test_a_placeholder_nothing_closes_is_refused_when_saved(
    message: dict[str, Any], field: str
) -> None:
    """It would go upstream as text."""
    found = rule_errors(Rule.model_validate(rule(Message=message)))
    assert [name for name, _ in found] == [field], found
    assert "has no ) closing it" in found[0][1]


def test_values_over_the_limit_are_cut_longest_first_each_ending_with_the_marker() -> None:
    """The short values stay whole, the long ones share what is left; a seam's "$ (" space
    counts too, so the whole is never over the limit."""
    doc = {"data": {"id": "vm-1", "a": "a" * 500, "b": "(" + "b" * 900}}
    text = "Alert $(data.id): $(data.a) $$(data.b)"
    fits = render(text, doc, rule_id="r", event_id="e", limit=2000)
    assert fits == f"Alert vm-1: {'a' * 500} $ ({'b' * 900}"
    cut = render(text, doc, rule_id="r", event_id="e", limit=100)
    assert cut == "Alert vm-1: " + "a" * 39 + "... $ (" + "b" * 38 + "..."
    assert len(cut) == 99  # each cut value 42 long: 43 would be 101
