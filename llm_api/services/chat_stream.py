"""One admitted answer as the caller sees it: deltas, heartbeats and one ``Finished``, and the ways to end
it early (the client left, the deadline passed, the service is shutting down)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import gevent

from ..engine.sequence import GenerationHandle
from ..engine.types import Finished, TextDelta, Usage
from .chat_models import ChatRequest, Reservation, Turn

log = logging.getLogger("llm_api.exchange")

_CANCEL_DRAIN_SECONDS = 5.0


class AnswerRecorder(Protocol):
    """Where a finished answer goes (the chat service): stored and logged once, then forgotten."""

    def record(self, turn: Turn, request: ChatRequest, text: str, finished: Finished) -> None: ...

    def stream_finished(self, stream: ChatStream) -> None: ...


@dataclass
class Heartbeat:
    """Nothing arrived for a while: the stream should send a comment so a gone client is noticed."""


StreamItem = TextDelta | Finished | Heartbeat


@dataclass(frozen=True)
class Interruption:
    """Why the service itself stopped an answer (for example ``shutting_down``): its error code and message."""

    code: str
    message: str


class ChatStream:
    """An admitted streamed request: iterate it for deltas, heartbeats and one ``Finished``.

    Closing it early (the client went away) cancels the generation and still
    stores the partial answer as ``cancelled``.
    """

    def __init__(self, service: AnswerRecorder, request: ChatRequest, handle: GenerationHandle, turn: Turn,
                 heartbeat_seconds: float, timeout_seconds: float = 0.0,
                 reservation: Reservation | None = None) -> None:
        self.message_id = turn.message_id
        self._reservation = reservation
        self.request = request
        self.turn = turn
        self._service = service
        self._handle = handle
        self._heartbeat = heartbeat_seconds
        self.text = ""
        self.deltas = 0
        self.finished: Finished | None = None
        self.interruption: Interruption | None = None  # set by interrupt()
        # The per-request deadline: the answer ends with finish_reason "timeout", keeping its text.
        self._deadline = gevent.spawn_later(timeout_seconds, handle.cancel, "timeout") if timeout_seconds else None

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

    def close(self) -> None:
        """The response is over, perhaps before it was ever read: an unfinished answer is cancelled
        and stored (iterating it does the same when the iteration is cut short)."""
        if self.finished is None:
            self._cancel_and_drain()
            self._handle.channel.close()

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

    def _take(self, event: TextDelta | Finished) -> None:
        if isinstance(event, TextDelta):
            self.text += event.text
            self.deltas += 1
        else:
            self.finished = event
            if self._deadline is not None:
                self._deadline.kill(block=False)
            if self._reservation is not None:
                self._reservation.release(event.usage.prompt_tokens + event.usage.completion_tokens)
            try:
                self._service.record(self.turn, self.request, self.text, event)
            finally:
                self._service.stream_finished(self)

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
