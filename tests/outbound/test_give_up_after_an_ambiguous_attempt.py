"""Found by the fault soak (50% faults, seed 5): a message whose answer was lost after SmartDialog
accepted it, and whose every retry then failed too, ends ``failed`` with code
``attempts-exhausted``, a dead letter and a ``message.failed`` event, although it was sent.

``Outcomes.give_up`` (shared/outbound/_outcomes.py) saw only the last error. Now the record
remembers (``maybe_sent``) that an earlier attempt may have got through, and giving up says so
(code ``outcome-unknown``), which the invariants accept for a message sent once."""

from __future__ import annotations

from collections.abc import Callable

from devhost.azurite import Azurite
from sandbox.faults import FaultKind, FaultPlan
from shared.names import EVENTS_QUEUE
from tests.invariants import QueueDrain, check_invariants
from tests.outbound.conftest import DELIVERED, Outbound, call_http, sms


def test_a_message_sent_but_unanswered_whose_retries_fail_does_not_end_failed_as_not_sent(
    private_outbound: Callable[..., Outbound], azurite: Azurite
) -> None:
    env = private_outbound(faults=FaultPlan(rate=1.0, kinds=(FaultKind.LOST_ANSWER,)))
    env.configure(SEND_MAX_ATTEMPTS=2)
    accepted = call_http("SendMessage", "POST", body=sms(DELIVERED))

    env.run_once()  # attempt 1: accepted upstream, the answer lost
    env.sandbox.app.faults.configure(FaultPlan(rate=1.0, kinds=(FaultKind.UNAVAILABLE,)))
    env.drain()  # attempt 2: 503, the last attempt

    report = check_invariants(
        azurite.connection_string,
        [accepted.body["Id"]],
        events=QueueDrain(azurite.connection_string, EVENTS_QUEUE).json(),
        upstream=env.sandbox.state.snapshot("messages"),
    )
    report.assert_holds()
