"""A scripted embedding engine with the real one's surface, for HTTP-layer tests (no model).

Each character is a token (its code point modulo the vocabulary, plus 2), between a begin (0) and an end (1)
token; a vector is the input's normalised counts of token ids folded into ``dimensions`` buckets, so equal
ids give equal vectors and the tests can compute what to expect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from llm_api.generation.embedding import EmbeddingHandle, InputTooLongError, TokenIdError
from llm_api.generation.errors import NotReadyError


class FakeEmbedder:
    model_name = "fake-embedder"
    context_length = 16
    dimensions = 8
    vocab_size = 100
    load_seconds: float | None = 0.0
    load_error: str | None = None
    queued = 0

    def __init__(self) -> None:
        self.ready = True
        self.started = False
        self.submitted: list[list[list[int]]] = []
        self.stats: dict[str, int] = {"requests": 0, "inputs": 0, "tokens": 0, "passes": 0, "errors": 0}

    def start(self, on_load_failure: Callable[[str], None] | None = None) -> None:
        self.started = True

    def stop(self, timeout: float = 10.0) -> None:
        self.started = False

    def wait_ready(self, timeout: float) -> bool:
        return self.ready

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        self._check_ready()
        return [[0, *(ord(c) % (self.vocab_size - 2) + 2 for c in text), 1] for text in texts]

    def from_token_ids(self, ids: Sequence[Sequence[int]]) -> list[list[int]]:
        self._check_ready()
        for index, row in enumerate(ids):
            bad = next((t for t in row if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise TokenIdError(index, bad, self.vocab_size)
        return [[0, *row, 1] for row in ids]

    def submit(self, request_id: str, inputs: list[list[int]]) -> EmbeddingHandle:
        self._check_ready()
        for index, row in enumerate(inputs):
            if len(row) > self.context_length:
                raise InputTooLongError(index, len(row), self.context_length)
        self.submitted.append(inputs)
        handle = EmbeddingHandle(request_id, inputs)
        handle.deliver(np.stack([self.vector(row) for row in inputs]))
        self.stats["requests"] += 1
        self.stats["inputs"] += len(inputs)
        return handle

    def vector(self, ids: Sequence[int]) -> np.ndarray:
        counts = np.zeros(self.dimensions, dtype=np.float32)
        for token in ids:
            counts[token % self.dimensions] += 1.0
        return counts / np.linalg.norm(counts)

    def _check_ready(self) -> None:
        if not self.ready:
            raise NotReadyError("the embedding model is loading")
