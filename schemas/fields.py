"""JSON-strict fields: numbers must be JSON numbers (not strings, not booleans)."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # seeds are 64-bit, as in the OpenAI API


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
    """A stop sequence or a list of up to four, as in the OpenAI API."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[str, ...]:
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise ValidationError("Must be a non-empty string or a list of non-empty strings.")
        if len(stops) > 4:
            raise ValidationError("At most 4 stop sequences.")
        return tuple(stops)
