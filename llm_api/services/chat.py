"""Chat: turns a validated request into stored turns and engine work, and the engine's events into results.

Plain Python: no Flask here. Errors the caller made are raised before any
generation starts. The user's turn is stored before generation starts, and
every answer, finished, failed or cancelled, is stored and logged exactly once.
"""

from __future__ import annotations

import logging
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from gevent.event import Event

from ..generation.errors import ContextLengthError, EngineError, GenerationError
from ..generation.protocol import Engine, GenerationStream
from ..generation.types import Finished, SamplingParams
from ..logging_setup import current_request_id
from ..storage import Conversation, ConversationNotFound, ConversationStore, Exchange, Message, StorageError
from ..time_format import format_time
from .chat_models import Admit, ChatRequest, ChatResult, ChatUnavailable, Reservation, Turn
from .chat_stream import ChatStream, Heartbeat, Interruption, StreamItem
from .history import ChatMessage, fit_to_context, prompt_history
from .output_guard import OutputGuard
from .shared_streams import LostAnswer
from .spans import GenerationTrace

__all__ = [  # the chat API in one place, for the views and renderers
    "Admit", "ChatRequest", "ChatResult", "ChatService", "ChatStream", "ChatUnavailable", "Heartbeat",
    "Interruption", "Reservation", "StreamItem", "Turn",
]

log = logging.getLogger("llm_api.exchange")

TITLE_LENGTH = 80
# The error stored with an answer whose worker stopped mid-answer (killed, crashed): see store_lost_answer.
LOST_ERROR = "generation_lost: the worker generating this answer stopped before it finished"


class ChatService:
    def __init__(self, engine: Engine, store: ConversationStore, *, default_max_tokens: int,
                 heartbeat_seconds: float, log_prompts: bool, request_timeout: float = 0.0,
                 on_answer: Callable[[Message, Finished], None] | None = None,
                 output_guard: OutputGuard | None = None,
                 choose: Callable[[str | None], Engine] | None = None) -> None:
        self._engine = engine  # the default chat model
        self._choose = choose  # the chat model a name selects (raises for an unknown one); None: only `engine`
        self._on_answer = on_answer  # sees every stored answer and how it finished (the metrics)
        self._output_guard = output_guard  # checks every answer's text before it is sent
        self._request_timeout = request_timeout
        self._store = store
        self._default_max_tokens = default_max_tokens
        self._heartbeat = heartbeat_seconds
        self._log_prompts = log_prompts
        # The answers being generated (weak: a stream whose response was dropped unread is not waited for).
        self._running: weakref.WeakSet[ChatStream] = weakref.WeakSet()
        self._idle = Event()
        self._idle.set()
        self._refusal: Interruption | None = None  # once set, open_stream admits nothing more

    # ---- running answers (graceful shutdown) -------------------------------------------------------
    @property
    def running(self) -> int:
        """How many answers are being generated now, on every route."""
        return len(self._running)

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until no answer is being generated; True if none is."""
        deadline = time.monotonic() + timeout
        while self._running:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._idle.wait(min(remaining, 0.5))
        return True

    def interrupt_all(self, code: str, message: str) -> int:
        """Admit no new answer, and :meth:`ChatStream.interrupt` every running one; returns how many."""
        self._refusal = Interruption(code, message)
        streams = list(self._running)
        for stream in streams:
            stream.interrupt(code, message)
        return len(streams)

    def stream_finished(self, stream: ChatStream) -> None:
        self._running.discard(stream)
        if not self._running:
            self._idle.set()

    # ---- generating --------------------------------------------------------------------------------
    def complete(self, request: ChatRequest, owner: str = "", admit: Admit | None = None) -> ChatResult:
        """Generate the whole answer and return it."""
        return self.complete_all(request, owner, admit)[0]

    def complete_all(self, request: ChatRequest, owner: str = "", admit: Admit | None = None) -> list[ChatResult]:
        """Generate the request's ``n`` answers (generated together) and return them in order."""
        streams = self.open_streams(request, owner, admit)
        try:
            for stream in streams:
                for _ in stream:
                    pass
            return [self._result(stream) for stream in streams]
        finally:
            for stream in streams:
                stream.close()  # after a failure: the answers not read yet are cancelled and stored

    def _result(self, stream: ChatStream) -> ChatResult:
        assert stream.finished is not None
        if stream.finished.finish_reason == "error":
            raise GenerationError(stream.finished.error or "generation failed")
        if stream.interrupted is not None:  # its text so far is stored as cancelled
            raise ChatUnavailable(stream.interrupted.code, stream.interrupted.message,
                                  {"message_id": stream.message_id, "conversation_id": stream.conversation_id})
        return ChatResult(
            message_id=stream.message_id,
            response=stream.text,
            history=[*stream.turn.prompt_messages, {"role": "assistant", "content": stream.text}],
            finish_reason=stream.finished.finish_reason,
            usage=stream.finished.usage.as_dict(),
            time=format_time(_now()),
            conversation_id=stream.conversation_id,
            dropped_turns=stream.turn.dropped_turns,
            engine=stream.finished.engine or "",
            degraded=stream.finished.degraded,
            model=stream.finished.model or stream.request.model or "",
            tool_calls=stream.tool_calls,
            logprobs=list(stream.logprobs) if stream.request.logprobs else None,
        )

    def open_stream(self, request: ChatRequest, owner: str = "", admit: Admit | None = None) -> ChatStream:
        """Admit the request: build and check the prompt, store the user's turn, hand it to the engine.

        Raises before anything is stored when the caller made an error; an engine
        that refuses the work (queue full, not ready) leaves nothing stored either.
        ``admit`` is called with the tokens the request may use (prompt plus
        ``max_tokens``) before anything is stored; it raises to refuse the request.
        After :meth:`interrupt_all` it raises :class:`ChatUnavailable` before anything is stored.
        """
        return self.open_streams(replace(request, n=1), owner, admit)[0]

    def open_streams(self, request: ChatRequest, owner: str = "", admit: Admit | None = None) -> list[ChatStream]:
        """:meth:`open_stream` for the request's ``n`` answers: one prompt, one stored user turn, one admission
        (for all of them), and ``n`` generations in the running batch, the i-th with seed ``seed + i`` (each
        its own random seed without one), each stored as its own answer to the user's turn."""
        if self._refusal is not None:
            raise ChatUnavailable(self._refusal.code, self._refusal.message)
        stored = self._stored_history(request.conversation_id, owner)
        engine = self._engine_for(request.model, stored)
        request = replace(request, model=engine.model_name)
        messages = prompt_history(stored) + request.messages
        messages, dropped, prompt_ids = self._prompt(engine, request, messages)
        request = self._with_model_defaults(engine, request)
        assert request.temperature is not None and request.top_p is not None
        params = _sampling_params(request, self._max_tokens(engine, request, prompt_ids))
        n = request.n
        admitted = admit(n * (len(prompt_ids) + params.max_tokens)) if admit is not None else None
        reservation = SharedReservation(admitted, n) if admitted is not None and n > 1 else admitted
        trace = GenerationTrace()  # the request's span is the current one here, not on the stream's pump
        try:
            with trace.storage("store user turn"):
                turn = self._store_user_turn(request, owner, dropped, messages)
            trace.submitting(operation="text_completion" if request.raw else "chat", model=engine.model_name,
                             params=params, prompt_tokens=len(prompt_ids), message_id=turn.message_id,
                             conversation_id=turn.conversation_id)
            handles: list[tuple[Turn, GenerationStream]] = []
            try:
                for i in range(n):
                    answer = turn if i == 0 else replace(turn, message_id=uuid.uuid4().hex)
                    # An upstream engine needs the messages (or the raw prompt text), not our token ids.
                    handles.append((answer, engine.submit(
                        answer.message_id, prompt_ids, _nth_seed(params, i), messages=messages,
                        prompt_text=request.prompt if request.raw else None,
                        trace_headers=trace.outgoing_headers())))
            except EngineError as exc:
                trace.refused(exc)
                for _, handle in handles:
                    handle.cancel()
                    handle.close()
                self._forget_turn(turn)
                raise
        except Exception:
            if admitted is not None:
                admitted.cancel()
            raise
        # The trace follows the first answer (one span per request); the others are its siblings.
        streams = [ChatStream(self, request, handle, answer, self._heartbeat, self._request_timeout, reservation,
                              guard=self._output_guard, trace=trace if index == 0 else None)
                   for index, (answer, handle) in enumerate(handles)]
        for stream in streams:
            self._running.add(stream)
        self._idle.clear()
        if self._refusal is not None:  # interrupt_all ran while this request was being stored
            for stream in streams:
                stream.interrupt(self._refusal.code, self._refusal.message)
        return streams

    def _engine_for(self, name: str | None, stored: list[Message]) -> Engine:
        """The chat model ``name`` selects; without one, the model that wrote a continued conversation's newest
        answer when it is still served (a fallback's answer leads back to its chain), else the default."""
        if self._choose is None:
            return self._engine
        if name is not None:
            return self._choose(name)
        previous = next((m.model for m in reversed(stored) if m.role == "assistant" and m.model), None)
        if previous is not None:
            try:
                return self._choose(previous)
            except EngineError:  # no longer served (or not loaded): the default model continues it
                pass
        return self._engine

    def _with_model_defaults(self, engine: Engine, request: ChatRequest) -> ChatRequest:
        """Fill a temperature or top_p the caller left out with the model's recommended value (stored as used)."""
        if request.temperature is not None and request.top_p is not None:
            return request
        defaults = engine.sampling_defaults()
        temperature = defaults.temperature if request.temperature is None else request.temperature
        top_p = defaults.top_p if request.top_p is None else request.top_p
        return replace(request, temperature=temperature, top_p=top_p)

    def _stored_history(self, conversation_id: str | None, owner: str) -> list[Message]:
        if conversation_id is None:
            return []
        if self._store.get_conversation(conversation_id, owner) is None:
            raise ConversationNotFound(conversation_id)
        return self._store.history(conversation_id)

    def _prompt(self, engine: Engine, request: ChatRequest,
                messages: list[ChatMessage]) -> tuple[list[ChatMessage], int, list[int]]:
        """The messages the model sees, how many old turns were dropped to fit, and the prompt's token ids."""
        if request.raw:
            return messages, 0, engine.encode_text(request.prompt)
        tools = request.structured.tools if request.structured is not None else ()
        if not request.fit_history:
            return messages, 0, engine.encode_chat(messages, tools)
        context = engine.context_length
        reserve = request.max_tokens or min(self._default_max_tokens, context // 2)
        encoded: dict[int, list[int]] = {}

        def fits(candidate: list[ChatMessage]) -> bool:
            encoded[len(candidate)] = engine.encode_chat(candidate, tools)
            return len(encoded[len(candidate)]) + reserve <= context

        messages, dropped = fit_to_context(messages, fits)
        if len(messages) not in encoded:  # nothing fitted: the fallback (the newest turn) was never tried
            encoded[len(messages)] = engine.encode_chat(messages, tools)
        return messages, dropped, encoded[len(messages)]

    def _max_tokens(self, engine: Engine, request: ChatRequest, prompt_ids: list[int]) -> int:
        context = engine.context_length
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
                    tuple(m.id for m in rows), dropped, prompt_messages, current_request_id())

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
            params=stored_params(request), model=finished.model or request.model, error=finished.error,
        )
        try:
            self._store.add_messages(turn.conversation_id, [answer])
        except StorageError as exc:  # the client still gets its answer; the log keeps the exchange
            log.error("message %s: could not store the answer: %s", turn.message_id, exc)
        self._log(answer, request, turn.request_id, finished)
        if self._on_answer is not None:
            try:
                self._on_answer(answer, finished)
            except Exception:  # an observer never costs the client its answer
                log.exception("message %s: the answer observer failed", turn.message_id)

    def _log(self, answer: Message, request: ChatRequest | None, request_id: str | None,
             finished: Finished | None = None) -> None:
        usage = answer.usage or {}
        ttft = "-" if answer.time_to_first_token is None else f"{answer.time_to_first_token:.3f}s"
        line = (f"exchange time={format_time(answer.created_at)} message_id={answer.id} "
                f"conversation_id={answer.conversation_id} "
                f"prompt_tokens={usage.get('prompt_tokens')} completion_tokens={usage.get('completion_tokens')} "
                f"ttft={ttft} total={answer.total_time or 0:.3f}s finish_reason={answer.finish_reason}")
        if finished is not None and finished.engine:
            line += f" engine={finished.engine}" + (" degraded=1" if finished.degraded else "")
        if answer.error:
            line += f" error={answer.error!r}"
        if self._log_prompts and request is not None:
            line += f" prompt={request.prompt!r}"
        log.info(line, extra={"request_id": request_id})  # the stream's pump greenlet has no request context

    def store_lost_answer(self, lost: LostAnswer) -> None:
        """Store an answer whose generation was lost with its worker (killed mid-answer): the text its clients
        were sent, with ``finish_reason`` ``error``. Its user turn was stored before generation began."""
        if self._store.get_message(lost.message_id, None) is not None:
            return  # stored by its own worker after all
        answer = Message(
            id=lost.message_id, conversation_id=lost.conversation_id, role="assistant", content=lost.text,
            created_at=_now(), owner=lost.owner, reply_to=lost.reply_to or None, finish_reason="error",
            usage={"prompt_tokens": lost.prompt_tokens, "completion_tokens": lost.completion_tokens,
                   "total_tokens": lost.prompt_tokens + lost.completion_tokens},
            params=lost.params, model=lost.model or self._engine.model_name, error=LOST_ERROR,
        )
        try:
            self._store.add_messages(lost.conversation_id, [answer])
        except StorageError as exc:
            log.error("message %s: could not store the lost answer: %s", lost.message_id, exc)
            return
        self._log(answer, None, None)

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


_NEUTRAL_EXTRAS = {"top_k": 0, "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                   "repetition_penalty": 1.0, "logit_bias": (), "logprobs": False, "top_logprobs": 0, "n": 1}


def stored_params(request: ChatRequest) -> dict[str, Any]:
    """The parameters stored with an answer: the usual ones, and each optional one that was used."""
    params: dict[str, Any] = {"max_tokens": request.max_tokens, "temperature": request.temperature,
                              "top_p": request.top_p, "seed": request.seed, "stop": list(request.stop)}
    for name, neutral in _NEUTRAL_EXTRAS.items():
        value = getattr(request, name)
        if value != neutral:
            params[name] = {str(k): v for k, v in value} if name == "logit_bias" else value
    return params


_SEED_SPAN = 1 << 64
_SEED_MIN = -(1 << 63)


def _sampling_params(request: ChatRequest, max_tokens: int) -> SamplingParams:
    assert request.temperature is not None and request.top_p is not None
    return SamplingParams(
        max_tokens=max_tokens, temperature=request.temperature, top_p=request.top_p, seed=request.seed,
        stop=request.stop, ignore_eos=request.ignore_eos, top_k=request.top_k, min_p=request.min_p,
        presence_penalty=request.presence_penalty, frequency_penalty=request.frequency_penalty,
        repetition_penalty=request.repetition_penalty, logit_bias=request.logit_bias, logprobs=request.logprobs,
        top_logprobs=request.top_logprobs, structured=request.structured)


def _nth_seed(params: SamplingParams, i: int) -> SamplingParams:
    """The i-th answer's parameters: seed + i (wrapping within the 64-bit range), or its own random seed."""
    if i == 0 or params.seed is None:
        return params
    return replace(params, seed=(params.seed + i - _SEED_MIN) % _SEED_SPAN + _SEED_MIN)


class SharedReservation:
    """One admission for the ``n`` answers of a request: each answer releases its share, and the tokens all
    of them used go back once the last one has."""

    def __init__(self, reservation: Reservation, shares: int) -> None:
        self._reservation = reservation
        self._left = shares
        self._used = 0

    def release(self, used_tokens: int) -> None:
        self._used += used_tokens
        self._left -= 1
        if self._left == 0:
            self._reservation.release(self._used)

    def cancel(self) -> None:
        self._reservation.cancel()
