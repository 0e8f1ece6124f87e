"""Stop sequences matched on the growing text, across token boundaries.

Text that could still turn into a stop sequence is held back; the stop text
itself is never emitted.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add new text; return what is safe to emit now. Sets ``stopped`` on a match."""
        if not self._stops:
            return text
        self._pending += text
        cut = min((i for i in (self._pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        hold = self._longest_partial_stop()
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold:]
        return out

    def flush(self) -> str:
        """The held-back text when generation ends without a match."""
        out, self._pending = self._pending, ""
        return out

    def _longest_partial_stop(self) -> int:
        """Length of the longest suffix of the pending text that starts some stop sequence."""
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:size]):
                    best = size
                    break
        return best
