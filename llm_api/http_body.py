"""Reading a request body as JSON, whatever its Content-Type, within a size limit.

Beyond well-formed JSON, a body must keep to two rules (docs/api.md, "Request bodies"):

* nesting: objects and arrays at most :data:`MAX_JSON_DEPTH` levels deep (the top-level object is level 1).
  Checked on the text before it is parsed, since Python's parser recurses and would overflow.
* text: every string (and object key) is Unicode text. Bytes that are not UTF-8 and escapes of unpaired
  surrogates (``"\\udfff"``) are refused, naming the field, before any tokenizer or database sees them.

Duplicate keys in an object: the last one wins, as in most JSON parsers (RFC 8259 leaves it open).
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Request

from .errors import ApiError, invalid_json

MAX_JSON_DEPTH = 64

# A JSON string token, or one bracket. Strings are matched whole, so brackets inside them are not counted.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_SURROGATE = re.compile("[\ud800-\udfff]")


def read_json_body(request: Request, max_bytes: int) -> Any:
    """Parse the body as JSON (clients such as ``requests.post(data=json.dumps(...))`` send no JSON type).

    Answers 413 past ``max_bytes`` (also for chunked bodies, which Werkzeug would
    silently truncate) and 400 for a body that cannot be read or parsed, that is nested
    too deeply, or that holds text that is not Unicode.
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
    return parse_json(raw)


def parse_json(raw: bytes) -> Any:
    """``raw`` as JSON under the rules above; :class:`ApiError` (400) otherwise."""
    encoding = json.detect_encoding(raw)
    try:
        # Bytes that are not UTF-8 become lone surrogates here, so that the check below can name their field.
        text = raw.decode(encoding, "surrogateescape" if encoding.startswith("utf-8") else "surrogatepass")
    except UnicodeDecodeError as exc:
        raise invalid_json(str(exc)) from None
    check_depth(text)
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise invalid_json(str(exc)) from None
    check_text(value)
    return value


def check_depth(text: str, limit: int = MAX_JSON_DEPTH) -> None:
    """400 ``nesting_too_deep`` naming the top-level field whose value is nested past ``limit`` levels."""
    depth, field = 0, None
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token[0] == '"':
            if depth == 1:
                field = token  # at level 1 the last string before a nested value is that value's key
        elif token in "[{":
            depth += 1
            if depth > limit:
                name = _field_name(field) if text.lstrip().startswith("{") else "_schema"
                message = f"Nested more than {limit} levels deep."
                raise ApiError(400, "nesting_too_deep", f"The request body is nested too deeply: {name}: {message}",
                               {"fields": {name: [message]}, "max_depth": limit})
        else:
            depth -= 1


def _field_name(token: str | None) -> str:
    if token is None:
        return "_schema"
    try:
        name = json.loads(token)
    except ValueError:
        return "_schema"
    return _printable(name) if isinstance(name, str) else "_schema"


def check_text(value: Any) -> None:
    """400 ``invalid_text`` naming the first field whose string (or key) is not Unicode text."""
    path = _non_text_path(value, ())
    if path is None:
        return
    name = ".".join(_printable(str(part)) for part in path) or "_schema"
    message = "Not valid Unicode text (bytes that are not UTF-8, or an unpaired surrogate escape)."
    raise ApiError(400, "invalid_text", f"Invalid request fields: {name}: {message}", {"fields": {name: [message]}})


def _non_text_path(value: Any, path: tuple[str | int, ...]) -> tuple[str | int, ...] | None:
    if isinstance(value, str):
        return path if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _SURROGATE.search(key):
                return (*path, key)
            found = _non_text_path(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _non_text_path(item, (*path, index))
            if found is not None:
                return found
    return None


def _printable(name: str) -> str:
    """A field name that can be written into a JSON answer (its surrogates escaped)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")
