"""Embedding engines: the interface where the embeddings service meets a model that turns text into vectors.

An embedding request is tokenized on the caller's greenlet (cheap), checked against the model's window and
vocabulary, then handed to the engine, whose own OS thread embeds the inputs of every waiting request
together and hands each request its rows back through a :class:`~llm_api.generation.channel.Channel`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .channel import Channel
from .errors import EngineError


class InputTooLongError(EngineError):
    """An input has more tokens than the model's window."""

    def __init__(self, index: int, tokens: int, window: int) -> None:
        super().__init__(f"Input {index} has {tokens} tokens; this model embeds at most {window} "
                         f"(special tokens included).")
        self.index = index
        self.tokens = tokens
        self.window = window


class TokenIdError(EngineError):
    """A token-array input holds an id outside the model's vocabulary."""

    def __init__(self, index: int, token: int, vocab_size: int) -> None:
        super().__init__(f"Input {index} holds the token id {token}, outside this model's vocabulary "
                         f"(0 to {vocab_size - 1}).")
        self.index = index
        self.token = token
        self.vocab_size = vocab_size


class UnsupportedDimensionsError(EngineError):
    """``dimensions`` asks for another vector length than the model gives."""

    def __init__(self, model: str, asked: int, dimensions: int) -> None:
        super().__init__(f"The model `{model}` gives {dimensions} dimensions and cannot shorten its vectors; "
                         f"leave dimensions out or send {dimensions} (got {asked}).")
        self.asked = asked
        self.dimensions = dimensions


class EmbeddingFailed(EngineError):
    """The model failed while embedding (the request's inputs get no vectors)."""


@dataclass(frozen=True)
class Embeddings:
    """One request's vectors: ``rows`` holds one float32 row per input, in input order."""

    rows: Any  # a float32 array of shape (inputs, dimensions) (numpy, kept untyped so no numpy import here)
    tokens: int  # tokens the model ran over, special tokens included


class EmbeddingHandle:
    """The caller's side of one submitted embedding request."""

    def __init__(self, request_id: str, inputs: list[list[int]]) -> None:
        self.request_id = request_id
        self.inputs = inputs
        self.channel = Channel()

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.inputs)

    def deliver(self, rows: Any) -> None:
        """Engine thread: the vectors, in input order."""
        self.channel.put(rows)

    def fail(self, error: EngineError) -> None:
        """Engine thread: the request gets no vectors."""
        self.channel.put(error)

    def result(self, timeout: float | None = None) -> Embeddings:
        """Wait (cooperatively) for the vectors; raises the engine's error, or :class:`EmbeddingFailed` when
        ``timeout`` seconds pass first."""
        try:
            item = self.channel.get(timeout)
        finally:
            self.channel.close()
        if item is None:
            raise EmbeddingFailed(f"no vectors within {timeout} seconds")
        if isinstance(item, EngineError):
            raise item
        return Embeddings(item, self.tokens)


class EmbeddingEngine(Protocol):
    """A model that embeds: facts, readiness, life cycle, tokenizing and admission."""

    @property
    def model_name(self) -> str:
        """The id clients name in ``model`` (known before the model has loaded)."""

    @property
    def context_length(self) -> int:
        """Tokens one input may have, special tokens included (0 until loaded)."""

    @property
    def dimensions(self) -> int:
        """Length of each vector (0 until loaded)."""

    @property
    def ready(self) -> bool: ...

    @property
    def load_error(self) -> str | None: ...

    @property
    def load_seconds(self) -> float | None: ...

    @property
    def queued(self) -> int:
        """Requests admitted but not yet taken up by the engine thread."""

    @property
    def stats(self) -> Mapping[str, int]:
        """Counters: requests, inputs, tokens, passes (forward passes), errors."""

    def start(self, on_load_failure: Callable[[str], None] | None = None) -> None: ...

    def stop(self, timeout: float = 10.0) -> None: ...

    def wait_ready(self, timeout: float) -> bool: ...

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Texts → ids as the model reads them (special tokens included), not truncated."""

    def from_token_ids(self, ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """Token arrays in the model's own vocabulary → ids with the special tokens added; raises
        :class:`TokenIdError` for an id outside the vocabulary."""

    def submit(self, request_id: str, inputs: list[list[int]]) -> EmbeddingHandle:
        """Admit ids made by :meth:`tokenize` or :meth:`from_token_ids`, or raise at once (not ready, queue
        full, :class:`InputTooLongError`)."""
