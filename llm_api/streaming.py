"""Server-Sent Events: framing, the response object, and the lesson's chat event stream.

Every payload is JSON on one line (a raw newline would split a ``data:`` line),
every event has its own ``id:`` (``<message_id>:<sequence>``), and the stream
opens with a comment so headers leave at once (clients with a read timeout on
headers, such as okhttp, do not wait for the first token).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Response

from .engine.types import Finished, TextDelta
from .services.chat import ChatStream, Heartbeat

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
    return f": {text}\n\n"


def sse_response(events: Iterable[str]) -> Response:
    response = Response(events, mimetype="text/event-stream")
    response.headers.update(SSE_HEADERS)
    return response


def error_payload(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": {}}}


def chat_events(stream: ChatStream, mode: str = "delta") -> Iterator[str]:
    """The lesson's stream: ``data: {"text", "message_id"}`` per token, then ``finish`` (or ``error``)."""
    message_id = stream.message_id
    sequence = 0
    yield sse_comment("stream open")
    for item in stream:
        if isinstance(item, Heartbeat):
            yield sse_comment("ping")
            continue
        sequence += 1
        event_id = f"{message_id}:{sequence}"
        if isinstance(item, TextDelta):
            text = stream.text if mode == "cumulative" else item.text
            yield sse_event({"text": text, "message_id": message_id}, event_id=event_id)
        elif isinstance(item, Finished):
            if item.finish_reason == "error":
                yield sse_event(error_payload("generation_failed", item.error or "generation failed"),
                                event="error", event_id=event_id)
            else:
                yield sse_event({"message_id": message_id, "finish_reason": item.finish_reason,
                                 "usage": item.usage.as_dict(), "conversation_id": stream.request.conversation_id},
                                event="finish", event_id=event_id)
