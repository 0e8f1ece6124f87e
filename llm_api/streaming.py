"""Server-Sent Events framing: events, comments, ``retry:`` lines, and the ``text/event-stream`` response.

Every payload is JSON on one line (a raw newline would split a ``data:`` line).
What the events say is each API's own: the chat API's in :mod:`llm_api.chat_events`,
the OpenAI API's in :mod:`llm_api.openai_format`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from flask import Response

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def to_json(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def sse_event(data: Any, *, event: str | None = None, event_id: str | None = None,
              retry_ms: int | None = None) -> str:
    """One SSE event; ``data`` that is not a string is JSON-encoded."""
    lines = []
    if event:
        lines.append(f"event: {event}")
    if event_id:
        lines.append(f"id: {event_id}")
    if retry_ms is not None:
        lines.append(f"retry: {retry_ms}")
    text = data if isinstance(data, str) else to_json(data)
    lines.extend(f"data: {line}" for line in text.split("\n"))
    return "\n".join(lines) + "\n\n"


def sse_comment(text: str) -> str:
    """A comment line: clients ignore it, so it serves to open a stream and as a heartbeat."""
    return f": {text}\n\n"


def sse_retry(retry_ms: int) -> str:
    """A ``retry:`` line alone: how long an ``EventSource`` waits before it reconnects."""
    return f"retry: {retry_ms}\n\n"


def sse_response(events: Iterable[str]) -> Response:
    """A ``text/event-stream`` response that no cache or proxy buffers."""
    response = Response(events, mimetype="text/event-stream")
    response.headers.update(SSE_HEADERS)
    return response
