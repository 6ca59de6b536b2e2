"""Faults the real parts cannot produce on demand: one step of ours that dies once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def crash_once(
    monkeypatch: pytest.MonkeyPatch,
    owner: type,
    name: str,
    message: str,
    *,
    when: Callable[..., bool] = lambda *args, **kwargs: True,
    first: Callable[..., Any] | None = None,
) -> None:
    """Make ``owner.name`` raise ``RuntimeError(message)`` the first time it is called with
    arguments ``when`` accepts (after ``first(real, self, *args, **kwargs)``, if given: what the
    process got done before it died); every other call is the real one."""
    real = getattr(owner, name)
    crashes = [RuntimeError(message)]

    def replacement(self: Any, *args: Any, **kwargs: Any) -> Any:
        if crashes and when(*args, **kwargs):
            if first is not None:
                first(real, self, *args, **kwargs)
            raise crashes.pop()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, replacement)
