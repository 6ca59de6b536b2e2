"""Several accounts in one sandbox: own tokens, customers, quota, RequestId memory, revocation."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sandbox.__main__ import parse_args
from sandbox.accounts import load_accounts, parse_account_tokens
from sandbox.server import SandboxServer
from tests.sandbox.helpers import SEND_HEADERS, client, http, sms

TWO = {"Customer-Id": "2001", "Service-Id": "s-2001-oneway"}
DELIVERED = "+358400000001"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def oauth_token(server: SandboxServer, client_id: str, secret: str) -> str:
    answer = http.post(
        f"{server.authority}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["access_token"]
    return token


def test_each_account_sees_its_own_customers(sandbox: SandboxServer) -> None:
    with client(sandbox) as one, client(sandbox, "sandbox-token-2") as two:
        first = [c["customerId"] for c in one.get("/customers").json()["customerUsers"]]
        second = two.get("/customers").json()["customerUsers"]
        assert first == ["1001", "1002"]
        assert second == [{"customerId": "2001", "customerName": "Sandbox Two Oy"}]
        services = two.get("/services/2001", headers={"ServiceType": "TwoWay"})
        assert services.json() == [{"id": "s-2001-twoway", "name": "Two chat"}]


def test_another_accounts_customer_is_403_and_sends_nothing(sandbox_server: SandboxServer) -> None:
    with client(sandbox_server) as one, client(sandbox_server, "sandbox-token-2") as two:
        refused = one.post("/messages", headers=TWO, json=sms(DELIVERED))
        assert refused.status_code == 403
        assert "2001" in refused.json()["errorMessage"]
        assert two.post("/messages", headers=SEND_HEADERS, json=sms(DELIVERED)).status_code == 403
        assert two.get("/services/1001", headers={"ServiceType": "OneWay"}).status_code == 403
        assert two.post("/messages", headers=TWO, json=sms(DELIVERED)).status_code == 200
    messages = sandbox_server.state.snapshot("messages")
    assert [(m["customerId"], m["account"]) for m in messages] == [("2001", "2")]


def test_oauth_clients_and_users_sign_in_to_their_account(sandbox: SandboxServer) -> None:
    token = oauth_token(sandbox, "sandbox-client-2", "sandbox-secret-2")
    refreshed = http.post(
        f"{sandbox.authority}/oauth2/v2.0/token",
        data={
            "grant_type": "refresh_token",
            "client_id": "sandbox-client-2",
            "refresh_token": "sandbox-refresh-token-2",
        },
    ).json()["access_token"]
    for bearer in (token, refreshed):
        with client(sandbox, bearer) as two:
            customers = two.get("/customers").json()["customerUsers"]
            assert [c["customerId"] for c in customers] == ["2001"]
    wrong = http.post(
        f"{sandbox.authority}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "sandbox-client-2",
            "client_secret": "sandbox-secret",
        },
    )
    assert wrong.status_code == 400


def test_each_account_has_its_own_quota(
    sandbox_factory: Callable[..., SandboxServer],
) -> None:
    server = sandbox_factory(quota_calls=2, quota_period=60.0, clock=FakeClock())
    with client(server) as one, client(server, server.account_token("2")) as two:
        assert [one.get("/customers").status_code for _ in range(3)] == [200, 200, 429]
        assert [two.get("/customers").status_code for _ in range(3)] == [200, 200, 429]
        refused = one.get("/customers")
        assert refused.headers["Retry-After"] == "60"  # the clock stands still


def test_a_seed_quota_overrides_the_sandbox_wide_limit_for_its_account(
    sandbox_factory: Callable[..., SandboxServer], tmp_path: Path
) -> None:
    seed = json.loads(Path("sandbox/seed.json").read_text(encoding="utf-8"))
    seed["accounts"][1]["quota"] = {"calls": 1, "period": 30}
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed), encoding="utf-8")
    server = sandbox_factory(quota_calls=5, seed_path=path, clock=FakeClock())
    with client(server) as one, client(server, "sandbox-token-2") as two:
        assert [two.get("/customers").status_code for _ in range(2)] == [200, 429]
        assert [one.get("/customers").status_code for _ in range(5)] == [200] * 5
    quotas = {a["id"]: a["quota"] for a in http.get(f"{server.url}/sandbox/accounts").json()}
    assert quotas == {
        "1": {"calls": 5, "period": 60.0, "used": 5},
        "2": {"calls": 1, "period": 30, "used": 1},
    }


def test_request_id_memory_is_per_account(sandbox_server: SandboxServer) -> None:
    with client(sandbox_server) as one, client(sandbox_server, "sandbox-token-2") as two:
        first = one.post("/messages", headers=SEND_HEADERS, json=sms(DELIVERED, RequestId="r-1"))
        assert first.status_code == 200
        again = one.post("/messages", headers=SEND_HEADERS, json=sms(DELIVERED, RequestId="r-1"))
        assert again.status_code == 409
        other = two.post("/messages", headers=TWO, json=sms(DELIVERED, RequestId="r-1"))
        assert other.status_code == 200
        assert other.json()["MessageId"] != first.json()["MessageId"]


def test_the_request_log_records_the_account(sandbox_server: SandboxServer) -> None:
    with client(sandbox_server) as one, client(sandbox_server, "sandbox-token-2") as two:
        one.get("/customers")
        two.get("/customers")
    with client(sandbox_server, "nope") as stranger:
        stranger.get("/customers")
    logged = [
        (r["status"], r["account"])
        for r in http.get(f"{sandbox_server.url}/sandbox/requests").json()
    ]
    assert logged == [(200, "1"), (200, "2"), (401, None)]
    assert "sandbox-token" not in json.dumps(sandbox_server.state.snapshot("requests"))


def test_revoking_one_accounts_tokens_leaves_the_other_working(
    sandbox_server: SandboxServer,
) -> None:
    url = sandbox_server.url
    first = oauth_token(sandbox_server, "sandbox-client", "sandbox-secret")
    second = oauth_token(sandbox_server, "sandbox-client-2", "sandbox-secret-2")
    revoked = http.post(f"{url}/sandbox/revoke-tokens", params={"account": "2", "static": "true"})
    assert revoked.json()["revoked"] >= 1  # the session's server: earlier tests' tokens too
    assert (revoked.json()["account"], revoked.json()["static"]) == ("2", True)
    for token, status in ((second, 401), ("sandbox-token-2", 401), (first, 200), (None, 200)):
        with client(sandbox_server, token) as api:
            assert api.get("/customers").status_code == status, token
    assert http.post(f"{url}/sandbox/revoke-tokens", params={"account": "9"}).status_code == 404
    sandbox_server.reset()  # static tokens come back; issued ones stay revoked
    with client(sandbox_server, "sandbox-token-2") as two:
        assert two.get("/customers").status_code == 200


def test_accounts_are_listed_without_secrets(sandbox: SandboxServer) -> None:
    answer = http.get(f"{sandbox.url}/sandbox/accounts")
    assert answer.status_code == 200
    accounts = answer.json()
    assert [(a["id"], a["customers"], a["clientIds"]) for a in accounts] == [
        ("1", ["1001", "1002"], ["sandbox-client"]),
        ("2", ["2001"], ["sandbox-client-2"]),
    ]
    text = answer.text
    for secret in ("sandbox-token", "sandbox-secret", "sandbox-refresh-token"):
        assert secret not in text


def test_extra_account_tokens_from_the_command_line(
    sandbox_factory: Callable[..., SandboxServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOX_ACCOUNT_TOKENS", "2=env-token")
    args = parse_args(["--account-token", "2=flag-token", "--account-token", "3=lonely"])
    tokens = parse_account_tokens(args.account_token)
    assert tokens == {"2": ["env-token", "flag-token"], "3": ["lonely"]}
    server = sandbox_factory(account_tokens=tokens)
    for token, customers in (("flag-token", ["2001"]), ("env-token", ["2001"]), ("lonely", [])):
        answer = httpx.get(
            f"{server.api_url}/customers", headers={"Authorization": f"Bearer {token}"}
        )
        assert [c["customerId"] for c in answer.json()["customerUsers"]] == customers
    with pytest.raises(ValueError, match="ACCOUNT=TOKEN"):
        parse_account_tokens(["just-a-token"])


def test_a_customer_claimed_by_two_accounts_is_refused() -> None:
    seed = {
        "customers": [{"customerId": "1"}],
        "accounts": [{"id": "a", "customers": ["1"]}, {"id": "b", "customers": ["1"]}],
    }
    with pytest.raises(ValueError, match="customer 1 belongs to two accounts"):
        load_accounts(seed, None)
    with pytest.raises(ValueError, match="static token"):
        load_accounts({"customers": []}, "t", {"2": ["t"]})


def test_a_seed_without_accounts_is_one_account_serving_every_customer() -> None:
    seed = {"customers": [{"customerId": "1"}, {"customerId": "2"}], "oauth": {}}
    (only,) = load_accounts(seed, "tok")
    assert (only.customers, only.static_tokens) == (frozenset({"1", "2"}), ["tok"])
