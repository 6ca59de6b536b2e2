"""Traces and metrics: OpenTelemetry, exported to Application Insights when
``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set.

One trace follows a send from the flow's request to its delivery report: the W3C
``traceparent`` travels in every queue message we write (the envelopes' optional
``traceparent`` field, CloudEvents' distributed-tracing extension attribute) and in the
message record behind the delivery-report URL. A span that continues one is started with
``parent=<that traceparent>``; a packed call, which serves many messages, is one span linked
to each member's trace (``links=``).

Nothing here imports OpenTelemetry when ``function_app`` is imported: the API is imported on
the first span or measurement, the Azure Monitor distro (about a second of imports) only when
:func:`configure` finds the connection string. Without it the spans are the API's no-op ones
(the trace context still travels) and measurements go nowhere; tests install the SDK's
in-memory exporter and reader instead. Never put a phone number or message content in an
attribute.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from shared.names import DEFAULT_CONNECTION

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.metrics import Counter, Histogram
    from opentelemetry.trace import Span, SpanContext

__all__ = [
    "DEFAULT_CONNECTION",
    "METER_NAME",
    "TRACEPARENT",
    "TRACER_NAME",
    "SpanKindName",
    "configure",
    "context_from",
    "count_dead_letter",
    "count_quota",
    "count_send",
    "current_traceparent",
    "inject_traceparent",
    "prepare",
    "record_delivery_latency",
    "record_queue_age",
    "span",
    "traceparent_in",
]

TRACER_NAME = METER_NAME = "smartdialog_functions"
#: The W3C trace-context header, and the field that carries it in our queue messages.
TRACEPARENT = "traceparent"

SpanKindName = Literal["internal", "server", "client", "producer", "consumer"]

#: The distro's instrumentations that record each request's whole URL, which holds phone
#: numbers (a contact's in SmartDialog's path, a Table RowKey) and ``?token=`` credentials: off.
#: Our own spans cover the SmartDialog calls and the queue hops, with masked paths.
URL_RECORDING = ("azure_sdk", "httpx", "requests", "urllib", "urllib3")

log = logging.getLogger("shared.telemetry")
_lock = threading.Lock()
_configured: bool | None = None
_instruments: dict[str, Any] = {}


def configure() -> bool:
    """Send traces and metrics to Application Insights if its connection string is set (once
    per process; later calls only answer). True when they are sent."""
    global _configured
    if _configured is None:
        with _lock:
            if _configured is None:
                _configured = _configure()
    return _configured


def _configure() -> bool:
    from shared.settings import get_settings

    settings = get_settings()
    if (connection_string := settings.applicationinsights_connection_string) is None:
        return False
    from azure.monitor.opentelemetry import configure_azure_monitor

    # The exporter reads APPLICATIONINSIGHTS_AUTHENTICATION_STRING (Entra ID auth) itself.
    # Logs stay with the Functions host, which ships them already: no second copy.
    configure_azure_monitor(
        connection_string=connection_string,
        disable_logging=True,
        # A share of whole traces, all by default: the sampler decides by the trace id alone,
        # so every hop continuing a trace decides as its first did (the distro's default, 5
        # traces a second decided anew at each hop, lost a message's trace under load).
        sampling_ratio=settings.trace_sampling_ratio,
        instrumentation_options={name: {"enabled": False} for name in URL_RECORDING},
    )
    log.info("OpenTelemetry: traces and metrics go to Application Insights")
    return True


def _configured_once() -> None:
    global _configured
    if _configured is None:
        from shared.settings import SettingsInvalid

        try:
            configure()
        except SettingsInvalid:  # another setting's error, answered where it is needed
            return  # tried again on a later span
        except Exception as exc:  # telemetry must never fail the work it watches
            with _lock:
                if _configured is not None:
                    return
                _configured = False  # tried once: not again on every span, nor logged again
            log.error(
                "OpenTelemetry could not be configured (check "
                "APPLICATIONINSIGHTS_CONNECTION_STRING): %s; no traces or metrics are exported",
                exc,
            )


# --- trace context ---------------------------------------------------------------------------


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current span, or None outside any trace."""
    carrier: dict[str, str] = {}
    inject_traceparent(carrier)
    return carrier.get(TRACEPARENT)


def inject_traceparent(carrier: dict[str, Any]) -> dict[str, Any]:
    """``carrier`` with the current span's ``traceparent`` added (unchanged outside a trace)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    TraceContextTextMapPropagator().inject(carrier)
    carrier.pop("tracestate", None)  # we carry the parent only
    return carrier


def context_from(source: str | Mapping[str, Any] | None) -> Context | None:
    """The trace context in a ``traceparent`` (or in a message or headers carrying one); None
    when there is none or it is not a valid W3C ``traceparent``."""
    if isinstance(source, Mapping):
        value = source.get(TRACEPARENT) or source.get("Traceparent")
    else:
        value = source
    if not isinstance(value, str) or not value:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({TRACEPARENT: value})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def traceparent_in(text: str | bytes) -> str | None:
    """The ``traceparent`` of a JSON queue message; None when it has none or is no JSON object
    (a malformed message is the reader's to report, not ours)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser follows
        return None
    found = value.get(TRACEPARENT) if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def _span_context(traceparent: str | None) -> SpanContext | None:
    context = context_from(traceparent)
    if context is None:
        return None
    from opentelemetry import trace

    return trace.get_current_span(context).get_span_context()


@functools.cache
def _tracer() -> Any:
    """Our tracer, got once (OpenTelemetry's idiom: one got before a provider is set follows
    the provider once it is)."""
    from opentelemetry import trace

    return trace.get_tracer(TRACER_NAME)


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    links: Iterable[str | None] = (),
    kind: SpanKindName = "internal",
    attributes: Mapping[str, str | int | float | bool | None] | None = None,
) -> Iterator[Span]:
    """A span around the block, current inside it. ``parent`` continues that ``traceparent``
    (a queue message's, a record's); without one (or with an invalid one) the span is a
    child of the current span, or starts a trace. ``links`` are the traces it serves (a
    packed call: each member's). ``None`` attributes are left out; text ones are made fit for
    a log (:func:`~shared.logs.loggable_id`: ids as they are, a caller's text bounded and its
    phone numbers masked). An exception is recorded on the span and raised."""
    from opentelemetry import trace

    from shared.logs import loggable_id

    _configured_once()
    seen: set[tuple[int, int]] = set()
    span_links: list[trace.Link] = []
    for traceparent in links:
        linked = _span_context(traceparent)
        if linked is not None and (linked.trace_id, linked.span_id) not in seen:
            seen.add((linked.trace_id, linked.span_id))
            span_links.append(trace.Link(linked))
    with _tracer().start_as_current_span(
        name,
        context=context_from(parent),
        kind=trace.SpanKind[kind.upper()],
        links=span_links,
        attributes={
            k: loggable_id(v) if isinstance(v, str) else v
            for k, v in (attributes or {}).items()
            if v is not None
        },
    ) as current:
        yield current


# --- metrics -------------------------------------------------------------------------------------


def _instrument(name: str) -> Any:
    found = _instruments.get(name)
    if found is not None:
        return found
    from opentelemetry import metrics

    _configured_once()
    with _lock:
        if not _instruments:
            meter = metrics.get_meter(METER_NAME)
            _instruments.update(
                quota=meter.create_counter(
                    "smartdialog.quota.slots",
                    unit="{slot}",
                    description="Quota slots asked for, by connection and result "
                    "(granted, refused).",
                ),
                sends=meter.create_counter(
                    "smartdialog.sends",
                    unit="{message}",
                    description="Outbound queue messages handled, by outcome.",
                ),
                dead_letters=meter.create_counter(
                    "smartdialog.deadletters",
                    unit="{letter}",
                    description="Dead letters written, by dead-letter queue and reason "
                    "(exact: metrics are not sampled).",
                ),
                queue_age=meter.create_histogram(
                    "smartdialog.queue.age",
                    unit="s",
                    description="Age of each queue message when taken off its queue, by "
                    "queue (the maximum is the oldest message's age).",
                ),
                delivery_latency=meter.create_histogram(
                    "smartdialog.delivery.latency",
                    unit="s",
                    description="From a message's acceptance to a recipient's delivery "
                    "report, by reported status.",
                ),
            )
    return _instruments[name]


def prepare() -> None:
    """Import the API, configure export and make the instruments now, so that a measurement
    on a timed path (a quota grant on its way to its caller) costs microseconds, not the
    imports of a first use."""
    _instrument("quota")


def count_quota(
    *, granted: int = 0, refused: int = 0, connection: str = DEFAULT_CONNECTION
) -> None:
    """Count quota slots granted and refused for ``connection``."""
    counter: Counter = _instrument("quota")
    if granted:
        counter.add(granted, {"connection": connection, "result": "granted"})
    if refused:
        counter.add(refused, {"connection": connection, "result": "refused"})


def count_send(outcome: str) -> None:
    """Count one outbound queue message handled with ``outcome`` (sent, failed, deferred...)."""
    counter: Counter = _instrument("sends")
    counter.add(1, {"outcome": outcome})


def count_dead_letter(queue: str, reason: str) -> None:
    """Count one dead letter written on ``queue`` for ``reason``."""
    counter: Counter = _instrument("dead_letters")
    counter.add(1, {"queue": queue, "reason": reason})


def record_queue_age(queue: str, inserted_at: dt.datetime | None, now: dt.datetime) -> None:
    """Record how long a message waited on ``queue`` (nothing when its insertion time is
    unknown)."""
    if inserted_at is None:
        return
    if inserted_at.tzinfo is None:
        inserted_at = inserted_at.replace(tzinfo=dt.UTC)
    histogram: Histogram = _instrument("queue_age")
    histogram.record(max(0.0, (now - inserted_at).total_seconds()), {"queue": queue})


def record_delivery_latency(seconds: float, status: str) -> None:
    """Record the time from acceptance to a delivery report of ``status``."""
    histogram: Histogram = _instrument("delivery_latency")
    histogram.record(max(0.0, seconds), {"status": status})
