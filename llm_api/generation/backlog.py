"""How long a new request would wait before its first token: the facts an engine reports, and the estimate.

An engine knows its queue; only the caller knows how long a wait is too long. The engine therefore
reports a :class:`Backlog` (plain numbers, no policy) and the HTTP layer decides (``LLM_API_MAX_QUEUE_WAIT``).

The estimate is the work queued ahead of the new request at the engine's measured decode rate:

- While a batch slot is free for every waiting request and one more, the new request starts at the
  next step: no wait.
- Otherwise it waits until the work ahead has been generated: the tokens the waiting requests will
  produce, plus what the running rows still have to produce, divided by the tokens per second that all
  rows together have been generating lately.
- A request may generate up to its ``max_tokens`` but usually stops earlier. The tokens "ahead" are
  therefore the ``max_tokens`` of the work ahead scaled by the measured *fill*: the share of their
  ``max_tokens`` that recent answers really used.
- Until the engine has measured a rate (no request has run yet), nothing can be estimated: no wait.
"""

from __future__ import annotations

from dataclasses import dataclass

# Weight of the newest measurement in the moving averages: about the last 20 steps or answers count.
_SMOOTHING = 0.05


@dataclass(frozen=True)
class Backlog:
    """The work ahead of a new request in one engine, as the engine sees it now."""

    waiting: int = 0  # requests admitted but not yet taken into the batch
    waiting_max_tokens: int = 0  # the sum of their max_tokens
    running_max_tokens: int = 0  # what the running rows may still generate (max_tokens minus generated)
    free_slots: int = 1  # batch rows free for new requests
    tokens_per_second: float | None = None  # all rows together, measured; None until measured
    fill: float = 1.0  # share of max_tokens that recent answers used (0..1]

    def wait_seconds(self) -> float:
        """Seconds a request submitted now would wait before the engine takes it up (see the module)."""
        if self.waiting < self.free_slots or not self.tokens_per_second:
            return 0.0
        ahead = (self.waiting_max_tokens + self.running_max_tokens) * self.fill
        return ahead / self.tokens_per_second


class RateMeter:
    """Moving averages of an engine's decode rate and of how much of ``max_tokens`` answers use.

    Written by the engine's thread, read by any greenlet: each value is one float, replaced whole.
    """

    def __init__(self, smoothing: float = _SMOOTHING) -> None:
        self._smoothing = smoothing
        self.tokens_per_second: float | None = None
        self.fill = 1.0
        self._answers = 0

    def step(self, tokens: int, seconds: float) -> None:
        """``tokens`` were generated (one per row) in a step that took ``seconds``."""
        if tokens <= 0 or seconds <= 0:
            return
        rate = tokens / seconds
        current = self.tokens_per_second
        self.tokens_per_second = rate if current is None else current + self._smoothing * (rate - current)

    def answer(self, generated: int, max_tokens: int) -> None:
        """An answer ended after ``generated`` of its ``max_tokens`` tokens."""
        if max_tokens <= 0:
            return
        used = min(1.0, max(generated, 1) / max_tokens)
        self._answers += 1
        # The first answers weigh more, so one early short answer does not stand for the whole start.
        weight = max(self._smoothing, 1.0 / self._answers)
        self.fill += weight * (used - self.fill)
