"""The lesson's chat API."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from blueprints import route
from llm_api.http_body import read_json_body
from llm_api.services.chat import ChatRequest
from llm_api.state import services
from llm_api.streaming import RETRY_MS, chat_events, parse_event_id, replayed_finish, resume_unavailable, sse_response
from schemas.chat import (
    ChatMessageRequestSchema,
    ChatResponseSchema,
    ChatStreamQuerySchema,
    ExchangeSchema,
    MessagesQuerySchema,
)

bp = Blueprint("chat", __name__, url_prefix="/chat")


@route(bp, "/new/message", ["POST"])
def new_message():  # noqa: ANN201
    body = read_json_body(request, current_app.config["LLM_API"].max_body_bytes)
    fields = ChatMessageRequestSchema().load(body)
    stream, mode = fields.pop("stream"), fields.pop("stream_mode")
    chat, chat_request = services().chat, ChatRequest.from_turn(**fields)
    if stream:
        return sse_response(chat_events(chat.open_stream(chat_request), mode))
    return jsonify(ChatResponseSchema().dump(chat.complete(chat_request)))


@route(bp, "/get/messages", ["GET"])
def get_messages():  # noqa: ANN201
    query = MessagesQuerySchema().load(request.args.to_dict())
    records = services().chat.list_messages(query["limit"], query["before"])
    return jsonify({"messages": ExchangeSchema(many=True).dump(records)})


@route(bp, "/stream", ["GET"])
def stream_get():  # noqa: ANN201
    """For the browser's EventSource (GET only); a reconnect never starts a second generation."""
    args = {key: request.args.getlist(key) if key == "stop" else request.args[key] for key in request.args}
    fields = ChatStreamQuerySchema().load(args)
    chat, mode = services().chat, fields.pop("stream_mode")
    resumed = parse_event_id(request.headers.get("Last-Event-ID"))
    if resumed is not None:
        record = chat.find_message(resumed[0])
        return sse_response(replayed_finish(record, resumed[1]) if record else resume_unavailable(*resumed))
    chat_request = ChatRequest.from_turn(history=[], **fields)
    return sse_response(chat_events(chat.open_stream(chat_request), mode, retry_ms=RETRY_MS))
