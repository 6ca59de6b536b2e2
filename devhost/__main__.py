"""``python -m devhost``: serve the function app locally, like ``func start``.

Options: ``--host`` (127.0.0.1), ``--port`` (``$DEVHOST_PORT``, else local.settings.json
``Host.LocalHttpPort``, else 7071), ``--app`` (``function_app:app``), ``--script-root``
(``.``: where host.json and the app live), ``--settings`` (``local.settings.json`` under the
script root, if present), ``--no-queues`` (serve HTTP only), ``--no-access-log`` (do not log
one line per HTTP request; for benchmarks), ``--grace`` (seconds to finish in-flight work on
Ctrl-C/SIGTERM). Exit status: 0 after a clean stop, 2 if the app or a port
is unusable.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from devhost._host import DevHost
from devhost._metadata import MetadataError, load_app
from devhost._settings import apply_local_settings, read_local_settings

DEFAULT_PORT = 7071


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devhost",
        description="Run the Azure Functions app locally (a stand-in for `func start`).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=None, help="HTTP port (default $DEVHOST_PORT or 7071)"
    )
    parser.add_argument("--app", default="function_app:app", help="module:attribute of the app")
    parser.add_argument("--script-root", default=".", help="folder with host.json and the app")
    parser.add_argument(
        "--settings", default=None, help="local.settings.json to load (default: the script root's)"
    )
    parser.add_argument("--no-queues", action="store_true", help="do not poll queue triggers")
    parser.add_argument(
        "--no-access-log",
        action="store_true",
        help="do not log a line per HTTP request (the functions' own logs are kept)",
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds to finish in-flight work on stop"
    )
    return parser.parse_args(argv)


def _port(args: argparse.Namespace, settings: dict[str, object]) -> int:
    if args.port is not None:
        return int(args.port)
    if os.environ.get("DEVHOST_PORT"):
        return int(os.environ["DEVHOST_PORT"])
    host_section = settings.get("Host")
    if isinstance(host_section, dict) and host_section.get("LocalHttpPort"):
        return int(host_section["LocalHttpPort"])
    return DEFAULT_PORT


def main(argv: list[str] | None = None) -> int:
    """Run until Ctrl-C or SIGTERM; returns the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # The Azure SDKs log every storage request at INFO; the pollers would drown the app's logs.
    logging.getLogger("azure").setLevel(logging.WARNING)
    root = Path(args.script_root).resolve()
    settings_path = Path(args.settings) if args.settings else root / "local.settings.json"
    settings: dict[str, object] = {}
    if settings_path.exists():
        settings = read_local_settings(settings_path)
        applied = apply_local_settings(settings_path)
        print(f"Settings: {len(applied)} value(s) from {settings_path} (environment wins)")
    elif args.settings:
        print(f"error: settings file {settings_path} not found", file=sys.stderr)
        return 2
    else:
        print(f"Settings: no {settings_path.name} in {root}; using the environment only")
    # As Core Tools does: the app tells local development from Azure by this (localhost URLs).
    os.environ.setdefault("AZURE_FUNCTIONS_ENVIRONMENT", "Development")
    try:
        app = load_app(args.app, root)
        port = _port(args, settings)
        host = DevHost(
            app,
            root / "host.json",
            host=args.host,
            port=port,
            queues=not args.no_queues,
            access_log_enabled=not args.no_access_log,
        )
    except MetadataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(
                f"error: port {port} on {args.host} is already in use; stop what uses it or pass"
                " --port N (or set DEVHOST_PORT)",
                file=sys.stderr,
            )
            return 2
        raise
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"Dev host for {args.app} (host.json: {root / 'host.json'})")
    print("Functions:")
    for line in host.describe():
        print(line)
    print(
        "Auth keys are NOT checked locally (as with `func start`): functions with authLevel"
        " function or admin answer without a key or ?code=.",
        flush=True,
    )
    host.start()
    for name, why in host.listener_errors.items():  # as the Functions host: the others go on
        print(f"warning: queue trigger {name} is not listening: {why} (HTTP functions answer;"
              " /api/health names a broken setting; --no-queues runs without queues)",
              file=sys.stderr, flush=True)  # fmt: skip
    print(f"Listening on {host.url}. Press Ctrl-C to stop.\n", end="", flush=True)  # one write
    stop.wait()
    print(f"Stopping: finishing in-flight work (up to {args.grace:g} s)...", flush=True)
    finished = host.stop(grace=args.grace)
    print("Stopped." if finished else "Stopped; some work was cut short.", flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Work cut short at the grace deadline may leave threads behind; do not wait for them.
    os._exit(code) if threading.active_count() > 1 else sys.exit(code)
