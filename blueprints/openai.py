"""OpenAI-compatible API: chat completions, text completions and the model list."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from blueprints import route
from llm_api import caller
from llm_api.engine_headers import mark_engine
from llm_api.http_body import read_json_body
from llm_api.openai_format import ChatChunkStream, TextChunkStream, chat_completion, model_list, text_completion
from llm_api.services.chat import ChatRequest
from llm_api.state import services
from llm_api.streaming import sse_response
from schemas.openai import ChatCompletionRequestSchema, CompletionRequestSchema

bp = Blueprint("openai", __name__, url_prefix="/v1")

_SAMPLING = ("max_tokens", "temperature", "top_p", "seed", "stop", "ignore_eos", "n")
# Left out of the loaded fields when the caller did not set them (the request's neutral values apply).
_OPTIONAL = ("top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias",
             "logprobs", "top_logprobs")


def _sampling(fields: dict[str, Any]) -> dict[str, Any]:
    return {**{k: fields[k] for k in _SAMPLING}, **{k: fields[k] for k in _OPTIONAL if k in fields}}


def _load(schema: Any) -> dict[str, Any]:
    return schema.load(read_json_body(request, current_app.config["LLM_API"].max_body_bytes))


@route(bp, "/chat/completions", ["POST"])
def chat_completions():  # noqa: ANN201
    fields = _load(ChatCompletionRequestSchema())
    models = services().models
    chain = models.resolve_chat(fields["model"])  # 404 unknown, 400 an embedding model
    chat_request = ChatRequest.from_messages(fields["messages"], model=fields["model"], structured=fields["structured"],
                                             **_sampling(fields))
    model = models.listed_name(chain)
    if fields["stream"]:
        return _streamed(ChatChunkStream(caller.open_streams(chat_request), model, fields["include_usage"]))
    results = caller.complete_all(chat_request)
    return mark_engine(jsonify(chat_completion(results, model)), results[0].engine, results[0].degraded)


@route(bp, "/completions", ["POST"])
def completions():  # noqa: ANN201
    fields = _load(CompletionRequestSchema())
    models = services().models
    chain = models.resolve_chat(fields["model"])
    chat_request = ChatRequest(messages=[], prompt=fields["prompt"], raw=True, model=fields["model"],
                               **_sampling(fields))
    model = models.listed_name(chain)
    echo = fields["prompt"] if fields["echo"] else ""
    if fields["stream"]:
        return _streamed(TextChunkStream(caller.open_streams(chat_request), model, fields["include_usage"], echo))
    results = caller.complete_all(chat_request)
    return mark_engine(jsonify(text_completion(results, model, echo)), results[0].engine, results[0].degraded)


def _streamed(chunks: ChatChunkStream | TextChunkStream) -> Response:
    """The engine that took the request at admission goes in the headers (docs/degradation.md)."""
    engine, _, degraded = chunks.stream.engine
    return mark_engine(sse_response(chunks), engine, degraded)



@route(bp, "/models", ["GET"])
def models():  # noqa: ANN201
    state = services()
    state.readiness()  # 503 until the model is loaded
    return jsonify(model_list(state.models.listing(), state.started_at))
