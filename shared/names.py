"""Names of the storage queues and tables the app uses.

One place for every name, so the code, the dev host, the schemas and the Bicep in
``infra/`` agree (``tests/test_infra.py`` checks the Bicep against this module).
"""

from __future__ import annotations

import datetime as dt

#: The connection of the plain SMARTDIALOG_* settings, and of every row, message and event
#: written before named connections existed (named connections: ``shared/connections.py``).
DEFAULT_CONNECTION = "default"


def named_connection(connection: str) -> str | None:
    """``connection`` as it is written on what it sends and keys: None for the default (whose
    commands, keys and ids are exactly what they were before named connections)."""
    return None if connection == DEFAULT_CONNECTION else connection


#: The partition of a table's layout rows: what an upgrade of the table's layout has done.
LAYOUT_PARTITION = "~layout"
#: How long after an upgrade's first step an instance of the previous release may still run
#: (a deploy's overlap) and write rows in the old layout, which the new release then picks up.
UPGRADE_WINDOW = dt.timedelta(minutes=15)

#: Send commands (the public outbound contract, see ``schemas/``).
OUTBOUND_QUEUE = "smartdialog-outbound"
#: Inbound messages as CloudEvents, for Logic Apps and other consumers.
INBOUND_QUEUE = "smartdialog-inbound"
#: Lifecycle events (sent, failed, delivery) as CloudEvents.
EVENTS_QUEUE = "smartdialog-events"

#: Sliding-log quota entities, one per SmartDialog connection.
QUOTA_TABLE = "SmartDialogQuota"
#: The largest quota one connection may have (SMARTDIALOG_QUOTA_CALLS): its sliding log is one
#: string property, which stays far below the 32K-character limit of a Table property.
QUOTA_MAX_CALLS = 2000

#: Outbound messages that failed for good or were malformed, each wrapped with its reason
#: (``schemas/outbound-dead-letter.json``). The host's own ``-poison`` queue is separate.
OUTBOUND_DEAD_LETTER_QUEUE = "smartdialog-outbound-deadletter"

#: One status record per outbound message plus one slot entity per recipient.
MESSAGES_TABLE = "SmartDialogMessages"
#: Idempotency keys of the send actions, each pointing at the message it created.
IDEMPOTENCY_TABLE = "SmartDialogIdempotency"

#: Internal: each accepted webhook call as received (service, receipt time, validated payload).
#: The webhook's only storage write; ``InboundProcessor`` de-duplicates, applies opt-out and
#: publishes to ``smartdialog-inbound`` (model: ``shared.inbound.InboundIntake``).
INBOUND_INTAKE_QUEUE = "smartdialog-inbound-intake"
#: One message per (inbound event, New Message subscriber): what the dispatcher POSTs.
INBOUND_DELIVERIES_QUEUE = "smartdialog-inbound-deliveries"
#: Subscriber deliveries that failed for good, each wrapped with its reason
#: (``schemas/inbound-dead-letter.json``).
INBOUND_DEAD_LETTER_QUEUE = "smartdialog-inbound-deadletter"

#: Delivery reports to pass on to a send's own ``DlrUrl`` (``schemas/dlr-forward.json``): the
#: DLR function queues them, ``DlrForwarder`` calls the URL through the guarded client.
DLR_FORWARD_QUEUE = "smartdialog-dlr-forward"
#: Forwards to a caller's ``DlrUrl`` that failed for good, each wrapped with its reason
#: (``schemas/dlr-forward-dead-letter.json``).
DLR_FORWARD_DEAD_LETTER_QUEUE = "smartdialog-dlr-forward-deadletter"

#: Inbound webhooks registered with SmartDialog (one per pipeline action).
WEBHOOKS_TABLE = "SmartDialogWebhooks"
#: Revoked webhook URLs: the nonce of each unregistered webhook, per service.
REVOKED_TOKENS_TABLE = "SmartDialogRevokedTokens"
#: New Message trigger subscriptions (Power Automate callback URLs), per service.
SUBSCRIPTIONS_TABLE = "SmartDialogSubscriptions"
#: Inbound message ids already published (de-duplication of upstream retries).
INBOUND_SEEN_TABLE = "SmartDialogInboundSeen"
#: Opted-out recipients (STOP), per service.
SUPPRESSIONS_TABLE = "SmartDialogSuppressions"
#: Delivery reports as received (raw query), one per message, recipient and status.
DELIVERY_REPORTS_TABLE = "SmartDialogDeliveryReports"
#: Packs (many queued sends in one upstream call) and the per-pack-key index of packable
#: messages (``shared.messages._packs``).
PACKS_TABLE = "SmartDialogPacks"
#: Bulk sends: one record per batch (counts, rejected rows); its members are messages.
BATCHES_TABLE = "SmartDialogBatches"
#: Every dead letter we write, indexed as it is written (reason, time, text and the queue message
#: it refers to), so operators can list, re-drive and purge them (``shared.deadletters``).
DEAD_LETTERS_TABLE = "SmartDialogDeadLetters"

#: Blob container: large parts of queue messages and dead letters, by reference (a send command
#: too large for a queue message, a dead letter's original, an inbound webhook body), named
#: ``<kind>/<sha256>``. The queue message names its blob; nothing else links to them.
PAYLOADS_CONTAINER = "smartdialog-payloads"

#: CloudEvents / Event Grid events for the notification rules, as Event Grid's storage-queue
#: handler writes them (base64 of JSON) or as plain JSON (``shared.notify``).
CLOUD_EVENTS_QUEUE = "smartdialog-cloud-events"
#: Messages of ``smartdialog-cloud-events`` that held no valid event, each with its reason.
CLOUD_EVENTS_DEAD_LETTER_QUEUE = "smartdialog-cloud-events-deadletter"
#: Notification rules (PartitionKey ``rule``) and recipient lists (PartitionKey ``list``).
NOTIFICATION_RULES_TABLE = "SmartDialogNotificationRules"
#: Quiet periods (rule + subject + recipient) and hourly recipient caps of the rules.
NOTIFICATION_STATE_TABLE = "SmartDialogNotificationState"
#: Questions of SendMessageAndWaitForReply and, per service + number, the open one.
QUESTIONS_TABLE = "SmartDialogQuestions"

#: Internal: one note per delivery report, opt-out or failed send that a trigger subscription
#: of its service wants (``shared.triggers.TriggerNotification``); ``TriggerFanout`` turns each
#: into one delivery per subscriber on ``smartdialog-inbound-deliveries``.
TRIGGER_EVENTS_QUEUE = "smartdialog-trigger-events"

QUEUES: tuple[str, ...] = (
    OUTBOUND_QUEUE,
    INBOUND_QUEUE,
    EVENTS_QUEUE,
    OUTBOUND_DEAD_LETTER_QUEUE,
    INBOUND_DELIVERIES_QUEUE,
    INBOUND_DEAD_LETTER_QUEUE,
    INBOUND_INTAKE_QUEUE,
    DLR_FORWARD_QUEUE,
    DLR_FORWARD_DEAD_LETTER_QUEUE,
    CLOUD_EVENTS_QUEUE,
    CLOUD_EVENTS_DEAD_LETTER_QUEUE,
    TRIGGER_EVENTS_QUEUE,
)
TABLES: tuple[str, ...] = (
    QUOTA_TABLE,
    MESSAGES_TABLE,
    IDEMPOTENCY_TABLE,
    WEBHOOKS_TABLE,
    SUBSCRIPTIONS_TABLE,
    INBOUND_SEEN_TABLE,
    SUPPRESSIONS_TABLE,
    DELIVERY_REPORTS_TABLE,
    PACKS_TABLE,
    BATCHES_TABLE,
    REVOKED_TOKENS_TABLE,
    DEAD_LETTERS_TABLE,
    NOTIFICATION_RULES_TABLE,
    NOTIFICATION_STATE_TABLE,
    QUESTIONS_TABLE,
)


def poison_queue(queue: str) -> str:
    """The queue where the Functions host moves messages that failed too often."""
    return f"{queue}-poison"
