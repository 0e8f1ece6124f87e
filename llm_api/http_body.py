"""Reading a request body as JSON, whatever its Content-Type, within a size limit."""

from __future__ import annotations

import json
from typing import Any

from flask import Request

from .errors import ApiError, invalid_json


def read_json_body(request: Request, max_bytes: int) -> Any:
    """Parse the body as JSON (clients such as ``requests.post(data=json.dumps(...))`` send no JSON type).

    Answers 413 past ``max_bytes`` (also for chunked bodies, which Werkzeug would
    silently truncate) and 400 for a body that cannot be read or parsed.
    """
    too_large = ApiError(413, "payload_too_large", f"The request body is larger than {max_bytes} bytes.",
                         {"max_bytes": max_bytes})
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    try:
        raw = request.stream.read(max_bytes + 1)
    except Exception as exc:  # e.g. gunicorn's ChunkMissingTerminator / InvalidChunkSize
        raise ApiError(400, "invalid_body", f"The request body could not be read: {type(exc).__name__}") from None
    if len(raw) > max_bytes:
        raise too_large
    if not raw.strip():
        raise invalid_json("the body is empty")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_json(str(exc)) from None
