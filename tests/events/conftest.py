"""The e2e stack (dev host + sandbox + Azurite) of tests/e2e, for the events doors; and the
default connection's customer and service, which a rule's sends take (without them a rule is
refused when saved and its events at the door)."""

from collections.abc import Iterator

import pytest

from shared.settings import reset_settings_cache
from tests.e2e.conftest import CUSTOMER, ONE_WAY_SERVICE, stack

__all__ = ["stack"]


@pytest.fixture(autouse=True)
def account_defaults(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SMARTDIALOG_CUSTOMER_ID", CUSTOMER)
    monkeypatch.setenv("SMARTDIALOG_SERVICE_ID", ONE_WAY_SERVICE)
    reset_settings_cache()
    yield
    reset_settings_cache()
