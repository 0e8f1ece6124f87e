"""The generation's spans (llm_api.services.spans), on an SDK tracer of the test's own with an in-memory
exporter: their tree under the caller's span, the phases timed from the engine's reported times, the GenAI
attributes, the trace context handed to an upstream; and nothing at all while tracing is off."""

from __future__ import annotations

import time

import pytest
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, StatusCode, TraceFlags

from llm_api.generation.types import Finished, SamplingParams, Usage
from llm_api.services.spans import GenerationTrace

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CALLER_SPAN_ID = 0x00F067AA0BA902B7


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter):
    provider = TracerProvider()  # the test's own: the process-wide provider stays unset
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test")


def under_the_caller(make):
    """Run ``make()`` while the caller's remote span (as extracted from its traceparent) is the current one."""
    caller = NonRecordingSpan(SpanContext(TRACE_ID, CALLER_SPAN_ID, is_remote=True, trace_flags=TraceFlags(1)))
    token = context.attach(trace.set_span_in_context(caller))
    try:
        return make()
    finally:
        context.detach(token)


def submitted(generation: GenerationTrace, **params) -> GenerationTrace:
    generation.submitting(operation="chat", model="tiny", params=SamplingParams(max_tokens=16, **params),
                          prompt_tokens=5, message_id="m1", conversation_id="c1")
    return generation


def by_name(exporter):
    return {span.name: span for span in exporter.get_finished_spans()}


def test_the_spans_of_an_answer_under_the_callers_span(tracer, exporter):
    generation = under_the_caller(lambda: GenerationTrace(tracer))
    with generation.storage("store user turn"):
        pass
    submitted(generation, temperature=0.0, seed=7)
    headers = generation.outgoing_headers()
    time.sleep(0.35)  # the answer's 0.3 s have passed (phases never end after the call's own end, "now")
    generation.finished(Finished("length", Usage(5, 16), time_to_first_token=0.1, total_time=0.3,
                                 queue_time=0.04, model="tiny", engine="main"))
    with generation.storage("store answer"):
        pass

    spans = by_name(exporter)
    assert set(spans) == {"store user turn", "chat tiny", "queue wait", "prefill", "decode", "store answer"}
    call = spans["chat tiny"]
    for name in ("store user turn", "chat tiny", "store answer"):
        assert spans[name].context.trace_id == TRACE_ID and spans[name].parent.span_id == CALLER_SPAN_ID
    for name in ("queue wait", "prefill", "decode"):
        assert spans[name].parent.span_id == call.context.span_id
    assert dict(call.attributes) == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "tiny", "gen_ai.request.max_tokens": 16,
        "gen_ai.request.temperature": 0.0, "gen_ai.request.top_p": 1.0, "gen_ai.request.seed": 7,
        "gen_ai.usage.input_tokens": 5, "gen_ai.usage.output_tokens": 16, "gen_ai.response.finish_reasons": ("length",),
        "gen_ai.response.id": "m1", "gen_ai.conversation.id": "c1", "gen_ai.response.model": "tiny",
        "llm_api.engine": "main", "llm_api.degraded": False}
    assert call.status.status_code == StatusCode.UNSET
    # The phases are laid out from the engine's times, from the moment the request was submitted.
    start = call.start_time
    assert spans["queue wait"].start_time == start and spans["queue wait"].end_time == start + 40_000_000
    assert (spans["prefill"].start_time, spans["prefill"].end_time) == (start + 40_000_000, start + 100_000_000)
    assert (spans["decode"].start_time, spans["decode"].end_time) == (start + 100_000_000, start + 300_000_000)
    # An upstream is handed the model call as its parent.
    assert headers == {"traceparent": f"00-{trace.format_trace_id(TRACE_ID)}-"
                                      f"{trace.format_span_id(call.context.span_id)}-01"}


def test_a_failed_or_refused_call_is_an_error_and_a_cancelled_one_is_not(tracer, exporter):
    submitted(GenerationTrace(tracer)).finished(Finished("error", Usage(5, 2), 0.1, 0.2, error="boom", queue_time=0.0))
    submitted(GenerationTrace(tracer)).refused(RuntimeError("queue full"))
    submitted(GenerationTrace(tracer)).finished(Finished("cancelled", Usage(5, 0), None, 0.2, queue_time=0.2))
    failed, refused, cancelled = [s for s in exporter.get_finished_spans() if s.name == "chat tiny"]
    assert failed.status.status_code == StatusCode.ERROR and failed.attributes["error.type"] == "generation_failed"
    assert refused.status.status_code == StatusCode.ERROR and refused.attributes["error.type"] == "RuntimeError"
    assert cancelled.status.status_code == StatusCode.UNSET
    assert cancelled.attributes["gen_ai.response.finish_reasons"] == ("cancelled",)
    # Cancelled while it waited: a queue wait, no prefill or decode.
    phases = [s.name for s in exporter.get_finished_spans()
              if s.parent and s.parent.span_id == cancelled.context.span_id]
    assert phases == ["queue wait"]


def test_an_engine_without_a_queue_of_its_own_gets_one_span(tracer, exporter):
    submitted(GenerationTrace(tracer)).finished(Finished("stop", Usage(5, 3), 0.1, 0.2))  # no queue_time: upstream
    assert [s.name for s in exporter.get_finished_spans()] == ["chat tiny"]


def test_with_tracing_off_nothing_is_made_or_handed_on():
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # no SDK provider in this process
    generation = under_the_caller(GenerationTrace)
    with generation.storage("store user turn"):
        pass
    submitted(generation)
    assert generation.outgoing_headers() == {}
    generation.finished(Finished("stop", Usage(5, 3), 0.1, 0.2, queue_time=0.0))
    assert trace.get_current_span() is trace.INVALID_SPAN
