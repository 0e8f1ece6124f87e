"""Chat: turns a validated request into engine work, and the engine's events into results.

Plain Python: no Flask here. Errors the caller made are raised before any
generation starts; every exchange, finished, failed or cancelled, is stored
and logged exactly once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from ..engine.errors import ContextLengthError, GenerationError
from ..engine.sequence import GenerationHandle
from ..engine.types import Finished, SamplingParams, TextDelta, Usage
from ..storage import ExchangeRecord, MessageStore

log = logging.getLogger("llm_api.exchange")

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_CANCEL_DRAIN_SECONDS = 5.0


class ChatEngine(Protocol):
    """What the service needs from an engine (the real one, or a fake in HTTP tests)."""

    model_name: str
    context_length: int

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]: ...

    def encode_text(self, text: str) -> list[int]: ...

    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> GenerationHandle: ...


@dataclass(frozen=True)
class ChatRequest:
    """One generation request. ``messages`` go through the model's chat template; with
    ``raw=True`` the ``prompt`` text is tokenized as is (``/v1/completions``)."""

    messages: list[dict[str, str]]
    prompt: str  # what the exchange log and store call the prompt: the newest user turn, or the raw text
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    conversation_id: str | None = None
    raw: bool = False
    ignore_eos: bool = False

    @classmethod
    def from_messages(cls, messages: list[dict[str, str]], **fields: Any) -> ChatRequest:
        """OpenAI's shape: the whole conversation; the newest user turn is what gets logged as the prompt."""
        prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
        return cls(messages=messages, prompt=prompt, **fields)

    @classmethod
    def from_turn(cls, prompt: str, history: list[dict[str, str]], **fields: Any) -> ChatRequest:
        """The lesson's shape: earlier ``history`` plus the new user ``prompt``."""
        return cls(messages=[*history, {"role": "user", "content": prompt}], prompt=prompt, **fields)


@dataclass
class ChatResult:
    message_id: str
    response: str
    history: list[dict[str, str]]
    finish_reason: str
    usage: dict[str, int]
    time: str
    conversation_id: str | None
    status: int = 200


@dataclass
class Heartbeat:
    """Nothing arrived for a while: the stream should send a comment so a gone client is noticed."""


StreamItem = TextDelta | Finished | Heartbeat


class ChatStream:
    """An admitted streamed request: iterate it for deltas, heartbeats and one ``Finished``.

    Closing it early (the client went away) cancels the generation and still
    stores the partial answer as ``cancelled``.
    """

    def __init__(self, service: ChatService, request: ChatRequest, handle: GenerationHandle,
                 heartbeat_seconds: float) -> None:
        self.message_id = handle.request.request_id
        self.request = request
        self._service = service
        self._handle = handle
        self._heartbeat = heartbeat_seconds
        self.text = ""
        self.deltas = 0
        self.finished: Finished | None = None

    def __iter__(self) -> Iterator[StreamItem]:
        try:
            while self.finished is None:
                event = self._handle.next_event(self._heartbeat)
                if event is None:
                    yield Heartbeat()
                    continue
                self._take(event)
                yield event
        finally:
            if self.finished is None:
                self._cancel_and_drain()
            self._handle.channel.close()

    def _take(self, event: TextDelta | Finished) -> None:
        if isinstance(event, TextDelta):
            self.text += event.text
            self.deltas += 1
        else:
            self.finished = event
            self._service.record(self.message_id, self.request, self.text, event)

    def _cancel_and_drain(self) -> None:
        self._handle.cancel()
        deadline = time.monotonic() + _CANCEL_DRAIN_SECONDS
        while self.finished is None and time.monotonic() < deadline:
            event = self._handle.next_event(max(0.0, deadline - time.monotonic()))
            if event is not None:
                self._take(event)
        if self.finished is None:  # the engine did not answer in time: store what the client saw
            log.warning("message %s: no finish from the engine after cancel", self.message_id)
            prompt_tokens = len(self._handle.request.prompt_ids)
            self._take(Finished("cancelled", Usage(prompt_tokens, self.deltas), None,
                                time.monotonic() - self._handle.submitted_at))


class ChatService:
    def __init__(self, engine: ChatEngine, store: MessageStore, *, default_max_tokens: int,
                 heartbeat_seconds: float, log_prompts: bool) -> None:
        self._engine = engine
        self._store = store
        self._default_max_tokens = default_max_tokens
        self._heartbeat = heartbeat_seconds
        self._log_prompts = log_prompts

    def complete(self, request: ChatRequest) -> ChatResult:
        """Generate the whole answer and return it."""
        stream = self.open_stream(request)
        for _ in stream:
            pass
        assert stream.finished is not None
        if stream.finished.finish_reason == "error":
            raise GenerationError(stream.finished.error or "generation failed")
        return ChatResult(
            message_id=stream.message_id,
            response=stream.text,
            history=self.updated_history(request, stream.text),
            finish_reason=stream.finished.finish_reason,
            usage=stream.finished.usage.as_dict(),
            time=_now(),
            conversation_id=request.conversation_id,
        )

    def open_stream(self, request: ChatRequest) -> ChatStream:
        """Admit the request (raising engine errors now, before any byte is sent)."""
        if request.raw:
            prompt_ids = self._engine.encode_text(request.prompt)
        else:
            prompt_ids = self._engine.encode_chat(request.messages)
        context = self._engine.context_length
        max_tokens = request.max_tokens
        if max_tokens is None:
            max_tokens = min(self._default_max_tokens, context - len(prompt_ids))
            if max_tokens < 1:
                raise ContextLengthError(len(prompt_ids), 1, context)
        params = SamplingParams(max_tokens=max_tokens, temperature=request.temperature, top_p=request.top_p,
                                seed=request.seed, stop=request.stop, ignore_eos=request.ignore_eos)
        handle = self._engine.submit(uuid.uuid4().hex, prompt_ids, params)
        return ChatStream(self, request, handle, self._heartbeat)

    @staticmethod
    def updated_history(request: ChatRequest, response: str) -> list[dict[str, str]]:
        return [*request.messages, {"role": "assistant", "content": response}]

    def list_messages(self, limit: int, before: str | None) -> list[ExchangeRecord]:
        return self._store.list(limit, before)

    def find_message(self, message_id: str) -> ExchangeRecord | None:
        return self._store.get(message_id)

    def record(self, message_id: str, request: ChatRequest, text: str, finished: Finished) -> None:
        """Store and log one exchange."""
        record = ExchangeRecord(
            message_id=message_id, time=_now(), prompt=request.prompt, response=text,
            finish_reason=finished.finish_reason, usage=finished.usage.as_dict(),
            model=self._engine.model_name, conversation_id=request.conversation_id,
            time_to_first_token=finished.time_to_first_token, total_time=finished.total_time,
            params=_params(request),
        )
        self._store.add(record)
        self._log(record, finished)

    def _log(self, record: ExchangeRecord, finished: Finished) -> None:
        ttft = "-" if record.time_to_first_token is None else f"{record.time_to_first_token:.3f}s"
        line = (f"exchange time={record.time} message_id={record.message_id} "
                f"prompt_tokens={record.usage['prompt_tokens']} "
                f"completion_tokens={record.usage['completion_tokens']} ttft={ttft} "
                f"total={record.total_time:.3f}s finish_reason={record.finish_reason}")
        if finished.error:
            line += f" error={finished.error!r}"
        if self._log_prompts:
            line += f" prompt={record.prompt!r}"
        log.info(line)


def _now() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)


def _params(request: ChatRequest) -> dict[str, Any]:
    return {"max_tokens": request.max_tokens, "temperature": request.temperature, "top_p": request.top_p,
            "seed": request.seed, "stop": list(request.stop)}
