"""The caller's side of one submitted request: its events, and a way to cancel it."""

from __future__ import annotations

import time
from collections.abc import Callable

from .channel import Channel
from .types import Finished, GenerationRequest, TextDelta


class GenerationHandle:
    """The caller's side of a submitted request: its events, and a way to cancel it."""

    # A bare engine's handle answers for itself; the router's handle names the chain's engine that answered.
    engine_name = ""
    model_name = ""
    degraded = False

    def __init__(self, request: GenerationRequest, channel: Channel, on_cancel: Callable[[], None]) -> None:
        self.request = request
        self.channel = channel
        self.submitted_at = time.monotonic()
        self.cancelled = False  # written by the caller's greenlet, read by the engine thread
        self.cancel_reason = "cancelled"  # the finish reason the engine reports for a cancelled request
        self.cancel_seen_at_token: int | None = None  # completion tokens when the engine saw the flag
        self._on_cancel = on_cancel

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop generating; the request finishes with ``reason`` (``cancelled``, or ``timeout``)."""
        if not self.cancelled:
            self.cancel_reason = reason
            self.cancelled = True
            self._on_cancel()

    def next_event(self, timeout: float | None) -> TextDelta | Finished | None:
        """The next event, or ``None`` after ``timeout`` seconds without one (time for a heartbeat)."""
        return self.channel.get(timeout)

    def close(self) -> None:
        """The caller reads no more events: release the channel's wake-up watcher."""
        self.channel.close()
