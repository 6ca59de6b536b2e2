"""Faults the real parts cannot produce on demand, at a port: a worker that dies once, a call
that outlives its claim's lease."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from shared.clock import ManualClock

#: SMARTDIALOG_SEND_LEASE_SECONDS's default: how long a crashed worker's claim holds.
LEASE = 120


class Died(BaseException):
    """The worker's process stopped there: unlike a storage error (an ``Exception``, which the
    sender answers by handing its claims back), no handler of ours runs."""


def crash_once(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    message: str,
    *,
    when: Callable[..., bool] = lambda *args, **kwargs: True,
    first: Callable[..., Any] | None = None,
    error: Callable[[str], BaseException] = RuntimeError,
) -> None:
    """Make the port method ``owner.name`` (a port class, e.g. ``MessageStore`` or ``Upstream``,
    or one port object, e.g. the events queue) raise ``error(message)`` the first time it
    is called with arguments ``when`` accepts (after ``first(real, self, *args, **kwargs)``, if
    given: what the process got done before it died); every other call is the real one."""
    crashes = [error(message)]
    if not isinstance(owner, type):  # one object: its bound method
        bound = getattr(owner, name)

        def on_object(*args: Any, **kwargs: Any) -> Any:
            if crashes and when(*args, **kwargs):
                if first is not None:
                    first(lambda _, *a, **k: bound(*a, **k), owner, *args, **kwargs)
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


def outlive_lease(
    monkeypatch: pytest.MonkeyPatch,
    clock: ManualClock,
    late: Callable[[Callable[[], Any]], Any],
    successor: Callable[[], object],
) -> Callable[[], None]:
    """Make the next upstream call (``Upstream.send``) outlive its claim's lease, as a call
    stalled past the lease would: ``late(call)`` is what it got (``call()`` makes the real call;
    an exception it returns is raised); meanwhile the lease runs out and ``successor`` (another
    worker: a copy of the queue message) runs on a thread, takes the claim over and calls, and
    that call is held until the returned ``finish()``: the late outcome is written while the
    successor's call is in flight. ``finish`` lets it go on and waits for it."""
    from shared.outbound._attempt import Upstream

    real = Upstream.send
    calling, going_on = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            successor()
        except BaseException as exc:  # raised again by finish()
            errors.append(exc)

    worker = threading.Thread(target=run, name="successor")

    def send(self: Upstream, command: Any) -> Any:
        if worker.is_alive() or calling.is_set():  # the successor's call
            try:
                answer = real(self, command)  # it leaves at once (its grant fresh)...
            except Exception as exc:  # e.g. a 409: the first call got through
                answer = exc
            calling.set()
            assert going_on.wait(10), "finish() was not called"  # ...its answer is held
            if isinstance(answer, Exception):
                raise answer
            return answer
        got = late(lambda: real(self, command))
        clock.advance(LEASE + 1)  # the first claim's lease runs out mid-call
        worker.start()
        assert calling.wait(10), "the successor did not call"
        if isinstance(got, BaseException):
            raise got
        return got

    monkeypatch.setattr(Upstream, "send", send)

    def finish() -> None:
        going_on.set()
        worker.join(10)
        if errors:
            raise errors[0]

    return finish
