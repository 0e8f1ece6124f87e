"""Streamed answers shared through Redis, so that any worker of any instance can resume or stop them.

The worker generating an answer (its *owner*) appends every event to a Redis
stream, one entry per event with the entry id ``<sequence>-0``, so that a
``Last-Event-ID`` maps straight onto an entry; a last entry ``<sequence>-1``
marks the end. Next to the stream, per answer:

- ``meta``: whose answer it is and what to store if its owner dies;
- ``lease``: the owner's id, set with a short expiry and renewed every
  ``TICK_SECONDS`` by the owner; an answer without a lease and without its end
  marker was lost with its owner (``SIGKILL``, a crash, a lost machine);
- ``cancel``: set by any worker to stop the answer (the chat page's Stop),
  read by the owner at its next renewal;
- ``followers``: the responses following the answer on other workers, each
  with an expiry, so that the owner's disconnect grace counts them as clients.

Every key expires ``resume_seconds`` after the answer ends. Keys of one
answer share a hash tag, so the renewal script also runs on a Redis Cluster.

A Redis that does not answer never stops an answer: publishing gives up for
that answer (its own worker still serves it and its reconnects), and another
worker's reconnect is told ``resume_unavailable``. redis-py's sockets are
gevent's once the worker is monkey-patched, so a blocking read waits without
holding the event loop; it blocks for at most one heartbeat, after which the
response writes a heartbeat comment, and so notices a client that is gone.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5  # how often an owner renews its lease, reads the cancel flag and counts remote followers
LEASE_SECONDS = 5.0  # an owner silent this long is taken for dead
MAX_EVENTS = 100_000  # entries kept per answer (an answer has at most max_tokens + 1 events)
_COMMAND_TIMEOUT = 0.5  # seconds, for connecting and for each command but the blocking reads
_RETRY_AFTER = 2.0  # after a failure, Redis is left alone this long
_WARN_EVERY = 30.0
_UNREACHABLE = (RedisError, OSError)
_RUNNING = "llm_api/streams/running"  # every answer being published: message id -> lease expiry

# KEYS: lease, cancel, followers, events, meta. ARGV: lease value, lease ms, now, seconds to keep the rest.
# Renews the lease, keeps the answer's keys alive, drops expired followers; returns {cancel set, followers}.
_TICK = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 3, 5 do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[3])
return {redis.call('EXISTS', KEYS[2]), redis.call('ZCARD', KEYS[3])}
"""


class SharedStateUnavailable(Exception):
    """Redis did not answer (or was left alone after a recent failure)."""


@dataclass(frozen=True)
class StreamLost:
    """The answer's owner stopped before it ended: nothing more will come."""

    message_id: str
    conversation_id: str
    last_sequence: int


@dataclass(frozen=True)
class StreamUnavailable:
    """The rest of the answer cannot be read here (Redis stopped answering, or the events were trimmed)."""

    message_id: str
    conversation_id: str
    last_sequence: int


@dataclass(frozen=True)
class LostAnswer:
    """What the store needs to record an answer whose owner died: the text its clients were sent."""

    message_id: str
    conversation_id: str
    reply_to: str
    owner: str
    text: str
    completion_tokens: int
    prompt_tokens: int
    model: str
    params: dict[str, Any]


@dataclass(frozen=True)
class SharedInfo:
    """An answer as Redis knows it."""

    message_id: str
    owner: str
    conversation_id: str
    done: bool
    last_sequence: int


def _keys(message_id: str) -> dict[str, str]:
    base = f"llm_api/streams/{{{message_id}}}"
    return {name: f"{base}/{name}" for name in ("lease", "cancel", "followers", "events", "meta", "lost")}


def _sequence(entry_id: str) -> tuple[int, int]:
    first, _, second = entry_id.partition("-")
    return int(first), int(second or 0)


class Publication:
    """The owner's side of one answer: its events go to Redis, and each tick renews the lease and says
    whether the answer was cancelled elsewhere and how many remote followers it has. Once Redis fails,
    the answer is no longer shared: the lease then says ``unshared`` (when Redis answers again), so other
    workers say ``resume_unavailable`` instead of taking the answer for lost."""

    def __init__(self, shared: SharedStreams, message_id: str) -> None:
        self.message_id = message_id
        self.broken = False
        self._shared = shared
        self._keys = _keys(message_id)

    def publish(self, sequence: int, frame: str, text: str) -> None:
        self._run(lambda r: r.xadd(self._keys["events"], {"frame": frame, "text": text}, id=f"{sequence}-0",
                                   maxlen=MAX_EVENTS, approximate=True))

    def finish(self, sequence: int) -> None:
        """Mark the end (tried even after a failure: a Redis that answers again learns that the answer ended)."""
        def end(r: redis.Redis) -> None:
            keep = self._shared.keep_seconds
            pipe = r.pipeline(transaction=False)
            pipe.xadd(self._keys["events"], {"done": "1"}, id=f"{sequence}-1")
            pipe.hset(self._keys["meta"], "done", "1")
            for name in ("events", "meta", "cancel", "followers"):
                pipe.expire(self._keys[name], keep)
            pipe.delete(self._keys["lease"])
            pipe.zrem(_RUNNING, self.message_id)
            pipe.execute()

        self.broken = False
        self._run(end)

    def tick(self) -> tuple[bool, int]:
        """Renew the lease; (cancelled elsewhere, remote followers). ``(False, 0)`` when Redis is unreachable."""
        value = "unshared" if self.broken else self._shared.worker_id
        try:
            keys = self._keys
            cancelled, followers = self._shared.call(lambda r: self._shared.tick_script(
                keys=[keys["lease"], keys["cancel"], keys["followers"], keys["events"], keys["meta"]],
                args=[value, int(LEASE_SECONDS * 1000), time.time(), int(self._shared.keep_seconds + LEASE_SECONDS)],
                client=r))
            self._shared.call(lambda r: r.zadd(_RUNNING, {self.message_id: time.time() + LEASE_SECONDS}))
        except SharedStateUnavailable:
            return False, 0
        return bool(cancelled), int(followers)

    def _run(self, command: Any) -> None:
        if self.broken:
            return
        try:
            self._shared.call(command)
        except SharedStateUnavailable:
            self.broken = True
            log.warning("message %s: its events are no longer shared (Redis is unreachable); "
                        "only this worker can resume it", self.message_id)


class SharedStreams:
    """The Redis side of every streamed answer of this worker, and of other workers' answers."""

    def __init__(self, redis_url: str, *, resume_seconds: float, heartbeat_seconds: float) -> None:
        self.worker_id = uuid.uuid4().hex
        self.keep_seconds = max(1, int(resume_seconds + 0.999))
        self.heartbeat_seconds = heartbeat_seconds
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=_COMMAND_TIMEOUT,
                                           socket_connect_timeout=_COMMAND_TIMEOUT, decode_responses=True)
        # Blocking reads wait up to a heartbeat: their socket timeout must be longer.
        self._blocking = redis.Redis.from_url(redis_url, socket_timeout=heartbeat_seconds + 2 * _COMMAND_TIMEOUT,
                                              socket_connect_timeout=_COMMAND_TIMEOUT, decode_responses=True)
        self.tick_script = self._redis.register_script(_TICK)
        self._down_until = 0.0
        self._warned_at = 0.0

    # ---- the owner ---------------------------------------------------------------------------------
    def publish(self, message_id: str, meta: dict[str, str]) -> Publication:
        """Start sharing the answer ``message_id``: its meta, its lease. A Redis that does not answer gives a
        publication that is already broken (the answer stays this worker's alone)."""
        publication = Publication(self, message_id)
        keys = _keys(message_id)

        def start(r: redis.Redis) -> None:
            pipe = r.pipeline(transaction=False)
            fields: dict[Any, Any] = {**meta, "worker": self.worker_id}
            pipe.hset(keys["meta"], mapping=fields)
            pipe.set(keys["lease"], self.worker_id, px=int(LEASE_SECONDS * 1000))
            pipe.expire(keys["meta"], int(self.keep_seconds + LEASE_SECONDS))
            pipe.zadd(_RUNNING, {message_id: time.time() + LEASE_SECONDS})
            pipe.execute()

        publication._run(start)
        return publication

    # ---- any worker --------------------------------------------------------------------------------
    def lookup(self, message_id: str, owner: str) -> SharedInfo | None:
        """The answer ``message_id`` of ``owner`` (another owner's is not found); raises
        :class:`SharedStateUnavailable` when Redis does not answer."""
        keys = _keys(message_id)
        meta = self.call(lambda r: r.hgetall(keys["meta"]))
        if not meta or meta.get("owner", "") != owner:
            return None
        last = self.call(lambda r: r.xrevrange(keys["events"], count=2))
        frames = [entry_id for entry_id, _ in last if _sequence(entry_id)[1] == 0]
        return SharedInfo(message_id, owner, meta.get("conversation_id", ""), meta.get("done") == "1",
                          _sequence(frames[0])[0] if frames else 0)

    def request_cancel(self, message_id: str, owner: str) -> bool:
        """Ask the owner of a running answer to stop it; False when no such answer of ``owner`` is running."""
        info = self.lookup(message_id, owner)
        keys = _keys(message_id)
        if info is None or info.done or not self.call(lambda r: r.exists(keys["lease"])):
            return False
        self.call(lambda r: r.set(keys["cancel"], "1", ex=int(self.keep_seconds + LEASE_SECONDS)))
        return True

    def follow(self, info: SharedInfo, after: int) -> Iterator[str | None | StreamLost | StreamUnavailable]:
        """The answer's events after the first ``after``, then its live tail: frames, ``None`` when a heartbeat
        is due, and at the end a :class:`StreamLost` or :class:`StreamUnavailable` unless the answer ended."""
        keys = _keys(info.message_id)
        follower = uuid.uuid4().hex
        last = after  # the sequence of the last frame sent
        cursor = f"{after}-0"
        try:
            entries = self.call(lambda r: r.xrange(keys["events"], min=f"{after + 1}-0"))
            while True:
                for entry_id, fields in entries:
                    sequence, part = _sequence(entry_id)
                    cursor = entry_id
                    if part == 1:
                        return
                    if sequence != last + 1:  # trimmed away, or published with gaps
                        yield StreamUnavailable(info.message_id, info.conversation_id, last)
                        return
                    last = sequence
                    yield fields["frame"]
                self.call(lambda r: r.zadd(keys["followers"], {follower: time.time() + self.heartbeat_seconds
                                                               + LEASE_SECONDS}))
                found = self.call(lambda r, c=cursor: r.xread({keys["events"]: c},
                                                    block=max(1, int(self.heartbeat_seconds * 1000))), blocking=True)
                entries = found[0][1] if found else []
                if entries:
                    continue
                lease = self.call(lambda r: r.get(keys["lease"]))
                if lease is None or lease == "unshared":
                    entries = self.call(lambda r, c=cursor: r.xrange(keys["events"], min=f"({c}"))
                    if entries:  # it ended (or sent more) just before its lease went
                        continue
                    if lease == "unshared":
                        yield StreamUnavailable(info.message_id, info.conversation_id, last)
                    else:
                        yield StreamLost(info.message_id, info.conversation_id, last)
                    return
                yield None
        except SharedStateUnavailable:
            yield StreamUnavailable(info.message_id, info.conversation_id, last)
        finally:
            try:
                self.call(lambda r: r.zrem(keys["followers"], follower))
            except SharedStateUnavailable:
                pass

    def claim_lost(self, message_id: str) -> LostAnswer | None:
        """The lost answer ``message_id`` for whichever worker claims it first (``None`` for the others, or when
        it is not lost): the text its clients were sent, to be stored once."""
        keys = _keys(message_id)
        if self.call(lambda r: r.exists(keys["lease"])):
            return None
        if not self.call(lambda r: r.set(keys["lost"], self.worker_id, nx=True, ex=int(self.keep_seconds + 60))):
            return None
        meta = self.call(lambda r: r.hgetall(keys["meta"]))
        entries = self.call(lambda r: r.xrange(keys["events"]))
        self.call(lambda r: r.zrem(_RUNNING, message_id))
        if not meta or meta.get("done") == "1":
            return None
        frames = [fields for entry_id, fields in entries if _sequence(entry_id)[1] == 0]
        return LostAnswer(message_id, meta.get("conversation_id", ""), meta.get("reply_to", ""),
                          meta.get("owner", ""), "".join(f.get("text", "") for f in frames),
                          sum(1 for f in frames if f.get("text")), int(meta.get("prompt_tokens", "0")),
                          meta.get("model", ""), json.loads(meta.get("params", "{}")))

    def stale(self) -> list[str]:
        """Answers whose owner has not renewed its lease for a while (candidates for :meth:`claim_lost`)."""
        return list(self.call(lambda r: r.zrangebyscore(_RUNNING, "-inf", time.time() - LEASE_SECONDS)))

    # ---- failing open ------------------------------------------------------------------------------
    def call(self, command: Any, blocking: bool = False) -> Any:
        """``command(client)``; raises :class:`SharedStateUnavailable` when Redis fails, and for a moment after."""
        if time.monotonic() < self._down_until:
            raise SharedStateUnavailable
        try:
            return command(self._blocking if blocking else self._redis)
        except _UNREACHABLE as exc:
            self._down_until = time.monotonic() + _RETRY_AFTER
            if time.monotonic() - self._warned_at > _WARN_EVERY:
                self._warned_at = time.monotonic()
                log.warning("shared stream state unreachable (%s): streams stay on their own worker until "
                            "Redis answers", exc)
            raise SharedStateUnavailable from exc
