"""The dev host: the app's functions behind an HTTP server and queue listeners."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
from azure.functions import _abc

from devhost._eventgrid import WEBHOOK_PATH, query_name, serve_eventgrid
from devhost._hostjson import HostOptions, load_host_json
from devhost._http import HttpReply, HttpServer, IncomingRequest
from devhost._invoke import Invoker
from devhost._metadata import FunctionSpec, HttpTriggerSpec, read_functions
from devhost._queues import QueueListener, StorageNotConfiguredError, StorageQueues
from devhost._routes import RouteTable
from shared.logs import loggable_text

__all__ = ["DevHost", "HttpEndpoint"]

log = logging.getLogger("devhost")
access_log = logging.getLogger("devhost.http")

# Framing headers are the server's business, not the function's.
_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass(frozen=True)
class HttpEndpoint:
    """One HTTP-triggered function as served."""

    spec: FunctionSpec
    trigger: HttpTriggerSpec
    methods: frozenset[str]


def _problem(status: int, title: str, detail: str | None = None, **extra: Any) -> HttpReply:
    doc: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        doc["detail"] = detail
    doc.update(extra)
    return HttpReply(
        status, [("Content-Type", "application/problem+json")], json.dumps(doc).encode()
    )


def _to_reply(value: Any) -> HttpReply:
    """Turn what the function bound to its http output into a reply, as the worker does."""
    if isinstance(value, _abc.HttpResponse):
        headers = [(k, v) for k, v in value.headers.items() if k.lower() not in _HOP_BY_HOP]
        if not any(k.lower() == "content-type" for k, _ in headers):
            mimetype = value.mimetype
            content_type = (
                f"{mimetype}; charset={value.charset}" if mimetype.startswith("text/") else mimetype
            )
            headers.append(("Content-Type", content_type))
        return HttpReply(int(value.status_code), headers, value.get_body() or b"")
    if isinstance(value, str):
        return HttpReply(200, [("Content-Type", "text/plain; charset=utf-8")], value.encode())
    if isinstance(value, bytes):
        return HttpReply(200, [("Content-Type", "application/octet-stream")], value)
    if value is None:
        return HttpReply(204, [])
    raise TypeError(f"an HTTP function must return HttpResponse, str or bytes, not {type(value)}")


class DevHost:
    """Serve ``app``'s HTTP triggers and run its queue triggers.

    ``DevHost(app, "host.json", port=0).start()`` binds (port 0: a free one), starts the listeners
    (unless ``queues=False``) and returns at once; :attr:`url` is then the base URL and
    :meth:`stop` shuts everything down. Usable as a context manager.
    """

    def __init__(
        self,
        app: func.FunctionApp,
        host_json: str | Path | HostOptions = "host.json",
        *,
        host: str = "127.0.0.1",
        port: int = 7071,
        queues: bool = True,
        function_directory: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        access_log_enabled: bool = True,
    ) -> None:
        self.options = (
            host_json if isinstance(host_json, HostOptions) else load_host_json(host_json)
        )
        self.functions = read_functions(app)
        directory = Path(
            function_directory
            or (Path(host_json).parent if not isinstance(host_json, HostOptions) else ".")
        )
        self.storage = StorageQueues(self.options.queues.message_encoding, environ)
        self.invoker = Invoker(str(directory.resolve()), self.storage.write_output)
        self._access_log = access_log_enabled
        self.routes: RouteTable[HttpEndpoint] = RouteTable()
        self.skipped: list[tuple[FunctionSpec, str]] = []
        for spec in self.functions:
            if spec.unsupported:
                self.skipped.append((spec, "unsupported bindings: " + ", ".join(spec.unsupported)))
            elif spec.http is not None:
                endpoint = HttpEndpoint(spec, spec.http, frozenset(spec.http.methods))
                self.routes.add(spec.http.route, endpoint)
            elif spec.queue is None and spec.event_grid is None:
                self.skipped.append((spec, "no HTTP or queue trigger"))
        self._queues_enabled = queues
        self.listeners: list[QueueListener] = []
        #: Queue-triggered functions whose listener could not start, and why.
        self.listener_errors: dict[str, str] = {}
        self._prefix = f"/{self.options.route_prefix}" if self.options.route_prefix else ""
        self._http = HttpServer(host, port, self._dispatch)
        self._started = False

    # --- lifecycle ---

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:7071``."""
        host, port = self._http.address
        return f"http://{host}:{port}"

    def endpoint_url(self, route: str) -> str:
        """The public URL of a route template, with the prefix (``{params}`` left as they are)."""
        return f"{self.url}{self._prefix}/{route.strip('/')}"

    def start(self) -> DevHost:
        """Start serving HTTP and (unless disabled) polling queues; returns self."""
        self.invoker.start()
        self._started = True
        if self._queues_enabled:
            self.start_queues()  # first, so the host answers only once its queues are ready
        self._http.start()
        return self

    def start_queues(self) -> None:
        """Start one listener per queue-triggered function (creating the queues if missing).
        One whose storage setting is missing or unreadable is logged and left out, and the
        others and HTTP go on (``/api/health`` answers 503 naming the setting, and so do the
        functions that use storage): its reason is in :attr:`listener_errors`. Any other failure
        (storage unreachable, refusing the credentials) raises: the host is of no use then."""
        if self.listeners:
            return
        for spec in self.functions:
            if spec.queue is not None and not spec.unsupported:
                listener = QueueListener(spec, self.options.queues, self.storage, self.invoker)
                try:
                    listener.start()
                except (StorageNotConfiguredError, ValueError) as exc:  # the SDK's for a bad one
                    self.listener_errors[spec.name] = f"{type(exc).__name__}: {exc}"
                    log.error("the listener for function %s was unable to start: %s",
                              spec.name, self.listener_errors[spec.name])  # fmt: skip
                    continue
                self.listeners.append(listener)

    def stop_queues(self, grace: float = 10.0) -> bool:
        """Stop the listeners, letting running messages finish (bounded); True if all finished."""
        listeners, self.listeners = self.listeners, []
        deadline = time.monotonic() + grace
        finished = True
        for listener in listeners:
            finished &= listener.stop(max(0.0, deadline - time.monotonic()))
        return finished

    def stop(self, grace: float = 10.0) -> bool:
        """Stop accepting, finish in-flight work (``grace`` s at most); True if all finished."""
        if not self._started:
            return True
        self._started = False
        deadline = time.monotonic() + grace
        finished = self._http.stop(grace)
        finished &= self.stop_queues(max(0.0, deadline - time.monotonic()))
        self.invoker.stop()
        return finished

    def __enter__(self) -> DevHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP ---

    def _dispatch(self, request: IncomingRequest) -> HttpReply:
        started = time.perf_counter()
        reply, name = self._route(request)
        if self._access_log:
            # The path only: query strings carry function keys and URL tokens, and paths may
            # carry phone numbers (percent-encoded too), which the log must never hold whole.
            access_log.info(
                "%s %s -> %d (%s, %.1f ms)",
                request.method,
                loggable_text(unquote(urlsplit(request.target).path), 1000),
                reply.status,
                name,
                (time.perf_counter() - started) * 1000,
            )
        return reply

    def _route(self, request: IncomingRequest) -> tuple[HttpReply, str]:
        parts = urlsplit(request.target)
        path = parts.path
        if path in ("", "/") and request.method in ("GET", "HEAD"):
            body = (
                b"SmartDialog dev host is running. Functions are under "
                + (self._prefix or "/").encode()
            )
            return HttpReply(200, [("Content-Type", "text/plain; charset=utf-8")], body), "-"
        if path.lower() == WEBHOOK_PATH:
            return self._invoke_eventgrid(request, parts.query), query_name(parts.query)
        if self._prefix:
            if path != self._prefix and not path.startswith(self._prefix + "/"):
                return _problem(404, "Not Found", f"No function serves {path}."), "-"
            path = path[len(self._prefix) :]
        hits = self.routes.find(path)
        for route, values in hits:
            if request.method in route.target.methods:
                return self._invoke_http(route.target, request, parts.query, values), (
                    route.target.spec.name
                )
        if hits:
            allowed = sorted({m for route, _ in hits for m in route.target.methods})
            reply = _problem(
                405, "Method Not Allowed", f"{request.method} is not allowed on {parts.path}."
            )
            reply.headers.append(("Allow", ", ".join(allowed)))
            return reply, hits[0][0].target.spec.name
        return _problem(404, "Not Found", f"No function serves {parts.path}."), "-"

    def _invoke_http(
        self,
        endpoint: HttpEndpoint,
        request: IncomingRequest,
        query: str,
        route_values: Mapping[str, str],
    ) -> HttpReply:
        headers: dict[str, str] = {}
        for name, value in request.headers:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        params: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            # ASP.NET joins repeated query keys with ',' before the worker sees them.
            params[key] = f"{params[key]},{value}" if key in params else value
        host = request.host or "{}:{}".format(*self._http.address)
        http_request = func.HttpRequest(
            method=request.method,
            url=f"http://{host}{request.target}",
            headers=headers,
            params=params,
            route_params=dict(route_values),
            body=request.body,
        )
        invocation_id = str(uuid.uuid4())
        try:
            result = self.invoker.invoke(
                endpoint.spec, endpoint.trigger.param, http_request, invocation_id
            )
            return _to_reply(result.http_response)
        except Exception:
            log.exception("Executed '%s' (Failed, Id=%s)", endpoint.spec.name, invocation_id)
            return _problem(500, "Internal Server Error", invocationId=invocation_id)

    def _invoke_eventgrid(self, request: IncomingRequest, query: str) -> HttpReply:
        headers = {name.lower(): value for name, value in request.headers}
        functions = {spec.name: spec for spec in self.functions if spec.event_grid is not None}
        params = dict(parse_qsl(query, keep_blank_values=True))
        return serve_eventgrid(
            functions, self.invoker, request.method, headers, params, request.body
        )

    # --- start-up summary ---

    def describe(self) -> list[str]:
        """Human-readable lines: each function with its trigger, methods, URL and auth level."""
        lines: list[str] = []
        for spec in self.functions:
            if spec.http is not None and not spec.unsupported:
                methods = ",".join(spec.http.methods)
                lines.append(
                    f"  {spec.name}: [{methods}] {self.endpoint_url(spec.http.route)}"
                    f"  (authLevel {spec.http.auth_level})"
                )
            elif spec.queue is not None and not spec.unsupported:
                state = "" if self._queues_enabled else "  [not polled: --no-queues]"
                lines.append(
                    f"  {spec.name}: queueTrigger {spec.queue.queue_name}"
                    f" (connection {spec.queue.connection}){state}"
                )
            elif spec.event_grid is not None and not spec.unsupported:
                lines.append(
                    f"  {spec.name}: eventGridTrigger {self.url}{WEBHOOK_PATH}"
                    f"?functionName={spec.name}"
                )
        for spec, reason in self.skipped:
            lines.append(f"  {spec.name}: NOT RUN by the dev host ({reason})")
        return lines
