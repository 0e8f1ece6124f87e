"""The lesson's chat API: ``POST /chat/new/message`` and ``GET /chat/get/messages``."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates_schema

from llm_api.generation.structured import StructuredOutput
from llm_api.time_format import format_time

from .fields import (
    MAX_STOP_SEQUENCES,
    MAX_TOKENS_RANGE,
    MIN_P_RANGE,
    PENALTY_RANGE,
    REPETITION_PENALTY_RANGE,
    SEED_RANGE,
    TEMPERATURE_RANGE,
    TOP_K_RANGE,
    TOP_P_RANGE,
    StopField,
    StrictBoolean,
    StrictFloat,
    StrictInteger,
)
from .structured import ResponseFormatField

ROLES = ("system", "user", "assistant")
STREAM_MODES = ("delta", "cumulative")


class MessageSchema(Schema):
    class Meta:
        unknown = RAISE

    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    content = fields.String(required=True)


def conversation_id_field(**kwargs: Any) -> fields.String:
    return fields.String(validate=validate.Regexp(r"^[0-9a-f]{32}$", error="Not a conversation id."), **kwargs)


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be empty.")


class SamplingFieldsMixin(Schema):
    """Generation fields shared by the JSON body and the query-string forms."""

    max_tokens = StrictInteger(load_default=None, allow_none=True, validate=MAX_TOKENS_RANGE)
    temperature = StrictFloat(load_default=None, validate=TEMPERATURE_RANGE)
    top_p = StrictFloat(load_default=None, validate=TOP_P_RANGE)
    seed = StrictInteger(load_default=None, allow_none=True, validate=SEED_RANGE)
    stop = StopField(load_default=())
    # The common extensions (as on /v1; docs/api.md): neutral when left out.
    top_k = StrictInteger(load_default=0, validate=TOP_K_RANGE)
    min_p = StrictFloat(load_default=0.0, validate=MIN_P_RANGE)
    repetition_penalty = StrictFloat(load_default=1.0, validate=REPETITION_PENALTY_RANGE)
    presence_penalty = StrictFloat(load_default=0.0, validate=PENALTY_RANGE)
    frequency_penalty = StrictFloat(load_default=0.0, validate=PENALTY_RANGE)

    @post_load
    def _top_k_off(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data["top_k"] = max(data.get("top_k", 0), 0)  # -1, as vLLM spells it, means no cut like 0
        return data


class ChatMessageRequestSchema(SamplingFieldsMixin):
    class Meta:
        unknown = RAISE

    prompt = fields.String(validate=_not_blank)
    history = fields.List(fields.Nested(MessageSchema), load_default=list)
    # The lesson's Java caller posts an OpenAI-shaped body instead: {"model", "stream", "messages"}.
    messages = fields.List(fields.Nested(MessageSchema), validate=validate.Length(min=1))
    model = fields.String(load_default=None, validate=validate.Length(min=1))  # optional: GET /v1/models lists them
    stream = StrictBoolean(load_default=False)
    stream_mode = fields.String(load_default="delta", validate=validate.OneOf(STREAM_MODES))
    conversation_id = conversation_id_field(load_default=None, allow_none=True)
    # As in the OpenAI API: the answer is JSON (an object, or valid against a schema), by constrained decoding.
    response_format = ResponseFormatField(load_default=None, allow_none=True)

    @validates_schema
    def _prompt_or_messages(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("conversation_id") and (data.get("history") or len(data.get("messages", ())) > 1):
            raise ValidationError("A stored conversation supplies the history: send conversation_id with "
                                  "the new prompt only.", "conversation_id")
        if "messages" in data:
            if "prompt" in data or data.get("history"):
                raise ValidationError("Send either prompt (with history) or messages, not both.", "messages")
            last = data["messages"][-1]
            if last["role"] != "user" or not last["content"].strip():
                raise ValidationError("The last message must be a non-empty user message.", "messages")
        elif "prompt" not in data:
            raise ValidationError("Missing data for required field.", "prompt")

    @post_load
    def _prompt_and_history(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        messages = data.pop("messages", None)
        if messages is not None:
            data["prompt"], data["history"] = messages[-1]["content"], messages[:-1]
        data["history"] = [{"role": m["role"], "content": m["content"]} for m in data["history"]]
        response_format = data.pop("response_format", None)
        data["structured"] = StructuredOutput(response_format) if response_format is not None else None
        return data


class MessagesQuerySchema(Schema):
    class Meta:
        unknown = RAISE

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    before = fields.String(load_default=None, validate=validate.Length(min=1, max=64))


class UsageSchema(Schema):
    prompt_tokens = fields.Integer()
    completion_tokens = fields.Integer()
    total_tokens = fields.Integer()


class ChatResponseSchema(Schema):
    response = fields.String()
    history = fields.List(fields.Nested(MessageSchema))
    status = fields.Integer()
    time = fields.String()
    message_id = fields.String()
    finish_reason = fields.String()
    usage = fields.Nested(UsageSchema)
    conversation_id = fields.String()
    dropped_turns = fields.Integer()
    engine = fields.String()  # the named engine that answered (docs/degradation.md)
    degraded = fields.Boolean()


class ExchangeSchema(Schema):
    """A stored user turn and its answer (:class:`llm_api.storage.Exchange`), flattened."""

    message_id = fields.String(attribute="answer.id")
    time = fields.Function(lambda exchange: format_time(exchange.answer.created_at))
    prompt = fields.String(attribute="prompt.content")
    response = fields.String(attribute="answer.content")
    # null for an answer the caller sent in `history` (it was not generated here)
    finish_reason = fields.String(attribute="answer.finish_reason", allow_none=True)
    usage = fields.Nested(UsageSchema, attribute="answer.usage", allow_none=True)
    model = fields.String(attribute="answer.model", allow_none=True)
    conversation_id = fields.String(attribute="answer.conversation_id")
    time_to_first_token = fields.Float(attribute="answer.time_to_first_token", allow_none=True)
    total_time = fields.Float(attribute="answer.total_time", allow_none=True)


class ChatStreamQuerySchema(Schema):
    """``GET /chat/stream``: the browser's EventSource can only send a query string."""

    class Meta:
        unknown = RAISE

    prompt = fields.String(required=True, validate=_not_blank)
    conversation_id = conversation_id_field(load_default=None)
    max_tokens = fields.Integer(load_default=None, validate=MAX_TOKENS_RANGE)
    temperature = fields.Float(load_default=None, allow_nan=False, validate=TEMPERATURE_RANGE)
    top_p = fields.Float(load_default=None, allow_nan=False, validate=TOP_P_RANGE)
    seed = fields.Integer(load_default=None, validate=SEED_RANGE)
    stop = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list,
                       validate=validate.Length(max=MAX_STOP_SEQUENCES))
    top_k = fields.Integer(load_default=0, validate=TOP_K_RANGE)
    min_p = fields.Float(load_default=0.0, allow_nan=False, validate=MIN_P_RANGE)
    repetition_penalty = fields.Float(load_default=1.0, allow_nan=False, validate=REPETITION_PENALTY_RANGE)
    presence_penalty = fields.Float(load_default=0.0, allow_nan=False, validate=PENALTY_RANGE)
    frequency_penalty = fields.Float(load_default=0.0, allow_nan=False, validate=PENALTY_RANGE)
    stream_mode = fields.String(load_default="delta", validate=validate.OneOf(STREAM_MODES))
    model = fields.String(load_default=None, validate=validate.Length(min=1))  # optional: GET /v1/models lists them

    @post_load
    def _tuple_stop(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data["stop"] = tuple(data["stop"])
        data["top_k"] = max(data["top_k"], 0)
        return data
