"""What a request asks of the answer's shape: a JSON response format, and the tools the model may call.

Plain data shared by every engine. An engine that generates from token ids (the local model) turns it into
a grammar that constrains decoding (``llm_api.local_model.grammar``); one that cannot honour a part of it
refuses the request with :class:`UnsupportedFieldError` naming the request field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import EngineError

ResponseKind = Literal["json_object", "json_schema"]


@dataclass(frozen=True)
class ResponseFormat:
    """``response_format``: any JSON object (``json_object``), or JSON valid against ``schema``."""

    kind: ResponseKind
    schema: str | None = None  # the JSON Schema as JSON text (json_schema only)
    name: str = ""

    def schema_dict(self) -> dict[str, Any]:
        return dict(json.loads(self.schema)) if self.schema is not None else {}

    def openai_dict(self) -> dict[str, Any]:
        """As the request sent it (for an upstream OpenAI-compatible server)."""
        if self.kind == "json_object":
            return {"type": "json_object"}
        return {"type": "json_schema", "json_schema": {"name": self.name or "answer", "schema": self.schema_dict(),
                                                        "strict": True}}


@dataclass(frozen=True)
class ToolFunction:
    """One function of ``tools``: its name, description and parameters (a JSON Schema as JSON text)."""

    name: str
    description: str = ""
    parameters: str = '{"type": "object", "properties": {}}'

    def parameters_dict(self) -> dict[str, Any]:
        return dict(json.loads(self.parameters))

    def openai_dict(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry, as chat templates expect it."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters_dict()}}


ToolChoiceMode = Literal["none", "auto", "required", "function"]


@dataclass(frozen=True)
class StructuredOutput:
    """The answer's shape. ``tool_choice`` ``required`` or ``function`` (with ``function_name``) forces a call;
    ``auto`` lets the model choose; ``none`` (or no tools) forbids calls."""

    response_format: ResponseFormat | None = None
    tools: tuple[ToolFunction, ...] = ()
    tool_choice: ToolChoiceMode = "auto"
    function_name: str = ""

    @property
    def forces_call(self) -> bool:
        return bool(self.tools) and self.tool_choice in ("required", "function")

    @property
    def may_call(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    def callable_tools(self) -> tuple[ToolFunction, ...]:
        """The tools a forced call may use: the named one, or all."""
        if self.tool_choice == "function":
            return tuple(t for t in self.tools if t.name == self.function_name)
        return self.tools


class UnsupportedFieldError(EngineError):
    """The engine cannot honour this request field (an unsupported schema keyword, a grammar that cannot be
    compiled, a field this engine does not implement): a 4xx naming ``field``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def tool_arguments_text(arguments: Mapping[str, Any] | str) -> str:
    """Arguments as OpenAI sends them: JSON text."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
