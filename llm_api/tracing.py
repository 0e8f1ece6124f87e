"""Distributed tracing with OpenTelemetry: on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

- **Off** (the default): no SDK is loaded, no span is recorded; the OpenTelemetry API answers every
  call with its no-op. The request log line still carries the trace id of an incoming W3C
  ``traceparent`` header, so that the line can be found from the caller's trace.
- **On**: the Flask instrumentation makes one server span per request, continuing the caller's trace
  from ``traceparent``/``tracestate``; :mod:`llm_api.services.spans` adds the generation's spans under
  it; a batch span processor sends them over OTLP/HTTP (protobuf) to the endpoint, configured by the
  standard ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``..._TRACES_ENDPOINT``,
  ``..._HEADERS``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
  ``OTEL_BSP_*``).

Two points of the server need care:

- **Streams.** The Flask instrumentation ends its span when the request is torn down, which for a streamed
  response is when the view returns, before the first event is sent (open-telemetry/opentelemetry-python-
  contrib#3401; ``flask.stream_with_context`` does not help: Flask tears the request down at the view's
  return all the same). For a streamed response, :func:`_end_streams_on_close` takes the span's end over
  from the instrumentation's teardown and ends it when the server closes the response: when the stream has
  ended, whether it finished or its client went away. This relies on where the instrumentation keeps the
  span's activation in the WSGI environ, so the version is pinned and ``tests/test_e2e_tracing.py`` checks
  the span's end under the real server.
- **Processes.** The batch span processor owns a background thread and a queue, which must not be shared
  by forked processes. The provider is therefore made by :func:`start_exporting`, which runs in each
  worker (from ``llm_api.start_engine``: gunicorn's ``post_worker_init``, after the fork and after
  gevent has patched the worker), never in the master, and :func:`shutdown` flushes it before the worker
  exits. Under gevent the processor's thread is a greenlet and its exports use cooperative sockets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flask import Response, request
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from werkzeug.datastructures import Headers

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
DEFAULT_SERVICE_NAME = "llm_api"
# Probes and scrapes arrive every few seconds and say nothing about the service's work.
DEFAULT_EXCLUDED_URLS = "/healthz,/readyz,/metrics"

_provider: Any = None  # this process's SDK tracer provider, once start_exporting has run
_provider_pid: int | None = None


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Tracing is on when an OTLP endpoint is configured (and the SDK is not disabled)."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def instrument(app: Flask) -> None:
    """Give every request a server span (Flask instrumentation). Call it before any other ``before_request``
    is registered, so that requests refused by those hooks have their span too. Creates no thread: the
    spans go to whatever provider :func:`start_exporting` installs in the worker."""
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    excluded = os.environ.get("OTEL_PYTHON_FLASK_EXCLUDED_URLS") or os.environ.get("OTEL_PYTHON_EXCLUDED_URLS")
    FlaskInstrumentor().instrument_app(app, excluded_urls=excluded or DEFAULT_EXCLUDED_URLS)
    app.after_request(_end_streams_on_close)


def _end_streams_on_close(response: Response) -> Response:
    """``after_request``: a streamed response's server span ends when the response is closed, not at the
    request's teardown (see the module's docstring). Until then the span stays the current one of the
    greenlet that writes the stream."""
    from opentelemetry import context
    from opentelemetry.instrumentation.flask import _ENVIRON_ACTIVATION_KEY, _ENVIRON_TOKEN

    if not response.is_streamed or response.direct_passthrough:
        return response
    environ = request.environ
    activation = environ.pop(_ENVIRON_ACTIVATION_KEY, None)  # the teardown finds none, and leaves the span be
    token = environ.pop(_ENVIRON_TOKEN, None)
    if activation is None:
        return response

    def end_span() -> None:
        activation.__exit__(None, None, None)  # ends the span and detaches it from the context
        if token is not None:
            context.detach(token)

    response.call_on_close(end_span)
    return response


def start_exporting() -> None:
    """Install this process's tracer provider and its OTLP/HTTP batch exporter (once per process)."""
    global _provider, _provider_pid
    if _provider_pid == os.getpid():
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    defaults = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: DEFAULT_SERVICE_NAME}
    provider = TracerProvider(resource=Resource.create(defaults))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider, _provider_pid = provider, os.getpid()
    log.info("tracing: exporting spans over OTLP/HTTP to %s", _endpoint())


def shutdown() -> None:
    """Send the spans still queued, then stop the exporter (the worker is exiting)."""
    if _provider is not None and _provider_pid == os.getpid():
        _provider.shutdown()


def _endpoint() -> str:
    return next((os.environ[name] for name in reversed(ENDPOINT_VARIABLES) if os.environ.get(name)), "")


_propagator = TraceContextTextMapPropagator()


def log_trace_id(headers: Headers | Mapping[str, str]) -> str | None:
    """The trace id for the request log line: the current span's (tracing on), else that of the caller's
    ``traceparent`` header, if it sent a valid one; 32 hex digits, as trace back ends show it."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid and headers.get("traceparent"):
        context = trace.get_current_span(_propagator.extract(headers)).get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None
