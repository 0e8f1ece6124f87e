"""Streams that survive a reconnect: each streamed answer's events, kept in this worker.

A pump greenlet reads the answer's events into a list while any number of
responses follow it from a position (a new client from the start, a
reconnecting one from its ``Last-Event-ID``). The answer keeps generating while
no client is attached for ``grace_seconds``, then is cancelled; its events are
kept for ``resume_seconds`` after it ends, then forgotten. Only streams whose
clients reconnect by themselves (the browser's ``EventSource``) wait for a
reconnect; the others are cancelled as soon as their client goes, and a
reconnect to one gets its events up to its ``cancelled`` finish.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import gevent
from gevent.event import Event

from .chat import ChatStream

log = logging.getLogger(__name__)

# How long an answer waits for its first client to start reading before it is cancelled.
FIRST_CLIENT_SECONDS = 10.0


class LiveStream:
    """One answer's events (opaque strings, in order) and the clients following them."""

    def __init__(self, stream: ChatStream, events: Iterable[str], registry: LiveStreams,
                 grace_seconds: float) -> None:
        self.message_id = stream.message_id
        self.owner = stream.turn.owner
        self.grace_seconds = grace_seconds
        self.events: list[str] = []
        self.done = False
        self._stream = stream
        self._registry = registry
        self._changed = Event()
        self._followers = 0
        # Armed until the first client attaches: a response that is never read still ends the generation.
        self._abandon_timer: gevent.Greenlet | None = gevent.spawn_later(
            max(grace_seconds, FIRST_CLIENT_SECONDS), self._abandon)
        self._pump = gevent.spawn(self._run, events)

    def follow(self, after: int = 0) -> Iterator[str | None]:
        """Events after the first ``after``, then the live tail; ``None`` when a heartbeat is due."""
        self._attach()
        try:
            position = after
            while True:
                while position < len(self.events):
                    position += 1
                    yield self.events[position - 1]
                if self.done:
                    return
                changed = self._changed
                if not changed.wait(self._registry.heartbeat_seconds):
                    yield None
        finally:
            self._detach()

    def cancel(self) -> None:
        """Stop the answer now (its client asked); followers then get its ``cancelled`` finish."""
        self._stream.cancel()

    def _run(self, events: Iterable[str]) -> None:
        try:
            for event in events:
                self._publish(event)
        except Exception:
            log.exception("message %s: stream pump failed", self.message_id)
        finally:
            self.done = True
            self._publish(None)
            self._registry.finished(self)

    def _publish(self, event: str | None) -> None:
        if event is not None:
            self.events.append(event)
        changed, self._changed = self._changed, Event()
        changed.set()

    def _attach(self) -> None:
        self._followers += 1
        if self._abandon_timer is not None:
            self._abandon_timer.kill(block=False)
            self._abandon_timer = None

    def _detach(self) -> None:
        self._followers -= 1
        if self._followers == 0 and not self.done:
            if self.grace_seconds > 0:
                self._abandon_timer = gevent.spawn_later(self.grace_seconds, self._abandon)
            else:
                self._abandon()

    def _abandon(self) -> None:
        if self._followers == 0 and not self.done:
            log.info("message %s: its client is gone, cancelling", self.message_id)
            self._stream.cancel()


class LiveStreams:
    """This worker's streamed answers, by message id."""

    def __init__(self, *, resume_seconds: float, grace_seconds: float, heartbeat_seconds: float) -> None:
        self.resume_seconds = resume_seconds
        self.grace_seconds = grace_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self._streams: dict[str, LiveStream] = {}

    def start(self, stream: ChatStream, events: Iterable[str], *, wait_for_reconnect: bool) -> LiveStream:
        """Follow ``stream``. With ``wait_for_reconnect`` it keeps generating for ``grace_seconds`` while no
        client is attached; without, it is cancelled as soon as its last client goes."""
        live = LiveStream(stream, events, self, self.grace_seconds if wait_for_reconnect else 0.0)
        self._streams[live.message_id] = live
        return live

    def get(self, message_id: str, owner: str) -> LiveStream | None:
        """The answer ``message_id`` of ``owner`` kept in this worker (another owner's is not found)."""
        live = self._streams.get(message_id)
        return live if live is not None and live.owner == owner else None

    def finished(self, live: LiveStream) -> None:
        gevent.spawn_later(self.resume_seconds, self._streams.pop, live.message_id, None)

    def __len__(self) -> int:
        return len(self._streams)
