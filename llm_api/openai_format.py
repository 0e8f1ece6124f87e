"""OpenAI wire shapes: ``chat.completion`` / ``text_completion`` objects and their stream chunks.

Streams are ``data: {chunk}`` lines ending with ``data: [DONE]``; an error after
the stream began is one ``data: {"error": ...}`` line, and ``[DONE]`` still follows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ApiError
from .generation.tool_calls import ToolCallDelta
from .generation.types import Finished, TextDelta
from .services.chat import ChatResult, ChatStream, Heartbeat
from .streaming import sse_comment, sse_event

if TYPE_CHECKING:
    from .routing.models import ModelInfo

CHAT_PREFIX = "chatcmpl-"
TEXT_PREFIX = "cmpl-"


def _fingerprint(engine: str) -> dict[str, str]:
    """``system_fingerprint``: the name of the engine that answered (docs/degradation.md)."""
    return {"system_fingerprint": engine} if engine else {}


def _usage(usage: dict[str, int]) -> dict[str, int]:
    return {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def chat_completion(result: ChatResult, model: str) -> dict[str, Any]:
    return {
        "id": CHAT_PREFIX + result.message_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model or model,  # the model that generated the text (a fallback's, when degraded)
        **_fingerprint(result.engine),
        "choices": [{
            "index": 0,
            "message": _message(result),
            "logprobs": None,
            "finish_reason": result.finish_reason,
        }],
        "usage": _usage(result.usage),
    }


def _message(result: ChatResult) -> dict[str, Any]:
    """The answer: its text, or (when the model called functions) its tool calls and the text beside them."""
    if not result.tool_calls:
        return {"role": "assistant", "content": result.response, "refusal": None}
    return {"role": "assistant", "content": result.response or None, "refusal": None, "tool_calls": result.tool_calls}


def text_completion(result: ChatResult, model: str, echo_prompt: str = "") -> dict[str, Any]:
    return {
        "id": TEXT_PREFIX + result.message_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": result.model or model,
        **_fingerprint(result.engine),
        "choices": [{"index": 0, "text": echo_prompt + result.response, "logprobs": None,
                     "finish_reason": result.finish_reason}],
        "usage": _usage(result.usage),
    }


class _ChunkStream:
    """Turns a :class:`ChatStream` into OpenAI stream chunks; subclasses shape one choice."""

    object_name = ""
    id_prefix = ""

    def __init__(self, stream: ChatStream, model: str, include_usage: bool) -> None:
        self.stream = stream
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time())

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        engine, model, _ = self.stream.engine  # the engine generating now (after a fallback: the fallback)
        model = model or self.model
        body: dict[str, Any] = {"id": self.id_prefix + self.stream.message_id, "object": self.object_name,
                                "created": self.created, "model": model, **_fingerprint(engine),
                                "choices": choices}
        if self.include_usage:
            body["usage"] = usage
        return sse_event(body)

    def close(self) -> None:
        """Called by the WSGI server when the response ends, read or not."""
        self.stream.close()

    def opening(self) -> Iterator[str]:
        return iter(())

    def choice(self, delta_text: str | None, finish_reason: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def tool_choice(self, delta: ToolCallDelta) -> dict[str, Any]:
        """A tool call's piece, as OpenAI streams it: index, id, type and name first, then argument fragments."""
        call: dict[str, Any] = {"index": delta.index}
        if delta.name is not None:
            call.update({"id": delta.id, "type": "function", "function": {"name": delta.name, "arguments": ""}})
            if delta.arguments:
                call["function"]["arguments"] = delta.arguments
        else:
            call["function"] = {"arguments": delta.arguments}
        return {"index": 0, "delta": {"tool_calls": [call]}, "logprobs": None, "finish_reason": None}

    def __iter__(self) -> Iterator[str]:
        yield sse_comment("stream open")
        yield from self.opening()
        for item in self.stream:
            if isinstance(item, Heartbeat):
                yield sse_comment("ping")
            elif isinstance(item, TextDelta):
                yield self.chunk([self.choice(item.text, None)])
            elif isinstance(item, ToolCallDelta):
                yield self.chunk([self.tool_choice(item)])
            elif isinstance(item, Finished):
                if item.finish_reason == "error":
                    error = ApiError(500, "generation_failed", item.error or "generation failed")
                    yield sse_event(error.openai_body())
                elif self.stream.interrupted is not None:  # e.g. shutting_down: stored as cancelled
                    interrupted = self.stream.interrupted
                    yield sse_event(ApiError(503, interrupted.code, interrupted.message).openai_body())
                else:
                    yield self.chunk([self.choice(None, item.finish_reason)])
                    if self.include_usage:
                        yield self.chunk([], _usage(item.usage.as_dict()))
        yield sse_event("[DONE]")


class ChatChunkStream(_ChunkStream):
    object_name = "chat.completion.chunk"
    id_prefix = CHAT_PREFIX

    def opening(self) -> Iterator[str]:
        yield self.chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                           "finish_reason": None}])

    def choice(self, delta_text: str | None, finish_reason: str | None) -> dict[str, Any]:
        delta = {} if delta_text is None else {"content": delta_text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


class TextChunkStream(_ChunkStream):
    object_name = "text_completion"
    id_prefix = TEXT_PREFIX

    def __init__(self, stream: ChatStream, model: str, include_usage: bool, echo_prompt: str = "") -> None:
        super().__init__(stream, model, include_usage)
        self.echo_prompt = echo_prompt

    def opening(self) -> Iterator[str]:
        if self.echo_prompt:
            yield self.chunk([self.choice(self.echo_prompt, None)])

    def choice(self, delta_text: str | None, finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "text": delta_text or "", "logprobs": None, "finish_reason": finish_reason}


def model_list(models: Sequence[ModelInfo], created: int) -> dict[str, Any]:
    """OpenAI's model objects, plus each model's kind (``chat`` or ``embedding``), its context length (per input
    for an embedding model; ``max_model_len`` as vLLM names it) and an embedding model's dimensions."""
    data = []
    for model in models:
        entry: dict[str, Any] = {"id": model.id, "object": "model", "created": created, "owned_by": "llm_api",
                                 "kind": model.kind, "context_length": model.context_length,
                                 "max_model_len": model.context_length}
        if model.dimensions is not None:
            entry["dimensions"] = model.dimensions
        data.append(entry)
    return {"object": "list", "data": data}
