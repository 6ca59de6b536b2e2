"""What the app declares: each function's trigger, output bindings and parameters, read once.

Only the function metadata the Functions host itself sees is used (``app.get_functions()`` and each
function's raw binding JSON), so a new function needs no change in the dev host.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func

__all__ = [
    "EventGridTriggerSpec",
    "FunctionSpec",
    "HttpTriggerSpec",
    "MetadataError",
    "QueueOutputSpec",
    "QueueTriggerSpec",
    "load_app",
    "read_functions",
]

DEFAULT_CONNECTION = "AzureWebJobsStorage"
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE")


class MetadataError(RuntimeError):
    """The app cannot be loaded, or declares something the dev host cannot run."""


@dataclass(frozen=True)
class HttpTriggerSpec:
    """An ``httpTrigger`` binding: route template (no prefix), methods, auth level."""

    param: str
    route: str
    methods: tuple[str, ...]
    auth_level: str


@dataclass(frozen=True)
class QueueTriggerSpec:
    """A ``queueTrigger`` binding: the queue and the app setting that holds its connection."""

    param: str
    queue_name: str
    connection: str


@dataclass(frozen=True)
class EventGridTriggerSpec:
    """An ``eventGridTrigger`` binding (served at ``/runtime/webhooks/eventgrid``)."""

    param: str


@dataclass(frozen=True)
class QueueOutputSpec:
    """A ``queue`` output binding; ``param`` is ``$return`` for the return value."""

    param: str
    queue_name: str
    connection: str


@dataclass(frozen=True)
class FunctionSpec:
    """One function of the app, as the dev host runs it."""

    name: str
    user_function: Callable[..., Any]
    is_async: bool
    http: HttpTriggerSpec | None = None
    queue: QueueTriggerSpec | None = None
    event_grid: EventGridTriggerSpec | None = None
    http_output: str | None = None  # name of the http output binding ($return or an Out param)
    queue_outputs: tuple[QueueOutputSpec, ...] = ()
    wants_context: bool = False
    trigger_annotation: Any = None
    unsupported: tuple[str, ...] = field(default=())

    @property
    def trigger_as(self) -> type | None:
        """``str`` or ``bytes`` when the trigger's parameter is annotated so (the worker then
        binds it as generic: the payload as text or bytes, no converter), else None."""
        return next((t for t in (str, bytes) if self.trigger_annotation in (t, t.__name__)), None)

    @property
    def trigger_kind(self) -> str:
        """``http``, ``queue``, ``eventgrid`` or ``unsupported``."""
        if self.http is not None:
            return "http"
        if self.queue is not None:
            return "queue"
        if self.event_grid is not None:
            return "eventgrid"
        return "unsupported"


def load_app(spec: str, script_root: str | Path = ".") -> func.FunctionApp:
    """Import ``module:attribute`` (default attribute ``app``) with ``script_root`` on sys.path."""
    root = str(Path(script_root).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise MetadataError(f"could not import {module_name!r}: {exc!r}") from exc
    app = getattr(module, attribute or "app", None)
    if not isinstance(app, func.FunctionApp):
        raise MetadataError(f"{spec!r} is not an azure.functions.FunctionApp")
    return app


def user_function_name(function: Any) -> str:
    """The Python name of a function the app did not name (the host then uses it too)."""
    return str(function.get_user_function().__name__)


def _method_names(raw: Any) -> tuple[str, ...]:
    if not raw:
        return ALL_METHODS  # the host's default: every method
    return tuple(str(m).upper() for m in raw)


# An app can be indexed once: a second get_functions() call fails its own name validation. The
# worker indexes once too; every DevHost, test and benchmark on the same app shares that result.
_FUNCTIONS: weakref.WeakKeyDictionary[func.FunctionApp, tuple[func.Function, ...]] = (
    weakref.WeakKeyDictionary()
)
_INDEXED: weakref.WeakKeyDictionary[func.FunctionApp, list[FunctionSpec]] = (
    weakref.WeakKeyDictionary()
)


def app_functions(app: func.FunctionApp) -> tuple[func.Function, ...]:
    """``app.get_functions()``, called once per app object; use this instead of calling it."""
    if app not in _FUNCTIONS:
        _FUNCTIONS[app] = tuple(app.get_functions())
    return _FUNCTIONS[app]


def read_functions(app: func.FunctionApp) -> list[FunctionSpec]:
    """Every function of ``app`` with its bindings, in declaration order (indexed once per app)."""
    if app not in _INDEXED:
        _INDEXED[app] = _index(app)
    return list(_INDEXED[app])


def _index(app: func.FunctionApp) -> list[FunctionSpec]:
    specs: list[FunctionSpec] = []
    for function in app_functions(app):
        name = function.get_function_name() or user_function_name(function)
        user_function = function.get_user_function()
        params = inspect.signature(user_function).parameters
        bindings = [json.loads(raw) for raw in function.get_raw_bindings()]
        http: HttpTriggerSpec | None = None
        queue: QueueTriggerSpec | None = None
        event_grid: EventGridTriggerSpec | None = None
        http_output: str | None = None
        outputs: list[QueueOutputSpec] = []
        unsupported: list[str] = []
        for binding in bindings:
            kind = str(binding.get("type", ""))
            direction = str(binding.get("direction", "")).upper()
            bname = str(binding.get("name", ""))
            if kind == "httpTrigger":
                http = HttpTriggerSpec(
                    param=bname,
                    route=str(binding.get("route") or name),
                    methods=_method_names(binding.get("methods")),
                    auth_level=str(binding.get("authLevel", "function")).lower(),
                )
            elif kind == "queueTrigger":
                queue = QueueTriggerSpec(
                    param=bname,
                    queue_name=str(binding["queueName"]),
                    connection=str(binding.get("connection") or DEFAULT_CONNECTION),
                )
            elif kind == "eventGridTrigger":
                event_grid = EventGridTriggerSpec(param=bname)
            elif kind == "http" and direction == "OUT":
                http_output = bname
            elif kind == "queue" and direction == "OUT":
                outputs.append(
                    QueueOutputSpec(
                        param=bname,
                        queue_name=str(binding["queueName"]),
                        connection=str(binding.get("connection") or DEFAULT_CONNECTION),
                    )
                )
            else:
                unsupported.append(f"{kind} ({direction.lower() or '?'})")
        trigger = http or queue or event_grid
        trigger_param = trigger.param if trigger else None
        annotation = (
            params[trigger_param].annotation if trigger_param and trigger_param in params else None
        )
        specs.append(
            FunctionSpec(
                name=name,
                user_function=user_function,
                is_async=inspect.iscoroutinefunction(user_function),
                http=http,
                queue=queue,
                event_grid=event_grid,
                http_output=http_output,
                queue_outputs=tuple(outputs),
                # The Python worker passes the invocation context to a parameter named 'context'.
                wants_context="context" in params,
                trigger_annotation=annotation,
                unsupported=tuple(unsupported),
            )
        )
    return specs
