"""The parts of ``host.json`` the dev host honours: the HTTP route prefix and the queue options.

Defaults are the Functions host's own (extension bundle v4, Storage Queues extension v5), so a
``host.json`` that leaves a setting out behaves as it would in Azure.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["HostOptions", "QueueOptions", "load_host_json", "parse_timespan"]

# .NET TimeSpan as host.json writes it: [d.]hh:mm:ss[.fffffff]
_TIMESPAN = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d+):(?P<m>\d+):(?P<s>\d+(?:\.\d+)?)$")


def parse_timespan(value: str | int | float) -> float:
    """Seconds in a host.json TimeSpan (``"00:00:02"``, ``"1.00:00:00"``, ``"00:00:00.250"``)."""
    if isinstance(value, int | float):
        return float(value)
    match = _TIMESPAN.match(value.strip())
    if not match:
        raise ValueError(f"not a TimeSpan (expected [d.]hh:mm:ss[.fff]): {value!r}")
    days = int(match.group("d") or 0)
    return (
        days * 86400
        + int(match.group("h")) * 3600
        + int(match.group("m")) * 60
        + float(match.group("s"))
    )


@dataclass(frozen=True)
class QueueOptions:
    """``extensions.queues`` with the host's defaults.

    ``max_polling_interval`` defaults to 1 minute, ``visibility_timeout`` (the delay before a failed
    message is visible again) to 0, ``batch_size`` to 16, ``new_batch_threshold`` to
    ``batch_size // 2``, ``max_dequeue_count`` to 5, ``message_encoding`` to ``base64``.
    """

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    message_encoding: str = "base64"

    @classmethod
    def from_json(cls, section: dict[str, Any]) -> QueueOptions:
        """Build from ``extensions.queues`` (keys are case-insensitive, as in the host)."""
        keys = {k.lower(): v for k, v in section.items()}
        batch_size = int(keys.get("batchsize", 16))
        if not 1 <= batch_size <= 32:
            raise ValueError(f"extensions.queues.batchSize must be 1..32, not {batch_size}")
        encoding = str(keys.get("messageencoding", "base64")).lower()
        if encoding not in ("base64", "none"):
            raise ValueError(
                f"extensions.queues.messageEncoding must be base64 or none, not {encoding}"
            )
        max_dequeue = int(keys.get("maxdequeuecount", 5))
        if max_dequeue < 1:
            raise ValueError("extensions.queues.maxDequeueCount must be at least 1")
        return cls(
            batch_size=batch_size,
            new_batch_threshold=int(keys.get("newbatchthreshold", batch_size // 2)),
            max_polling_interval=parse_timespan(keys.get("maxpollinginterval", "00:01:00")),
            visibility_timeout=parse_timespan(keys.get("visibilitytimeout", "00:00:00")),
            max_dequeue_count=max_dequeue,
            message_encoding=encoding,
        )


@dataclass(frozen=True)
class HostOptions:
    """What the dev host reads from ``host.json``."""

    route_prefix: str = "api"
    queues: QueueOptions = QueueOptions()
    function_timeout: float | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> HostOptions:
        """Build from a parsed ``host.json`` document."""
        extensions = doc.get("extensions") or {}
        http = extensions.get("http") or {}
        prefix = http.get("routePrefix", "api")
        timeout = doc.get("functionTimeout")
        return cls(
            route_prefix=str(prefix).strip("/"),
            queues=QueueOptions.from_json(extensions.get("queues") or {}),
            function_timeout=parse_timespan(timeout) if timeout else None,
        )


def load_host_json(path: str | Path) -> HostOptions:
    """Read ``host.json``; a missing file means the host's defaults."""
    file = Path(path)
    if not file.exists():
        return HostOptions()
    return HostOptions.from_json(json.loads(file.read_text(encoding="utf-8")))
