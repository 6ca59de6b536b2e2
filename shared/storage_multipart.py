"""Table transactions without thread pools or the e-mail package (``shared.storage`` installs it).

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

azure-core also writes the request's body with the standard library's e-mail generator and reads
the answer with its e-mail parser, which compiles a regular expression for every boundary it
meets (each transaction has two new ones) and parses every header through the e-mail header
registry. :func:`install` replaces those two helpers too: the body is written directly, byte for
byte as the generator writes it, and the answer is split at its boundaries; a shape either might
get wrong (a boundary that needs quoting, a preamble, an encoded part) is left to azure-core's.
Measured in process, 500 sequential single sends each way, three runs alternating: 9.1 to 11.7 ms
of CPU time per accepted send with them, 12.1 to 13.3 ms without; a 100-entity answer splits in
0.4 ms where the e-mail parser takes 4.8 ms.
"""

from __future__ import annotations

import inspect
import logging
import re
import threading
from typing import Any

__all__ = ["install"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, bool] = {}
#: azure-core's own helpers, kept for the shapes ours leave to them.
_sdk: dict[str, Any] = {}

_SHARED = "azure.core.utils._pipeline_transport_rest_shared"
_RESPONSES = ("azure.core.rest._http_response_impl", "azure.core.pipeline.transport._base")
#: The azure-core helpers replaced (in ``_SHARED``): their parameters, and the modules that
#: import each by name (so they are replaced there too).
_HELPERS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "_parts_helper": (["response"], _RESPONSES),
    "_get_raw_parts_helper": (["response", "http_response_type"], _RESPONSES),
    "_prepare_multipart_body_helper": (
        ["http_request", "content_index"],
        ("azure.core.rest._helpers", "azure.core.pipeline.transport._base"),
    ),
}
#: A boundary the e-mail generator writes as given (one it might quote goes to azure-core's).
_PLAIN = re.compile(r"[A-Za-z0-9_-]{1,70}")
_LINE_END = re.compile(rb"\r\n|\r|\n")


def install() -> bool:
    """Replace azure-core's multipart helpers (the module's docstring says which, and why; once
    per process); whether they are replaced (the first call decides, later ones repeat it)."""
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
    import importlib

    from azure.core.pipeline import _base

    shared = importlib.import_module(_SHARED)
    pipeline = getattr(_base, "Pipeline", None)
    expected = _takes(getattr(pipeline, "_prepare_multipart_mixed_request", None), ["request"])
    for name, (params, users) in _HELPERS.items():
        expected = expected and _takes(getattr(shared, name, None), params)
        expected = expected and all(hasattr(importlib.import_module(u), name) for u in users)
    if not expected:
        log.info("table transactions keep azure-core's own multipart helpers (not as expected)")
        return False
    ours = {"_parts_helper": _parts, "_get_raw_parts_helper": _raw_parts,
            "_prepare_multipart_body_helper": _body}  # fmt: skip
    for name, (_, users) in _HELPERS.items():
        _sdk.setdefault(name, getattr(shared, name))  # the first: azure-core's, not ours
        for module in (shared, *map(importlib.import_module, users)):
            setattr(module, name, ours[name])
    pipeline._prepare_multipart_mixed_request = staticmethod(_prepare)  # type: ignore[union-attr]
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


def _body(http_request: Any, content_index: int = 0) -> int:
    """azure-core's ``_prepare_multipart_body_helper``: a multipart request's body, written out
    directly rather than through the e-mail generator, byte for byte as it writes it (parts'
    line ends made CRLF, tests/test_storage_multipart.py compares the two); a boundary that
    generator might quote goes to azure-core's own. The next part's ``Content-ID``."""
    info = http_request.multipart_mixed_info
    if not info:
        return 0
    requests, boundary = info[0], info[2]
    nested = [r.multipart_mixed_info[2] for r in requests if r.multipart_mixed_info]
    if not requests or not all(b and _PLAIN.fullmatch(b) for b in [boundary, *nested]):
        return int(_sdk["_prepare_multipart_body_helper"](http_request, content_index))
    delimiter, chunks = b"--" + boundary.encode("ascii"), []
    for request in requests:
        if request.multipart_mixed_info:
            content_index = request.prepare_multipart_body(content_index=content_index)
            head = f"Content-Type: {request.headers['Content-Type']}\r\n".encode()
            payload = request.serialize()
            payload = payload[payload.index(b"--") :]  # without the request line and headers
        else:
            head = (b"Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
                    b"Content-ID: %d\r\n" % content_index)  # fmt: skip
            payload = request.serialize()
            content_index += 1
        chunks.append(delimiter + b"\r\n" + head + b"\r\n" + _LINE_END.sub(b"\r\n", payload))
    http_request.set_bytes_body(b"\r\n".join(chunks) + b"\r\n" + delimiter + b"--\r\n")
    http_request.headers["Content-Type"] = "multipart/mixed; boundary=" + boundary
    return content_index


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


def _raw_parts(response: Any, http_response_type: Any) -> Any:
    """azure-core's ``_get_raw_parts_helper``: the parts of a ``multipart/mixed`` answer, split
    at its boundaries (:func:`split`) rather than by the standard library's e-mail parser (a
    quarter of an accept's CPU time: it compiles a regular expression for each new boundary,
    and every answer has two); an answer of another shape goes to azure-core's own."""
    parts = split(response.content_type or "", response.body())
    if parts is None:
        return _sdk["_get_raw_parts_helper"](response, http_response_type)
    requests = response.request.multipart_mixed_info[0]
    return response._decode_parts(Part("multipart/mixed", parts), http_response_type, requests)


class Part:
    """What azure-core's ``_decode_parts`` reads of an ``email.message.Message``: a part's
    content type, and its payload (bytes, or a multipart's parts)."""

    def __init__(self, content_type: str, payload: bytes | list[Part]) -> None:
        self._type, self._payload = content_type, payload

    def get_content_type(self) -> str:
        return self._type

    def get_payload(self, decode: bool = False) -> bytes | list[Part]:
        return self._payload


def split(content_type: str, body: bytes) -> list[Part] | None:
    """The parts of a ``multipart/mixed`` body as a table transaction's answer has them (each
    delimiter on a line of its own, CRLF line ends, no preamble, parts binary or multipart), or
    None for any other shape (the e-mail parser then reads it)."""
    kind, params = _header_value(content_type)
    boundary = params.get("boundary")
    if kind != "multipart/mixed" or not boundary:
        return None
    delimiter = b"--" + boundary.encode("ascii", "replace")
    if not body.startswith(delimiter):
        return None
    *pieces, close = body[len(delimiter) :].split(b"\r\n" + delimiter)
    if not close.startswith(b"--") or not all(p.startswith(b"\r\n") for p in pieces):
        return None
    parts: list[Part] = []
    for piece in pieces:
        head, found, payload = piece[2:].partition(b"\r\n\r\n")
        headers = dict(_header(line) for line in head.split(b"\r\n"))
        kind, params = _header_value(headers.get("content-type", ""))
        if not found or not kind or "" in headers:  # a header line this does not read
            return None
        if kind == "multipart/mixed":
            if (nested := split(headers["content-type"], payload)) is None:
                return None
            parts.append(Part(kind, nested))
        elif headers.get("content-transfer-encoding", "binary").lower() in (
            "binary",
            "7bit",
            "8bit",
        ):
            parts.append(Part(kind, payload))
        else:
            return None
    return parts


def _header(line: bytes) -> tuple[str, str]:
    """(lower-case name, value) of a header line; ("", "") for one this does not read."""
    name, colon, value = line.decode("latin-1").partition(":")
    if not colon or name != name.strip() or not name:
        return "", ""
    return name.lower(), value.strip()


def _header_value(value: str) -> tuple[str, dict[str, str]]:
    """A ``Content-Type``'s lower-case media type and its parameters (quotes taken off)."""
    kind, *rest = value.split(";")
    params = {}
    for item in rest:
        key, _, val = item.partition("=")
        params[key.strip().lower()] = val.strip().strip('"')
    return kind.strip().lower(), params
