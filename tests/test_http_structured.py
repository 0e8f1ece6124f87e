"""response_format, tools and tool_choice over HTTP (fake engine): validation, what reaches the engine, and
the OpenAI shapes of tool calls, whole and streamed."""

from __future__ import annotations

import json

import pytest

from llm_api.generation.structured import UnsupportedFieldError
from tests.fakes import CHAT
from tests.http import assert_error, openai_error, post, post_json
from tests.sse import openai_payloads, parse_sse

PATH = "/v1/chat/completions"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CALL_REPLY = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}


def test_response_format_reaches_the_engine(client, fake_engine):
    assert post_json(client, PATH, {**CHAT, "response_format": SCHEMA_FORMAT}).status_code == 200
    structured = fake_engine.submitted[-1].params.structured
    assert structured.response_format.kind == "json_schema" and structured.response_format.name == "answer"
    assert structured.response_format.schema_dict() == SCHEMA_FORMAT["json_schema"]["schema"]
    post_json(client, PATH, {**CHAT, "response_format": {"type": "json_object"}})
    assert fake_engine.submitted[-1].params.structured.response_format.kind == "json_object"
    post_json(client, PATH, {**CHAT, "response_format": {"type": "text"}})
    assert fake_engine.submitted[-1].params.structured is None


def test_the_lesson_api_takes_response_format(client, fake_engine):
    assert post(client, {"prompt": "hi", "response_format": {"type": "json_object"}}).status_code == 200
    assert fake_engine.submitted[-1].params.structured.response_format.kind == "json_object"
    error = assert_error(post(client, {"prompt": "hi", "response_format": {"type": "yaml"}}), 422,
                         "validation_error")
    assert "response_format" in error["details"]["fields"]


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "strng"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"minimum": "x"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]}, "tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages"),
    ({"messages": [{"role": "assistant", "content": None}]}, "messages"),
])
def test_bad_shapes_are_422_naming_the_field(client, extra, param):
    openai_error(post_json(client, PATH, {**CHAT, **extra}), 422, param, "validation_error")


def test_a_schema_the_engine_cannot_honour_is_422_naming_it(client, fake_engine):
    def refuse(*args, **kwargs):
        raise UnsupportedFieldError("response_format.json_schema.schema", "the keyword 'not' is not supported")

    fake_engine.submit = refuse
    error = openai_error(post_json(client, PATH, {**CHAT, "response_format": SCHEMA_FORMAT}), 422,
                         "response_format.json_schema.schema", "unsupported_field")
    assert "'not'" in error["message"]


def test_tool_history_reaches_the_engine(client, fake_engine):
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "21 C"}]
    assert post_json(client, PATH, {**CHAT, "messages": messages, "tools": [WEATHER]}).status_code == 200
    assert fake_engine.encoded[-1][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert fake_engine.encoded[-1][2] == {"role": "tool", "content": "21 C", "tool_call_id": "call_1"}
    structured = fake_engine.submitted[-1].params.structured
    assert [t.name for t in structured.tools] == ["get_weather"] and structured.tool_choice == "auto"


def test_a_tool_call_answer(client, fake_engine):
    fake_engine.reply = CALL_REPLY
    body = post_json(client, PATH, {**CHAT, "tools": [WEATHER], "tool_choice": "required"}).get_json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None and len(message["tool_calls"]) == 1
    call = message["tool_calls"][0]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert body["usage"]["completion_tokens"] > 0


def test_tool_calls_stream_as_openai_streams_them(client, fake_engine):
    fake_engine.reply = CALL_REPLY
    response = post_json(client, PATH, {**CHAT, "tools": [WEATHER], "stream": True,
                                        "stream_options": {"include_usage": True},
                                        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    chunks = openai_payloads(parse_sse(response.get_data(as_text=True)))
    assert chunks[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-3]]
    first = deltas[0]["tool_calls"][0]
    assert first["index"] == 0 and first["id"].startswith("call_") and first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    fragments = [d["tool_calls"][0] for d in deltas[1:]]
    assert len(fragments) > 1 and all(set(f) == {"index", "function"} and set(f["function"]) == {"arguments"}
                                      for f in fragments)
    assert json.loads("".join(f["function"]["arguments"] for f in fragments)) == {"city": "Paris"}
    assert chunks[-3]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-2]["usage"]["completion_tokens"] > 0


def test_auto_text_answers_stay_text(client, fake_engine):
    body = post_json(client, PATH, {**CHAT, "tools": [WEATHER]}).get_json()
    assert body["choices"][0]["message"]["content"] == fake_engine.reply
    assert "tool_calls" not in body["choices"][0]["message"] and body["choices"][0]["finish_reason"] == "stop"
