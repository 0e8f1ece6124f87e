"""OpenAI wire shapes: ``chat.completion`` / ``text_completion`` objects and their stream chunks.

Streams are ``data: {chunk}`` lines ending with ``data: [DONE]``; an error after
the stream began is one ``data: {"error": ...}`` line, and ``[DONE]`` still follows.
A request for ``n`` answers has ``n`` choices (``index`` 0 to n-1); streamed, their
chunks interleave as the tokens come, each chunk carrying one choice.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import gevent
from gevent.queue import Queue

from .errors import ApiError
from .generation.tool_calls import ToolCallDelta
from .generation.types import Finished, TextDelta, TokenLogprob
from .services.chat import ChatResult, ChatStream, Heartbeat, StreamItem
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


def _summed_usage(usages: Sequence[dict[str, int]]) -> dict[str, int]:
    """The usage of ``n`` answers to one prompt: the prompt counted once (as OpenAI counts it), the
    completions added up."""
    prompt = usages[0]["prompt_tokens"]
    completion = sum(u["completion_tokens"] for u in usages)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_logprobs(entries: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    """A chat choice's ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}], "refusal": null}``."""
    if entries is None:
        return None
    return {"content": [entry.as_dict() for entry in entries], "refusal": None}


def text_logprobs(entries: Sequence[TokenLogprob] | None, offset: int = 0) -> dict[str, Any] | None:
    """A text choice's ``logprobs`` (the legacy shape): parallel lists of tokens, their log-probabilities,
    ``{token: logprob}`` of the alternatives, and each token's character offset in the choice's text
    (counted over the tokens' own text, from ``offset``)."""
    if entries is None:
        return None
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries], "text_offset": offsets}


def chat_completion(results: Sequence[ChatResult], model: str) -> dict[str, Any]:
    first = results[0]
    return {
        "id": CHAT_PREFIX + first.message_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": first.model or model,  # the model that generated the text (a fallback's, when degraded)
        **_fingerprint(first.engine),
        "choices": [{
            "index": index,
            "message": _message(result),
            "logprobs": chat_logprobs(result.logprobs),
            "finish_reason": result.finish_reason,
        } for index, result in enumerate(results)],
        "usage": _summed_usage([r.usage for r in results]),
    }


def _message(result: ChatResult) -> dict[str, Any]:
    """The answer: its text, or (when the model called functions) its tool calls and the text beside them."""
    if not result.tool_calls:
        return {"role": "assistant", "content": result.response, "refusal": None}
    return {"role": "assistant", "content": result.response or None, "refusal": None, "tool_calls": result.tool_calls}


def text_completion(results: Sequence[ChatResult], model: str, echo_prompt: str = "") -> dict[str, Any]:
    first = results[0]
    return {
        "id": TEXT_PREFIX + first.message_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": first.model or model,
        **_fingerprint(first.engine),
        "choices": [{"index": index, "text": echo_prompt + result.response,
                     "logprobs": text_logprobs(result.logprobs, len(echo_prompt)),
                     "finish_reason": result.finish_reason} for index, result in enumerate(results)],
        "usage": _summed_usage([r.usage for r in results]),
    }


class _ChunkStream:
    """Turns the :class:`ChatStream` of each of a request's answers into OpenAI stream chunks; subclasses
    shape one choice."""

    object_name = ""
    id_prefix = ""

    def __init__(self, streams: Sequence[ChatStream], model: str, include_usage: bool) -> None:
        self.streams = list(streams)
        self.stream = self.streams[0]  # the first answer names the completion (its id, the engine headers)
        self.model = model
        self.include_usage = include_usage
        self.created = int(time.time())
        self.logprobs = self.stream.request.logprobs

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
        for stream in self.streams:
            stream.close()

    def opening(self) -> Iterator[str]:
        return iter(())

    def choice(self, index: int, delta: TextDelta | None, finish_reason: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def tool_choice(self, index: int, delta: ToolCallDelta) -> dict[str, Any]:
        """A tool call's piece, as OpenAI streams it: index, id, type and name first, then argument fragments."""
        call: dict[str, Any] = {"index": delta.index}
        if delta.name is not None:
            call.update({"id": delta.id, "type": "function", "function": {"name": delta.name, "arguments": ""}})
            if delta.arguments:
                call["function"]["arguments"] = delta.arguments
        else:
            call["function"] = {"arguments": delta.arguments}
        return {"index": index, "delta": {"tool_calls": [call]}, "logprobs": None, "finish_reason": None}

    def __iter__(self) -> Iterator[str]:
        yield sse_comment("stream open")
        yield from self.opening()
        usages: list[dict[str, int]] = []
        items = self._items()
        for index, item in items:
            if isinstance(item, Heartbeat):
                yield sse_comment("ping")
            elif isinstance(item, TextDelta):
                yield self.chunk([self.choice(index, item, None)])
            elif isinstance(item, ToolCallDelta):
                yield self.chunk([self.tool_choice(index, item)])
            elif isinstance(item, Finished):
                stream = self.streams[index]
                if item.finish_reason == "error":
                    error = ApiError(500, "generation_failed", item.error or "generation failed")
                    yield sse_event(error.openai_body())
                    break
                if stream.interrupted is not None:  # e.g. shutting_down: stored as cancelled
                    interrupted = stream.interrupted
                    yield sse_event(ApiError(503, interrupted.code, interrupted.message).openai_body())
                    break
                yield self.chunk([self.choice(index, None, item.finish_reason)])
                usages.append(item.usage.as_dict())
        else:
            if self.include_usage:
                yield self.chunk([], _summed_usage(usages))
        items.close()  # after an error: the other answers are cancelled
        yield sse_event("[DONE]")

    def _items(self) -> Generator[tuple[int, StreamItem], None, None]:
        """Each answer's items with its index, as they come; the answers still running when the reader stops
        are cancelled (and stored) on the way out."""
        if len(self.streams) == 1:
            for item in self.streams[0]:
                yield 0, item
            return
        queue: Queue[tuple[int, StreamItem | None]] = Queue()

        def pump(index: int, stream: ChatStream) -> None:
            try:
                for item in stream:
                    queue.put((index, item))
            finally:
                queue.put((index, None))

        pumps = [gevent.spawn(pump, index, stream) for index, stream in enumerate(self.streams)]
        running = len(pumps)
        try:
            while running:
                index, item = queue.get()
                if item is None:
                    running -= 1
                else:
                    yield index, item
        finally:
            gevent.killall(pumps)  # a pump cut short cancels its answer and waits for the engine's finish


class ChatChunkStream(_ChunkStream):
    object_name = "chat.completion.chunk"
    id_prefix = CHAT_PREFIX

    def opening(self) -> Iterator[str]:
        for index in range(len(self.streams)):
            yield self.chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                               "finish_reason": None}])

    def choice(self, index: int, delta: TextDelta | None, finish_reason: str | None) -> dict[str, Any]:
        content = {} if delta is None else {"content": delta.text}
        logprobs = chat_logprobs(delta.logprobs) if delta is not None and self.logprobs else None
        return {"index": index, "delta": content, "logprobs": logprobs, "finish_reason": finish_reason}


class TextChunkStream(_ChunkStream):
    object_name = "text_completion"
    id_prefix = TEXT_PREFIX

    def __init__(self, streams: Sequence[ChatStream], model: str, include_usage: bool, echo_prompt: str = "") -> None:
        super().__init__(streams, model, include_usage)
        self.echo_prompt = echo_prompt
        self.offsets = [len(echo_prompt)] * len(self.streams)  # each choice's text so far, in characters

    def opening(self) -> Iterator[str]:
        if self.echo_prompt:
            for index in range(len(self.streams)):
                yield self.chunk([{"index": index, "text": self.echo_prompt, "logprobs": None,
                                   "finish_reason": None}])

    def choice(self, index: int, delta: TextDelta | None, finish_reason: str | None) -> dict[str, Any]:
        logprobs = None
        if delta is not None and self.logprobs:
            logprobs = text_logprobs(delta.logprobs, self.offsets[index])
            self.offsets[index] += sum(len(entry.token) for entry in delta.logprobs)
        return {"index": index, "text": delta.text if delta is not None else "", "logprobs": logprobs,
                "finish_reason": finish_reason}


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
