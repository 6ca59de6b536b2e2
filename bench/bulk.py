"""The bulk figure: 5,000 recipients with the default quota (100 calls / 60 s), packed.

Two runs against one sandbox that enforces the default quota, each on an Azurite of its own and
through the app's real HTTP action functions (in process, real ``func.HttpRequest``) and the real
``OutboundSender`` function run by the dev host with the queue settings of host.json (as ``make
run`` does):

1. one SendBulkMessages request with 5,000 recipients;
2. 5,000 SendMessage requests of one recipient each (the same template), submitted as a backlog
   before the host starts (a flow that loops over a list and posts each row).

Measured at the sandbox: upstream calls, recipients per call, time from the first request to
the last recipient accepted upstream, the most calls in any 60 s window, duplicates (a
recipient accepted twice) and lost recipients. The anchor is the certified connector looped in
a flow, one recipient per call: 5,000 calls, i.e. 50 minutes at 100 calls a minute; it is
*computed* from the quota, not measured.

Run it alone with ``python -m bench.bulk``; ``measure()`` gives the rows of ``make bench``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from bench._app import (
    accepted_upstream,
    app_settings,
    environment,
    fresh_queues,
    functions,
    post,
    run_host_until,
)
from bench.quota_e2e import _parse_time, max_in_window, repeats

if TYPE_CHECKING:
    from bench.__main__ import FigureRow

__all__ = ["measure", "run_bulk_benchmark"]

#: The issue's size. On a 2-core machine against Azurite the full figure takes up to ~35
#: minutes (the bulk request ~1 minute; the single sends the rest, stopped at the timeout:
#: storage, not the quota, is their bottleneck); BENCH_BULK_RECIPIENTS runs a smaller one.
RECIPIENTS = int(os.environ.get("BENCH_BULK_RECIPIENTS") or 5_000)
QUOTA_CALLS = 100
QUOTA_PERIOD = 60.0


def _numbers(run: int, count: int) -> list[str]:
    return [f"+3584{run}{i:07d}" for i in range(count)]


def _batch_counts(status_url: str) -> dict[str, int]:
    """GetBulkStatus's counts per state, through the real function."""
    from urllib.parse import parse_qsl, unquote, urlsplit

    import azure.functions as func

    parts = urlsplit(status_url)
    batch_id = unquote(parts.path.rsplit("/", 1)[-1])
    request = func.HttpRequest(
        method="GET", url=status_url, headers={}, params=dict(parse_qsl(parts.query)),
        route_params={"BatchId": batch_id}, body=b"",
    )  # fmt: skip
    response = functions()["GetBulkStatus"](request)
    return dict(json.loads(response.get_body()).get("Counts") or {})


def _drain(sandbox: Any, expected: set[str], timeout: float) -> float:
    """The dev host runs until every expected address was accepted upstream; when that was."""
    return run_host_until(lambda: expected <= accepted_upstream(sandbox), timeout)


def _figures(sandbox: Any, addresses: list[str], since: float) -> dict[str, Any]:
    requests = [
        r for r in sandbox.state.snapshot("requests")
        if r.get("method") == "POST" and str(r.get("path", "")).endswith("/messages")
        and _parse_time(r["time"]) >= since
    ]  # fmt: skip
    ok = [r for r in requests if r.get("status") == 200]
    per_address = Counter(
        a["Address"] for r in ok for a in (r.get("response") or {}).get("Recipients", [])
    )
    wanted = set(addresses)
    return {
        "upstream_calls": len(requests),
        "accepted_calls": len(ok),
        "recipients_per_call": round(sum(per_address.values()) / max(1, len(ok)), 1),
        "max_in_window": max_in_window([_parse_time(r["time"]) for r in requests], QUOTA_PERIOD),
        "upstream_429": sum(1 for r in requests if r.get("status") == 429),
        "duplicates": sum(c - 1 for a, c in per_address.items() if a in wanted and c > 1)
        + repeats(requests),
        "lost": sum(1 for a in wanted if per_address.get(a, 0) == 0),
    }


def run_bulk_benchmark(
    *,
    recipients: int = RECIPIENTS,
    timeout: float = 1800.0,
    runs: tuple[str, ...] = ("bulk", "singles"),
) -> dict[str, Any]:
    """Both runs (or those in ``runs``); their figures."""
    from devhost.azurite import start_azurite
    from sandbox.server import SandboxServer

    azurite = start_azurite()
    sandbox = SandboxServer(quota_calls=QUOTA_CALLS, quota_period=QUOTA_PERIOD, dlr_delay=3600)
    sandbox.start()
    env = {
        **app_settings(azurite.connection_string, sandbox),
        "SMARTDIALOG_QUOTA_CALLS": str(QUOTA_CALLS),
        "SMARTDIALOG_QUOTA_PERIOD_SECONDS": str(QUOTA_PERIOD),
    }
    results: dict[str, Any] = {"recipients": recipients}
    template = {"Sender": "Bench", "Content": f"Bulk {uuid.uuid4().hex[:6]} for $(name)"}
    try:
        with environment(env):
            fresh_queues()

            # 1. one bulk request
            if "bulk" in runs:
                addresses = _numbers(1, recipients)
                since = time.time()
                started = time.monotonic()
                rows = [{"Address": a, "Personalization": {"name": f"r{i}"}}
                        for i, a in enumerate(addresses)]  # fmt: skip
                batch = post("SendBulkMessages", {**template, "Recipients": rows})
                submitted = time.monotonic() - started
                done_at = _drain(sandbox, set(addresses), timeout)
                # What GetBulkStatus says once the host has stopped (its runs finished).
                counts = _batch_counts(batch["StatusUrl"])
                results["bulk"] = {
                    **_figures(sandbox, addresses, since),
                    "submit_seconds": round(submitted, 1),
                    "drain_seconds": round(done_at - started - submitted, 1),
                    "seconds_to_all_sent": round(done_at - started, 1),
                    "recorded_sent": counts.get("sent", 0),
                }
                time.sleep(1.0)

            # 2. the same as single sends
            if "singles" in runs:
                # On an Azurite of its own, as when run alone: Azurite's queue reads slow down
                # with every message held in *any* of its queues (3.8 ms a receive share plus
                # delete with none, 32 ms with 5,000 in another queue, 78 ms with 10,000), and
                # once the bulk run's 5,000 events are cleared, its clean-up of them slowed
                # every accept (submit 188-222 s, against 56-75 s alone); Azure Storage does
                # neither. The sandbox stays: calls are counted from ``since``.
                if "bulk" in runs:
                    azurite.stop()
                    azurite = start_azurite()
                own = {**env, **app_settings(azurite.connection_string, sandbox)}
                with environment(own):
                    fresh_queues()
                    addresses = _numbers(2, recipients)
                    since = time.time()
                    started = time.monotonic()
                    with ThreadPoolExecutor(16) as pool:
                        list(pool.map(lambda item: post("SendMessage", {**template, "Recipients": [
                            {"Address": item[1], "Personalization": {"name": f"r{item[0]}"}}]}),
                            enumerate(addresses)))  # fmt: skip
                    submitted = time.monotonic() - started
                    done_at = _drain(sandbox, set(addresses), timeout)
                results["singles"] = {
                    **_figures(sandbox, addresses, since),
                    "submit_seconds": round(submitted, 1),
                    "drain_seconds": round(done_at - started - submitted, 1),
                    "seconds_to_all_sent": round(done_at - started, 1),
                }
    finally:
        sandbox.stop()
        azurite.stop()
    calls = recipients  # the certified connector: one recipient per call
    results["anchor"] = {
        "upstream_calls": calls,
        "recipients_per_call": 1.0,
        # Call k + 100 at the earliest 60 s after call k: the last of N, (N-1) // 100 periods in.
        "seconds_to_all_sent": (calls - 1) // QUOTA_CALLS * QUOTA_PERIOD,
        "computed": True,
    }
    return results


def measure() -> list[FigureRow]:
    """The rows for ``python -m bench`` (targets of issue 8)."""
    r = run_bulk_benchmark()
    anchor = r["anchor"]
    rows: list[FigureRow] = []
    for run in ("bulk", "singles"):
        if run not in r:
            continue
        f = r[run]
        note = (
            f"{r['recipients']} recipients as {run}, dev host (host.json), quota "
            f"{QUOTA_CALLS}/{QUOTA_PERIOD:.0f}s: {f['upstream_calls']} calls, "
            f"{f['seconds_to_all_sent']} s to all sent (submit {f['submit_seconds']} s, drain "
            f"{f['drain_seconds']} s); "
            f"anchor (computed, one recipient per call): {anchor['upstream_calls']} calls, "
            f"{anchor['seconds_to_all_sent']:.0f} s"
        )
        if "recorded_sent" in f:
            note += f"; GetBulkStatus right after: {f['recorded_sent']} sent"
        if f["lost"]:
            note += (
                f"; {f['lost']} recipient(s) not accepted upstream when the run stopped "
                "(its timeout): still queued, counted as lost here"
            )
        rows += [
            {"figure": f"{run}: recipients per call", "value": f["recipients_per_call"],
             "anchor": 1.0, "target": ">= 50", "unit": "recipients", "note": note},
            {"figure": f"{run}: max calls in a window", "value": f["max_in_window"],
             "anchor": QUOTA_CALLS, "target": "<= 1.0", "unit": "calls"},
            # Issue 8: a bulk send "at least 50 times" the one-recipient-per-call pattern;
            # issue 12: single sends within 0.05 of it (the singles' own target).
            {"figure": f"{run}: time to all sent", "value": f["seconds_to_all_sent"],
             "anchor": anchor["seconds_to_all_sent"],
             "target": "<= 0.02" if run == "bulk" else "<= 0.05", "unit": "s"},
            {"figure": f"{run}: duplicates", "value": f["duplicates"], "anchor": 1.0,
             "target": "<= 0", "unit": "recipients"},
            {"figure": f"{run}: lost", "value": f["lost"], "anchor": 1.0, "target": "<= 0",
             "unit": "recipients"},
        ]  # fmt: skip
    return rows


if __name__ == "__main__":
    print(json.dumps(run_bulk_benchmark(), indent=2))
