"""Structured output and forced tool calls on the real embedded model, in-process: every answer parses and
validates against its schema (greedy decoding, all requests in one running batch)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from llm_api.generation import Finished, SamplingParams, TextDelta
from llm_api.generation.structured import ResponseFormat, StructuredOutput, ToolFunction, UnsupportedFieldError
from llm_api.generation.tool_calls import ToolCallDelta
from llm_api.local_model import grammar
from tests.data.structured_schemas import SCHEMAS

pytestmark = pytest.mark.model

MAX_TOKENS = 96


def _read(handle, timeout: float = 600) -> tuple[str, list[ToolCallDelta], Finished]:
    text, calls = "", []
    while True:
        event = handle.next_event(timeout)
        assert event is not None, "no event in time"
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, ToolCallDelta):
            calls.append(event)
        else:
            handle.close()
            return text, calls, event


def _submit(engine, prompt: str, structured: StructuredOutput, max_tokens: int = MAX_TOKENS, name: str = "r"):
    ids = engine.encode_chat([{"role": "user", "content": prompt}], structured.tools)
    return engine.submit(name, ids, SamplingParams(max_tokens=max_tokens, temperature=0.0, structured=structured))


def test_every_answer_validates_against_its_schema(real_engine):
    handles = [(name, schema, _submit(real_engine, f"{prompt} Answer in JSON.",
                                      StructuredOutput(ResponseFormat("json_schema", json.dumps(schema), name)),
                                      name=name))
               for name, prompt, schema in SCHEMAS]
    assert len(handles) >= 20
    for name, schema, handle in handles:
        text, calls, finished = _read(handle)
        assert finished.finish_reason == "stop", (name, text, finished)
        assert not calls
        jsonschema.validate(json.loads(text), schema)  # raises, naming the schema's failing part
    assert grammar.live_matchers() == 0


def test_json_object_mode_answers_an_object(real_engine):
    text, _, finished = _read(_submit(real_engine, "Describe a cat in JSON.",
                                      StructuredOutput(ResponseFormat("json_object")), max_tokens=80))
    if finished.finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # a free-form object may run past a small budget: then it is a prefix of one
        assert finished.finish_reason == "length" and text.startswith("{")


def test_running_out_of_tokens_mid_json_ends_with_length(real_engine):
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    text, _, finished = _read(_submit(real_engine, "Tell a long story.",
                                      StructuredOutput(ResponseFormat("json_schema", json.dumps(schema))), 6))
    assert finished.finish_reason == "length" and finished.usage.completion_tokens == 6
    assert text.startswith('{"story"')
    with pytest.raises(ValueError):
        json.loads(text)


def test_cancelled_constrained_request_frees_its_grammar(real_engine):
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    handle = _submit(real_engine, "Tell a long story.",
                     StructuredOutput(ResponseFormat("json_schema", json.dumps(schema))), 400)
    deltas = 0
    while True:
        event = handle.next_event(600)
        assert event is not None
        if isinstance(event, TextDelta):
            deltas += 1
            if deltas == 3:
                handle.cancel()
        elif isinstance(event, Finished):
            break
    assert event.finish_reason == "cancelled"
    assert grammar.live_matchers() == 0


WEATHER = ToolFunction("get_weather", "The weather in a city", json.dumps({
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                     "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}))
TIME = ToolFunction("get_time", "The time in a time zone", json.dumps({
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 30}}, "required": ["zone"]}))


@pytest.mark.parametrize("choice, name", [("required", ""), ("function", "get_time")])
def test_a_forced_call_parses_and_validates(real_engine, choice, name):
    structured = StructuredOutput(tools=(WEATHER, TIME), tool_choice=choice, function_name=name)
    text, calls, finished = _read(_submit(real_engine, "What is the weather in Paris?", structured))
    assert finished.finish_reason == "tool_calls" and text == ""
    assert calls[0].index == 0 and calls[0].id.startswith("call_") and calls[0].name in ("get_weather", "get_time")
    assert all(c.name is None and c.index == 0 for c in calls[1:])  # then argument fragments only
    if name:
        assert calls[0].name == name
    tool = {"get_weather": WEATHER, "get_time": TIME}[calls[0].name]
    arguments = json.loads("".join(c.arguments for c in calls))
    jsonschema.validate(arguments, tool.parameters_dict())


@pytest.mark.parametrize("structured, field", [
    (StructuredOutput(ResponseFormat("json_schema", json.dumps({"type": "string", "not": {"const": "x"}}))),
     "response_format.json_schema.schema"),
    (StructuredOutput(ResponseFormat("json_schema", json.dumps({"type": "array", "uniqueItems": True}))),
     "response_format.json_schema.schema"),
    (StructuredOutput(ResponseFormat("json_schema", json.dumps({"type": "string", "pattern": "(["}))),
     "response_format.json_schema.schema"),
    (StructuredOutput(tools=(ToolFunction("f", "", json.dumps({"type": "object", "if": {}})),),
                      tool_choice="required"), "tools[0].function.parameters"),
])
def test_schemas_the_grammar_cannot_enforce_are_refused_naming_the_field(real_engine, structured, field):
    with pytest.raises(UnsupportedFieldError) as refused:
        _submit(real_engine, "Hi", structured)
    assert refused.value.field == field
