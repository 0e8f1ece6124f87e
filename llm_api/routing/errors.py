"""Errors of the engine chain: an upstream that cannot be reached or refuses the request, an open circuit."""

from __future__ import annotations

from ..generation.errors import EngineError


class EngineUnavailableError(EngineError):
    """The engine cannot take work now: an upstream that cannot be reached or answers with a server
    error, or an engine whose circuit breaker is open."""


class CircuitOpenError(EngineUnavailableError):
    """The engine's circuit breaker is open: it is skipped without being tried."""


class FeatureSkipError(EngineUnavailableError):
    """The engine does not honour a feature the request uses: skipped without being tried."""


class UpstreamRejectedError(EngineError):
    """An upstream refused the request itself (a 4xx other than 401, 403, 408 and 429): the caller's fault,
    so neither a fallback nor a breaker failure."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
