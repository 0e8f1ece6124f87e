"""Logs go to stdout, one line each, so gunicorn and container runtimes collect them.

Two formats (``LLM_API_LOG_FORMAT``): ``text``, a readable line that ends in
``key=value`` fields, and ``json``, one JSON object per line. A record's
structured fields come from ``extra={"fields": {...}}``; its request id from
``extra={"request_id": ...}`` or, failing that, from the request being served
by the current greenlet (:func:`bind_request_id`).
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_HANDLER_NAME = "llm_api"
LOG_FORMATS = ("text", "json")

# The id of the request the current greenlet serves. Each greenlet has its own context (greenlet >= 0.4.17),
# and a spawned greenlet starts with an empty one, so code that runs outside the request's greenlet (a
# stream's pump) passes the id explicitly.
_request_id: ContextVar[str | None] = ContextVar("llm_api_request_id", default=None)


def bind_request_id(request_id: str | None) -> None:
    """Set (or clear, with None) the request id of the current greenlet."""
    _request_id.set(request_id)


def current_request_id() -> str | None:
    return _request_id.get()


def _record_request_id(record: logging.LogRecord) -> str | None:
    return getattr(record, "request_id", None) or current_request_id()


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return {k: v for k, v in fields.items() if v is not None} if isinstance(fields, dict) else {}


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``2025-01-01 12:00:00,000 INFO llm_api.request request request_id=… method=GET …``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = _record_fields(record)
        request_id = fields.pop("request_id", None) or _record_request_id(record)
        if request_id:
            line += f" request_id={_text_value(request_id)}"
        return line + "".join(f" {key}={_text_value(value)}" for key, value in fields.items())


class JsonFormatter(logging.Formatter):
    """One object per line: ``ts``, ``level``, ``logger``, ``message``, ``request_id``, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _record_request_id(record)
        if request_id:
            entry["request_id"] = request_id
        for key, value in _record_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)} (got {fmt!r})")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def configure_logging(level: str, fmt: str = "text") -> None:
    """Send the ``llm_api`` loggers to stdout in ``fmt`` at ``level``; calling it again changes both."""
    root = logging.getLogger("llm_api")
    root.setLevel(level.upper())
    handler = next((h for h in root.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stdout)
        handler.set_name(_HANDLER_NAME)
        root.addHandler(handler)
        root.propagate = False
    handler.setFormatter(make_formatter(fmt))
