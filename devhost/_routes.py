"""ASP.NET Core route templates, as the Functions host matches them, compiled once to regexes.

Supported: literal segments (matched case-insensitively), ``{name}``, ``{name?}``,
``{name=default}``, ``{name:constraint}`` (``int``, ``long``, ``bool``, ``guid``, ``alpha``,
``double``, ``float``, ``decimal``, ``datetime``, ``min(n)``, ``max(n)``, ``range(a,b)``,
``minlength(n)``, ``maxlength(n)``, ``length(n)``, ``length(a,b)``, ``regex(expr)``), catch-all
``{*name}`` / ``{**name}``, and segments that mix literals and parameters (``{file}.{ext}``). More
specific templates win here: literals before constrained parameters before plain parameters
before catch-alls. The Functions host does not promise that order (azure-functions-host#9876: it
may go by function name), so the app keeps its routes apart: no two of one method match one path
(``tests/actions/test_function_metadata.py``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Generic, TypeVar
from urllib.parse import unquote

__all__ = ["CompiledRoute", "RouteTable", "RouteTemplateError", "compile_route"]

#: How many looked-up paths :class:`RouteTable` remembers.
FOUND_KEPT = 512

T = TypeVar("T")

_PARAM = re.compile(r"\{([^{}]*)\}")
_CONSTRAINT = re.compile(r"^(?P<name>[a-zA-Z]+)(?:\((?P<args>.*)\))?$", re.DOTALL)


class RouteTemplateError(ValueError):
    """A route template the dev host cannot understand."""


def _is_number(kind: type[int] | type[float]) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        try:
            kind(value)
        except ValueError:
            return False
        return True

    return check


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _constraint(spec: str, template: str) -> Callable[[str], bool]:
    match = _CONSTRAINT.match(spec)
    if not match:
        raise RouteTemplateError(f"bad constraint {spec!r} in route {template!r}")
    name, args = match.group("name").lower(), match.group("args")
    simple: dict[str, Callable[[str], bool]] = {
        "int": _is_number(int),
        "long": _is_number(int),
        "double": _is_number(float),
        "float": _is_number(float),
        "decimal": _is_number(float),
        "bool": lambda v: v.lower() in ("true", "false"),
        "guid": _is_guid,
        "alpha": lambda v: v.isascii() and v.isalpha(),
        "datetime": _is_datetime,
    }
    if name in simple:
        return simple[name]
    if args is None:
        raise RouteTemplateError(f"unknown route constraint {spec!r} in route {template!r}")
    if name == "regex":
        pattern = re.compile(args, re.IGNORECASE)
        return lambda v: pattern.search(v) is not None
    numbers = [int(a) for a in args.split(",")]
    if name == "min":
        return lambda v: _is_number(int)(v) and int(v) >= numbers[0]
    if name == "max":
        return lambda v: _is_number(int)(v) and int(v) <= numbers[0]
    if name == "range":
        return lambda v: _is_number(int)(v) and numbers[0] <= int(v) <= numbers[1]
    if name == "minlength":
        return lambda v: len(v) >= numbers[0]
    if name == "maxlength":
        return lambda v: len(v) <= numbers[0]
    if name == "length":
        low, high = (numbers[0], numbers[0]) if len(numbers) == 1 else numbers[:2]
        return lambda v: low <= len(v) <= high
    raise RouteTemplateError(f"unknown route constraint {spec!r} in route {template!r}")


@dataclass(frozen=True)
class _Parameter:
    name: str
    optional: bool
    default: str | None
    catch_all: bool
    checks: tuple[Callable[[str], bool], ...]


def _parse_parameter(body: str, template: str) -> _Parameter:
    catch_all = body.startswith("*")
    body = body.lstrip("*")
    # Constraints follow the first ':'; a default follows '=' in the name part.
    name_part, _, constraint_part = body.partition(":")
    default: str | None = None
    if "=" in name_part:
        name_part, default = name_part.split("=", 1)
    elif constraint_part and "=" in constraint_part.rsplit(":", 1)[-1].rsplit(")", 1)[-1]:
        constraint_part, default = constraint_part.rsplit("=", 1)
    optional = name_part.endswith("?") or constraint_part.endswith("?")
    name_part = name_part.rstrip("?")
    constraint_part = constraint_part.rstrip("?")
    if not name_part.isidentifier():
        raise RouteTemplateError(f"bad parameter name {name_part!r} in route {template!r}")
    specs = [c for c in re.split(r":(?![^()]*\))", constraint_part) if c] if constraint_part else []
    checks = tuple(_constraint(spec, template) for spec in specs)
    return _Parameter(name_part, optional or catch_all, default, catch_all, checks)


@dataclass(frozen=True)
class CompiledRoute(Generic[T]):
    """One route template compiled to a regex, with the target it leads to."""

    template: str
    regex: re.Pattern[str]
    parameters: tuple[_Parameter, ...]
    precedence: tuple[int, ...]
    target: T
    #: The template's leading literal segments, lower-cased (ASCII only, else ""): a path that
    #: does not start with them cannot match, so :meth:`RouteTable.find` skips the regex.
    prefix: str = ""

    def match(self, path: str) -> dict[str, str] | None:
        """Route values (percent-decoded) if ``path`` (after the prefix) matches, else None."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        values: dict[str, str] = {}
        for param in self.parameters:
            raw = found.group(param.name)
            if raw is None or raw == "":
                if param.default is not None:
                    values[param.name] = param.default
                continue
            value = unquote(raw)
            if not all(check(value) for check in param.checks):
                return None
            values[param.name] = value
        return values


def compile_route(template: str, target: T) -> CompiledRoute[T]:
    """Compile ``template`` (without the route prefix) for ``target``."""
    segments = [s for s in template.strip("/").split("/") if s != ""]
    pattern = ""
    params: list[_Parameter] = []
    precedence: list[int] = []
    for index, segment in enumerate(segments):
        pieces = _PARAM.split(segment)  # literal, param, literal, param, ..., literal
        literal_only = len(pieces) == 1
        whole_param = len(pieces) == 3 and pieces[0] == "" and pieces[2] == ""
        sep = "/" if index else ""
        if literal_only:
            pattern += re.escape(sep + segment)
            precedence.append(1)
            continue
        if whole_param:
            param = _parse_parameter(pieces[1], template)
            params.append(param)
            body = ".*" if param.catch_all else "[^/]+"
            group = f"(?P<{param.name}>{body})"
            if param.optional or param.default is not None:
                pattern += f"(?:{re.escape(sep)}{group})?" if sep else f"{group}?"
            else:
                pattern += re.escape(sep) + group
            precedence.append(5 if param.catch_all else (3 if param.checks else 4))
            continue
        # A complex segment: literals and parameters mixed; parameters match lazily.
        pattern += re.escape(sep)
        for i, piece in enumerate(pieces):
            if i % 2 == 0:
                pattern += re.escape(piece)
            else:
                param = _parse_parameter(piece, template)
                params.append(param)
                pattern += f"(?P<{param.name}>[^/]+?)" + ("?" if param.optional else "")
        precedence.append(2)
    leading: list[str] = []
    for segment in segments:
        if "{" in segment:
            break
        leading.append(segment)
    prefix = "/".join(leading)
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise RouteTemplateError(f"a parameter appears twice in route {template!r}")
    return CompiledRoute(
        template=template,
        regex=re.compile(pattern, re.IGNORECASE),
        parameters=tuple(params),
        precedence=tuple(precedence),
        target=target,
        prefix=prefix.lower() if prefix.isascii() else "",
    )


@dataclass
class RouteTable(Generic[T]):
    """Routes ordered by precedence; :meth:`find` returns every match in that order."""

    routes: list[CompiledRoute[T]] = field(default_factory=list)
    #: The last :data:`FOUND_KEPT` paths looked up and what they matched: a webhook or a
    #: polled status URL is the same path many times over.
    _found: dict[str, tuple[tuple[CompiledRoute[T], Mapping[str, str]], ...]] = field(
        default_factory=dict, repr=False
    )

    def add(self, template: str, target: T) -> None:
        """Add a template; raises :class:`RouteTemplateError` if it cannot be compiled."""
        self.routes.append(compile_route(template, target))
        # Lower digits mean more specific; at equal digits, longer templates first.
        self.routes.sort(key=lambda r: ((*r.precedence, 9), -len(r.precedence)))
        self._found.clear()

    def find(self, path: str) -> list[tuple[CompiledRoute[T], Mapping[str, str]]]:
        """Every route matching ``path`` (relative to the prefix), most specific first."""
        found = self._found.get(path)
        if found is None:
            found = tuple((route, MappingProxyType(values)) for route, values in self._match(path))
            if len(self._found) >= FOUND_KEPT:
                self._found.clear()  # rarely: many distinct paths (ids in them)
            self._found[path] = found
        return list(found)

    def _match(self, path: str) -> list[tuple[CompiledRoute[T], dict[str, str]]]:
        path = path.strip("/")
        # The prefix test is exact for ASCII paths; others go to every regex (IGNORECASE also
        # folds some non-ASCII letters onto ASCII ones).
        folded = path.lower() if path.isascii() else None
        hits: list[tuple[CompiledRoute[T], dict[str, str]]] = []
        for route in self.routes:
            if folded is not None and not folded.startswith(route.prefix):
                continue
            values = route.match(path)
            if values is not None:
                hits.append((route, values))
        return hits
