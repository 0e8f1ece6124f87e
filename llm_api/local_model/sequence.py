"""One request's life inside the engine thread: sampling, detokenizing, stopping, reporting."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ..generation.handle import GenerationHandle
from ..generation.tool_calls import ToolCallReader
from ..generation.types import Finished, TextDelta, TokenLogprob, Usage
from .decode import IncrementalDetokenizer
from .grammar import RowGrammar
from .sampling import Sampler
from .stops import StopMatcher


class SequenceState:
    """Per-request state kept by the engine thread."""

    def __init__(self, handle: GenerationHandle, decode: Callable[[Sequence[int]], str],
                 token_bytes: Callable[[int], bytes] | None = None,
                 grammar: RowGrammar | None = None, tool_reader: ToolCallReader | None = None,
                 on_finish: Callable[[SequenceState], None] | None = None) -> None:
        self.handle = handle
        self.taken_at = time.monotonic()  # when the engine thread took it from the queue
        self.grammar = grammar  # constrained decoding (response_format, a forced tool call); None: free text
        self._tool_reader = tool_reader  # tools offered: the text is read for calls
        self.request = handle.request
        self.sampler = Sampler(self.request.params, self.request.prompt_ids)
        self._token_bytes = token_bytes or (lambda token_id: decode([token_id]).encode())
        self._logprobs: list[TokenLogprob] = []  # chosen tokens' log-probabilities not yet sent
        self.generated: list[int] = []
        self.position = len(self.request.prompt_ids)  # position id of the next token fed to the model
        self._detok = IncrementalDetokenizer(decode)
        self._stops = StopMatcher(self.request.params.stop)
        self._first_token_at: float | None = None
        self.finished = False
        self.finish_reason: str | None = None
        self._on_finish = on_finish

    @property
    def last_token(self) -> int:
        return self.generated[-1]

    def accept(self, token_id: int) -> bool:
        """Record a sampled token and emit its text; return True when the sequence is done."""
        if self._first_token_at is None:
            self._first_token_at = time.monotonic()
        self.generated.append(token_id)
        if token_id in self.request.stop_token_ids and not self.request.params.ignore_eos:
            self.finish("stop")
            return True
        self._note_logprobs(token_id)
        self._send(self._stops.feed(self._detok.push(token_id)))
        if self._stops.stopped:
            self.finish("stop")
            return True
        if len(self.generated) >= self.request.params.max_tokens:
            self.finish("length")
            return True
        return False

    def check_cancelled(self) -> bool:
        if self.handle.cancelled and not self.finished:
            self.handle.cancel_seen_at_token = len(self.generated)
            self.finish(self.handle.cancel_reason)
            return True
        return False

    def finish(self, reason: str, error: str | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        if self.grammar is not None:
            self.grammar.free()
            self.grammar = None
        if reason != "error" and not self._stops.stopped:
            self._send(self._stops.feed(self._detok.flush()))
            if not self._stops.stopped:
                self._send(self._stops.flush())
        if self._logprobs:  # tokens whose text was held back, or cut by a stop sequence
            self.handle.channel.put(TextDelta("", tuple(self._logprobs)))
            self._logprobs = []
        if self._tool_reader is not None and reason != "error":
            for piece in self._tool_reader.finish():
                self.handle.channel.put(piece)
            if self._tool_reader.called and reason == "stop":
                reason = "tool_calls"
        self.finish_reason = reason
        now = time.monotonic()
        ttft = None if self._first_token_at is None else self._first_token_at - self.handle.submitted_at
        self.handle.channel.put(Finished(
            finish_reason=reason,
            usage=Usage(len(self.request.prompt_ids), len(self.generated)),
            time_to_first_token=ttft,
            total_time=now - self.handle.submitted_at,
            error=error,
            token_ids=tuple(self.generated),
            queue_time=self.taken_at - self.handle.submitted_at,
        ))
        if self._on_finish is not None:
            self._on_finish(self)

    def _send(self, text: str) -> None:
        """Text, with the log-probabilities of the tokens generated since the last text (the text of a token
        that ends inside a character, or might begin a stop sequence, comes with a later one's). With tools
        offered, the text goes through the tool-call reader, which sends calls as calls."""
        if not text:
            return
        logprobs, self._logprobs = tuple(self._logprobs), []
        if self._tool_reader is None:
            self.handle.channel.put(TextDelta(text, logprobs))
            return
        for piece in self._tool_reader.feed(text):
            self.handle.channel.put(piece)

    def _note_logprobs(self, token_id: int) -> None:
        chosen = self.sampler.chosen
        if not self.request.params.logprobs or chosen is None:
            return
        top = tuple(self._entry(token, logprob) for token, logprob in chosen.top)
        entry = self._entry(token_id, chosen.logprob)
        self._logprobs.append(TokenLogprob(entry.token, entry.logprob, entry.bytes, top))

    def _entry(self, token_id: int, logprob: float) -> TokenLogprob:
        raw = self._token_bytes(token_id)
        return TokenLogprob(raw.decode("utf-8", "replace"), logprob, tuple(raw))
