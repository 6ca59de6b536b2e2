"""A seeded random fault mode: a share of API calls fail the ways a real service and its network do.

Kinds (:class:`FaultKind`), each drawn with equal weight among those enabled:

- ``throttled``: ``429`` with ``Retry-After`` before anything is done;
- ``unavailable``: ``503`` before anything is done;
- ``timeout``: the call is held ``hold_seconds`` (set it past the client's timeout), then handled
  as usual: a send may be accepted after its client gave up;
- ``reset``: the connection is reset (TCP RST) before anything is done;
- ``lost-answer``: the call is handled as usual (a send is accepted and recorded, its RequestId
  remembered, its DLRs scheduled), then the connection is reset instead of answering.

Deterministic given the seed: whether a call fails, and how, is a hash of the seed, the call's
identity (method, path and ``RequestId``, or the body's hash when it has none) and how many
times that identity was seen before, so the same calls meet the same faults whatever order
concurrent clients make them in. Only API calls (``/api-integrations/v1/...``) fail; control and
OAuth endpoints never do.
"""

from __future__ import annotations

import enum
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FaultInjector", "FaultKind", "FaultPlan", "parse_kinds"]


class FaultKind(enum.StrEnum):
    """How a call fails."""

    THROTTLED = "throttled"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    RESET = "reset"
    LOST_ANSWER = "lost-answer"

    @property
    def handled(self) -> bool:
        """Whether the call is still handled (its effects happen) despite the fault."""
        return self in (FaultKind.TIMEOUT, FaultKind.LOST_ANSWER)

    @property
    def drops_connection(self) -> bool:
        """Whether the client gets a reset connection instead of an answer."""
        return self in (FaultKind.RESET, FaultKind.LOST_ANSWER)


def parse_kinds(value: str | Iterable[str]) -> tuple[FaultKind, ...]:
    """Kinds from a comma-separated text or a list of names; ``ValueError`` names an unknown
    one. Empty means every kind."""
    names = value.split(",") if isinstance(value, str) else list(value)
    kinds: list[FaultKind] = []
    for raw in names:
        name = str(raw).strip()
        if not name:
            continue
        try:
            kind = FaultKind(name)
        except ValueError:
            known = ", ".join(k.value for k in FaultKind)
            raise ValueError(f"unknown fault kind {name!r} (known: {known})") from None
        if kind not in kinds:
            kinds.append(kind)
    return tuple(kinds) or tuple(FaultKind)


@dataclass(frozen=True)
class FaultPlan:
    """What the fault mode does; ``rate`` 0 turns it off."""

    rate: float = 0.0
    seed: int = 0
    kinds: tuple[FaultKind, ...] = tuple(FaultKind)
    #: How long a ``timeout`` call is held: past the client's timeout (the app's default is 30 s).
    hold_seconds: float = 35.0
    #: ``Retry-After`` of a ``throttled`` answer, seconds.
    retry_after: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if self.hold_seconds < 0 or self.retry_after < 0:
            raise ValueError("holdSeconds and retryAfter must not be negative")
        if not self.kinds:
            raise ValueError("kinds must name at least one kind")

    @classmethod
    def from_json(cls, value: Any) -> FaultPlan:
        """A plan from the control API's JSON (camelCase, every field optional); ``ValueError``
        says what is wrong."""
        if not isinstance(value, Mapping):
            raise ValueError("expected a JSON object")
        unknown = set(value) - {"rate", "seed", "kinds", "holdSeconds", "retryAfter"}
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        default = cls()
        try:
            return cls(
                rate=float(value.get("rate", default.rate)),
                seed=int(value.get("seed", default.seed)),
                kinds=parse_kinds(value.get("kinds") or ()),
                hold_seconds=float(value.get("holdSeconds", default.hold_seconds)),
                retry_after=int(value.get("retryAfter", default.retry_after)),
            )
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    def to_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "seed": self.seed,
            "kinds": [k.value for k in self.kinds],
            "holdSeconds": self.hold_seconds,
            "retryAfter": self.retry_after,
        }


@dataclass
class FaultInjector:
    """Decides, per API call, whether and how it fails, and counts what it injected."""

    plan: FaultPlan = field(default_factory=FaultPlan)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    calls: int = 0
    injected: Counter[FaultKind] = field(default_factory=Counter)
    _seen: Counter[str] = field(default_factory=Counter, repr=False)

    def configure(self, plan: FaultPlan) -> None:
        """Use ``plan`` from now on, counting from zero."""
        with self.lock:
            self.plan = plan
        self.reset()

    def reset(self) -> None:
        """Forget the counts and the calls seen (the plan stays)."""
        with self.lock:
            self.calls = 0
            self.injected = Counter()
            self._seen = Counter()

    def decide(self, method: str, path: str, body: bytes) -> FaultKind | None:
        """The fault this call meets, or None."""
        plan = self.plan
        if plan.rate <= 0:
            return None
        identity = f"{method} {path} {_request_id(body) or hashlib.sha256(body).hexdigest()}"
        with self.lock:
            self._seen[identity] += 1
            nth = self._seen[identity]
            self.calls += 1
        digest = hashlib.sha256(f"{plan.seed}\n{identity}\n{nth}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
        if draw >= plan.rate:
            return None
        pick = int.from_bytes(digest[8:16], "big") % len(plan.kinds)
        kind = plan.kinds[pick]
        with self.lock:
            self.injected[kind] += 1
        return kind

    def snapshot(self) -> dict[str, Any]:
        """The plan, the API calls seen and the faults injected by kind (the control API's
        answer)."""
        with self.lock:
            return {
                **self.plan.to_json(),
                "calls": self.calls,
                "injected": {k.value: self.injected.get(k, 0) for k in FaultKind},
            }


def _request_id(body: bytes) -> str | None:
    """The body's ``RequestId`` (a send's identity across its attempts), if it has one."""
    if b"RequestId" not in body:
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    found = value.get("RequestId") if isinstance(value, dict) else None
    return str(found) if found else None
