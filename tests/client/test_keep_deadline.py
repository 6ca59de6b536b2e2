"""keep_deadline reaches every connection pool of an httpx client, the proxies the environment
names included, and refuses a client it cannot bound rather than leave its calls unbounded."""

from __future__ import annotations

import httpx
import pytest

from shared.deadline import DeadlineBackend, keep_deadline


def test_the_pools_of_proxies_from_the_environment_keep_the_deadline_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with httpx.Client() as client:
        keep_deadline(keep_deadline(client))  # twice: wrapped once
        transports = [client._transport, *(t for t in client._mounts.values() if t is not None)]
        backends = [t._pool._network_backend for t in transports]  # type: ignore[attr-defined]

    assert len(backends) == 2
    assert all(isinstance(b, DeadlineBackend) for b in backends)
    assert not any(isinstance(b._inner, DeadlineBackend) for b in backends)


def test_a_client_without_a_network_backend_to_wrap_is_refused() -> None:
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    with httpx.Client(transport=mock) as client, pytest.raises(TypeError):
        keep_deadline(client)
