"""Reading a request's body and parameters, strictly.

Parameters: a value with control characters, a ``.`` or ``..`` (a path segment that would
change the upstream path) or, in a header, non-ASCII text is refused whatever its field. Input
an action does not read is refused too (:func:`unread_input`), never dropped.

JSON bodies: what ``json.loads`` lets through but nothing downstream can use is refused, each
as a :class:`~shared.problems.FieldError` on its JSON path (e.g.
``Recipients[0].Personalization.n``): ``NaN``, ``Infinity`` and numbers out of float range
(``1e999``), which would be queued as ``null``; integers of more than :data:`MAX_INTEGER_DIGITS`
digits; text that is not valid Unicode (a lone surrogate such as ``"\\ud800"``, which cannot be
encoded as UTF-8 later); nesting deeper than :data:`MAX_DEPTH`.

A validation error of what was read is named as the caller wrote it (:func:`error_field`) and
said in its words (:func:`error_message`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from shared.actions._spec import ActionRequest, Body, Param, SettingDefault
from shared.problems import FieldError

__all__ = [
    "HOST_KEY_PARAMETER",
    "MAX_DEPTH",
    "MAX_INTEGER_DIGITS",
    "BodyRefused",
    "body_query_names",
    "error_field",
    "error_message",
    "loads_strict",
    "not_unicode",
    "param_problem",
    "present",
    "printable",
    "raw_body_field",
    "read_body",
    "read_raw_body",
    "stripped",
    "unread_input",
]

#: Deepest nesting of arrays and objects a body may have (our deepest model needs 4).
MAX_DEPTH = 32
#: Longest integer a body may carry, sign excluded (no field of ours needs more than 19).
MAX_INTEGER_DIGITS = 100
#: The Functions host's own query parameter, the function key (the host reads it in any case).
HOST_KEY_PARAMETER = "code"


class BodyRefused(Exception):
    """The body parsed as JSON but holds values we refuse: ``errors`` names each."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(", ".join(e.field for e in errors))
        self.errors = errors


class _Unusable:
    """What the parser hooks put in place of a number we refuse (found again by the walk)."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _float(text: str) -> float | _Unusable:
    value = float(text)
    if math.isfinite(value):
        return value
    return _Unusable("Must be a finite number: this one is out of range.")


def _int(text: str) -> int | _Unusable:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        return _Unusable(f"Must be a number of at most {MAX_INTEGER_DIGITS} digits.")
    return int(text)


def _constant(text: str) -> _Unusable:
    return _Unusable(f"Must be a finite number, not {text}.")


def printable(text: str) -> str:
    """``text`` fit for a problem document: a lone surrogate becomes its ``\\uXXXX`` escape."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _valid_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    name = printable(key)
    return f"{parent}.{name}" if parent else name


def _walk(value: Any, where: str, top: str, depth: float, errors: list[FieldError]) -> None:
    """Collect what is refused in ``value`` (at JSON path ``where``, under top-level ``top``;
    ``depth`` is its nesting, ``-inf`` when any is allowed)."""
    if isinstance(value, _Unusable):
        errors.append(FieldError(where or "body", value.message))
    elif isinstance(value, str):
        if not _valid_unicode(value):
            errors.append(FieldError(where or "body", "Must be valid Unicode text."))
    elif isinstance(value, dict | list):
        if depth > MAX_DEPTH:  # named at its top-level field: the full path is as deep
            errors.append(FieldError(top or "body", f"Nested more than {MAX_DEPTH} deep."))
            return
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            here = _path(where, key)
            if isinstance(key, str) and not _valid_unicode(key):
                errors.append(FieldError(here, "The field name must be valid Unicode text."))
                continue
            _walk(item, here, top or here, depth + 1, errors)


def _none_unless_unusable(value: Any) -> None:
    if isinstance(value, _Unusable):
        raise TypeError("unusable")  # the walk names it


def not_unicode(value: Any) -> list[FieldError]:
    """Each text or field name in parsed JSON ``value`` that is not valid Unicode (a lone
    surrogate), on its JSON path, whatever the nesting: what :func:`loads_strict` refuses of
    text, for JSON parsed by others (an SDK, the host)."""
    errors: list[FieldError] = []
    try:  # in C, a third of the walk's time: every text and field name the walk reads, as is
        json.dumps(value, ensure_ascii=False, default=_none_unless_unusable).encode("utf-8")
    except Exception:  # a lone surrogate, an _Unusable, a key or a cycle it cannot write
        _walk(value, "", "", -math.inf, errors)
    return errors


def loads_strict(raw: bytes) -> Any:
    """``raw`` parsed as JSON; raises ``ValueError`` (``json.JSONDecodeError``,
    ``UnicodeDecodeError``) for what is not JSON, ``RecursionError`` for nesting the parser
    cannot follow, and :class:`BodyRefused` for JSON holding values listed in the module's
    docstring."""
    data = json.loads(raw, parse_float=_float, parse_int=_int, parse_constant=_constant)
    errors: list[FieldError] = []
    _walk(data, "", "", 1, errors)
    if errors:
        raise BodyRefused(errors)
    return data


def present(value: Any) -> bool:
    """A given value: neither None nor empty."""
    return value is not None and value != ""


def stripped(value: Any) -> Any:
    """``value`` without surrounding blanks when it is text."""
    return value.strip() if isinstance(value, str) else value


#: C0 and C1 control characters and DEL: never part of an id, a name or a header value.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def read_body(request: ActionRequest) -> tuple[Any, list[FieldError]]:
    """The parsed JSON object, or what is wrong with it; ``(None, [])`` when there is no body."""
    if not request.body.strip():
        return None, []
    try:
        data = loads_strict(request.body)
    except BodyRefused as exc:
        return None, exc.errors
    except UnicodeDecodeError:
        return None, [FieldError("body", "The body is not UTF-8 encoded JSON.")]
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        return None, [FieldError("body", f"The body is not valid JSON ({exc.msg} at {where}).")]
    except RecursionError:
        return None, [FieldError("body", f"The body is nested more than {MAX_DEPTH} deep.")]
    if not isinstance(data, dict):
        return None, [
            FieldError("body", f"The body must be a JSON object, not {_json_kind(data)}.")
        ]
    return data, []


def _media_type(request: ActionRequest) -> tuple[str, str | None]:
    """The request's media type (lower case, no parameters) and its charset, if given."""
    value = request.header("Content-Type") or ""
    media, *params = (p.strip() for p in value.split(";"))
    charset = next(
        (p.split("=", 1)[1].strip().strip('"') for p in params if p.lower().startswith("charset=")),
        None,
    )
    return media.lower(), charset


def raw_body_field(marker: Body, request: ActionRequest) -> str | None:
    """The body field taking this request's body as text (a raw media type), or None (JSON)."""
    if not marker.raw:
        return None
    media, _ = _media_type(request)
    return next((f for m, f in marker.raw.items() if m.lower() == media), None)


def read_raw_body(
    request: ActionRequest, model: Any, raw_field: str
) -> tuple[dict[str, Any] | None, list[FieldError]]:
    """A raw body as ``{raw_field: text}`` plus the body fields given as query parameters."""
    _, charset = _media_type(request)
    try:
        text = request.body.decode(charset or "utf-8")
        text.encode("utf-8")  # some codecs (utf-7) decode to lone surrogates
    except (LookupError, UnicodeError):
        return None, [FieldError("body", f"The body is not {charset or 'UTF-8'} encoded text.")]
    data: dict[str, Any] = {raw_field: text.removeprefix("\ufeff")}
    for key in body_query_names(model, raw_field):
        if present(request.query.get(key)):
            data[key] = stripped(request.query[key])
    return data, []


def body_query_names(model: Any, raw_field: str) -> Iterator[str]:
    """The query parameters a raw body's other fields come from: their wire names."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        for name, info in model.model_fields.items():
            if (info.alias or name) != raw_field:
                yield info.alias or name


def unread_input(
    request: ActionRequest, declared: Mapping[str, str], takes_body: bool
) -> list[FieldError]:
    """What ``request`` gives that its action would not read: each query parameter not in
    ``declared`` (the action's parameter names, exactly as they are read, to where they are
    read from: ``path``, ``query``, ``header``) but the host's :data:`HOST_KEY_PARAMETER`, and
    a body when it ``takes_body`` not (blank, ``{}`` and ``null`` give nothing: taken, as tools
    send them with a DELETE), and a header named as one of its query parameters. Dropped, it
    acted on other input: a phone in DeleteAllGroupContacts' query or body emptied the whole
    group; the certified connector's ``ServiceType`` header listed the one-way services."""
    errors: list[FieldError] = []
    for key in request.query:
        if declared.get(key) != "query" and key.lower() != HOST_KEY_PARAMETER:
            name = key if len(key) <= 100 else key[:100] + "..."  # a 5,000-character key
            errors.append(FieldError(printable(name), _unread_parameter(key, declared)))
    headers = {name.lower() for name, where in declared.items() if where == "header"}
    for name, where in declared.items():
        if where == "query" and name.lower() in request.headers and name.lower() not in headers:
            why = f"Not a header of this action: give {name} as a query parameter."
            errors.append(FieldError(name, why))
    if not takes_body and re.sub(rb"\s", b"", request.body) not in (b"", b"{}", b"null"):
        errors.append(FieldError("body", "This action takes no body: give its input in the "
                                 "path, query parameters and headers it declares."))  # fmt: skip
    return errors


def _unread_parameter(key: str, declared: Mapping[str, str]) -> str:
    near = next((n for n in declared if n.lower() == key.lower()), None)
    if near is None:
        return "Unknown query parameter: this action does not read it; check its name."
    if declared[near] == "query":
        return f"Unknown query parameter: the action reads {near} (names are case-sensitive)."
    where = "in the path" if declared[near] == "path" else "as a header"
    return f"Not a query parameter of this action: give {near} {where}."


def param_problem(marker: Param, value: Any) -> str | None:
    """Why a parameter's value is refused whatever its field: parameters end up in upstream
    paths and headers, where these would change the request (or fail to encode)."""
    if not isinstance(value, str):
        return None
    if _CONTROL.search(value):
        return "Must not contain control characters."
    if value in (".", ".."):
        return "Must not be . or .. (a path segment that would change the upstream path)."
    if marker.location == "header" and not value.isascii():
        return "Must be ASCII text (it is a header)."
    if not _valid_unicode(value):
        return "Must be valid Unicode text."
    return None


def _json_kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number"}
    kinds[float] = "a number"
    return "null" if value is None else kinds.get(type(value), "a value")


def error_field(loc: tuple[int | str, ...], names: Mapping[str, str], body: str | None,
                 raw: Mapping[str, Any], missing: bool) -> str:  # fmt: skip
    """The field as the caller wrote it: a segment the given value does not hold (pydantic's tag
    of a union branch: ``str``, ``function-after[...]``...) is left out, but a missing field."""
    head, rest = str(loc[0]), loc[1:]
    value: Any = raw.get(head)
    text = "" if head == body else names.get(head, head)
    for at, part in enumerate(rest):
        index = isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)
        held = index or (isinstance(value, dict) and part in value)
        if held or (missing and at == len(rest) - 1):
            value = value[part] if held else None
            text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "body"


def error_message(error: Mapping[str, Any], setting: SettingDefault | None, name: str) -> str:
    kind = error["type"]
    if kind == "missing":
        if setting is not None:
            return f"Required: send the {name} header or set the app setting {setting.env}."
        return "Required."
    if kind == "extra_forbidden":
        return "Unknown field: check its name against the action's fields."
    cause = error.get("ctx", {}).get("error")
    if kind in ("value_error", "assertion_error") and cause is not None:
        message = str(cause)
        return message[:1].upper() + message[1:]
    if kind in ("too_long", "too_short") and isinstance(text := error.get("input"), str):
        most = kind == "too_long"  # a text's bound after its validator is told as a list's
        bound = error["ctx"]["max_length" if most else "min_length"]
        return f"Should have at {'most' if most else 'least'} {bound} characters, not {len(text)}."
    return str(error["msg"]).rstrip(".") + "."
