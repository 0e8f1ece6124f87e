"""Errors every engine may raise (local, upstream or the router); the HTTP layer maps each to a status in one place."""

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


class GenerationError(EngineError):
    """Generation started but failed inside the model."""
