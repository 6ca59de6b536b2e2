"""Found in review: how a trigger's subscription ends. Its DELETE was routed by the
``X-SmartDialog-Connection`` header the connector sends on every call, so a routing error, or a
header naming a connection since removed, made every unsubscribe fail and left the subscription.
A flow deleted without its DELETE (its callback answering 404 or 410) kept its subscription for
ever, every later event POSTed and dead-lettered again. And a delivery-report trigger edited
from "final" to "all" lost the final report still being delivered for the replaced one."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from shared import names
from shared.connections import CONNECTION_HEADER, reset_connections_cache
from shared.triggers import (
    TriggerKind,
)
from tests.inbound.conftest import CUSTOMER, TWO_WAY, Inbound
from tests.inbound.test_triggers import TRIGGERS, subscribe

DELETES = {**{k: v[1] for k, v in TRIGGERS.items()}, "new-message": "DeleteNewMessageTrigger"}


def _location(env: Inbound, kind: TriggerKind | str, callback: str) -> str:
    if isinstance(kind, TriggerKind):
        answer = subscribe(env, kind, callback, TWO_WAY)
    else:
        answer = env.call(
            "NewMessage",
            "POST",
            route_params={"Service": TWO_WAY},
            headers={"Customer-Id": CUSTOMER},
            body={"callbackUrl": callback},
        )
    assert answer.status == 201, answer.body
    return str(answer.headers["Location"])


def _delete(env: Inbound, kind: TriggerKind | str, location: str, **headers: str) -> Any:
    parts = urlsplit(location)
    *_, service, subscription = parts.path.split("/")
    return env.call(
        DELETES[kind],
        "DELETE",
        route_params={"Service": service, "SubscriptionId": subscription},
        params=dict(parse_qsl(parts.query)),
        headers=headers,
    )


def _live(env: Inbound) -> list[str]:
    rows = env.rows(names.SUBSCRIPTIONS_TABLE)
    return sorted(r["RowKey"] for r in rows if "CallbackUrl" in r and not r.get("ReplacedBy"))


@pytest.mark.parametrize("kind", [*TRIGGERS, "new-message"])
def test_a_triggers_delete_ends_it_during_a_routing_error_or_naming_a_removed_connection(
    inbound: Inbound, kind: TriggerKind | str
) -> None:
    removed = _location(inbound, kind, "https://flow.example/removed")
    broken = _location(inbound, kind, "https://flow.example/broken")
    assert len(_live(inbound)) == 2

    # The connector sends the header on every call; this connection is gone from the settings.
    answer = _delete(inbound, kind, removed, **{CONNECTION_HEADER: "sales-eu"})
    assert answer.status == 200, answer.body
    assert len(_live(inbound)) == 1

    inbound.monkeypatch.setenv("SMARTDIALOG_CONNECTIONS__SALES_CLIENT_ID", "x")  # no connection
    reset_connections_cache()
    assert inbound.call("ListConnections", "GET").status == 503  # a routing error of the whole
    answer = _delete(inbound, kind, broken)
    assert answer.status == 200, answer.body
    assert _live(inbound) == []
