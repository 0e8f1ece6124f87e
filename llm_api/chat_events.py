"""The chat API's event stream (``POST /chat/new/message`` with ``"stream": true``, ``GET /chat/stream``).

Every event has its own ``id:`` (``<message_id>:<sequence>``), so that an
``EventSource`` that reconnects with ``Last-Event-ID`` gets the events after it
(docs/api.md, "Reconnection and Last-Event-ID"). Each response opens with a
comment so that headers leave at once (clients with a read timeout on headers,
such as okhttp, do not wait for the first token). The framing itself is
:mod:`llm_api.streaming`'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from flask import Request

from .errors import error_body
from .generation.types import Finished, TextDelta
from .services.chat import ChatStream, Heartbeat
from .services.live import LiveStream, RemoteStream
from .services.shared_streams import StreamLost, StreamUnavailable
from .storage import Message
from .streaming import sse_comment, sse_event, sse_retry

RETRY_MS = 3000  # the reconnect delay sent to an EventSource
_EVENT_ID = re.compile(r"^([0-9a-f]{32}):(\d+)$")


def parse_event_id(value: str | None) -> tuple[str, int] | None:
    """``<message_id>:<sequence>`` from a ``Last-Event-ID`` header, or None if absent or malformed."""
    match = _EVENT_ID.match(value or "")
    return (match.group(1), int(match.group(2))) if match else None


def is_reconnect(request: Request) -> bool:
    """Whether ``request`` carries a well-formed ``Last-Event-ID``: an EventSource that reconnects, to be
    given the events after that id; it never starts a generation."""
    return parse_event_id(request.headers.get("Last-Event-ID")) is not None


def finish_payload(stream: ChatStream, finished: Finished) -> dict[str, Any]:
    payload = {"message_id": stream.message_id, "finish_reason": finished.finish_reason,
               "usage": finished.usage.as_dict(), "conversation_id": stream.conversation_id,
               "dropped_turns": stream.turn.dropped_turns}
    if finished.engine:  # the named engine that answered (docs/degradation.md)
        payload["engine"], payload["degraded"] = finished.engine, finished.degraded
    return payload


def chat_event_frames(stream: ChatStream, mode: str = "delta") -> Iterator[str]:
    """The chat API's events, each with its ``id:``: ``data: {"text", "message_id"}`` per token, then
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
            yield sse_event(error_body("generation_failed", item.error or "generation failed"),
                            event="error", event_id=event_id)
        elif stream.interrupted is not None:  # e.g. shutting_down: the text so far is stored as cancelled
            details = {"message_id": stream.message_id, "conversation_id": stream.conversation_id}
            yield sse_event(error_body(stream.interrupted.code, stream.interrupted.message, details),
                            event="error", event_id=event_id)
        else:
            yield sse_event(finish_payload(stream, item), event="finish", event_id=event_id)


def follow_events(live: LiveStream | RemoteStream, after: int = 0, retry_ms: int | None = None) -> Iterator[str]:
    """One response's body: the events of ``live`` after the first ``after``, with heartbeat comments. An
    answer followed on another worker may end with an ``error`` event instead of its own last one: its
    worker stopped (``generation_lost``), or the rest cannot be read here (``resume_unavailable``)."""
    if retry_ms is not None:
        yield sse_retry(retry_ms)
    yield sse_comment("stream open")
    for event in live.follow(after):
        if event is None:
            yield sse_comment("ping")
        elif isinstance(event, StreamLost):
            yield generation_lost(event)
        elif isinstance(event, StreamUnavailable):
            details = {"message_id": event.message_id, "conversation_id": event.conversation_id}
            payload = error_body("resume_unavailable", f"The rest of message {event.message_id} cannot be "
                                 "read on this worker now (the shared stream state is unreachable); fetch it with "
                                 f"GET /conversations/{event.conversation_id} once it has finished.", details)
            yield sse_event(payload, event="error", event_id=f"{event.message_id}:{event.last_sequence + 1}")
        else:
            yield event


def generation_lost(lost: StreamLost) -> str:
    """The event that ends a stream whose worker stopped mid-answer (killed, crashed)."""
    details = {"message_id": lost.message_id, "conversation_id": lost.conversation_id}
    payload = error_body("generation_lost", f"The worker generating message {lost.message_id} stopped before the "
                         "answer finished; the text sent so far is stored with finish_reason \"error\" in "
                         f"GET /conversations/{lost.conversation_id}. Ask again to get a whole answer.", details)
    return sse_event(payload, event="error", event_id=f"{lost.message_id}:{lost.last_sequence + 1}")


def resume_unavailable(message_id: str, last_sequence: int, stored: Message | None,
                       shared_unreachable: bool = False) -> Iterator[str]:
    """A reconnect this worker cannot replay: the events are gone, or were never here (or are in a shared
    state that does not answer now)."""
    if shared_unreachable:
        where = ("The shared stream state is unreachable, and the answer is not generated on this worker; "
                 "fetch it with GET /conversations/<conversation_id> once it has finished.")
    elif stored is not None:
        where = (f"It has finished ({stored.finish_reason}); fetch it with "
                 f"GET /conversations/{stored.conversation_id}.")
    else:
        where = ("It is not known to this worker (it may be generating on another one); fetch it with "
                 "GET /conversations/<conversation_id> once it has finished.")
    details = {"message_id": message_id}
    if stored is not None:
        details["conversation_id"] = stored.conversation_id
    payload = error_body("resume_unavailable", f"Message {message_id} cannot be resumed here. {where}", details)
    yield sse_retry(RETRY_MS)
    yield sse_event(payload, event="error", event_id=f"{message_id}:{last_sequence + 1}")
