"""Waiting for a real process (a sandbox callback, a dev host's listener) with a deadline.

Only for work another thread or process does on its own time; leases, claims and backoffs are
driven with the manual clock instead. The deadline is generous because it only bounds a failing
run: a passing one returns as soon as the condition holds, however loaded the machine is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

#: How long to wait for another process by default (a loaded 2-core CI machine included).
PATIENCE = 30.0
#: The test stacks' SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS. A grant goes stale half the margin
#: after it was taken (by the system clock, which a manual clock does not move); with 0.25 s, a
#: loaded 2-core CI machine passed those 0.125 s between grant and request in tests about
#: something else: 0.5 s leaves room for the load.
MARGIN = 1.0
#: The margin of the tests about stale grants: their slow steps (0.4-0.6 s) pass half of it.
TIGHT_MARGIN = 0.25


def wait_for(
    probe: Callable[[], T | None], timeout: float = PATIENCE, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
