"""Inbound: SmartDialog's webhook to queue events, the New Message trigger, delivery reports
and opt-out. ``docs/inbound.md`` explains the flows; the module docstrings the crash windows.

::

    SmartDialog --POST--> callbacks/inbound/{Service}?token  (InboundReceiver)
        token -> payload -> one InboundIntake on smartdialog-inbound-intake -> 202
    smartdialog-inbound-intake --> InboundProcessor (queue trigger)
        STOP/START (SmartDialogSuppressions) -> the open question, answered
        -> CloudEvent fi.arena.smartdialog.message.received on smartdialog-inbound (Logic Apps)
        -> one SubscriberDelivery per subscriber on smartdialog-inbound-deliveries
              -> SubscriberDispatcher POSTs it to the flow's callback once per ce-id
                 (SmartDialogInboundSeen), retries with backoff, dead-letters on
                 smartdialog-inbound-deadletter
    SmartDialog --GET---> callbacks/dlr/{MessageId}?token&...  (DeliveryReportService)
        -> report row (SmartDialogDeliveryReports) -> recipient slot, forward only
        -> fi.arena.smartdialog.message.delivery on smartdialog-events
        -> a DlrForward on smartdialog-dlr-forward --> DlrForwarder (queue trigger) GETs the
           caller's own DlrUrl, retries with backoff, dead-letters on
           smartdialog-dlr-forward-deadletter

Every URL we are given is called through :mod:`shared.guarded_http` (https, no internal
address, one deadline, a few KB of answer).

Actions (``shared.inbound.actions``): RegisterInboundWebhook, UnregisterInboundWebhook,
NewMessage (trigger) and DeleteNewMessageTrigger, AddSuppression, RemoveSuppression,
GetSuppression.

What both sides use lives in leaf modules: suppressions in :mod:`shared.suppressions`, our
delivery-report URL in :mod:`shared.callback_urls`, the records in :mod:`shared.messages`.
"""

from pydantic import BaseModel

from shared.inbound import _dispatch, _dlr_forward, _triggers
from shared.inbound._dispatch import (
    DeliveriesSeen,
    DispatchOutcome,
    DispatchResult,
    SubscriberDispatcher,
    sweep_deliveries_seen,
)
from shared.inbound._dlr import (
    DeliveryReport,
    DeliveryReportResult,
    DeliveryReportService,
    parse_report,
)
from shared.inbound._dlr_forward import DlrForward, DlrForwardDeadLetter, DlrForwarder
from shared.inbound._http import (
    process_intake,
    receive_delivery_report,
    receive_inbound,
    reset_caches,
)
from shared.inbound._keywords import classify_keyword
from shared.inbound._models import (
    DELIVERY_REPORTED,
    MESSAGE_RECEIVED,
    DeliveryReportData,
    InboundAttachmentData,
    InboundIntake,
    InboundMessageData,
    NewMessagePayload,
    SubscriberDeadLetter,
    SubscriberDelivery,
)
from shared.inbound._registry import (
    Subscription,
    SubscriptionStore,
    WebhookRegistration,
    WebhookRegistry,
    new_nonce,
    subscription_url,
    webhook_url,
)
from shared.inbound._triggers import MalformedNotification, TriggerFanout, fan_out_trigger
from shared.inbound._webhook import (
    InboundProcessor,
    InboundReceiver,
    InboundResult,
    MalformedIntake,
    ProcessResult,
    inbound_message_key,
)
from shared.triggers import (
    DeliveryReportTriggerData,
    OptOutTriggerData,
    SendFailedTriggerData,
    TriggerNotification,
    reset_notifiers,
)

#: Schemas of the inbound package's queue messages and event data, for ``tools/generate_schemas``
#: (file name under ``schemas/`` -> model).
SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "events/message-received.data.json": InboundMessageData,
    "events/message-delivery.data.json": DeliveryReportData,
    "inbound-delivery.json": SubscriberDelivery,
    "inbound-dead-letter.json": SubscriberDeadLetter,
    "inbound-intake.json": InboundIntake,
    "dlr-forward.json": DlrForward,
    "dlr-forward-dead-letter.json": DlrForwardDeadLetter,
    "events/trigger-delivery-report.json": DeliveryReportTriggerData,
    "events/trigger-opt-out.json": OptOutTriggerData,
    "events/trigger-send-failed.json": SendFailedTriggerData,
    "trigger-notification.json": TriggerNotification,
}


def reset_dispatcher_cache() -> None:
    """Forget cached dispatchers and DLR forwarders (tests change settings between cases)."""
    _dispatch.reset_dispatcher_cache()
    _dlr_forward.reset_forwarder_cache()
    _triggers.reset_fanout_cache()
    reset_notifiers()


__all__ = [
    "DELIVERY_REPORTED",
    "MESSAGE_RECEIVED",
    "SCHEMA_MODELS",
    "DeliveriesSeen",
    "DeliveryReport",
    "DeliveryReportData",
    "DeliveryReportResult",
    "DeliveryReportService",
    "DispatchOutcome",
    "DispatchResult",
    "DlrForward",
    "DlrForwardDeadLetter",
    "DlrForwarder",
    "InboundAttachmentData",
    "InboundIntake",
    "InboundMessageData",
    "InboundProcessor",
    "InboundReceiver",
    "InboundResult",
    "MalformedIntake",
    "MalformedNotification",
    "NewMessagePayload",
    "ProcessResult",
    "SubscriberDeadLetter",
    "SubscriberDelivery",
    "SubscriberDispatcher",
    "Subscription",
    "SubscriptionStore",
    "TriggerFanout",
    "WebhookRegistration",
    "WebhookRegistry",
    "classify_keyword",
    "fan_out_trigger",
    "inbound_message_key",
    "new_nonce",
    "parse_report",
    "process_intake",
    "receive_delivery_report",
    "receive_inbound",
    "reset_caches",
    "reset_dispatcher_cache",
    "subscription_url",
    "sweep_deliveries_seen",
    "webhook_url",
]
