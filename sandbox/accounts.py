"""SmartDialog accounts in the sandbox: who a token belongs to, and which customers it may use.

The real service signs every caller in to one account (a static token, an OAuth client or a
user); an account sees its own customers only, and a customer of another account answers 403.
The seed's ``accounts`` list names them::

    {"id": "2", "name": "Sandbox Two", "customers": ["2001"], "staticTokens": ["sandbox-token-2"],
     "clients": [{"clientId": "...", "clientSecret": "..."}],
     "users": [{"userId": "...", "refreshToken": "..."}],
     "quota": {"calls": 100, "period": 60}}

The first account also owns the ``--static-token`` and the seed's top-level ``oauth`` clients and
users (so a seed written before accounts existed is one account serving every customer). Each
account has its own quota (one sliding window per signed-in identity within it: a static token, a
client, a user) and its own RequestId memory. Where the real service is unknown: quota limits
per account are the sandbox's choice (the published limit is per connection); ``quota`` in the
seed overrides ``--quota-calls``/``--quota-period`` for one account.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Account", "load_accounts", "parse_account_tokens"]


@dataclass
class Account:
    """One SmartDialog account: its customers, credentials and quota limits."""

    id: str
    name: str
    customers: frozenset[str]
    static_tokens: list[str] = field(default_factory=list)
    clients: dict[str, str] = field(default_factory=dict)  # client id -> secret
    users: dict[str, str] = field(default_factory=dict)  # static refresh token -> user id
    quota_calls: int | None = None  # None: the sandbox-wide --quota-calls
    quota_period: float | None = None

    def public(self, quota_calls: int, quota_period: float, used: int) -> dict[str, Any]:
        """What ``GET /sandbox/accounts`` shows: no token, secret or refresh token."""
        return {
            "id": self.id,
            "name": self.name,
            "customers": sorted(self.customers),
            "clientIds": sorted(self.clients),
            "userIds": sorted(set(self.users.values())),
            "staticTokens": len(self.static_tokens),
            "quota": {"calls": quota_calls, "period": quota_period, "used": used},
        }


def load_accounts(
    seed: Mapping[str, Any],
    static_token: str | None,
    extra_tokens: Mapping[str, Iterable[str]] | None = None,
) -> list[Account]:
    """The seed's accounts, the first one owning ``static_token`` and the top-level ``oauth``
    credentials; ``extra_tokens`` adds static tokens by account id (an unknown id is a new
    account without customers). Raises ValueError when two accounts claim a customer, an id or a
    credential.
    """
    oauth = seed.get("oauth", {})
    entries = list(seed.get("accounts") or [{"id": "1", "name": "Sandbox"}])
    all_customers = [c["customerId"] for c in seed["customers"]]
    accounts: list[Account] = []
    for index, entry in enumerate(entries):
        quota = entry.get("quota") or {}
        account = Account(
            id=str(entry["id"]),
            name=str(entry.get("name") or entry["id"]),
            customers=frozenset(entry.get("customers", all_customers)),
            static_tokens=list(entry.get("staticTokens", [])),
            clients={c["clientId"]: c["clientSecret"] for c in entry.get("clients", [])},
            users={u["refreshToken"]: u["userId"] for u in entry.get("users", [])},
            quota_calls=quota.get("calls"),
            quota_period=quota.get("period"),
        )
        if index == 0:
            if static_token:
                account.static_tokens.insert(0, static_token)
            account.clients = {
                **{c["clientId"]: c["clientSecret"] for c in oauth.get("clients", [])},
                **account.clients,
            }
            account.users = {
                **{u["refreshToken"]: u["userId"] for u in oauth.get("users", [])},
                **account.users,
            }
        accounts.append(account)
    by_id = {a.id: a for a in accounts}
    for account_id, tokens in (extra_tokens or {}).items():
        if account_id not in by_id:
            by_id[account_id] = Account(account_id, account_id, frozenset())
            accounts.append(by_id[account_id])
        by_id[account_id].static_tokens.extend(t for t in tokens if t)
    _check_unique(accounts)
    return accounts


def _check_unique(accounts: list[Account]) -> None:
    ids = [a.id for a in accounts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"account ids must be unique: {ids}")
    owners: dict[tuple[str, str], str] = {}
    for account in accounts:
        claims = [
            *(("customer", c) for c in account.customers),
            *(("static token", t) for t in account.static_tokens),
            *(("client", c) for c in account.clients),
            *(("refresh token", r) for r in account.users),
        ]
        for kind, value in claims:
            if owners.setdefault((kind, value), account.id) != account.id:
                shown = value if kind in ("customer", "client") else "(hidden)"
                raise ValueError(f"{kind} {shown} belongs to two accounts")


def parse_account_tokens(specs: Iterable[str]) -> dict[str, list[str]]:
    """``["2=tok", "3=a,3=b"]`` -> ``{"2": ["tok"], "3": ["a", "b"]}``; raises ValueError on a
    spec without ``ID=TOKEN``."""
    tokens: dict[str, list[str]] = {}
    for spec in specs:
        for item in (s.strip() for s in spec.split(",")):
            if not item:
                continue
            account_id, sep, token = item.partition("=")
            if not sep or not account_id.strip() or not token.strip():
                raise ValueError(f"expected ACCOUNT=TOKEN, got {item.split('=')[0]!r}=...")
            tokens.setdefault(account_id.strip(), []).append(token.strip())
    return tokens
