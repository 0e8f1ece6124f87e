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

from .generation.types import Finished, TextDelta
from .services.chat import ChatStream, Heartbeat
from .services.live import LiveStream
from .storage import Message

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


def error_payload(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


RETRY_MS = 3000
_EVENT_ID = re.compile(r"^([0-9a-f]{32}):(\d+)$")


def parse_event_id(value: str | None) -> tuple[str, int] | None:
    """``<message_id>:<sequence>`` from a ``Last-Event-ID`` header, or None if absent or malformed."""
    match = _EVENT_ID.match(value or "")
    return (match.group(1), int(match.group(2))) if match else None


def finish_payload(stream: ChatStream, finished: Finished) -> dict[str, Any]:
    payload = {"message_id": stream.message_id, "finish_reason": finished.finish_reason,
               "usage": finished.usage.as_dict(), "conversation_id": stream.conversation_id,
               "dropped_turns": stream.turn.dropped_turns}
    if finished.engine:  # the named engine that answered (docs/degradation.md)
        payload["engine"], payload["degraded"] = finished.engine, finished.degraded
    return payload


ENGINE_HEADER = "X-LLM-API-Engine"
DEGRADED_HEADER = "X-LLM-API-Degraded"


def mark_engine(response: Response, engine: str, degraded: bool) -> Response:
    """Add ``X-LLM-API-Engine`` (and ``X-LLM-API-Degraded: 1`` for a fallback): for a stream, the engine
    that took the request at admission; the ``finish`` event names the one that answered."""
    if engine:
        response.headers[ENGINE_HEADER] = engine
        if degraded:
            response.headers[DEGRADED_HEADER] = "1"
    return response


def chat_event_frames(stream: ChatStream, mode: str = "delta") -> Iterator[str]:
    """The lesson's events, each with its ``id:``: ``data: {"text", "message_id"}`` per token, then
    ``finish`` (or ``error``). Heartbeats are left to each response that follows them."""
    sequence = 0
    for item in stream:
        if isinstance(item, Heartbeat):
            continue
        sequence += 1
        event_id = f"{stream.message_id}:{sequence}"
        if isinstance(item, TextDelta):
            text = stream.text if mode == "cumulative" else item.text
            yield sse_event({"text": text, "message_id": stream.message_id}, event_id=event_id)
        elif item.finish_reason == "error":
            yield sse_event(error_payload("generation_failed", item.error or "generation failed"),
                            event="error", event_id=event_id)
        elif stream.interrupted is not None:  # e.g. shutting_down: the text so far is stored as cancelled
            details = {"message_id": stream.message_id, "conversation_id": stream.conversation_id}
            yield sse_event(error_payload(stream.interrupted.code, stream.interrupted.message, details),
                            event="error", event_id=event_id)
        else:
            yield sse_event(finish_payload(stream, item), event="finish", event_id=event_id)


def follow_events(live: LiveStream, after: int = 0, retry_ms: int | None = None) -> Iterator[str]:
    """One response's body: the events of ``live`` after the first ``after``, with heartbeat comments."""
    if retry_ms is not None:
        yield f"retry: {retry_ms}\n\n"
    yield sse_comment("stream open")
    for event in live.follow(after):
        yield sse_comment("ping") if event is None else event


def resume_unavailable(message_id: str, last_sequence: int, stored: Message | None) -> Iterator[str]:
    """A reconnect this worker cannot replay: the events are gone, or were never here."""
    if stored is not None:
        where = (f"It has finished ({stored.finish_reason}); fetch it with "
                 f"GET /conversations/{stored.conversation_id}.")
    else:
        where = ("It is not known to this worker (it may be generating on another one); fetch it with "
                 "GET /conversations/<conversation_id> once it has finished.")
    details = {"message_id": message_id}
    if stored is not None:
        details["conversation_id"] = stored.conversation_id
    payload = error_payload("resume_unavailable", f"Message {message_id} cannot be resumed here. {where}", details)
    yield f"retry: {RETRY_MS}\n\n"
    yield sse_event(payload, event="error", event_id=f"{message_id}:{last_sequence + 1}")
