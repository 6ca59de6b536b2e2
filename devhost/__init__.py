"""A local Azure Functions host for machines without Azure Functions Core Tools.

``python -m devhost`` serves the app's HTTP triggers at ``http://localhost:7071/api/<route>`` and
runs its queue triggers against Azurite with ``host.json``'s queue semantics, reading nothing but
the app's own function metadata. ``python -m devhost.run`` (``make run``) starts Azurite, the
SmartDialog sandbox and the dev host, wired together.

Programmatic use (tests, benchmarks)::

    host = DevHost(app, "host.json", port=0).start()
    ...  # host.url
    host.stop()
"""

from devhost._host import DevHost, HttpEndpoint
from devhost._hostjson import HostOptions, QueueOptions, load_host_json, parse_timespan
from devhost._metadata import FunctionSpec, MetadataError, app_functions, load_app, read_functions
from devhost._queues import StorageNotConfiguredError
from devhost._settings import apply_local_settings

__all__ = [
    "DevHost",
    "FunctionSpec",
    "HostOptions",
    "HttpEndpoint",
    "MetadataError",
    "QueueOptions",
    "StorageNotConfiguredError",
    "app_functions",
    "apply_local_settings",
    "load_app",
    "load_host_json",
    "parse_timespan",
    "read_functions",
]
