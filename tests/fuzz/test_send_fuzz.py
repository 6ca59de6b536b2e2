"""The send actions fuzzed past validation: POST /messages, /messages/bulk and /whatsapp/messages
with sends shaped like valid ones (real phone numbers, the sandbox's magic recipients, one number
written twice in two forms, hostile but legal texts and personalization, idempotency keys and
RequestIds replayed, cancels), and a few deliberately broken ones.

Asserted: never a 5xx; a broken send is a 400 naming the broken field and changes nothing (its
recipients never reach the upstream); a replay answers the first send's id; most valid-shaped
sends are accepted; and over everything accepted, :func:`tests.invariants.check_invariants`:
each ends sent, failed or cancelled with its event, and no recipient is sent twice.

Derandomized (the same examples every run). ``FUZZ_EXAMPLES`` (default 8) scales it: this test
runs ``4 * FUZZ_EXAMPLES`` sends, so ``FUZZ_EXAMPLES=500`` is a deep local run.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.names import EVENTS_QUEUE, OUTBOUND_DEAD_LETTER_QUEUE, OUTBOUND_QUEUE, poison_queue
from tests.fuzz.conftest import (
    EXAMPLES,
    FuzzStack,
    deep_settings,
    field_errors,
    final_event_subjects,
)
from tests.invariants import QueueDrain, check_invariants

SENDS = 4 * EXAMPLES
#: How long everything accepted may take to end (the magic recipients' retries included).
SETTLE_SECONDS = 30.0
#: The sandbox's magic recipients (docs/sandbox.md): delivered, rejected, undeliverable,
#: temporary failure, 429, 500, slow, refused naming nobody.
MAGIC = [f"+35840000000{n}" for n in range(1, 9)]

_numbers = itertools.count(1)


def _fresh() -> str:
    """A number no other example uses (Finnish mobile, region FI)."""
    return f"4571{next(_numbers):05d}"


# --- strategies -------------------------------------------------------------------------------

legal_texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40
).filter(lambda s: s.strip())
hostile_texts = st.one_of(
    legal_texts,
    st.sampled_from(
        ["$(name)", "$(", "$()", "$(name", "\ufffe\uffff", "\U0001f600" * 10, "a" * 1600,
         "€" * 300, "<![CDATA[", "&amp;", "line\r\nbreak", "ä" * 161, "Hi $(name)"]
    ),
)  # fmt: skip
personal_values = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_texts,
)


def chance(k: int) -> st.SearchStrategy[bool]:
    """True about once in ``k`` draws; False is the simplest value, the one Hypothesis favours."""
    return st.sampled_from([False] * (k - 1) + [True])


@st.composite
def addresses(draw: st.DrawFn) -> tuple[str, str | None]:
    """(address as written, the fresh number in it or None for a magic one)."""
    kind = draw(st.sampled_from(["e164", "e164", "e164", "magic", "local"]))
    if kind == "magic":
        return draw(st.sampled_from(MAGIC)), None
    number = _fresh()
    if kind == "local":
        form = draw(st.sampled_from(["0{n}", "0{a} {b} {c}", "00358{n}"]))
        return form.format(n=number, a=number[:2], b=number[2:5], c=number[5:]), number
    return f"+358{number}", number


@dataclass
class Send:
    route: str
    body: dict[str, Any]
    headers: dict[str, str]
    fresh: list[str]  # the fresh numbers it names
    broken: str | None = None  # the field a mutation broke
    cancel: bool = False
    replay: bool = False


#: (field, route filter, how to break a body) — each must be a 400 naming ``field``.
MUTATIONS: list[tuple[str, tuple[str, ...], Any]] = [
    ("Sender", ("messages", "messages/bulk"), lambda b: b.update(Sender="")),
    ("Content", ("messages", "messages/bulk"), lambda b: b.update(Content="   ")),
    ("Recipients[0].Address", ("messages", "whatsapp/messages"),
     lambda b: b["Recipients"][0].update(Address="not a number")),
    ("SendDateTime", ("messages", "messages/bulk"), lambda b: b.update(SendDateTime="tomorrow")),
    ("TemplateName", ("whatsapp/messages",), lambda b: b.update(TemplateName="")),
    ("Bogus", ("messages", "messages/bulk", "whatsapp/messages"), lambda b: b.update(Bogus=1)),
]  # fmt: skip


@st.composite
def sends(draw: st.DrawFn, receiver: str) -> Send:
    route = draw(st.sampled_from(["messages", "messages", "messages/bulk", "whatsapp/messages"]))
    recipients: list[dict[str, Any]] = []
    fresh: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        address, number = draw(addresses())
        fresh += [number] if number else []
        recipient: dict[str, Any] = {"Address": address}
        if route != "whatsapp/messages" and draw(st.booleans()):
            keys = st.one_of(st.just("name"), st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True))
            recipient["Personalization"] = draw(st.dictionaries(keys, personal_values, max_size=3))
        recipients.append(recipient)
    if draw(chance(4)):  # the first number again, in another form
        first = recipients[0]["Address"]
        recipients.append({"Address": "0" + first[4:] if first.startswith("+358") else first})
    body: dict[str, Any]
    if route == "whatsapp/messages":
        body = {
            "TemplateName": "welcome",
            "BodyParameters": draw(st.lists(legal_texts, max_size=2)),
            "Recipients": recipients,
        }
    else:
        body = {
            "Sender": draw(
                st.one_of(
                    st.just("Fuzz"), st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,10}", fullmatch=True)
                )
            ),
            "Content": draw(hostile_texts),
            "Recipients": recipients,
        }
        if route == "messages" and draw(chance(6)):
            body["Protocol"] = "WhatsApp"
            body["AttachmentUri"] = f"{receiver}/fuzz"
        if draw(chance(5)):
            body["Transactional"] = draw(st.booleans())
        if draw(chance(5)):
            body["CustomerData"] = draw(legal_texts)
    if draw(chance(5)):
        body["DlrUrl"] = f"{receiver}/dlr"
    headers: dict[str, str] = {}
    keyed = draw(st.sampled_from(["none", "none", "header", "request-id"]))
    if keyed == "header":
        headers["Idempotency-Key"] = f"fuzz-key-{next(_numbers)}"
    elif keyed == "request-id" and route != "messages/bulk":
        body["RequestId"] = f"fuzz-req-{next(_numbers)}"
    send = Send(route, body, headers, fresh)
    if draw(chance(5)):
        name, _, mutate = draw(st.sampled_from([m for m in MUTATIONS if route in m[1]]))
        mutate(body)
        send.broken = name
    send.cancel = route != "messages/bulk" and draw(chance(6))
    send.replay = bool(headers or "RequestId" in body) and draw(st.booleans())
    return send


# --- the test ---------------------------------------------------------------------------------


@dataclass
class Tally:
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    accepted: list[str] = field(default_factory=list)  # message ids, bulk members included
    refused_numbers: set[str] = field(default_factory=set)
    valid_shaped: int = 0
    valid_accepted: int = 0
    refused_fields: Counter[str] = field(default_factory=Counter)  # of valid-shaped sends


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_every_accepted_send_ends_once_with_its_event(fuzz_stack: FuzzStack) -> None:
    http, tally = fuzz_stack.http, Tally()

    @deep_settings(SENDS)
    @given(send=sends(fuzz_stack.receiver_url))
    def run(send: Send) -> None:
        url = f"{fuzz_stack.api}/{send.route}"
        answer = http.post(url, json=send.body, headers=send.headers)
        what = f"{send.route} {send.headers} {send.body!r:.1500}: {answer.status_code} "
        what += answer.text[:500]
        tally.answers[(send.route, answer.status_code)] += 1
        assert answer.status_code < 500, what
        tally.valid_shaped += send.broken is None
        if answer.status_code != 202:
            assert answer.status_code in (400, 422), what
            fields = field_errors(answer)
            assert fields, f"a refusal naming no field: {what}"
            if send.broken is not None:
                assert any(f.startswith(send.broken) for f in fields), what
            else:
                tally.refused_fields.update(fields)
            tally.refused_numbers.update(send.fresh)
            return
        assert send.broken is None, f"a broken send ({send.broken}) accepted: {what}"
        tally.valid_accepted += 1
        doc = answer.json()
        if send.route == "messages/bulk":
            refused = {row["row"] for row in doc.get("Refused") or []}
            members = [f"{doc['Id']}.{row:05d}" for row in range(1, doc["Total"] + 1)]
            tally.accepted += [m for row, m in enumerate(members, 1) if row not in refused]
        else:
            tally.accepted.append(doc["Id"])
        if send.replay:
            again = http.post(url, json=send.body, headers=send.headers)
            assert again.status_code in (200, 202), f"replay: {again.text:.300} of {what}"
            replayed = again.json()  # a sent WhatsApp send answers upstream's camelCase
            assert (replayed.get("Id") or replayed.get("id")) == doc["Id"], f"replay of {what}"
        if send.cancel:
            cancel = http.delete(f"{fuzz_stack.api}/messages/{doc['Id']}")
            assert cancel.status_code in (200, 404, 409), f"cancel: {cancel.text:.300}"

    run()
    assert tally.valid_accepted >= tally.valid_shaped * 0.6, tally.answers

    events = QueueDrain(fuzz_stack.storage, EVENTS_QUEUE)
    deadline = time.monotonic() + SETTLE_SECONDS
    while not set(tally.accepted) <= final_event_subjects(events.json()):
        if time.monotonic() > deadline:
            break
        time.sleep(0.3)
    upstream = http.get(f"{fuzz_stack.sandbox.url}/sandbox/messages").json()
    report = check_invariants(
        fuzz_stack.storage,
        tally.accepted,
        events=events.json(),
        upstream=upstream,
        dead_letters=QueueDrain(fuzz_stack.storage, OUTBOUND_DEAD_LETTER_QUEUE).json(),
        poison=QueueDrain(fuzz_stack.storage, poison_queue(OUTBOUND_QUEUE)).drain(),
    )
    print(
        f"\nsend fuzz: {dict(tally.answers)}; valid-shaped refused over "
        f"{dict(tally.refused_fields)}; {report.summary()}"
    )
    report.assert_holds()
    sent_to = {str(r.get("address"))[-9:] for m in upstream for r in m.get("recipients") or []}
    assert not tally.refused_numbers & sent_to, "a refused send reached the upstream"
