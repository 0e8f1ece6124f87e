"""The engine router: one object with the engine's surface over an ordered chain of named engines.

The chat service talks to it exactly as to one engine. ``submit`` tries the engines in order and
returns a :class:`RoutedHandle`, which may still move the request to the next engine until the first
token has been delivered, never after (no answer is ever made of two engines' text):

- **at admission** (``submit``): an engine whose circuit is open is skipped without being tried; one
  whose ``submit`` raises (not ready, queue full, an upstream that cannot be reached or answers with an
  error) is skipped after it was tried;
- **before the first token** (``next_event``): no token within ``first_token_timeout`` seconds (the
  request is cancelled on that engine), or the engine ends with an error before any token.

A context-length error, or an upstream's 400/413/422, is the caller's fault: it is raised at once when the
first engine tried raises it, and is neither a fallback nor a breaker failure. Queue-full is a fallback but
not a breaker failure (it costs nothing, and passes by itself). Every other failure counts against the
engine's :class:`CircuitBreaker`; a first token (or a finish without error) is a success.

When every engine failed, the static ``degraded_answer`` is the last resort, under the engine name
``static``. Without one, admission re-raises the first engine's error; after admission the stream ends
with ``Finished("error")`` naming each engine's failure.

Breakers and the first-token timeout apply only when there is something to fall back to (two engines or
more, or a degraded answer): the default chain, one local engine, behaves exactly like that engine alone.

Every ``Finished`` that leaves a routed handle names the engine that answered (``engine``), its model
(``model``) and whether it was a fallback (``degraded``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..config import STATIC_ENGINE
from ..generation.backlog import Backlog
from ..generation.errors import ContextLengthError, EngineError, QueueFullError
from ..generation.features import InvalidParameterError, UnsupportedFeatureError, missing_feature
from ..generation.protocol import Engine, EngineKind, GenerationStream, Message
from ..generation.structured import ToolFunction, UnsupportedFieldError
from ..generation.tool_calls import ToolCallDelta
from ..generation.types import Finished, GenerationRequest, SamplingDefaults, SamplingParams, TextDelta, Usage
from .breaker import CircuitBreaker, Pass
from .errors import CircuitOpenError, FeatureSkipError, UpstreamRejectedError
from .upstream import estimate_tokens

log = logging.getLogger("llm_api.engines")

_NOT_TRIED = (CircuitOpenError, FeatureSkipError)
_CALLERS_FAULT = (ContextLengthError, UpstreamRejectedError, UnsupportedFieldError, InvalidParameterError)


class TokenIds(list[int]):
    """Prompt ids that remember which engine's tokenizer made them (ids mean nothing to another model)."""

    encoder: Engine | None = None


@dataclass
class Member:
    name: str
    engine: Engine
    breaker: CircuitBreaker | None

    @property
    def upstream(self) -> bool:
        return self.engine.kind == "upstream"


class EngineRouter:
    """An ordered chain of named engines behind the engine surface (the first is the primary)."""

    kind: EngineKind = "router"

    def __init__(self, engines: Sequence[tuple[str, Engine]], *, first_token_timeout: float = 0.0,
                 degraded_answer: str = "", breaker_failures: int = 5, breaker_window: float = 60.0,
                 breaker_cooldown: float = 30.0, now: Callable[[], float] = time.monotonic) -> None:
        if not engines:
            raise ValueError("an engine router needs at least one engine")
        self.degraded_answer = degraded_answer
        self.has_fallback = len(engines) > 1 or bool(degraded_answer)
        self.first_token_timeout = first_token_timeout if self.has_fallback else 0.0
        self.members = [
            Member(name, engine, CircuitBreaker(breaker_failures, breaker_window, breaker_cooldown, now)
                   if self.has_fallback else None)
            for name, engine in engines
        ]

    # ---- the engine surface: facts come from the primary --------------------------------------------
    @property
    def primary(self) -> Engine:
        return self.members[0].engine

    @property
    def model_name(self) -> str:
        return self.primary.model_name

    @property
    def context_length(self) -> int:
        return self.primary.context_length

    @property
    def _locals(self) -> list[Engine]:
        return [m.engine for m in self.members if not m.upstream]

    @property
    def ready(self) -> bool:
        """Every local engine has loaded its model (upstreams are judged per request, by their breakers)."""
        return all(engine.ready for engine in self._locals)

    @property
    def load_error(self) -> str | None:
        return next((e.load_error for e in self._locals if e.load_error), None)

    @property
    def batched(self) -> bool:
        return self.primary.batched

    @property
    def queued(self) -> int:
        return sum(m.engine.queued for m in self.members)

    def backlog(self) -> Backlog:
        """The backlog of the engine a request submitted now goes to first: the first whose circuit is not
        open and that is ready (requests wait in its queue; the router moves them on only when it refuses)."""
        for member in self.members:
            if (member.breaker is None or member.breaker.state != "open") and member.engine.ready:
                return member.engine.backlog()
        return Backlog()

    @property
    def stats(self) -> Mapping[str, int]:
        """The local engine's counters (an upstream's when there is none)."""
        engines = self._locals or [self.primary]
        return engines[0].stats

    @property
    def load_seconds(self) -> float | None:
        return next((e.load_seconds for e in self._locals if e.load_seconds is not None), None)

    @property
    def circuits(self) -> dict[str, str]:
        """Each engine's breaker state (``closed``, ``open``, ``half_open``); empty without a fallback."""
        return {m.name: m.breaker.state for m in self.members if m.breaker is not None}

    def start(self, on_load_failure: Callable[[str], None] | None = None) -> None:
        for member in self.members:
            member.engine.start(on_load_failure)

    def stop(self, timeout: float = 10.0) -> None:
        for member in self.members:
            member.engine.stop(timeout)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for engine in self._locals:
            if not engine.wait_ready(max(0.0, deadline - time.monotonic())):
                return False
        return self.ready

    def stop_token_ids(self) -> frozenset[int]:
        return self.primary.stop_token_ids()

    def sampling_defaults(self) -> SamplingDefaults:
        return self.primary.sampling_defaults()

    @property
    def features(self) -> frozenset[str]:
        """What some engine of the chain honours; a request is only ever sent to one that honours all it uses."""
        return frozenset().union(*(m.engine.features for m in self.members))

    def encode_chat(self, messages: Sequence[Message], tools: Sequence[ToolFunction] = ()) -> list[int]:
        return self._encode(lambda engine: engine.encode_chat(messages, tools))

    def encode_text(self, text: str) -> list[int]:
        return self._encode(lambda engine: engine.encode_text(text))

    def _encode(self, encode: Callable[[Engine], list[int]]) -> TokenIds:
        """The first engine that can encode (a local one still loading cannot) does; its ids are tagged."""
        first: EngineError | None = None
        for member in self.members:
            try:
                ids = TokenIds(encode(member.engine))
            except EngineError as exc:
                first = first or exc
                continue
            ids.encoder = member.engine
            return ids
        assert first is not None
        raise first

    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams, *,
               messages: Sequence[Message] | None = None, prompt_text: str | None = None,
               trace_headers: Mapping[str, str] | None = None) -> RoutedHandle:
        """Hand the request to the first engine that takes it; raise when none does and no degraded answer
        is configured (the first engine's error). A request using a feature no engine of the chain honours
        is refused at once (:class:`UnsupportedFeatureError`)."""
        missing = missing_feature(self.features, params)
        if missing is not None:
            raise UnsupportedFeatureError(missing)
        handle = RoutedHandle(self, request_id, prompt_ids, params, messages, prompt_text, trace_headers)
        if not handle.advance(admitting=True):
            raise handle.errors[0][1]
        return handle

    def ids_for(self, engine: Engine, prompt_ids: list[int], messages: Sequence[Message] | None,
                prompt_text: str | None, tools: Sequence[ToolFunction] = ()) -> list[int]:
        """Prompt ids in ``engine``'s own tokens: re-encoded when another engine's tokenizer made them."""
        encoder = prompt_ids.encoder if isinstance(prompt_ids, TokenIds) else None
        if encoder is None or encoder is engine or engine.kind == "upstream":
            return list(prompt_ids)
        if prompt_text is not None:
            return engine.encode_text(prompt_text)
        if messages is not None:
            return engine.encode_chat(messages, tools)
        return list(prompt_ids)


class _Outcome:
    """One engine's breaker pass for one request: its outcome is reported once."""

    def __init__(self, breaker: CircuitBreaker | None, ticket: Pass | None) -> None:
        self._breaker = breaker
        self._ticket = ticket
        self._reported: set[str] = set()

    def report(self, outcome: str) -> None:
        """``success``, ``failure`` or ``release`` (no outcome: the client left first). Each once; a failure
        may follow the success of a first token (an engine that died mid-answer still counts)."""
        if self._breaker is None or self._ticket is None or outcome in self._reported:
            return
        if self._reported and outcome != "failure" or "failure" in self._reported:
            return
        self._reported.add(outcome)
        if outcome == "success":
            self._breaker.success(self._ticket)
        elif outcome == "failure":
            self._breaker.failure(self._ticket)
        else:
            self._breaker.release(self._ticket)


@dataclass
class _Attempt:
    """The engine of the chain that holds the request now."""

    index: int
    name: str
    model: str
    handle: GenerationStream
    outcome: _Outcome

    def report(self, outcome: str) -> None:
        self.outcome.report(outcome)


class RoutedHandle:
    """A routed request's events: a :class:`GenerationStream` over whichever engine of the chain answers."""

    def __init__(self, router: EngineRouter, request_id: str, prompt_ids: list[int], params: SamplingParams,
                 messages: Sequence[Message] | None, prompt_text: str | None,
                 trace_headers: Mapping[str, str] | None = None) -> None:
        self._router = router
        self._request_id = request_id
        self._prompt_ids = prompt_ids
        self._params = params
        self._messages = messages
        self._prompt_text = prompt_text
        self._trace_headers = trace_headers
        self.submitted_at = time.monotonic()
        self.cancelled = False
        self.cancel_reason = "cancelled"
        self.errors: list[tuple[str, EngineError]] = []  # each engine that failed this request, and why
        self._next = 0
        self._attempt: _Attempt | None = None
        self._delivered = False  # a token has been handed to the caller: no fallback from now on
        self._deadline: float | None = None  # the first-token deadline of the current attempt

    # ---- what the caller reads -----------------------------------------------------------------------
    @property
    def request(self) -> GenerationRequest:
        assert self._attempt is not None
        return self._attempt.handle.request

    @property
    def cancel_seen_at_token(self) -> int | None:
        return self._attempt.handle.cancel_seen_at_token if self._attempt is not None else None

    @property
    def engine_name(self) -> str:
        return self._attempt.name if self._attempt is not None else ""

    @property
    def model_name(self) -> str:
        return self._attempt.model if self._attempt is not None else ""

    @property
    def degraded(self) -> bool:
        return self._attempt is not None and (self._attempt.index > 0 or self._attempt.name == STATIC_ENGINE)

    def cancel(self, reason: str = "cancelled") -> None:
        if not self.cancelled:
            self.cancel_reason = reason
            self.cancelled = True
            self._deadline = None
            if self._attempt is not None:
                self._attempt.handle.cancel(reason)

    def close(self) -> None:
        if self._attempt is not None:
            self._attempt.handle.close()

    def next_event(self, timeout: float | None) -> TextDelta | ToolCallDelta | Finished | None:
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            assert self._attempt is not None
            now = time.monotonic()
            wait = None if end is None else max(0.0, end - now)
            if self._deadline is not None:
                left = max(0.0, self._deadline - now)
                wait = left if wait is None else min(wait, left)
            event = self._attempt.handle.next_event(wait)
            if event is None:
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    seconds = self._router.first_token_timeout
                    self._fail(EngineError(f"no first token within {seconds:g} s"), cancel=True)
                    if not self.advance(admitting=False):
                        return self._exhausted(None)
                    continue
                if end is None or time.monotonic() >= end:
                    return None
                continue
            if isinstance(event, TextDelta | ToolCallDelta):
                if not self._delivered:
                    self._delivered = True
                    self._deadline = None
                    self._attempt.report("success")
                return event
            if event.finish_reason == "error" and not self._delivered and not self.cancelled:
                self._fail(EngineError(event.error or "generation failed"), cancel=False)
                if not self.advance(admitting=False):
                    return self._exhausted(event)
                continue
            self._deadline = None
            if event.finish_reason == "error":
                self._attempt.report("failure")  # after its first token: counted, but the answer ends here
            elif self.cancelled and not self._delivered:
                self._attempt.report("release")
            else:
                self._attempt.report("success")
            return self._mark(event)

    # ---- choosing the engine -------------------------------------------------------------------------
    def advance(self, *, admitting: bool) -> bool:
        """Start the request on the next engine that takes it (the static answer last); False if none."""
        router = self._router
        while self._next < len(router.members):
            index, member = self._next, router.members[self._next]
            self._next += 1
            missing = missing_feature(member.engine.features, self._params)
            if missing is not None:  # skipped like an open circuit: not tried, nothing counted
                skipped = FeatureSkipError(f"engine {member.name}: does not honour {missing}")
                self.errors.append((member.name, skipped))
                continue
            ticket = member.breaker.allow() if member.breaker is not None else None
            if member.breaker is not None and ticket is None:
                self.errors.append((member.name, CircuitOpenError(f"engine {member.name}: its circuit is open")))
                continue
            outcome = _Outcome(member.breaker, ticket)
            try:
                structured = self._params.structured
                ids = router.ids_for(member.engine, self._prompt_ids, self._messages, self._prompt_text,
                                     structured.tools if structured is not None else ())
                handle = member.engine.submit(self._request_id, ids, self._params, messages=self._messages,
                                              prompt_text=self._prompt_text, trace_headers=self._trace_headers)
            except _CALLERS_FAULT as exc:
                outcome.report("release")
                if admitting and not any(e for _, e in self.errors if not isinstance(e, _NOT_TRIED)):
                    self.errors.insert(0, (member.name, exc))  # the first engine tried: the caller's error
                    return False
                self.errors.append((member.name, exc))
                continue
            except QueueFullError as exc:
                outcome.report("release")
                self._note(member.name, exc)
                continue
            except Exception as exc:  # not ready, unreachable, an upstream error, or a bug in one engine
                outcome.report("failure")
                self._note(member.name, exc if isinstance(exc, EngineError) else EngineError(repr(exc)))
                continue
            self._start(_Attempt(index, member.name, member.engine.model_name, handle, outcome))
            return True
        if (router.degraded_answer and (self._attempt is None or self._attempt.name != STATIC_ENGINE)
                and missing_feature(frozenset(), self._params) is None):  # the static text honours no feature
            self._next = len(router.members) + 1
            static = _StaticHandle(GenerationRequest(self._request_id, list(self._prompt_ids), self._params),
                                   router.degraded_answer)
            self._start(_Attempt(len(router.members), STATIC_ENGINE, STATIC_ENGINE, static, _Outcome(None, None)))
            return True
        return False

    def _start(self, attempt: _Attempt) -> None:
        self._attempt = attempt
        if self.errors:
            log.warning("request %s: answered by engine %s after %s", self._request_id, attempt.name,
                        "; ".join(f"{name}: {exc}" for name, exc in self.errors))
        more = attempt.name != STATIC_ENGINE and (self._next < len(self._router.members)
                                                   or bool(self._router.degraded_answer))
        timeout = self._router.first_token_timeout
        self._deadline = time.monotonic() + timeout if timeout and more else None
        if self.cancelled:
            attempt.handle.cancel(self.cancel_reason)

    def _fail(self, exc: EngineError, *, cancel: bool) -> None:
        """The current engine failed before its first token: count it, and leave it."""
        assert self._attempt is not None
        self._attempt.report("failure")
        self._note(self._attempt.name, exc)
        self._deadline = None
        if cancel:
            self._attempt.handle.cancel()
        self._attempt.handle.close()

    def _note(self, name: str, exc: EngineError) -> None:
        self.errors.append((name, exc))
        log.warning("request %s: engine %s failed: %s", self._request_id, name, exc)

    def _exhausted(self, event: Finished | None) -> Finished:
        """Every engine failed after admission: the answer ends with an error naming each failure."""
        if event is not None and len(self.errors) == 1:
            return self._mark(event)
        reasons = "; ".join(f"{name}: {exc}" for name, exc in self.errors)
        return self._mark(Finished("error", Usage(len(self._prompt_ids), 0), None,
                                   time.monotonic() - self.submitted_at, error=f"no engine could answer ({reasons})"))

    def _mark(self, event: Finished) -> Finished:
        assert self._attempt is not None
        return dataclasses.replace(event, engine=self._attempt.name, model=self._attempt.model,
                                   degraded=self.degraded)


class _StaticHandle:
    """The configured degraded answer, as one delta and a ``stop``."""

    engine_name = STATIC_ENGINE
    model_name = STATIC_ENGINE
    degraded = True

    def __init__(self, request: GenerationRequest, text: str) -> None:
        self.request = request
        self.submitted_at = time.monotonic()
        self.cancelled = False
        self.cancel_seen_at_token: int | None = None
        self._events: deque[TextDelta | Finished] = deque([TextDelta(text)])
        self._text = text

    def next_event(self, timeout: float | None) -> TextDelta | Finished | None:
        if self._events:
            return self._events.popleft()
        return Finished("stop", Usage(len(self.request.prompt_ids), estimate_tokens(self._text)), 0.0,
                        time.monotonic() - self.submitted_at)

    def cancel(self, reason: str = "cancelled") -> None:
        self.cancelled = True  # the answer is already whole: it ends as it is

    def close(self) -> None:
        pass
