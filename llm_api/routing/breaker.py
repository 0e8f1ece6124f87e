"""A circuit breaker per engine: closed → open after N failures in a window → half-open → closed.

Plain Python with an injectable clock (``now``), used only from greenlets of one
worker's main thread, so it needs no lock. Each worker keeps its own breakers.

- **closed**: every request goes through; failures are remembered for ``window``
  seconds, and the ``failures``-th one within the window opens the circuit.
- **open**: requests are rejected at once (:meth:`allow` is False) for ``cooldown`` seconds.
- **half-open**: after the cool-down exactly one request (the probe) is let through;
  the others are still rejected. The probe's success closes the circuit (and forgets
  the old failures); its failure opens it again for another cool-down. A probe that
  ends without an outcome (its client left first) frees the slot for the next probe.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # the llm_api_circuit_state gauge


@dataclass(frozen=True)
class Pass:
    """Leave to send one request; ``probe`` when it is the one request of a half-open circuit."""

    probe: bool


class CircuitBreaker:
    def __init__(self, failures: int = 5, window: float = 60.0, cooldown: float = 30.0,
                 now: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or window <= 0 or cooldown < 0:
            raise ValueError("failures >= 1, window > 0 and cooldown >= 0")
        self.failures = failures
        self.window = window
        self.cooldown = cooldown
        self._now = now
        self._recent: deque[float] = deque()  # failure times while closed
        self._opened_at: float | None = None
        self._probing = False  # half-open: the one probe is out

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return CLOSED
        if self._now() - self._opened_at < self.cooldown:
            return OPEN
        return HALF_OPEN

    def allow(self) -> Pass | None:
        """May a request go to this engine now? None when not; in half-open, a pass exactly once (the probe)
        until that probe's outcome. Report the outcome with :meth:`success`, :meth:`failure` or :meth:`release`."""
        state = self.state
        if state == CLOSED:
            return Pass(probe=False)
        if state == OPEN or self._probing:
            return None
        self._probing = True
        return Pass(probe=True)

    def success(self, ticket: Pass) -> None:
        if ticket.probe and self._probing:
            self._close()
        # while closed a success changes nothing: failures count within the window

    def failure(self, ticket: Pass) -> None:
        now = self._now()
        if self._opened_at is not None:
            if ticket.probe and self._probing:  # the probe failed: open again for another cool-down
                self._open(now)
            return  # a request let through before the circuit opened: already counted against it
        self._recent.append(now)
        while self._recent and now - self._recent[0] > self.window:
            self._recent.popleft()
        if len(self._recent) >= self.failures:
            self._open(now)

    def release(self, ticket: Pass) -> None:
        """A request let through ended without an outcome (cancelled first): the probe slot frees."""
        if ticket.probe and self._probing:
            self._probing = False

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._probing = False
        self._recent.clear()

    def _close(self) -> None:
        self._opened_at = None
        self._probing = False
        self._recent.clear()
