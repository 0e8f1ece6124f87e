"""The per-app objects (settings, engine, services), kept in ``app.extensions``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from flask import current_app

from .config import Settings
from .engine.errors import NotReadyError
from .services.chat import ChatService
from .services.conversations import ConversationService
from .services.live import LiveStreams
from .storage import ConversationStore

EXTENSION_KEY = "llm_api"


@dataclass
class Services:
    settings: Settings
    engine: Any  # llm_api.engine.Engine, or a fake with the same surface in HTTP tests
    chat: ChatService
    conversations: ConversationService
    store: ConversationStore
    live: LiveStreams
    started_at: int = field(default_factory=lambda: int(time.time()))

    def readiness(self) -> dict[str, Any]:
        """Engine facts when ready; raises :class:`NotReadyError` (503) while loading or after a failed load."""
        if not self.engine.ready:
            raise NotReadyError(self.engine.load_error or "the model is loading")
        return {
            "status": "ready",
            "model": self.engine.model_name,
            "context_length": self.engine.context_length,
            "batched": self.engine.batched,
            "queued": self.engine.queued,
            "stats": dict(self.engine.stats),
        }


def services() -> Services:
    return current_app.extensions[EXTENSION_KEY]
