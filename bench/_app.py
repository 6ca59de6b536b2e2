"""What the figures that run the app itself share: its settings, its queues, its functions called
in process, and the dev host running its queue triggers."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "accepted_upstream",
    "app_settings",
    "environment",
    "fresh_queues",
    "functions",
    "post",
    "run_host_until",
]

REPO = Path(__file__).resolve().parent.parent


def app_settings(storage: str, sandbox: Any) -> dict[str, str]:
    """The app settings of a run against ``storage`` (a connection string) and a sandbox (its
    ``api_url`` and ``token``). The quota settings are the app's defaults unless added."""
    return {
        "AzureWebJobsStorage": storage,
        "SMARTDIALOG_BASE_URL": sandbox.api_url,
        "SMARTDIALOG_ACCESS_TOKEN": sandbox.token,
        "SMARTDIALOG_CUSTOMER_ID": "1001",
        "SMARTDIALOG_SERVICE_ID": "s-1001-oneway",
        "SMARTDIALOG_CALLBACK_SECRETS": "bench-callback-secret-of-at-least-32-bytes",
        "AZURE_FUNCTIONS_ENVIRONMENT": "Development",  # a local run: localhost URLs are fine
    }


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block, the settings and sender caches reset on the
    way in and out (so the app builds its clients from them)."""
    from shared.outbound import reset_sender_cache
    from shared.settings import reset_settings_cache

    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    reset_settings_cache()
    reset_sender_cache()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_settings_cache()
        reset_sender_cache()


def fresh_queues() -> None:
    """The outbound, events and dead-letter queues of the current settings, made and empty."""
    from shared.names import EVENTS_QUEUE, OUTBOUND_DEAD_LETTER_QUEUE, OUTBOUND_QUEUE
    from shared.storage import queue_client

    for name in (OUTBOUND_QUEUE, EVENTS_QUEUE, OUTBOUND_DEAD_LETTER_QUEUE):
        queue = queue_client(name)
        with contextlib.suppress(Exception):
            queue.create_queue()
        queue.clear_messages()


@functools.cache
def functions() -> dict[str, Any]:
    """The app's functions by name, as the host would call them."""
    from devhost import app_functions
    from function_app import app

    return {str(f.get_function_name()): f.get_user_function() for f in app_functions(app)}


def post(name: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    """POST ``body`` to the app's HTTP function ``name`` in process (a real ``HttpRequest``);
    the JSON of its answer, which must be 202."""
    import azure.functions as func

    request = func.HttpRequest(
        method="POST", url=f"http://localhost:7071/api/{name}", headers=headers or {},
        params={}, route_params={}, body=json.dumps(body).encode(),
    )  # fmt: skip
    response = functions()[name](request)
    assert response.status_code == 202, response.get_body()[:300]
    return json.loads(response.get_body())


def accepted_upstream(sandbox: Any) -> set[str]:
    """The addresses an in-process sandbox accepted a message for so far."""
    return {r["address"] for m in sandbox.state.snapshot("messages") for r in m["recipients"]}


def run_host_until(done: Callable[[], bool], timeout: float) -> float:
    """Run the app's queue triggers under the dev host (the host's queue semantics from
    host.json: batches of 16, a new batch when 8 are left, polling backoff up to 2 s, sync
    functions on PYTHON_THREADPOOL_THREAD_COUNT threads) until ``done()`` (asked every half
    second) or ``timeout``; when that was (``time.monotonic()``). The host has stopped, its
    running invocations ended, when this returns."""
    from devhost import DevHost
    from function_app import app

    host = DevHost(app, REPO / "host.json", port=0, access_log_enabled=False)
    host.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done():
            time.sleep(0.5)
        return time.monotonic()
    finally:
        host.stop(grace=60)
