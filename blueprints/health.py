"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, jsonify

from blueprints import route
from llm_api.state import services

bp = Blueprint("health", __name__)


@route(bp, "/healthz", ["GET"], open=True, serve_while_draining=True)  # alive while draining
def healthz():  # noqa: ANN201
    return jsonify({"status": "ok"})


@route(bp, "/readyz", ["GET"], open=True)  # refused while draining: not ready
def readyz():  # noqa: ANN201
    return jsonify(services().readiness())
