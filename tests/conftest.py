"""Shared fixtures live in tests/fixtures/ as plugins, one module per real part."""

pytest_plugins = [
    "tests.fixtures.azurite",
    "tests.fixtures.sandbox",
    "tests.fixtures.clock",
    "tests.fixtures.leaks",
]
