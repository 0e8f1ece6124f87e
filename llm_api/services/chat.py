"""Chat: turns a validated request into stored turns and engine work, and the engine's events into results.

Plain Python: no Flask here. Errors the caller made are raised before any
generation starts. The user's turn is stored before generation starts, and
every answer, finished, failed or cancelled, is stored and logged exactly once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ..engine.errors import ContextLengthError, EngineError, GenerationError
from ..engine.sequence import GenerationHandle
from ..engine.types import Finished, SamplingParams, TextDelta, Usage
from ..storage import Conversation, ConversationNotFound, ConversationStore, Exchange, Message, StorageError
from .history import ChatMessage, fit_to_context, prompt_history

log = logging.getLogger("llm_api.exchange")

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
TITLE_LENGTH = 80
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
    ``raw=True`` the ``prompt`` text is tokenized as is (``/v1/completions``).

    With ``conversation_id`` the stored history comes first and ``messages`` holds
    only the new turn. ``fit_history`` drops the oldest turns that do not fit the
    context instead of refusing the request.
    """

    messages: list[ChatMessage]
    prompt: str  # what the log calls the prompt: the newest user turn, or the raw text
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    conversation_id: str | None = None
    raw: bool = False
    ignore_eos: bool = False
    fit_history: bool = False

    @classmethod
    def from_messages(cls, messages: list[ChatMessage], **fields: Any) -> ChatRequest:
        """OpenAI's shape: the whole conversation; the newest user turn is what gets logged as the prompt."""
        prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
        return cls(messages=messages, prompt=prompt, **fields)

    @classmethod
    def from_turn(cls, prompt: str, history: list[ChatMessage], **fields: Any) -> ChatRequest:
        """The lesson's shape: earlier ``history`` (or a stored conversation) plus the new user ``prompt``."""
        return cls(messages=[*history, {"role": "user", "content": prompt}], prompt=prompt, fit_history=True,
                   **fields)


@dataclass(frozen=True)
class Turn:
    """Where one exchange is stored: its conversation, the user's message, and the answer's id."""

    conversation_id: str
    user_message_id: str
    message_id: str
    owner: str
    created_conversation: bool
    written_ids: tuple[str, ...]
    dropped_turns: int
    prompt_messages: list[ChatMessage] = field(default_factory=list)


@dataclass
class ChatResult:
    message_id: str
    response: str
    history: list[ChatMessage]
    finish_reason: str
    usage: dict[str, int]
    time: str
    conversation_id: str
    dropped_turns: int = 0
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

    def __init__(self, service: ChatService, request: ChatRequest, handle: GenerationHandle, turn: Turn,
                 heartbeat_seconds: float) -> None:
        self.message_id = turn.message_id
        self.request = request
        self.turn = turn
        self._service = service
        self._handle = handle
        self._heartbeat = heartbeat_seconds
        self.text = ""
        self.deltas = 0
        self.finished: Finished | None = None

    @property
    def conversation_id(self) -> str:
        return self.turn.conversation_id

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

    def cancel(self) -> None:
        """Ask the engine to stop; the iteration then ends with a ``cancelled`` finish."""
        self._handle.cancel()

    def _take(self, event: TextDelta | Finished) -> None:
        if isinstance(event, TextDelta):
            self.text += event.text
            self.deltas += 1
        else:
            self.finished = event
            self._service.record(self.turn, self.request, self.text, event)

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
    def __init__(self, engine: ChatEngine, store: ConversationStore, *, default_max_tokens: int,
                 heartbeat_seconds: float, log_prompts: bool) -> None:
        self._engine = engine
        self._store = store
        self._default_max_tokens = default_max_tokens
        self._heartbeat = heartbeat_seconds
        self._log_prompts = log_prompts

    # ---- generating --------------------------------------------------------------------------------
    def complete(self, request: ChatRequest, owner: str = "") -> ChatResult:
        """Generate the whole answer and return it."""
        stream = self.open_stream(request, owner)
        for _ in stream:
            pass
        assert stream.finished is not None
        if stream.finished.finish_reason == "error":
            raise GenerationError(stream.finished.error or "generation failed")
        return ChatResult(
            message_id=stream.message_id,
            response=stream.text,
            history=[*stream.turn.prompt_messages, {"role": "assistant", "content": stream.text}],
            finish_reason=stream.finished.finish_reason,
            usage=stream.finished.usage.as_dict(),
            time=_now().strftime(TIME_FORMAT),
            conversation_id=stream.conversation_id,
            dropped_turns=stream.turn.dropped_turns,
        )

    def open_stream(self, request: ChatRequest, owner: str = "") -> ChatStream:
        """Admit the request: build and check the prompt, store the user's turn, hand it to the engine.

        Raises before anything is stored when the caller made an error; an engine
        that refuses the work (queue full, not ready) leaves nothing stored either.
        """
        messages = self._stored_history(request.conversation_id, owner) + request.messages
        messages, dropped, prompt_ids = self._prompt(request, messages)
        params = SamplingParams(max_tokens=self._max_tokens(request, prompt_ids), temperature=request.temperature,
                                top_p=request.top_p, seed=request.seed, stop=request.stop,
                                ignore_eos=request.ignore_eos)
        turn = self._store_user_turn(request, owner, dropped, messages)
        try:
            handle = self._engine.submit(turn.message_id, prompt_ids, params)
        except EngineError:
            self._forget_turn(turn)
            raise
        return ChatStream(self, request, handle, turn, self._heartbeat)

    def _stored_history(self, conversation_id: str | None, owner: str) -> list[ChatMessage]:
        if conversation_id is None:
            return []
        if self._store.get_conversation(conversation_id, owner) is None:
            raise ConversationNotFound(conversation_id)
        return prompt_history(self._store.history(conversation_id))

    def _prompt(self, request: ChatRequest, messages: list[ChatMessage]) -> tuple[list[ChatMessage], int, list[int]]:
        """The messages the model sees, how many old turns were dropped to fit, and the prompt's token ids."""
        if request.raw:
            return messages, 0, self._engine.encode_text(request.prompt)
        if not request.fit_history:
            return messages, 0, self._engine.encode_chat(messages)
        context = self._engine.context_length
        reserve = request.max_tokens or min(self._default_max_tokens, context // 2)
        encoded: dict[int, list[int]] = {}

        def fits(candidate: list[ChatMessage]) -> bool:
            encoded[len(candidate)] = self._engine.encode_chat(candidate)
            return len(encoded[len(candidate)]) + reserve <= context

        messages, dropped = fit_to_context(messages, fits)
        return messages, dropped, encoded[len(messages)]

    def _max_tokens(self, request: ChatRequest, prompt_ids: list[int]) -> int:
        context = self._engine.context_length
        if request.max_tokens is not None:
            return request.max_tokens  # the engine refuses prompt + max_tokens beyond the context
        max_tokens = min(self._default_max_tokens, context - len(prompt_ids))
        if max_tokens < 1:
            raise ContextLengthError(len(prompt_ids), 1, context)
        return max_tokens

    # ---- storing -----------------------------------------------------------------------------------
    def _store_user_turn(self, request: ChatRequest, owner: str, dropped: int,
                         prompt_messages: list[ChatMessage]) -> Turn:
        """Write the user's turn (and, for a new conversation, the history the caller sent) now."""
        now = _now()
        new_conversation = request.conversation_id is None
        conversation_id = request.conversation_id or uuid.uuid4().hex
        given = request.messages or [{"role": "user", "content": request.prompt}]
        to_store = given if new_conversation else given[-1:]
        rows = _linked_messages(to_store, conversation_id, owner, now)
        if new_conversation:
            title = " ".join(request.prompt.split())[:TITLE_LENGTH]
            self._store.create_conversation(Conversation(conversation_id, title, now, now, owner), rows)
        else:
            self._store.add_messages(conversation_id, rows)
        user_message = next((m for m in reversed(rows) if m.role == "user"), rows[-1])
        return Turn(conversation_id, user_message.id, uuid.uuid4().hex, owner, new_conversation,
                    tuple(m.id for m in rows), dropped, prompt_messages)

    def _forget_turn(self, turn: Turn) -> None:
        """The engine refused the work: take back what this request stored."""
        try:
            if turn.created_conversation:
                self._store.delete_conversation(turn.conversation_id, turn.owner)
            else:
                self._store.delete_messages(turn.written_ids)
        except StorageError:
            log.exception("could not remove the refused turn %s", turn.user_message_id)

    def record(self, turn: Turn, request: ChatRequest, text: str, finished: Finished) -> None:
        """Store and log one answer."""
        answer = Message(
            id=turn.message_id, conversation_id=turn.conversation_id, role="assistant", content=text,
            created_at=_now(), owner=turn.owner, reply_to=turn.user_message_id,
            finish_reason=finished.finish_reason, usage=finished.usage.as_dict(),
            time_to_first_token=finished.time_to_first_token, total_time=finished.total_time,
            params=_params(request), model=self._engine.model_name, error=finished.error,
        )
        try:
            self._store.add_messages(turn.conversation_id, [answer])
        except StorageError as exc:  # the client still gets its answer; the log keeps the exchange
            log.error("message %s: could not store the answer: %s", turn.message_id, exc)
        self._log(answer, request)

    def _log(self, answer: Message, request: ChatRequest) -> None:
        usage = answer.usage or {}
        ttft = "-" if answer.time_to_first_token is None else f"{answer.time_to_first_token:.3f}s"
        line = (f"exchange time={answer.created_at.strftime(TIME_FORMAT)} message_id={answer.id} "
                f"conversation_id={answer.conversation_id} "
                f"prompt_tokens={usage.get('prompt_tokens')} completion_tokens={usage.get('completion_tokens')} "
                f"ttft={ttft} total={answer.total_time or 0:.3f}s finish_reason={answer.finish_reason}")
        if answer.error:
            line += f" error={answer.error!r}"
        if self._log_prompts:
            line += f" prompt={request.prompt!r}"
        log.info(line)

    # ---- reading -----------------------------------------------------------------------------------
    def list_exchanges(self, limit: int, before: str | None, owner: str | None = "") -> list[Exchange]:
        return self._store.list_exchanges(owner, limit, before)

    def find_message(self, message_id: str, owner: str | None = "") -> Message | None:
        return self._store.get_message(message_id, owner)


def _linked_messages(messages: Sequence[ChatMessage], conversation_id: str, owner: str,
                     now: datetime) -> list[Message]:
    """Rows for the caller's messages; each assistant message answers the user message before it."""
    rows: list[Message] = []
    last_user: str | None = None
    for message in messages:
        message_id = uuid.uuid4().hex
        reply_to = last_user if message["role"] == "assistant" else None
        rows.append(Message(message_id, conversation_id, message["role"], message["content"], now, owner,
                            reply_to=reply_to))
        last_user = message_id if message["role"] == "user" else None
    return rows


def _now() -> datetime:
    return datetime.now(UTC)


def _params(request: ChatRequest) -> dict[str, Any]:
    return {"max_tokens": request.max_tokens, "temperature": request.temperature, "top_p": request.top_p,
            "seed": request.seed, "stop": list(request.stop)}
