"""Tracing under the real gunicorn server: spans exported over OTLP/HTTP to a receiver the test runs, the
caller's W3C trace continued, a stream's server span ending with the stream, a cancelled stream, and the
trace id in the request log line."""

from __future__ import annotations

import json
import re
import secrets
import time

import pytest
import requests

from tests.http import abort, raw_request, read_until
from tests.otlp_sink import OtlpSink
from tests.servers import start_server, stop_server
from tests.sse import iter_sse, text_chunks

pytestmark = pytest.mark.e2e

PHASES = ("queue wait", "prefill", "decode")


@pytest.fixture(scope="module")
def sink():
    sink = OtlpSink()
    yield sink
    sink.close()


@pytest.fixture(scope="module")
def traced_server(tmp_path_factory, sink):
    server = start_server(tmp_path_factory.mktemp("traced"), {
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "OTEL_SERVICE_NAME": "llm-api-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds between exports (default 5 s)
    })
    yield server
    stop_server(server)


def one(spans, **fields):
    found = [s for s in spans if all(getattr(s, k) == v for k, v in fields.items())]
    assert len(found) == 1, (fields, [(s.name, s.span_id, s.parent_span_id) for s in spans])
    return found[0]


def request_line(server, request_id: str, timeout: float = 30) -> str:
    """The server's ``llm_api.request`` log line of ``request_id`` (written when its response has ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.log().splitlines():
            if "llm_api.request" in line and f"request_id={request_id} " in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no request line for {request_id}")


def generation_done(trace_id: str):
    """A predicate: the spans of ``trace_id`` once its server span and its answer's storage span are in."""
    def ready(spans):
        mine = [s for s in spans if s.trace_id == trace_id]
        names = {s.name for s in mine}
        return mine if "store answer" in names and any(s.kind == "SPAN_KIND_SERVER" for s in mine) else None
    return ready


def test_a_streamed_answer_continues_the_callers_trace_with_its_generation_spans(traced_server, sink):
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{caller_span}-01", "tracestate": "java=svc7", "X-Request-ID": "traced-1"}
    body = {"prompt": "What is the capital of France?", "temperature": 0, "max_tokens": 12, "stream": True}
    with requests.post(f"{traced_server.url}/chat/new/message", data=json.dumps(body), headers=headers,
                       stream=True, timeout=120) as response:
        assert response.status_code == 200
        events = list(iter_sse(text_chunks(response)))
    finish = json.loads(next(e for e in events if e["event"] == "finish")["data"])
    model = requests.get(f"{traced_server.url}/readyz", timeout=10).json()["model"]

    spans = sink.wait_for(generation_done(trace_id))
    server = one(spans, kind="SPAN_KIND_SERVER")
    assert server.parent_span_id == caller_span and server.trace_state == "java=svc7"
    assert server.name == "POST /chat/new/message" and server.attributes["http.route"] == "/chat/new/message"
    assert server.resource["service.name"] == "llm-api-under-test"
    generation = one(spans, parent_span_id=server.span_id, name=f"chat {model}")
    attributes = generation.attributes
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == attributes["gen_ai.response.model"] == model
    assert attributes["gen_ai.request.max_tokens"] == 12 and attributes["gen_ai.request.temperature"] == 0
    assert attributes["gen_ai.usage.input_tokens"] == finish["usage"]["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == finish["usage"]["completion_tokens"]
    assert attributes["gen_ai.response.finish_reasons"] == [finish["finish_reason"]]
    assert attributes["gen_ai.response.id"] == finish["message_id"]
    assert attributes["gen_ai.conversation.id"] == finish["conversation_id"]
    # The model call's phases, one after the other, inside it.
    phases = [one(spans, parent_span_id=generation.span_id, name=name) for name in PHASES]
    assert generation.start_ns <= phases[0].start_ns <= phases[0].end_ns <= phases[1].start_ns
    assert phases[1].end_ns <= phases[2].start_ns <= phases[2].end_ns <= generation.end_ns
    assert phases[2].attributes["gen_ai.usage.output_tokens"] == finish["usage"]["completion_tokens"]
    # The stores, under the request's span.
    stored_turn = one(spans, parent_span_id=server.span_id, name="store user turn")
    stored_answer = one(spans, parent_span_id=server.span_id, name="store answer")
    assert stored_turn.end_ns <= generation.start_ns <= generation.end_ns <= stored_answer.start_ns
    # The request's span covers the whole stream, not just the view that opened it.
    assert server.end_ns >= stored_answer.end_ns

    # The trace id in the request's log line.
    line = request_line(traced_server, "traced-1")
    assert f"trace_id={trace_id}" in line


def test_a_cancelled_stream_ends_its_spans_with_finish_reason_cancelled(traced_server, sink):
    body = json.dumps({"prompt": "Write a long story about the sea.", "max_tokens": 400, "stream": True,
                       "temperature": 0}).encode()
    head = (f"POST /chat/new/message HTTP/1.1\nHost: test\nContent-Type: application/json\n"
            f"Content-Length: {len(body)}\nX-Request-ID: traced-cancel\nConnection: close\n")
    sock = raw_request(traced_server.url, head, body)
    received = read_until(sock, lambda text: text.count('"text"') >= 3)
    assert '"text"' in received
    abort(sock)  # the client goes away mid-answer: the server's next write fails, and the answer is cancelled

    line = request_line(traced_server, "traced-cancel")
    trace_id = re.search(r"trace_id=([0-9a-f]{32})", line)[1]  # a new trace: the client sent no traceparent
    spans = sink.wait_for(generation_done(trace_id))
    server = one(spans, kind="SPAN_KIND_SERVER")
    assert server.parent_span_id == ""  # the root of its trace
    [generation] = [s for s in spans if s.parent_span_id == server.span_id and s.name.startswith("chat ")]
    assert generation.attributes["gen_ai.response.finish_reasons"] == ["cancelled"]
    assert 1 <= generation.attributes["gen_ai.usage.output_tokens"] < 400
    assert generation.status_code == "STATUS_CODE_UNSET"  # a client that leaves is not a server error
    decode = one(spans, parent_span_id=generation.span_id, name="decode")
    # The request's span ended when the stream did (the client gone), after tokens had been sent.
    assert server.end_ns > decode.start_ns


def test_probes_are_not_traced(traced_server, sink):
    assert requests.get(f"{traced_server.url}/readyz", timeout=10).status_code == 200
    sink.wait_for(lambda spans: spans)  # the earlier tests' spans have come (readiness polls came before them)
    assert not [s for s in sink.spans if s.attributes.get("http.route") in ("/healthz", "/readyz", "/metrics")]
