"""The embedding engine: ONE native OS thread owns a sentence-transformers model and embeds the inputs of
every waiting request in the same forward passes.

The model is loaded with sentence-transformers, so a folder's own module pipeline (its ``modules.json``:
the transformer, then pooling, dense layers, normalisation) is what runs, exactly as in that library;
only the batching across requests is done here. Callers tokenize on their greenlet and ``submit``; the
thread takes every waiting request (up to ``max_inputs`` inputs), sorts the inputs by length so that a
pass pads little, runs them in passes of ``batch_size``, and hands each request its rows back in input
order.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..generation.embedding import EmbeddingFailed, EmbeddingHandle, InputTooLongError, TokenIdError
from ..generation.errors import NotReadyError, QueueFullError
from ..generation.native import ModelThread
from .embedding_spec import EmbeddingSpec, embedding_folder
from .errors import ModelLoadError
from .load_lock import LOAD_LOCK

log = logging.getLogger(__name__)

_IDLE_WAIT_SECONDS = 0.5


@dataclass(frozen=True)
class EmbedderOptions:
    max_queue: int = 256  # requests waiting for the engine thread before new ones get 503
    batch_size: int = 32  # inputs per forward pass (sentence-transformers' own default)
    max_inputs: int = 2048  # inputs taken up in one round, across requests


@dataclass
class _Loaded:
    model: Any  # a SentenceTransformer
    tokenizer: Any
    window: int
    dimensions: int
    vocab_size: int
    prefix: list[int]  # special tokens before an input's own ids
    suffix: list[int]  # and after them
    pad_id: int
    token_types: bool  # the model takes token_type_ids (BERT-like)
    load_seconds: float


class LocalEmbeddingEngine(ModelThread):
    """Loads an embedding model on its own thread and embeds for greenlets."""

    _kind = "embedding model"

    def __init__(self, spec: EmbeddingSpec, options: EmbedderOptions | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.options = options or EmbedderOptions()
        self._inbox: deque[EmbeddingHandle] = deque()
        self._waiting = 0
        self._loaded: _Loaded | None = None
        self.stats: dict[str, int] = {"requests": 0, "inputs": 0, "tokens": 0, "passes": 0, "errors": 0}

    # ---- facts ---------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return self.spec.name

    @property
    def context_length(self) -> int:
        return self._loaded.window if self._loaded else 0

    @property
    def dimensions(self) -> int:
        return self._loaded.dimensions if self._loaded else 0

    @property
    def queued(self) -> int:
        return self._waiting

    @property
    def load_seconds(self) -> float | None:
        return self._loaded.load_seconds if self.ready and self._loaded else None

    # ---- caller side (greenlets) -----------------------------------------------------------------------
    def start(self, on_load_failure: Callable[[str], None] | None = None) -> None:
        """Start loading on the engine thread (idempotent, returns once the libraries are imported).

        sentence-transformers is imported here, on the caller's thread: importing it on a native thread of
        a gevent-patched process fails (huggingface_hub asks for a child watcher off the main loop)."""
        import sentence_transformers  # noqa: F401

        super().start(on_load_failure)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        loaded = self._ready()
        return [list(ids) for ids in loaded.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def from_token_ids(self, ids: Sequence[Sequence[int]]) -> list[list[int]]:
        loaded = self._ready()
        out = []
        for index, tokens in enumerate(ids):
            bad = next((t for t in tokens if not 0 <= t < loaded.vocab_size), None)
            if bad is not None:
                raise TokenIdError(index, bad, loaded.vocab_size)
            out.append([*loaded.prefix, *tokens, *loaded.suffix])
        return out

    def submit(self, request_id: str, inputs: list[list[int]]) -> EmbeddingHandle:
        loaded = self._ready()
        for index, ids in enumerate(inputs):
            if len(ids) > loaded.window:
                raise InputTooLongError(index, len(ids), loaded.window)
        with self._lock:
            if self._waiting >= self.options.max_queue:
                raise QueueFullError(f"{self._waiting} embedding requests are already waiting")
            self._waiting += 1
        handle = EmbeddingHandle(request_id, inputs)
        self._inbox.append(handle)
        self._wake.set()
        return handle

    def _ready(self) -> _Loaded:
        if not self.ready or self._loaded is None:
            raise NotReadyError(self.load_error or "the embedding model is loading")
        return self._loaded

    # ---- engine thread ---------------------------------------------------------------------------------
    def _load_failure(self, exc: Exception) -> str:
        return (str(exc) if isinstance(exc, ModelLoadError)
                else f"embedding model {self.spec.name!r} failed to load: {exc!r}")

    def _serve(self) -> None:
        while not self._stopping:
            if not self._inbox:
                self._wake.wait(_IDLE_WAIT_SECONDS)
                continue
            self._round()
        while self._inbox:
            self._take().fail(NotReadyError("the server is stopping"))

    def _load(self) -> None:
        import torch
        from sentence_transformers import SentenceTransformer  # imported by start() already

        from .torch_threads import use_threads

        started = time.monotonic()
        use_threads(self.spec.torch_threads or 1)  # one: beside the chat engine's team (see torch_threads)
        folder = embedding_folder(self.spec)
        device = self.spec.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        with LOAD_LOCK:  # one load at a time per process (see load_lock)
            model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        model.eval()
        tokenizer = model.tokenizer
        with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        at = next(i for i in range(len(with_special) - len(bare) + 1) if with_special[i:i + len(bare)] == bare)
        dimensions = model.get_embedding_dimension() or len(model.encode(["a"])[0])  # None: not stated by the folder
        window = int(min(model.max_seq_length or tokenizer.model_max_length, _positions(model) or 10**9))
        self._loaded = _Loaded(model, tokenizer, window, int(dimensions), len(tokenizer), list(with_special[:at]),
                               list(with_special[at + len(bare):]), int(tokenizer.pad_token_id or 0),
                               "token_type_ids" in tokenizer.model_input_names, 0.0)
        self._embed([with_special])  # warm-up
        self._loaded.load_seconds = time.monotonic() - started
        log.info("embedding model %s ready on %s in %.1fs (%d dimensions, %d tokens per input, %d torch threads)",
                 self.spec.name, device, self._loaded.load_seconds, dimensions, window, torch.get_num_threads())
        self.ready = True

    def _take(self) -> EmbeddingHandle:
        handle = self._inbox.popleft()
        with self._lock:
            self._waiting -= 1
        return handle

    def _round(self) -> None:
        """Embed every waiting request (up to ``max_inputs`` inputs) together."""
        handles: list[EmbeddingHandle] = []
        count = 0
        while self._inbox and (not handles or count + len(self._inbox[0].inputs) <= self.options.max_inputs):
            handle = self._take()
            handles.append(handle)
            count += len(handle.inputs)
        try:
            rows = self._embed([ids for handle in handles for ids in handle.inputs])
        except Exception as exc:
            log.exception("embedding failed")
            self.stats["errors"] += 1
            for handle in handles:
                handle.fail(EmbeddingFailed(f"embedding failed: {exc}"))
            return
        start = 0
        for handle in handles:
            handle.deliver(rows[start:start + len(handle.inputs)])
            start += len(handle.inputs)
        self.stats["requests"] += len(handles)
        self.stats["inputs"] += count
        self.stats["tokens"] += sum(handle.tokens for handle in handles)

    def _embed(self, inputs: list[list[int]]) -> Any:
        """float32 rows (a numpy array), one per input, in input order."""
        import numpy as np
        import torch

        loaded = self._loaded
        assert loaded is not None
        model = loaded.model
        out = np.empty((len(inputs), loaded.dimensions), dtype=np.float32)
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        size = self.options.batch_size
        for first in range(0, len(order), size):
            chosen = order[first:first + size]
            width = max(len(inputs[i]) for i in chosen)
            ids = torch.full((len(chosen), width), loaded.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chosen), width), dtype=torch.long)
            for row, i in enumerate(chosen):
                ids[row, :len(inputs[i])] = torch.tensor(inputs[i], dtype=torch.long)
                mask[row, :len(inputs[i])] = 1
            features = {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)}
            if loaded.token_types:
                features["token_type_ids"] = torch.zeros_like(features["input_ids"])
            with torch.inference_mode():
                vectors = model(features)["sentence_embedding"]
            out[chosen] = vectors.float().cpu().numpy()
            self.stats["passes"] += 1
        return out


def _positions(model: Any) -> int | None:
    """The transformer's position limit, for a folder that states no sequence length (None when unknown)."""
    transformer = model[0] if len(model) else None
    config = getattr(getattr(transformer, "auto_model", None), "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None
