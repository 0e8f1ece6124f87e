"""What every engine shares: the :class:`Engine` protocol, the request and event types, the errors, and the
hand-off from an engine's OS thread to the greenlets that read its events."""

from .errors import ContextLengthError, EngineError, GenerationError, NotReadyError, QueueFullError
from .features import InvalidParameterError, UnsupportedFeatureError
from .handle import GenerationHandle
from .protocol import Engine, EngineKind, GenerationStream, Message
from .types import (
    Finished,
    GenerationRequest,
    SamplingDefaults,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    Usage,
)

__all__ = [
    "ContextLengthError", "Engine", "EngineError", "EngineKind", "Finished", "GenerationError", "GenerationHandle",
    "GenerationRequest", "GenerationStream", "InvalidParameterError", "Message", "NotReadyError", "QueueFullError",
    "SamplingDefaults", "SamplingParams", "TextDelta", "TokenLogprob", "UnsupportedFeatureError", "Usage",
]
