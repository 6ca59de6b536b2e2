"""A send that may have reached SmartDialog through one connection goes on through that one when
its customer moves to another connection, never through the other account.

Found in review: a default-connection send's attempt lost its answer (it may have gone out);
the operator then moved its customer to a new connection by the README's pause, move, resume
procedure, which does not drain retries waiting on the queue. The retry, routed by the
customer's new claim, went out through the new connection's account, which did not know its
RequestId: the recipient got it twice. A send never attempted still follows its customer.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox.faults import FaultKind, FaultPlan
from sandbox.server import SandboxServer
from shared.messages import MessageStore
from tests.connections.conftest import TwoConnections
from tests.outbound.conftest import call_http, fresh_number, sms

#: Another endpoint and token of the default's account: a send routed there would go out.
MOVED_TOKEN = "moved-account-one-token"
#: A customer of that account no connection claims (the default's own, 1001, cannot move).
CUSTOMER = {"Customer-Id": "1002", "Service-Id": "s-1002-oneway"}


@pytest.fixture
def moved() -> Iterator[SandboxServer]:
    server = SandboxServer(dlr_delay=0.05, static_token=MOVED_TOKEN).start()
    yield server
    server.stop()


def _sends(server: SandboxServer) -> list[dict[str, object]]:
    return [r for r in server.state.snapshot("requests") if r.get("operationId") == "SendMessage"]


def test_a_send_in_doubt_stays_with_its_connection_when_its_customer_moves(
    two: TwoConnections, moved: SandboxServer
) -> None:
    accepted = call_http(
        "SendMessage", "POST", body=sms(fresh_number(), content="Moved once"), headers=CUSTOMER
    )
    assert accepted.status == 202, accepted.body
    two.env.sandbox.app.faults.configure(FaultPlan(rate=1.0, kinds=(FaultKind.LOST_ANSWER,)))
    two.env.run_once(limit=1)  # accepted upstream, its answer lost: it may have gone out
    two.env.sandbox.app.faults.configure(FaultPlan())
    store = MessageStore.from_settings()
    record = store.get(accepted.body["Id"])
    assert record is not None
    assert (record.maybe_sent, record.sent_through) == (True, "default")
    before = len(_sends(two.env.sandbox))

    two.set_connection("MOVED", BASE_URL=moved.api_url, ACCESS_TOKEN=MOVED_TOKEN,
                       CUSTOMERS="1002", QUOTA_CALLS=2000)  # fmt: skip
    two.env.drain()

    assert _sends(moved) == []
    assert len(_sends(two.env.sandbox)) == before + 1  # its repeat, under its RequestId
    done = store.get(accepted.body["Id"])
    assert done is not None
    assert (str(done.status), done.sent_through) == ("sent", "default")


def test_a_send_never_attempted_follows_its_customer_to_its_new_connection(
    two: TwoConnections, moved: SandboxServer
) -> None:
    accepted = call_http(
        "SendMessage", "POST", body=sms(fresh_number(), content="Moved before"), headers=CUSTOMER
    )
    assert accepted.status == 202, accepted.body

    two.set_connection("MOVED", BASE_URL=moved.api_url, ACCESS_TOKEN=MOVED_TOKEN,
                       CUSTOMERS="1002", QUOTA_CALLS=2000)  # fmt: skip
    two.env.drain()

    assert len(_sends(moved)) == 1
    done = MessageStore.from_settings().get(accepted.body["Id"])
    assert done is not None
    assert (str(done.status), done.sent_through) == ("sent", "moved")
