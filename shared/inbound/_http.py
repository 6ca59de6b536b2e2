"""The two callback endpoints SmartDialog calls, host-independent: request in, answer out.

They are not pipeline actions: their token must be checked before the body is even parsed
(a forged call with a broken body is a 401, not a 400), and SmartDialog, not a flow, is the
caller. They answer with the same envelopes and problem documents as the actions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

from shared import telemetry
from shared.actions._spec import ActionRequest, ActionResponse
from shared.logs import HeldSends, loggable_id, redacted_traceback
from shared.problems import Problem, internal_error, request_instance
from shared.settings_leniency import leniently
from shared.signing import TOKEN_QUERY_PARAMETER, SigningNotConfigured

if TYPE_CHECKING:
    from shared.inbound._dlr import DeliveryReportService
    from shared.inbound._webhook import InboundProcessor, InboundReceiver, ProcessResult
    from shared.settings import Settings

__all__ = ["process_intake", "receive_delivery_report", "receive_inbound"]

log = logging.getLogger("shared.inbound")
#: SmartDialog may call thousands of times a minute: its callbacks refused while the secrets
#: are unset say so once a minute, counted, not once each.
_UNSIGNED = HeldSends(log, level=logging.ERROR, what="SmartDialog callback")


@lru_cache(maxsize=4)
def _receiver(settings: Settings) -> InboundReceiver:
    from shared.inbound._webhook import InboundReceiver

    return InboundReceiver.from_settings(settings)


@lru_cache(maxsize=4)
def _processor(settings: Settings) -> InboundProcessor:
    from shared.inbound._webhook import InboundProcessor

    return InboundProcessor.from_settings(settings)


@lru_cache(maxsize=4)
def _reports(settings: Settings) -> DeliveryReportService:
    from shared.inbound._dlr import DeliveryReportService

    return DeliveryReportService.from_settings(settings)


def _answer(name: str, request: ActionRequest, run: Callable[[], ActionResponse]) -> ActionResponse:
    instance = request_instance(request.tracking_id)
    logged = loggable_id(request.tracking_id)  # the text is what Azure keeps of a line
    try:
        with leniently():  # a broken setting it does not read does not stop SmartDialog's calls
            response = run()
    except SigningNotConfigured as problem:  # a configuration error: 503, SmartDialog retries
        _UNSIGNED.wait("the callback secrets", problem.detail or "", "answered 503: it retries")
        response = ActionResponse.problem(problem.with_instance(instance))
    except Problem as problem:
        response = ActionResponse.problem(problem.with_instance(instance))
    except Exception as exc:
        log.error("%s failed, request %s: %s", name, logged, redacted_traceback(exc))
        response = ActionResponse.problem(internal_error().with_instance(instance))
    # A callback answered 2xx is in the host's own invocation log ("Executed ..."); SmartDialog
    # may call thousands of times a minute, so only what went wrong is logged at info.
    level = logging.DEBUG if response.status < 300 else logging.INFO
    log.log(level, "%s answered %d, request %s", name, response.status, logged,
            extra={"trackingId": logged})  # fmt: skip
    return response


def receive_inbound(request: ActionRequest, settings: Settings | None = None) -> ActionResponse:
    """``POST /api/callbacks/inbound/{Service}?token=...``: SmartDialog's New Message webhook.
    ``202 {"status": "accepted", "id"}`` once the call is on the intake queue, or its event on
    ``smartdialog-inbound`` when it needs no processing (its one storage call); 401 and 400
    problems with nothing stored; 500 when our storage fails (SmartDialog
    retries). A retried message is answered 202 again and published again as the same event
    (the same id), which consumers and the dispatcher recognise."""

    def run() -> ActionResponse:
        from shared.inbound._registry import CONNECTION_QUERY_PARAMETER
        from shared.settings import get_settings

        receiver = _receiver(settings or get_settings())
        service = request.route_params.get("Service", "")
        result = receiver.receive(
            service,
            request.query.get(TOKEN_QUERY_PARAMETER),
            request.body,
            connection=request.query.get(CONNECTION_QUERY_PARAMETER),
        )
        return ActionResponse.json(result.body(), status=202)

    return _answer("InboundWebhook", request, run)


def process_intake(
    text: str, *, queue_message_id: str = "", settings: Settings | None = None
) -> ProcessResult:
    """The ``InboundProcessor`` queue trigger: one intake message in, its event (once) out.
    Raises when the host should retry the message (see ``shared.inbound._webhook``)."""
    from shared.settings import get_settings

    return _processor(settings or get_settings()).process(text, queue_message_id=queue_message_id)


def receive_delivery_report(
    request: ActionRequest, settings: Settings | None = None
) -> ActionResponse:
    """``GET /api/callbacks/dlr/{MessageId}?token=...&<SmartDialog's parameters>``.
    200 ``{"status": "recorded"|"duplicate"|"unmatched", "recipientStatus"}``; 401; 404.
    In a server span, to which the report's own span (in its message's trace) links."""

    def run() -> ActionResponse:
        from shared.settings import get_settings

        service = _reports(settings or get_settings())
        result = service.handle(request.route_params.get("MessageId", ""), request.query)
        return ActionResponse.json(result.body())

    with telemetry.span(
        "DeliveryReport", parent=request.header(telemetry.TRACEPARENT), kind="server"
    ) as current:
        response = _answer("DeliveryReport", request, run)
        current.set_attribute("http.response.status_code", response.status)
    return response


def reset_caches() -> None:
    """Forget cached services (tests change settings between cases)."""
    _receiver.cache_clear()
    _processor.cache_clear()
    _reports.cache_clear()
