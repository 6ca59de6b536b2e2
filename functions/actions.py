"""The connector's synchronous actions as HTTP functions (function-key auth).

Each function is named after the certified connector's operationId and only hands the request
to :func:`serve`, which converts it to the host-independent :class:`shared.actions.ActionRequest`,
runs the shared pipeline and converts the answer back. Routes and methods here must match the
specs in ``shared/actions`` (``tests/actions/test_function_metadata.py`` checks that); the
pipeline and its dependencies load on the first request, not when the app is imported.

Other blueprints with pipeline actions (the send actions) reuse :func:`serve` the same way.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from shared.logs import redacted_traceback

if TYPE_CHECKING:
    from shared.actions import ActionRequest, ActionResponse

__all__ = ["bp", "serve", "to_action_request", "to_http_response"]

bp = func.Blueprint()
FUNCTION = func.AuthLevel.FUNCTION


def to_action_request(req: func.HttpRequest) -> ActionRequest:
    """The pipeline's view of a Functions HTTP request. The Python worker drops a query
    parameter whose value is empty (``?Phone=``), so those are read from the URL, which it
    passes whole: a parameter an action does not read is refused even when empty."""
    from shared.actions import ActionRequest

    query = dict(req.params)
    for key, value in parse_qsl(urlsplit(req.url).query, keep_blank_values=True):
        query.setdefault(key, value)
    return ActionRequest(
        method=req.method,
        route_params=dict(req.route_params),
        query=query,
        headers=dict(req.headers),
        body=req.get_body() or b"",
    )


def to_http_response(response: ActionResponse) -> func.HttpResponse:
    """A Functions HTTP response from the pipeline's answer."""
    return func.HttpResponse(
        body=response.body_bytes,
        status_code=response.status,
        headers=response.all_headers,
    )


def serve(operation_id: str, req: func.HttpRequest) -> func.HttpResponse:
    """Run the pipeline action ``operation_id`` for ``req``; always answers, never raises.

    :func:`shared.actions.handle` answers every failure it sees with a problem document; what
    is left (the pipeline failing to import, an answer that cannot be encoded) is a 500 problem
    document built here from nothing but the standard library, never a bare host 500.
    """
    try:
        from shared.actions import handle

        return to_http_response(handle(operation_id, to_action_request(req)))
    except Exception as exc:
        logging.getLogger("smartdialog.actions").error(
            "%s failed outside the action pipeline: %s", operation_id, redacted_traceback(exc)
        )
        return func.HttpResponse(
            body=json.dumps(_INTERNAL_ERROR).encode("utf-8"),
            status_code=500,
            headers={"Content-Type": "application/problem+json"},
        )


# The problem document of shared.problems.internal_error(), spelled out for when it cannot load.
_INTERNAL_ERROR = {
    "type": "urn:smartdialog-functions:problem:internal",
    "title": "Internal error",
    "status": 500,
    "detail": "The request failed unexpectedly. Quote the instance when you report it.",
}


# --- group contacts ----------------------------------------------------------------------------


@bp.function_name("GetGroupContact")
@bp.route(route="groups/{GroupService}/contacts/{Phone}", methods=["GET"], auth_level=FUNCTION)
def get_group_contact(req: func.HttpRequest) -> func.HttpResponse:
    return serve("GetGroupContact", req)


@bp.function_name("CreateGroupContact")
@bp.route(route="groups/{GroupService}/contacts", methods=["POST"], auth_level=FUNCTION)
def create_group_contact(req: func.HttpRequest) -> func.HttpResponse:
    return serve("CreateGroupContact", req)


@bp.function_name("UpdateGroupContact")
@bp.route(route="groups/{GroupService}/contacts/{Phone}", methods=["PUT"], auth_level=FUNCTION)
def update_group_contact(req: func.HttpRequest) -> func.HttpResponse:
    return serve("UpdateGroupContact", req)


@bp.function_name("DeleteGroupContact")
@bp.route(route="groups/{GroupService}/contacts/{Phone}", methods=["DELETE"], auth_level=FUNCTION)
def delete_group_contact(req: func.HttpRequest) -> func.HttpResponse:
    return serve("DeleteGroupContact", req)


@bp.function_name("DeleteAllGroupContacts")
@bp.route(route="groups/{GroupService}/contacts", methods=["DELETE"], auth_level=FUNCTION)
def delete_all_group_contacts(req: func.HttpRequest) -> func.HttpResponse:
    # ".../contacts/" is DeleteGroupContact with an empty Phone, which the host's routing (a
    # trailing slash ignored) brings here: its 400 naming Phone, never every contact deleted.
    if urlsplit(req.url).path.endswith("/"):
        return serve("DeleteGroupContact", req)
    return serve("DeleteAllGroupContacts", req)


# --- WhatsApp ----------------------------------------------------------------------------------


@bp.function_name("CreateWhatsappTemplate")
@bp.route(
    route="whatsapp/identities/{IdentityNumber}/templates", methods=["POST"], auth_level=FUNCTION
)
def create_whatsapp_template(req: func.HttpRequest) -> func.HttpResponse:
    return serve("CreateWhatsappTemplate", req)


@bp.function_name("WhatsAppOptIn")
@bp.route(
    route="whatsapp/senders/{Sender}/opt-ins/{Recipient}", methods=["PUT"], auth_level=FUNCTION
)
def whats_app_opt_in(req: func.HttpRequest) -> func.HttpResponse:
    return serve("WhatsAppOptIn", req)


@bp.function_name("WhatsAppOptOut")
@bp.route(
    route="whatsapp/senders/{Sender}/opt-ins/{Recipient}", methods=["DELETE"], auth_level=FUNCTION
)
def whats_app_opt_out(req: func.HttpRequest) -> func.HttpResponse:
    return serve("WhatsAppOptOut", req)


# --- look-ups (the connector's dropdowns) ------------------------------------------------------


@bp.function_name("GetUserCustomers")
@bp.route(route="customers", methods=["GET"], auth_level=FUNCTION)
def get_user_customers(req: func.HttpRequest) -> func.HttpResponse:
    return serve("GetUserCustomers", req)


@bp.function_name("GetCustomerServices")
@bp.route(route="services", methods=["GET"], auth_level=FUNCTION)
def get_customer_services(req: func.HttpRequest) -> func.HttpResponse:
    return serve("GetCustomerServices", req)


@bp.function_name("GetCustomerWhatsAppTemplates")
@bp.route(route="whatsapp/templates", methods=["GET"], auth_level=FUNCTION)
def get_customer_whats_app_templates(req: func.HttpRequest) -> func.HttpResponse:
    return serve("GetCustomerWhatsAppTemplates", req)


@bp.function_name("GetWhatsappTemplateCategories")
@bp.route(route="whatsapp/template-categories", methods=["GET"], auth_level=FUNCTION)
def get_whatsapp_template_categories(req: func.HttpRequest) -> func.HttpResponse:
    return serve("GetWhatsappTemplateCategories", req)


@bp.function_name("GetCustomerWhatsappIdentities")
@bp.route(route="whatsapp/identities", methods=["GET"], auth_level=FUNCTION)
def get_customer_whatsapp_identities(req: func.HttpRequest) -> func.HttpResponse:
    return serve("GetCustomerWhatsappIdentities", req)


@bp.function_name("ListConnections")
@bp.route(route="connections", methods=["GET"], auth_level=FUNCTION)
def list_connections(req: func.HttpRequest) -> func.HttpResponse:
    return serve("ListConnections", req)


@bp.function_name("GetPhoneNumberRegions")
@bp.route(route="phone-number-regions", methods=["GET"], auth_level=FUNCTION)
def get_phone_number_regions(req: func.HttpRequest) -> func.HttpResponse:
    return serve("GetPhoneNumberRegions", req)
