"""Hand-off of events from the engine's OS thread to the greenlet that streams them.

The engine thread appends to a deque (atomic in CPython) and pokes an event-loop
async watcher, which is the documented thread-safe way to wake a gevent hub. The
consumer greenlet is woken at once instead of on the next worker heartbeat.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import gevent
from gevent.event import Event

from .native import native_lock


class Channel:
    """Single-producer (any OS thread), single-consumer (one greenlet) event queue."""

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._ready = Event()
        self._watcher = gevent.get_hub().loop.async_()
        self._watcher.start(self._ready.set)
        self._watcher_lock = native_lock()  # close() must not race a send()

    def put(self, item: Any) -> None:
        """Called from the engine thread."""
        self._items.append(item)
        with self._watcher_lock:
            if self._watcher is not None:
                self._watcher.send()

    def get(self, timeout: float | None = None) -> Any | None:
        """Next item, or ``None`` if ``timeout`` seconds pass first (used for heartbeats)."""
        while True:
            self._ready.clear()
            if self._items:
                return self._items.popleft()
            if not self._ready.wait(timeout) and not self._items:
                return None

    def close(self) -> None:
        """Release the watcher; later ``put`` calls are kept but wake nobody."""
        with self._watcher_lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
            watcher.close()
