"""docs/operations.md keeps up with the code: a runbook entry for every dead-letter reason each
writer can write and every failure code a failed send can carry, and the poison queues it
describes are those of the app's queue triggers."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from shared.inbound import SubscriberDeadLetter
from shared.inbound._dlr_forward import DlrForwardDeadLetter
from shared.names import (
    CLOUD_EVENTS_DEAD_LETTER_QUEUE,
    DLR_FORWARD_DEAD_LETTER_QUEUE,
    INBOUND_DEAD_LETTER_QUEUE,
    OUTBOUND_DEAD_LETTER_QUEUE,
    poison_queue,
)
from shared.notify._doors import CloudEventDeadLetter
from shared.ops import POISON, POISON_SOURCES
from shared.outbound import DeadLetterReason
from tests.actions.conftest import registered_functions

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"


def reasons_by_queue() -> list[tuple[str, str]]:
    """(dead-letter queue, reason) for every reason the code can write there."""
    pairs = [(OUTBOUND_DEAD_LETTER_QUEUE, str(r)) for r in DeadLetterReason]
    annotation = SubscriberDeadLetter.model_fields["reason"].annotation
    pairs += [(INBOUND_DEAD_LETTER_QUEUE, str(r)) for r in typing.get_args(annotation)]
    annotation = DlrForwardDeadLetter.model_fields["reason"].annotation
    pairs += [(DLR_FORWARD_DEAD_LETTER_QUEUE, str(r)) for r in typing.get_args(annotation)]
    annotation = CloudEventDeadLetter.model_fields["reason"].annotation
    pairs += [(CLOUD_EVENTS_DEAD_LETTER_QUEUE, str(r)) for r in typing.get_args(annotation)]
    pairs += [(poison_queue(q), POISON) for q in POISON_SOURCES]
    return pairs


def failure_codes() -> set[str]:
    """The failure codes the send paths and the ask action write (``code=...``) or retry on
    (``Transient(...)``)."""
    codes: set[str] = set()
    for path in (*ROOT.glob("shared/outbound/*.py"), *ROOT.glob("shared/conversations/*.py")):
        text = path.read_text()
        codes |= set(re.findall(r'\bcode\s*=\s*"([a-z][a-z-]*)"', text))
        codes |= set(re.findall(r'Transient\(\s*"([a-z][a-z-]*)"', text))
    return codes


def headings() -> list[str]:
    return re.findall(r"^### (.+)$", DOC.read_text(), re.M)


def test_the_derivations_find_the_reasons_and_codes_we_know() -> None:
    assert (OUTBOUND_DEAD_LETTER_QUEUE, "failed") in reasons_by_queue()
    assert (INBOUND_DEAD_LETTER_QUEUE, "rejected") in reasons_by_queue()
    assert {"expired", "suppressed", "upstream-rejected", "attempts-exhausted"} <= failure_codes()


@pytest.mark.parametrize(("queue", "reason"), reasons_by_queue())
def test_every_dead_letter_reason_has_a_runbook_entry(queue: str, reason: str) -> None:
    entries = [h for h in headings() if f"`{queue}`" in h and h.endswith(f": `{reason}`")]
    assert entries, f"docs/operations.md needs a heading '### `{queue}`: `{reason}`'"


@pytest.mark.parametrize("code", sorted(failure_codes()))
def test_every_failure_code_is_explained(code: str) -> None:
    assert f"`{code}`" in DOC.read_text(), f"docs/operations.md does not explain `{code}`"


def test_the_poison_queues_are_those_of_the_apps_queue_triggers() -> None:
    triggered = {
        binding.queue_name
        for function in registered_functions()
        for binding in function.get_bindings()
        if binding.type == "queueTrigger"
    }
    assert set(POISON_SOURCES) == triggered


def test_every_metric_the_alerts_query_is_one_the_app_records() -> None:
    from shared import telemetry

    source = Path(telemetry.__file__).read_text(encoding="utf-8")
    queried = set(re.findall(r'name == "(smartdialog\.[a-z_.]+)"', DOC.read_text(encoding="utf-8")))
    assert queried, "docs/operations.md queries no metric of ours"
    for name in queried:
        assert f'"{name}"' in source, f"{name} is not a metric shared/telemetry.py records"
