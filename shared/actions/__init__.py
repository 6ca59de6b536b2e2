"""The HTTP actions and the one request pipeline they all run through.

An *action* is one operation of our HTTP API (``/api/...``), named after the certified
SmartDialog connector's operationId. Everything about it is declared once, in an
:class:`ActionSpec`: method, route, input model, handler, connector texts. The Functions
blueprint (``functions/actions.py``) is a thin shell; the connector definition is generated from
the specs (``python -m tools.generate_connector``).

The pipeline (:func:`handle` / :func:`run_action`), host-independent::

    ActionRequest(method, route_params, query, headers, body: bytes)
        -> a body (or Content-Length) over SMARTDIALOG_MAX_REQUEST_BYTES: 413, nothing parsed
        -> parse_input: every Param/Body field read and validated with pydantic; phone numbers
           to E.164; omitted Customer-Id (etc.) from settings. Any problem: 400
           application/problem+json listing every offending field; no client is built, no
           quota token is taken, nothing is sent upstream.
        -> spec.handler(ActionContext, input) -> ActionResponse
           (ctx.client: the process-wide SmartDialogClient; each attempt takes a quota token)
        -> failures mapped: Problem as raised; QuotaExceeded -> 429 + Retry-After; StaleGrant
           (no fresh slot when the request was to leave: nothing sent) -> 429 + Retry-After: 1;
           QuotaStoreError -> 503; SmartDialog errors via upstream_problem (400->422, 403, 404,
           409, 429, 401->503 naming the credentials, 503->503, other 5xx->502, timeout->504);
           anything else -> 500 problem without details (logged, redacted).
    -> ActionResponse(status, headers, body) -- never raises.

Adding an action (e.g. the send actions of the outbound pipeline)::

    class SendInput(ActionInput):
        phone_regions_from = "Regions"          # optional: where phone regions come from
        customer_id: CustomerIdHeader           # optional header, default SMARTDIALOG_CUSTOMER_ID
        body: Annotated[SendBody, Body()]       # a pydantic model; fields keep upstream names

    def send(ctx: ActionContext, inp: SendInput) -> ActionResponse:
        ...
        return ActionResponse.json(result, status=202, headers={"Location": url})

    SPECS = (ActionSpec(operation_id="SendMessage", method="POST", route="messages",
                        input=SendInput, handler=send, summary=..., description=...,
                        responses=(ResponseDoc(202, "Accepted.", StatusDoc, {"Location": ...}),)),)

then name the module in :data:`shared.actions.catalog.SPEC_MODULES` and add a one-line function
to a blueprint that calls ``functions.actions.serve("SendMessage", req)``. Field types with
validation and connector metadata (``PhoneNumber``, ``RegionCode``, ``HttpUrl``,
``CustomerData``, ``ui(...)``, dropdowns) are in :mod:`shared.actions.fields`; problem documents
in :mod:`shared.problems`; phone parsing in :mod:`shared.phone`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.actions._pipeline import (
    ClientFactory,
    parse_input,
    run_action,
    shared_client,
    unexpected_failure_response,
    unknown_action_response,
    upstream_problem,
)
from shared.actions._spec import (
    JSON_CONTENT_TYPE,
    ActionContext,
    ActionInput,
    ActionRequest,
    ActionResponse,
    ActionSpec,
    Body,
    Param,
    ResponseDoc,
    SettingDefault,
)
from shared.actions.catalog import UnknownAction, all_specs, get_spec

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = [
    "JSON_CONTENT_TYPE",
    "ActionContext",
    "ActionInput",
    "ActionRequest",
    "ActionResponse",
    "ActionSpec",
    "Body",
    "ClientFactory",
    "Param",
    "ResponseDoc",
    "SettingDefault",
    "UnknownAction",
    "all_specs",
    "get_spec",
    "handle",
    "parse_input",
    "run_action",
    "shared_client",
    "unexpected_failure_response",
    "unknown_action_response",
    "upstream_problem",
]


def handle(
    operation_id: str,
    request: ActionRequest,
    *,
    settings: Settings | None = None,
    client_factory: ClientFactory | None = None,
) -> ActionResponse:
    """Run the action registered as ``operation_id`` (see :func:`run_action`); never raises.

    An operationId no action is registered under answers 404; an action module that fails to
    import (or any other failure to find the action) answers 500, logged with the redacted cause.
    """
    try:
        spec = get_spec(operation_id)
    except UnknownAction:
        return unknown_action_response(operation_id, request)
    except Exception as exc:
        return unexpected_failure_response(operation_id, request, exc)
    return run_action(spec, request, settings=settings, client_factory=client_factory)
