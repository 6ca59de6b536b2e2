"""The Functions host sees one function per action: named after the operationId, at the spec's
route and method, behind a function key."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from shared.actions import all_specs
from shared.actions.contacts import SPECS as CONTACT_SPECS
from shared.actions.lookups import SPECS as LOOKUP_SPECS
from shared.actions.whatsapp import SPECS as WHATSAPP_SPECS
from tests.actions.conftest import registered_functions

OURS = {spec.operation_id: spec for spec in (*CONTACT_SPECS, *WHATSAPP_SPECS, *LOOKUP_SPECS)}
EXPECTED_ROUTES = {
    "GetUserCustomers": ("GET", "customers"),
    "GetCustomerServices": ("GET", "services"),
    "GetCustomerWhatsAppTemplates": ("GET", "whatsapp/templates"),
    "GetWhatsappTemplateCategories": ("GET", "whatsapp/template-categories"),
    "GetCustomerWhatsappIdentities": ("GET", "whatsapp/identities"),
    "CreateWhatsappTemplate": ("POST", "whatsapp/identities/{IdentityNumber}/templates"),
    "GetPhoneNumberRegions": ("GET", "phone-number-regions"),
    "GetGroupContact": ("GET", "groups/{GroupService}/contacts/{Phone}"),
    "CreateGroupContact": ("POST", "groups/{GroupService}/contacts"),
    "UpdateGroupContact": ("PUT", "groups/{GroupService}/contacts/{Phone}"),
    "DeleteGroupContact": ("DELETE", "groups/{GroupService}/contacts/{Phone}"),
    "DeleteAllGroupContacts": ("DELETE", "groups/{GroupService}/contacts"),
    "WhatsAppOptIn": ("PUT", "whatsapp/senders/{Sender}/opt-ins/{Recipient}"),
    "WhatsAppOptOut": ("DELETE", "whatsapp/senders/{Sender}/opt-ins/{Recipient}"),
    "ListConnections": ("GET", "connections"),
}


def http_trigger(operation_id: str) -> Any:
    for function in registered_functions():
        if function.get_function_name() == operation_id:
            [trigger] = [b for b in function.get_bindings() if b.type == "httpTrigger"]
            return trigger
    pytest.fail(f"no function named {operation_id}")


def test_the_fifteen_actions_are_registered_with_the_routes_we_document() -> None:
    assert {op: (s.method, s.route) for op, s in OURS.items()} == EXPECTED_ROUTES


@pytest.mark.parametrize("operation_id", sorted(EXPECTED_ROUTES))
def test_function_is_named_after_the_operation_with_route_method_and_function_key(
    operation_id: str,
) -> None:
    trigger = http_trigger(operation_id)
    method, route = EXPECTED_ROUTES[operation_id]
    assert trigger.route == route
    assert [str(m.value) for m in trigger.methods] == [method]
    assert str(trigger.auth_level.value) == "function"


def test_every_registered_spec_has_a_function_with_the_same_route() -> None:
    functions = {f.get_function_name() for f in registered_functions()}
    for spec in all_specs():
        assert spec.operation_id in functions
        trigger = http_trigger(spec.operation_id)
        assert (trigger.route, [str(m.value) for m in trigger.methods]) == (
            spec.route,
            [spec.method],
        )


HEAVY_MODULES = (
    "pydantic",
    "pydantic_settings",
    "phonenumbers",
    "msal",
    "httpx",
    "jsonschema",
    "azure.data.tables",
    "azure.storage.queue",
    "shared.actions",
)


def test_importing_the_app_loads_no_heavy_module_and_registers_every_function() -> None:
    import json
    import subprocess
    import sys

    # One process: the heavy-module check means nothing unless the same import registered the
    # functions (indexed once, as the host does; get_functions() must not be called twice).
    code = (
        "import json, sys, function_app\n"
        f"heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]\n"
        "from devhost import app_functions\n"
        "names = [f.get_function_name() for f in app_functions(function_app.app)]\n"
        "print(json.dumps({'heavy': heavy, 'count': len(names), 'names': names}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["heavy"] == []
    assert seen["count"] == len(registered_functions())
    assert len(set(seen["names"])) == seen["count"]
    assert set(seen["names"]) >= {spec.operation_id for spec in all_specs()}
    assert set(seen["names"]) >= set(EXPECTED_ROUTES)


def _segments(route: str) -> list[str | None]:
    """A route template's segments: a literal (lower case), or None for a parameter."""
    segments: list[str | None] = []
    for segment in route.split("/"):
        plain = segment.startswith("{") and segment.endswith("}") and segment.count("{") == 1
        assert plain or "{" not in segment, f"{route}: only literals and plain {{name}} here"
        assert not plain or segment[1:-1].isidentifier(), f"{route}: {segment} (extend this check)"
        segments.append(None if plain else segment.lower())
    return segments


def _overlap(a: list[str | None], b: list[str | None]) -> bool:
    """Whether one request path can match both templates."""
    if len(a) != len(b):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a, b, strict=True))


def test_no_two_routes_of_one_method_match_the_same_path() -> None:
    """The Functions host does not pick the more specific of two matching templates (it may go by
    function name; azure-functions-host#9876): a route such as ``GET messages/summary`` beside
    ``GET messages/{MessageId}`` would pass every dev host test and be shadowed on Azure."""
    routes = []
    for function in registered_functions():
        for binding in function.get_bindings():
            if binding.type == "httpTrigger":
                methods = {str(m).upper() for m in binding.methods}
                routes.append((function.get_function_name(), methods, binding.route))
    assert len(routes) > 50

    clashes = [
        (first, second)
        for (first, methods, route), (second, others, other) in itertools.combinations(routes, 2)
        if methods & others and _overlap(_segments(route), _segments(other))
    ]

    assert clashes == []
    assert _overlap(_segments("messages/summary"), _segments("messages/{MessageId}"))
