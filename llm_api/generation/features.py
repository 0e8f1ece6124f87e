"""Optional request features, and which of them an engine honours.

Every engine declares ``features``: the names of the optional request fields it can honour. A request that
uses one (a non-neutral value) needs an engine that declares it; the router sends it only to such engines,
and refuses it (:class:`UnsupportedFeatureError`, a 400 naming the field) when its chain has none, so a
field is never silently dropped. A feature is named after the request field that asks for it.

To add a feature: name it here, say in :func:`requested_features` when a request uses it, and add it to the
``features`` of the engines that honour it.
"""

from __future__ import annotations

from .errors import EngineError
from .types import SamplingParams

LOGPROBS = "logprobs"
TOP_LOGPROBS = "top_logprobs"
LOGIT_BIAS = "logit_bias"
PRESENCE_PENALTY = "presence_penalty"
FREQUENCY_PENALTY = "frequency_penalty"
REPETITION_PENALTY = "repetition_penalty"
TOP_K = "top_k"
MIN_P = "min_p"

RESPONSE_FORMAT = "response_format"  # JSON output (json_object or json_schema)
TOOL_CHOICE = "tool_choice"  # a call forced (required, or a named function)

SAMPLING_FEATURES = frozenset({LOGPROBS, TOP_LOGPROBS, LOGIT_BIAS, PRESENCE_PENALTY, FREQUENCY_PENALTY,
                               REPETITION_PENALTY, TOP_K, MIN_P})
STRUCTURED_FEATURES = frozenset({RESPONSE_FORMAT, TOOL_CHOICE})  # the answer's shape, enforced while decoding
ALL_FEATURES = SAMPLING_FEATURES | STRUCTURED_FEATURES


def requested_features(params: SamplingParams) -> list[str]:
    """The optional features ``params`` uses, in a stable order (the first names the field in a refusal)."""
    used = {
        LOGPROBS: params.logprobs,
        TOP_LOGPROBS: params.top_logprobs > 0,
        LOGIT_BIAS: bool(params.logit_bias),
        PRESENCE_PENALTY: params.presence_penalty != 0.0,
        FREQUENCY_PENALTY: params.frequency_penalty != 0.0,
        REPETITION_PENALTY: params.repetition_penalty != 1.0,
        TOP_K: params.top_k > 0,
        MIN_P: params.min_p > 0.0,
        RESPONSE_FORMAT: params.structured is not None and params.structured.response_format is not None,
        TOOL_CHOICE: params.structured is not None and params.structured.forces_call,
    }
    return [name for name, on in used.items() if on]


class InvalidParameterError(EngineError):
    """A request field the engine cannot take as given (the caller's fault: a 400 naming ``field``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class UnsupportedFeatureError(InvalidParameterError):
    """No engine that could serve the request honours ``field``."""

    def __init__(self, field: str, engine: str = "") -> None:
        where = f"engine {engine}" if engine else "this server's engines"
        super().__init__(field, f"{field} is not supported by {where}; leave it out or use its neutral value.")


def missing_feature(features: frozenset[str], params: SamplingParams) -> str | None:
    """The first feature ``params`` uses that ``features`` lacks, or None."""
    return next((name for name in requested_features(params) if name not in features), None)


def require_features(features: frozenset[str], params: SamplingParams, engine: str = "") -> None:
    """Raise :class:`UnsupportedFeatureError` for the first feature ``params`` uses that ``features`` lacks."""
    missing = missing_feature(features, params)
    if missing is not None:
        raise UnsupportedFeatureError(missing, engine)
