"""SmartDialog's inbound webhook and its intake processor, the registration actions and the
suppression actions.

``InboundWebhook`` is anonymous at the Functions level: SmartDialog signs nothing, so the URL we
register carries an HMAC token, checked by ``shared.inbound`` before the body is read. It makes
one storage call (the intake queue) and answers 202; ``InboundProcessor`` does the rest. The
processor returns normally for everything a message can cause; only our own storage failing
(or a malformed intake message) raises, so the host retries and, after ``maxDequeueCount``,
moves the message to ``smartdialog-inbound-intake-poison``.
"""

from __future__ import annotations

import azure.functions as func

from functions.actions import serve, to_action_request, to_http_response
from shared.names import INBOUND_INTAKE_QUEUE

bp = func.Blueprint()
FUNCTION = func.AuthLevel.FUNCTION


@bp.function_name("InboundWebhook")
@bp.route(
    route="callbacks/inbound/{Service}", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS
)
def inbound_webhook(req: func.HttpRequest) -> func.HttpResponse:
    """One New Message payload in, one intake message out, 202."""
    from shared.inbound import receive_inbound

    return to_http_response(receive_inbound(to_action_request(req)))


@bp.function_name("InboundProcessor")
@bp.queue_trigger(arg_name="msg", queue_name=INBOUND_INTAKE_QUEUE, connection="AzureWebJobsStorage")
def inbound_processor(msg: func.QueueMessage) -> None:
    """One intake message in, its CloudEvent on ``smartdialog-inbound`` (once) and one delivery
    per New Message subscriber out (see ``shared.inbound``)."""
    from shared.inbound import process_intake
    from shared.unconfigured import kept_while_unconfigured

    text = msg.get_body().decode("utf-8", errors="replace")
    with kept_while_unconfigured(INBOUND_INTAKE_QUEUE, text):
        process_intake(text, queue_message_id=msg.id or "")


@bp.function_name("RegisterInboundWebhook")
@bp.route(route="inbound/webhooks/{Service}", methods=["POST"], auth_level=FUNCTION)
def register_inbound_webhook(req: func.HttpRequest) -> func.HttpResponse:
    return serve("RegisterInboundWebhook", req)


@bp.function_name("UnregisterInboundWebhook")
@bp.route(route="inbound/webhooks/{Service}/{ActionId}", methods=["DELETE"], auth_level=FUNCTION)
def unregister_inbound_webhook(req: func.HttpRequest) -> func.HttpResponse:
    return serve("UnregisterInboundWebhook", req)


# --- opt-out ------------------------------------------------------------------------------------


@bp.function_name("AddSuppression")
@bp.route(route="suppressions/{Service}/{Phone}", methods=["PUT"], auth_level=FUNCTION)
def add_suppression(req: func.HttpRequest) -> func.HttpResponse:
    return serve("AddSuppression", req)


@bp.function_name("RemoveSuppression")
@bp.route(route="suppressions/{Service}/{Phone}", methods=["DELETE"], auth_level=FUNCTION)
def remove_suppression(req: func.HttpRequest) -> func.HttpResponse:
    return serve("RemoveSuppression", req)


@bp.function_name("GetSuppression")
@bp.route(route="suppressions/{Service}/{Phone}", methods=["GET"], auth_level=FUNCTION)
def get_suppression(req: func.HttpRequest) -> func.HttpResponse:
    return serve("GetSuppression", req)
