"""A WSGI entry for gunicorn with a scripted engine instead of a model, for browser tests that need a known answer
(``gunicorn -c gunicorn.conf.py tests.scripted_wsgi:app``). Everything but the engine is the real service.

``LLM_API_TEST_REPLY``: the answer, sent word by word; ``LLM_API_TEST_REPLY_DELAY``: seconds between words. A
prompt that contains ``UNREACHABLE`` finds the engine unreachable, so the router falls back (to the static
``LLM_API_DEGRADED_ANSWER`` when one is set). ``LLM_API_TEST_SECOND_REPLY``: a second chat model, id ``second``
(as LLM_API_CHAT_MODELS would add it), that answers this."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from llm_api import create_app
from llm_api.generation.handle import GenerationHandle
from llm_api.generation.protocol import Message
from llm_api.generation.types import SamplingParams
from llm_api.routing.errors import EngineUnavailableError
from tests.fakes import FakeEngine


class ScriptedEngine(FakeEngine):
    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams, *,
               messages: Sequence[Message] | None = None, prompt_text: str | None = None,
               trace_headers: Mapping[str, str] | None = None) -> GenerationHandle:
        if messages and "UNREACHABLE" in messages[-1]["content"]:
            raise EngineUnavailableError("scripted: cannot be reached")
        return super().submit(request_id, prompt_ids, params, messages=messages, prompt_text=prompt_text,
                              trace_headers=trace_headers)


engine = ScriptedEngine(os.environ.get("LLM_API_TEST_REPLY", "Hello from the scripted engine."),
                        context_length=4096, delay=float(os.environ.get("LLM_API_TEST_REPLY_DELAY", "0.01")))
second_reply = os.environ.get("LLM_API_TEST_SECOND_REPLY")
chat_models = None
if second_reply:
    second = ScriptedEngine(second_reply, context_length=2048, delay=0.01)
    second.model_name = "second-model"
    chat_models = {"second": second}
app = create_app(engine=engine, chat_models=chat_models)
