"""A scripted engine with the real engine's surface, for HTTP-layer tests (no model)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gevent

from llm_api.generation.backlog import Backlog
from llm_api.generation.channel import Channel
from llm_api.generation.errors import ContextLengthError, QueueFullError
from llm_api.generation.features import ALL_FEATURES, require_features
from llm_api.generation.handle import GenerationHandle
from llm_api.generation.protocol import EngineKind, Message
from llm_api.generation.tool_calls import ToolCallReader, ToolSyntax
from llm_api.generation.types import (
    Finished,
    GenerationRequest,
    SamplingDefaults,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    Usage,
)


class FakeEngine:
    """Answers every request with ``reply`` split into word pieces.

    ``delay`` > 0 sends the pieces from a greenlet, one per ``delay`` seconds,
    and honours cancellation like the real engine (checked before each piece).
    """

    kind: EngineKind = "local"
    model_name = "fake-model"
    batched = True
    load_seconds: float | None = 0.0

    def __init__(self, reply: str = "Hello from the fake model.", *, context_length: int = 64,
                 delay: float = 0.0, fail_after: int | None = None) -> None:
        self.reply = reply
        self.context_length = context_length
        self.delay = delay
        self.fail_after = fail_after
        self.ready = True
        self.load_error: str | None = None
        self.queue_full = False
        self.queued = 0
        self.backlog_now = Backlog()  # what backlog() answers (a test may change it)
        self.stats: dict[str, int] = {"steps": 0}
        self.submitted: list[GenerationRequest] = []
        self.handles: list[GenerationHandle] = []
        self.started = False
        self.defaults = SamplingDefaults()  # what sampling_defaults() answers (a test may change it)
        self.encoded: list[list[dict[str, str]]] = []  # every message list given to encode_chat
        self.features = ALL_FEATURES  # what it claims to honour (a test may narrow it)

    def start(self, on_load_failure: Callable[[str], None] | None = None) -> None:
        self.started = True

    def stop(self, timeout: float = 10.0) -> None:
        self.started = False

    def wait_ready(self, timeout: float) -> bool:
        return self.ready

    def backlog(self) -> Backlog:
        return self.backlog_now

    def stop_token_ids(self) -> frozenset[int]:
        return frozenset({0})

    def sampling_defaults(self) -> SamplingDefaults:
        return self.defaults

    def encode_chat(self, messages: Sequence[Message], tools: Sequence[Any] = ()) -> list[int]:
        self.encoded.append([dict(m) for m in messages])
        return [len(word) for m in messages for word in m["content"].split()] + [0]

    def encode_text(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]

    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams, *,
               messages: Sequence[Message] | None = None, prompt_text: str | None = None,
               trace_headers: Mapping[str, str] | None = None) -> GenerationHandle:
        if len(prompt_ids) + params.max_tokens > self.context_length:
            raise ContextLengthError(len(prompt_ids), params.max_tokens, self.context_length)
        if self.queue_full:
            raise QueueFullError("1 requests are already waiting")
        require_features(self.features, params)
        request = GenerationRequest(request_id, prompt_ids, params)
        handle = GenerationHandle(request, Channel(), on_cancel=lambda: None)
        self.submitted.append(request)
        self.handles.append(handle)
        if self.delay:
            gevent.spawn(self._play, handle)
        else:
            self._play(handle)
        return handle

    def pieces(self, max_tokens: int) -> list[str]:
        words = self.reply.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)][:max_tokens]

    @staticmethod
    def logprobs(piece: str, params: SamplingParams) -> tuple[TokenLogprob, ...]:
        """One entry per piece: logprob -0.25, and alternatives -1, -2, ... named ``alt1``, ``alt2``, ..."""
        if not params.logprobs:
            return ()
        top = tuple(TokenLogprob(piece if i == 0 else f"alt{i}", -0.25 if i == 0 else -float(i),
                                 tuple((piece if i == 0 else f"alt{i}").encode())) for i in range(params.top_logprobs))
        return (TokenLogprob(piece, -0.25, tuple(piece.encode()), top),)

    def _play(self, handle: GenerationHandle) -> None:
        params, prompt = handle.request.params, len(handle.request.prompt_ids)
        pieces = self.pieces(params.max_tokens)
        structured = params.structured
        reader = None  # tools offered: the reply is read for calls as the local engine reads it
        if structured is not None and structured.may_call:
            reader = ToolCallReader(ToolSyntax("json"), frozenset(t.name for t in structured.tools),
                                    structured.forces_call)
        sent = 0
        for piece in pieces:
            if self.delay:
                gevent.sleep(self.delay)
            if handle.cancelled:
                handle.cancel_seen_at_token = sent
                handle.channel.put(Finished(handle.cancel_reason, Usage(prompt, sent), 0.01, 0.02))
                return
            if self.fail_after is not None and sent >= self.fail_after:
                handle.channel.put(Finished("error", Usage(prompt, sent), 0.01, 0.02, error="boom"))
                return
            for event in reader.feed(piece) if reader is not None else [TextDelta(piece, self.logprobs(piece, params))]:
                handle.channel.put(event)
            sent += 1
        reason = "length" if len(pieces) == params.max_tokens and len(pieces) < len(self.reply.split(" ")) else "stop"
        if reader is not None:
            for event in reader.finish():
                handle.channel.put(event)
            reason = "tool_calls" if reader.called and reason == "stop" else reason
        handle.channel.put(Finished(reason, Usage(prompt, sent), 0.01, 0.02))


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01):
    """Yield to other greenlets until ``predicate()`` is truthy; returns its last value."""
    deadline = gevent.get_hub().loop.now() + timeout
    while not (value := predicate()) and gevent.get_hub().loop.now() < deadline:
        gevent.sleep(interval)
    return value


# The smallest OpenAI chat completion body for the fake engine's model.
CHAT = {"model": FakeEngine.model_name, "messages": [{"role": "user", "content": "hi"}]}
