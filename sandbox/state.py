"""The sandbox's mutable state: everything ``reset`` brings back to the seed.

All mutation goes through :class:`SandboxState` methods under one lock, so request threads,
callback workers and test assertions see consistent data. Logs are bounded (oldest entries drop
first) so long benchmarks don't grow memory.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any

__all__ = ["SandboxState"]

ContactKey = tuple[str, str, str]  # (customer id, group service id, E.164 phone)


class SandboxState:
    """Contacts, WhatsApp templates and opt-ins, remembered RequestIds, pipelines, and the
    inspection logs.
    """

    def __init__(self, seed: Mapping[str, Any], log_limit: int = 10_000) -> None:
        self.seed = seed
        self.log_limit = log_limit
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.contacts: dict[ContactKey, dict[str, Any]] = {}
            self.templates: dict[str, list[dict[str, Any]]] = {
                c["customerId"]: copy.deepcopy(c.get("whatsappTemplates", []))
                for c in self.seed["customers"]
            }
            self.opt_ins: set[tuple[str, str]] = set()
            self.request_ids: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
            self.attempts: dict[tuple[str, str], int] = {}
            self.pipelines: dict[str, str] = {}  # service id -> pipeline id
            self.actions: dict[str, dict[str, Any]] = {}  # action id -> action
            self.requests: deque[dict[str, Any]] = deque(maxlen=self.log_limit)
            self.messages: deque[dict[str, Any]] = deque(maxlen=self.log_limit)
            self.delivery_reports: deque[dict[str, Any]] = deque(maxlen=self.log_limit)

    # --- RequestId memory and transient-failure attempts (per connection subject) ---

    def remembered(
        self, subject: str, request_id: str, now: float, memory: float
    ) -> dict[str, Any] | None:
        """The first answer to ``request_id`` if it was accepted under ``memory`` seconds ago."""
        with self.lock:
            found = self.request_ids.get((subject, request_id))
            return found[1] if found and now - found[0] < memory else None

    def remember(
        self, subject: str, request_id: str, response: dict[str, Any], now: float, memory: float
    ) -> dict[str, Any] | None:
        """Record an accepted send atomically; returns the earlier answer instead if one won the
        race.
        """
        with self.lock:
            earlier = self.remembered(subject, request_id, now, memory)
            if earlier is None:
                self.request_ids[(subject, request_id)] = (now, response)
            return earlier

    def attempt(self, subject: str, key: str) -> int:
        """Count one more attempt of the request identified by ``key``; returns the attempt number
        (1-based).
        """
        with self.lock:
            count = self.attempts[(subject, key)] = self.attempts.get((subject, key), 0) + 1
            return count

    # --- pipelines ---

    def add_action(
        self, customer_id: str, service_id: str, action: dict[str, Any]
    ) -> dict[str, Any]:
        with self.lock:
            pipeline_id = self.pipelines.setdefault(service_id, str(uuid.uuid4()))
            stored = {
                "id": str(uuid.uuid4()),
                "pipelineId": pipeline_id,
                "customerId": customer_id,
                "serviceId": service_id,
                **action,
            }
            self.actions[stored["id"]] = stored
            return stored

    def remove_action(self, pipeline_id: str, action_id: str) -> bool:
        with self.lock:
            action = self.actions.get(action_id)
            if action is None or action["pipelineId"] != pipeline_id:
                return False
            del self.actions[action_id]
            return True

    def actions_for(self, service_id: str | None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                dict(a)
                for a in self.actions.values()
                if service_id is None or a["serviceId"] == service_id
            ]

    # --- logs ---

    def log(self, name: str, entry: dict[str, Any]) -> None:
        """Append to ``requests``, ``messages`` or ``delivery_reports``."""
        with self.lock:
            log: deque[dict[str, Any]] = getattr(self, name)
            log.append(entry)

    def snapshot(self, name: str) -> list[dict[str, Any]]:
        """A copy of a log, oldest first."""
        with self.lock:
            log: deque[dict[str, Any]] = getattr(self, name)
            return copy.deepcopy(list(log))
