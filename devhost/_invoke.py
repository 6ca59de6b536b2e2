"""Calling a user function the way the Python worker does, then flushing its output bindings.

Sync functions run on the calling thread (an HTTP connection thread or a queue worker thread), at
most ``PYTHON_THREADPOOL_THREAD_COUNT`` at a time like the worker's pool; async functions run on
one shared event loop, as in the worker. Output bindings are written only after the function
returned normally, as the host does.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from azure.functions import _abc

from devhost._metadata import FunctionSpec, QueueOutputSpec

__all__ = ["InvocationContext", "InvocationResult", "Invoker", "OutValue"]

#: The Python worker's default pool size on Python >= 3.9 (PYTHON_THREADPOOL_THREAD_COUNT unset).
DEFAULT_SYNC_THREADS = min(32, (os.cpu_count() or 1) + 4)


class OutValue(func.Out[Any]):
    """The object behind a ``func.Out[...]`` parameter."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class _TraceContext(_abc.TraceContext):
    def __init__(self, invocation_id: str) -> None:
        # A W3C traceparent built from the invocation id, so logs can correlate.
        self._parent = f"00-{invocation_id.replace('-', '')}-{uuid.uuid4().hex[:16]}-01"

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext(_abc.RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> Any:
        return None


class InvocationContext(func.Context):
    """``context: func.Context`` for one invocation."""

    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._local = threading.local()
        self._local.invocation_id = self._invocation_id

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> _TraceContext:
        return _TraceContext(self._invocation_id)

    @property
    def retry_context(self) -> _RetryContext:
        return _RetryContext()


@dataclass(frozen=True)
class InvocationResult:
    """What one successful invocation produced for its trigger's reply."""

    invocation_id: str
    http_response: Any  # the value bound to the http output (HttpResponse, str, bytes or None)


#: Writes one output binding's value: (binding, value) -> None. Raises if it cannot.
OutputWriter = Callable[[QueueOutputSpec, Any], None]


class Invoker:
    """Runs functions; owns the event loop for async ones."""

    def __init__(
        self,
        function_directory: str,
        write_output: OutputWriter,
        sync_threads: int | None = None,
    ) -> None:
        self._directory = function_directory
        self._write_output = write_output
        threads = sync_threads or int(
            os.environ.get("PYTHON_THREADPOOL_THREAD_COUNT") or DEFAULT_SYNC_THREADS
        )
        self._sync_slots = threading.BoundedSemaphore(threads)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="devhost-asyncio", daemon=True
        )

    def start(self) -> None:
        """Start the event loop thread."""
        self._loop_thread.start()

    def stop(self) -> None:
        """Stop the event loop (call after in-flight work has finished)."""
        if self._loop_thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout=5)

    def invoke(
        self,
        spec: FunctionSpec,
        trigger_param: str,
        trigger_value: Any,
        invocation_id: str | None = None,
    ) -> InvocationResult:
        """Call ``spec``'s function with its trigger value and flush its outputs.

        Raises whatever the function (or an output write) raised; nothing is written then.
        """
        kwargs: dict[str, Any] = {trigger_param: trigger_value}
        outs: dict[str, OutValue] = {}
        for binding in spec.queue_outputs:
            if binding.param != "$return":
                outs[binding.param] = OutValue()
        if spec.http_output and spec.http_output != "$return":
            outs[spec.http_output] = OutValue()
        kwargs.update(outs)
        context = InvocationContext(invocation_id or str(uuid.uuid4()), spec.name, self._directory)
        if spec.wants_context:
            kwargs["context"] = context
        if spec.is_async:
            future: Future[Any] = asyncio.run_coroutine_threadsafe(
                spec.user_function(**kwargs), self._loop
            )
            result = future.result()
        else:
            with self._sync_slots:
                result = spec.user_function(**kwargs)
        for binding in spec.queue_outputs:
            value = result if binding.param == "$return" else outs[binding.param].get()
            if value is not None:
                self._write_output(binding, value)
        http_value = None
        if spec.http_output == "$return":
            http_value = result
        elif spec.http_output:
            http_value = outs[spec.http_output].get()
        return InvocationResult(context.invocation_id, http_value)
