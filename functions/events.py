"""Events in: the CloudEvents HTTP endpoint, the Event Grid trigger, the
``smartdialog-cloud-events`` queue, and the notification-rule actions (see ``shared.notify``).

``CloudEvents`` needs the function key (Event Grid and other producers put it in the URL);
``CloudEventsGrid`` is called by the host's Event Grid webhook
(``/runtime/webhooks/eventgrid?functionName=CloudEventsGrid``), which checks the system key.
"""

from __future__ import annotations

import azure.functions as func

from functions.actions import serve, to_action_request, to_http_response
from shared.names import CLOUD_EVENTS_QUEUE

bp = func.Blueprint()
FUNCTION = func.AuthLevel.FUNCTION


@bp.function_name("CloudEvents")
@bp.route(route="events", methods=["POST", "OPTIONS"], auth_level=FUNCTION)
def cloud_events(req: func.HttpRequest) -> func.HttpResponse:
    """CloudEvents 1.0 (binary, structured, batched) or Event Grid schema events in."""
    from shared.notify import receive_cloud_events

    return to_http_response(receive_cloud_events(to_action_request(req)))


@bp.function_name("CloudEventsGrid")
@bp.event_grid_trigger(arg_name="event")
def cloud_events_grid(event: str) -> None:
    """One event from an Event Grid subscription (either delivery schema). Annotated ``str``,
    the worker hands over the event's JSON unconverted (a generic binding): its own converter
    refused a time with a UTC offset (``+03:00``) before this ran, and every retry with it."""
    from shared.notify import receive_grid_event

    receive_grid_event(event)


@bp.function_name("CloudEventsQueue")
@bp.queue_trigger(arg_name="msg", queue_name=CLOUD_EVENTS_QUEUE, connection="AzureWebJobsStorage")
def cloud_events_queue(msg: func.QueueMessage) -> None:
    """Events Event Grid (or anyone) put on ``smartdialog-cloud-events``."""
    from shared.notify import process_cloud_event_message
    from shared.unconfigured import kept_while_unconfigured

    text = msg.get_body().decode("utf-8", errors="replace")
    with kept_while_unconfigured(CLOUD_EVENTS_QUEUE, text):
        process_cloud_event_message(text, queue_message_id=msg.id, dequeue_count=msg.dequeue_count)


# --- notification rules and recipient lists -------------------------------------------------------


@bp.function_name("CreateNotificationRule")
@bp.route(route="notification-rules", methods=["POST"], auth_level=FUNCTION)
def create_notification_rule(req: func.HttpRequest) -> func.HttpResponse:
    return serve("CreateNotificationRule", req)


@bp.function_name("ListNotificationRules")
@bp.route(route="notification-rules", methods=["GET"], auth_level=FUNCTION)
def list_notification_rules(req: func.HttpRequest) -> func.HttpResponse:
    return serve("ListNotificationRules", req)


@bp.function_name("DryRunNotificationRules")
@bp.route(route="notification-rules/dry-run", methods=["POST"], auth_level=FUNCTION)
def dry_run_notification_rules(req: func.HttpRequest) -> func.HttpResponse:
    return serve("DryRunNotificationRules", req)


@bp.function_name("GetNotificationRule")
@bp.route(route="notification-rules/{RuleId}", methods=["GET"], auth_level=FUNCTION)
def get_notification_rule(req: func.HttpRequest) -> func.HttpResponse:
    return serve("GetNotificationRule", req)


@bp.function_name("UpdateNotificationRule")
@bp.route(route="notification-rules/{RuleId}", methods=["PUT"], auth_level=FUNCTION)
def update_notification_rule(req: func.HttpRequest) -> func.HttpResponse:
    return serve("UpdateNotificationRule", req)


@bp.function_name("DeleteNotificationRule")
@bp.route(route="notification-rules/{RuleId}", methods=["DELETE"], auth_level=FUNCTION)
def delete_notification_rule(req: func.HttpRequest) -> func.HttpResponse:
    return serve("DeleteNotificationRule", req)


@bp.function_name("PutRecipientList")
@bp.route(route="recipient-lists/{ListName}", methods=["PUT"], auth_level=FUNCTION)
def put_recipient_list(req: func.HttpRequest) -> func.HttpResponse:
    return serve("PutRecipientList", req)


@bp.function_name("GetRecipientList")
@bp.route(route="recipient-lists/{ListName}", methods=["GET"], auth_level=FUNCTION)
def get_recipient_list(req: func.HttpRequest) -> func.HttpResponse:
    return serve("GetRecipientList", req)


@bp.function_name("DeleteRecipientList")
@bp.route(route="recipient-lists/{ListName}", methods=["DELETE"], auth_level=FUNCTION)
def delete_recipient_list(req: func.HttpRequest) -> func.HttpResponse:
    return serve("DeleteRecipientList", req)


#: Hourly, at minute 23: ended quiet periods and past hours' caps go (the dev host runs no timers).
STATE_SWEEP_SCHEDULE = "0 23 * * * *"


@bp.function_name("NotificationStateSweeper")
@bp.timer_trigger(arg_name="timer", schedule=STATE_SWEEP_SCHEDULE, run_on_startup=False)
def notification_state_sweeper(timer: func.TimerRequest) -> None:
    """Deletes the notification rules' quiet periods and caps that can no longer matter."""
    import logging

    from shared.clock import utcnow
    from shared.notify import NotifyState

    gone = NotifyState.from_settings().sweep(now=utcnow())
    logging.getLogger("shared.notify").info("notification state rows swept: %d", gone)
