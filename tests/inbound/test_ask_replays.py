"""A repeated SendMessageAndWaitForReply (the same Idempotency-Key or RequestId), through the real
action against Azurite: a replay answers its own question and asks nothing."""

from __future__ import annotations

import uuid
from typing import Any

from shared.names import OUTBOUND_QUEUE
from tests.inbound.conftest import TWO_WAY, HttpAnswer, Inbound

NUMBER = "+358401234567"
QUESTION = {"Sender": "Clinic", "Content": "Reply YES or NO", "Recipient": NUMBER}


def _ask(env: Inbound, key: str | None = None, **extra: Any) -> HttpAnswer:
    headers = {"Service-Id": TWO_WAY, **({"Idempotency-Key": key} if key else {})}
    body = {**QUESTION, "Options": ["Yes", "No"], **extra}
    return env.call("SendMessageAndWaitForReply", "POST", headers=headers, body=body)


def test_a_replay_while_its_question_is_open_answers_it_and_queues_nothing(
    inbound: Inbound,
) -> None:
    key = f"booking-{uuid.uuid4().hex}"
    first = _ask(inbound, key)
    queued = inbound.count(OUTBOUND_QUEUE)

    replays = [_ask(inbound, key) for _ in range(2)]

    assert [r.status for r in replays] == [202, 202]
    assert {r.body["QuestionId"] for r in replays} == {first.body["QuestionId"]}
    assert {r.headers["Location"] for r in replays} == {first.headers["Location"]}
    assert inbound.count(OUTBOUND_QUEUE) == queued
