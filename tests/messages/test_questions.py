"""Questions (Send a message and wait for a reply): the transition table, answer matching, and
the store's one-open-question and ends-once rules, against Azurite."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import random

import pytest

from shared.messages import (
    ANSWER_GRACE,
    QUESTION_TRANSITIONS,
    IllegalTransition,
    MessageStatus,
    QuestionConflict,
    QuestionRecord,
    QuestionStatus,
    QuestionStore,
    check_question_transition,
    match_answer,
    new_question_id,
    normalize_answer,
    send_ended_unsent,
    send_may_have_gone_out,
)
from tests.outbound.conftest import Outbound
from tests.test_invariants import _record as message_record

Q = QuestionStatus
SERVICE = "s-1001-twoway"


@pytest.mark.parametrize(("before", "after"), list(itertools.product(Q, Q)))
def test_an_open_question_ends_once_and_an_ended_one_never_changes(
    before: QuestionStatus, after: QuestionStatus
) -> None:
    if before is after or (before is Q.OPEN and after is not Q.OPEN):
        check_question_transition(before, after)
    else:
        with pytest.raises(IllegalTransition):
            check_question_transition(before, after)
    assert all(not QUESTION_TRANSITIONS[s] for s in Q if s.is_final)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("yes", "Yes"),
        ("  YES\n", "Yes"),
        ("Kyllä", "Kylla"),
        ("KYLLA", "Kylla"),
        ("ﬁne", "Fine"),  # a compatibility ligature (NFKD)
        ("no", "No"),
        ("yes please", None),
        ("", None),
    ],
)
def test_answers_match_without_case_accents_or_surrounding_spaces(
    reply: str, expected: str | None
) -> None:
    matched, option = match_answer(["Yes", "No", "Kylla", "Fine"], reply)
    assert option == expected
    assert matched is (expected is not None)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Yes.", "Yes"),
        ("Yes!", "Yes"),
        ('"Yes"', "Yes"),
        ("«Kyllä»", "Kylla"),
        ("Yes\u200b", "Yes"),  # a zero-width space (category Cf) at the end
        ("\ufeffNo", "No"),
        ("1", "1."),  # an option that ends in punctuation matches without it
        ("1.", "1."),  # and itself
        ("?", "?"),  # an option of punctuation alone is compared as written
        ("!", None),
        ("Yes, please", None),
    ],
)
def test_answers_match_without_punctuation_or_format_characters_at_the_ends(
    reply: str, expected: str | None
) -> None:
    """As opt-out keywords are compared (shared.inbound's classify_keyword): "Yes." answers."""
    matched, option = match_answer(["Yes", "No", "Kylla", "1.", "?"], reply)
    assert (matched, option) == (expected is not None, expected)


@pytest.mark.parametrize(
    ("options", "reply", "expected"),
    [
        (["#1", "1"], "1", "1"),  # was "#1": the first listed of those alike once trimmed
        (["-1", "0", "1"], "1", "1"),  # was "-1"
        (["-1", "0", "1"], "-1", "-1"),
        (["Yes", "Yes!"], "Yes!", "Yes!"),
        (["Yes", "Yes!"], " yes ", "Yes"),  # as written but for case and blanks
        (["Yes", "Yes!"], "Yes.", None),  # both, once trimmed: which one is not known
        (["#1", "1"], "1.", None),
    ],
)
def test_an_option_the_reply_is_as_written_wins_and_one_alike_with_another_matches_none(
    options: list[str], reply: str, expected: str | None
) -> None:
    assert match_answer(options, reply) == (expected is not None, expected)


@pytest.mark.parametrize(
    ("options", "reply", "expected"),
    [
        (["Yes", "yes", "YES"], "Yes!", "Yes"),
        (["Yes", "yes", "YES"], "yes.", "Yes"),
        (["YES", "Yes"], "yes!", "YES"),
        (["Kyllä", "Kylla"], "Kyllä!", "Kyllä"),
        (["Kylla", "Kyllä", "Kylla!"], "kyllä.", None),  # "Kylla!" is another answer
    ],
)
def test_one_answer_listed_in_several_spellings_matches_its_first_once_trimmed(
    options: list[str], reply: str, expected: str | None
) -> None:
    """Options the same as written (but for case and accents) are one answer, not several the
    reply could be: they re-prompted ("Yes." of "Yes", "yes" and "YES" matched none)."""
    assert match_answer(options, reply) == (expected is not None, expected)


ENGLAND = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
SCOTLAND = "\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"


@pytest.mark.parametrize(
    ("options", "reply", "expected"),
    [
        (["\u2764\ufe0f", "\U0001f44e"], "\u2764", "\u2764\ufe0f"),  # the emoji, text form
        (["\u2764", "\U0001f44e"], "\u2764\ufe0f", "\u2764"),  # the emoji, emoji form
        (["Yes", "No"], "Yes\ufe0f", "Yes"),
        (["Yes", "No"], "Y\U000e0100es", "Yes"),  # a supplement selector
        (["\u2764\ufe0f", "\u2764"], "\u2764", "\u2764\ufe0f"),  # one answer, two spellings
        # Tags and joiners are no variation selectors: the flags of England and Scotland.
        ([ENGLAND, SCOTLAND], SCOTLAND, SCOTLAND),
        (["\U0001f468\u200d\U0001f373", "\U0001f468\U0001f373"], "\U0001f468\U0001f373",
         "\U0001f468\U0001f373"),
    ],
)  # fmt: skip
def test_variation_selectors_are_ignored_when_matching(
    options: list[str], reply: str, expected: str | None
) -> None:
    """A keyboard adds U+FE0F to an emoji or not: option '\u2764\ufe0f' matched no '\u2764'."""
    assert match_answer(options, reply) == (expected is not None, expected)


def test_without_options_any_non_empty_reply_answers() -> None:
    assert match_answer([], " anything ") == (True, None)
    assert match_answer([], "   ") == (False, None)
    assert normalize_answer("  Élan   VITAL ") == "elan vital"


def _question(number: str, **changes: object) -> QuestionRecord:
    now = dt.datetime.now(dt.UTC)
    record = QuestionRecord(
        question_id=new_question_id(SERVICE, number),
        service_id=SERVICE,
        address=number,
        message_id="m-" + number[1:],
        created_at=now,
        expires_at=now + dt.timedelta(hours=1),
        options=("Yes", "No"),
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def _number() -> str:
    return f"+35840{random.randint(1_000_000, 9_999_999)}"


def test_one_open_question_per_service_and_number_and_replacing_ends_the_old_one(
    outbound: Outbound,
) -> None:
    store = QuestionStore.from_settings()
    number = _number()
    first = store.create(_question(number))
    with pytest.raises(QuestionConflict) as conflict:
        store.create(_question(number))
    assert conflict.value.open_question.question_id == first.question_id

    opened = store.open_question(SERVICE, number)
    assert opened is not None
    second = store.create(_question(number), replacing=opened)
    old = store.get(first.question_id)
    assert old is not None
    assert old.status is Q.REPLACED
    assert old.replaced_by == second.question_id
    now_open = store.open_question(SERVICE, number)
    assert now_open is not None
    assert now_open.question_id == second.question_id
    assert store.open_question(SERVICE, _number()) is None


def test_replacing_a_question_that_ended_meanwhile_opens_the_new_one(outbound: Outbound) -> None:
    """The question to replace was answered (or timed out) between its read and the replace:
    the new one simply opens (it used to raise the failed transaction: a 500)."""
    store = QuestionStore.from_settings()
    number = _number()
    store.create(_question(number))
    opened = store.open_question(SERVICE, number)
    assert opened is not None
    at = dt.datetime.now(dt.UTC)
    assert store.answer(opened, reply="yes", matched_option="Yes", replied_at=at, reply_key="k")

    second = store.create(_question(number), replacing=opened)

    now_open = store.open_question(SERVICE, number)
    assert now_open is not None
    assert now_open.question_id == second.question_id
    old = store.get(opened.question_id)
    assert old is not None
    assert old.status is Q.ANSWERED  # as it ended, not replaced


def test_two_writers_end_a_question_once(outbound: Outbound) -> None:
    store = QuestionStore.from_settings()
    number = _number()
    store.create(_question(number))
    seen_by_a = store.open_question(SERVICE, number)
    seen_by_b = store.open_question(SERVICE, number)
    assert seen_by_a is not None
    assert seen_by_b is not None
    at = dt.datetime.now(dt.UTC)

    answered = store.answer(
        seen_by_a, reply="yes", matched_option="Yes", replied_at=at, reply_key="k1"
    )
    late = store.answer(seen_by_b, reply="no", matched_option="No", replied_at=at, reply_key="k2")

    assert answered is not None
    assert late is None  # its ETag was stale and the question is no longer open
    final = store.get(seen_by_a.question_id)
    assert final is not None
    assert (final.status, final.reply, final.reply_key) == (Q.ANSWERED, "yes", "k1")
    assert store.open_question(SERVICE, number) is None
    # Ending it again (a timeout noticed late) leaves it as it is.
    again = store.end(final.question_id, Q.TIMED_OUT, at=at)
    assert again is not None
    assert again.status is Q.ANSWERED


def test_a_reply_longer_than_a_table_string_holds_answers_with_its_beginning(
    outbound: Outbound,
) -> None:
    """20,000 emoji are 40,000 UTF-16 units, past a Table string's 32K: the question keeps the
    reply's first REPLY_CHARS characters (storing it whole failed the processor until poison)."""
    from shared.messages._questions import REPLY_CHARS

    store = QuestionStore.from_settings()
    number = _number()
    store.create(_question(number, options=()))
    opened = store.open_question(SERVICE, number)
    assert opened is not None
    reply = "👍" * 20_000
    at = dt.datetime.now(dt.UTC)

    done = store.answer(opened, reply=reply, matched_option=None, replied_at=at, reply_key="k")

    assert done is not None
    stored = store.get(opened.question_id)
    assert stored is not None
    assert stored.reply == reply[:REPLY_CHARS]


def test_marking_re_prompted_keeps_the_question_open(outbound: Outbound) -> None:
    store = QuestionStore.from_settings()
    number = _number()
    store.create(_question(number, reprompt="Reply YES or NO"))
    current = store.open_question(SERVICE, number)
    assert current is not None
    assert store.mark_reprompted(current) is not None
    after = store.open_question(SERVICE, number)
    assert after is not None
    assert after.reprompted
    assert after.status is Q.OPEN


def test_the_answer_documentation_names_every_way_a_question_ends() -> None:
    """The 200's Status (connector schema): failed too, which a re-driven send's question has."""
    from shared.conversations._inputs import QuestionAnswerDoc

    described = QuestionAnswerDoc.model_json_schema()["properties"]["Status"]["description"]
    named = set(described.replace(",", " ").replace(".", " ").split())
    assert {str(s) for s in QuestionStatus if s.is_final} <= named


@pytest.mark.parametrize(
    ("status", "maybe_sent", "gone_out"),
    [
        (MessageStatus.ACCEPTED, False, False),
        (MessageStatus.QUEUED, False, False),  # never tried (the first question, held)
        (MessageStatus.QUEUED, True, True),  # an attempt that may have reached upstream
        (MessageStatus.SENDING, False, True),  # upstream may have it: a reply can overtake
        (MessageStatus.SENT, False, True),
        (MessageStatus.FAILED, True, True),  # outcome-unknown: counts as sent, as queued
        (MessageStatus.FAILED, False, False),  # the question fails: no reply answers it
        (MessageStatus.CANCELLED, False, False),
    ],
)
def test_a_reply_answers_a_question_only_once_its_send_may_have_gone_out(
    status: MessageStatus, maybe_sent: bool, gone_out: bool
) -> None:
    send = message_record("m-1", status, "+358401234567", maybe_sent=maybe_sent)
    question = _question("+358401234567")
    assert send_may_have_gone_out(send) is gone_out
    assert send_ended_unsent(send, question) is (status.is_final and not gone_out)
    assert send_may_have_gone_out(None) is False  # not recorded yet: the sender records first
    assert send_ended_unsent(None, question) is False


def test_a_send_its_questions_timeout_cancelled_did_not_end_it_unsent() -> None:
    """The poll that times a question out cancels its waiting send, then ends the question: two
    writes. A crash, another poll, an ask's 409 check or a reply in between read a cancelled
    send, and the question failed (code cancelled, the send's 410) instead of timing out. A send
    cancelled ANSWER_GRACE or more past the question's ExpiresAt was the timeout's own cancel."""
    question = _question("+358401234567")
    timed_out = question.expires_at + ANSWER_GRACE
    for finished, unsent in ((timed_out - dt.timedelta(seconds=1), True), (timed_out, False)):
        send = message_record(
            "m-1", MessageStatus.CANCELLED, question.address, finished_at=finished
        )
        assert send_ended_unsent(send, question) is unsent, finished
