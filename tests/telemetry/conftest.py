"""The SDK's in-memory span exporter and metric reader, installed once per test process (the
OpenTelemetry globals can be set only once), and the outbound and inbound environments."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.fixtures.sandbox import callback_receiver
from tests.inbound.conftest import dev_host, inbound, inbound_sandbox, served
from tests.outbound.conftest import outbound, outbound_sandbox, private_outbound

__all__ = [
    "callback_receiver",
    "dev_host",
    "inbound",
    "inbound_sandbox",
    "outbound",
    "outbound_sandbox",
    "private_outbound",
    "served",
]

_SPANS = InMemorySpanExporter()
_METRICS = InMemoryMetricReader()
_installed = False


def _install() -> None:
    global _installed
    if not _installed:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_SPANS))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[_METRICS]))
        _installed = True


class Telemetry:
    """What the app recorded during one test."""

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = list(_SPANS.get_finished_spans())
        return [s for s in found if name is None or s.name == name]

    def metric_points(self, name: str) -> list[tuple[dict[str, object], object]]:
        """(attributes, point) of every data point of metric ``name`` so far (cumulative)."""
        data = _METRICS.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    _install()
    _SPANS.clear()
    yield Telemetry()
    _SPANS.clear()
