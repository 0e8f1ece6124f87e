"""``POST /v1/embeddings``: the request schema (OpenAI's fields; unknown fields are rejected)."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate

from .fields import StrictInteger

MAX_INPUTS = 2048  # inputs per request, as in OpenAI's API (the service module states it too)
ENCODING_FORMATS = ("float", "base64")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class EmbeddingInputField(fields.Field):
    """A string, a list of strings, a token array (list of ids) or a list of token arrays.

    Loads as ``{"texts": [...]}`` or ``{"token_ids": [[...], ...]}``. Empty strings, empty lists, more
    than :data:`MAX_INPUTS` inputs, negative ids and mixed lists are refused with the item that is wrong.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, Any]:
        if isinstance(value, str):
            if not value:
                raise ValidationError("Must not be an empty string.")
            return {"texts": [value]}
        if not isinstance(value, list):
            raise ValidationError("Must be a string, a list of strings, a list of token ids, or a list of lists "
                                  "of token ids.")
        if not value:
            raise ValidationError("Must not be an empty list.")
        if len(value) > MAX_INPUTS:
            raise ValidationError(f"At most {MAX_INPUTS} inputs per request (got {len(value)}).")
        if all(isinstance(item, str) for item in value):
            for index, text in enumerate(value):
                if not text:
                    raise ValidationError(f"Item {index}: must not be an empty string.")
            return {"texts": list(value)}
        if all(_is_int(item) for item in value):
            return {"token_ids": [_token_array(value, None)]}
        if all(isinstance(item, list) for item in value):
            return {"token_ids": [_token_array(item, index) for index, item in enumerate(value)]}
        raise ValidationError("Must not mix kinds: all strings, all token ids, or all lists of token ids.")


def _token_array(ids: list[Any], index: int | None) -> list[int]:
    where = "" if index is None else f"Item {index}: "
    if not ids:
        raise ValidationError(f"{where}a token array must not be empty.")
    for item in ids:
        if not _is_int(item) or item < 0:
            raise ValidationError(f"{where}token ids must be integers >= 0 (got {item!r}).")
    return list(ids)


class EmbeddingRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    model = fields.String(required=True, validate=validate.Length(min=1))
    input = EmbeddingInputField(required=True)
    encoding_format = fields.String(load_default="float", allow_none=True, validate=validate.OneOf(ENCODING_FORMATS))
    dimensions = StrictInteger(load_default=None, allow_none=True, validate=validate.Range(min=1))
    user = fields.Raw(load_default=None, allow_none=True)  # an end-user id OpenAI allows servers to disregard

    @post_load
    def _flatten(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        data.update(data.pop("input"))
        data["encoding_format"] = data.get("encoding_format") or "float"
        data.pop("user", None)
        return data
