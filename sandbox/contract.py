"""The SmartDialog wire contract and a request validator built on it.

``sandbox/contract.json`` is a prose-free derivative of SmartDialog's published Swagger 2.0
definition: paths, methods, operation ids, parameters and body/response schemas, without
descriptions, titles, summaries or examples. Regenerate it with ``python -m sandbox.contract
--write`` (reads ``../shared/reference/smartdialog-connector/apiDefinition.swagger.json`` relative
to the repository root, or ``--source PATH``); ``--check`` exits 1 when the committed file is
stale.

Importing this module starts nothing. The public API, stable for other test suites:

- ``load_contract(path=None) -> Contract`` (cached for the default file)
- ``match_operation(method, path) -> (operation_id, path_params) | None``
- ``validate_request(method, path, headers, query=None, body=None) -> list[str]`` (empty list: the
  request is valid)
- ``validate_response(operation_id, status, body) -> list[str]``
- ``generate(document) -> dict`` (the derivation itself)

Paths may be given with or without the ``/api-integrations/v1`` base path, with or without a query
string, and percent-encoded as on the wire (``%2B358...``); each segment is percent-decoded before
matching (``+`` stays ``+``).

Known deviations from the definition, applied when the contract is loaded (``contract.json`` stays
faithful):

- ``Protocol`` on the send bodies also accepts ``"WhatsApp"``: the definition's enum lists only
  ``"SMS"``, but its ``AttachmentUri`` field exists for WhatsApp messages sent through the same
  operations.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import functools
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import jsonschema

__all__ = [
    "BASE_PATH",
    "Contract",
    "Operation",
    "Parameter",
    "default_source_path",
    "generate",
    "load_contract",
    "match_operation",
    "validate_request",
    "validate_response",
]

BASE_PATH = "/api-integrations/v1"
CONTRACT_PATH = Path(__file__).with_name("contract.json")
REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_RELATIVE = Path("shared/reference/smartdialog-connector/apiDefinition.swagger.json")

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
# Structural keywords kept by the derivation; everything else (prose, UI hints, dynamic-value
# look-ups) is dropped.
SCHEMA_KEYS = (
    "type",
    "format",
    "enum",
    "default",
    "maxLength",
    "minLength",
    "maximum",
    "minimum",
    "pattern",
    "items",
    "properties",
    "required",
    "additionalProperties",
    "x-ms-notification-url",
)
PARAMETER_KEYS = (
    "name",
    "in",
    "required",
    "type",
    "format",
    "enum",
    "maxLength",
    "default",
    "items",
)
OPERATION_KEYS = ("consumes", "produces", "deprecated", "x-ms-trigger")
# A property literally named "description" carries a prose default in the definition; its default is
# prose too.
PROSE_PROPERTY_NAMES = frozenset({"description"})
# (operation ids, body property, extra enum values) -- see the module docstring.
ENUM_DEVIATIONS = ((("SendMessage", "SendReplyMessage"), "Protocol", ("WhatsApp",)),)


def default_source_path() -> Path:
    """Where the reference definition sits when the repository is cloned beside ``shared/``."""
    return REPO_ROOT.parent / SOURCE_RELATIVE


# --- derivation -----------------------------------------------------------------------------------


def _schema(node: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in SCHEMA_KEYS:
        if key not in node:
            continue
        value = node[key]
        if key == "properties":
            out[key] = {name: _property(name, sub) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = _schema(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _property(name: str, node: Mapping[str, Any]) -> dict[str, Any]:
    out = _schema(node)
    if name in PROSE_PROPERTY_NAMES:
        out.pop("default", None)
    return out


def _parameter(node: Mapping[str, Any]) -> dict[str, Any]:
    out = {key: copy.deepcopy(node[key]) for key in PARAMETER_KEYS if key in node}
    if "x-ms-url-encoding" in node:
        out["x-ms-url-encoding"] = node["x-ms-url-encoding"]
    if "schema" in node:
        out["schema"] = _schema(node["schema"])
    return out


def generate(document: Mapping[str, Any]) -> dict[str, Any]:
    """Derive the prose-free contract from a Swagger 2.0 document (pure, deterministic)."""
    security = {}
    for name, scheme in document.get("securityDefinitions", {}).items():
        kept = {
            k: scheme[k] for k in ("type", "flow", "authorizationUrl", "tokenUrl") if k in scheme
        }
        kept["scopes"] = sorted(scheme.get("scopes", {}))
        security[name] = kept
    paths: dict[str, Any] = {}
    for template, item in document["paths"].items():
        path_out: dict[str, Any] = {}
        if "x-ms-notification-content" in item:
            path_out["x-ms-notification-content"] = {
                "schema": _schema(item["x-ms-notification-content"]["schema"])
            }
        for method in HTTP_METHODS:
            if method not in item:
                continue
            op = item[method]
            op_out: dict[str, Any] = {"operationId": op["operationId"]}
            op_out.update({k: copy.deepcopy(op[k]) for k in OPERATION_KEYS if k in op})
            op_out["parameters"] = [_parameter(p) for p in op.get("parameters", [])]
            op_out["responses"] = {
                code: ({"schema": _schema(resp["schema"])} if "schema" in resp else {})
                for code, resp in op.get("responses", {}).items()
            }
            path_out[method] = op_out
        paths[template] = path_out
    return {
        "swagger": document.get("swagger", "2.0"),
        "host": document.get("host"),
        "basePath": document.get("basePath", BASE_PATH),
        "schemes": document.get("schemes", []),
        "securityDefinitions": security,
        "paths": paths,
    }


def render(contract: Mapping[str, Any]) -> str:
    """The exact text written to ``contract.json``."""
    return json.dumps(contract, indent=2, ensure_ascii=False) + "\n"


# --- model ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    """One operation parameter; ``location`` is ``path``, ``query``, ``header`` or ``body``."""

    name: str
    location: str
    required: bool
    type: str | None = None
    format: str | None = None
    enum: tuple[Any, ...] | None = None
    max_length: int | None = None
    default: Any = None
    schema: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Operation:
    """One operation of the contract; ``path`` is the template without the base path."""

    operation_id: str
    method: str
    path: str
    parameters: tuple[Parameter, ...]
    responses: Mapping[str, Any]
    segments: tuple[str, ...] = field(repr=False, default=())

    @property
    def body(self) -> Parameter | None:
        return next((p for p in self.parameters if p.location == "body"), None)

    def match(self, segments: list[str]) -> dict[str, str] | None:
        if len(segments) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for pattern, value in zip(self.segments, segments, strict=True):
            if pattern.startswith("{") and pattern.endswith("}"):
                if not value:
                    return None
                params[pattern[1:-1]] = value
            elif pattern != value:
                return None
        return params


def _date_time(value: object) -> bool:
    if isinstance(value, str):
        dt.datetime.fromisoformat(value)  # raises ValueError
    return True


def _int32(value: object) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())
    checker.checkers["date-time"] = (_date_time, ValueError)
    checker.checkers["int32"] = (_int32, ())
    return checker


FORMAT_CHECKER = _format_checker()


class Contract:
    """The loaded contract: operation look-up and request/response validation."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self.base_path: str = document.get("basePath", BASE_PATH)
        operations = []
        for template, item in document["paths"].items():
            for method in HTTP_METHODS:
                if method in item:
                    operations.append(_operation(template, method, item[method]))
        # Literal segments win over parameters (/whatsapp/templates/categories before
        # /whatsapp/templates/{id}).
        operations.sort(key=lambda op: [s.startswith("{") for s in op.segments])
        self.operations: tuple[Operation, ...] = tuple(operations)
        self.by_id: dict[str, Operation] = {op.operation_id: op for op in operations}
        self._validators: dict[int, jsonschema.Draft4Validator] = {}

    def notification_schema(self, template: str) -> Mapping[str, Any]:
        """The ``x-ms-notification-content`` schema of a path (the webhook payload)."""
        schema: Mapping[str, Any] = self.document["paths"][template]["x-ms-notification-content"][
            "schema"
        ]
        return schema

    def split(self, path: str) -> list[str]:
        """Percent-decoded segments of ``path`` below the base path (query string ignored)."""
        path = urlsplit(path).path if "://" in path else path.split("?", 1)[0]
        if path == self.base_path or path.startswith(self.base_path + "/"):
            path = path[len(self.base_path) :]
        return [unquote(s) for s in path.strip("/").split("/")]

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        """The operation serving ``method path`` and its decoded path parameters, or None."""
        segments = self.split(path)
        method = method.lower()
        for op in self.operations:
            if op.method == method:
                params = op.match(segments)
                if params is not None:
                    return op, params
        return None

    def allowed_methods(self, path: str) -> list[str]:
        """Methods that some operation serves on ``path`` (for 405 answers)."""
        segments = self.split(path)
        return sorted(
            {op.method.upper() for op in self.operations if op.match(segments) is not None}
        )

    def validator(self, schema: Mapping[str, Any]) -> jsonschema.Draft4Validator:
        key = id(schema)
        found = self._validators.get(key)
        if found is None:
            found = self._validators[key] = jsonschema.Draft4Validator(
                schema, format_checker=FORMAT_CHECKER
            )
        return found

    def validate_request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> list[str]:
        """Every violation of the contract by this request; ``body`` is parsed JSON, raw bytes/str,
        or None.
        """
        found = self.match(method, path)
        if found is None:
            return [f"No operation matches {method.upper()} {path.split('?', 1)[0]}"]
        op, path_params = found
        return self.check(op, path_params, headers or {}, _query(path, query), body)

    def check(
        self,
        op: Operation,
        path_params: Mapping[str, str],
        headers: Mapping[str, str],
        query: Mapping[str, str],
        body: Any,
    ) -> list[str]:
        """Violations of an already matched request (headers looked up case-insensitively)."""
        lowered = {k.lower(): v for k, v in headers.items()}
        errors: list[str] = []
        for param in op.parameters:
            if param.location == "body":
                errors.extend(self._check_body(param, body))
                continue
            if param.location == "header":
                value = lowered.get(param.name.lower())
            elif param.location == "query":
                value = query.get(param.name)
            else:
                value = path_params.get(param.name)
            if value is None or value == "":
                if param.required:
                    errors.append(f"Missing required {param.location} parameter '{param.name}'")
                continue
            problem = _check_scalar(param, value)
            if problem:
                errors.append(f"{param.location.capitalize()} parameter '{param.name}' {problem}")
        return errors

    def _check_body(self, param: Parameter, body: Any) -> list[str]:
        if isinstance(body, bytes | bytearray | str):
            if not body.strip():
                body = None
            else:
                try:
                    body = json.loads(body)
                except ValueError:
                    return ["Request body is not valid JSON"]
        if body is None:
            return ["Request body is required"] if param.required else []
        assert param.schema is not None
        errors = sorted(
            self.validator(param.schema).iter_errors(body), key=lambda e: list(e.absolute_path)
        )
        return [_describe(error) for error in errors]

    def validate_response(self, operation_id: str, status: int, body: Any) -> list[str]:
        """Violations of the documented response schema for ``status`` (none documented: no
        violations).
        """
        response = self.by_id[operation_id].responses.get(str(status), {})
        schema = response.get("schema")
        if schema is None:
            return []
        return [_describe(e) for e in self.validator(schema).iter_errors(body)]


def _operation(template: str, method: str, node: Mapping[str, Any]) -> Operation:
    params = []
    for p in node.get("parameters", []):
        schema = p.get("schema")
        if schema is not None:
            schema = _with_deviations(node["operationId"], schema)
        enum = p.get("enum")
        params.append(
            Parameter(
                name=p["name"],
                location=p["in"],
                required=bool(p.get("required", False)),
                type=p.get("type"),
                format=p.get("format"),
                enum=tuple(enum) if enum is not None else None,
                max_length=p.get("maxLength"),
                default=p.get("default"),
                schema=schema,
            )
        )
    return Operation(
        operation_id=node["operationId"],
        method=method,
        path=template,
        parameters=tuple(params),
        responses=node.get("responses", {}),
        segments=tuple(template.strip("/").split("/")),
    )


def _with_deviations(operation_id: str, schema: Mapping[str, Any]) -> Mapping[str, Any]:
    patched: dict[str, Any] | None = None
    for operation_ids, prop, extra in ENUM_DEVIATIONS:
        if operation_id in operation_ids and prop in schema.get("properties", {}):
            patched = patched or copy.deepcopy(dict(schema))
            enum = patched["properties"][prop].setdefault("enum", [])
            enum.extend(v for v in extra if v not in enum)
    return patched or schema


def _query(path: str, query: Mapping[str, Any] | None) -> dict[str, str]:
    merged = dict(parse_qsl(urlsplit(path).query, keep_blank_values=True)) if "?" in path else {}
    for key, value in (query or {}).items():
        if isinstance(value, list | tuple):
            value = value[0] if value else ""
        merged[key] = str(value)
    return merged


def _check_scalar(param: Parameter, value: str) -> str | None:
    typed: Any = value
    if param.type == "boolean":
        if value.lower() not in ("true", "false"):
            return f"must be a boolean (true or false), got '{value}'"
        typed = value.lower() == "true"
    elif param.type in ("integer", "number"):
        try:
            typed = int(value) if param.type == "integer" else float(value)
        except ValueError:
            return (
                f"must be {'an integer' if param.type == 'integer' else 'a number'}, got '{value}'"
            )
    if param.enum is not None and typed not in param.enum:
        return f"must be one of {list(param.enum)}, got '{value}'"
    if param.max_length is not None and len(value) > param.max_length:
        return f"must be at most {param.max_length} characters long"
    return None


def _describe(error: jsonschema.ValidationError) -> str:
    where = "body" + "".join(
        f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
    )
    kind = error.validator
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"{where}.{missing} is required"
    if kind == "type":
        return (
            f"{where} must be of type {error.validator_value}, got {type(error.instance).__name__}"
        )
    if kind == "enum":
        return (
            f"{where} must be one of {error.validator_value}, got {json.dumps(error.instance)[:80]}"
        )
    if kind == "maxLength":
        limit, got = error.validator_value, len(error.instance)
        return f"{where} must be at most {limit} characters long (got {got})"
    if kind == "format":
        return f"{where} is not a valid {error.validator_value}: {json.dumps(error.instance)[:80]}"
    return f"{where}: {error.message[:200]}"


# --- module-level API -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> Contract:
    return Contract(json.loads(path.read_text(encoding="utf-8")))


def load_contract(path: str | Path | None = None) -> Contract:
    """The contract from ``path`` (default: the committed ``sandbox/contract.json``), cached per
    path.
    """
    return _load(Path(path) if path is not None else CONTRACT_PATH)


def match_operation(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """``(operationId, decoded path parameters)`` for a request, or None when no operation serves
    it.
    """
    found = load_contract().match(method, path)
    return (found[0].operation_id, found[1]) if found else None


def validate_request(
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, Any] | None = None,
    body: Any = None,
) -> list[str]:
    """Violations of the default contract by a request (see :meth:`Contract.validate_request`)."""
    return load_contract().validate_request(method, path, headers, query, body)


def validate_response(operation_id: str, status: int, body: Any) -> list[str]:
    """Violations of the default contract by a response body (see
    :meth:`Contract.validate_response`).
    """
    return load_contract().validate_response(operation_id, status, body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.contract", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=default_source_path(),
        help="reference apiDefinition.swagger.json",
    )
    parser.add_argument(
        "--output", type=Path, default=CONTRACT_PATH, help="contract file (default: %(default)s)"
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="regenerate the contract file")
    action.add_argument("--check", action="store_true", help="exit 1 if the contract file is stale")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        parser.error(f"reference definition not found: {args.source}")
    text = render(generate(json.loads(args.source.read_text(encoding="utf-8"))))
    if args.write:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
        return 0
    current = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
    if current != text:
        print(f"{args.output} is stale: run python -m sandbox.contract --write", file=sys.stderr)
        return 1
    print(f"{args.output} is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
