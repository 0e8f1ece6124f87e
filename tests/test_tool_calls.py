"""Reading tool calls out of streamed text, the tool prompts, and the schema keyword check (no model)."""

from __future__ import annotations

import json

import pytest

from llm_api.generation.structured import ToolFunction, UnsupportedFieldError
from llm_api.generation.tool_calls import ToolCallDelta, ToolCallReader, ToolSyntax, parse_tool_calls
from llm_api.generation.types import TextDelta
from llm_api.local_model.schema_support import check_supported
from llm_api.local_model.tool_prompts import chatglm3_messages, plain_messages, template_messages

NAMES = frozenset({"get_weather", "get_time"})
JSON = ToolSyntax("json")
TAGGED = ToolSyntax("json", "<tool_call>\n", "\n</tool_call>")
GLM = ToolSyntax("name_line")


def read(syntax: ToolSyntax, pieces: list[str], forced: bool = False) -> tuple[str, list[dict], list]:
    """Feed ``pieces`` one by one: (the text, the calls assembled, every piece emitted)."""
    reader = ToolCallReader(syntax, NAMES, forced)
    out = [p for piece in pieces for p in reader.feed(piece)] + reader.finish()
    calls: list[dict] = []
    for p in out:
        if isinstance(p, ToolCallDelta):
            if p.name is not None:
                calls.append({"id": p.id, "name": p.name, "arguments": ""})
            calls[p.index]["arguments"] += p.arguments
    return "".join(p.text for p in out if isinstance(p, TextDelta)), calls, out


def chars(text: str) -> list[str]:
    return list(text)


CALL = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'


@pytest.mark.parametrize("split", [chars, lambda t: [t], lambda t: [t[:7], t[7:30], t[30:]]])
def test_a_json_call_streams_its_name_then_argument_fragments(split):
    text, calls, out = read(JSON, split(CALL), forced=True)
    assert text == ""
    assert [c["name"] for c in calls] == ["get_weather"] and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert isinstance(out[0], ToolCallDelta) and out[0].name == "get_weather" and out[0].arguments == ""
    if split is chars:  # streamed: arguments arrive in many fragments, the wrapper's closing brace in none
        assert len(out) > 10 and out[-1].arguments == "}"


def test_tagged_calls_and_two_calls_in_one_answer():
    answer = f"<tool_call>\n{CALL}\n</tool_call>\n<tool_call>\n" \
             '{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'
    text, calls, _ = read(TAGGED, chars(answer))
    assert text == "" and [c["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[1]["arguments"]) == {"zone": "UTC"}


@pytest.mark.parametrize("answer", ["Hello there, how can I help?", '{"answer": 42}', "{}",
                                    '{"name": "unknown_tool", "arguments": {}}', "  The { brace"])
def test_auto_text_that_is_not_a_call_passes_through_unchanged(answer):
    text, calls, _ = read(JSON, chars(answer))
    assert calls == [] and text == answer


def test_auto_plain_text_is_not_held_back():
    reader = ToolCallReader(JSON, NAMES, forced=False)
    assert reader.feed("Hello") == [TextDelta("Hello")]


@pytest.mark.parametrize("answer", [
    f"```json\n{CALL}\n```",
    '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", \\"unit\\": \\"celsius\\"}"}',
    f"[{CALL}]",
])
def test_auto_reads_fenced_listed_and_string_argument_calls(answer):
    text, calls, _ = read(JSON, chars(answer))
    assert text == "" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "celsius"}


@pytest.mark.parametrize("answer, arguments", [
    ('get_weather\n```python\ntool_call(city="Paris", unit="celsius")\n```', {"city": "Paris", "unit": "celsius"}),
    (' get_weather\n{"city": "Paris", "unit": "celsius"}', {"city": "Paris", "unit": "celsius"}),
    ("get_time\ntool_call(zone='UTC')", {"zone": "UTC"}),
])
def test_chatglm3_calls(answer, arguments):
    text, calls, _ = read(GLM, chars(answer))
    assert text == "" and len(calls) == 1 and json.loads(calls[0]["arguments"]) == arguments


def test_chatglm3_answers_and_unsafe_calls_are_text():
    assert read(GLM, chars("\nParis is sunny today."))[0] == "\nParis is sunny today."
    text, calls, _ = read(GLM, chars('get_weather\ntool_call(city=__import__("os").system("x"))'))
    assert calls and calls[0]["arguments"].startswith("tool_call(")  # never evaluated, passed on as text


def test_parse_tool_calls_whole_answers():
    assert parse_tool_calls(CALL, JSON, NAMES) == [("get_weather", '{"city": "Paris", "unit": "celsius"}')]
    assert parse_tool_calls("not a call", JSON, NAMES) == []
    assert parse_tool_calls('{"name": "get_weather", "arguments": {}, "extra": 1}', JSON, NAMES) == []


HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
]
TOOLS = [ToolFunction("get_weather", "Weather", json.dumps({"type": "object", "properties": {"city": {
    "type": "string"}}}))]


def test_plain_template_prompt_describes_tools_and_writes_turns_as_text():
    messages = plain_messages(HISTORY, TOOLS, JSON)
    assert messages[0]["role"] == "system" and '"name": "get_weather"' in messages[0]["content"]
    assert json.loads(messages[2]["content"]) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert messages[3] == {"role": "user", "content": 'Result of get_weather: {"celsius": 21}'}


def test_template_messages_keep_the_hugging_face_shape():
    messages = template_messages(HISTORY)
    assert messages[1]["tool_calls"] == [{"type": "function", "function": {"name": "get_weather",
                                                                          "arguments": {"city": "Paris"}}}]
    assert messages[2] == {"role": "tool", "content": '{"celsius": 21}', "tool_call_id": "call_1",
                           "name": "get_weather"}


def test_chatglm3_turns_put_tools_in_the_system_turn_and_results_in_observations():
    messages = chatglm3_messages(HISTORY, TOOLS)
    assert messages[0]["role"] == "system" and json.loads(messages[0]["content"].split("\n", 1)[1])[0]["name"] \
        == "get_weather"
    assert messages[2] == {"role": "assistant", "metadata": "get_weather", "content": '{"city": "Paris"}'}
    assert messages[3] == {"role": "observation", "metadata": "", "content": '{"celsius": 21}'}


@pytest.mark.parametrize("schema, where", [
    ({"type": "object", "properties": {"a": {"not": {}}}}, "properties.a.not"),
    ({"type": "array", "items": {"type": "integer", "multipleOf": 2}}, "items.multipleOf"),
    ({"type": "string", "format": "credit-card"}, "format"),
    ({"allOf": [{"type": "string"}]}, "allOf"),
    ({"$ref": "https://example.org/schema"}, "$ref"),
    ({"type": "array", "minItems": 100000}, "minItems"),
])
def test_keywords_the_grammar_cannot_enforce_are_named(schema, where):
    with pytest.raises(UnsupportedFieldError) as refused:
        check_supported(schema, "response_format.json_schema.schema")
    assert refused.value.field == "response_format.json_schema.schema" and repr(where)[1:-1] in refused.value.message


def test_supported_schemas_pass_the_check():
    from tests.data.structured_schemas import SCHEMAS

    for _, _, schema in SCHEMAS:
        check_supported(schema, "response_format.json_schema.schema")
