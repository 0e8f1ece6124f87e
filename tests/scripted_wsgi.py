"""A WSGI entry for gunicorn with a scripted engine instead of a model, for browser tests that need a known answer
(``gunicorn -c gunicorn.conf.py tests.scripted_wsgi:app``). Everything but the engine is the real service.

``LLM_API_TEST_REPLY``: the answer, sent word by word; ``LLM_API_TEST_REPLY_DELAY``: seconds between words."""

from __future__ import annotations

import os

from llm_api import create_app
from tests.fakes import FakeEngine

engine = FakeEngine(os.environ.get("LLM_API_TEST_REPLY", "Hello from the scripted engine."),
                    context_length=4096, delay=float(os.environ.get("LLM_API_TEST_REPLY_DELAY", "0.01")))
app = create_app(engine=engine)
