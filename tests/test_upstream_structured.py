"""An upstream OpenAI-compatible engine receives response_format, tools and tool_choice as the client sent
them, and relays the upstream's streamed tool calls as the local engine's: through /v1/chat/completions
they come out as tool_calls, streamed and not, with finish_reason tool_calls."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from llm_api import create_app, stop_engine
from llm_api.generation import Finished, SamplingParams
from llm_api.generation.structured import ResponseFormat, StructuredOutput
from llm_api.generation.tool_calls import ToolCallDelta
from llm_api.routing import EngineRouter
from llm_api.routing.upstream import ToolCallRelay, UpstreamEngine
from tests.sse import parse_sse, send_openai_stream

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
TEXT_ANSWER = [{"choices": [{"delta": {"content": '{"a": 1}'}}]},
               {"choices": [{"delta": {}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4}}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def tool_call_answer(finish: str = "tool_calls") -> list[dict]:
    """Two calls as vLLM streams them: id, type and name first, then argument fragments (upstream index 3
    and 7, which come out as 0 and 1)."""
    def call(piece: dict) -> dict:
        return {"choices": [{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}]}

    return [call({"index": 3, "id": "call_up1", "type": "function",
                  "function": {"name": "get_weather", "arguments": ""}}),
            call({"index": 3, "function": {"arguments": '{"city": '}}),
            call({"index": 3, "function": {"arguments": '"Paris"}'}}),
            call({"index": 7, "id": "call_up2", "type": "function", "function": {"name": "get_time",
                                                                                   "arguments": "{}"}}),
            {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
            {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 12}}]


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[dict], list[list[dict]]]]:
    """A server that records each chat body and streams the events in ``answers`` (the last one again and
    again; a text answer when none is set)."""
    bodies: list[dict] = []
    answers: list[list[dict]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            events = answers[-1] if answers else TEXT_ANSWER
            send_openai_stream(self, events)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", bodies, answers
    server.shutdown()
    server.server_close()


@pytest.fixture
def api(upstream, settings):
    """The service's test client, with the fake upstream as its one engine."""
    url, _, _ = upstream
    app = create_app(settings, engine=EngineRouter([("remote", UpstreamEngine("remote", url, model="m"))]))
    app.config["TESTING"] = True
    yield app.test_client()
    stop_engine(app)  # the discovery timer the first request started; it would outlive the fake upstream


def test_response_format_is_passed_on_unchanged(upstream):
    url, bodies, _ = upstream
    engine = UpstreamEngine("remote", url, model="m")
    structured = StructuredOutput(ResponseFormat("json_schema", json.dumps(SCHEMA), "answer"))
    handle = engine.submit("r", [0], SamplingParams(max_tokens=8, structured=structured),
                           messages=[{"role": "user", "content": "hi"}])
    while not isinstance(handle.next_event(10), Finished):
        pass
    assert bodies[0]["response_format"] == {"type": "json_schema",
                                            "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}


HISTORY = [{"role": "user", "content": "Weather in Paris?"},
           {"role": "assistant", "content": None, "tool_calls": [
               {"id": "call_a", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
           {"role": "tool", "tool_call_id": "call_a", "content": "sunny"}]


@pytest.mark.parametrize("choice", ["auto", "required", "none",
                                    {"type": "function", "function": {"name": "get_weather"}}])
def test_tools_tool_choice_and_tool_turns_reach_the_upstream_unchanged(upstream, api, choice):
    _, bodies, _ = upstream
    response = api.post("/v1/chat/completions", json={"model": "m", "messages": HISTORY, "tools": [WEATHER, TIME],
                                                       "tool_choice": choice, "max_tokens": 8})
    assert response.status_code == 200, response.get_json()
    body = bodies[0]
    assert body["tools"] == [WEATHER, TIME] and body["tool_choice"] == choice
    assert body["messages"][1]["tool_calls"] == HISTORY[1]["tool_calls"]
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "call_a", "content": "sunny"}


def test_a_request_without_tools_sends_none(upstream, api):
    _, bodies, _ = upstream
    response = api.post("/v1/chat/completions", json={"model": "m", "messages": HISTORY[:1], "max_tokens": 8})
    assert response.status_code == 200
    assert "tools" not in bodies[0] and "tool_choice" not in bodies[0]


def test_streamed_upstream_calls_come_out_as_streamed_tool_calls(upstream, api):
    _, _, answers = upstream
    answers.append(tool_call_answer())
    response = api.post("/v1/chat/completions", json={
        "model": "m", "messages": HISTORY[:1], "tools": [WEATHER, TIME], "tool_choice": "required", "stream": True,
        "stream_options": {"include_usage": True}})
    assert response.status_code == 200
    chunks = [e["data"] for e in parse_sse(response.get_data(as_text=True)) if e["data"] not in (None, "[DONE]")]
    chunks = [json.loads(c) if isinstance(c, str) else c for c in chunks]
    pieces = [call for c in chunks for choice in c["choices"] for call in choice["delta"].get("tool_calls", ())]
    assert pieces[0] == {"index": 0, "id": "call_up1", "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}
    assert [p["function"]["arguments"] for p in pieces[1:3]] == ['{"city": ', '"Paris"}']
    assert all(set(p) == {"index", "function"} and p["index"] == 0 for p in pieces[1:3])
    assert pieces[3] == {"index": 1, "id": "call_up2", "type": "function",
                         "function": {"name": "get_time", "arguments": "{}"}}
    finishes = [choice["finish_reason"] for c in chunks for choice in c["choices"] if choice["finish_reason"]]
    assert finishes == ["tool_calls"]
    assert chunks[-1]["usage"]["completion_tokens"] == 12


@pytest.mark.parametrize("finish", ["tool_calls", "stop"])
def test_upstream_calls_come_out_whole_without_streaming(upstream, api, finish):
    _, _, answers = upstream
    answers.append(tool_call_answer(finish))  # vLLM ends a call to a named function with "stop"
    response = api.post("/v1/chat/completions", json={"model": "m", "messages": HISTORY[:1], "tools": [WEATHER, TIME],
                                                       "tool_choice": "required"})
    assert response.status_code == 200, response.get_json()
    choice = response.get_json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "call_up1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_up2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]


def test_the_relay_waits_for_a_name_and_gives_ids_where_the_upstream_gave_none():
    relay = ToolCallRelay()
    assert relay.feed([{"index": 0, "function": {"arguments": '{"a"'}}]) == []  # no name yet
    opened = relay.feed([{"index": 0, "function": {"name": "f", "arguments": ": 1}"}}, "junk", {"index": [1]}])
    assert len(opened) == 1 and opened[0].name == "f" and opened[0].id and opened[0].id.startswith("call_")
    assert opened[0].arguments == '{"a": 1}'
    assert relay.feed(None) == [] and relay.called
    assert relay.feed([{"index": 0, "function": {"arguments": " "}}]) == [ToolCallDelta(0, " ")]
