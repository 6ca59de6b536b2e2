"""The outbound quota benchmark: a backlog drained by concurrent senders against the sandbox.

``run_quota_benchmark()`` enqueues a backlog of sends on ``smartdialog-outbound`` (Azurite),
starts ``workers`` threads that each play the Functions host (receive a batch, invoke the app's
real ``OutboundSender`` queue-trigger function per message, delete it when it returned), against
a sandbox whose own quota is the compressed one we configure, and measures against the
sandbox's request log:

- utilisation, two ways: ``rate_utilisation`` = the call rate after the first call over the
  quota's rate (``calls / period``), and the stricter ``utilisation`` = calls made / the most a
  bursting sender could make between the first and last call (``calls * (span / period + 1)``;
  a sliding log in steady state spreads calls evenly, which caps this one below 1),
- the most calls in any sliding window of ``period`` seconds (must be <= ``calls``),
- upstream 429s (the sandbox enforces the same quota: any over-admission shows here),
- duplicates (a RequestId accepted upstream twice) and lost messages (not sent when done).

The compressed quota (defaults) is 40 calls per 4 s with a 0.1 s safety margin: the same
shape as production's 100 calls per 60 s with 0.25 s (a window of many calls, a margin a small
share of the period), only faster. The margin must cover the
time from a grant's decision to its request reaching the sandbox (the sender checks the grant's
age right before the request leaves) on a loaded machine whose sandbox shares our GIL; the
price is throughput, at most ``calls`` per ``period + margin``, so the utilisation ceiling is
``period / (period + margin)`` = 0.976 (production: 0.996). A thinner margin on a shorter
period (0.05 s on 2 s) leaves little room for a starved thread and measures the machine's load
rather than the quota.

Run it alone with ``python -m bench.quota_e2e``; ``measure()`` gives the rows of ``make bench``.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bench._app import app_settings, environment, fresh_queues, functions

if TYPE_CHECKING:
    from bench.__main__ import FigureRow

__all__ = [
    "SandboxProcess",
    "drain_with_workers",
    "fault_rows",
    "floor_utilisation",
    "invocation_row",
    "max_in_window",
    "measure",
    "run_quota_benchmark",
]

DELIVERED = "+358400000001"


def repeats(requests: Sequence[Mapping[str, Any]]) -> int:
    """POSTs the sandbox answered 409: a RequestId sent again. The sandbox never delivers a
    repeat, SmartDialog promises that only at best effort, so each counts as a duplicate."""
    return sum(1 for r in requests if r.get("status") == 409)


def max_in_window(times: Sequence[float], window: float) -> int:
    """The most of ``times`` (seconds) inside any half-open window ``[t, t + window)``."""
    ordered = sorted(times)
    best = 0
    for i, start in enumerate(ordered):
        best = max(best, bisect.bisect_left(ordered, start + window) - i)
    return best


#: What a real-rate figure must see none of: (key in a run's figures, label, unit).
FAULTS = (
    ("upstream_429", "upstream 429s", "calls"),
    ("duplicates", "duplicates", "messages"),
    ("lost", "lost", "messages"),
)


def fault_rows(prefix: str, figures: Sequence[Mapping[str, Any]]) -> list[FigureRow]:
    """One row per :data:`FAULTS` entry, summed over ``figures`` (runs, or runs' connections),
    each with the target 0."""
    return [
        {"figure": f"{prefix}{label}", "value": sum(f[key] for f in figures), "anchor": 1.0,
         "target": "<= 0", "unit": unit}
        for key, label, unit in FAULTS
    ]  # fmt: skip


def invocation_row(prefix: str, runs: Sequence[Mapping[str, Any]]) -> FigureRow:
    """Invocations of the sender that raised, summed over ``runs``, target 0: a run that counts
    no duplicate may still have one coming (a crashed invocation's message comes back after
    its lease, past the end of the run)."""
    return {"figure": f"{prefix}failed invocations", "value": sum(r["worker_errors"] for r in runs),
            "anchor": 1.0, "target": "<= 0", "unit": "invocations"}  # fmt: skip


def drain_with_workers(
    sender: Callable[[Any], None],
    *,
    workers: int,
    per_receive: int,
    done: Callable[[], bool],
    timeout: float,
) -> tuple[float, list[str], int]:
    """Play the Functions host: ``workers`` threads each receive up to ``per_receive`` outbound
    queue messages at a time, invoke ``sender`` (the app's real ``OutboundSender``) per message
    and delete it when it returned, until ``done()`` (asked every half second) or ``timeout``.
    Returns (elapsed seconds, worker errors, invocations that returned)."""
    from azure.functions.queue import QueueMessage

    from shared.names import OUTBOUND_QUEUE
    from shared.storage import queue_client

    stop = threading.Event()
    errors: list[str] = []
    invocations = Counter[str]()
    lock = threading.Lock()

    def worker() -> None:
        queue = queue_client(OUTBOUND_QUEUE)
        while not stop.is_set():
            # Small batches: a held message must be done before its visibility ends.
            batch = list(
                queue.receive_messages(
                    messages_per_page=per_receive, max_messages=per_receive, visibility_timeout=60
                )
            )
            if not batch:
                time.sleep(0.05)
                continue
            for message in batch:
                try:
                    sender(
                        QueueMessage(  # type: ignore[no-untyped-call]
                            id=message.id,
                            body=message.content.encode(),
                            dequeue_count=message.dequeue_count,
                        )
                    )
                except Exception as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                try:
                    queue.delete_message(message)
                except Exception as exc:
                    with lock:
                        errors.append(f"delete: {type(exc).__name__}")
                with lock:
                    invocations["ok"] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    deadline = started + timeout
    while time.monotonic() < deadline and not done():
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    return elapsed, errors, invocations["ok"]


def floor_utilisation(times: Sequence[float], calls: int, window: float) -> tuple[float, float]:
    """The real-quota utilisation of calls at ``times``: floor((N - 1) / calls) * window over
    the span from the first call to the last (the least time the quota lets N calls span,
    against the time they did); (utilisation, span)."""
    ordered = sorted(times)
    span = ordered[-1] - ordered[0] if len(ordered) > 1 else 0.0
    floor = (len(ordered) - 1) // calls * window
    return (floor / span if span else 0.0), span


def _histogram(times: Sequence[float], width: float) -> list[int]:
    """Calls in consecutive windows of ``width`` seconds from the first call (for diagnosis)."""
    if not times:
        return []
    start = min(times)
    counts = Counter(int((t - start) // width) for t in times)
    return [counts.get(i, 0) for i in range(max(counts) + 1)]


def _parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class SandboxProcess:
    """``python -m sandbox`` on a free port; its logs are read over its inspection API."""

    def __init__(
        self,
        quota_calls: int,
        quota_period: float,
        token: str = "sandbox-token",  # noqa: S107 - the sandbox's public test token
    ) -> None:
        import socket
        import subprocess
        import sys

        import httpx

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.api_url = self.url + "/api-integrations/v1"
        self.token = token
        self._process = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "--port", str(port), "--log-level", "WARNING",
             "--quota-calls", str(quota_calls), "--quota-period", str(quota_period),
             "--dlr-delay", "3600", "--static-token", token],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._http = httpx.Client(timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if self._http.get(self.url + "/sandbox/health").status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the sandbox did not start")

    def log(self, name: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self._http.get(f"{self.url}/sandbox/{name}").json()
        return entries

    def stop(self) -> None:
        self._http.close()
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except Exception:
            self._process.kill()


class _SandboxInProcess:
    """A :class:`SandboxServer` in this process (shares our GIL: a harsher test of the margin)."""

    def __init__(self, quota_calls: int, quota_period: float) -> None:
        from sandbox.server import SandboxServer

        self._server = SandboxServer(
            quota_calls=quota_calls, quota_period=quota_period, dlr_delay=3600
        ).start()
        self.api_url = self._server.api_url
        self.token = self._server.token

    def log(self, name: str) -> list[dict[str, Any]]:
        return self._server.state.snapshot(name.replace("-", "_"))

    def stop(self) -> None:
        self._server.stop()


def run_quota_benchmark(
    *,
    messages: int = 300,
    workers: int = 4,
    quota_calls: int = 40,
    quota_period: float = 4.0,
    safety_margin: float = 0.1,
    timeout: float = 180.0,
    azurite_connection_string: str | None = None,
    sandbox_in_process: bool = True,
    per_receive: int = 4,
    distinct_content: bool = False,
) -> dict[str, Any]:
    """Drain a backlog of ``messages`` sends with ``workers`` concurrent senders; the figures.

    Each worker receives up to ``per_receive`` messages at a time. All sends go to one address,
    so no two share a call; ``distinct_content`` gives each its own text too. Starts (and
    stops) its own sandbox, and its own Azurite unless a connection string is given.
    ``call_times`` are the sandbox's times of every POST /messages, sorted.
    """
    import azure.functions as func  # noqa: F401 - the app imports it anyway

    from devhost.azurite import start_azurite
    from shared.names import OUTBOUND_QUEUE

    azurite = None
    if azurite_connection_string is None:
        azurite = start_azurite()
        azurite_connection_string = azurite.connection_string
    sandbox: SandboxProcess | _SandboxInProcess = (
        _SandboxInProcess(quota_calls, quota_period)
        if sandbox_in_process
        else SandboxProcess(quota_calls, quota_period)
    )
    run = uuid.uuid4().hex[:8]
    env = {
        **app_settings(azurite_connection_string, sandbox),
        "SMARTDIALOG_QUOTA_CALLS": str(quota_calls),
        "SMARTDIALOG_QUOTA_PERIOD_SECONDS": str(quota_period),
        "SMARTDIALOG_QUOTA_SAFETY_MARGIN_SECONDS": str(safety_margin),
        "SMARTDIALOG_SEND_RETRY_BASE_SECONDS": "1",
    }
    try:
        with environment(env):
            from shared.storage import queue_client

            sender = functions()["OutboundSender"]
            fresh_queues()
            outbound = queue_client(OUTBOUND_QUEUE)
            ids = [f"bench-{run}-{i:05d}" for i in range(messages)]
            for i, message_id in enumerate(ids):
                body = {
                    "operation": "SendMessage",
                    "messageId": message_id,
                    "body": {
                        "Sender": "Bench",
                        "Content": f"Quota benchmark {i} $(n)"
                        if distinct_content
                        else "Quota benchmark $(n)",
                        "Recipients": [{"Address": DELIVERED, "Personalization": {"n": 1}}],
                    },
                }
                outbound.send_message(json.dumps(body))

            elapsed, errors, invoked = drain_with_workers(
                sender,
                workers=workers,
                per_receive=per_receive,
                done=lambda: len(sandbox.log("messages")) >= messages,
                timeout=timeout,
            )

            # Every POST /messages, including those the sandbox's quota refused before routing.
            requests = [
                r
                for r in sandbox.log("requests")
                if r.get("method") == "POST" and str(r.get("path", "")).endswith("/messages")
            ]
            times = [_parse_time(r["time"]) for r in requests]
            ok = [r for r in requests if r.get("status") == 200]
            per_request_id = Counter(str((r.get("body") or {}).get("RequestId")) for r in ok)
            duplicates = sum(count - 1 for count in per_request_id.values() if count > 1)
            duplicates += repeats(requests)
            lost = sum(1 for message_id in ids if per_request_id.get(message_id, 0) == 0)
            span = (max(times) - min(times)) if times else 0.0
            allowed = quota_calls * (span / quota_period + 1) if times else 1.0
            # The same, as a rate: calls per second after the first over the quota's rate.
            rate = (len(requests) - 1) / span / (quota_calls / quota_period) if span else 0.0
            return {
                "messages": messages,
                "workers": workers,
                "quota_calls": quota_calls,
                "quota_period": quota_period,
                "safety_margin": safety_margin,
                "elapsed_seconds": round(elapsed, 2),
                "upstream_calls": len(requests),
                "sent": len(ok),
                "utilisation": round(len(requests) / allowed, 4),
                "rate_utilisation": round(rate, 4),
                "max_in_window": max_in_window(times, quota_period),
                "upstream_429": sum(1 for r in requests if r.get("status") == 429),
                "duplicates": duplicates,
                "lost": lost,
                "invocations": invoked,
                "worker_errors": len(errors),
                "first_errors": errors[:3],
                "calls_per_period": _histogram(times, quota_period + safety_margin),
                "call_times": sorted(times),
                "sent_times": sorted(_parse_time(r["time"]) for r in ok),
            }
    finally:
        sandbox.stop()
        if azurite is not None:
            azurite.stop()


def measure() -> list[FigureRow]:
    """The rows for ``python -m bench`` (targets of issue 4, item 7)."""
    result = run_quota_benchmark()
    shape = (
        f"{result['quota_calls']} calls/{result['quota_period']:g} s, "
        f"margin {result['safety_margin']:g} s, {result['messages']} msgs, "
        f"{result['workers']} workers"
    )
    ceiling = result["quota_period"] / (result["quota_period"] + result["safety_margin"])
    note = (
        f"{result['elapsed_seconds']} s, {result['upstream_calls']} calls; ceiling "
        f"{ceiling:.3f}; burst-inclusive utilisation {result['utilisation']}"
    )
    return [
        {"figure": f"outbound quota utilisation (rate; {shape})",
         "value": result["rate_utilisation"], "anchor": 1.0, "target": "info", "note": note},
        {"figure": f"outbound max calls in a {result['quota_period']:g} s window ({shape})",
         "value": result["max_in_window"], "anchor": result["quota_calls"], "target": "<= 1.0",
         "unit": "calls"},
        {"figure": f"outbound upstream 429s ({shape})", "value": result["upstream_429"],
         "anchor": 1.0, "target": "<= 0", "unit": "calls"},
        {"figure": f"outbound duplicates ({shape})", "value": result["duplicates"],
         "anchor": 1.0, "target": "<= 0", "unit": "messages"},
        {"figure": f"outbound lost ({shape})", "value": result["lost"], "anchor": 1.0,
         "target": "<= 0", "unit": "messages"},
        invocation_row(f"outbound ({shape}) ", [result]),
    ]  # fmt: skip


if __name__ == "__main__":
    figures = run_quota_benchmark()
    figures.pop("call_times")
    print(json.dumps(figures, indent=2))
