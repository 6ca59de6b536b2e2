"""Found by the fault soak (50% faults, seed 5): a message whose answer was lost after SmartDialog
accepted it, and whose every retry then failed too, ends ``failed`` with code
``attempts-exhausted``, a dead letter and a ``message.failed`` event, although it was sent.

``Outcomes.give_up`` (shared/outbound/_outcomes.py) sees only the last error; the record does not
remember that an earlier attempt may have got through. Expected: the message says so (code
``outcome-unknown``), or keeps retrying with its RequestId (a repeat is harmless: 409) until its
validity ends and is recorded sent. Left to the owners of _outcomes.py; xfail until then."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devhost.azurite import Azurite
from sandbox.faults import FaultKind, FaultPlan
from shared.names import EVENTS_QUEUE
from tests.invariants import QueueDrain, check_invariants
from tests.outbound.conftest import DELIVERED, Outbound, call_http, sms


@pytest.mark.xfail(strict=True, reason="issue 13 finding: give_up ignores an ambiguous attempt")
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
