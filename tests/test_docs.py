"""The docs cannot drift from the code: the architecture page names a test for every crash
window and each such test exists; every route and curl command in README.md and docs/ exists in
the app with that method."""

from __future__ import annotations

import ast
import functools
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_the_architecture_page_names_exists() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", page))
    defined = {
        match
        for path in (ROOT / "tests").rglob("test_*.py")
        for match in re.findall(r"^def (test_[a-z0-9_]+)\(", path.read_text(encoding="utf-8"), re.M)
    }
    assert len(named) >= 10
    assert named - defined == set()


def test_the_architecture_page_has_a_row_for_every_package() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    packages = {p.parent.name for p in (ROOT / "shared").glob("*/__init__.py")}
    rows = set(re.findall(r"^\| `shared/([a-z_]+)/` \|", page, re.M))
    assert {"messages", "outbound", "conversations"} <= packages
    assert packages - rows == set()


def test_no_module_of_the_shared_package_is_over_600_lines() -> None:
    """The size the architecture keeps every module under (issue 12), so a module that grows
    past it is split where its concerns part, not found too late."""
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for path in (ROOT / "shared").rglob("*.py")
    }
    assert len(sizes) > 50
    assert {name: lines for name, lines in sizes.items() if lines > 600} == {}


def test_the_queue_schema_says_what_a_recipient_address_must_be() -> None:
    """The sender dead-letters a queued command whose address is no phone number (malformed):
    the published contract must not say any string will do."""
    schema = json.loads((ROOT / "schemas" / "outbound-message.json").read_text(encoding="utf-8"))
    addresses = {
        name: definition["properties"]["Address"]
        for name, definition in schema["$defs"].items()
        if "Address" in definition.get("properties", {})
    }
    assert set(addresses) == {"Recipient", "TemplateRecipient"}
    for address in addresses.values():
        assert "E.164" in address["description"], address
        assert "region FI" in address["description"], address
        assert "malformed" in address["description"], address


def test_flows_md_says_which_send_failures_carry_field_errors_as_the_code_fills_them() -> None:
    """flows.md said a *When a send fails* flow's Field Errors is always empty, yet a queued
    send whose command cannot be read fails ``malformed`` with them (and only that one does)."""
    codes = [
        next(k.value.value for k in call.keywords if k.arg == "code")  # type: ignore[attr-defined]
        for path in (ROOT / "shared").rglob("*.py")
        for call in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(call, ast.Call)
        and getattr(call.func, "id", None) == "FailureInfo"
        and any(k.arg == "errors" for k in call.keywords)
    ]
    assert codes == ["malformed"]  # the one failure recorded with its fields
    page = (ROOT / "docs" / "flows.md").read_text(encoding="utf-8")
    section = page.split("## When a send fails", 1)[1].split("\n## ", 1)[0]
    assert "empty today" not in section
    assert re.search(r"\*\*Field Errors\*\* lists .*?Failure Code `malformed`", section, re.S)


def test_the_docs_count_a_commands_length_for_its_blob_as_the_code_does() -> None:
    """A record keeps a command up to INLINE_COMMAND_CHARS UTF-16 units (an emoji is 2): the
    docs said characters, which is half that for a command of emoji."""
    from shared.messages._records import INLINE_COMMAND_CHARS

    limit = f"{INLINE_COMMAND_CHARS:,}"
    for page in ("sending.md", "architecture.md"):
        text = (ROOT / "docs" / page).read_text(encoding="utf-8")
        assert f"over {limit} UTF-16 units" in text, page
        assert f"{limit} characters" not in text, page


def test_the_docs_say_how_many_refused_rows_the_batch_row_keeps_as_the_code_does() -> None:
    """The batch row keeps the first refused rows that fit its 30,000 characters: how many depends
    on their reason's length. The docs said "300 rows or more"; a batch of numbers with letters
    keeps about 150."""
    from shared.messages._batches import _fitting
    from shared.phone import InvalidPhoneNumber, parse_phone_number

    def kept(address: str | None) -> int:
        reason = "Repeated recipient."
        if address is not None:
            with pytest.raises(InvalidPhoneNumber) as refused:
                parse_phone_number(address)
            reason = str(refused.value)
        rows = [{"row": r, "field": "Address", "message": reason} for r in range(2, 1002)]
        return len(json.loads(_fitting(tuple(rows))))

    text = " ".join((ROOT / "docs" / "sending.md").read_text(encoding="utf-8").split())
    said = re.search(
        r"about (\d+) rows refused for letters or an extension, (\d+) of `Not a valid phone "
        r"number`, (\d+) of `Empty`, (\d+) repeats",
        text,
    )
    assert said is not None, "sending.md no longer says how many refused rows are kept"
    real = [kept("+358 40 FLOWERS"), kept("12"), kept(""), kept(None)]
    for documented, count in zip(map(int, said.groups()), real, strict=True):
        assert abs(count - documented) <= documented * 0.05, (documented, count)
    swagger = (ROOT / "connector" / "apiDefinition.swagger.json").read_text(encoding="utf-8")
    assert f"about {said[1]} to {said[4]} rows, e.g. {said[2]} invalid numbers" in swagger
    assert "300 or more" not in swagger


def test_the_docs_date_an_expired_sends_dead_letter_from_a_status_poll_by_its_validity() -> None:
    """A status poll that fails a send whose queue copy is gone writes its dead letter dated the
    send's validUntil (``expire_overdue``: finished_at = valid_until, so repeats write one), which
    the age filters judge: the docs must not let an operator read it as when it was written."""
    sending, operations = (
        " ".join((ROOT / "docs" / page).read_text(encoding="utf-8").split())
        for page in ("sending.md", "operations.md")
    )
    assert "the letter's `deadLetteredAt`, which the dead-letter list shows and its age" in sending
    assert "(`minAgeSeconds`, `maxAgeSeconds`) judge a letter's `deadLetteredAt`" in operations
    assert "has there the send's `validUntil`, when it expired" in operations


def test_every_crash_window_row_names_a_test() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = page.split("## Crash windows", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    body = rows[1:]  # past the header
    assert body
    assert all("`test_" in row for row in body), [r for r in body if "`test_" not in r]


# --- every route the docs name exists, with that method ------------------------------------

DOC_PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
#: One path segment as the docs write it: a value, a ``{RouteParameter}`` or a ``<placeholder>``.
_SEGMENT = r"(?:[A-Za-z0-9_.%~+\-…]|\{[^}\n]*\}|<[^>\n]*>)+"
_PATH = rf"{_SEGMENT}(?:/{_SEGMENT})*"
#: A curl command (not the word in prose): ``curl`` then an option, a quoted URL or a URL.
_CURL = re.compile(r"(?:^|[\s`$(])curl\s+(?:-|[\"']|https?://|\$)")


@dataclass(frozen=True)
class DocRoute:
    """A route a page names: where, with which method (None: none said), below routePrefix."""

    where: str
    method: str | None
    path: str


def route_prefix() -> str:
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    return str(host["extensions"]["http"]["routePrefix"])


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines of ``text`` with shell continuations (a trailing backslash) joined, numbered."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        start, head = pending if pending else (number, "")
        pending = None
        if line.rstrip().endswith("\\"):
            pending = (start, head + line.rstrip()[:-1] + " ")
        else:
            joined.append((start, head + line))
    if pending:
        joined.append(pending)
    return joined


def _curl_method(command: str) -> str:
    explicit = re.search(r"(?:\s-X\s*|\s--request[\s=])([A-Z]+)", command)
    if explicit:
        return explicit.group(1)
    sends_data = re.search(r"\s(?:-d|-F|--data[\w-]*|--form|--json)[\s=@'\"]", command)
    return "POST" if sends_data else "GET"


def doc_routes(name: str, text: str, prefix: str) -> list[DocRoute]:
    """Every ``/<prefix>/...`` URL or path in ``text``, every curl command's URL, and every
    ```METHOD route``` cell of a route table, with the method the text gives it."""
    found: list[DocRoute] = []
    api = re.compile(rf"/{re.escape(prefix)}/({_PATH})")
    for number, line in _logical_lines(text):
        where = f"{name}:{number}"
        curl = _CURL.search(line)
        for match in api.finditer(line):
            path = match.group(1)
            if re.fullmatch(r"\.\.\.|…", path):  # "/api/..." names the prefix, not a route
                continue
            if curl:
                method: str | None = _curl_method(line)
            else:
                before = re.sub(r"\S*$", "", line[: match.start()])
                said = re.search(rf"\b({'|'.join(METHODS)})\b[\s\->]*$", before)
                method = said.group(1) if said else None
            found.append(DocRoute(where, method, path))
        for match in re.finditer(rf"`({'|'.join(METHODS)}) (?=[a-z])({_PATH})(?:\?[^`]*)?`", line):
            found.append(DocRoute(where, match.group(1), match.group(2)))
    return found


@functools.cache
def app_routes() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(route, methods) of every HTTP function, from the metadata the host indexes."""
    from devhost import app_functions
    from function_app import app

    routes = []
    for function in app_functions(app):
        for binding in map(json.loads, function.get_raw_bindings()):
            if binding["type"] == "httpTrigger":
                methods = tuple(m.upper() for m in binding.get("methods") or METHODS)
                routes.append((str(binding.get("route") or function.get_function_name()), methods))
    return tuple(routes)


def _segment_matches(doc: str, route: str) -> bool:
    parameter = re.fullmatch(r"\{([^}:?]+)(?::[^}]*)?\??\}", route)
    if doc.startswith("{"):  # a named placeholder must be the route's own parameter name
        return parameter is not None and doc == "{" + parameter.group(1) + "}"
    if doc.startswith("<"):  # a described value stands where the route takes a parameter
        return parameter is not None
    return parameter is not None or doc == route


def route_exists(doc: DocRoute, routes: typing.Iterable[tuple[str, tuple[str, ...]]]) -> bool:
    segments = doc.path.rstrip("/").split("/")
    for route, methods in routes:
        parts = route.strip("/").split("/")
        if doc.method is not None and doc.method not in methods:
            continue
        if len(parts) == len(segments) and all(map(_segment_matches, segments, parts)):
            return True
    return False


def all_doc_routes() -> list[DocRoute]:
    prefix = route_prefix()
    return [
        route
        for page in DOC_PAGES
        for route in doc_routes(
            page.relative_to(ROOT).as_posix(), page.read_text(encoding="utf-8"), prefix
        )
    ]


def test_every_route_and_curl_command_in_the_docs_exists_in_the_app_with_that_method() -> None:
    named = all_doc_routes()
    routes = app_routes()

    assert len(named) >= 30, "the route finder found too little: has the docs' format changed?"
    wrong = [
        f"{r.where}: {r.method or '(any method)'} /{route_prefix()}/{r.path}"
        for r in named
        if not route_exists(r, routes)
    ]
    assert not wrong, (
        "the docs name routes the app does not have (a {Placeholder} must be the route's "
        "parameter name):\n"
        + "\n".join(wrong)
        + "\napp routes:\n"
        + "\n".join(f"  {' '.join(m)} {r}" for r, m in routes)
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("`POST /api/webhooks/inbound/registrations`", False),
        ("`POST /api/inbound/webhooks/{Service}`", True),
        ("`POST /api/inbound/webhooks/{service}`", False),
        ("`GET /api/inbound/webhooks/{Service}`", False),
        ('curl -fsS -X POST "$APP_URL/api/inbound/webhooks/sms-2way" \\\n  -H "k: v"', True),
        ('curl -fsS "$APP_URL/api/inbound/webhooks/sms-2way"', False),  # curl's GET
        ("curl -s http://localhost:7071/api/messages -d '{}'", True),  # -d: POST
        ("SmartDialog --GET---> /api/callbacks/dlr/{MessageId}?token=…", True),
        ("SmartDialog --GET---> /api/callbacks/dlr/{Id}?token=…", False),
        ("Location: http://localhost:7071/api/messages/<id>?token=...", True),
        ("| X | `DELETE messages/{MessageId}` | key |", True),
        ("| X | `DELETE messages/{MessageId}/parts` | key |", False),
    ],
)
def test_the_route_check_tells_a_real_route_from_a_wrong_one(line: str, expected: bool) -> None:
    [route] = doc_routes("x.md", line, route_prefix())

    assert route_exists(route, app_routes()) is expected


def curl_commands(text: str) -> list[tuple[int, str]]:
    return [(n, line) for n, line in _logical_lines(text) if _CURL.search(line)]


def test_every_other_curl_command_follows_a_location_or_calls_a_sandbox_operation() -> None:
    from sandbox.contract import load_contract

    contract = load_contract()
    api = f"/{route_prefix()}/"
    unchecked = []
    for page in DOC_PAGES:
        for number, command in curl_commands(page.read_text(encoding="utf-8")):
            if api in command:
                continue  # an app route: the test above checks it
            sandbox = re.search(r"https?://[\w.:-]+(/api-integrations/v1/[^\s\"'?]+)", command)
            if sandbox:
                assert contract.match(_curl_method(command), sandbox.group(1)), (
                    f"{page.name}:{number}: the sandbox serves no {sandbox.group(1)}"
                )
            elif not re.search(r"[\"'](?:<Location>|\$LOCATION)", command):
                unchecked.append(f"{page.name}:{number}: {command.strip()}")

    assert not unchecked, "curl commands whose URL no test can check:\n" + "\n".join(unchecked)
