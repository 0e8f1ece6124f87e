"""Logs go to stdout, one line each, so gunicorn and container runtimes collect them."""

from __future__ import annotations

import logging
import sys

_HANDLER_NAME = "llm_api"


def configure_logging(level: str) -> None:
    root = logging.getLogger("llm_api")
    root.setLevel(level.upper())
    if any(h.get_name() == _HANDLER_NAME for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.propagate = False
