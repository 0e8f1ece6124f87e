"""One admitted answer as the caller sees it: deltas, heartbeats and one ``Finished``, and the ways to end
it early (the client left, the deadline passed, the service is shutting down)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol

import gevent

from ..generation.protocol import Event, GenerationStream
from ..generation.tool_calls import ToolCallDelta
from ..generation.types import Finished, TextDelta, TokenLogprob, Usage
from .chat_models import ChatRequest, Reservation, Turn
from .output_guard import GuardStop, OutputCheck, OutputGuard
from .spans import GenerationTrace

log = logging.getLogger("llm_api.exchange")

_CANCEL_DRAIN_SECONDS = 5.0


class AnswerRecorder(Protocol):
    """Where a finished answer goes (the chat service): stored and logged once, then forgotten."""

    def record(self, turn: Turn, request: ChatRequest, text: str, finished: Finished) -> None: ...

    def stream_finished(self, stream: ChatStream) -> None: ...


@dataclass
class Heartbeat:
    """Nothing arrived for a while: the stream should send a comment so a gone client is noticed."""


StreamItem = TextDelta | ToolCallDelta | Finished | Heartbeat


@dataclass(frozen=True)
class Interruption:
    """Why the service itself stopped an answer (for example ``shutting_down``): its error code and message."""

    code: str
    message: str


class ChatStream:
    """An admitted streamed request: iterate it for deltas, heartbeats and one ``Finished``.

    Closing it early (the client went away) cancels the generation and still
    stores the partial answer as ``cancelled``.

    Every delta goes through the output guard first (``guard``): the text it holds back is sent
    later, and when it stops the answer, the generation is cancelled, nothing after the match is
    sent, and the answer ends (and is stored) with the guard's finish reason.
    """

    def __init__(self, service: AnswerRecorder, request: ChatRequest, handle: GenerationStream, turn: Turn,
                 heartbeat_seconds: float, timeout_seconds: float = 0.0,
                 reservation: Reservation | None = None, guard: OutputGuard | None = None,
                 trace: GenerationTrace | None = None) -> None:
        self.message_id = turn.message_id
        self._trace = trace
        self._reservation = reservation
        self.request = request
        self.turn = turn
        self._service = service
        self._handle = handle
        self._heartbeat = heartbeat_seconds
        self.text = ""  # what was released to the caller (the guard may hold back or cut the engine's text)
        self.deltas = 0  # deltas received from the engine
        self.tool_calls: list[dict[str, Any]] = []  # the calls read from the answer, in OpenAI's shape
        self.logprobs: list[TokenLogprob] = []  # every token's log-probabilities, when the request asked for them
        self._guard = guard
        self._check = guard.check(repetition=not request.ignore_eos) if guard is not None else OutputCheck()
        self._stop_reported = False
        self.finished: Finished | None = None
        self.interruption: Interruption | None = None  # set by interrupt()
        # The per-request deadline: the answer ends with finish_reason "timeout", keeping its text.
        self._deadline = _later(timeout_seconds, handle.cancel, "timeout") if timeout_seconds else None

    @property
    def conversation_id(self) -> str:
        return self.turn.conversation_id

    @property
    def prompt_tokens(self) -> int:
        return len(self._handle.request.prompt_ids)

    @property
    def engine(self) -> tuple[str, str, bool]:
        """The named engine generating the answer now, its model, and whether it is a fallback (the engine
        router's handle knows; a bare engine's handle does not: then ``("", "", False)``)."""
        handle = self._handle
        return handle.engine_name, handle.model_name, handle.degraded

    def __iter__(self) -> Iterator[StreamItem]:
        try:
            while self.finished is None:
                event = self._handle.next_event(self._heartbeat)
                if event is None:
                    yield Heartbeat()
                    continue
                yield from self._take(event)
        finally:
            if self.finished is None:
                self._cancel_and_drain()
            self._handle.close()

    def cancel(self) -> None:
        """Ask the engine to stop; the iteration then ends with a ``cancelled`` finish."""
        self._handle.cancel()

    def close(self) -> None:
        """The response is over, perhaps before it was ever read: an unfinished answer is cancelled
        and stored (iterating it does the same when the iteration is cut short)."""
        if self.finished is None:
            self._cancel_and_drain()
            self._handle.close()

    def interrupt(self, code: str, message: str) -> None:
        """Stop the answer for a reason of the service's (e.g. ``shutting_down``). It is stored as
        ``cancelled`` with its text so far, and renderers send an error with ``code`` instead of the finish."""
        if self.finished is None and self.interruption is None:
            self.interruption = Interruption(code, message)
            self._handle.cancel()

    @property
    def interrupted(self) -> Interruption | None:
        """The interruption that ended this answer; None while it runs, or when it ended by itself
        (the engine may finish with ``stop`` or ``length`` before it sees the cancel)."""
        if self.finished is not None and self.finished.finish_reason == "cancelled":
            return self.interruption
        return None

    @property
    def guard_stop(self) -> GuardStop | None:
        """Why the output guard ended this answer, if it did."""
        return self._check.stop

    @property
    def stored_text(self) -> str:
        """What is stored as the answer: its text, and its tool calls as JSON lines."""
        calls = [json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                            ensure_ascii=False) for c in self.tool_calls]
        return "\n".join([self.text, *calls] if self.text else calls)

    def _take(self, event: Event) -> list[StreamItem]:
        """Record an engine event; return what the caller gets of it (the guard may hold text back)."""
        if isinstance(event, ToolCallDelta):
            self.deltas += 1
            if event.name is not None:
                self.tool_calls.append({"id": event.id, "type": "function",
                                        "function": {"name": event.name, "arguments": ""}})
            if event.arguments and self.tool_calls:
                self.tool_calls[event.index]["function"]["arguments"] += event.arguments
            return [event]
        if isinstance(event, TextDelta):
            self.deltas += 1
            logprobs = () if self._check.stop is not None else event.logprobs  # nothing after a guard stop
            self.logprobs.extend(logprobs)
            return self._release(self._check.feed(event.text), logprobs=logprobs)
        stopped_early = self._check.stop is not None
        items = [] if stopped_early else self._release(self._check.finish(), generating=False)
        stop = self._check.stop
        # A stop while generating cancelled the generation: whatever the engine then reports, the answer
        # ends with the guard's reason. A match found only at the end cuts the text in any case, and
        # names the finish unless the answer was cancelled or failed.
        if stop is not None and (stopped_early or event.finish_reason not in ("cancelled", "error")):
            event = replace(event, finish_reason=stop.reason, error=None)
        items.append(event)
        self.finished = event
        if self._deadline is not None:
            self._deadline.kill(block=False)
        if self._reservation is not None:
            self._reservation.release(event.usage.prompt_tokens + event.usage.completion_tokens)
        try:
            if self._trace is None:
                self._service.record(self.turn, self.request, self.stored_text, event)
            else:
                self._trace.finished(event)
                with self._trace.storage("store answer"):
                    self._service.record(self.turn, self.request, self.stored_text, event)
        finally:
            self._service.stream_finished(self)
        return items

    def _release(self, text: str, generating: bool = True,
                 logprobs: tuple[TokenLogprob, ...] = ()) -> list[StreamItem]:
        """Send ``text`` on (with the log-probabilities of the tokens that came with it, even when the guard
        holds their text back). The first time the guard has stopped the answer, log it, and cancel the
        generation if it is still running."""
        self.text += text
        stop = self._check.stop
        if stop is not None and not self._stop_reported:
            self._stop_reported = True
            if generating:
                self._handle.cancel(stop.reason)
            if self._guard is not None:
                self._guard.report(stop, self.message_id, self.turn.request_id)
        return [TextDelta(text, logprobs)] if text or logprobs else []

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


def _later(seconds: float, function: Callable[..., object], *args: object) -> gevent.Greenlet:
    """``gevent.spawn_later`` from now: the loop's clock is refreshed first, since it is only updated
    once per loop iteration and a busy iteration would otherwise make the timer fire early."""
    gevent.get_hub().loop.update_now()
    return gevent.spawn_later(seconds, function, *args)
