"""Tools on ChatGLM3 served natively: its own prompt layout, and a forced call that parses and validates even
on the tiny random-weight checkpoint (constrained decoding over its SentencePiece vocabulary)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from llm_api.generation.structured import StructuredOutput, ToolFunction
from llm_api.generation.tool_calls import ToolCallDelta
from llm_api.generation.types import Finished, SamplingParams, TextDelta
from llm_api.local_model.engine import EngineOptions, LocalEngine
from llm_api.local_model.loader import ModelSpec
from tests.chatglm3_tiny import build_tiny_chatglm3

PARAMETERS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                               "days": {"type": "integer", "minimum": 1, "maximum": 7}},
              "required": ["city", "days"], "additionalProperties": False}
WEATHER = ToolFunction("get_weather", "The forecast for a city", json.dumps(PARAMETERS))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = build_tiny_chatglm3(tmp_path_factory.mktemp("chatglm3") / "chatglm3-tiny")
    cache = tmp_path_factory.mktemp("chatglm3-cache")
    local = LocalEngine(ModelSpec(str(folder), "cpu", "float32", cache_dir=str(cache)), EngineOptions())
    local.start()
    assert local.wait_ready(120), local.load_error
    yield local
    local.stop()


def test_openai_tool_turns_become_chatglm3_turns(engine):
    history = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "user", "content": "So?"},
    ]
    tools_json = json.dumps([{"name": "get_weather", "description": "The forecast for a city",
                              "parameters": PARAMETERS}], indent=4, ensure_ascii=False)
    native = [
        {"role": "system", "content": "Answer the following questions as best as you can. You have access to the "
                                      f"following tools:\n{tools_json}"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "metadata": "get_weather", "content": '{"city": "Paris", "days": 2}'},
        {"role": "observation", "content": '{"temp": 21}'},
        {"role": "user", "content": "So?"},
    ]
    assert engine.encode_chat(history, (WEATHER,)) == engine.encode_chat(native)


def test_a_forced_call_on_chatglm3_parses_and_validates(engine):
    structured = StructuredOutput(tools=(WEATHER,), tool_choice="function", function_name="get_weather")
    # The tiny checkpoint's 256-token context has no room for the tools' description; the grammar alone
    # makes the call.
    ids = engine.encode_chat([{"role": "user", "content": "Weather in Paris?"}])
    handle = engine.submit("t", ids, SamplingParams(max_tokens=64, temperature=0.8, seed=1, structured=structured))
    calls, text = [], ""
    while not isinstance(event := handle.next_event(60), Finished):
        assert event is not None
        if isinstance(event, ToolCallDelta):
            calls.append(event)
        elif isinstance(event, TextDelta):
            text += event.text
    assert event.finish_reason == "tool_calls", (event, text, calls)
    assert text == "" and calls[0].name == "get_weather"
    jsonschema.validate(json.loads("".join(c.arguments for c in calls)), PARAMETERS)


def test_the_tiny_tokenizer_gives_the_grammar_its_pieces(engine):
    pieces = engine._loaded().tokenizer.grammar_vocabulary()
    assert len(pieces) == len(engine._loaded().tokenizer) and pieces[-1] == ""
    assert any(p.startswith("▁") for p in pieces)
