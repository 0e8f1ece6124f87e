"""The one interface where the service meets an engine.

Three engines implement :class:`Engine`: the local model (:class:`llm_api.local_model.LocalEngine`), an
upstream OpenAI-compatible server (:class:`llm_api.routing.UpstreamEngine`), and the router that puts a
chain of them behind one object (:class:`llm_api.routing.EngineRouter`); the HTTP tests use a fake. The
services see only this protocol, so any of them serves any route. mypy checks each implementation where
it is passed as an ``Engine`` (``build_router``, ``create_app``, the test fixtures).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

from .backlog import Backlog
from .structured import ToolFunction
from .tool_calls import ToolCallDelta
from .types import Finished, GenerationRequest, SamplingDefaults, SamplingParams, TextDelta

EngineKind = Literal["local", "upstream", "router"]
Message = Mapping[str, Any]  # {"role": ..., "content": ...}; assistant tool_calls, a tool turn's tool_call_id
Event = TextDelta | ToolCallDelta | Finished


class GenerationStream(Protocol):
    """One admitted request, from the caller's side: read its events, cancel it, close it when done."""

    @property
    def request(self) -> GenerationRequest: ...

    @property
    def submitted_at(self) -> float:
        """``time.monotonic()`` when the request was admitted."""

    @property
    def cancel_seen_at_token(self) -> int | None:
        """Completion tokens when the engine saw the cancel flag (None until it did)."""

    @property
    def engine_name(self) -> str:
        """The named engine of a chain that answers it; empty for a bare engine."""

    @property
    def model_name(self) -> str: ...

    @property
    def degraded(self) -> bool:
        """Answered by a fallback engine, or the static degraded answer."""

    def next_event(self, timeout: float | None) -> Event | None:
        """The next event, or None after ``timeout`` seconds without one (time for a heartbeat).
        A stream ends with exactly one :class:`Finished`."""

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop generating; the stream ends with ``Finished(reason)`` (``cancelled`` or ``timeout``)."""

    def close(self) -> None:
        """The caller reads no more events (release what wakes it)."""


class Engine(Protocol):
    """A source of generations: facts about its model, readiness, life cycle, tokenizing and admission."""

    @property
    def kind(self) -> EngineKind: ...

    # ---- the model ---------------------------------------------------------------------------------
    @property
    def model_name(self) -> str: ...

    @property
    def context_length(self) -> int:
        """Prompt plus completion tokens the model takes (0 until a local model has loaded)."""

    def stop_token_ids(self) -> frozenset[int]:
        """Token ids that end a turn (empty where the engine does not generate from our ids)."""

    def sampling_defaults(self) -> SamplingDefaults:
        """Temperature and top_p for requests that leave them out (the model's recommended values)."""

    @property
    def features(self) -> frozenset[str]:
        """The optional request features it honours (:mod:`llm_api.generation.features`); a request using
        another is refused, never served without it."""

    # ---- readiness and counters ----------------------------------------------------------------------
    @property
    def ready(self) -> bool: ...

    @property
    def load_error(self) -> str | None:
        """Why the model could not be loaded, once that is known."""

    @property
    def load_seconds(self) -> float | None: ...

    @property
    def batched(self) -> bool:
        """Requests are decoded together (continuous batching)."""

    @property
    def queued(self) -> int:
        """Requests admitted but not yet taken up by the engine."""

    def backlog(self) -> Backlog:
        """The work queued ahead of a request submitted now, and the measured decode rate: the facts for an
        estimate of its wait (:mod:`llm_api.generation.backlog`). An engine without a queue of its own (an
        upstream) reports an empty one."""

    @property
    def stats(self) -> Mapping[str, int]:
        """Counters for /readyz and the metrics (steps, tokens, requests, cancelled, running, errors)."""

    # ---- life cycle ------------------------------------------------------------------------------------
    def start(self, on_load_failure: Callable[[str], None] | None = None) -> None:
        """Begin loading or discovery in the background (idempotent; returns at once)."""

    def stop(self, timeout: float = 10.0) -> None: ...

    def wait_ready(self, timeout: float) -> bool:
        """Wait (cooperatively) until ready or failed; True if ready."""

    # ---- work ----------------------------------------------------------------------------------------
    def encode_chat(self, messages: Sequence[Message], tools: Sequence[ToolFunction] = ()) -> list[int]:
        """Messages (and the tools the model may call) → prompt ids with the model's chat format (an estimate
        for an upstream)."""

    def encode_text(self, text: str) -> list[int]:
        """Plain text → ids, without a chat template."""

    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams, *,
               messages: Sequence[Message] | None = None, prompt_text: str | None = None,
               trace_headers: Mapping[str, str] | None = None) -> GenerationStream:
        """Admit a request or raise at once (:mod:`llm_api.generation.errors`). An engine that takes text
        (an upstream) uses ``messages`` or ``prompt_text``; one that generates from ids uses ``prompt_ids``.
        ``trace_headers`` are the W3C trace context (``traceparent``, ``tracestate``) of the caller's model
        call: an engine that calls another service sends them along; the local engine has no use for them.
        ``params.structured`` the engine cannot honour raises :class:`~.structured.UnsupportedFieldError`."""
