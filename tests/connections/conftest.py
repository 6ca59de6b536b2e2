"""Fixtures for the connections tests: two SmartDialog accounts side by side.

The default connection (the plain ``SMARTDIALOG_*`` settings) talks to one sandbox; the
connection ``second`` to another sandbox instance with the second account's token
(``sandbox-token-2``), so its own quota and request log: what each instance received is what
each account sent.
``second`` serves the sandbox's second account's customer (2001; 1002 before the sandbox had
accounts of its own), the default 1001.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox.server import SandboxServer
from shared.connections import reset_connections_cache
from shared.outbound import reset_sender_cache
from shared.settings import reset_settings_cache
from tests.outbound.conftest import Outbound, outbound, outbound_sandbox

__all__ = ["Outbound", "outbound", "outbound_sandbox"]  # the fixtures `two` builds on

SECOND_TOKEN = "sandbox-token-2"


def _second_customer() -> str:
    """The second account's customer: 2001 once the sandbox seeds a second account (each token
    its own customers), else 1002 (every token sees every seed customer)."""
    seed = json.loads((Path(__file__).parents[2] / "sandbox" / "seed.json").read_text("utf-8"))
    return "2001" if "2001" in json.dumps(seed) else "1002"


SECOND_CUSTOMER = _second_customer()
SECOND_SERVICE = f"s-{SECOND_CUSTOMER}-oneway"
SECOND_TWO_WAY = f"s-{SECOND_CUSTOMER}-twoway"


@dataclass
class TwoConnections:
    """The default connection's wiring (``env``) plus the second account's sandbox."""

    env: Outbound
    second: SandboxServer

    def set_connection(self, name: str, **settings: Any) -> None:
        """Set ``SMARTDIALOG_CONNECTIONS__<name>__<SETTING>`` app settings."""
        for setting, value in settings.items():
            self.env.monkeypatch.setenv(f"SMARTDIALOG_CONNECTIONS__{name}__{setting}", str(value))
        forget_settings()

    def drop_connection(self, name: str, *settings: str) -> None:
        for setting in settings:
            self.env.monkeypatch.delenv(f"SMARTDIALOG_CONNECTIONS__{name}__{setting}")
        forget_settings()

    def remove_connection(self, name: str) -> None:
        """Take connection ``name`` out of the app's settings: every one of its settings."""
        prefix = f"SMARTDIALOG_CONNECTIONS__{name}__"
        self.drop_connection(name, *(k[len(prefix) :] for k in os.environ if k.startswith(prefix)))

    def second_upstream(self, operation: str = "SendMessage") -> list[dict[str, Any]]:
        """Requests the second account's sandbox received for ``operation``."""
        return [
            r for r in self.second.state.snapshot("requests") if r.get("operationId") == operation
        ]


def forget_settings() -> None:
    reset_settings_cache()
    reset_connections_cache()
    reset_sender_cache()


def forget_quota_logs() -> None:
    """Empty the quota table (every connection's sliding log)."""
    from shared.names import QUOTA_TABLE
    from shared.storage import table_client

    table = table_client(QUOTA_TABLE)
    with contextlib.suppress(Exception):
        table.create_table()
    for entity in table.list_entities():
        table.delete_entity(entity["PartitionKey"], entity["RowKey"])


def forget_registrations_and_questions() -> None:
    """Empty the webhooks and questions tables, as the inbound tests' ``_empty`` does: an
    earlier test's registration of a service (on either connection) or its open question would
    otherwise decide a later test's ask (a leftover ``second`` registration made an ask that
    must find the default connection's pass whatever the check does)."""
    from shared.names import QUESTIONS_TABLE, WEBHOOKS_TABLE
    from shared.storage import table_client

    for name in (WEBHOOKS_TABLE, QUESTIONS_TABLE):
        table = table_client(name)
        with contextlib.suppress(Exception):
            table.create_table()
        for entity in table.list_entities(select=["PartitionKey", "RowKey"]):
            table.delete_entity(entity["PartitionKey"], entity["RowKey"])


@pytest.fixture(scope="session")
def second_sandbox() -> Iterator[SandboxServer]:
    # A sandbox with accounts knows sandbox-token-2 as its second account's; an older one is
    # told to take it as its only token.
    token = {} if SECOND_CUSTOMER == "2001" else {"static_token": SECOND_TOKEN}
    server = SandboxServer(dlr_delay=0.05, slow_seconds=1.0, **token).start()
    yield server
    server.stop()


@pytest.fixture
def two(outbound: Outbound, second_sandbox: SandboxServer) -> Iterator[TwoConnections]:
    """Default -> the outbound tests' sandbox (customer 1001); ``second`` -> the second one."""
    second_sandbox.reset()
    forget_registrations_and_questions()
    pair = TwoConnections(outbound, second_sandbox)
    pair.set_connection(
        "SECOND",
        BASE_URL=second_sandbox.api_url,
        ACCESS_TOKEN=SECOND_TOKEN,
        CUSTOMERS=SECOND_CUSTOMER,
        CUSTOMER_ID=SECOND_CUSTOMER,
        SERVICE_ID=SECOND_SERVICE,
        QUOTA_CALLS=2000,
    )
    yield pair
    forget_settings()
