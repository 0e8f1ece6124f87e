"""The local model engine: one OS thread owns a Hugging Face model and decodes every running request in
one batch. It knows nothing of HTTP, storage or the services; it implements
:class:`llm_api.generation.Engine`."""

from .engine import EngineOptions, LocalEngine
from .loader import ModelSpec

__all__ = ["EngineOptions", "LocalEngine", "ModelSpec"]
