"""The spans of one generation: storing the user's turn, the model call (queue, prefill, decode) and storing
the answer, as children of the request's span (OpenTelemetry API only; see docs/operations.md, "Tracing").

The engine runs on its own OS thread and the chat API's answer finishes on a pump greenlet, where the
request's span is not the current one. So the request's context is captured once, when the request is
admitted on its own greenlet, and every span is made as an explicit child of it. The engine knows nothing
of tracing: it reports when a request left its queue and when its first token came (``Finished``), and
the queue, prefill and decode spans are made here, afterwards, with those times.

Without an SDK tracer provider (``OTEL_EXPORTER_OTLP_ENDPOINT`` unset) nothing is done at all: even the
API's no-op spans would cost about a hundred microseconds per request.

Attribute names follow OpenTelemetry's semantic conventions for generative AI where they fit
(``gen_ai.*``); the rest are the service's own (``llm_api.*``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..generation.types import Finished, SamplingParams

_tracer = trace.get_tracer("llm_api")
_propagator = TraceContextTextMapPropagator()  # W3C, whatever the global propagator is


def _installed_tracer() -> Tracer | None:
    """The service's tracer when an SDK tracer provider is installed (tracing on), else None."""
    return None if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider) else _tracer


class GenerationTrace:
    """One request's generation spans, children of the span that was current when it was created.
    ``tracer`` defaults to the service's when tracing is on; without one, every method does nothing."""

    def __init__(self, tracer: Tracer | None = None) -> None:
        self._tracer = tracer or _installed_tracer()
        self._parent = otel_context.get_current() if self._tracer is not None else None
        self._span: Span | None = None
        self._started_ns = 0

    @contextmanager
    def storage(self, name: str, **attributes: Any) -> Iterator[None]:
        """A span around a write to the store (``store user turn``, ``store answer``)."""
        if self._tracer is None:
            yield
            return
        with self._tracer.start_as_current_span(name, context=self._parent, attributes=attributes,
                                                record_exception=True):
            yield

    def submitting(self, *, operation: str, model: str, params: SamplingParams, prompt_tokens: int,
                   message_id: str, conversation_id: str) -> None:
        """The request is about to be handed to the engine: the model call's span starts."""
        if self._tracer is None:
            return
        self._started_ns = time.time_ns()
        self._span = self._tracer.start_span(
            f"{operation} {model}".strip(), context=self._parent, kind=SpanKind.INTERNAL,
            start_time=self._started_ns,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": model,
                "gen_ai.request.max_tokens": params.max_tokens,
                "gen_ai.request.temperature": params.temperature,
                "gen_ai.request.top_p": params.top_p,
                **({"gen_ai.request.seed": params.seed} if params.seed is not None else {}),
                **({"gen_ai.request.stop_sequences": list(params.stop)} if params.stop else {}),
                "gen_ai.usage.input_tokens": prompt_tokens,
                "gen_ai.response.id": message_id,
                "gen_ai.conversation.id": conversation_id,
            })

    def outgoing_headers(self) -> dict[str, str]:
        """W3C ``traceparent``/``tracestate`` naming the model call's span as the parent, for an engine that
        calls another service (an upstream): its spans then join this trace. Empty without a valid span."""
        headers: dict[str, str] = {}
        if self._span is not None and self._span.get_span_context().is_valid:
            _propagator.inject(headers, context=trace.set_span_in_context(self._span))
        return headers

    def refused(self, error: Exception) -> None:
        """The engine refused the request (queue full, not ready...): the model call's span ends in error."""
        span = self._span
        if span is None:
            return
        span.set_attribute("error.type", type(error).__name__)
        span.set_status(Status(StatusCode.ERROR, str(error)))
        span.end()

    def finished(self, event: Finished) -> None:
        """The answer ended (``event`` as stored): the phases, the counts and the finish reason, then the end."""
        span = self._span
        if span is None or not span.is_recording():
            return
        now = time.time_ns()
        span.set_attributes({
            "gen_ai.usage.input_tokens": event.usage.prompt_tokens,
            "gen_ai.usage.output_tokens": event.usage.completion_tokens,
            "gen_ai.response.finish_reasons": [event.finish_reason],
            **({"gen_ai.response.model": event.model} if event.model else {}),
            **({"llm_api.engine": event.engine} if event.engine else {}),
            "llm_api.degraded": event.degraded,
        })
        if event.finish_reason == "error":
            span.set_attribute("error.type", "generation_failed")
            span.set_status(Status(StatusCode.ERROR, event.error or "generation failed"))
        self._phases(span, event, now)
        span.end(end_time=now)

    def _phases(self, span: Span, event: Finished, now: int) -> None:
        """Queue, prefill and decode, from the times the engine reported (an engine without a queue of its
        own, an upstream, reports none: its call is one span)."""
        if event.queue_time is None or self._tracer is None:
            return
        tracer = self._tracer
        parent = trace.set_span_in_context(span)
        start = self._started_ns

        def at(seconds: float) -> int:
            return min(now, start + int(seconds * 1e9))

        taken = at(event.queue_time)
        tracer.start_span("queue wait", context=parent, start_time=start).end(end_time=taken)
        first = event.time_to_first_token
        if first is None:  # cancelled or failed before its first token
            return
        tracer.start_span("prefill", context=parent, start_time=taken,
                           attributes={"gen_ai.usage.input_tokens": event.usage.prompt_tokens}
                           ).end(end_time=max(taken, at(first)))
        tracer.start_span("decode", context=parent, start_time=max(taken, at(first)),
                           attributes={"gen_ai.usage.output_tokens": event.usage.completion_tokens}
                           ).end(end_time=max(taken, at(event.total_time)))
