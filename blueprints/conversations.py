"""Stored conversations: list them, read one with its messages, rename one, delete one."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from blueprints import route
from llm_api.auth.guard import current_owner
from llm_api.http_body import read_json_body
from llm_api.state import services
from schemas.conversations import (
    ConversationListQuerySchema,
    ConversationMessagesQuerySchema,
    ConversationRenameSchema,
    ConversationSchema,
    StoredMessageSchema,
)

bp = Blueprint("conversations", __name__)


@route(bp, "/conversations", ["GET"])
def list_conversations():  # noqa: ANN201
    query = ConversationListQuerySchema().load(request.args.to_dict())
    page = services().conversations.list(query["limit"], query["cursor"], current_owner())
    return jsonify({"conversations": ConversationSchema(many=True).dump(page.items), "next_cursor": page.next_cursor})


@route(bp, "/conversations/<conversation_id>", ["GET"])
def get_conversation(conversation_id: str):  # noqa: ANN201
    query = ConversationMessagesQuerySchema().load(request.args.to_dict())
    conversation, page = services().conversations.get(conversation_id, query["limit"], query["cursor"],
                                                               current_owner())
    return jsonify({**ConversationSchema().dump(conversation),
                    "messages": StoredMessageSchema(many=True).dump(page.items), "next_cursor": page.next_cursor})


@route(bp, "/conversations/<conversation_id>", ["PATCH"])
def rename_conversation(conversation_id: str):  # noqa: ANN201
    body = read_json_body(request, current_app.config["LLM_API"].max_body_bytes)
    fields = ConversationRenameSchema().load(body)
    renamed = services().conversations.rename(conversation_id, fields["title"], current_owner())
    return jsonify(ConversationSchema().dump(renamed))


@route(bp, "/conversations/<conversation_id>", ["DELETE"])
def delete_conversation(conversation_id: str):  # noqa: ANN201
    services().conversations.delete(conversation_id, current_owner())
    return "", 204
