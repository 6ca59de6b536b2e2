"""Schemathesis against the dev host, from the connector's own definition: every operation,
positive (valid by the definition) and negative (invalid) examples, real HTTP. Whatever comes
in, the answer is never a 5xx and never a hang.

Bounded: :data:`~tests.fuzz.conftest.EXAMPLES` examples per operation and mode, derandomized
(the same examples every run), no shrinking, and a time budget for the whole fuzz
(``FUZZ_EXAMPLES`` / ``FUZZ_BUDGET_SECONDS`` widen it for a deeper local run).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case, GenerationMode

from shared.names import INBOUND_DELIVERIES_QUEUE, INBOUND_INTAKE_QUEUE, OUTBOUND_QUEUE
from tests.e2e.conftest import REPO
from tests.fuzz.conftest import (
    REQUEST_TIMEOUT,
    FuzzBudget,
    FuzzStack,
    poison_messages,
    settle,
)

SCHEMA = schemathesis.openapi.from_path(REPO / "connector" / "apiDefinition.swagger.json")
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
        assert response.status_code < 500, (
            f"{label} answered {response.status_code}: {response.text[:500]}\n"
            f"{case.as_curl_command()}"
        )

    run()
    assert seen


def test_nothing_the_fuzz_left_behind_ends_on_a_poison_queue(fuzz_stack: FuzzStack) -> None:
    # Runs last in this module: what the fuzz got accepted has been through the queue triggers.
    for queue in (OUTBOUND_QUEUE, INBOUND_INTAKE_QUEUE, INBOUND_DELIVERIES_QUEUE):
        settle(fuzz_stack.storage, queue)
    assert poison_messages(fuzz_stack.storage) == {}
