"""Generate the Power Automate custom connector for our HTTP API from the action specs.

    python -m tools.generate_connector           # write connector/apiDefinition.swagger.json
                                                 #   and connector/apiProperties.json
    python -m tools.generate_connector --check   # exit 1 if the committed files are stale

Every action in :func:`shared.actions.all_specs` becomes one Swagger 2.0 operation: its
route under ``basePath`` ``/api``, its operationId, texts and visibility from the spec, its
parameters and body schema from the input model (``Param``/``Body`` markers, pydantic
constraints, and the ``x-ms-*`` keys of each field's ``json_schema_extra``), its answers from
``spec.responses`` plus the problem documents every action may return. Nothing here is
per-operation: new actions appear by adding specs (see :mod:`shared.actions.catalog`).

The output follows Microsoft's published connector rules (tests/connector checks them): labels
(``x-ms-summary`` and schema titles) are put in Title Case here, except :data:`KEPT_LABELS`, the
certified connector's own labels that flows migrating from it look for; a dropdown's
``{"parameter": ...}`` reference to a parameter its operation does not have is dropped, so the
look-up falls back to its own default (generation fails if the look-up needs that parameter); a
2xx answer other than 202/204 must name its body's model.

``host`` is the placeholder :data:`HOST_PLACEHOLDER`; each connection names its own function
app (the ``functionAppHost`` connection parameter and the ``dynamichosturl`` policy), or edit
``host`` before importing. Auth is the function key in header ``x-functions-key``. Each Power
Automate connection may also name the app's SmartDialog connection (the optional
``connectionName`` parameter), which a ``setheader`` policy sends as :data:`CONNECTION_HEADER` on
every call unless the call sets it itself; left empty, the app routes by Customer-Id.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, TypeAdapter

from shared.actions import ActionSpec, Body, Param, all_specs

__all__ = [
    "CONNECTION_HEADER",
    "DEFINITION_PATH",
    "HOST_PLACEHOLDER",
    "KEPT_LABELS",
    "PROPERTIES_PATH",
    "build_definition",
    "build_properties",
    "main",
    "render",
    "swagger_schema",
    "title_case",
]

ROOT = Path(__file__).resolve().parents[1]
CONNECTOR_DIR = ROOT / "connector"
DEFINITION_PATH = CONNECTOR_DIR / "apiDefinition.swagger.json"
PROPERTIES_PATH = CONNECTOR_DIR / "apiProperties.json"

HOST_PLACEHOLDER = "your-function-app.azurewebsites.net"
BASE_PATH = "/api"
TITLE = "SmartDialog Functions"
VERSION = "1.0"
DESCRIPTION = (
    "Send and manage SMS and WhatsApp through your own SmartDialog Functions app: group "
    "contacts, WhatsApp templates and opt-ins, with the action names of the SmartDialog "
    "connector."
)
SECURITY_NAME = "function_key"
#: The header naming the app's SmartDialog connection (README "Connections").
CONNECTION_HEADER = "X-SmartDialog-Connection"
BRAND_COLOR = "#1F6F5C"
#: Error answers every action may give, all RFC 9457 problem documents.
ERROR_RESPONSES: Mapping[int, str] = {
    400: "The request is not valid; errors lists every offending field.",
    403: "SmartDialog refused the app's account this customer or operation.",
    404: "SmartDialog does not know the customer, service or item.",
    422: "SmartDialog rejected the request; detail has its message.",
    429: "Too many calls; retry after the Retry-After header's seconds.",
    502: "SmartDialog failed.",
    503: "SmartDialog is unavailable, or the app is not configured (detail says which).",
    504: "SmartDialog did not answer in time.",
}
#: Labels the certified SmartDialog connector shows in sentence case: kept as they are (not put in
#: Title Case) so that makers moving from it find the fields they know.
KEPT_LABELS = frozenset({"Recipient address", "Sender address"})
#: Words a Title Case label keeps in lower case unless they start it.
MINOR_WORDS = frozenset(
    {"a", "an", "and", "as", "at", "by", "for", "from", "in", "nor", "of", "on", "or", "per", "the"}
    | {"to", "via", "vs", "with"}
)
#: 2xx answers that have no body by design (accepted for later, no content).
BODYLESS_SUCCESS = frozenset({202, 204})
# Keys of a converted schema copied onto a non-body parameter.
PARAM_KEYS = (
    "type",
    "format",
    "items",
    "enum",
    "default",
    "maxLength",
    "minLength",
    "pattern",
    "minimum",
    "maximum",
    "description",
    "x-ms-summary",
    "x-ms-visibility",
    "x-ms-dynamic-values",
)
# Keys of a converted body schema also set on the body parameter itself.
BODY_PARAM_KEYS = ("description", "x-ms-summary", "x-ms-visibility")
# JSON Schema keys Swagger 2.0 schemas also have (others are dropped or converted).
SCHEMA_KEYS = frozenset(
    {
        "type",
        "format",
        "title",
        "description",
        "default",
        "enum",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "required",
    }
)


# --- problem documents ---------------------------------------------------------------------------


class _FieldErrorDoc(BaseModel):
    field: str = Field(
        description="The offending field as the caller named it, e.g. phone or Buttons[0].Data.",
        json_schema_extra={"x-ms-summary": "Field"},
    )
    message: str = Field(
        description="What is wrong with it.", json_schema_extra={"x-ms-summary": "Message"}
    )


class _ProblemDoc(BaseModel):
    type: str = Field(description="URN naming the kind of problem.")
    title: str = Field(description="Short summary of the kind of problem.")
    status: int = Field(description="The HTTP status code.")
    detail: str | None = Field(None, description="What went wrong this time.")
    instance: str | None = Field(None, description="Identifies this occurrence in the app's logs.")
    errors: list[_FieldErrorDoc] | None = Field(None, description="The offending request fields.")


# --- schema conversion ---------------------------------------------------------------------------


def swagger_schema(model: Any) -> dict[str, Any]:
    """A Swagger 2.0 schema (inlined, nullable unions flattened) for a model or type."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        schema = model.model_json_schema(by_alias=True)
    else:
        schema = TypeAdapter(model).json_schema(by_alias=True)
    defs = schema.pop("$defs", {})
    schema.pop("description", None)  # a model's docstring is for developers, not flow authors
    return _convert(schema, defs)


def _convert(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        # The referring field's description wins; the model's docstring is not for flows.
        node = {**{k: v for k, v in target.items() if k != "description"}, **node}
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in node:
            options = [o for o in node.pop(combinator) if o != {"type": "null"}]
            if len(options) != 1:
                raise ValueError(f"cannot express {combinator} of {len(options)} types in Swagger")
            node = {**_convert(options[0], defs), **node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key == "type" and isinstance(value, list):
            out[key] = next(t for t in value if t != "null")
        elif key == "default" and value is None:
            continue
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            raise ValueError("use ge/le, not gt/lt: Swagger 2.0 has no numeric exclusive bounds")
        elif key in SCHEMA_KEYS or key.startswith("x-"):
            out[key] = value
    # The label flows show comes from x-ms-summary; pydantic's generated titles would compete.
    out.pop("title", None)
    if "x-ms-summary" in out:
        out["title"] = out["x-ms-summary"]
    if out.get("required") == []:
        del out["required"]
    return out


# --- operations ----------------------------------------------------------------------------------


def _parameters(spec: ActionSpec[Any]) -> list[dict[str, Any]]:
    schema = spec.input.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})
    properties = schema.get("properties", {})
    params: list[dict[str, Any]] = []
    path_names: list[str] = []
    for name, info in spec.input.model_fields.items():
        marker = next((m for m in info.metadata if isinstance(m, Param | Body)), None)
        if marker is None:
            continue
        converted = _convert(properties[name], defs)
        if isinstance(marker, Body):
            # The body field's own texts (Field(description=..., json_schema_extra=ui(...)))
            # label the parameter; the schema keeps them too.
            body: dict[str, Any] = {"name": "body", "in": "body", "required": info.is_required()}
            body.update({k: converted[k] for k in BODY_PARAM_KEYS if k in converted})
            body["schema"] = converted
            params.append(body)
            continue
        param: dict[str, Any] = {"name": marker.name, "in": marker.location}
        if marker.location == "path":
            path_names.append(marker.name)
            param["required"] = True
            param["x-ms-url-encoding"] = "single"
        else:
            param["required"] = info.is_required() and marker.default is None
        param.update({k: converted[k] for k in PARAM_KEYS if k in converted})
        params.append(param)
    if sorted(path_names) != sorted(spec.path_params):
        raise ValueError(
            f"{spec.operation_id}: route {spec.route} and path parameters {path_names} disagree"
        )
    return params


def _responses(spec: ActionSpec[Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for doc in spec.responses:
        if 200 <= doc.status < 300 and doc.status not in BODYLESS_SUCCESS and doc.model is None:
            raise ValueError(
                f"{spec.operation_id}: its {doc.status} answer needs a model (a flow reads the "
                "body through its schema); answer 204 when there is no body"
            )
        response: dict[str, Any] = {"description": doc.description}
        if doc.model is not None:
            response["schema"] = swagger_schema(doc.model)
        if doc.headers:
            response["headers"] = {
                name: {"type": "string", "description": text} for name, text in doc.headers.items()
            }
        responses[str(doc.status)] = response
    for status, text in ERROR_RESPONSES.items():
        responses.setdefault(
            str(status), {"description": text, "schema": {"$ref": "#/definitions/Problem"}}
        )
    return responses


def _operation(spec: ActionSpec[Any]) -> dict[str, Any]:
    parameters = _parameters(spec)
    operation: dict[str, Any] = {
        "operationId": spec.operation_id,
        "summary": spec.summary,
        "description": spec.description,
    }
    if spec.tags:
        operation["tags"] = list(spec.tags)
    if spec.visibility is not None:
        operation["x-ms-visibility"] = spec.visibility
    if spec.deprecated:
        operation["deprecated"] = True
    if any(p["in"] == "body" for p in parameters):
        operation["consumes"] = ["application/json"]
    operation["produces"] = ["application/json", "application/problem+json"]
    operation["parameters"] = parameters
    operation["responses"] = _responses(spec)
    operation.update(spec.connector_extensions)
    return operation


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in ``node``, itself included, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nodes(value)


def _resolve_dropdowns(operations: Mapping[str, dict[str, Any]]) -> None:
    """Drop each dropdown's ``{"parameter": name}`` reference to a parameter its operation lacks.

    The look-up then runs without it and uses its own default (an optional ``Customer-Id`` falls
    back to the app's customer). A parameter the look-up requires cannot be left out: that is a
    mistake in the spec, and generation fails naming it.
    """
    for operation_id, operation in operations.items():
        own = {p["name"] for p in operation["parameters"]}
        for node in _nodes(operation["parameters"]):
            dropdown = node.get("x-ms-dynamic-values")
            if not isinstance(dropdown, dict) or "parameters" not in dropdown:
                continue
            target = operations.get(dropdown["operationId"])
            if target is None:
                raise ValueError(f"{operation_id}: no operation {dropdown['operationId']}")
            required = {p["name"] for p in target["parameters"] if p.get("required")}
            kept: dict[str, Any] = {}
            for name, value in dropdown["parameters"].items():
                ref = value.get("parameter") if isinstance(value, dict) else None
                if ref is None or ref in own:
                    kept[name] = value
                elif name in required:
                    raise ValueError(
                        f"{operation_id}: the {dropdown['operationId']} dropdown needs "
                        f"{name} from parameter {ref}, which {operation_id} does not have"
                    )
            node["x-ms-dynamic-values"] = {**dropdown, "parameters": kept}
            if not kept:
                del node["x-ms-dynamic-values"]["parameters"]


def title_case(label: str) -> str:
    """``label`` in Title Case, as connector labels are written; :data:`KEPT_LABELS` stay as is.

    Each word (and each part of a hyphenated one) gets a capital initial, except the minor
    words after the first; the rest of a word is left alone, so WhatsApp, SMS and URL survive.
    """
    if label in KEPT_LABELS:
        return label
    words = label.split(" ")
    return " ".join(
        word
        if index and word in MINOR_WORDS
        else "-".join(part[:1].upper() + part[1:] for part in word.split("-"))
        for index, word in enumerate(words)
    )


def _with_title_case_labels(node: Any) -> Any:
    """A copy of ``node`` whose ``x-ms-summary`` and ``title`` strings are in Title Case."""
    if isinstance(node, dict):
        return {
            key: title_case(value)
            if key in ("x-ms-summary", "title") and isinstance(value, str)
            else _with_title_case_labels(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_with_title_case_labels(value) for value in node]
    return node


def build_definition(
    specs: Iterable[ActionSpec[Any]] | None = None, host: str = HOST_PLACEHOLDER
) -> dict[str, Any]:
    """The Swagger 2.0 document for ``specs`` (default: every registered action)."""
    paths: dict[str, dict[str, Any]] = {}
    operations: dict[str, dict[str, Any]] = {}
    tags: dict[str, None] = {}
    for spec in all_specs() if specs is None else specs:
        item = paths.setdefault("/" + spec.route, {})
        item.update(spec.path_extensions)
        item[spec.method.lower()] = operations[spec.operation_id] = _operation(spec)
        tags.update(dict.fromkeys(spec.tags))
    _resolve_dropdowns(operations)
    return {
        "swagger": "2.0",
        "info": {"title": TITLE, "description": DESCRIPTION, "version": VERSION},
        "host": host,
        "basePath": BASE_PATH,
        "schemes": ["https"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "paths": _with_title_case_labels(paths),
        "definitions": _with_title_case_labels({"Problem": swagger_schema(_ProblemDoc)}),
        "parameters": {},
        "responses": {},
        "securityDefinitions": {
            SECURITY_NAME: {"type": "apiKey", "in": "header", "name": "x-functions-key"}
        },
        "security": [{SECURITY_NAME: []}],
        "tags": [{"name": tag} for tag in tags],
        "x-ms-connector-metadata": [
            {"propertyName": "Categories", "propertyValue": "Communication;Collaboration"}
        ],
    }


def build_properties() -> dict[str, Any]:
    """``apiProperties.json``: an API-key (function key) connection to one function app."""
    return {
        "properties": {
            "connectionParameters": {
                "functionAppHost": {
                    "type": "string",
                    "uiDefinition": {
                        "displayName": "Function app host name",
                        "description": "Host name of your function app, without https://.",
                        "tooltip": "For example my-smartdialog.azurewebsites.net",
                        "constraints": {"tabIndex": 1, "clearText": True, "required": "true"},
                    },
                },
                "api_key": {
                    "type": "securestring",
                    "uiDefinition": {
                        "displayName": "Function key",
                        "description": "A function key or host key of your function app.",
                        "tooltip": "Azure portal: your function app, App keys",
                        "constraints": {"tabIndex": 2, "clearText": False, "required": "true"},
                    },
                },
                "connectionName": {
                    "type": "string",
                    "uiDefinition": {
                        "displayName": "Connection name",
                        "description": "The SmartDialog account this connection uses: a "
                        "connection name of your function app. Empty: chosen by Customer-Id.",
                        "tooltip": "For example sales. Your function app's operator has the "
                        "names (README, Connections)",
                        "constraints": {"tabIndex": 3, "clearText": True, "required": "false"},
                    },
                },
            },
            "policyTemplateInstances": [
                {
                    "templateId": "dynamichosturl",
                    "title": "Function app host",
                    "parameters": {
                        "x-ms-apimTemplateParameter.urlTemplate": (
                            "https://@connectionParameters('functionAppHost')" + BASE_PATH
                        )
                    },
                },
                {
                    "templateId": "setheader",
                    "title": "SmartDialog connection",
                    "parameters": {
                        "x-ms-apimTemplateParameter.name": CONNECTION_HEADER,
                        "x-ms-apimTemplateParameter.value": (
                            "@connectionParameters('connectionName')"
                        ),
                        "x-ms-apimTemplateParameter.existsAction": "skip",
                        "x-ms-apimTemplate-policySection": "Request",
                    },
                },
            ],
            "iconBrandColor": BRAND_COLOR,
            "capabilities": [],
            "publisher": TITLE,
        }
    }


def render(document: Mapping[str, Any]) -> str:
    """The exact text written to a connector file."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.generate_connector", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the files are stale")
    args = parser.parse_args(argv)
    outputs = {
        DEFINITION_PATH: render(build_definition()),
        PROPERTIES_PATH: render(build_properties()),
    }
    stale = [p for p, text in outputs.items() if not p.is_file() or p.read_text("utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run python -m tools.generate_connector")
        return 1 if stale else 0
    CONNECTOR_DIR.mkdir(exist_ok=True)
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
