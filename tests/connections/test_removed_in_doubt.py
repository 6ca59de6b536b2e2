"""A send whose attempt may have reached SmartDialog fails ``outcome-unknown`` when its
connection is removed, not ``connection-removed``.

Found in review: a pack's call was accepted and its answer lost (both members queued again,
``maybe_sent``), then the connection was removed. Both failed ``connection-removed``, told as
not sent, so the re-drive the runbook gives for that reason ("put the connection back and
re-drive") needed no ``force`` and sent both again under a new pack's RequestId: each recipient
got the message twice.
"""

from __future__ import annotations

import pytest

from sandbox.faults import FaultKind, FaultPlan
from shared.connections import CONNECTION_HEADER
from shared.messages import MessageStore
from tests.connections.conftest import TwoConnections
from tests.outbound.conftest import call_http, fresh_number, sms


@pytest.mark.parametrize("sends", [1, 2], ids=["alone", "pack"])
def test_a_send_in_doubt_whose_connection_is_removed_fails_outcome_unknown(
    two: TwoConnections, sends: int
) -> None:
    ids = []
    for _ in range(sends):
        body = sms(fresh_number(), content="Removed while in doubt")
        answer = call_http("SendMessage", "POST", body=body, headers={CONNECTION_HEADER: "second"})
        assert answer.status == 202, answer.body
        ids.append(answer.body["Id"])
    two.second.app.faults.configure(FaultPlan(rate=1.0, kinds=(FaultKind.LOST_ANSWER,)))
    two.env.run_once(limit=1)  # one call (a pack of both): accepted, its answer lost
    two.second.app.faults.configure(FaultPlan())
    store = MessageStore.from_settings()
    assert all(r and r.maybe_sent for r in map(store.get, ids))
    assert len(two.second_upstream()) == 1

    two.remove_connection("SECOND")
    two.env.drain()
    failed = [store.get(i) for i in ids]
    assert [r.failure.code if r and r.failure else None for r in failed] == [
        "outcome-unknown"
    ] * sends
    for record in failed:
        assert record is not None
        assert record.failure is not None
        assert "may have been sent" in str(record.failure.detail)
        assert "connection second" in str(record.failure.detail).lower()
    events = [e for e in two.env.events() if e["type"].endswith("message.failed")]
    assert sorted(e["data"]["error"]["code"] for e in events) == ["outcome-unknown"] * sends
