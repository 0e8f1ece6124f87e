"""Response shapes that the views build as plain dicts, described as marshmallow schemas for the
OpenAPI description (blueprints/openapi.py). The views do not dump through them; tests check that
real answers conform (schemathesis' response schema conformance)."""

from __future__ import annotations

from marshmallow import Schema, fields

from .chat import ExchangeSchema, UsageSchema
from .conversations import ConversationSchema, StoredMessageSchema


class ErrorObjectSchema(Schema):
    code = fields.String(required=True, metadata={"description": "Stable, for programs (docs/api.md#errors)."})
    message = fields.String(required=True, metadata={"description": "For people."})
    details = fields.Dict(required=True, metadata={"description": "Always an object, often empty; `fields` "
                                                   "names the offending request fields."})


class ErrorSchema(Schema):
    """The service's one error envelope (every route outside /v1)."""

    error = fields.Nested(ErrorObjectSchema, required=True)


class OpenAIErrorObjectSchema(Schema):
    message = fields.String(required=True)
    type = fields.String(required=True, metadata={"enum": ["invalid_request_error", "rate_limit_error",
                                                            "server_error"]})
    param = fields.String(required=True, allow_none=True)
    code = fields.String(required=True)


class OpenAIErrorSchema(Schema):
    """OpenAI's error shape, on /v1."""

    error = fields.Nested(OpenAIErrorObjectSchema, required=True)


# ---- the chat API's SSE events (data of each event) ---------------------------------------------------

class ChatTextEventSchema(Schema):
    """An unnamed event: a piece of the answer (``stream_mode=delta``) or the text so far (``cumulative``)."""

    text = fields.String(required=True)
    message_id = fields.String(required=True)


class ChatFinishEventSchema(Schema):
    """``event: finish``: the last event of a completed answer."""

    message_id = fields.String(required=True)
    finish_reason = fields.String(required=True)
    usage = fields.Nested(UsageSchema)
    conversation_id = fields.String()
    dropped_turns = fields.Integer()
    engine = fields.String()
    degraded = fields.Boolean()


# ---- small JSON answers ---------------------------------------------------------------------------------

class ExchangeListSchema(Schema):
    messages = fields.List(fields.Nested(ExchangeSchema), required=True)


class ConversationPageSchema(Schema):
    conversations = fields.List(fields.Nested(ConversationSchema), required=True)
    next_cursor = fields.String(required=True, allow_none=True, metadata={"description": "pass as ?cursor="})


class OwnedConversationSchema(ConversationSchema):
    owner = fields.String()


class AdminConversationPageSchema(Schema):
    conversations = fields.List(fields.Nested(OwnedConversationSchema), required=True)
    next_cursor = fields.String(required=True, allow_none=True, metadata={"description": "pass as ?cursor="})


class ConversationWithMessagesSchema(ConversationSchema):
    messages = fields.List(fields.Nested(StoredMessageSchema), required=True)
    next_cursor = fields.String(allow_none=True, metadata={"description": "pass as ?cursor="})


class StreamTokenSchema(Schema):
    token = fields.String(required=True)
    expires_in = fields.Integer(required=True)
    token_type = fields.String(required=True, metadata={"enum": ["stream"]})


class HealthSchema(Schema):
    status = fields.String(required=True)


class ReadinessSchema(Schema):
    status = fields.String(required=True)
    model = fields.String()
    context_length = fields.Integer()
    batched = fields.Boolean()
    queued = fields.Integer()
    stats = fields.Dict()
    chat_models = fields.Dict(metadata={"description": "Each chat model of LLM_API_CHAT_MODELS by id: model, "
                                                       "context_length, queued, stats."})
    embedding_models = fields.Dict(metadata={"description": "Each embedding model: ready, queued, stats."})


# ---- the OpenAI wire format ------------------------------------------------------------------------------

class _CompletionObjectSchema(Schema):
    """What every completion object and streamed chunk carries besides its ``object`` name and choices."""

    id = fields.String(required=True)
    created = fields.Integer(required=True)
    model = fields.String(required=True)
    system_fingerprint = fields.String(allow_none=True)
    usage = fields.Nested(UsageSchema, allow_none=True)


class ToolCallFunctionSchema(Schema):
    name = fields.String()
    arguments = fields.String(metadata={"description": "JSON text (in a stream: the next fragment)"})


class ToolCallSchema(Schema):
    id = fields.String()
    type = fields.String(metadata={"enum": ["function"]})
    function = fields.Nested(ToolCallFunctionSchema, required=True)


class ChunkToolCallSchema(ToolCallSchema):
    """A streamed piece of a call: its first chunk has id, type and name; later ones argument fragments."""

    index = fields.Integer(required=True)


class AssistantMessageSchema(Schema):
    role = fields.String(required=True)
    content = fields.String(required=True, allow_none=True)
    refusal = fields.String(allow_none=True)
    tool_calls = fields.List(fields.Nested(ToolCallSchema))


class _ChoiceSchema(Schema):
    """What every choice carries besides its message, delta or text (and its log-probabilities)."""

    index = fields.Integer(required=True)
    finish_reason = fields.String(required=True, allow_none=True)


class TopLogprobSchema(Schema):
    token = fields.String(required=True)
    logprob = fields.Float(required=True)
    bytes = fields.List(fields.Integer(), required=True, allow_none=True)


class TokenLogprobSchema(TopLogprobSchema):
    """One position of a chat answer: the chosen token and the most likely alternatives."""

    top_logprobs = fields.List(fields.Nested(TopLogprobSchema), required=True)


class ChatLogprobsSchema(Schema):
    """A chat choice's ``logprobs`` (null unless the request set ``logprobs: true``)."""

    content = fields.List(fields.Nested(TokenLogprobSchema), required=True, allow_none=True)
    refusal = fields.List(fields.Nested(TokenLogprobSchema), allow_none=True)


class TextLogprobsSchema(Schema):
    """A text choice's ``logprobs`` in the legacy shape: parallel lists, one entry per token."""

    tokens = fields.List(fields.String(), required=True)
    token_logprobs = fields.List(fields.Float(), required=True)
    top_logprobs = fields.List(fields.Dict(keys=fields.String(), values=fields.Float()), required=True)
    text_offset = fields.List(fields.Integer(), required=True)


class ChatChoiceSchema(_ChoiceSchema):
    message = fields.Nested(AssistantMessageSchema, required=True)
    logprobs = fields.Nested(ChatLogprobsSchema, required=True, allow_none=True)


class ChatCompletionSchema(_CompletionObjectSchema):
    object = fields.String(required=True, metadata={"enum": ["chat.completion"]})
    choices = fields.List(fields.Nested(ChatChoiceSchema), required=True)


class ChunkDeltaSchema(Schema):
    role = fields.String()
    content = fields.String(allow_none=True)
    tool_calls = fields.List(fields.Nested(ChunkToolCallSchema))


class ChunkChoiceSchema(_ChoiceSchema):
    delta = fields.Nested(ChunkDeltaSchema, required=True)
    logprobs = fields.Nested(ChatLogprobsSchema, allow_none=True)


class ChatCompletionChunkSchema(_CompletionObjectSchema):
    """One ``data:`` event of a streamed chat completion; the stream ends with ``data: [DONE]``."""

    object = fields.String(required=True, metadata={"enum": ["chat.completion.chunk"]})
    choices = fields.List(fields.Nested(ChunkChoiceSchema), required=True)


class TextChoiceSchema(_ChoiceSchema):
    text = fields.String(required=True)
    logprobs = fields.Nested(TextLogprobsSchema, required=True, allow_none=True)


class TextCompletionSchema(_CompletionObjectSchema):
    """A text completion, and also one ``data:`` event of a streamed one (then ``data: [DONE]``)."""

    object = fields.String(required=True, metadata={"enum": ["text_completion"]})
    choices = fields.List(fields.Nested(TextChoiceSchema), required=True)


class ModelSchema(Schema):
    id = fields.String(required=True)
    object = fields.String(required=True)
    created = fields.Integer(required=True)
    owned_by = fields.String(required=True)
    kind = fields.String(metadata={"enum": ["chat", "embedding"]})
    context_length = fields.Integer(metadata={"description": "Tokens per request (chat), or per input (embedding)."})
    max_model_len = fields.Integer()
    dimensions = fields.Integer(metadata={"description": "An embedding model's vector length."})


class ModelListSchema(Schema):
    object = fields.String(required=True)
    data = fields.List(fields.Nested(ModelSchema), required=True)


class EmbeddingSchema(Schema):
    object = fields.String(required=True)
    index = fields.Integer(required=True)
    embedding = fields.Raw(required=True, metadata={
        "oneOf": [{"type": "array", "items": {"type": "number"}},
                  {"type": "string", "description": "base64 of little-endian float32 values"}]})


class EmbeddingUsageSchema(Schema):
    prompt_tokens = fields.Integer(required=True)
    total_tokens = fields.Integer(required=True)


class EmbeddingListSchema(Schema):
    object = fields.String(required=True)
    data = fields.List(fields.Nested(EmbeddingSchema), required=True)
    model = fields.String(required=True)
    usage = fields.Nested(EmbeddingUsageSchema, required=True)
