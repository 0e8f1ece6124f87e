"""The local model engine: one OS thread owns a Hugging Face model and decodes every running request in
one batch. It knows nothing of HTTP, storage or the services; it implements
:class:`llm_api.generation.Engine`.

The engine and the loader (torch, transformers) are imported on first use of their names, so that
:mod:`llm_api.local_model.spec` (the preflight) imports without them in gunicorn's master."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .spec import ModelSpec

if TYPE_CHECKING:
    from .engine import EngineOptions, LocalEngine

__all__ = ["EngineOptions", "LocalEngine", "ModelSpec"]


def __getattr__(name: str) -> Any:
    if name in ("EngineOptions", "LocalEngine"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
