"""Server-Sent Events: framing, the response object, and the lesson's chat event stream.

Every payload is JSON on one line (a raw newline would split a ``data:`` line),
every event has its own ``id:`` (``<message_id>:<sequence>``), and the stream
opens with a comment so headers leave at once (clients with a read timeout on
headers, such as okhttp, do not wait for the first token).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Response

from .engine.types import Finished, TextDelta
from .services.chat import ChatStream, Heartbeat
from .storage import ExchangeRecord

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


RETRY_MS = 3000
_EVENT_ID = re.compile(r"^([0-9a-f]{32}):(\d+)$")


def parse_event_id(value: str | None) -> tuple[str, int] | None:
    """``<message_id>:<sequence>`` from a ``Last-Event-ID`` header, or None if absent or malformed."""
    match = _EVENT_ID.match(value or "")
    return (match.group(1), int(match.group(2))) if match else None


def finish_payload(message_id: str, finish_reason: str, usage: dict[str, int],
                   conversation_id: str | None) -> dict[str, Any]:
    return {"message_id": message_id, "finish_reason": finish_reason, "usage": usage,
            "conversation_id": conversation_id}


def replayed_finish(record: ExchangeRecord, last_sequence: int) -> Iterator[str]:
    """A reconnect after the message finished: send its ``finish`` again, start nothing new."""
    yield f"retry: {RETRY_MS}\n\n"
    yield sse_event(finish_payload(record.message_id, record.finish_reason, record.usage, record.conversation_id),
                    event="finish", event_id=f"{record.message_id}:{last_sequence + 1}")


def resume_unavailable(message_id: str, last_sequence: int) -> Iterator[str]:
    """A reconnect to a message this worker cannot replay (still generating, or not stored here)."""
    yield f"retry: {RETRY_MS}\n\n"
    yield sse_event(error_payload("resume_unavailable",
                                  f"Message {message_id} cannot be resumed here; fetch it with "
                                  "GET /chat/get/messages once it has finished."),
                    event="error", event_id=f"{message_id}:{last_sequence + 1}")


def chat_events(stream: ChatStream, mode: str = "delta", retry_ms: int | None = None) -> Iterator[str]:
    """The lesson's stream: ``data: {"text", "message_id"}`` per token, then ``finish`` (or ``error``)."""
    message_id = stream.message_id
    sequence = 0
    if retry_ms is not None:
        yield f"retry: {retry_ms}\n\n"
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
                yield sse_event(finish_payload(message_id, item.finish_reason, item.usage.as_dict(),
                                               stream.request.conversation_id), event="finish", event_id=event_id)
