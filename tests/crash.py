"""Faults the real parts cannot produce on demand: a worker that dies once, at a port."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

#: SMARTDIALOG_SEND_LEASE_SECONDS's default: how long a crashed worker's claim holds.
LEASE = 120


def crash_once(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    message: str,
    *,
    when: Callable[..., bool] = lambda *args, **kwargs: True,
    first: Callable[..., Any] | None = None,
) -> None:
    """Make the port method ``owner.name`` (a port class, e.g. ``MessageStore`` or ``Upstream``,
    or one port object, e.g. the events queue) raise ``RuntimeError(message)`` the first time it
    is called with arguments ``when`` accepts (after ``first(real, self, *args, **kwargs)``, if
    given: what the process got done before it died); every other call is the real one."""
    crashes = [RuntimeError(message)]
    if not isinstance(owner, type):  # one object: its bound method
        bound = getattr(owner, name)

        def on_object(*args: Any, **kwargs: Any) -> Any:
            if crashes and when(*args, **kwargs):
                raise crashes.pop()
            return bound(*args, **kwargs)

        monkeypatch.setattr(owner, name, on_object)
        return
    real = getattr(owner, name)

    def replacement(self: Any, *args: Any, **kwargs: Any) -> Any:
        if crashes and when(*args, **kwargs):
            if first is not None:
                first(real, self, *args, **kwargs)
            raise crashes.pop()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, replacement)
