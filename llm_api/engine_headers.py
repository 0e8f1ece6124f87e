"""The headers that name the engine behind an answer (docs/degradation.md)."""

from __future__ import annotations

from flask import Response

ENGINE_HEADER = "X-LLM-API-Engine"
DEGRADED_HEADER = "X-LLM-API-Degraded"


def mark_engine(response: Response, engine: str, degraded: bool) -> Response:
    """Add ``X-LLM-API-Engine`` (and ``X-LLM-API-Degraded: 1`` for a fallback): for a stream, the engine
    that took the request at admission (the stream itself names the one that answered)."""
    if engine:
        response.headers[ENGINE_HEADER] = engine
        if degraded:
            response.headers[DEGRADED_HEADER] = "1"
    return response
