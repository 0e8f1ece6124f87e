"""An upstream OpenAI-compatible engine receives response_format as the client sent it, and refuses tools
(whose calls it does not relay) with the field named."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from llm_api.generation import Finished, SamplingParams
from llm_api.generation.structured import ResponseFormat, StructuredOutput, ToolFunction, UnsupportedFieldError
from llm_api.routing.upstream import UpstreamEngine

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[dict]]]:
    """A server that records each chat body and streams one JSON answer."""
    bodies: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            events = [{"choices": [{"delta": {"content": '{"a": 1}'}}]},
                      {"choices": [{"delta": {}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 4}}]
            stream = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(stream.encode())
            self.close_connection = True

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", bodies
    server.shutdown()
    server.server_close()


def test_response_format_is_passed_on_unchanged(upstream):
    url, bodies = upstream
    engine = UpstreamEngine("remote", url, model="m")
    structured = StructuredOutput(ResponseFormat("json_schema", json.dumps(SCHEMA), "answer"))
    handle = engine.submit("r", [0], SamplingParams(max_tokens=8, structured=structured),
                           messages=[{"role": "user", "content": "hi"}])
    while not isinstance(handle.next_event(10), Finished):
        pass
    assert bodies[0]["response_format"] == {"type": "json_schema",
                                            "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}


def test_tools_are_refused_naming_the_field(upstream):
    url, bodies = upstream
    engine = UpstreamEngine("remote", url, model="m")
    structured = StructuredOutput(tools=(ToolFunction("f"),), tool_choice="required")
    with pytest.raises(UnsupportedFieldError) as refused:
        engine.submit("r", [0], SamplingParams(max_tokens=8, structured=structured),
                      messages=[{"role": "user", "content": "hi"}])
    assert refused.value.field == "tools" and bodies == []
