"""Server-Sent Events as a client reads them: parse a body, read a stream as it arrives, and the payloads
of the two event formats (the lesson's ``{"text"}`` events and OpenAI's ``data:`` chunks ending in ``[DONE]``).

An event is a dict ``{"event", "id", "data", "comment"}``; ``data`` is ``None`` for an event without data
lines (a heartbeat comment or the ``retry:`` hint), and a *data event* is one with data.
"""

from __future__ import annotations

import http.server
import json
from collections.abc import Iterable, Iterator

import requests


def parse_sse(body: str) -> list[dict]:
    """Split an SSE body into events ({"event", "id", "data", "comment"}), as EventSource readers do."""
    events = []
    for block in body.split("\n\n"):
        if not block:
            continue
        event: dict = {"event": None, "id": None, "data": [], "comment": []}
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "":
                event["comment"].append(value)
            elif field == "data":
                event["data"].append(value)
            else:
                event[field] = value
        event["data"] = "\n".join(event["data"]) if event["data"] else None
        events.append(event)
    return events


def text_chunks(response) -> Iterator[str]:
    """The body of a streamed response as it arrives: a ``requests`` response opened with ``stream=True``,
    or a Flask test client's response (which stays open until read to its end or closed)."""
    if isinstance(response, requests.Response):
        yield from response.iter_content(chunk_size=None, decode_unicode=True)
    else:
        for chunk in response.iter_encoded():
            yield chunk.decode()


def iter_sse(chunks: Iterable[str]) -> Iterator[dict]:
    """Every event (comments too) as soon as its block is complete, however the chunks split it."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield from parse_sse(block + "\n\n")


def read_sse(response, count: int | None = None) -> list[dict]:
    """The data events of a streamed response: the first ``count`` (the rest stays unread), or all of them."""
    events = []
    if count is not None and count <= 0:
        return events
    for event in iter_sse(text_chunks(response)):
        if event["data"] is not None:
            events.append(event)
            if count is not None and len(events) >= count:
                break
    return events


def lesson_text(events: Iterable[dict]) -> str:
    """The answer's text from the lesson's events (``data: {"text": ...}``, no event name)."""
    return "".join(json.loads(e["data"])["text"] for e in events if e["data"] is not None and e["event"] is None)


def openai_payloads(events: Iterable[dict]) -> list:
    """The data of OpenAI stream events: each chunk decoded, and ``"[DONE]"`` as it is."""
    return [e["data"] if e["data"] == "[DONE]" else json.loads(e["data"]) for e in events if e["data"]]


def openai_chunks(events: Iterable[dict]) -> list[dict]:
    """The chunks of a finished OpenAI stream, which must end with ``data: [DONE]``."""
    payloads = openai_payloads(events)
    assert payloads[-1] == "[DONE]"
    return payloads[:-1]


def send_openai_stream(handler: http.server.BaseHTTPRequestHandler, events: Iterable[dict]) -> None:
    """Answer a stub upstream's request as an OpenAI server streams: each event a ``data:`` line, then
    ``[DONE]``, and the connection closed."""
    stream = "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(stream.encode())
    handler.close_connection = True
