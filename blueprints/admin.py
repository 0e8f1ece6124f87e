"""Routes for keys with the ``admin`` scope: reads across every owner."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from blueprints import route
from llm_api.state import services
from schemas.conversations import ConversationListQuerySchema, ConversationSchema

bp = Blueprint("admin", __name__, url_prefix="/admin")


@route(bp, "/conversations", ["GET"], scope="admin")
def all_conversations():  # noqa: ANN201
    query = ConversationListQuerySchema().load(request.args.to_dict())
    page = services().conversations.list(query["limit"], query["cursor"], owner=None)
    rows = [{**ConversationSchema().dump(c), "owner": c.owner} for c in page.items]
    return jsonify({"conversations": rows, "next_cursor": page.next_cursor})
