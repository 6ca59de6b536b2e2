"""Found by the fault soak: a message whose attempt may have reached SmartDialog (a lost answer, a
timeout) went back to ``queued`` for its retry, and CancelMessage cancelled it (200, a cancelled
event) although upstream had accepted it: the recipient got the message, we said it was cancelled.
Once an attempt was made, the retry with the same RequestId must go on: cancel answers 409."""

from __future__ import annotations

from collections.abc import Callable

from devhost.azurite import Azurite
from sandbox.faults import FaultKind, FaultPlan
from shared.messages import MessageStatus
from shared.names import EVENTS_QUEUE
from tests.invariants import QueueDrain, check_invariants, read_records
from tests.outbound.conftest import DELIVERED, Outbound, call_http, sms


def test_a_message_whose_answer_was_lost_cannot_be_cancelled_and_is_recorded_sent_once(
    private_outbound: Callable[..., Outbound], azurite: Azurite
) -> None:
    env = private_outbound(faults=FaultPlan(rate=1.0, kinds=(FaultKind.LOST_ANSWER,)))
    storage = azurite.connection_string
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED))
    message_id = accepted.body["Id"]

    env.run_once()  # upstream accepts the send; its answer is lost on the way back
    record = read_records(storage, [message_id])[message_id]
    assert (record.status, record.attempts) == (MessageStatus.QUEUED, 1)
    assert len(env.sandbox.state.snapshot("messages")) == 1

    cancel = call_http("CancelMessage", "DELETE", route_params={"MessageId": message_id})
    env.sandbox.app.faults.configure(FaultPlan())
    env.drain()

    assert cancel.status == 409
    assert "may have reached SmartDialog" in cancel.body["detail"]
    report = check_invariants(
        storage,
        [message_id],
        events=QueueDrain(storage, EVENTS_QUEUE).json(),
        upstream=env.sandbox.state.snapshot("messages"),
    )
    report.assert_holds()
    assert report.statuses == {"sent": 1}
