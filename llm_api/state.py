"""The per-app objects (settings, engine, services), kept in ``app.extensions``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from .auth.keys import KeyRing
from .auth.tokens import StreamTokens
from .config import Settings
from .errors import shutting_down
from .generation.errors import NotReadyError
from .quota.admission import Quotas
from .routing import EngineRouter, ModelRegistry
from .services.chat import ChatService
from .services.conversations import ConversationService
from .services.embeddings import EmbeddingService
from .services.live import LiveStreams
from .storage import ConversationStore

EXTENSION_KEY = "llm_api"


@dataclass
class Services:
    settings: Settings
    engine: EngineRouter  # the chain of LLM_API_ENGINES (by default one local engine)
    chat: ChatService
    conversations: ConversationService
    store: ConversationStore
    live: LiveStreams
    keys: KeyRing
    stream_tokens: StreamTokens
    quotas: Quotas
    models: ModelRegistry  # the chat chain and the embedding models, by the names clients send
    embeddings: EmbeddingService
    started_at: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False  # set when the worker begins a graceful shutdown (llm_api/shutdown.py)
    engine_started: bool = False  # llm_api.start_engine has run (gunicorn's post_worker_init, or a first request)

    def begin_drain(self) -> None:
        """Refuse new work from now on (503 ``shutting_down``); a bare flag, safe in a signal handler."""
        self.draining = True

    def readiness(self) -> dict[str, Any]:
        """Engine facts when ready; raises :class:`NotReadyError` (503) while loading or after a failed load,
        and 503 ``shutting_down`` while the worker drains."""
        if self.draining:
            raise shutting_down()
        if not self.models.ready:
            raise NotReadyError(self.models.load_error or "the model is loading")
        return {
            "status": "ready",
            "model": self.engine.model_name,
            "context_length": self.engine.context_length,
            "batched": self.engine.batched,
            "queued": self.engine.queued,
            "stats": dict(self.engine.stats),
            "embedding_models": {name: {"ready": engine.ready, "queued": engine.queued, "stats": dict(engine.stats)}
                                 for name, engine in self.models.embedders.items()},
        }


def services() -> Services:
    return current_app.extensions[EXTENSION_KEY]
