"""The delivery-report, opt-out and send-failed triggers: subscribe, unsubscribe, fan out.

Subscribing needs the function key (the connector sends it); each ``Delete...Trigger`` is a
subscription's ``Location``, anonymous at the Functions level and opened by its own token.
``TriggerFanout`` turns each note on ``smartdialog-trigger-events`` into one delivery per
subscriber for the ``InboundDispatcher`` (see ``shared.inbound._triggers``).
"""

from __future__ import annotations

import azure.functions as func

from functions.actions import serve
from shared.names import TRIGGER_EVENTS_QUEUE

bp = func.Blueprint()


@bp.function_name("DeliveryReportArrived")
@bp.route(
    route="triggers/delivery-reports/{Service}",
    methods=["POST"],
    auth_level=func.AuthLevel.FUNCTION,
)
def delivery_report_arrived(req: func.HttpRequest) -> func.HttpResponse:
    return serve("DeliveryReportArrived", req)


@bp.function_name("DeleteDeliveryReportTrigger")
@bp.route(
    route="triggers/delivery-reports/{Service}/{SubscriptionId}",
    methods=["DELETE"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
def delete_delivery_report_trigger(req: func.HttpRequest) -> func.HttpResponse:
    return serve("DeleteDeliveryReportTrigger", req)


@bp.function_name("RecipientOptedOut")
@bp.route(route="triggers/opt-outs/{Service}", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def recipient_opted_out(req: func.HttpRequest) -> func.HttpResponse:
    return serve("RecipientOptedOut", req)


@bp.function_name("DeleteOptOutTrigger")
@bp.route(
    route="triggers/opt-outs/{Service}/{SubscriptionId}",
    methods=["DELETE"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
def delete_opt_out_trigger(req: func.HttpRequest) -> func.HttpResponse:
    return serve("DeleteOptOutTrigger", req)


@bp.function_name("SendFailed")
@bp.route(
    route="triggers/send-failures/{Service}", methods=["POST"], auth_level=func.AuthLevel.FUNCTION
)
def send_failed(req: func.HttpRequest) -> func.HttpResponse:
    return serve("SendFailed", req)


@bp.function_name("DeleteSendFailedTrigger")
@bp.route(
    route="triggers/send-failures/{Service}/{SubscriptionId}",
    methods=["DELETE"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
def delete_send_failed_trigger(req: func.HttpRequest) -> func.HttpResponse:
    return serve("DeleteSendFailedTrigger", req)


@bp.function_name("TriggerFanout")
@bp.queue_trigger(arg_name="msg", queue_name=TRIGGER_EVENTS_QUEUE, connection="AzureWebJobsStorage")
def trigger_fanout(msg: func.QueueMessage) -> None:
    """One note in, one delivery per matching subscriber out (see ``shared.inbound``)."""
    from shared.inbound import fan_out_trigger
    from shared.unconfigured import kept_while_unconfigured

    text = msg.get_body().decode("utf-8", errors="replace")
    with kept_while_unconfigured(TRIGGER_EVENTS_QUEUE, text):
        fan_out_trigger(text)
