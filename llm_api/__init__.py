"""llm_api: a local chat model behind a production Web API (Flask + gevent + gunicorn)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from flask_cors import CORS

from .config import Settings
from .engine.loader import ModelSpec
from .errors import register_error_handlers
from .logging_setup import configure_logging
from .state import EXTENSION_KEY, Services


def create_app(settings: Settings | None = None, *, engine: Any = None) -> Flask:
    """Build the app. The engine is created here but starts (loads the model) only when
    :func:`start_engine` runs — from gunicorn's ``post_worker_init`` hook, or on the first request."""
    from blueprints import chat, conversations, health, openai, page  # inside the factory: they import llm_api

    from .engine.scheduler import Engine, EngineOptions
    from .services.chat import ChatService
    from .services.conversations import ConversationService
    from .services.live import LiveStreams
    from .storage import open_store

    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.config["LLM_API"] = settings
    app.json.ensure_ascii = False
    app.json.sort_keys = False

    if engine is None:
        engine = Engine(model_spec(settings), EngineOptions(
            max_batch=settings.max_batch, max_queue=settings.max_queue, prefill_chunk=settings.prefill_chunk,
            batching=settings.batching, torch_threads=settings.torch_threads))
    store = open_store(settings.resolved_database_url, settings.db_pool_size)
    chat_service = ChatService(engine, store, default_max_tokens=settings.default_max_tokens,
                               heartbeat_seconds=settings.heartbeat_seconds, log_prompts=settings.log_prompts)
    live = LiveStreams(resume_seconds=settings.resume_seconds, grace_seconds=settings.disconnect_grace_seconds,
                       heartbeat_seconds=settings.heartbeat_seconds)
    app.extensions[EXTENSION_KEY] = Services(settings, engine, chat_service, ConversationService(store), store, live)

    if settings.cors_origins:
        CORS(app, origins=list(settings.cors_origins))
    register_error_handlers(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(chat.bp)
    app.register_blueprint(conversations.bp)
    app.register_blueprint(conversations.bp, url_prefix="/chat", name="chat_conversations")  # the lesson's prefix
    app.register_blueprint(openai.bp)
    app.register_blueprint(page.bp)
    app.before_request(engine.start)
    return app


def model_spec(settings: Settings) -> ModelSpec:
    return ModelSpec(settings.model, settings.device, settings.dtype, settings.trust_remote_code,
                     settings.resolved_cache_dir)


def start_engine(app: Flask, on_load_failure: Callable[[str], None] | None = None) -> None:
    app.extensions[EXTENSION_KEY].engine.start(on_load_failure)


def stop_engine(app: Flask) -> None:
    app.extensions[EXTENSION_KEY].engine.stop()
