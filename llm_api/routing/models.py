"""The models one server offers, chosen by the ``model`` of each request.

Two kinds: the chat model (the :class:`~llm_api.routing.router.EngineRouter` chain of LLM_API_MODEL or
LLM_API_ENGINES, named by the model it serves, or by any fallback's model) and the embedding models of
LLM_API_EMBEDDING_MODELS (named by their configured ids). :meth:`ModelRegistry.resolve` is the one place
that turns a requested name into a model of the wanted kind, or refuses it: an unknown name is
:class:`ModelNotFoundError` (404), a model of the other kind :class:`ModelKindError` (400).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from ..generation.embedding import EmbeddingEngine
from ..generation.errors import EngineError, NotReadyError
from .router import EngineRouter

ModelKind = Literal["chat", "embedding"]


class ModelNotFoundError(EngineError):
    def __init__(self, name: str) -> None:
        super().__init__(f"The model `{name}` does not exist on this server; GET /v1/models lists those it serves.")
        self.name = name


class ModelKindError(EngineError):
    def __init__(self, name: str, kind: ModelKind, wanted: ModelKind) -> None:
        route = "POST /v1/embeddings" if kind == "embedding" else "the chat and completion routes"
        super().__init__(f"The model `{name}` is a{'n' if kind == 'embedding' else ''} {kind} model; "
                         f"this route needs a{'n' if wanted == 'embedding' else ''} {wanted} model "
                         f"(use it with {route}).")
        self.name = name
        self.kind = kind
        self.wanted = wanted


@dataclass(frozen=True)
class ModelInfo:
    """One entry of ``GET /v1/models``."""

    id: str
    kind: ModelKind
    context_length: int
    dimensions: int | None = None  # embedding models


class ModelRegistry:
    """The chat chain and the embedding models, by the names clients send."""

    def __init__(self, chat: EngineRouter, embedders: Mapping[str, EmbeddingEngine] | None = None, *,
                 chat_aliases: tuple[str, ...] = ()) -> None:
        self.chat = chat
        self.embedders = dict(embedders or {})
        self.chat_aliases = frozenset(chat_aliases)  # LLM_API_CHAT_MODEL_ALIASES
        self._started: set[str] = set()  # embedding models whose engine has been started

    # ---- choosing by name ------------------------------------------------------------------------------
    def chat_names(self) -> set[str]:
        """What selects the chat chain: the model of each of its engines (those known by now), and the aliases."""
        names = {self.chat.model_name} | {m.engine.model_name for m in self.chat.members} | self.chat_aliases
        return {name for name in names if name}

    def resolve_chat(self, name: str | None) -> EngineRouter:
        """The chat chain, when ``name`` is one of its models (or is None: the lesson API's default)."""
        if name is None or name in self.chat_names():
            return self.chat
        if name in self.embedders:
            raise ModelKindError(name, "embedding", "chat")
        self._unknown(name)
        return self.chat  # not reached

    def resolve_embedder(self, name: str) -> EmbeddingEngine:
        """The embedding model ``name``, started if it was not (outside gunicorn models start on first use)."""
        engine = self.embedders.get(name)
        if engine is None:
            if name in self.chat_names():
                raise ModelKindError(name, "chat", "embedding")
            self._unknown(name)
            raise AssertionError  # not reached
        if name not in self._started:
            self._started.add(name)
            engine.start()
        return engine

    def _unknown(self, name: str) -> None:
        """404, unless the chat chain has not loaded yet (its name is not known): then 503 not ready."""
        if not self.chat.model_name and not self.chat.ready:
            raise NotReadyError(self.chat.load_error or "the model is loading")
        raise ModelNotFoundError(name)

    # ---- the list, readiness and life cycle ----------------------------------------------------------
    def listing(self) -> list[ModelInfo]:
        models = [ModelInfo(self.chat.model_name, "chat", self.chat.context_length)]
        for name, engine in self.embedders.items():
            models.append(ModelInfo(name, "embedding", engine.context_length, engine.dimensions or None))
        return models

    @property
    def ready(self) -> bool:
        """The chat chain, and every embedding model started so far, have loaded."""
        return self.chat.ready and all(self.embedders[name].ready for name in self._started)

    @property
    def load_error(self) -> str | None:
        return self.chat.load_error or next(
            (self.embedders[n].load_error for n in sorted(self._started) if self.embedders[n].load_error), None)

    def start(self, on_load_failure: Callable[[str], None] | None = None) -> None:
        """Start the chat chain and every embedding model (gunicorn's ``post_worker_init``)."""
        self.chat.start(on_load_failure)
        self.start_embedders(on_load_failure)

    def start_embedders(self, on_load_failure: Callable[[str], None] | None = None) -> None:
        for name, engine in self.embedders.items():
            self._started.add(name)
            engine.start(on_load_failure)

    def stop(self, timeout: float = 10.0) -> None:
        self.chat.stop(timeout)
        for name in sorted(self._started):
            self.embedders[name].stop(timeout)

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self.chat.wait_ready(timeout):
            return False
        for name in sorted(self._started):
            if not self.embedders[name].wait_ready(max(0.0, deadline - time.monotonic())):
                return False
        return self.ready
