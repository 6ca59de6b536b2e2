"""The seeded random fault mode: each kind over the wire, determinism, the control API, the CLI."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sandbox.__main__ import parse_args
from sandbox.faults import FaultInjector, FaultKind, FaultPlan, parse_kinds
from sandbox.server import SandboxServer
from tests.sandbox.helpers import SEND_HEADERS, client, http, sms
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
ADDRESS = "+358401110001"


def _send(api: httpx.Client, request_id: str, timeout: float = 5.0) -> httpx.Response:
    return api.post(
        "/messages", headers=SEND_HEADERS, json=sms(ADDRESS, RequestId=request_id), timeout=timeout
    )


def _only(kind: FaultKind, hold_seconds: float = 35.0) -> FaultPlan:
    """Every API call meets ``kind``."""
    return FaultPlan(rate=1.0, kinds=(kind,), hold_seconds=hold_seconds)


def test_throttled_answers_429_with_retry_after_and_sends_nothing(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    server = sandbox_factory(
        faults=FaultPlan(rate=1.0, kinds=(FaultKind.THROTTLED,), retry_after=3)
    )
    with client(server) as api:
        response = _send(api, "r-429")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert server.state.snapshot("messages") == []
    [logged] = server.state.snapshot("requests")
    assert (logged["status"], logged["fault"]) == (429, "throttled")


def test_unavailable_answers_503_and_sends_nothing(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    server = sandbox_factory(faults=_only(FaultKind.UNAVAILABLE))
    with client(server) as api:
        assert _send(api, "r-503").status_code == 503
    assert server.state.snapshot("messages") == []


def test_reset_drops_the_connection_before_anything_is_done(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    server = sandbox_factory(faults=_only(FaultKind.RESET))
    with client(server) as api, pytest.raises(httpx.TransportError):
        _send(api, "r-reset")
    assert server.state.snapshot("messages") == []
    [logged] = server.state.snapshot("requests")
    assert (logged["status"], logged["fault"]) == (None, "reset")


def test_a_lost_answer_was_accepted_and_its_retry_gets_409_with_the_original(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    server = sandbox_factory(faults=_only(FaultKind.LOST_ANSWER))
    with client(server) as api, pytest.raises(httpx.TransportError):
        _send(api, "r-lost")
    [accepted] = server.state.snapshot("messages")
    assert [r["address"] for r in accepted["recipients"]] == [ADDRESS]

    server.app.faults.configure(FaultPlan())  # the retry gets through
    with client(server) as api:
        retry = _send(api, "r-lost")
    assert retry.status_code == 409
    assert retry.json()["MessageId"] == accepted["messageId"]
    assert len(server.state.snapshot("messages")) == 1, "the retry must not send again"


def test_a_timeout_is_held_past_the_client_then_accepted_once_even_if_retried_meanwhile(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    server = sandbox_factory(faults=_only(FaultKind.TIMEOUT, hold_seconds=0.6))
    with client(server) as api, pytest.raises(httpx.ReadTimeout):
        _send(api, "r-held", timeout=0.2)
    assert server.state.snapshot("messages") == [], "still held"

    server.app.faults.configure(FaultPlan())  # the retry overtakes the held call
    with client(server) as api:
        assert _send(api, "r-held").status_code == 200
    # The held call goes on once its hold is over, and must find its RequestId taken.
    wait_for(lambda: len(server.state.snapshot("requests")) >= 2, what="the held call's end")
    statuses = [(r["status"], r.get("fault")) for r in server.state.snapshot("requests")]
    assert sorted(statuses, key=str) == [(200, None), (409, "timeout")]
    assert len(server.state.snapshot("messages")) == 1


def test_the_share_of_calls_that_fail_follows_the_rate_and_draws_every_kind() -> None:
    injector = FaultInjector(FaultPlan(rate=0.3, seed=7))
    faults = [
        injector.decide("POST", "/m", f'{{"RequestId": "{i}"}}'.encode()) for i in range(4000)
    ]
    failed = [f for f in faults if f is not None]
    assert 0.27 < len(failed) / len(faults) < 0.33
    by_kind = Counter(failed)
    assert set(by_kind) == set(FaultKind)
    assert min(by_kind.values()) > 150
    assert injector.snapshot()["injected"] == {k.value: by_kind[k] for k in FaultKind}
    assert injector.snapshot()["calls"] == 4000


def test_the_same_seed_fails_the_same_calls_whatever_their_order() -> None:
    bodies = [f'{{"RequestId": "req-{i}"}}'.encode() for i in range(300)]
    # Each call twice (a first attempt and its retry): the second draw is its own.
    calls = [b for b in bodies for _ in range(2)]

    def run(seed: int, order: list[bytes]) -> dict[tuple[bytes, int], FaultKind | None]:
        injector, seen = FaultInjector(FaultPlan(rate=0.3, seed=seed)), Counter[bytes]()
        out = {}
        for body in order:
            seen[body] += 1
            out[(body, seen[body])] = injector.decide("POST", "/messages", body)
        return out

    first = run(1, calls)
    assert run(1, list(reversed(calls))) == first
    assert run(2, calls) != first


def test_the_same_seed_gives_the_same_faults_over_the_wire(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    def faults(seed: int) -> list[str | None]:
        server = sandbox_factory(
            faults=FaultPlan(
                rate=0.5, seed=seed, kinds=(FaultKind.THROTTLED, FaultKind.UNAVAILABLE)
            ),
            quota_calls=0,
        )
        with client(server) as api:
            for i in range(40):
                _send(api, f"wire-{i}")
        return [r.get("fault") for r in server.state.snapshot("requests")]

    assert faults(11) == faults(11)
    assert faults(11) != faults(12)


def test_control_api_sets_reads_and_turns_off_the_fault_mode(sandbox_server: SandboxServer) -> None:
    url = f"{sandbox_server.url}/sandbox/faults"
    try:
        assert http.get(url).json()["rate"] == 0.0
        plan = {"rate": 1, "seed": 5, "kinds": ["unavailable"], "holdSeconds": 2}
        assert http.put(url, json=plan).json()["kinds"] == ["unavailable"]
        with client(sandbox_server) as api:
            assert _send(api, "ctl-1").status_code == 503
        assert http.get(url).json()["injected"]["unavailable"] == 1

        sandbox_server.reset()  # the plan stays, the counts start again
        assert http.get(url).json()["injected"]["unavailable"] == 0
        assert http.get(url).json()["rate"] == 1.0

        assert http.delete(url).json()["rate"] == 0.0
        with client(sandbox_server) as api:
            assert _send(api, "ctl-2").status_code == 200
    finally:
        http.delete(url)


@pytest.mark.parametrize(
    ("plan", "named"),
    [
        ({"rate": 2}, "rate"),
        ({"kinds": ["meteor"]}, "meteor"),
        ({"rate": 0.1, "speed": 3}, "speed"),
        ([], "object"),
    ],
)
def test_control_api_refuses_a_bad_plan_naming_the_problem(
    sandbox_server: SandboxServer, plan: object, named: str
) -> None:
    response = http.put(f"{sandbox_server.url}/sandbox/faults", json=plan)
    assert response.status_code == 400
    assert named in response.json()["errorMessage"]
    assert http.get(f"{sandbox_server.url}/sandbox/faults").json()["rate"] == 0.0


def test_control_and_oauth_endpoints_never_fail(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    server = sandbox_factory(faults=_only(FaultKind.UNAVAILABLE))
    assert http.get(f"{server.url}/sandbox/health").status_code == 200
    assert http.get(f"{server.authority}/v2.0/.well-known/openid-configuration").status_code == 200
    assert server.app.faults.snapshot()["calls"] == 0


def test_fault_flags_fall_back_to_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_FAULT_RATE", "0.3")
    monkeypatch.setenv("SANDBOX_FAULT_SEED", "42")
    monkeypatch.setenv("SANDBOX_FAULT_KINDS", "reset, timeout")
    monkeypatch.setenv("SANDBOX_FAULT_HOLD_SECONDS", "1.5")
    args = parse_args([])
    assert (args.fault_rate, args.fault_seed, args.fault_hold_seconds) == (0.3, 42, 1.5)
    assert parse_kinds(args.fault_kinds) == (FaultKind.RESET, FaultKind.TIMEOUT)
    assert parse_kinds("") == tuple(FaultKind)


def test_an_unknown_fault_kind_on_the_command_line_exits_2_naming_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sandbox", "--port", "0", "--fault-kinds", "meteor"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "meteor" in done.stderr
