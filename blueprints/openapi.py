"""``GET /openapi.json``: the API's OpenAPI 3.1 description, generated from the marshmallow schemas.

Every route, its statuses and errors, its key scope, and the SSE answers (``text/event-stream``, with
the schema of each event's data under ``x-sse-events``). Tests check it against the spec and check real
answers against it (schemathesis).
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app, jsonify
from marshmallow import fields

from blueprints import route
from blueprints.page import DOCS_ASSETS, PAGE_ASSETS
from llm_api.http_body import MAX_JSON_DEPTH
from schemas import chat, conversations, embeddings, openai, responses, structured
from schemas.fields import LOGIT_BIAS_LIMIT, MAX_LOGIT_BIAS_ENTRIES, LogitBiasField, StopField

bp = Blueprint("openapi", __name__)

STOP = {"oneOf": [{"type": "string", "minLength": 1},
                  {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4}]}
CONTENT = {"oneOf": [{"type": "string"},
                     {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                 "required": ["type", "text"],
                                                 "properties": {"type": {"const": "text"},
                                                                "text": {"type": "string"}}}}]}

LOGIT_BIAS = {"type": ["object", "null"], "maxProperties": MAX_LOGIT_BIAS_ENTRIES,
              "propertyNames": {"pattern": "^[0-9]{1,9}$"},
              "additionalProperties": {"type": "number", "minimum": -LOGIT_BIAS_LIMIT, "maximum": LOGIT_BIAS_LIMIT},
              "description": "Token id (a decimal string) → bias added to its logit."}

_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
EMBEDDING_INPUT = {"oneOf": [
    {"type": "string", "minLength": 1},
    {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": embeddings.MAX_INPUTS},
    _TOKENS,
    {"type": "array", "items": _TOKENS, "minItems": 1, "maxItems": embeddings.MAX_INPUTS},
]}
_JSON_SCHEMA = {"type": "object", "description": "A JSON Schema (draft 2020-12); docs/api.md lists the keywords "
                                            "constrained decoding enforces"}
RESPONSE_FORMAT = {"oneOf": [
    {"type": "object", "required": ["type"], "additionalProperties": False,
     "properties": {"type": {"enum": ["text", "json_object"]}}},
    {"type": "object", "required": ["type", "json_schema"], "additionalProperties": False,
     "properties": {"type": {"const": "json_schema"},
                    "json_schema": {"type": "object", "required": ["name"], "additionalProperties": False,
                                    "properties": {"name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
                                                   "description": {"type": "string"}, "schema": _JSON_SCHEMA,
                                                   "strict": {"type": ["boolean", "null"]}}}}},
    {"type": "null"},
]}
TOOLS = {"type": ["array", "null"], "maxItems": 128, "items": {
    "type": "object", "required": ["type", "function"], "additionalProperties": False,
    "properties": {"type": {"const": "function"},
                   "function": {"type": "object", "required": ["name"], "additionalProperties": False,
                                "properties": {"name": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,64}$"},
                                               "description": {"type": "string"}, "parameters": _JSON_SCHEMA,
                                               "strict": {"type": ["boolean", "null"]}}}}}}
TOOL_CHOICE = {"oneOf": [
    {"enum": ["none", "auto", "required"]},
    {"type": "object", "required": ["type", "function"], "additionalProperties": False,
     "properties": {"type": {"const": "function"},
                    "function": {"type": "object", "required": ["name"], "additionalProperties": False,
                                 "properties": {"name": {"type": "string"}}}}},
    {"type": "null"},
]}
TOOL_CALLS = {"type": ["array", "null"], "items": {
    "type": "object", "required": ["id", "function"], "additionalProperties": False,
    "properties": {"id": {"type": "string"}, "type": {"const": "function"},
                   "function": {"type": "object", "required": ["name", "arguments"], "additionalProperties": False,
                                "properties": {"name": {"type": "string"}, "arguments": {"type": "string"}}}}}}

ERROR_TEXT = {
    400: "The body is not JSON, is nested too deeply, holds text that is not Unicode, or the prompt and "
         "max_tokens do not fit the context.",
    401: "A key is needed (once one exists) and is missing or invalid.",
    403: "The key lacks the route's scope.",
    404: "Not found: a path, a conversation, or the model named in `model` (`model_not_found`).",
    405: "Wrong method for this path.",
    413: "The body is larger than LLM_API_MAX_BODY_BYTES.",
    422: "A field is invalid or unknown; details.fields names it.",
    429: "A rate limit of the key is reached.",
    500: "An unexpected error.",
    503: "Not ready, at capacity, overloaded, shutting down or storage unavailable; retry after Retry-After.",
}
GENERATION_ERRORS = (400, 401, 403, 404, 405, 413, 422, 429, 500, 503)
READ_ERRORS = (401, 403, 405, 422, 500, 503)
RENAME_ERRORS = (400, 401, 403, 405, 413, 422, 500, 503)


def _custom_fields(converter: Any, field: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """The schemas' own field types, as JSON Schema."""
    if isinstance(field, StopField):
        return STOP
    if isinstance(field, embeddings.EmbeddingInputField):
        return EMBEDDING_INPUT
    if isinstance(field, openai.ContentField):
        return {"oneOf": [*CONTENT["oneOf"], {"type": "null"}]} if field.allow_none else CONTENT
    if isinstance(field, structured.ResponseFormatField):
        return RESPONSE_FORMAT
    if isinstance(field, structured.ToolsField):
        return TOOLS
    if isinstance(field, structured.ToolChoiceField):
        return TOOL_CHOICE
    if isinstance(field, structured.ToolCallSchemaField):
        return TOOL_CALLS
    if isinstance(field, LogitBiasField):
        return LOGIT_BIAS
    return {}


def _errors(statuses: tuple[int, ...], schema: str) -> dict[int, Any]:
    return {status: {"description": ERROR_TEXT[status],
                     "content": {"application/json": {"schema": schema}}} for status in statuses}


def _json(schema: Any, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _event(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """One SSE event as schemathesis and OpenAPI 3.1 read it: its name, id and data (JSON, with its schema)."""
    return {"type": "object", "required": ["data"], "properties": {
        "event": {"const": name}, "id": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _sse(description: str, events: dict[str, str]) -> dict[str, Any]:
    """``text/event-stream``: ``schema`` describes each event (OpenAPI 3.1 has no itemSchema yet)."""
    listed = "; ".join(f"`{name}`: data is {ref}" for name, ref in events.items())
    return {"schema": {"description": f"{description} Events: {listed}.",
                       "oneOf": [_event(name, _ref(ref)) for name, ref in events.items()]},
            "x-sse-events": {name: _ref(ref) for name, ref in events.items()}}


def _openai_sse(chunk: str) -> dict[str, Any]:
    """OpenAI's streams: unnamed ``data:`` events, each a chunk (or an error after the stream began),
    and ``data: [DONE]`` last."""
    return {"schema": {"description": f"Server-Sent Events, `data:` only: each a {chunk} (or an OpenAIError "
                                      "after the stream began), then `data: [DONE]`.",
                       "oneOf": [_event("message", {"anyOf": [_ref(chunk), _ref("OpenAIError")]}),
                                 {"type": "object", "required": ["data"],
                                  "properties": {"event": {"const": "message"}, "data": {"const": "[DONE]"}}}]},
            "x-sse-events": {"message": _ref(chunk), "error": _ref("OpenAIError")}}


CHAT_EVENTS = {"message": "ChatTextEvent", "finish": "ChatFinishEvent", "error": "Error"}
SSE_NOTE = ("Server-Sent Events. Each event has an `id: <message_id>:<seq>`; `: ping` comments keep the "
            "connection open; an error after the stream began comes as `event: error`.")


def _security(scope: str, stream_token: bool = False) -> list[dict[str, list[str]]]:
    schemes = [{"bearerAuth": [scope]}]
    if stream_token:
        schemes.append({"streamToken": [scope]})
    return schemes


def _path_param(name: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {"in": "path", "name": name, "required": True, "schema": schema}


def build_spec(version: str = "1.0.0") -> dict[str, Any]:
    """The whole description, as a JSON-able dict."""
    plugin = MarshmallowPlugin()
    spec = APISpec(title="llm_api", version=version, openapi_version="3.1.0", plugins=[plugin], info={
        "description": "A local chat model over HTTP and SSE. See docs/api.md. Bodies: at most "
                       f"LLM_API_MAX_BODY_BYTES, nested at most {MAX_JSON_DEPTH} levels, Unicode text only; "
                       "duplicate keys: the last one wins."})
    assert plugin.converter is not None
    plugin.converter.add_attribute_function(_custom_fields)
    spec.components.security_scheme("bearerAuth", {
        "type": "http", "scheme": "bearer",
        "description": "An API key `llmk_<id>_<secret>`. Needed once the first key exists; the scopes listed "
                       "on each operation are the key scope it needs (chat, admin or metrics)."})
    spec.components.security_scheme("streamToken", {
        "type": "apiKey", "in": "query", "name": "token",
        "description": "A short-lived token from POST /auth/stream-token (GET /chat/stream, DELETE /chat/stream)."})
    for name, schema in (("Error", responses.ErrorSchema), ("OpenAIError", responses.OpenAIErrorSchema),
                         ("ChatTextEvent", responses.ChatTextEventSchema),
                         ("ChatFinishEvent", responses.ChatFinishEventSchema),
                         ("ChatCompletionChunk", responses.ChatCompletionChunkSchema),
                         ("TextCompletion", responses.TextCompletionSchema)):
        spec.components.schema(name, schema=schema)
    error, openai_error = "Error", "OpenAIError"
    conversation_id = _path_param("conversation_id")

    spec.path("/chat/new/message", operations={"post": {
        "tags": ["chat"], "summary": "Generate an answer, as JSON or as an SSE stream (`stream: true`)",
        "security": _security("chat"),
        "requestBody": {"required": True, "content": {"application/json": {"schema": chat.ChatMessageRequestSchema}}},
        "responses": {200: {"description": "The answer (JSON), or its event stream when `stream` is true.",
                            "content": {"application/json": {"schema": chat.ChatResponseSchema},
                                        "text/event-stream": _sse(SSE_NOTE, CHAT_EVENTS)}},
                      404: _json(error, "conversation_id is not stored for this key."),
                      **_errors(GENERATION_ERRORS, error)}}})
    spec.path("/chat/stream", operations={"get": {
        "tags": ["chat"], "summary": "The answer's event stream for a browser's EventSource",
        "security": _security("chat", stream_token=True),
        "parameters": [{"in": "query", "schema": chat.ChatStreamQuerySchema},
                       {"in": "header", "name": "Last-Event-ID", "required": False, "schema": {"type": "string"},
                        "description": "A reconnect: the events after this id, never a second generation."}],
        "responses": {200: {"description": "The event stream (it starts with `retry:`).",
                            "content": {"text/event-stream": _sse(SSE_NOTE, CHAT_EVENTS)}},
                      204: {"description": "A reconnect after the last event: nothing more."},
                      404: _json(error, "conversation_id is not stored for this key."),
                      **_errors(GENERATION_ERRORS, error)}}})
    spec.path("/chat/stream/{message_id}", operations={"delete": {
        "tags": ["chat"], "summary": "Stop an answer streaming from this worker",
        "security": _security("chat", stream_token=True), "parameters": [_path_param("message_id")],
        "responses": {204: {"description": "Stopped; it ends with finish_reason cancelled."},
                      404: _json(error, "No such answer streaming from this worker."),
                      **_errors(READ_ERRORS, error)}}})
    spec.path("/chat/get/messages", operations={"get": {
        "tags": ["chat"], "summary": "The stored exchanges", "security": _security("chat"),
        "parameters": [{"in": "query", "schema": chat.MessagesQuerySchema}],
        "responses": {200: _json(responses.ExchangeListSchema), **_errors(READ_ERRORS, error)}}})
    for prefix in ("", "/chat"):
        spec.path(f"{prefix}/conversations", operations={"get": {
            "tags": ["conversations"], "summary": "The key's conversations, newest first",
            "security": _security("chat"),
            "parameters": [{"in": "query", "schema": conversations.ConversationListQuerySchema}],
            "responses": {200: _json(responses.ConversationPageSchema), **_errors(READ_ERRORS, error)}}})
        spec.path(f"{prefix}/conversations/{{conversation_id}}", operations={
            "get": {"tags": ["conversations"], "summary": "One conversation and its messages",
                    "security": _security("chat"),
                    "parameters": [conversation_id,
                                   {"in": "query", "schema": conversations.ConversationMessagesQuerySchema}],
                    "responses": {200: _json(responses.ConversationWithMessagesSchema),
                                  404: _json(error, "No such conversation for this key."),
                                  **_errors(READ_ERRORS, error)}},
            "patch": {"tags": ["conversations"], "summary": "Rename a conversation",
                      "security": _security("chat"), "parameters": [conversation_id],
                      "requestBody": {"required": True, "content": {"application/json": {
                          "schema": conversations.ConversationRenameSchema}}},
                      "responses": {200: _json(responses.ConversationSchema, "The conversation, renamed."),
                                    404: _json(error, "No such conversation for this key."),
                                    **_errors(RENAME_ERRORS, error)}},
            "delete": {"tags": ["conversations"], "summary": "Delete a conversation and its messages",
                       "security": _security("chat"), "parameters": [conversation_id],
                       "responses": {204: {"description": "Deleted."},
                                     404: _json(error, "No such conversation for this key."),
                                     **_errors(READ_ERRORS, error)}}})
    spec.path("/auth/stream-token", operations={"post": {
        "tags": ["auth"], "summary": "A short-lived token for GET /chat/stream", "security": _security("chat"),
        "responses": {200: _json(responses.StreamTokenSchema), **_errors(READ_ERRORS, error)}}})
    spec.path("/admin/conversations", operations={"get": {
        "tags": ["admin"], "summary": "Every key's conversations, with their owner", "security": _security("admin"),
        "parameters": [{"in": "query", "schema": conversations.ConversationListQuerySchema}],
        "responses": {200: _json(responses.AdminConversationPageSchema), **_errors(READ_ERRORS, error)}}})
    spec.path("/v1/chat/completions", operations={"post": {
        "tags": ["openai"], "summary": "OpenAI chat completions, streamed or not", "security": _security("chat"),
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": openai.ChatCompletionRequestSchema}}},
        "responses": {200: {"description": "A chat.completion, or chat.completion.chunk events ending with "
                                           "`data: [DONE]` when `stream` is true.",
                            "content": {"application/json": {"schema": responses.ChatCompletionSchema},
                                        "text/event-stream": _openai_sse("ChatCompletionChunk")}},
                      **_errors(GENERATION_ERRORS, openai_error)}}})
    spec.path("/v1/completions", operations={"post": {
        "tags": ["openai"], "summary": "OpenAI text completions, streamed or not", "security": _security("chat"),
        "requestBody": {"required": True, "content": {"application/json": {"schema": openai.CompletionRequestSchema}}},
        "responses": {200: {"description": "A text_completion, or text_completion events ending with "
                                           "`data: [DONE]` when `stream` is true.",
                            "content": {"application/json": {"schema": "TextCompletion"},
                                        "text/event-stream": _openai_sse("TextCompletion")}},
                      **_errors(GENERATION_ERRORS, openai_error)}}})
    spec.path("/v1/embeddings", operations={"post": {
        "tags": ["openai"], "summary": "OpenAI embeddings: a vector per input, as floats or base64",
        "security": _security("chat"),
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": embeddings.EmbeddingRequestSchema}}},
        "responses": {200: _json(responses.EmbeddingListSchema), **_errors(GENERATION_ERRORS, openai_error)}}})
    spec.path("/v1/models", operations={"get": {
        "tags": ["openai"], "summary": "The served models: chat and embedding", "security": _security("chat"),
        "responses": {200: _json(responses.ModelListSchema), **_errors(READ_ERRORS, openai_error)}}})
    open_route: list[dict[str, list[str]]] = []
    spec.path("/healthz", operations={"get": {
        "tags": ["probes"], "summary": "Liveness", "security": open_route,
        "responses": {200: _json(responses.HealthSchema), **_errors((405, 500, 503), error)}}})
    spec.path("/readyz", operations={"get": {
        "tags": ["probes"], "summary": "Readiness: is the model loaded?", "security": open_route,
        "responses": {200: _json(responses.ReadinessSchema), **_errors((405, 500, 503), error)}}})
    spec.path("/metrics", operations={"get": {
        "tags": ["probes"], "summary": "Prometheus metrics", "security": _security("metrics"),
        "responses": {200: {"description": "Prometheus text format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                      **_errors(READ_ERRORS, error)}}})
    spec.path("/", operations={"get": {
        "tags": ["pages"], "summary": "The chat page", "security": open_route,
        "responses": {200: {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}},
                      **_errors((405, 500, 503), error)}}})
    spec.path("/assets/{asset}", operations={"get": {
        "tags": ["pages"], "summary": "A file of the chat page (its script, its style, marked, DOMPurify)",
        "security": open_route, "parameters": [{"in": "path", "name": "asset", "required": True, "schema": {
            "type": "string", "enum": list(PAGE_ASSETS)}}],
        "responses": {200: {"description": "The file.", "content": {"text/javascript": {"schema": {"type": "string"}},
                                                                   "text/css": {"schema": {"type": "string"}}}},
                      404: _json(error, "No such file."), **_errors((405, 500, 503), error)}}})
    spec.path("/docs", operations={"get": {
        "tags": ["pages"], "summary": "Interactive docs of this description (Swagger UI, served by the app)",
        "security": open_route,
        "responses": {200: {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}},
                      **_errors((405, 500, 503), error)}}})
    spec.path("/docs/{asset}", operations={"get": {
        "tags": ["pages"], "summary": "A file of the docs page (the vendored Swagger UI, its start script)",
        "security": open_route, "parameters": [{"in": "path", "name": "asset", "required": True, "schema": {
            "type": "string", "enum": list(DOCS_ASSETS)}}],
        "responses": {200: {"description": "The file.", "content": {"text/javascript": {"schema": {"type": "string"}},
                                                                   "text/css": {"schema": {"type": "string"}}}},
                      404: _json(error, "No such file."), **_errors((405, 500, 503), error)}}})
    spec.path("/openapi.json", operations={"get": {
        "tags": ["pages"], "summary": "This description", "security": open_route,
        "responses": {200: {"description": "OpenAPI 3.1.", "content": {"application/json": {
            "schema": {"type": "object"}}}}, **_errors((405, 500, 503), error)}}})
    return spec.to_dict()


@route(bp, "/openapi.json", ["GET"], open=True)
def openapi_json():  # noqa: ANN201
    described = current_app.extensions.get("llm_api.openapi")
    if described is None:
        described = current_app.extensions["llm_api.openapi"] = build_spec()
    return jsonify(described)
