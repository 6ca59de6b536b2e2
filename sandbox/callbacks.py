"""Outbound HTTP from the sandbox: delivery-report GETs and inbound-message webhook POSTs.

Callbacks never run on a request thread: :class:`DeferredCalls` runs them after a delay on a small
worker pool, and a failure is logged and recorded, never raised to the API caller.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["CallbackResult", "DeferredCalls", "http_call"]

log = logging.getLogger("sandbox.callbacks")
# Callbacks go straight to the target, ignoring HTTP(S)_PROXY, which would usually not reach a local
# test server.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class CallbackResult:
    """What happened to one callback: the HTTP status received, or the connection error."""

    status: int | None
    error: str | None = None


def http_call(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> CallbackResult:
    """Make one HTTP request; any answer (including 4xx/5xx) is a result, a connection failure is an
    error.
    """
    if urlsplit(url).scheme not in ("http", "https"):
        return CallbackResult(status=None, error=f"not an http(s) URL: {url}")
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read()
            return CallbackResult(status=response.status)
    except urllib.error.HTTPError as exc:
        return CallbackResult(status=exc.code)
    except (OSError, ValueError) as exc:
        return CallbackResult(status=None, error=f"{type(exc).__name__}: {exc}")


class DeferredCalls:
    """Runs functions after a delay on background threads; ``cancel_all`` drops what has not started
    yet.
    """

    def __init__(self, workers: int = 4) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox-callback")
        self._thread = threading.Thread(target=self._run, name="sandbox-scheduler", daemon=True)
        self._thread.start()

    def schedule(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), fn))
            self._cond.notify()

    def cancel_all(self) -> None:
        with self._cond:
            self._heap.clear()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(
                        timeout=self._heap[0][0] - time.monotonic() if self._heap else None
                    )
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            self._pool.submit(self._guarded, fn)

    @staticmethod
    def _guarded(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # a callback bug must not kill the worker
            log.exception("callback failed")
