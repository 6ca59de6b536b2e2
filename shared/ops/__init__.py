"""Operations: dead letters as actions (list, show, re-drive, purge) and the operations page.

It sits above the feature packages (it shows inbound registrations and re-drives outbound
sends through the message core), below the blueprints. See docs/operations.md.

- :mod:`shared.ops.actions`: the dead-letter actions (function key), in the connector;
- :mod:`shared.ops.page`: ``GET /api/ops`` and its buttons (App Service Authentication);
- ``_deadletters``: the desk that lists, re-drives and purges; ``_views``: what it shows and
  answers; ``_poison``: the host's poison queues (peek, scan, keep); ``_overview``: the page's
  figures; ``_access``: who may use the page, and its anti-CSRF token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.ops._deadletters import POISON, POISON_SOURCES, DeadLetterDesk, DeadLetterView

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = ["POISON", "POISON_SOURCES", "DeadLetterDesk", "DeadLetterView", "keep_poison"]


def keep_poison(settings: Settings | None = None) -> int:
    """Keep the host's poison messages until handled, failing a poisoned send's message
    instead (:meth:`DeadLetterDesk.keep_poison`)."""
    from shared.ops.actions import desk
    from shared.settings import get_settings

    return desk(settings or get_settings()).keep_poison()
