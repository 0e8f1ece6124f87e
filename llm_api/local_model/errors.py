"""Errors of the local model engine alone."""

from __future__ import annotations

from ..generation.errors import EngineError


class ModelLoadError(EngineError):
    """The model could not be loaded; the message says why and what to do."""
