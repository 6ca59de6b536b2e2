"""Thin Azure Functions blueprints: parse the trigger, call ``shared``, shape the reply.

Each blueprint module is listed in :data:`BLUEPRINTS`; ``function_app`` registers them all.
"""

from __future__ import annotations

import azure.functions as func

from functions import (
    actions,
    dlr,
    events,
    health,
    ops,
    sender,
    sends,
    subscriptions,
    triggers,
    webhooks,
)

BLUEPRINTS: list[func.Blueprint] = [
    health.bp,
    sender.bp,
    actions.bp,
    sends.bp,
    webhooks.bp,
    subscriptions.bp,
    dlr.bp,
    ops.bp,
    events.bp,
    triggers.bp,
]
