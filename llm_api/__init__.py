"""llm_api: a local chat model behind a production Web API (Flask + gevent + gunicorn).

Importing this package imports nothing else: gunicorn's master imports it (the worker class
``llm_api.worker``, the hooks in gunicorn.conf.py) before it forks the workers, and a worker patches
the standard library with gevent only after the fork. Flask, torch, transformers, redis and what they
pull in (``ssl`` users among them) are imported by :func:`create_app`, in the worker, once it is patched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from .config import Settings
    from .generation.embedding import EmbeddingEngine
    from .generation.protocol import Engine
    from .local_model.spec import ModelSpec

# What a cross-origin page may send, and read back (the rate-limit and request-id headers included).
CORS_ALLOW_HEADERS = ["Authorization", "Content-Type", "Last-Event-ID", "X-Request-ID", "traceparent", "tracestate"]
CORS_EXPOSE_HEADERS = [
    "Retry-After", "X-Request-ID",
    *(f"x-ratelimit-{field}-{kind}" for field in ("limit", "remaining", "reset") for kind in ("requests", "tokens")),
]


def create_app(settings: Settings | None = None, *, engine: Engine | None = None,
               embedders: dict[str, EmbeddingEngine] | None = None,
               chat_models: dict[str, Engine] | None = None) -> Flask:
    """Build the app. The engines are created here but start (the local model loads, upstream discovery
    begins) only when :func:`start_engine` runs: from gunicorn's ``post_worker_init`` hook, or elsewhere
    (``flask run``, tests) on the first request. ``engine`` is the chat chain's local engine and ``embedders``
    the embedding models by id and ``chat_models`` the more chat models by id (fakes in tests), instead of
    those the settings name."""
    from flask import Flask
    from flask.json.provider import DefaultJSONProvider
    from flask_cors import CORS

    from blueprints import admin, auth, chat, conversations, health, openai, openapi, page  # they import llm_api
    from blueprints.embeddings import bp as embeddings_bp
    from blueprints.metrics import bp as metrics_bp

    from .auth.guard import check_access
    from .auth.keys import KeyRing
    from .auth.tokens import StreamTokens
    from .caller import add_rate_limit_headers
    from .cli import keys_command
    from .config import Settings
    from .errors import register_error_handlers
    from .logging_setup import configure_logging
    from .metrics import install as install_metrics
    from .quota.admission import Quotas
    from .quota.backend import QuotaBackend
    from .request_log import install as install_request_log
    from .routing import EngineRouter, build_models, build_router
    from .services.chat import ChatService
    from .services.conversations import ConversationService
    from .services.embeddings import EmbeddingService
    from .services.live import LiveStreams
    from .services.output_guard import OutputGuard
    from .services.shared_streams import SharedStreams
    from .shutdown import refuse_while_draining
    from .state import EXTENSION_KEY, Services
    from .storage import SqlKeyStore, open_store
    from .tracing import enabled as tracing_enabled
    from .tracing import instrument as instrument_tracing

    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    app = Flask(__name__)
    app.config["LLM_API"] = settings
    assert isinstance(app.json, DefaultJSONProvider)
    app.json.ensure_ascii = False
    app.json.sort_keys = False

    # The chain of LLM_API_ENGINES; a given engine (a fake in tests) is its local one.
    router = engine if isinstance(engine, EngineRouter) else build_router(settings, engine)
    models = build_models(settings, router, embedders, chat_models)
    metrics = install_metrics(app, router)
    if tracing_enabled():  # OTEL_EXPORTER_OTLP_ENDPOINT: the server span's hooks go first of all
        instrument_tracing(app)
    install_request_log(app, metrics)  # first of the before_request hooks: the others run with the request id
    store = open_store(settings.resolved_database_url, settings.db_pool_size)
    chat_service = ChatService(router, store, default_max_tokens=settings.default_max_tokens,
                               heartbeat_seconds=settings.heartbeat_seconds, log_prompts=settings.log_prompts,
                               request_timeout=settings.request_timeout, on_answer=metrics.answer,
                               output_guard=OutputGuard.from_settings(settings), choose=models.resolve_chat)
    shared_streams = SharedStreams(settings.redis_url, resume_seconds=settings.resume_seconds,
                                   heartbeat_seconds=settings.heartbeat_seconds) if settings.redis_url else None
    live = LiveStreams(resume_seconds=settings.resume_seconds, grace_seconds=settings.disconnect_grace_seconds,
                       heartbeat_seconds=settings.heartbeat_seconds, shared=shared_streams,
                       on_lost=chat_service.store_lost_answer)
    key_store = SqlKeyStore(store.engine)
    keys = KeyRing(key_store)
    stream_tokens = StreamTokens(settings.secret_key or key_store.shared_secret("stream_tokens"),
                                 settings.stream_token_seconds)
    quotas = Quotas(QuotaBackend(settings.redis_url), lease_seconds=settings.request_timeout or 3600.0)
    embeddings = EmbeddingService(models.resolve_embedder, on_embedded=metrics.embedded)
    state = Services(settings, router, chat_service, ConversationService(store), store, live, keys, stream_tokens,
                     quotas, models, embeddings)
    app.extensions[EXTENSION_KEY] = state

    if settings.cors_origins:
        CORS(app, origins=list(settings.cors_origins), allow_headers=CORS_ALLOW_HEADERS,
             expose_headers=CORS_EXPOSE_HEADERS, max_age=600)
    register_error_handlers(app)

    @app.before_request
    def start_engine_outside_gunicorn() -> None:
        """Outside gunicorn nothing else starts the engines, so the first request does, whatever it asks
        for. After that, one flag test per request (under gunicorn, ``post_worker_init`` has set it)."""
        if not state.engine_started:
            start_engine(app)

    app.before_request(refuse_while_draining)  # a draining worker answers 503 shutting_down before any other check
    app.before_request(check_access)
    app.after_request(add_rate_limit_headers)
    app.cli.add_command(keys_command)
    app.register_blueprint(health.bp)
    app.register_blueprint(chat.bp)
    app.register_blueprint(conversations.bp)
    app.register_blueprint(conversations.bp, url_prefix="/chat", name="chat_conversations")  # the lesson's prefix
    app.register_blueprint(openai.bp)
    app.register_blueprint(embeddings_bp)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(page.bp)
    app.register_blueprint(openapi.bp)

    return app


def model_spec(settings: Settings) -> ModelSpec:
    """The local model's spec (LLM_API_MODEL, or the local engine of LLM_API_ENGINES)."""
    from .routing import local_model_spec

    return local_model_spec(settings, settings.local_model or settings.model)


def start_engine(app: Flask, on_load_failure: Callable[[str], None] | None = None, *, embedders: bool = False) -> None:
    """Start the app's engines: the chat models begin loading, upstream discovery its timer, and with
    ``embedders`` (gunicorn's workers) every embedding model too; without it (tests, ``flask run``) an
    embedding model loads on its first request. Once per app; a later call returns at once. Tracing's
    exporter starts here too: this runs in the serving process (a gunicorn worker, after the fork), never in
    gunicorn's master."""
    from . import tracing
    from .state import EXTENSION_KEY

    state = app.extensions[EXTENSION_KEY]
    if state.engine_started:
        return
    state.engine_started = True
    if tracing.enabled():
        tracing.start_exporting()
    if embedders:
        state.models.start(on_load_failure)
    else:
        state.models.start_chats(on_load_failure)


def stop_engine(app: Flask) -> None:
    """Stop the app's engines, then send the spans still waiting for export."""
    from . import tracing
    from .state import EXTENSION_KEY

    app.extensions[EXTENSION_KEY].models.stop()
    tracing.shutdown()
