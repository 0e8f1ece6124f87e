"""The OpenAI fields that shape an answer: ``response_format``, ``tools`` and ``tool_choice``, and the tool
turns of a conversation (assistant ``tool_calls``, ``tool`` results). Schemas must be valid JSON Schema
(draft 2020-12, checked with ``jsonschema``); whether the engine can enforce every keyword is its own check
(a 422 naming the field as well)."""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from marshmallow import ValidationError, fields

from llm_api.generation.structured import ResponseFormat, ToolFunction

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_TOOLS = 128


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be an object.")
    return value


def _only(value: dict[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValidationError(f"{what}: unknown fields {unknown}.")


def checked_schema(schema: Any, what: str) -> str:
    """A JSON Schema (an object) as JSON text, or a ValidationError saying why it is not valid JSON Schema."""
    _object(schema, what)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise ValidationError(f"{what} is not valid JSON Schema{f' at {where}' if where else ''}: "
                              f"{exc.message}") from None
    return json.dumps(schema, sort_keys=True, ensure_ascii=False)


class ResponseFormatField(fields.Field):
    """``{"type": "text"}`` (None), ``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema":
    {"name", "description"?, "schema"?, "strict"?}}``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> ResponseFormat | None:
        value = _object(value, "response_format")
        kind = value.get("type")
        if kind == "text":
            _only(value, {"type"}, "response_format")
            return None
        if kind == "json_object":
            _only(value, {"type"}, "response_format")
            return ResponseFormat("json_object")
        if kind != "json_schema":
            raise ValidationError('type must be "text", "json_object" or "json_schema".')
        _only(value, {"type", "json_schema"}, "response_format")
        spec = _object(value.get("json_schema"), "json_schema")
        _only(spec, {"name", "description", "schema", "strict"}, "json_schema")
        name = spec.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValidationError("json_schema.name must be 1-64 letters, digits, underscores or dashes.")
        if spec.get("strict") not in (None, True, False):
            raise ValidationError("json_schema.strict must be true or false.")
        schema = checked_schema(spec.get("schema", {}), "json_schema.schema")
        return ResponseFormat("json_schema", schema, name)


class ToolsField(fields.Field):
    """``[{"type": "function", "function": {"name", "description"?, "parameters"?, "strict"?}}]``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[ToolFunction, ...]:
        if not isinstance(value, list):
            raise ValidationError("Must be a list of tools.")
        if len(value) > MAX_TOOLS:
            raise ValidationError(f"At most {MAX_TOOLS} tools.")
        tools: list[ToolFunction] = []
        for index, tool in enumerate(value):
            what = f"tools[{index}]"
            tool = _object(tool, what)
            _only(tool, {"type", "function"}, what)
            if tool.get("type") != "function":
                raise ValidationError(f'{what}.type must be "function".')
            function = _object(tool.get("function"), f"{what}.function")
            _only(function, {"name", "description", "parameters", "strict"}, f"{what}.function")
            name = function.get("name")
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValidationError(f"{what}.function.name must be 1-64 letters, digits, underscores or dashes.")
            if any(t.name == name for t in tools):
                raise ValidationError(f"{what}.function.name: {name!r} is listed twice.")
            description = function.get("description", "")
            if not isinstance(description, str):
                raise ValidationError(f"{what}.function.description must be a string.")
            if function.get("strict") not in (None, True, False):
                raise ValidationError(f"{what}.function.strict must be true or false.")
            parameters = function.get("parameters", {"type": "object", "properties": {}})
            tools.append(ToolFunction(name, description,
                                      checked_schema(parameters, f"{what}.function.parameters")))
        return tuple(tools)


class ToolChoiceField(fields.Field):
    """``"none"``, ``"auto"``, ``"required"`` or ``{"type": "function", "function": {"name": ...}}`` → (mode,
    function name)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[str, str]:
        if value in ("none", "auto", "required"):
            return value, ""
        value = _object(value, "tool_choice")
        function = value.get("function")
        if value.get("type") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str) or set(value) - {"type", "function"} \
                or set(function) - {"name"}:
            raise ValidationError('Must be "none", "auto", "required" or {"type": "function", '
                                  '"function": {"name": ...}}.')
        return "function", function["name"]


class ToolCallSchemaField(fields.Field):
    """An assistant message's ``tool_calls``: ``[{"id", "type": "function", "function": {"name", "arguments"}}]``
    (arguments as JSON text, as OpenAI sends them)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            raise ValidationError("Must be a list of tool calls.")
        calls = []
        for index, call in enumerate(value):
            what = f"tool_calls[{index}]"
            call = _object(call, what)
            _only(call, {"id", "type", "function"}, what)
            function = _object(call.get("function"), f"{what}.function")
            _only(function, {"name", "arguments"}, f"{what}.function")
            if call.get("type", "function") != "function" or not isinstance(call.get("id"), str) \
                    or not isinstance(function.get("name"), str) or not isinstance(function.get("arguments"), str):
                raise ValidationError(f'{what} needs an id, type "function", and function.name and '
                                      "function.arguments as strings.")
            calls.append({"id": call["id"], "type": "function",
                          "function": {"name": function["name"], "arguments": function["arguments"]}})
        return calls
