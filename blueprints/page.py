"""The bundled chat page (plain HTML + JS, same origin, no build step)."""

from __future__ import annotations

from flask import Blueprint, send_from_directory

from blueprints import route

bp = Blueprint("page", __name__, static_folder="static")


@route(bp, "/", ["GET"], open=True)
def index():  # noqa: ANN201
    response = send_from_directory(bp.static_folder, "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response
