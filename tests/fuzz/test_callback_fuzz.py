"""The routes SmartDialog calls us on, which the connector does not describe: the New Message
webhook (POST) and the delivery-report callback (GET). Hypothesis builds the requests, with the
real token (so the fuzz reaches past authentication) or a broken one, around payloads shaped
like SmartDialog's and anything else. Never a 5xx, never a hang.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from shared.names import INBOUND_DELIVERIES_QUEUE, INBOUND_INTAKE_QUEUE
from tests.e2e.conftest import TWO_WAY_SERVICE, poll
from tests.fuzz.conftest import FuzzBudget, FuzzStack, poison_messages, settle

DELIVERED = "+358400000001"


def fuzz_settings(budget: FuzzBudget, factor: int = 8) -> settings:
    return settings(
        max_examples=budget.examples() * factor,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture(scope="module")
def webhook(fuzz_stack: FuzzStack) -> tuple[str, dict[str, str]]:
    """Our registered webhook URL as SmartDialog has it: (path, query: token and connection)."""
    answer = fuzz_stack.http.post(f"{fuzz_stack.api}/inbound/webhooks/{TWO_WAY_SERVICE}")
    assert answer.status_code in (200, 201), answer.text
    pipelines = fuzz_stack.http.get(f"{fuzz_stack.sandbox.url}/sandbox/pipelines").json()
    urls = [u for u in _strings(pipelines) if "/callbacks/inbound/" in u]
    assert urls, pipelines
    parts = urlsplit(urls[-1])
    return parts.path, dict(parse_qsl(parts.query))


@pytest.fixture(scope="module")
def dlr(fuzz_stack: FuzzStack) -> tuple[str, str]:
    """The delivery-report URL of a message we sent: (path, token)."""
    body = {"Sender": "Sandbox", "Content": "Hi", "Recipients": [{"Address": DELIVERED}]}
    answer = fuzz_stack.http.post(f"{fuzz_stack.api}/messages", json=body)
    assert answer.status_code == 202, answer.text
    message_id = answer.json()["Id"]

    def sent() -> str | None:
        calls = fuzz_stack.http.get(
            f"{fuzz_stack.sandbox.url}/sandbox/requests", params={"operationId": "SendMessage"}
        ).json()
        urls = [c["body"].get("DlrUrl", "") for c in calls if isinstance(c.get("body"), dict)]
        return next((u for u in urls if f"/callbacks/dlr/{message_id}" in u), None)

    parts = urlsplit(poll(sent, what="the send to reach the sandbox"))
    return parts.path, dict(parse_qsl(parts.query))["token"]


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


# --- strategies -------------------------------------------------------------------------------

texts = st.text(max_size=40)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
#: Raw JSON texts json.loads takes but that are hostile downstream.
hostile_json = st.sampled_from(
    [
        b'{"content": "\\ud800"}',
        b'{"content": 1e999}',
        b'{"content": NaN}',
        b'{"timestamp": "9999-99-99"}',
        b'{"attachments": [' * 50 + b"]" * 50 + b"}",
        b'{"attachments": ' + b"9" * 5000 + b"}",
        b"[" * 100_000,
        b'{"sender": {"a": 1}}',
        b'{"attachments": [{"name": "' + b"x" * 5000 + b'"}]}',
        b"\xff\xfe",
        b"",
    ]
)
inbound_payloads = st.fixed_dictionaries(
    {},
    optional={
        "sender": st.one_of(st.just("+358401234567"), json_values),
        "recipient": st.one_of(st.just("SmartDialog"), json_values),
        "content": st.one_of(st.sampled_from(["STOP", "START", "Hello"]), json_values),
        "timestamp": st.one_of(st.just("2026-01-01T00:00:00Z"), json_values),
        "protocol": st.one_of(st.sampled_from(["SMS", "WhatsApp"]), json_values),
        "attachments": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "name": json_values,
                        "mimeType": json_values,
                        "resourceLocation": json_values,
                    },
                ),
                max_size=3,
            ),
            json_values,
        ),
        "messageId": st.one_of(st.uuids().map(str), json_values),
    },
)
bodies = st.one_of(
    inbound_payloads.map(lambda p: json.dumps(p).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    hostile_json,
    st.binary(max_size=200),
)
#: Names SmartDialog (or anyone) might put in a delivery report's query.
report_names = st.one_of(
    st.sampled_from(
        [
            "status",
            "Status",
            "statusCode",
            "dlr",
            "recipient",
            "Recipient",
            "messageId",
            "recipientId",
            "timestamp",
            "Timestamp",
            "error",
            "token",
        ]
    ),
    texts.filter(bool),
)


VALID_INBOUND = json.dumps(
    {"sender": "+358401234567", "recipient": "SmartDialog", "content": "Hello", "protocol": "SMS"}
).encode()
CONTENT_TYPES = ["application/json", "text/plain", "", "application/json; charset=latin-1"]


def _check(answer_status: int, what: str) -> None:
    assert answer_status < 500, what


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_the_inbound_webhook_never_answers_5xx(
    fuzz_stack: FuzzStack, fuzz_budget: FuzzBudget, webhook: tuple[str, dict[str, str]]
) -> None:
    path, query = webhook
    seen: set[int] = set()

    @fuzz_settings(fuzz_budget)
    @given(
        body=bodies,
        service=st.one_of(st.just(None), texts),
        token_kind=st.sampled_from(["real", "missing", "other", "other connection"]),
        content_type=st.sampled_from(CONTENT_TYPES),
    )
    @example(body=VALID_INBOUND, service=None, token_kind="real", content_type="application/json")
    def run(body: bytes, service: str | None, token_kind: str, content_type: str) -> None:
        target = path if service is None else path.rsplit("/", 1)[0] + "/" + quote(service, safe="")
        params = {
            "real": query,
            "missing": {},
            "other": {**query, "token": query["token"][::-1]},
            "other connection": {**query, "connection": "another"},
        }
        headers = {"Content-Type": content_type} if content_type else {}
        answer = fuzz_stack.http.post(
            f"{fuzz_stack.host.url}{target}",
            params=params[token_kind],
            content=body,
            headers=headers,
        )
        _check(answer.status_code, f"POST {target} {body[:200]!r}: {answer.text[:300]}")
        seen.add(answer.status_code)

    run()
    assert {202, 401} <= seen  # past the token check, and stopped at it


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_the_delivery_report_callback_never_answers_5xx(
    fuzz_stack: FuzzStack, fuzz_budget: FuzzBudget, dlr: tuple[str, str]
) -> None:
    path, token = dlr
    seen: set[int] = set()

    @fuzz_settings(fuzz_budget)
    @given(
        query=st.dictionaries(
            report_names,
            st.one_of(
                texts,
                st.sampled_from(
                    ["delivered", "DELIVERED", "failed", "2", "-1", "", "2026-13-45T99:99:99"]
                ),
            ),
            max_size=6,
        ),
        message_id=st.one_of(st.just(None), texts),
        keep_token=st.booleans(),
    )
    @example(query={"status": "delivered"}, message_id=None, keep_token=True)
    def run(query: dict[str, str], message_id: str | None, keep_token: bool) -> None:
        target = (
            path
            if message_id is None
            else path.rsplit("/", 1)[0] + "/" + quote(message_id, safe="")
        )
        if keep_token:
            query = {**query, "token": token}
        answer = fuzz_stack.http.get(f"{fuzz_stack.host.url}{target}", params=query)
        _check(answer.status_code, f"GET {target} {query!r}: {answer.text[:300]}")
        seen.add(answer.status_code)

    run()
    assert {200, 401} <= seen


def test_nothing_the_fuzz_left_behind_ends_on_a_poison_queue(fuzz_stack: FuzzStack) -> None:
    # Runs last in this module: the accepted webhook calls have gone through the processor.
    settle(fuzz_stack.storage, INBOUND_INTAKE_QUEUE)
    settle(fuzz_stack.storage, INBOUND_DELIVERIES_QUEUE)
    assert poison_messages(fuzz_stack.storage) == {}
