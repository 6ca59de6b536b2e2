"""Notifications from Azure services: events in (CloudEvents 1.0 over HTTP, the Event Grid
trigger, the ``smartdialog-cloud-events`` queue), notification rules that turn them into
ordinary queued sends.

An orchestration layer: above the feature packages (it builds ``shared.outbound`` send
commands), below the blueprints. See ``docs/events.md``.
"""

from shared.notify._doors import (
    CloudEventDeadLetter,
    process_cloud_event_message,
    receive_cloud_events,
    receive_grid_event,
)
from shared.notify._intake import IncomingEvent, InvalidEvent
from shared.notify._rules import Rule
from shared.notify._store import NotifyState

#: The notify package's published schemas (``make schemas``): file name -> model.
SCHEMA_MODELS = {"cloud-events-dead-letter.json": CloudEventDeadLetter}

__all__ = [
    "SCHEMA_MODELS",
    "CloudEventDeadLetter",
    "IncomingEvent",
    "InvalidEvent",
    "NotifyState",
    "Rule",
    "process_cloud_event_message",
    "receive_cloud_events",
    "receive_grid_event",
]
