"""Where quota counters live: Redis when configured (shared by every worker), else this process.

Fixed one-minute windows come from the ``limits`` package. Two things it does
not do are written here: giving back the unused part of a token reservation
(a negative increment, never below zero), and counting concurrent streams
(a sorted set of stream leases, so a crashed worker's streams expire).

A broken Redis never stops the service: every call fails open (allowed,
logged at most every ``_WARN_EVERY`` seconds) and Redis is not tried again for
``_RETRY_AFTER`` seconds, so a dead server costs no latency; counting resumes
by itself when it answers again.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from limits import RateLimitItem
from limits.errors import StorageError as LimitsStorageError
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import FixedWindowRateLimiter
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
T = TypeVar("T")

_RETRY_AFTER = 2.0
_WARN_EVERY = 30.0
_REDIS_TIMEOUT = 0.5  # seconds, for connecting and for each command
_UNREACHABLE = (LimitsStorageError, RedisError, OSError)

# KEYS[1] the set; ARGV: now, lease expiry, cap, member. Drops expired leases, then takes one if below the cap.
_ACQUIRE_LEASE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 1)
return 1
"""


class QuotaBackend:
    def __init__(self, redis_url: str = "") -> None:
        self.shared = bool(redis_url)
        self._redis: Any = None  # the redis client under limits' storage, for the stream-slot leases
        self.storage: Storage
        if redis_url:
            redis_storage = RedisStorage(redis_url, wrap_exceptions=True, socket_timeout=_REDIS_TIMEOUT,
                                         socket_connect_timeout=_REDIS_TIMEOUT)
            self._redis = redis_storage.storage
            self.storage = redis_storage
        else:
            self.storage = MemoryStorage()
        self._windows = FixedWindowRateLimiter(self.storage)
        self._leases: dict[str, dict[str, float]] = {}  # without Redis: set name -> member -> expiry
        self._acquire_lease = self._redis.register_script(_ACQUIRE_LEASE) if redis_url else None
        self._down_until = 0.0
        self._warned_at = 0.0

    # ---- windows --------------------------------------------------------------------------------
    def take(self, item: RateLimitItem, identity: str, cost: int) -> bool:
        """Count ``cost`` in the current window if it fits under the limit; nothing is counted otherwise."""
        def run() -> bool:
            if self._windows.hit(item, identity, cost=cost):
                return True
            self.storage.incr(item.key_for(identity), item.get_expiry(), amount=-cost)
            return False

        return self._guarded(run, True)

    def give_back(self, item: RateLimitItem, identity: str, amount: int) -> None:
        """Uncount ``amount``, but never below zero: a window that ended since the charge has been reset,
        and the refund must not lend the new one more than the limit."""
        def run() -> None:
            key = item.key_for(identity)
            refund = min(amount, self.storage.get(key))
            if refund > 0:
                self.storage.incr(key, item.get_expiry(), amount=-refund)

        if amount > 0:
            self._guarded(run, None)

    def window(self, item: RateLimitItem, identity: str) -> tuple[int, float] | None:
        """(remaining, seconds until the window resets), or None when the counters are unreachable."""
        def run() -> tuple[int, float]:
            stats = self._windows.get_window_stats(item, identity)
            return stats.remaining, max(0.0, stats.reset_time - time.time())

        return self._guarded(run, None)

    # ---- leases ---------------------------------------------------------------------------------
    def acquire_lease(self, name: str, cap: int, seconds: float) -> str | None:
        """A lease in set ``name`` if fewer than ``cap`` are held; returns its id, or None when full."""
        member = uuid.uuid4().hex

        def run() -> str | None:
            now = time.time()
            if self._acquire_lease is not None:
                return member if self._acquire_lease(keys=[f"llm_api/leases/{name}"],
                                                     args=[now, now + seconds, cap, member]) else None
            held = {m: t for m, t in self._leases.get(name, {}).items() if t > now}
            if len(held) >= cap:
                return None
            self._leases[name] = {**held, member: now + seconds}
            return member

        granted: str | None = member  # with the counters unreachable, the lease is granted (fail open)
        return self._guarded(run, granted)

    def release_lease(self, name: str, member: str) -> None:
        def run() -> None:
            if self._acquire_lease is not None:
                self._redis.zrem(f"llm_api/leases/{name}", member)
            else:
                self._leases.get(name, {}).pop(member, None)

        self._guarded(run, None)

    # ---- failing open ---------------------------------------------------------------------------
    def _guarded(self, call: Callable[[], T], fallback: T) -> T:
        if not self.shared:
            return call()
        if time.monotonic() < self._down_until:
            return fallback
        try:
            return call()
        except _UNREACHABLE as exc:
            self._down_until = time.monotonic() + _RETRY_AFTER
            if time.monotonic() - self._warned_at > _WARN_EVERY:
                self._warned_at = time.monotonic()
                log.warning("rate-limit counters unreachable (%s): allowing requests until Redis answers", exc)
            return fallback
