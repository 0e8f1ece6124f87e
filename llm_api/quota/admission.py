"""Admitting a generation under its key's quotas, and the ``x-ratelimit-*`` headers.

A request reserves its prompt tokens plus its ``max_tokens`` against the key's
tokens-per-minute when it is admitted; when it ends, the tokens it did not
generate are given back to the same window. Requests per minute count admitted
generations. A stream lease counts it against the key's concurrent streams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from limits import RateLimitItemPerMinute

from ..storage import ApiKey
from .backend import QuotaBackend


class QuotaExceeded(Exception):
    def __init__(self, limit: str, retry_after: float, message: str) -> None:
        super().__init__(message)
        self.limit = limit  # requests | tokens | streams
        self.retry_after = max(1, math.ceil(retry_after))


@dataclass
class Reservation:
    """What one admitted generation holds until :meth:`release`."""

    quotas: Quotas | None
    key: ApiKey | None
    tokens: int
    lease: str | None = None
    released: bool = False

    def release(self, used_tokens: int) -> None:
        """Give back the unused tokens and the stream slot; only the first call (or cancel) counts."""
        self._end(self.tokens - used_tokens, request=False)

    def cancel(self) -> None:
        """The request was refused after admission (queue full, store down): give back all of it."""
        self._end(self.tokens, request=True)

    def _end(self, unused_tokens: int, *, request: bool) -> None:
        if self.released or self.quotas is None or self.key is None:
            return
        self.released = True
        self.quotas.settle(self.key, unused_tokens=unused_tokens, lease=self.lease, request=request)


class Quotas:
    def __init__(self, backend: QuotaBackend, lease_seconds: float) -> None:
        self.backend = backend
        self.lease_seconds = lease_seconds

    def admit(self, key: ApiKey | None, tokens: int) -> Reservation:
        """Reserve a request, ``tokens`` tokens and a stream slot for ``key``; raises :class:`QuotaExceeded`."""
        if key is None:
            return Reservation(None, None, 0)
        lease = None
        if key.max_streams is not None:
            lease = self.backend.acquire_lease(_streams(key), key.max_streams, self.lease_seconds)
            if lease is None:
                raise QuotaExceeded("streams", 1, f"This key already has {key.max_streams} streams running "
                                    "(its concurrent stream limit).")
        took_request = False
        try:
            self._take(key.rpm, key.id, "requests", 1)
            took_request = True
            self._take(key.tpm, key.id, "tokens", tokens)
        except QuotaExceeded:
            self.settle(key, unused_tokens=0, lease=lease, request=took_request)
            raise
        return Reservation(self, key, tokens if key.tpm is not None else 0, lease)

    def settle(self, key: ApiKey, *, unused_tokens: int, lease: str | None, request: bool = False) -> None:
        """Give back what a request held: ``unused_tokens``, its stream ``lease``, and with ``request``
        its count against the requests per minute."""
        if request and key.rpm is not None:
            self.backend.give_back(_per_minute(key.rpm), _identity(key.id, "requests"), 1)
        if key.tpm is not None and unused_tokens > 0:
            self.backend.give_back(_per_minute(key.tpm), _identity(key.id, "tokens"), unused_tokens)
        if lease is not None:
            self.backend.release_lease(_streams(key), lease)

    def headers(self, key: ApiKey) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the key's limits."""
        headers: dict[str, str] = {}
        for kind, limit in (("requests", key.rpm), ("tokens", key.tpm)):
            if limit is None:
                continue
            window = self.backend.window(_per_minute(limit), _identity(key.id, kind))
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            if window is not None:
                remaining, reset = window
                headers[f"x-ratelimit-remaining-{kind}"] = str(remaining)
                headers[f"x-ratelimit-reset-{kind}"] = f"{math.ceil(reset)}s"
        return headers

    def _take(self, limit: int | None, key_id: str, kind: str, cost: int) -> None:
        if limit is None:
            return
        item = _per_minute(limit)
        if cost > limit:
            raise QuotaExceeded(kind, 60, f"This request needs {cost} {kind}, more than the key's limit of "
                                f"{limit} per minute; lower max_tokens.")
        if not self.backend.take(item, _identity(key_id, kind), cost):
            window = self.backend.window(item, _identity(key_id, kind))
            retry_after = window[1] if window else 1
            raise QuotaExceeded(kind, retry_after, f"Rate limit reached: {limit} {kind} per minute for this key.")


def _per_minute(limit: int) -> RateLimitItemPerMinute:
    return RateLimitItemPerMinute(limit)


def _identity(key_id: str, kind: str) -> str:
    return f"{kind}/{key_id}"


def _streams(key: ApiKey) -> str:
    """The set of a key's stream leases."""
    return f"streams/{key.id}"
