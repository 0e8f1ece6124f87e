"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, jsonify

from llm_api.state import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():  # noqa: ANN201
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():  # noqa: ANN201
    return jsonify(services().readiness())
