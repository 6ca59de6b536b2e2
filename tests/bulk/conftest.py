"""The bulk tests reuse the outbound environment: Azurite, a sandbox, the real functions."""

from tests.outbound.conftest import outbound, outbound_sandbox, private_outbound

__all__ = ["outbound", "outbound_sandbox", "private_outbound"]
