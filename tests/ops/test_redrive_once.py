"""Re-drives that lose nothing and send nothing twice: a letter whose original is kept in a
blob, a send too large for a queue message, a letter whose stored original is gone, two
re-drives of one letter at once or one after another, and poison messages another scan holds.

Through the real functions, Azurite and the sandbox, as the rest of tests/ops.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from shared.deadletters import original_aside, write_dead_letter
from shared.inbound._dlr_forward import DlrForwardDeadLetter
from shared.names import (
    DLR_FORWARD_DEAD_LETTER_QUEUE,
    DLR_FORWARD_QUEUE,
    INBOUND_DEAD_LETTER_QUEUE,
    INBOUND_DELIVERIES_QUEUE,
)
from shared.payloads import PayloadStore, fits_queue
from shared.storage import ensured_queue, queue_client
from tests.ops.conftest import Outbound
from tests.outbound.conftest import call_http


def queue_texts(name: str) -> list[str]:
    return [str(m.content) for m in queue_client(name).peek_messages(max_messages=32)]


def forward(message_id: str, **fields: Any) -> str:
    """A DLR forward's queue message, as ``smartdialog-dlr-forward`` carries it."""
    return json.dumps({"messageId": message_id, "status": "delivered", "attempts": 3, **fields})


def forward_letter(original: str, message_id: str = "m-1") -> DlrForwardDeadLetter:
    return DlrForwardDeadLetter(
        reason="attempts-exhausted",
        detail="the receiver failed",
        messageId=message_id,
        deadLetteredAt=dt.datetime.now(dt.UTC),
        original=original,
    )


def put_forward_letter(original: str, message_id: str = "m-1") -> DlrForwardDeadLetter:
    """Write a forward's dead letter as the forwarder does (its original aside when large)."""
    letter = original_aside(forward_letter(original, message_id), PayloadStore.from_settings())
    write_dead_letter(
        queue_client(DLR_FORWARD_DEAD_LETTER_QUEUE),
        letter.model_dump_json(exclude_none=True),
        queue_name=DLR_FORWARD_DEAD_LETTER_QUEUE,
    )
    return letter


def large_forward(message_id: str) -> str:
    """A forward that fits its queue but not a letter: the letter escapes each of its escaped
    quotes (two characters) as four."""
    text = forward(message_id, pad='"' * 20_000)
    assert fits_queue(text)
    return text


def listed(**params: str) -> list[dict[str, Any]]:
    answer = call_http("ListDeadLetters", "GET", params=params)
    assert answer.status == 200, answer.body
    return answer.body["value"]  # type: ignore[no-any-return]


def letter_of(message_id: str) -> dict[str, Any]:
    [item] = [i for i in listed() if i.get("messageId") == message_id]
    return item


def test_a_letter_shows_the_original_a_re_drive_sends_even_when_it_is_kept_in_a_blob(
    ops: Outbound,
) -> None:
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()
    big = large_forward("m-big")
    assert put_forward_letter(big, "m-big").originalBlob

    item = letter_of("m-big")
    shown = call_http("GetDeadLetter", "GET", route_params={"DeadLetterId": item["id"]})
    redriven = call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": item["id"]})

    assert shown.status == 200, shown.body
    assert shown.body["original"] == big  # was the letter's JSON, naming the blob
    assert redriven.body["outcome"] == "redriven", redriven.body
    assert queue_texts(DLR_FORWARD_QUEUE) == [big]
    ensured_queue(DLR_FORWARD_QUEUE).clear_messages()


def test_a_subscriber_delivery_shows_the_attempt_count_its_re_drive_resets(ops: Outbound) -> None:
    delivery = {"service": "s", "subscriptionId": "sub", "event": {}, "attempts": 8}
    write_dead_letter(
        queue_client(INBOUND_DEAD_LETTER_QUEUE),
        json.dumps({"reason": "rejected", "detail": "x", "original": json.dumps(delivery)}),
        queue_name=INBOUND_DEAD_LETTER_QUEUE,
    )
    ensured_queue(INBOUND_DELIVERIES_QUEUE).clear_messages()
    [item] = listed()

    shown = call_http("GetDeadLetter", "GET", route_params={"DeadLetterId": item["id"]})
    call_http("RedriveDeadLetter", "POST", route_params={"DeadLetterId": item["id"]})

    assert json.loads(shown.body["original"]) == {**delivery, "attempts": 0}
    assert queue_texts(INBOUND_DELIVERIES_QUEUE) == [shown.body["original"]]
    ensured_queue(INBOUND_DELIVERIES_QUEUE).clear_messages()
