"""EmbeddingService: one embeddings request from the model's name to its vectors.

Tokenizing and every check happen on the request's greenlet, before the key's quota is charged: the model
(by name), each input's length against the model's window, token ids against its vocabulary. The request
then reserves its tokens under the key's limits (exact: an embedding has no completion), and waits
cooperatively while the engine's thread embeds it together with whatever else is waiting.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..generation.embedding import EmbeddingEngine, InputTooLongError, UnsupportedDimensionsError
from ..generation.errors import NotReadyError
from ..logging_setup import current_request_id
from .chat_models import Admit

log = logging.getLogger("llm_api.embeddings")

LOAD_WAIT_SECONDS = 120.0  # outside gunicorn an embedding model loads on its first request, which waits for it
RESULT_WAIT_SECONDS = 600.0  # a request whose engine never answers ends (the engine thread died)

Resolve = Callable[[str], EmbeddingEngine]
OnEmbedded = Callable[[str, int, int, float], None]  # model, inputs, tokens, seconds


@dataclass(frozen=True)
class EmbeddingRequest:
    """Exactly one of ``texts`` and ``token_ids`` (token arrays in the model's own vocabulary)."""

    model: str
    texts: Sequence[str] | None = None
    token_ids: Sequence[Sequence[int]] | None = None
    dimensions: int | None = None  # only the model's own length is served (no model here is trained to shorten)


@dataclass(frozen=True)
class EmbeddingResult:
    model: str
    rows: Any  # float32 array, one row per input in input order
    prompt_tokens: int


class EmbeddingService:
    def __init__(self, resolve: Resolve, *, on_embedded: OnEmbedded | None = None) -> None:
        self._resolve = resolve
        self._on_embedded = on_embedded

    def embed(self, request: EmbeddingRequest, admit: Admit) -> EmbeddingResult:
        """The vectors, or an engine error raised before anything is charged (unknown model, not ready, an
        input too long, an id outside the vocabulary, the queue full)."""
        started = time.monotonic()
        engine = self._resolve(request.model)
        if not engine.ready and not engine.wait_ready(LOAD_WAIT_SECONDS):
            raise NotReadyError(engine.load_error or "the embedding model is loading")
        if request.dimensions is not None and request.dimensions != engine.dimensions:
            raise UnsupportedDimensionsError(request.model, request.dimensions, engine.dimensions)
        if request.texts is not None:
            ids = engine.tokenize(request.texts)
        else:
            assert request.token_ids is not None
            ids = engine.from_token_ids(request.token_ids)
        window = engine.context_length
        for index, row in enumerate(ids):
            if len(row) > window:
                raise InputTooLongError(index, len(row), window)
        tokens = sum(len(row) for row in ids)
        reservation = admit(tokens)
        try:
            handle = engine.submit(current_request_id() or uuid.uuid4().hex, ids)
            embeddings = handle.result(RESULT_WAIT_SECONDS)
        except BaseException:
            reservation.cancel()
            raise
        reservation.release(tokens)
        seconds = time.monotonic() - started
        if self._on_embedded is not None:
            self._on_embedded(request.model, len(ids), tokens, seconds)
        log.info("embedded", extra={"fields": {"model": request.model, "inputs": len(ids), "tokens": tokens,
                                               "total_time": round(seconds, 4)}})
        return EmbeddingResult(request.model, embeddings.rows, tokens)
