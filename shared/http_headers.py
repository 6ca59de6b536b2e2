"""HTTP/1.1 response headers read without the e-mail parser (``shared.storage`` installs it).

Every storage answer reaches the SDK through ``requests``, ``urllib3`` and ``http.client``, whose
``parse_headers`` hands the header block to the standard library's e-mail parser: a feed parser
built per answer, every line matched against its patterns, and, for a ``multipart`` answer (each
table transaction's), a regular expression compiled for its boundary, which is new every time.
Profiled over 300 in-process SendMessage accepts (three storage answers each, and the two parts
of its transaction's answer read the same way), that was about a fifth of an accept's CPU time.

:func:`install` replaces ``http.client.parse_headers`` with :func:`parse_headers`, which builds
the same ``HTTPMessage`` directly (the class ``http.client`` and ``urllib3`` ask for) when every
header line is plain: a name of visible ASCII, a colon, a value of printable ASCII and tabs, a
line end. It mirrors what the e-mail parser makes of such a block, its defects included
(``urllib3`` reads them): the headers in order, an empty payload, and for a ``multipart`` type
with a boundary the two defects a body-less multipart gets. Anything else (another class, a
folded or non-ASCII line, a line with no name, a ``message`` type, a multipart without boundary
or with an unusual transfer encoding) goes to the standard library's own, with the same lines;
a line it cannot take costs linear time, as it does the standard library. It is installed only
where ``http.client`` has the two functions it expects, its own and not a wrapper; otherwise
what is there stays, and that is logged once.
"""

from __future__ import annotations

import email.errors
import email.parser
import http.client
import inspect
import logging
import re
import threading
from email.policy import compat32
from typing import Any

__all__ = ["install", "parse_headers"]

log = logging.getLogger(__name__)

#: A header line the e-mail parser reads as ``name: value`` and nothing more. No two of its
#: parts can match the same character, so a line that does not match fails in linear time.
_PLAIN = re.compile(r"([\x21-\x39\x3b-\x7e]+):([\t\x20-\x7e]*)\r?\n")
#: Transfer encodings the e-mail parser accepts on a multipart without a defect.
_MULTIPART_ENCODINGS = ("7bit", "8bit", "binary")

_lock = threading.Lock()
_state: dict[str, bool] = {}


def parse_headers(fp: Any, _class: type[http.client.HTTPMessage] = http.client.HTTPMessage) -> Any:
    """``http.client.parse_headers``: the header block read from ``fp`` as an ``_class``,
    built directly when that is ``HTTPMessage`` and every line is plain, else by the e-mail
    parser."""
    lines = http.client._read_headers(fp)  # type: ignore[attr-defined]  # the same checks
    text = b"".join(lines).decode("iso-8859-1")
    if _class is http.client.HTTPMessage and (built := _built(text, _class)) is not None:
        return built
    return email.parser.Parser(_class=_class).parsestr(text)


def _built(text: str, cls: type[http.client.HTTPMessage]) -> Any:
    """The message the e-mail parser would make of ``text``, or None when it is not plain."""
    msg = cls(policy=compat32)  # as the parser makes it
    lines = text.splitlines(keepends=True)
    if lines and lines[-1] in ("\r\n", "\n"):
        lines.pop()  # the blank line that ends the block (none at the end of the stream)
    for line in lines:
        if (plain := _PLAIN.fullmatch(line)) is None:
            return None
        msg.set_raw(plain[1], plain[2].lstrip(" \t"))
    maintype = msg.get_content_maintype()
    if maintype == "message":
        return None
    if maintype == "multipart":
        encoding = str(msg.get("content-transfer-encoding", "8bit")).lower()
        if msg.get_boundary() is None or encoding not in _MULTIPART_ENCODINGS:
            return None
        # No body: the parser finds no first boundary, and the payload is then no list.
        msg.defects += [
            email.errors.StartBoundaryNotFoundDefect(),
            email.errors.MultipartInvariantViolationDefect(),
        ]
        msg.epilogue = ""
    msg.set_payload("")
    return msg


def install() -> bool:
    """Put :func:`parse_headers` in place of ``http.client``'s (once per process; True when
    it is in place), if ``http.client`` has the functions it expects."""
    with _lock:
        if "installed" not in _state:
            _state["installed"] = _install()
        return _state["installed"]


def _install() -> bool:
    current = getattr(http.client, "parse_headers", None)
    reader = getattr(http.client, "_read_headers", None)
    try:
        reads = reader is not None and list(inspect.signature(reader).parameters) == ["fp"]
        own = current is parse_headers or (
            current is not None
            and getattr(current, "__module__", None) == "http.client"  # not someone's wrapper
            and list(inspect.signature(current).parameters) == ["fp", "_class"]
        )
    except (TypeError, ValueError):
        reads = own = False
    if not (reads and own):
        log.info("http.client is not as expected: its own header parser stays")
        return False
    http.client.parse_headers = parse_headers  # type: ignore[assignment]
    return True
