"""The New Message trigger: subscribe, unsubscribe, and the queue-triggered dispatcher.

``NewMessage`` needs the function key (the connector sends it); ``DeleteNewMessageTrigger`` is
the subscription's ``Location``, anonymous at the Functions level and opened by its own token.
``InboundDispatcher`` POSTs each queued delivery to its subscriber; it returns normally for
anything a subscriber can cause (retries are re-enqueued copies, failures dead letters), so only
our own storage failing makes the host retry it. ``InboundSeenSweeper`` forgets, hourly, the
deliveries the dispatcher remembered longer than a week.
"""

from __future__ import annotations

import azure.functions as func

from functions.actions import serve
from shared.names import INBOUND_DELIVERIES_QUEUE

bp = func.Blueprint()


@bp.function_name("NewMessage")
@bp.route(
    route="inbound/subscriptions/{Service}", methods=["POST"], auth_level=func.AuthLevel.FUNCTION
)
def new_message(req: func.HttpRequest) -> func.HttpResponse:
    return serve("NewMessage", req)


@bp.function_name("DeleteNewMessageTrigger")
@bp.route(
    route="inbound/subscriptions/{Service}/{SubscriptionId}",
    methods=["DELETE"],
    auth_level=func.AuthLevel.ANONYMOUS,
)
def delete_new_message_trigger(req: func.HttpRequest) -> func.HttpResponse:
    return serve("DeleteNewMessageTrigger", req)


@bp.function_name("InboundDispatcher")
@bp.queue_trigger(
    arg_name="msg", queue_name=INBOUND_DELIVERIES_QUEUE, connection="AzureWebJobsStorage"
)
def inbound_dispatcher(msg: func.QueueMessage) -> None:
    """Deliver one inbound event to one New Message subscriber (see ``shared.inbound``)."""
    from shared.inbound import SubscriberDispatcher
    from shared.unconfigured import kept_while_unconfigured

    text = msg.get_body().decode("utf-8", errors="replace")
    with kept_while_unconfigured(INBOUND_DELIVERIES_QUEUE, text):
        SubscriberDispatcher.from_settings().process(text)


#: Hourly, at minute 41: deliveries remembered longer than a week are forgotten.
SEEN_SWEEP_SCHEDULE = "0 41 * * * *"


@bp.function_name("InboundSeenSweeper")
@bp.timer_trigger(arg_name="timer", schedule=SEEN_SWEEP_SCHEDULE, run_on_startup=False)
def inbound_seen_sweeper(timer: func.TimerRequest) -> None:
    """Deletes ``SmartDialogInboundSeen`` rows older than a week (see ``shared.inbound``)."""
    from shared.inbound import sweep_deliveries_seen

    sweep_deliveries_seen()
