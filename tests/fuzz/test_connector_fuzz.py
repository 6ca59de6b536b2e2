"""Schemathesis against the dev host, from the connector's own definition: every operation,
positive (valid by the definition) and negative (invalid) examples, real HTTP. Whatever comes
in, the answer is never a 5xx and never a hang.

Bounded: :data:`~tests.fuzz.conftest.EXAMPLES` examples per operation and mode, derandomized
(the same examples every run), no shrinking, and a time budget for the whole fuzz
(``FUZZ_EXAMPLES`` / ``FUZZ_BUDGET_SECONDS`` widen it for a deeper local run).

The definition cannot say what a phone number or a sender is (Power Platform shows it as is), so
random strings would never get a send past validation. A schema hook (``before_process_path``)
tightens the send operations' schemas to what the app accepts (:data:`SEND_PATHS`: phone numbers,
senders, texts and header values as string formats with strategies of our own, no unknown
fields), so their positive examples reach the send pipeline; negative examples still break them.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode

from shared.names import INBOUND_DELIVERIES_QUEUE, INBOUND_INTAKE_QUEUE, OUTBOUND_QUEUE
from tests.e2e.conftest import CUSTOMER, ONE_WAY_SERVICE, REPO, TWO_WAY_SERVICE
from tests.fuzz.conftest import (
    REQUEST_TIMEOUT,
    FuzzBudget,
    FuzzStack,
    poison_messages,
    settle,
)

SCHEMA = schemathesis.openapi.from_path(REPO / "connector" / "apiDefinition.swagger.json")

# --- the send operations, as the app reads them ------------------------------------------------

_numbers = itertools.count(1)
#: String formats of our own (registered with schemathesis, used only by SEND_PATHS).
FORMATS: dict[str, st.SearchStrategy[str]] = {
    # fresh Finnish mobile numbers in either form, or the sandbox's magic recipients
    "sd-phone": st.one_of(
        st.builds(lambda: f"+3584573{next(_numbers):04d}"),
        st.builds(lambda: f"04573{next(_numbers):04d}"),
        st.sampled_from([f"+35840000000{n}" for n in range(1, 9)]),
    ),
    "sd-sender": st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,10}", fullmatch=True),
    "sd-text": st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=60
    ).filter(lambda t: t.strip() and "$(" not in t),
    "sd-key": st.builds(lambda: f"fuzz-{next(_numbers)}"),
    "sd-future": st.integers(60, 86_400 * 30).map(
        lambda s: (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=s)).isoformat()
    ),
}
for _name, _strategy in FORMATS.items():
    schemathesis.openapi.format(_name, _strategy)

#: Paths of the send operations (POST) -> the Service-Id they send through.
SEND_PATHS = {
    "/messages": ONE_WAY_SERVICE,
    "/messages/bulk": ONE_WAY_SERVICE,
    "/whatsapp/messages": ONE_WAY_SERVICE,
    "/questions": TWO_WAY_SERVICE,
}
_TEXT = {"type": "string", "format": "sd-text"}
#: Body fields -> the schema the app really accepts (others keep the definition's).
_FIELDS: dict[str, dict[str, Any]] = {
    "Sender": {"type": "string", "format": "sd-sender"},
    "Content": _TEXT,
    "RepromptContent": _TEXT,
    "CustomerData": _TEXT,
    "Recipient": {"type": "string", "format": "sd-phone"},
    "RequestId": {"type": "string", "format": "sd-key"},
    "SendDateTime": {"type": "string", "format": "sd-future"},
    "TemplateName": {"type": "string", "enum": ["welcome"]},
    "BodyParameters": {"type": "array", "items": _TEXT, "maxItems": 2},
    "Options": {"type": "array", "items": _TEXT, "maxItems": 3, "uniqueItems": True},
}
#: Fields the fuzz leaves out of the send bodies (other operations' ground, or a second way).
_LEFT_OUT = ("RecipientsCsv", "HeaderParameters", "Buttons")
_HEADERS = {"X-SmartDialog-Connection": ["default"], "Customer-Id": [CUSTOMER]}


def _tighten_body(schema: dict[str, Any]) -> None:
    properties = schema["properties"]
    for name in _LEFT_OUT:
        properties.pop(name, None)
    if "Protocol" in properties:  # AttachmentUri needs Protocol WhatsApp: no schema can say so
        properties.pop("AttachmentUri", None)
    for name, tight in _FIELDS.items():
        if name in properties:
            properties[name] = {**tight}
    if "Recipients" in properties:
        recipients = properties["Recipients"]
        recipients["minItems"], recipients["maxItems"] = 1, 3
        item = recipients["items"]
        item["properties"]["Address"] = {"type": "string", "format": "sd-phone"}
        if "Personalization" in item["properties"]:
            item["properties"]["Personalization"] = {
                "type": "object",
                "propertyNames": {"pattern": "^[a-z][a-z0-9_]{0,9}$"},
                "additionalProperties": _TEXT,
                "maxProperties": 3,
            }
        item["additionalProperties"] = False
        schema["required"] = sorted({*schema.get("required", []), "Recipients"})
    schema["additionalProperties"] = False


@SCHEMA.hook
def before_process_path(
    context: schemathesis.HookContext, path: str, methods: dict[str, Any]
) -> None:
    """Tighten the send operations to what the app accepts (see the module docstring)."""
    if path not in SEND_PATHS or "post" not in methods:
        return
    for parameter in methods["post"]["parameters"]:
        if parameter["in"] == "body":
            _tighten_body(parameter["schema"])
        elif parameter["name"] == "Service-Id":
            parameter["enum"] = [SEND_PATHS[path]]
        elif parameter["name"] == "Idempotency-Key":
            parameter["format"] = "sd-key"
        elif parameter["name"] in _HEADERS:
            parameter["enum"] = _HEADERS[parameter["name"]]


SEND_LABELS = frozenset(f"POST {path}" for path in SEND_PATHS)
#: (label, mode) -> status codes answered, for the send operations' pass-rate check.
ANSWERS: dict[tuple[str, str], Counter[int]] = {}

OPERATIONS = sorted(op.ok().label for op in SCHEMA.get_all_operations())
#: Body fields the app may call (or hand to SmartDialog): pinned to the loopback receiver.
URL_FIELDS = frozenset({"DlrUrl", "callbackUrl", "AttachmentUri", "AttachmentUrl"})


def pin_urls(value: Any, receiver: str) -> Any:
    """``value`` with every string in a URL field replaced by a URL of the receiver."""
    if isinstance(value, dict):
        return {
            k: f"{receiver}/fuzz"
            if k in URL_FIELDS and isinstance(v, str)
            else pin_urls(v, receiver)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [pin_urls(v, receiver) for v in value]
    return value


def test_every_operation_of_the_connector_is_fuzzed() -> None:
    assert len(OPERATIONS) >= 25
    assert "POST /messages" in OPERATIONS


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("label", OPERATIONS)
def test_no_input_gets_a_5xx_or_hangs(
    fuzz_stack: FuzzStack, fuzz_budget: FuzzBudget, label: str, mode: GenerationMode
) -> None:
    operation = SCHEMA.find_operation_by_label(label)
    assert operation is not None
    seen: list[str] = []
    if label == "POST /questions":  # a question needs its service's webhook (its replies)
        registered = fuzz_stack.http.post(f"{fuzz_stack.api}/inbound/webhooks/{TWO_WAY_SERVICE}")
        assert registered.status_code == 201, registered.text

    @settings(
        max_examples=fuzz_budget.examples(),
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Case) -> None:
        if case.body is not None and not isinstance(case.body, bytes | str):
            case.body = pin_urls(case.body, fuzz_stack.receiver_url)
        try:
            response = case.call(base_url=fuzz_stack.api, timeout=REQUEST_TIMEOUT)
        except Exception as exc:  # a timeout or a dropped connection: the host hung or died
            pytest.fail(f"{label}: no answer ({type(exc).__name__}) for {case.as_curl_command()}")
        seen.append(str(response.status_code))
        ANSWERS.setdefault((label, str(mode)), Counter())[response.status_code] += 1
        assert response.status_code < 500, (
            f"{label} answered {response.status_code}: {response.text[:500]}\n"
            f"{case.as_curl_command()}"
        )

    run()
    assert seen


def test_positive_examples_of_the_sends_get_past_validation() -> None:
    # Runs after the fuzz above: most valid-by-the-(tightened)-definition sends are accepted.
    positive = [ANSWERS.get((label, str(GenerationMode.POSITIVE))) for label in SEND_LABELS]
    answers = sum((c for c in positive if c), Counter[int]())
    accepted = sum(n for status, n in answers.items() if status < 300)
    print(f"\nsend operations, positive examples: {dict(answers)}")
    assert answers, "the send operations were not fuzzed"
    assert accepted >= 0.8 * answers.total(), dict(answers)


def test_nothing_the_fuzz_left_behind_ends_on_a_poison_queue(fuzz_stack: FuzzStack) -> None:
    # Runs last in this module: what the fuzz got accepted has been through the queue triggers.
    for queue in (OUTBOUND_QUEUE, INBOUND_INTAKE_QUEUE, INBOUND_DELIVERIES_QUEUE):
        settle(fuzz_stack.storage, queue)
    assert poison_messages(fuzz_stack.storage) == {}
