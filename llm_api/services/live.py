"""Streams that survive a reconnect: each streamed answer's events, kept in this worker.

A pump greenlet reads the answer's events into a list while any number of
responses follow it from a position (a new client from the start, a
reconnecting one from its ``Last-Event-ID``). The answer keeps generating while
no client is attached for ``grace_seconds``, then is cancelled; its events are
kept for ``resume_seconds`` after it ends, then forgotten. Only streams whose
clients reconnect by themselves (the browser's ``EventSource``) wait for a
reconnect; the others are cancelled as soon as their client goes, and a
reconnect to one gets its events up to its ``cancelled`` finish.

With shared state (:mod:`.shared_streams`, when Redis is configured) every
answer's events are also published to Redis, and a worker that does not hold
an answer follows it there (:class:`RemoteStream`): reconnects and Stop then
work on any worker of any instance, and a remote follower counts as a client
for the disconnect grace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator

import gevent
from gevent.event import Event

from .chat import ChatStream, stored_params
from .shared_streams import (
    TICK_SECONDS,
    LostAnswer,
    Publication,
    SharedInfo,
    SharedStateUnavailable,
    SharedStreams,
    StreamLost,
    StreamUnavailable,
)

log = logging.getLogger(__name__)

# How long an answer waits for its first client to start reading before it is cancelled.
FIRST_CLIENT_SECONDS = 10.0
SWEEP_SECONDS = 10.0  # how often a worker looks for answers whose owner died without anyone resuming them

FollowItem = str | None | StreamLost | StreamUnavailable


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
        self._remote_followers = 0  # responses following this answer on other workers (shared state only)
        self._text_sent = 0  # how much of the answer's text the published events carry
        self._publication: Publication | None = None
        if registry.shared is not None:
            self._publication = registry.shared.publish(self.message_id, _meta(stream))
        # Armed until the first client attaches: a response that is never read still ends the generation.
        self._abandon_timer: gevent.Greenlet | None = gevent.spawn_later(
            max(grace_seconds, FIRST_CLIENT_SECONDS), self._abandon)
        self._pump = gevent.spawn(self._run, events)
        self._watcher = gevent.spawn(self._watch) if self._publication is not None else None

    def follow(self, after: int = 0) -> Iterator[FollowItem]:
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
            if self._publication is not None:
                self._publication.finish(len(self.events))
            self._registry.finished(self)

    def _publish(self, event: str | None) -> None:
        if event is not None:
            self.events.append(event)
            if self._publication is not None:
                text = self._stream.text[self._text_sent:]
                self._text_sent = len(self._stream.text)
                self._publication.publish(len(self.events), event, text)
        changed, self._changed = self._changed, Event()
        changed.set()

    def _watch(self) -> None:
        """Renew the shared lease until the answer ends; act on a cancel from another worker, and keep the
        answer alive while another worker's response follows it."""
        assert self._publication is not None
        while not self.done:
            cancelled, remote = self._publication.tick()
            if cancelled:
                log.info("message %s: cancelled from another worker", self.message_id)
                self._stream.cancel()
            if remote and not self._remote_followers and self._abandon_timer is not None:
                self._abandon_timer.kill(block=False)
                self._abandon_timer = None
            elif not remote and self._remote_followers and not self._followers:
                self._detached()
            self._remote_followers = remote
            gevent.sleep(TICK_SECONDS)

    def _attach(self) -> None:
        self._followers += 1
        if self._abandon_timer is not None:
            self._abandon_timer.kill(block=False)
            self._abandon_timer = None

    def _detach(self) -> None:
        self._followers -= 1
        if self._followers == 0 and not self._remote_followers:
            self._detached()

    def _detached(self) -> None:
        """The last client, here or elsewhere, has gone: cancel after the grace."""
        if not self.done:
            if self._abandon_timer is not None:
                self._abandon_timer.kill(block=False)
            if self.grace_seconds > 0:
                self._abandon_timer = gevent.spawn_later(self.grace_seconds, self._abandon)
            else:
                self._abandon()

    def _abandon(self) -> None:
        if self._followers == 0 and not self._remote_followers and not self.done:
            log.info("message %s: its client is gone, cancelling", self.message_id)
            self._stream.cancel()


class RemoteStream:
    """An answer generated by another worker, followed through the shared state."""

    def __init__(self, info: SharedInfo, registry: LiveStreams) -> None:
        self.message_id = info.message_id
        self.info = info
        self._registry = registry

    @property
    def done(self) -> bool:
        return self.info.done

    @property
    def last_sequence(self) -> int:
        return self.info.last_sequence

    def follow(self, after: int = 0) -> Iterator[FollowItem]:
        """Like :meth:`LiveStream.follow`; ends with a :class:`StreamLost` when the owner died (the answer is
        then stored as lost) or a :class:`StreamUnavailable` when the rest cannot be read here."""
        shared = self._registry.shared
        assert shared is not None
        for item in shared.follow(self.info, after):
            if isinstance(item, StreamLost):
                self._registry.settle_lost(self.message_id)
            yield item


class LiveStreams:
    """This worker's streamed answers, by message id; with ``shared``, every worker's."""

    def __init__(self, *, resume_seconds: float, grace_seconds: float, heartbeat_seconds: float,
                 shared: SharedStreams | None = None,
                 on_lost: Callable[[LostAnswer], None] | None = None) -> None:
        self.resume_seconds = resume_seconds
        self.grace_seconds = grace_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.shared = shared
        self._on_lost = on_lost  # stores an answer whose owner died (the chat service)
        self._streams: dict[str, LiveStream] = {}
        self._sweeper = gevent.spawn(self._sweep) if shared is not None else None

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

    def find(self, message_id: str, owner: str) -> LiveStream | RemoteStream | None:
        """The answer ``message_id`` of ``owner``: this worker's, else (with shared state) another worker's.
        Raises :class:`SharedStateUnavailable` when it is not here and Redis does not answer."""
        live = self.get(message_id, owner)
        if live is not None or self.shared is None:
            return live
        info = self.shared.lookup(message_id, owner)
        return RemoteStream(info, self) if info is not None else None

    def cancel(self, message_id: str, owner: str) -> bool:
        """Stop the running answer ``message_id`` of ``owner`` wherever it is generated; False when there is
        none. Raises :class:`SharedStateUnavailable` when it is not here and Redis does not answer."""
        live = self.get(message_id, owner)
        if live is not None:
            if live.done:
                return False
            live.cancel()
            return True
        return self.shared is not None and self.shared.request_cancel(message_id, owner)

    def settle_lost(self, message_id: str) -> None:
        """Store the answer ``message_id`` as lost, once over all workers (the first to claim it does)."""
        if self.shared is None:
            return
        try:
            lost = self.shared.claim_lost(message_id)
        except SharedStateUnavailable:
            return
        if lost is not None:
            log.warning("message %s: its generation was lost with the worker running it", message_id)
            if self._on_lost is not None:
                self._on_lost(lost)

    def finished(self, live: LiveStream) -> None:
        gevent.spawn_later(self.resume_seconds, self._streams.pop, live.message_id, None)

    def _sweep(self) -> None:
        """Answers lost with their worker while no client followed them are stored as lost too."""
        assert self.shared is not None
        while True:
            gevent.sleep(SWEEP_SECONDS)
            try:
                for message_id in self.shared.stale():
                    self.settle_lost(message_id)
            except SharedStateUnavailable:
                pass
            except Exception:
                log.exception("the sweep for lost answers failed")

    def __len__(self) -> int:
        return len(self._streams)


def _meta(stream: ChatStream) -> dict[str, str]:
    """What another worker needs of an answer: whose it is, and what to store if its owner dies."""
    return {"owner": stream.turn.owner, "conversation_id": stream.conversation_id,
            "reply_to": stream.turn.user_message_id, "prompt_tokens": str(stream.prompt_tokens),
            "model": stream.engine[1], "params": json.dumps(stored_params(stream.request))}
