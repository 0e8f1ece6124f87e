"""Tool calls and structured output with the official ``openai`` client against the real server (gunicorn
gevent, embedded model): a full tool round trip, streamed and not, and ``chat.completions.parse``."""

from __future__ import annotations

import json

import jsonschema
import openai
import pydantic
import pytest

MODEL = "SmolLM2-135M-Instruct"  # the embedded chat model's name: what `model` must say
pytestmark = pytest.mark.e2e

WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                       "unit": {"enum": ["celsius", "fahrenheit"]}},
                      "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
                                           "parameters": WEATHER_PARAMETERS}}]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
RESULT = '{"city": "Paris", "celsius": 21, "sky": "sunny"}'


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="not-needed", max_retries=0, timeout=300)


def _answer_with_result(client, call_message: dict, call_id: str, stream: bool) -> tuple[str, str]:
    """Send the tool's result back; the model answers in text."""
    messages = [*QUESTION, call_message, {"role": "tool", "tool_call_id": call_id, "content": RESULT}]
    if not stream:
        answer = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none",
                                                temperature=0, max_tokens=40)
        return answer.choices[0].message.content, answer.choices[0].finish_reason
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, tool_choice="none",
                                                 temperature=0, max_tokens=40, stream=True))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].choices[0].finish_reason


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_tool_round_trip(client, tool_choice):
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice=tool_choice,
                                                temperature=0, max_tokens=60)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)
    assert completion.usage.completion_tokens > 3
    text, finish = _answer_with_result(client, choice.message.model_dump(exclude_none=True), call.id, stream=False)
    assert text and finish in ("stop", "length")


def test_a_streamed_tool_round_trip(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required",
                                                 temperature=0, max_tokens=60, stream=True,
                                                 stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first, fragments = deltas[0], deltas[1:]
    assert first.index == 0 and first.id.startswith("call_") and first.function.name == "get_weather"
    assert len(fragments) > 2 and all(f.index == 0 and f.id is None and f.function.name is None for f in fragments)
    arguments = "".join(f.function.arguments for f in deltas)
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMETERS)
    assert chunks[-2].choices[0].finish_reason == "tool_calls" and chunks[-1].usage.completion_tokens > 3
    call_message = {"role": "assistant", "tool_calls": [
        {"id": first.id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]}
    text, finish = _answer_with_result(client, call_message, first.id, stream=True)
    assert text and finish in ("stop", "length")


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=24)
    country: str = pydantic.Field(max_length=24)
    population_millions: float = pydantic.Field(ge=0, le=40)


def test_parse_with_a_pydantic_model(client):
    completion = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Describe Paris as JSON: name, country, population."}],
        response_format=City, temperature=0, max_tokens=60)
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, City) and message.parsed.name


def test_unsupported_schema_keyword_is_422_naming_the_field(client):
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.chat.completions.create(model=MODEL, messages=QUESTION, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}})
    assert refused.value.body["param"] == "response_format.json_schema.schema"
    assert refused.value.body["code"] == "unsupported_field"
