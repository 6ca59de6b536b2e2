"""With Application Insights configured, no span carries a phone number or a URL's token: the
distro's own HTTP and Azure SDK instrumentations record whole request URLs (a contact's number
in SmartDialog's path, a suppression's number as a Table RowKey, a callback's ``?token=``).

The distro sets the process's global tracer provider, so it runs in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.server import SandboxServer

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import json, os, sys
import httpx
from shared.telemetry import configure
assert configure()
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
from shared.telemetry import span
with span("probe"):
    try:
        httpx.get(sys.argv[1] + "/groupcontact/c1/g1/%2B358401234567?token=v1.s3cr3t", timeout=5)
    except Exception:
        pass
    from azure.data.tables import TableClient
    table = TableClient.from_connection_string(os.environ["AzureWebJobsStorage"], "probe")
    try:
        table.create_table()
    except Exception:
        pass
    try:
        table.get_entity("svc", "+358401234567")
    except Exception:
        pass
spans = exporter.get_finished_spans()
print(json.dumps([[s.name, {k: str(v) for k, v in (s.attributes or {}).items()}] for s in spans]))
sys.stdout.flush()
os._exit(0)
"""


def _in_a_child(code: str, *args: str, **env: str) -> str:
    """Run ``code`` in a child process (the distro sets process-wide state) with ``env`` added;
    its standard output."""
    run = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def test_no_span_records_a_phone_number_or_a_token(
    storage_env: str, sandbox_server: SandboxServer
) -> None:
    out = _in_a_child(
        PROBE,
        sandbox_server.api_url,
        AzureWebJobsStorage=storage_env,
        # Nowhere to export to: the exporter's failures are its own (the probe exits at once).
        APPLICATIONINSIGHTS_CONNECTION_STRING=(
            "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
            "IngestionEndpoint=http://127.0.0.1:9/"
        ),
    )
    spans = json.loads(out.strip().splitlines()[-1])
    assert "probe" in [name for name, _ in spans], spans  # spans were recorded
    text = json.dumps(spans)
    assert "358401234567" not in text, spans
    assert "s3cr3t" not in text, spans


BAD_STRING_PROBE = """
import logging, os, sys
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record)
logging.getLogger("shared.telemetry").addHandler(Keep())
from shared import telemetry
for _ in range(3):
    with telemetry.span("probe"):
        pass
print(len([r for r in records if r.levelno >= logging.WARNING]), telemetry._configured)
sys.stdout.flush()
os._exit(0)
"""


def test_a_bad_connection_string_is_reported_once_not_on_every_span() -> None:
    """The distro refuses it: the setup was tried again, and warned, on every span."""
    out = _in_a_child(
        BAD_STRING_PROBE, APPLICATIONINSIGHTS_CONNECTION_STRING="InstrumentationKey=not-a-guid"
    )
    assert out.split() == ["1", "False"], out


def test_a_settings_error_elsewhere_does_not_switch_telemetry_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first span of a request may come before its settings are read: their error is
    that request's 503, not a reason to stop exporting once they are fixed."""
    from shared import telemetry
    from shared.settings import reset_settings_cache

    monkeypatch.setattr(telemetry, "_configured", None)
    monkeypatch.setenv("SMARTDIALOG_QUOTA_CALLS", "0")
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    reset_settings_cache()
    with telemetry.span("while broken"):
        pass
    assert telemetry._configured is None  # not given up
    monkeypatch.delenv("SMARTDIALOG_QUOTA_CALLS")
    reset_settings_cache()
    with telemetry.span("once fixed"):
        pass
    assert telemetry._configured is False  # read now: no connection string, so no export
    reset_settings_cache()


SAMPLING_PROBE = """
import json, os, sys
from shared.telemetry import configure, current_traceparent, span
assert configure()
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
for i in range(200):  # a burst: 200 messages, each a request and the queue hop continuing it
    with span("request"):
        parent = current_traceparent()
    with span("hop", parent=parent):
        pass
spans = exporter.get_finished_spans()
print(json.dumps([[s.name, s.context.trace_id] for s in spans]))
sys.stdout.flush()
os._exit(0)
"""

NOWHERE = (
    "InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:9/"
)


def _kept(**env: str) -> tuple[set[int], set[int]]:
    """The trace ids of the requests and of the hops the sampler kept in a burst of 200."""
    spans = json.loads(_in_a_child(SAMPLING_PROBE, APPLICATIONINSIGHTS_CONNECTION_STRING=NOWHERE,
                                   **env).strip().splitlines()[-1])  # fmt: skip
    return ({t for n, t in spans if n == "request"}, {t for n, t in spans if n == "hop"})


def test_every_trace_is_kept_whole_by_default_and_a_ratio_keeps_or_drops_whole_traces() -> None:
    """Found in review: without a sampler the distro kept about 5 traces a second, each hop
    deciding again: under load a message's trace ("where is my message?") was missing or
    half there. By default every span is kept; SMARTDIALOG_TRACE_SAMPLING_RATIO keeps a share
    of the traces, each whole (every hop decides by the trace id alone)."""
    requests, hops = _kept()
    assert len(requests) == 200
    assert hops == requests

    requests, hops = _kept(SMARTDIALOG_TRACE_SAMPLING_RATIO="0.5")
    assert 0 < len(requests) < 200
    assert hops == requests
