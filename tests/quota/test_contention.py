"""Compare-and-swap under real contention: threads and processes hammer one quota log.

Every grant is timed on this machine's one clock, so the checks are exact: the
recorded grant times never put more than the limit in a window of period + margin
(the store's invariant, whatever the load), and the times the workers received their
grants never put more than the limit in a window of the period (what SmartDialog
would see). Utilisation is asserted loosely; `make bench` reports the real figure.
"""

from __future__ import annotations

import math

import pytest

from bench.quota_store import hammer, max_in_window, run_store_benchmark
from devhost.azurite import Azurite
from tests.quota.conftest import StoreFactory

pytestmark = pytest.mark.slow

CALLS = 20
PERIOD = 2.0
MARGIN = 0.25


def test_processes_and_threads_sharing_one_log_never_over_admit(azurite: Azurite) -> None:
    duration = 5.0
    figures = run_store_benchmark(
        azurite.connection_string,
        calls=CALLS,
        period=PERIOD,
        workers=8,
        duration=duration,
        margin=MARGIN,
        processes=2,
    )

    assert figures["max_in_window_decided"] <= CALLS, figures
    assert figures["max_in_window"] <= CALLS, figures
    # Slots were reused as the window moved on: at least two full windows' worth.
    assert figures["grants"] >= 2 * CALLS, figures
    assert figures["cas_conflicts"] > 0, "no contention: the test proves nothing"


def test_threads_in_one_process_never_over_admit(make_store: StoreFactory) -> None:
    calls, period, duration = 10, 1.0, 3.0
    store = make_store(calls=calls, period=period, margin=MARGIN)

    grants, _ = hammer(store, threads=8, duration=duration)

    decided = [g for g, _ in grants]
    received = [r for _, r in grants]
    assert max_in_window(decided, period + MARGIN) <= calls
    assert max_in_window(received, period) <= calls
    ideal = calls * math.ceil(duration / (period + MARGIN))
    assert 2 * calls <= len(grants) <= ideal
