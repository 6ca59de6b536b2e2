"""The delivery-report callback: SmartDialog GETs a send's ``DlrUrl`` (ours) once per report.

Anonymous at the Functions level: the URL carries an HMAC token bound to our message id.
``DlrForwarder`` passes each report on to the send's own ``DlrUrl`` from a queue; it returns
normally for anything that URL can cause, so only our own storage failing makes the host retry.
"""

from __future__ import annotations

import azure.functions as func

from functions.actions import to_action_request, to_http_response
from shared.names import DLR_FORWARD_QUEUE

bp = func.Blueprint()


@bp.function_name("DeliveryReport")
@bp.route(route="callbacks/dlr/{MessageId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def delivery_report(req: func.HttpRequest) -> func.HttpResponse:
    """Record one delivery report and move its recipient's status forward."""
    from shared.inbound import receive_delivery_report

    return to_http_response(receive_delivery_report(to_action_request(req)))


@bp.function_name("DlrForwarder")
@bp.queue_trigger(arg_name="msg", queue_name=DLR_FORWARD_QUEUE, connection="AzureWebJobsStorage")
def dlr_forwarder(msg: func.QueueMessage) -> None:
    """Call the send's own ``DlrUrl`` with one report (see ``shared.inbound._dlr_forward``)."""
    from shared.inbound import DlrForwarder
    from shared.unconfigured import kept_while_unconfigured

    text = msg.get_body().decode("utf-8", errors="replace")
    with kept_while_unconfigured(DLR_FORWARD_QUEUE, text):
        DlrForwarder.from_settings().process(text)
