"""The New Message webhook fuzzed past its token: our registered path and token, payloads shaped
like SmartDialog's (hostile contents, STOP/START words, odd timestamps and attachments, unicode
escaped or not) and some broken in one field, with a New Message subscriber (the loopback
receiver) so the processor and dispatcher run too.

Asserted: never a 5xx; a broken payload is a 400 naming its field and puts no event out; most
valid ones are accepted; every accepted one (``202``, ``id``) gets its event on
``smartdialog-inbound`` (same ``id``); the intake and deliveries queues drain; nothing is poisoned.

Derandomized; ``8 * FUZZ_EXAMPLES`` calls (``FUZZ_EXAMPLES=500`` for a deep local run).
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.names import INBOUND_DELIVERIES_QUEUE, INBOUND_INTAKE_QUEUE, INBOUND_QUEUE
from tests.e2e.conftest import TWO_WAY_SERVICE
from tests.fuzz.conftest import (
    EXAMPLES,
    FuzzStack,
    deep_settings,
    field_errors,
    poison_messages,
    settle,
)
from tests.fuzz.test_callback_fuzz import webhook  # noqa: F401  (the registered webhook)
from tests.invariants import QueueDrain

CALLS = 8 * EXAMPLES
_numbers = itertools.count(1)
SETTLE_SECONDS = 30.0


def chance(k: int) -> st.SearchStrategy[bool]:
    """True about once in ``k`` draws (False is the value Hypothesis favours)."""
    return st.sampled_from([False] * (k - 1) + [True])


texts = st.text(max_size=40)
contents = st.one_of(
    texts,
    st.sampled_from(["STOP", "START", "stop", " Stop ", "LOPETA", "Hello", "", "A" * 2000]),
)
timestamps = st.one_of(
    st.datetimes().map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.sampled_from(["2026-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00", "15.01.2024 10:30"]),
)
attachments = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "name": st.text(max_size=60),
            "mimeType": st.sampled_from(["image/png", "text/plain", ""]),
            "resourceLocation": st.just("https://example.invalid/a.png"),
        },
    ),
    max_size=3,
)
payloads = st.fixed_dictionaries(
    {
        "sender": st.sampled_from(["+358401234567", "+358400000001", "0401234567", "Brand"]),
        "recipient": st.sampled_from(["SmartDialog", "+358409999999"]),
    },
    optional={
        "content": contents,
        "timestamp": timestamps,
        "protocol": st.sampled_from(["SMS", "WhatsApp", ""]),
        "attachments": attachments,
        "messageId": st.uuids().map(str),
    },
)
#: (field, how to break a payload): each must be a 400 naming ``field``.
MUTATIONS: list[tuple[str, Any]] = [
    ("sender", lambda p: p.pop("sender")),
    ("recipient", lambda p: p.update(recipient=["not", "a", "string"])),
    ("sender", lambda p: p.update(sender="x" * 5000)),
    ("protocol", lambda p: p.update(protocol="p" * 300)),
]


@st.composite
def calls(draw: st.DrawFn) -> tuple[dict[str, Any], str | None, bool, bool]:
    """(payload, the field a mutation broke or None, whether to escape non-ASCII, whether to
    call twice as SmartDialog's retry after a lost answer)."""
    payload = draw(payloads)
    broken = None
    if draw(chance(4)):
        broken, mutate = draw(st.sampled_from(MUTATIONS))
        mutate(payload)
    return payload, broken, draw(st.booleans()), draw(chance(5))


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_every_accepted_inbound_message_reaches_its_event(
    fuzz_stack: FuzzStack,
    webhook: tuple[str, dict[str, str]],  # noqa: F811
) -> None:
    path, query = webhook
    subscribe = fuzz_stack.http.post(
        f"{fuzz_stack.api}/inbound/subscriptions/{TWO_WAY_SERVICE}",
        json={"callbackUrl": f"{fuzz_stack.receiver_url}/subscriber"},
    )
    assert subscribe.status_code in (200, 201), subscribe.text
    accepted: set[str] = set()
    refused: set[str] = set()  # the event ids broken payloads would have had
    counts = {"valid": 0, "valid accepted": 0, "broken": 0}
    # A message the processor handles (so the fuzz runs it) has a fresh messageId per run.
    run_id = uuid.uuid4().hex[:8]

    @deep_settings(CALLS)
    @given(call=calls())
    def run(call: tuple[dict[str, Any], str | None, bool, bool]) -> None:
        payload, broken, ascii_only, twice = call
        if "messageId" in payload:
            payload["messageId"] = f"{payload['messageId']}-{run_id}-{next(_numbers)}"
        body = json.dumps(payload, ensure_ascii=ascii_only).encode()

        def post() -> httpx.Response:
            return fuzz_stack.http.post(
                f"{fuzz_stack.host.url}{path}",
                params=query,
                content=body,
                headers={"Content-Type": "application/json"},
            )

        answer = post()
        what = f"{body[:800]!r}: {answer.status_code} {answer.text[:400]}"
        assert answer.status_code < 500, what
        counts["broken" if broken else "valid"] += 1
        if broken is not None:
            assert answer.status_code == 400, what
            assert any(f.startswith(broken) for f in field_errors(answer)), what
            if "messageId" in payload:
                refused.add(f"{TWO_WAY_SERVICE}:{payload['messageId']}")
            return
        if answer.status_code == 202:
            counts["valid accepted"] += 1
            accepted.add(answer.json()["id"])
            if twice and "messageId" in payload:  # the same message, the same id (docs/inbound.md)
                again = post()
                assert again.status_code == 202, f"again: {again.text[:300]} of {what}"
                assert again.json()["id"] == answer.json()["id"], f"again: {again.text} {what}"
        else:
            assert answer.status_code == 400, what
            assert field_errors(answer), what

    run()
    assert counts["valid accepted"] >= 0.8 * counts["valid"], counts

    settle(fuzz_stack.storage, INBOUND_INTAKE_QUEUE, SETTLE_SECONDS)
    settle(fuzz_stack.storage, INBOUND_DELIVERIES_QUEUE, SETTLE_SECONDS)
    events = QueueDrain(fuzz_stack.storage, INBOUND_QUEUE)
    deadline = time.monotonic() + SETTLE_SECONDS
    while missing := accepted - {str(e.get("id")) for e in events.json()}:
        if time.monotonic() > deadline:
            break
        time.sleep(0.3)
    print(f"\nwebhook fuzz: {counts}; {len(accepted)} accepted id(s), {len(missing)} without event")
    assert not missing, f"accepted without an event: {sorted(missing)[:10]}"
    assert not refused & {str(e.get("id")) for e in events.json()}, "a refused payload's event"
    assert poison_messages(fuzz_stack.storage) == {}
