"""Stream tokens: a browser's EventSource cannot send an Authorization header."""

from __future__ import annotations

from flask import Blueprint, jsonify

from blueprints import route
from llm_api.auth.guard import current_owner
from llm_api.state import services

bp = Blueprint("auth", __name__, url_prefix="/auth")


@route(bp, "/stream-token", ["POST"])
def stream_token():  # noqa: ANN201
    """A short-lived signed token for ``GET /chat/stream?token=…``, minted with a Bearer key."""
    tokens = services().stream_tokens
    return jsonify({"token": tokens.mint(current_owner()), "expires_in": tokens.max_age, "token_type": "stream"})
