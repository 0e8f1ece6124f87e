"""What every engine shares: the :class:`Engine` protocol, the request and event types, the errors, and the
hand-off from an engine's OS thread to the greenlets that read its events."""

from .errors import ContextLengthError, EngineError, GenerationError, NotReadyError, QueueFullError
from .handle import GenerationHandle
from .protocol import Engine, EngineKind, GenerationStream, Message
from .types import Finished, GenerationRequest, SamplingDefaults, SamplingParams, TextDelta, Usage

__all__ = [
    "ContextLengthError", "Engine", "EngineError", "EngineKind", "Finished", "GenerationError", "GenerationHandle",
    "GenerationRequest", "GenerationStream", "Message", "NotReadyError", "QueueFullError", "SamplingDefaults",
    "SamplingParams",
    "TextDelta", "Usage",
]
