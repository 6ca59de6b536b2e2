"""The host's Event Grid webhook, ``/runtime/webhooks/eventgrid?functionName=<name>``, for
``eventGridTrigger`` functions, as the Functions host serves it:

- ``aeg-event-type: SubscriptionValidation`` (Event Grid schema): answers
  ``{"validationResponse": <data.validationCode>}``, the function is not called;
- ``OPTIONS`` with ``WebHook-Request-Origin`` (CloudEvents schema): answers 200 with
  ``WebHook-Allowed-Origin``;
- ``aeg-event-type: Notification`` (or no such header, for CloudEvents): the body is one event or
  an array; the function runs once per event (the worker decodes each by its schema, or hands
  over its JSON as text, a ``str``, to a parameter annotated ``str`` or ``bytes``: its generic
  binding passes a JSON payload as text whatever the annotation) and the host
  answers 202 when all ran, 500 when one failed (Event Grid then retries the delivery);
- ``aeg-event-type: Unsubscribe``: 202, nothing called.

The real host checks the ``eventgrid_extension`` system key in ``code``; locally, like
``func start``, no key is needed.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from azure.functions import meta
from azure.functions.eventgrid import EventGridEventInConverter

from devhost._http import HttpReply
from devhost._invoke import Invoker
from devhost._metadata import FunctionSpec

__all__ = ["WEBHOOK_PATH", "serve_eventgrid"]

log = logging.getLogger("devhost")

WEBHOOK_PATH = "/runtime/webhooks/eventgrid"
#: Events of one batch run at once, up to this many (Event Grid batches hold up to 5,000).
BATCH_WORKERS = 16


def _reply(
    status: int, body: Any = None, headers: list[tuple[str, str]] | None = None
) -> HttpReply:
    if body is None:
        return HttpReply(status, headers or [])
    payload = json.dumps(body).encode()
    return HttpReply(status, [*(headers or []), ("Content-Type", "application/json")], payload)


def serve_eventgrid(
    functions: Mapping[str, FunctionSpec],
    invoker: Invoker,
    method: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    body: bytes,
) -> HttpReply:
    """One request to the Event Grid webhook; ``headers`` keys are lower-case."""
    name = query.get("functionName", "")
    spec = next((s for n, s in functions.items() if n.lower() == name.lower()), None)
    if spec is None or spec.event_grid is None:
        return _reply(404, {"error": f"No Event Grid triggered function named '{name}'."})
    if method == "OPTIONS":
        origin = headers.get("webhook-request-origin")
        if not origin:
            return _reply(400, {"error": "WebHook-Request-Origin is missing."})
        return _reply(200, headers=[("WebHook-Allowed-Origin", origin)])
    if method != "POST":
        return _reply(405, headers=[("Allow", "POST, OPTIONS")])
    kind = headers.get("aeg-event-type", "")
    try:
        value = json.loads(body)
    except ValueError:
        return _reply(400, {"error": "The body is not JSON."})
    events = value if isinstance(value, list) else [value]
    if kind == "SubscriptionValidation":
        first = events[0] if events and isinstance(events[0], dict) else {}
        code = (first.get("data") or {}).get("validationCode")
        if not code:
            return _reply(400, {"error": "No validationCode in the validation event."})
        return _reply(200, {"validationResponse": code})
    if kind == "Unsubscribe":
        return _reply(202)
    cloud = all(isinstance(e, dict) and "specversion" in e for e in events)
    if kind != "Notification" and not (kind == "" and cloud):
        return _reply(400, {"error": f"Unsupported aeg-event-type '{kind}'."})

    # As the host's extension does: every event of the batch at once, each its own invocation,
    # then 500 (Event Grid retries the whole batch) if any failed.
    def run(event: object) -> str | None:
        invocation_id = str(uuid.uuid4())
        try:
            text = json.dumps(event)
            decoded: Any = text  # str or bytes annotated: the worker's generic binding, str
            if spec.trigger_as is None:
                decoded = EventGridEventInConverter.decode(
                    meta.Datum(text, "json"), trigger_metadata={}
                )
            assert spec.event_grid is not None
            invoker.invoke(spec, spec.event_grid.param, decoded, invocation_id)
        except Exception:
            log.exception("Executed '%s' (Failed, Id=%s)", spec.name, invocation_id)
            return invocation_id
        return None

    with ThreadPoolExecutor(max_workers=min(len(events), BATCH_WORKERS) or 1) as pool:
        failed = [i for i in pool.map(run, events) if i is not None]
    if failed:
        return _reply(500, {"error": "The function failed.", "invocationId": failed[0]})
    return _reply(202)


def query_name(query: str) -> str:
    """The ``functionName`` of a webhook query string (for the access log)."""
    from urllib.parse import parse_qs

    return (parse_qs(query).get("functionName") or ["-"])[0]
