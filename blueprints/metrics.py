"""Prometheus metrics: ``GET /metrics`` in the text exposition format."""

from __future__ import annotations

from flask import Blueprint, Response

from blueprints import route
from llm_api.metrics import CONTENT_TYPE, current_metrics
from llm_api.state import services

bp = Blueprint("metrics", __name__)


@route(bp, "/metrics", ["GET"], scope="metrics", serve_while_draining=True)
def metrics():  # noqa: ANN201
    """This worker's engine gauges are sampled now; in multi-process mode the answer adds up every worker."""
    collected = current_metrics()
    collected.observe_engine(services().engine)
    return Response(collected.render(), content_type=CONTENT_TYPE)
