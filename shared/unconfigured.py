"""Queue triggers while the settings do not validate: their messages wait, none is lost.

A setting that does not validate (a Key Vault reference not yet resolved while a new identity's
role propagates, a mistyped number) makes every function that needs the settings answer a 503
problem and ``/api/health`` name it. A queue trigger cannot answer: raising would spend the
message's dequeue count and, after ``maxDequeueCount``, move it to the poison queue. Instead the
message is put back on its queue, invisible for :data:`RECHECK_SECONDS`, and the invocation
returns normally, as often as it takes, with one error line a minute per queue however many
wait (:class:`~shared.logs.HeldSends`; each message's line is at DEBUG). Only the storage
settings are read for that (:class:`~shared.settings.StorageSettings`); without them the host
retries as for any storage failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from shared.logs import HeldSends
from shared.settings import SettingsInvalid

__all__ = ["RECHECK_SECONDS", "kept_while_unconfigured"]

log = logging.getLogger("shared.unconfigured")
#: The messages put back, said once a minute per queue (each one's line is at DEBUG).
held = HeldSends(log, level=logging.ERROR, what="queue message")

#: How long a queue message waits before it is tried again while the settings do not validate.
RECHECK_SECONDS = 60


@contextmanager
def kept_while_unconfigured(
    queue: str, text: str, copy: Callable[[], str] | None = None
) -> Iterator[None]:
    """Run a queue trigger's work on ``text`` (a message of ``queue``); if the settings do not
    validate, put ``text`` back on ``queue`` for :data:`RECHECK_SECONDS` instead of failing
    (``copy()`` instead when given: the outbound queue's, which names the message a send
    command's queue message gave its id, as the copy is a new queue message)."""
    try:
        yield
    except SettingsInvalid as problem:
        from shared.settings import StorageSettings
        from shared.storage import queue_client

        queue_client(queue, StorageSettings()).send_message(
            copy() if copy else text, visibility_timeout=RECHECK_SECONDS
        )
        log.debug("%s: the app is not configured (%s); the message is back on the queue for %d s",
                  queue, problem.detail, RECHECK_SECONDS)  # fmt: skip
        held.wait(f"the app's settings (queue {queue})", problem.detail or "", "see /api/health")
