"""The lesson's chat API."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from blueprints import route
from llm_api import caller
from llm_api.auth.guard import current_owner
from llm_api.chat_events import (
    RETRY_MS,
    chat_event_frames,
    follow_events,
    is_reconnect,
    parse_event_id,
    resume_unavailable,
)
from llm_api.engine_headers import mark_engine
from llm_api.errors import ApiError
from llm_api.http_body import read_json_body
from llm_api.services.chat import ChatRequest
from llm_api.state import services
from llm_api.streaming import sse_response
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
    services().models.resolve_chat(fields["model"])  # 404 unknown, 400 an embedding model
    chat_request = ChatRequest.from_turn(**fields)
    if stream:
        return _start_stream(chat_request, mode, wait_for_reconnect=False)
    result = caller.complete(chat_request)
    return mark_engine(jsonify(ChatResponseSchema().dump(result)), result.engine, result.degraded)


@route(bp, "/get/messages", ["GET"])
def get_messages():  # noqa: ANN201
    query = MessagesQuerySchema().load(request.args.to_dict())
    exchanges = services().chat.list_exchanges(query["limit"], query["before"], current_owner())
    return jsonify({"messages": ExchangeSchema(many=True).dump(exchanges)})


@route(bp, "/stream", ["GET"], stream_token=True, serve_while_draining=is_reconnect)
def stream_get():  # noqa: ANN201
    """For the browser's EventSource (GET only). A reconnect carrying ``Last-Event-ID`` gets the
    events after that id, then the live tail; it never starts a second generation."""
    resumed = parse_event_id(request.headers.get("Last-Event-ID"))
    if resumed is not None:
        return _resume(*resumed)
    args = {key: request.args.getlist(key) if key == "stop" else request.args[key]
            for key in request.args if key != "token"}  # the stream token was checked before the view
    fields = ChatStreamQuerySchema().load(args)
    mode = fields.pop("stream_mode")
    services().models.resolve_chat(fields["model"])
    return _start_stream(ChatRequest.from_turn(history=[], **fields), mode, wait_for_reconnect=True,
                         retry_ms=RETRY_MS)


@route(bp, "/stream/<message_id>", ["DELETE"], stream_token=True)
def cancel_stream(message_id: str):  # noqa: ANN201
    """Stop an answer that is streaming from this worker (the chat page's Stop button): it ends with
    ``finish_reason: "cancelled"`` and is stored with its text so far. 404 when this worker has no
    such running answer of the caller's."""
    live = services().live.get(message_id, current_owner())
    if live is None or live.done:
        raise ApiError(404, "stream_not_found", f"No answer {message_id} is streaming from this worker.",
                       {"message_id": message_id})
    live.cancel()
    return "", 204


def _start_stream(chat_request: ChatRequest, mode: str, *, wait_for_reconnect: bool,
                  retry_ms: int | None = None) -> Response:
    """EventSource streams keep generating for a while when their client goes, so that its automatic
    reconnect finds the answer still running; a POST stream is cancelled as soon as its client goes."""
    state = services()
    stream = caller.open_stream(chat_request)
    live = state.live.start(stream, chat_event_frames(stream, mode), wait_for_reconnect=wait_for_reconnect)
    engine, _, degraded = stream.engine  # the engine that took it at admission; `finish` names the one that answered
    return mark_engine(sse_response(follow_events(live, retry_ms=retry_ms)), engine, degraded)


def _resume(message_id: str, last_sequence: int) -> Response:
    state, owner = services(), current_owner()
    live = state.live.get(message_id, owner)
    if live is None:
        return sse_response(resume_unavailable(message_id, last_sequence, state.chat.find_message(message_id, owner)))
    if live.done and last_sequence >= len(live.events):
        return Response(status=204)  # nothing after that id: tells an EventSource to stop reconnecting
    return sse_response(follow_events(live, after=last_sequence, retry_ms=RETRY_MS))
