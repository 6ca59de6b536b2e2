"""``python -m devhost.run`` (``make run``): Azurite, the sandbox and the dev host, wired together.

Settings: ``.run/local.settings.json`` is generated on every run from ``local.settings.sample.json``
with the real Azurite connection string, the sandbox URL and the dev host's public URL filled in,
and the named connection ``second`` (the sandbox's account 2, customer 2001; README "Connections")
beside the default one (account 1).
A ``local.settings.json`` of your own is never read or overwritten by ``make run`` (it is what
``python -m devhost`` and ``func start`` use); to change a setting for ``make run``, export it:
environment variables win over the file, except the four wiring values, which are always
``make run``'s: ``AzureWebJobsStorage``, ``SMARTDIALOG_PUBLIC_BASE_URL``,
``AZURE_FUNCTIONS_ENVIRONMENT`` and (while the sandbox runs) ``SMARTDIALOG_BASE_URL``.

Ports: the dev host on ``--port`` / ``$DEVHOST_PORT`` (7071), the sandbox on ``--sandbox-port`` /
``$SANDBOX_PORT`` (7072); Azurite on free ports. Ctrl-C stops the dev host (letting in-flight work
finish), then the sandbox, then Azurite. Exit status 1 if a port is taken or a piece fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from devhost.azurite import ACCOUNT, ACCOUNT_KEY, Azurite, AzuriteError, start_azurite
from devhost.stack import (
    REPO_ROOT,
    Child,
    StartError,
    check_port_free,
    free_ports,
    start_devhost,
    start_sandbox,
    write_local_settings,
)

RUN_DIR = REPO_ROOT / ".run"
SAMPLE = REPO_ROOT / "local.settings.sample.json"
INBOUND_QUEUE = "smartdialog-inbound"
TEST_NUMBER = "+358401234567"
#: The named connection ``second``: the sandbox's account 2 (docs/sandbox.md "Accounts"). In the
#: generated settings file, so an exported variable of the same name still wins.
SECOND_CONNECTION = {
    "SMARTDIALOG_CONNECTIONS__SECOND__ACCESS_TOKEN": "sandbox-token-2",
    "SMARTDIALOG_CONNECTIONS__SECOND__CUSTOMERS": "2001",
    "SMARTDIALOG_CONNECTIONS__SECOND__CUSTOMER_ID": "2001",
    "SMARTDIALOG_CONNECTIONS__SECOND__SERVICE_ID": "s-2001-oneway",
}


@dataclass(frozen=True)
class TryIt:
    """One copy-paste command of the "try it" block.

    ``command`` may use ``{api}`` (the dev host's ``/api`` URL), ``{sandbox}`` (the sandbox URL),
    ``{inbound_peek}`` (a read-only SAS URL that peeks ``smartdialog-inbound``) and ``{number}``.
    ``route`` is the ``METHOD template`` the command needs from the app; until the app declares it,
    the block says so next to the command.
    """

    title: str
    command: str
    route: str | None = None


# The sandbox's seed: customer 1001 with a one-way and a two-way service (docs/sandbox.md).
# The headers are given explicitly because local.settings.sample.json leaves
# SMARTDIALOG_CUSTOMER_ID and SMARTDIALOG_SERVICE_ID empty.
TRY_IT: tuple[TryIt, ...] = (
    TryIt(
        "Send an SMS, then follow its status URL (202 while pending, 200 with MessageId when sent;"
        " recipients show delivered once the sandbox's delivery report is in)",
        "loc=$(curl -s -o /dev/null -D - -X POST '{api}/messages'"
        " -H 'Content-Type: application/json' -H 'Customer-Id: 1001'"
        " -H 'Service-Id: s-1001-oneway'"
        ' -d \'{{"Sender": "Sandbox", "Content": "Hello from make run",'
        ' "Recipients": [{{"Address": "{number}"}}]}}\''
        " | tr -d '\\r' | sed -n 's/^[Ll]ocation: *//p'); echo \"status URL: $loc\";"
        " for i in 1 2 3; do sleep 1; curl -s -w ' [HTTP %{{http_code}}]\\n' \"$loc\"; done",
        route="POST messages",
    ),
    TryIt(
        "Send the same through the named connection 'second' (the sandbox's account 2: its own"
        " token, quota and default customer 2001 / service s-2001-oneway)",
        "loc=$(curl -s -o /dev/null -D - -X POST '{api}/messages'"
        " -H 'Content-Type: application/json' -H 'X-SmartDialog-Connection: second'"
        ' -d \'{{"Sender": "Sandbox", "Content": "Hello from the second connection",'
        ' "Recipients": [{{"Address": "{number}"}}]}}\''
        " | tr -d '\\r' | sed -n 's/^[Ll]ocation: *//p'); echo \"status URL: $loc\";"
        " sleep 2; curl -s -w ' [HTTP %{{http_code}}]\\n' \"$loc\"",
        route="POST messages",
    ),
    TryIt(
        "List the connections (names, customers and defaults; never secrets)",
        "curl -s '{api}/connections'; echo",
        route="GET connections",
    ),
    TryIt(
        "Register our webhook for the two-way service, simulate an inbound SMS in the sandbox,"
        " then read the smartdialog-inbound queue",
        "curl -s -X POST '{api}/inbound/webhooks/s-1001-twoway' -H 'Customer-Id: 1001'; echo;"
        " curl -s -X POST '{sandbox}/sandbox/inbound' -H 'Content-Type: application/json'"
        ' -d \'{{"sender": "{number}", "recipient": "SmartDialog", "content": "Hello back",'
        ' "service": "s-1001-twoway"}}\'; echo; sleep 3;'
        " curl -s '{inbound_peek}' | sed 's/<QueueMessage>/\\n&/g'; echo",
        route="POST inbound/webhooks/{Service}",
    ),
    TryIt(
        "See what the sandbox received (every SmartDialog API call the app made)",
        "curl -s '{sandbox}/sandbox/requests'; echo",
    ),
)


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devhost.run",
        description="Start Azurite, the SmartDialog sandbox and the dev host, wired together.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address for the sandbox and dev host")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("DEVHOST_PORT") or 7071), help="dev host"
    )
    parser.add_argument(
        "--sandbox-port", type=int, default=int(os.environ.get("SANDBOX_PORT") or 7072)
    )
    return parser.parse_args(argv)


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _peek_url(azurite: Azurite) -> str:
    from azure.storage.queue import QueueSasPermissions, generate_queue_sas

    sas = generate_queue_sas(
        ACCOUNT,
        INBOUND_QUEUE,
        ACCOUNT_KEY,
        permission=QueueSasPermissions(read=True),
        expiry=datetime.now(UTC) + timedelta(days=1),
    )
    base = f"{azurite.endpoints['Queue']}/{ACCOUNT}/{quote(INBOUND_QUEUE)}/messages"
    return f"{base}?peekonly=true&numofmessages=32&{sas}"


def _declared_routes() -> set[str]:
    """``METHOD template`` for every HTTP function of the app (empty if it cannot be loaded)."""
    from devhost._metadata import MetadataError, load_app, read_functions

    try:
        functions = read_functions(load_app("function_app:app", REPO_ROOT))
    except MetadataError:
        return set()
    return {
        f"{method} {spec.http.route.strip('/')}"
        for spec in functions
        if spec.http is not None
        for method in spec.http.methods
    }


def try_it_block(api: str, sandbox: str | None, inbound_peek: str) -> str:
    """The "try it" text for the running stack."""
    routes = _declared_routes()
    lines = ["", "Try it (paste into another terminal):", ""]
    for number, item in enumerate(TRY_IT, start=1):
        if "{sandbox}" in item.command and sandbox is None:
            continue
        note = ""
        if item.route and item.route not in routes:
            method, _, route = item.route.partition(" ")
            note = f"   [the app does not serve {method} /api/{route} yet]"
        lines.append(f"{number}. {item.title}{note}")
        command = item.command.format(
            api=api, sandbox=sandbox or "", inbound_peek=inbound_peek, number=TEST_NUMBER
        )
        lines.append(f"   {command}")
        lines.append("")
    return "\n".join(lines)


def _create_app_queues(azurite: Azurite) -> None:
    """Create the app's queues up front, as infra/ does in Azure, so they can be read at once."""
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.queue import QueueServiceClient

    from shared.names import QUEUES

    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    for name in QUEUES:
        with contextlib.suppress(ResourceExistsError):
            service.create_queue(name)


def main(argv: list[str] | None = None) -> int:
    """Start everything, print the URLs and the "try it" block, run until Ctrl-C."""
    args = _args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    started: list[Child | Azurite] = []
    try:
        check_port_free(
            args.host,
            args.port,
            "dev host",
            "run DEVHOST_PORT=N make run (or python -m devhost.run --port N)",
        )
        check_port_free(
            args.host,
            args.sandbox_port,
            "sandbox",
            "run SANDBOX_PORT=N make run (or python -m devhost.run --sandbox-port N)",
        )
        _step("Starting Azurite (in memory, on free ports)")
        # Free ports, but not the two the dev host and the sandbox bind after it.
        blob, queue, table = free_ports(3, besides={args.port, args.sandbox_port})
        azurite = start_azurite(ports=(blob, queue, table))
        started.append(azurite)
        print(f"    queues at {azurite.endpoints['Queue']}, tables at {azurite.endpoints['Table']}")
        _create_app_queues(azurite)
        sandbox: Child | None = None
        _step(f"Starting the SmartDialog sandbox on {args.host}:{args.sandbox_port}")
        try:
            sandbox = start_sandbox(
                host=args.host, port=args.sandbox_port, log_path=RUN_DIR / "sandbox.log"
            )
            started.append(sandbox)
            print(f"    {sandbox.url} (log: {RUN_DIR / 'sandbox.log'})")
        except StartError as exc:
            if "not importable" not in str(exc):
                raise
            print(f"    skipped: {exc}; the app will have no SmartDialog to talk to")
        api_base = f"http://{args.host}:{args.port}"
        wiring = {
            "AzureWebJobsStorage": azurite.connection_string,
            "SMARTDIALOG_PUBLIC_BASE_URL": api_base,
            "AZURE_FUNCTIONS_ENVIRONMENT": "Development",
        }
        if sandbox is not None:
            wiring["SMARTDIALOG_BASE_URL"] = f"{sandbox.url}/api-integrations/v1"
        settings_path = RUN_DIR / "local.settings.json"
        _step(f"Writing {settings_path.relative_to(REPO_ROOT)} from {SAMPLE.name}")
        if not SAMPLE.exists():
            print(f"    {SAMPLE.name} not found: only the wiring values are set")
        write_local_settings(SAMPLE, settings_path, {**SECOND_CONNECTION, **wiring})
        _step(f"Starting the dev host on {args.host}:{args.port}")
        devhost = start_devhost(
            host=args.host,
            port=args.port,
            settings_path=settings_path,
            env={**os.environ, **wiring},
        )
        started.append(devhost)
    except (StartError, AzuriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        _stop_all(started)
        return 1
    print(
        f"\nRunning:\n  dev host   {devhost.url}/api/  (log below)\n"
        f"  sandbox    {sandbox.url if sandbox else '(not running)'}\n"
        f"  Azurite    {azurite.endpoints['Queue']} (queues), {azurite.endpoints['Table']} "
        f"(tables), {azurite.endpoints['Blob']} (blobs: large commands)"
    )
    print(try_it_block(f"{devhost.url}/api", sandbox.url if sandbox else None, _peek_url(azurite)))
    print("Press Ctrl-C to stop everything.\n", end="", flush=True)  # one write
    code = 0
    while not stop.wait(0.5):
        dead = [c for c in started if isinstance(c, Child) and c.process.poll() is not None]
        if dead:
            print(f"error: the {dead[0].name} stopped unexpectedly", file=sys.stderr)
            code = 1
            break
    _stop_all(started)
    return code


def _stop_all(started: list[Child | Azurite]) -> None:
    """Stop in reverse start order: the dev host (finishing its work), the sandbox, Azurite."""
    for piece in reversed(started):
        name = piece.name if isinstance(piece, Child) else "Azurite"
        _step(f"Stopping the {name}" if name != "Azurite" else "Stopping Azurite")
        piece.stop()
    print("All stopped.", flush=True)


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
