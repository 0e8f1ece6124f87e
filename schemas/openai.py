"""OpenAI wire format: ``/v1/chat/completions`` and ``/v1/completions`` request schemas.

Each OpenAI field is either implemented, accepted as an optional hint and
ignored, or rejected with 422 unless it holds its neutral value (docs/api.md
lists the decision per field). Unknown fields are rejected.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates_schema

from llm_api.generation.structured import StructuredOutput

from .fields import (
    MAX_TOKENS_RANGE,
    MIN_P_RANGE,
    N_RANGE,
    PENALTY_RANGE,
    REPETITION_PENALTY_RANGE,
    SEED_RANGE,
    TEMPERATURE_RANGE,
    TOP_K_RANGE,
    TOP_LOGPROBS_RANGE,
    TOP_P_RANGE,
    LogitBiasField,
    StopField,
    StrictBoolean,
    StrictFloat,
    StrictInteger,
)
from .structured import ResponseFormatField, ToolCallSchemaField, ToolChoiceField, ToolsField

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


class NeutralOnly(fields.Field):
    """A field this server does not implement: only its neutral values (and null) are accepted."""

    def __init__(self, *neutral: Any, **kwargs: Any) -> None:
        super().__init__(load_default=None, allow_none=True, **kwargs)
        self.neutral = neutral

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value not in self.neutral:
            raise ValidationError(f"Not supported by this server (accepted: {', '.join(map(repr, self.neutral))}).")
        return None


class Ignored(fields.Raw):
    """An optional hint the OpenAI spec allows servers to disregard: accepted, not used."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(load_default=None, allow_none=True, **kwargs)


class ContentField(fields.Field):
    """Message content: a string, or a list of ``{"type": "text", "text": ...}`` parts (joined)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list):
            texts = []
            for part in value:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValidationError('Only text content parts ({"type": "text", "text": "..."}) are supported.')
                if set(part) - {"type", "text"}:
                    raise ValidationError(f"Unknown content part fields: {sorted(set(part) - {'type', 'text'})}.")
                texts.append(part["text"])
            return "".join(texts)
        raise ValidationError("Must be a string or a list of text parts.")


class ChatMessageSchema(Schema):
    class Meta:
        unknown = RAISE

    role = fields.String(required=True, validate=validate.OneOf(CHAT_ROLES))
    content = ContentField(load_default=None, allow_none=True)
    name = Ignored()
    tool_calls = ToolCallSchemaField(load_default=None, allow_none=True)  # assistant turns
    tool_call_id = fields.String(load_default=None, allow_none=True)  # tool turns
    refusal = Ignored()

    @validates_schema
    def _content_where_needed(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("tool_calls") is not None and data["role"] != "assistant":
            raise ValidationError("Only assistant messages carry tool_calls.", "tool_calls")
        if data["role"] == "tool" and not data.get("tool_call_id"):
            raise ValidationError("A tool message needs the tool_call_id it answers.", "tool_call_id")
        if data.get("content") is None and not (data["role"] == "assistant" and data.get("tool_calls")):
            raise ValidationError("Missing data for required field.", "content")

    @post_load
    def _plain(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        role = "system" if data["role"] == "developer" else data["role"]
        message: dict[str, Any] = {"role": role, "content": data.get("content") or ""}
        if data.get("tool_calls"):
            message["tool_calls"] = data["tool_calls"]
        if role == "tool":
            message["tool_call_id"] = data["tool_call_id"]
        return message


class StreamOptionsSchema(Schema):
    class Meta:
        unknown = RAISE

    include_usage = StrictBoolean(load_default=False)
    include_obfuscation = Ignored()


class _CommonSchema(Schema):
    """Fields shared by both endpoints."""

    class Meta:
        unknown = RAISE

    model = fields.String(required=True, validate=validate.Length(min=1))
    temperature = StrictFloat(load_default=None, allow_none=True, validate=TEMPERATURE_RANGE)
    top_p = StrictFloat(load_default=None, allow_none=True, validate=TOP_P_RANGE)
    stop = StopField(load_default=(), allow_none=True)
    seed = StrictInteger(load_default=None, allow_none=True, validate=SEED_RANGE)
    n = StrictInteger(load_default=1, allow_none=True, validate=N_RANGE)
    stream = StrictBoolean(load_default=False, allow_none=True)
    stream_options = fields.Nested(StreamOptionsSchema, load_default=None, allow_none=True)
    user = Ignored()
    frequency_penalty = StrictFloat(load_default=None, allow_none=True, validate=PENALTY_RANGE)
    presence_penalty = StrictFloat(load_default=None, allow_none=True, validate=PENALTY_RANGE)
    logit_bias = LogitBiasField(load_default=None, allow_none=True)
    # Extensions, as in vLLM (and llama.cpp's server): see docs/api.md.
    top_k = StrictInteger(load_default=None, allow_none=True, validate=TOP_K_RANGE)
    min_p = StrictFloat(load_default=None, allow_none=True, validate=MIN_P_RANGE)
    repetition_penalty = StrictFloat(load_default=None, allow_none=True, validate=REPETITION_PENALTY_RANGE)
    max_tokens = StrictInteger(load_default=None, allow_none=True, validate=MAX_TOKENS_RANGE)
    # Extension (as in vLLM and llama.cpp's server): generate exactly max_tokens, past end-of-turn tokens.
    ignore_eos = StrictBoolean(load_default=False, allow_none=True)

    @post_load
    def _defaults_for_nulls(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Some clients send null for every field they leave unset: null means the default (for temperature and
        top_p, the model's own recommended value)."""
        for name, default in (("stop", ()), ("n", 1), ("stream", False), ("ignore_eos", False)):
            if data.get(name) is None:
                data[name] = default
        options = data.pop("stream_options") or {}
        data["include_usage"] = bool(options.get("include_usage"))
        if data.get("top_k") == -1:
            data["top_k"] = 0  # vLLM's spelling of "no cut"
        if data.get("logit_bias") is not None and not data["logit_bias"]:
            data["logit_bias"] = None
        kept_when_none = ("max_tokens", "seed", "temperature", "top_p")  # None: decided by the service
        for name in [k for k, v in data.items() if v is None and k not in kept_when_none]:
            del data[name]
        self._adjust(data)
        return data

    def _adjust(self, data: dict[str, Any]) -> None:
        """Endpoint-specific finishing touches."""


class ChatCompletionRequestSchema(_CommonSchema):
    messages = fields.List(fields.Nested(ChatMessageSchema), required=True, validate=validate.Length(min=1))
    max_completion_tokens = StrictInteger(load_default=None, allow_none=True, validate=MAX_TOKENS_RANGE)
    logprobs = StrictBoolean(load_default=None, allow_none=True)
    top_logprobs = StrictInteger(load_default=None, allow_none=True, validate=TOP_LOGPROBS_RANGE)
    response_format = ResponseFormatField(load_default=None, allow_none=True)
    tools = ToolsField(load_default=None, allow_none=True)
    tool_choice = ToolChoiceField(load_default=None, allow_none=True)
    functions = NeutralOnly([])
    function_call = NeutralOnly("none")
    parallel_tool_calls = Ignored()
    modalities = NeutralOnly(["text"])
    store = Ignored()
    metadata = Ignored()
    service_tier = Ignored()
    reasoning_effort = NeutralOnly()
    audio = NeutralOnly()
    prediction = NeutralOnly()
    web_search_options = NeutralOnly()

    @validates_schema
    def _tool_choice_names_a_tool(self, data: dict[str, Any], **kwargs: Any) -> None:
        mode, name = data.get("tool_choice") or ("auto", "")
        tools = data.get("tools") or ()
        if mode in ("required", "function") and not tools:
            raise ValidationError(f"tool_choice {mode!r} needs tools.", "tool_choice")
        if mode == "function" and name not in {t.name for t in tools}:
            raise ValidationError(f"tool_choice names {name!r}, which is not among the tools.", "tool_choice")

    @validates_schema
    def _top_logprobs_need_logprobs(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("top_logprobs") and not data.get("logprobs"):
            raise ValidationError("top_logprobs needs logprobs: true.", "top_logprobs")

    def _adjust(self, data: dict[str, Any]) -> None:
        """``max_completion_tokens`` (the current name) wins over the deprecated ``max_tokens``; the answer's
        shape (response_format, tools, tool_choice) becomes one ``structured`` value."""
        newer = data.pop("max_completion_tokens", None)
        if newer is not None:
            data["max_tokens"] = newer
        if not data.get("logprobs"):
            data.pop("top_logprobs", None)
        data["structured"] = structured_output(data.pop("response_format", None), data.pop("tools", None),
                                               data.pop("tool_choice", None))


def structured_output(response_format: Any, tools: Any, tool_choice: Any) -> StructuredOutput | None:
    """None when the answer is free text with no tools."""
    mode, name = tool_choice or ("auto", "")
    if response_format is None and not tools:
        return None
    return StructuredOutput(response_format, tuple(tools or ()), mode, name)  # type: ignore[arg-type]


class PromptField(fields.Field):
    """A prompt string, or a list holding exactly one string."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, str):
            raise ValidationError("Must be a string (or a list of one string); token-id prompts are not supported.")
        if not value:
            raise ValidationError("Must not be empty.")
        return value


class CompletionRequestSchema(_CommonSchema):
    prompt = PromptField(required=True)
    max_tokens = StrictInteger(load_default=16, allow_none=True, validate=MAX_TOKENS_RANGE)
    echo = StrictBoolean(load_default=False, allow_none=True)
    suffix = NeutralOnly()
    # This endpoint's logprobs is a number: how many alternatives to list at each position (0: only the token's).
    logprobs = StrictInteger(load_default=None, allow_none=True, validate=TOP_LOGPROBS_RANGE)
    best_of = NeutralOnly(1)

    @validates_schema
    def _no_prompt_logprobs(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("echo") and data.get("logprobs") is not None:
            raise ValidationError("logprobs with echo (the prompt's log-probabilities) is not supported.", "logprobs")

    def _adjust(self, data: dict[str, Any]) -> None:
        alternatives = data.pop("logprobs", None)
        if alternatives is not None:
            data["logprobs"], data["top_logprobs"] = True, alternatives
        if data.get("max_tokens") is None:
            data["max_tokens"] = 16  # the OpenAI default for this endpoint
        data["echo"] = bool(data.get("echo"))
