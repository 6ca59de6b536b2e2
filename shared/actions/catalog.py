"""Every action of the app, by operationId: the one list the blueprints, the connector and the
tests read.

A module that defines actions exposes ``SPECS`` (a tuple of :class:`ActionSpec`) and is named in
:data:`SPEC_MODULES`; nothing else needs to change for its actions to be served and to appear in
the generated connector. Modules are imported on first use of :func:`all_specs`.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from shared.actions._spec import ActionSpec

__all__ = ["SPEC_MODULES", "UnknownAction", "all_specs", "get_spec"]

#: Modules whose ``SPECS`` make up the app's HTTP actions, in connector order.
SPEC_MODULES: tuple[str, ...] = (
    "shared.actions.contacts",
    "shared.actions.whatsapp",
    "shared.actions.lookups",
    "shared.outbound.actions",
    "shared.conversations.actions",
    "shared.outbound.bulk",
    "shared.inbound.actions",
    "shared.inbound.trigger_actions",
    "shared.ops.actions",
    "shared.notify.actions",
)


class UnknownAction(LookupError):
    """No registered action has this operationId."""


@cache
def all_specs() -> tuple[ActionSpec[Any], ...]:
    """Every registered action; raises ``ValueError`` on a duplicate operationId or route."""
    specs: list[ActionSpec[Any]] = []
    for name in SPEC_MODULES:
        specs.extend(importlib.import_module(name).SPECS)
    seen_ids: set[str] = set()
    seen_routes: set[tuple[str, str]] = set()
    for spec in specs:
        route = (spec.method.upper(), spec.route)
        if spec.operation_id in seen_ids or route in seen_routes:
            raise ValueError(f"duplicate action {spec.operation_id} ({spec.method} {spec.route})")
        seen_ids.add(spec.operation_id)
        seen_routes.add(route)
    return tuple(specs)


def get_spec(operation_id: str) -> ActionSpec[Any]:
    """The action with this operationId."""
    for spec in all_specs():
        if spec.operation_id == operation_id:
            return spec
    raise UnknownAction(operation_id)
