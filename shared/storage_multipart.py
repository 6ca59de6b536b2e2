"""Table transactions without a thread pool of their own (``shared.storage`` installs this).

A table transaction is a ``multipart/mixed`` request: the batch, its changeset, and one
sub-request per entity. azure-core applies the sub-requests' policies (for the tables client,
only the one that sets the date headers) in a ``ThreadPoolExecutor`` made for that request, once
for the batch and once for the changeset, and the answer's parts' policies (none that do
anything) in a third one: a transaction of two entities starts five threads and waits for each
of them to start, paying for each in system time and thread switches. Measured with
``bench.bulk``'s single sends (1,500, two runs each way, alternating, on a machine whose timings
vary by 20% from run to run): the process's CPU time 26.6 and 29.3 s with this, 28.3 and 30.8 s
without; first POST to last recipient accepted 26.1 and 28.1 s with it, 28.8 and 31.7 s without.

:func:`install` replaces the two azure-core functions that do this with ones that apply the same
policies, in the same order, in the calling thread. It does so only where this azure-core keeps
them as expected (by name and parameters); otherwise the SDK's own stay, and that is logged
once. The asynchronous pipeline (which uses no threads for this) is not touched.
"""

from __future__ import annotations

import inspect
import logging
import threading
from typing import Any

__all__ = ["install"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, bool] = {}


def install() -> bool:
    """Replace azure-core's threaded multipart helpers with serial ones (once per process);
    whether they are replaced (the first call decides, later ones repeat its answer)."""
    with _lock:
        if "installed" not in _state:
            _state["installed"] = _install()
        return _state["installed"]


def _install() -> bool:
    try:
        return _replace()
    except Exception as exc:  # never a reason for a storage client not to be built
        log.info("table transactions keep azure-core's own multipart helpers: %r", exc)
        return False


def _replace() -> bool:
    from azure.core.pipeline import _base
    from azure.core.pipeline.transport import _base as transport_base
    from azure.core.rest import _http_response_impl
    from azure.core.utils import _pipeline_transport_rest_shared as shared

    pipeline = getattr(_base, "Pipeline", None)
    prepare = getattr(pipeline, "_prepare_multipart_mixed_request", None)
    parts = getattr(shared, "_parts_helper", None)
    users = [m for m in (_http_response_impl, transport_base) if hasattr(m, "_parts_helper")]
    if not (_takes(prepare, ["request"]) and _takes(parts, ["response"]) and len(users) == 2):
        log.info("table transactions keep azure-core's own multipart helpers (not as expected)")
        return False
    pipeline._prepare_multipart_mixed_request = staticmethod(_prepare)  # type: ignore[union-attr]
    for module in (shared, *users):
        module._parts_helper = _parts  # type: ignore[attr-defined]
    return True


def _takes(function: Any, names: list[str]) -> bool:
    try:
        return list(inspect.signature(function).parameters) == names
    except (TypeError, ValueError):
        return False


def _prepare(request: Any) -> None:
    """azure-core's ``Pipeline._prepare_multipart_mixed_request``, one sub-request after the
    other: a nested multipart first, then every policy's ``on_request`` on each."""
    from azure.core.pipeline import PipelineContext, PipelineRequest
    from azure.core.pipeline._tools import await_result

    info = request.multipart_mixed_info
    if not info:
        return
    requests, policies, options = info[0], info[1], info[3]
    for sub in requests:
        if sub.multipart_mixed_info:
            _prepare(sub)
        pipeline_request = PipelineRequest(sub, PipelineContext(None, **options))
        for policy in policies:
            await_result(policy.on_request, pipeline_request)


def _parts(response: Any) -> Any:
    """azure-core's ``_parts_helper``: the parts of a ``multipart/mixed`` answer, every policy's
    ``on_response`` applied to each, one after the other."""
    from azure.core.pipeline import PipelineContext, PipelineRequest, PipelineResponse
    from azure.core.pipeline._tools import await_result

    if not response.content_type or not response.content_type.startswith("multipart/mixed"):
        raise ValueError("only a multipart/mixed answer has parts")
    responses = response._get_raw_parts()
    if response.request.multipart_mixed_info:
        policies = response.request.multipart_mixed_info[1]
        for part in responses:
            context = PipelineContext(None)
            pipeline_request = PipelineRequest(part.request, context)
            pipeline_response = PipelineResponse(part.request, part, context=context)
            for policy in policies:
                await_result(policy.on_response, pipeline_request, pipeline_response)
    return responses
