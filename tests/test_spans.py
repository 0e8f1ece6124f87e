"""The generation's spans without the SDK: the API's no-op keeps the caller's trace, so an upstream engine is
still handed the caller's trace context, and nothing is computed for spans that record nothing."""

from __future__ import annotations

from opentelemetry import context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from llm_api.generation.types import Finished, SamplingParams, Usage
from llm_api.services.spans import GenerationTrace

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_ID = 0x00F067AA0BA902B7


def submitted(trace_: GenerationTrace) -> GenerationTrace:
    trace_.submitting(operation="chat", model="m", params=SamplingParams(max_tokens=4), prompt_tokens=3,
                      message_id="a", conversation_id="c")
    return trace_


def test_the_callers_trace_context_is_handed_on():
    caller = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=TraceFlags(1)))
    token = context.attach(trace.set_span_in_context(caller))
    try:
        generation = submitted(GenerationTrace())
    finally:
        context.detach(token)
    headers = generation.outgoing_headers()
    assert headers["traceparent"].startswith(f"00-{trace.format_trace_id(TRACE_ID)}-")
    assert headers["traceparent"].endswith("-01")
    generation.finished(Finished("stop", Usage(3, 4), 0.1, 0.2, queue_time=0.05))  # a no-op, without error


def test_without_a_trace_nothing_is_handed_on():
    generation = submitted(GenerationTrace())
    assert generation.outgoing_headers() == {}
    with generation.storage("store answer"):
        pass
    generation.refused(RuntimeError("queue full"))
