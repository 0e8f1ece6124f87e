"""What the request schemas share: the sampling ranges, and JSON-strict fields (numbers must be JSON
numbers, not strings, not booleans)."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # seeds are 64-bit, as in the OpenAI API

# The sampling fields' ranges, the same on every route (the chat API's JSON body and query string, and the
# OpenAI API). A temperature or top_p left out stays None: the model's own recommended value applies
# (the engine's sampling_defaults, see docs/api.md).
MAX_TOKENS_RANGE = validate.Range(min=1)
TEMPERATURE_RANGE = validate.Range(min=0.0, max=2.0)
TOP_P_RANGE = validate.Range(min=0.0, max=1.0, min_inclusive=False)
SEED_RANGE = validate.Range(min=INT64_MIN, max=INT64_MAX)
MAX_STOP_SEQUENCES = 4
# The optional sampling knobs (docs/api.md): OpenAI's ranges for its own fields, vLLM's for the extensions.
PENALTY_RANGE = validate.Range(min=-2.0, max=2.0)
REPETITION_PENALTY_RANGE = validate.Range(min=0.0, max=2.0, min_inclusive=False)
TOP_K_RANGE = validate.Range(min=-1)  # -1 and 0: no cut (vLLM accepts both)
MIN_P_RANGE = validate.Range(min=0.0, max=1.0)
MAX_N = 8  # answers per request: one batch's rows
N_RANGE = validate.Range(min=1, max=MAX_N, error=f"Must be between 1 and {MAX_N}.")
MAX_TOP_LOGPROBS = 20
TOP_LOGPROBS_RANGE = validate.Range(min=0, max=MAX_TOP_LOGPROBS)
MAX_LOGIT_BIAS_ENTRIES = 300
LOGIT_BIAS_LIMIT = 100.0


def _reject_non_number(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError("Must be a number.")


class StrictInteger(fields.Integer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        _reject_non_number(value)
        return super()._deserialize(value, attr, data, **kwargs)


class StrictFloat(fields.Float):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_nan=False, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        _reject_non_number(value)
        return super()._deserialize(value, attr, data, **kwargs)


class StrictBoolean(fields.Boolean):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("Must be true or false.")
        return value


class StopField(fields.Field):
    """A stop sequence or a list of up to :data:`MAX_STOP_SEQUENCES`, as in the OpenAI API."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[str, ...]:
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise ValidationError("Must be a non-empty string or a list of non-empty strings.")
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValidationError(f"At most {MAX_STOP_SEQUENCES} stop sequences.")
        return tuple(stops)


class LogitBiasField(fields.Field):
    """OpenAI's ``logit_bias``: ``{"token id": bias}`` with ids as decimal strings, biases from -100 to 100,
    at most :data:`MAX_LOGIT_BIAS_ENTRIES`; loads as ``((id, bias), ...)`` sorted by id. Whether each id is
    in the model's vocabulary is the engine's to say."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[tuple[int, float], ...]:
        if not isinstance(value, dict):
            raise ValidationError("Must be an object mapping token ids (as strings) to biases.")
        if len(value) > MAX_LOGIT_BIAS_ENTRIES:
            raise ValidationError(f"At most {MAX_LOGIT_BIAS_ENTRIES} entries.")
        biases: dict[int, float] = {}
        for key, bias in value.items():
            if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 9):
                raise ValidationError(f"Key {key!r} is not a token id (a non-negative integer, as a string).")
            if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not (
                    -LOGIT_BIAS_LIMIT <= bias <= LOGIT_BIAS_LIMIT):
                raise ValidationError(f"The bias of token {key} must be a number from -100 to 100.")
            biases[int(key)] = float(bias)
        return tuple(sorted(biases.items()))
