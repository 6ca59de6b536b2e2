"""The delivery-report callback: SmartDialog GETs a send's ``DlrUrl`` (ours) once per report.

Anonymous at the Functions level: the URL carries an HMAC token bound to our message id.
"""

from __future__ import annotations

import azure.functions as func

from functions.actions import to_action_request, to_http_response

bp = func.Blueprint()


@bp.function_name("DeliveryReport")
@bp.route(route="callbacks/dlr/{MessageId}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def delivery_report(req: func.HttpRequest) -> func.HttpResponse:
    """Record one delivery report and move its recipient's status forward."""
    from shared.inbound import receive_delivery_report

    return to_http_response(receive_delivery_report(to_action_request(req)))
