"""The message core's store tests use the outbound environment: Azurite and the app's tables."""

from tests.outbound.conftest import outbound, outbound_sandbox

__all__ = ["outbound", "outbound_sandbox"]
