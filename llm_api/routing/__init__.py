"""Named engines behind one router: the local model, upstream OpenAI-compatible servers, fallbacks,
circuit breakers and the static degraded answer (see docs/degradation.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import EngineTarget, Settings
from ..generation.embedding import EmbeddingEngine
from ..generation.protocol import Engine
from .models import ModelRegistry
from .router import EngineRouter
from .upstream import UpstreamEngine

if TYPE_CHECKING:
    from ..local_model.spec import ModelSpec

__all__ = ["EngineRouter", "ModelRegistry", "UpstreamEngine", "build_models", "build_router"]


def build_router(settings: Settings, local_engine: Engine | None = None,
                 chain: tuple[EngineTarget, ...] | None = None) -> EngineRouter:
    """The chain of ``settings.engine_chain`` (or of ``chain``); ``local_engine`` (a built engine, or a fake in
    tests) serves the local entry, else one is built from the settings. Without LLM_API_ENGINES: one local
    engine ``main``."""
    members: list[tuple[str, Engine]] = []
    local: Engine | None = None
    for target in chain or settings.engine_chain:
        if target.kind == "local":
            local = local_engine if local_engine is not None else _local_engine(settings, target.source)
            members.append((target.name, local))
        else:
            members.append((target.name, UpstreamEngine(
                target.name, target.source, api_key=target.api_key, model=target.model,
                timeout=settings.upstream_timeout, context_length=settings.upstream_context_length)))
    if local_engine is not None and local is None:
        raise ValueError("an engine was given, but LLM_API_ENGINES names no local engine")
    for _, engine in members:
        if isinstance(engine, UpstreamEngine):
            engine.estimator = local
    return EngineRouter(members, first_token_timeout=settings.first_token_timeout,
                        degraded_answer=settings.degraded_answer, breaker_failures=settings.breaker_failures,
                        breaker_window=settings.breaker_window, breaker_cooldown=settings.breaker_cooldown)


def local_model_spec(settings: Settings, source: str) -> ModelSpec:
    """How the settings load the local model at ``source`` (LLM_API_MODEL's, or one of LLM_API_CHAT_MODELS)."""
    from ..local_model.spec import ModelSpec

    return ModelSpec(source, settings.device, settings.dtype, settings.trust_remote_code, settings.resolved_cache_dir,
                     settings.backend, settings.quantization)


def _local_engine(settings: Settings, source: str) -> Engine:
    from ..local_model.engine import EngineOptions, LocalEngine

    options = EngineOptions(max_batch=settings.max_batch, max_queue=settings.max_queue,
                            prefill_chunk=settings.prefill_chunk, batching=settings.batching,
                            torch_threads=settings.torch_threads, prefix_cache_tokens=settings.prefix_cache_tokens,
                            nice=settings.engine_nice, decode_graphs=settings.decode_graphs)
    return LocalEngine(local_model_spec(settings, source), options)


def build_models(settings: Settings, chat: EngineRouter, embedders: dict[str, EmbeddingEngine] | None = None,
                 more_chats: dict[str, Engine] | None = None) -> ModelRegistry:
    """The default chat chain, the chat models of LLM_API_CHAT_MODELS (each a chain of one local engine) and
    the embedding models of LLM_API_EMBEDDING_MODELS. ``embedders`` and ``more_chats``, given, replace those
    of the settings (fakes in tests). Building loads nothing: the engines load when started."""
    if embedders is None:
        embedders = {target.name: _embedding_engine(settings, target.name, target.source)
                     for target in settings.embedding_models}
    if more_chats is None:
        chains = {target.name: build_router(settings, chain=(EngineTarget(target.name, "local", target.source),))
                  for target in settings.chat_models}
    else:
        chains = {name: engine if isinstance(engine, EngineRouter)
                  else build_router(settings, engine, chain=(EngineTarget(name, "local", "embedded"),))
                  for name, engine in more_chats.items()}
    return ModelRegistry(chat, embedders, chat_aliases=settings.chat_model_aliases, more_chats=chains)


def _embedding_engine(settings: Settings, name: str, source: str) -> EmbeddingEngine:
    from ..local_model.embedder import EmbedderOptions, LocalEmbeddingEngine
    from ..local_model.embedding_spec import EmbeddingSpec

    return LocalEmbeddingEngine(EmbeddingSpec(name, source, settings.device, settings.torch_threads),
                                EmbedderOptions(max_queue=settings.max_queue))
