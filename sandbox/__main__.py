"""``python -m sandbox``: run the SmartDialog sandbox in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

from sandbox.accounts import parse_account_tokens
from sandbox.faults import FaultPlan, parse_kinds
from sandbox.server import SandboxServer

T = TypeVar("T")


def _env(name: str, default: T, kind: Callable[[str], T]) -> T:
    value = os.environ.get(name)
    return kind(value) if value not in (None, "") else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="Local stand-in for the SmartDialog API (/api-integrations/v1), its OAuth "
        "endpoints and an inspection API under /sandbox/. Every flag has an environment "
        "variable; the flag wins.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--host",
        default=_env("SANDBOX_HOST", "127.0.0.1", str),
        help="interface to bind [SANDBOX_HOST]",
    )
    add(
        "--port",
        type=int,
        default=_env("SANDBOX_PORT", 7072, int),
        help="port, 0 for any free one [SANDBOX_PORT]",
    )
    add(
        "--quota-calls",
        type=int,
        default=_env("SANDBOX_QUOTA_CALLS", 100, int),
        help="API calls allowed per connection in any --quota-period window, 0 disables "
        "[SANDBOX_QUOTA_CALLS]",
    )
    add(
        "--quota-period",
        type=float,
        default=_env("SANDBOX_QUOTA_PERIOD", 60.0, float),
        help="sliding window length in seconds [SANDBOX_QUOTA_PERIOD]",
    )
    add(
        "--dlr-delay",
        type=float,
        default=_env("SANDBOX_DLR_DELAY", 0.2, float),
        help="seconds between an accepted send and its DlrUrl callbacks [SANDBOX_DLR_DELAY]",
    )
    add(
        "--slow-seconds",
        type=float,
        default=_env("SANDBOX_SLOW_SECONDS", 3.0, float),
        help="how long sends to +358400000007 take to answer [SANDBOX_SLOW_SECONDS]",
    )
    add(
        "--latency-ms",
        type=float,
        default=_env("SANDBOX_LATENCY_MS", 0.0, float),
        help="milliseconds added to every API answer, modelling the network hop to the real "
        "service [SANDBOX_LATENCY_MS]",
    )
    add(
        "--static-token",
        default=_env("SANDBOX_STATIC_TOKEN", "sandbox-token", str),
        help="bearer token always accepted; empty disables it [SANDBOX_STATIC_TOKEN]",
    )
    add(
        "--account-token",
        action="append",
        default=[_env("SANDBOX_ACCOUNT_TOKENS", "", str)],
        metavar="ACCOUNT=TOKEN",
        help="another static bearer token of account ACCOUNT (see GET /sandbox/accounts; an "
        "unknown id is a new account without customers); repeatable, or comma-separated "
        "[SANDBOX_ACCOUNT_TOKENS]",
    )
    add(
        "--token-ttl",
        type=int,
        default=_env("SANDBOX_TOKEN_TTL", 3600, int),
        help="lifetime in seconds of issued access tokens [SANDBOX_TOKEN_TTL]",
    )
    add(
        "--refresh-token-ttl",
        type=int,
        default=_env("SANDBOX_REFRESH_TOKEN_TTL", 0, int),
        help="seconds a refresh token is accepted, the seed's from the start, as a B2C one "
        "expires (0: for ever) [SANDBOX_REFRESH_TOKEN_TTL]",
    )
    add(
        "--public-url",
        default=_env("SANDBOX_PUBLIC_URL", None, str),
        help="base URL advertised in the OpenID discovery document "
        "(default: https://<Host header>) [SANDBOX_PUBLIC_URL]",
    )
    add(
        "--seed",
        default=_env("SANDBOX_SEED", None, str),
        help="seed JSON file (default: sandbox/seed.json) [SANDBOX_SEED]",
    )
    add(
        "--log-limit",
        type=int,
        default=_env("SANDBOX_LOG_LIMIT", 10_000, int),
        help="entries kept in each inspection log [SANDBOX_LOG_LIMIT]",
    )
    add(
        "--fault-rate",
        type=float,
        default=_env("SANDBOX_FAULT_RATE", 0.0, float),
        help="share of API calls (0 to 1) that fail on purpose, see --fault-kinds; 0 turns the "
        "fault mode off [SANDBOX_FAULT_RATE]",
    )
    add(
        "--fault-seed",
        type=int,
        default=_env("SANDBOX_FAULT_SEED", 0, int),
        help="seed of the fault mode: the same calls meet the same faults [SANDBOX_FAULT_SEED]",
    )
    add(
        "--fault-kinds",
        default=_env("SANDBOX_FAULT_KINDS", "", str),
        help="comma-separated kinds, drawn with equal weight: throttled (429), unavailable (503), "
        "timeout (held --fault-hold-seconds, then handled), reset (connection reset), "
        "lost-answer (handled, then connection reset); empty: all [SANDBOX_FAULT_KINDS]",
    )
    add(
        "--fault-hold-seconds",
        type=float,
        default=_env("SANDBOX_FAULT_HOLD_SECONDS", 35.0, float),
        help="how long a 'timeout' call is held before it is handled: past the client's "
        "timeout [SANDBOX_FAULT_HOLD_SECONDS]",
    )
    add(
        "--log-level",
        default=_env("SANDBOX_LOG_LEVEL", "INFO", str),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level; DEBUG logs every request [SANDBOX_LOG_LEVEL]",
    )
    return parser.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        faults = FaultPlan(
            rate=args.fault_rate,
            seed=args.fault_seed,
            kinds=parse_kinds(args.fault_kinds),
            hold_seconds=args.fault_hold_seconds,
        )
    except ValueError as exc:
        print(f"sandbox: bad fault mode: {exc}", file=sys.stderr)
        return 2
    try:
        account_tokens = parse_account_tokens(args.account_token)
    except ValueError as exc:
        print(f"sandbox: bad --account-token: {exc}", file=sys.stderr)
        return 2
    server = SandboxServer(
        args.host,
        args.port,
        quota_calls=args.quota_calls,
        quota_period=args.quota_period,
        dlr_delay=args.dlr_delay,
        slow_seconds=args.slow_seconds,
        latency_ms=args.latency_ms,
        static_token=args.static_token or None,
        token_ttl=args.token_ttl,
        refresh_token_ttl=args.refresh_token_ttl,
        public_url=args.public_url,
        seed_path=args.seed,
        log_limit=args.log_limit,
        faults=faults,
        account_tokens=account_tokens,
    )
    try:
        server.bind()
    except OSError as exc:
        print(f"sandbox: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    # Ctrl-C (SIGINT) as well: a parent that ignores it (a script's background job, nohup &)
    # would otherwise leave the sandbox deaf to `kill -INT`, as the dev host is not.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _terminate)
    print(f"SmartDialog sandbox listening on {server.url} (API {server.api_url})", flush=True)
    for account in server.app.accounts_view():
        print(
            f"  account {account['id']} ({account['name']}): customers "
            f"{', '.join(account['customers']) or '-'}",
            flush=True,
        )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
