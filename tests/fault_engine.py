"""A fault-injecting wrapper around an engine: told to raise, stall, overload or fail, or to pass through."""

from __future__ import annotations

from typing import Any

from llm_api.generation.channel import Channel
from llm_api.generation.errors import QueueFullError
from llm_api.generation.handle import GenerationHandle
from llm_api.generation.types import Finished, GenerationRequest, SamplingParams, Usage
from llm_api.routing.errors import EngineUnavailableError
from tests.fakes import FakeEngine

MODES = ("ok", "raise", "overload", "stall", "error")


class FaultyEngine:
    """Wraps ``inner`` (a :class:`FakeEngine` by default). ``mode`` decides what the next ``submit`` does:

    - ``ok``: pass through to the inner engine;
    - ``raise``: raise :class:`EngineUnavailableError` (an engine that cannot be reached);
    - ``overload``: raise :class:`QueueFullError`;
    - ``stall``: accept the request and never send a token (until it is cancelled);
    - ``error``: accept it and end at once with ``Finished("error")``, before any token.
    """

    def __init__(self, inner: FakeEngine | None = None, *, model_name: str = "fake-model", mode: str = "ok") -> None:
        self.inner = inner or FakeEngine()
        self.model_name = model_name
        self.mode = mode
        self.submits = 0  # every submit call, whatever the mode
        self.stalled: list[GenerationHandle] = []

    def __getattr__(self, name: str) -> Any:  # context_length, ready, queued, stats, start, encode_* ...
        return getattr(self.inner, name)

    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams, **text) -> GenerationHandle:
        assert self.mode in MODES, self.mode
        self.submits += 1
        if self.mode == "raise":
            raise EngineUnavailableError("injected: cannot be reached")
        if self.mode == "overload":
            raise QueueFullError("injected: 1 requests are already waiting")
        if self.mode in ("stall", "error"):
            request = GenerationRequest(request_id, list(prompt_ids), params)
            channel = Channel()
            handle = GenerationHandle(request, channel, on_cancel=lambda: channel.put(
                Finished(handle.cancel_reason, Usage(len(prompt_ids), 0), None, 0.0)))
            if self.mode == "error":
                channel.put(Finished("error", Usage(len(prompt_ids), 0), None, 0.0, error="injected: failed"))
            else:
                self.stalled.append(handle)
            return handle
        return self.inner.submit(request_id, prompt_ids, params, **text)
