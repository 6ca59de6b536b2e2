"""The e2e stack (dev host + sandbox + Azurite) of tests/e2e, for the events doors."""

from tests.e2e.conftest import stack

__all__ = ["stack"]
