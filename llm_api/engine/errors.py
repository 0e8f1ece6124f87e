"""Errors the engine raises; the HTTP layer maps each to a status code in one place."""

from __future__ import annotations


class EngineError(Exception):
    """Base class for engine failures."""


class NotReadyError(EngineError):
    """The model is still loading (or failed to load)."""


class QueueFullError(EngineError):
    """Admission is bounded and the queue is full."""


class ContextLengthError(EngineError):
    """Prompt plus requested tokens do not fit the model's context."""

    def __init__(self, prompt_tokens: int, max_tokens: int, context_length: int) -> None:
        super().__init__(
            f"This model's context is {context_length} tokens; the prompt has {prompt_tokens} "
            f"and max_tokens asks for {max_tokens} more ({prompt_tokens + max_tokens} in all)."
        )
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length


class ModelLoadError(EngineError):
    """The model could not be loaded; the message says why and what to do."""


class GenerationError(EngineError):
    """Generation started but failed inside the model."""


class EngineUnavailableError(EngineError):
    """The engine cannot take work now: an upstream that cannot be reached or answers with a server
    error, or an engine whose circuit breaker is open."""


class CircuitOpenError(EngineUnavailableError):
    """The engine's circuit breaker is open: it is skipped without being tried."""


class UpstreamRejectedError(EngineError):
    """An upstream refused the request itself (a 4xx other than 401, 403, 408 and 429): the caller's fault,
    so neither a fallback nor a breaker failure."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
