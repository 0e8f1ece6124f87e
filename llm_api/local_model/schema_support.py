"""Which JSON Schema keywords constrained decoding enforces, so that every answer validates against its schema.

The grammar library accepts more keywords than it enforces (``not``, ``if``, ``uniqueItems`` … are silently
ignored), which would let answers through that fail validation. A schema using a keyword outside
:data:`ENFORCED` or :data:`ANNOTATIONS` is refused with a 4xx naming the field and the keyword's path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..generation.structured import UnsupportedFieldError

ENFORCED = frozenset({
    "type", "enum", "const",
    "properties", "required", "additionalProperties",
    "items", "prefixItems", "minItems", "maxItems",
    "minLength", "maxLength", "pattern", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "anyOf", "$ref", "$defs", "definitions",
})
ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly",
    "writeOnly",
})
FORMATS = frozenset({"date", "time", "date-time", "duration", "email", "uuid", "ipv4", "ipv6", "uri", "hostname"})
TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
# Counts the grammar unrolls: bounded, so that a schema cannot make compiling it take minutes or gigabytes.
COUNTS = frozenset({"minItems", "maxItems", "minLength", "maxLength"})
MAX_COUNT = 4096
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties")


def check_supported(schema: Any, field: str) -> None:
    """Raise :class:`UnsupportedFieldError` when ``schema`` uses what the grammar cannot enforce."""
    _check(schema, field, "")


def _check(schema: Any, field: str, path: str) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, Mapping):
        raise UnsupportedFieldError(field, f"{field}{path or ''}: a schema must be an object or a boolean.")
    for keyword, value in schema.items():
        where = f"{path}.{keyword}" if path else keyword
        if keyword not in ENFORCED and keyword not in ANNOTATIONS:
            raise UnsupportedFieldError(
                field, f"{field}: the keyword {where!r} is not supported for constrained decoding "
                       f"(supported: {', '.join(sorted(ENFORCED))}).")
        if keyword == "format" and value not in FORMATS:
            raise UnsupportedFieldError(field, f"{field}: the format {value!r} at {where!r} is not supported "
                                               f"(supported: {', '.join(sorted(FORMATS))}).")
        if keyword in COUNTS and isinstance(value, int) and value > MAX_COUNT:
            raise UnsupportedFieldError(field, f"{field}: {where!r} is {value}; constrained decoding takes at most "
                                               f"{MAX_COUNT}.")
        if keyword == "type":
            kinds = value if isinstance(value, list) else [value]
            unknown = [k for k in kinds if k not in TYPES]
            if unknown:
                raise UnsupportedFieldError(field, f"{field}: unknown type {unknown[0]!r} at {where!r}.")
        if keyword == "$ref" and (not isinstance(value, str) or not value.startswith("#")):
            raise UnsupportedFieldError(field, f"{field}: only local references (#/...) are supported ({where!r}).")
        if keyword in _SUBSCHEMA_MAPS and isinstance(value, Mapping):
            for name, sub in value.items():
                _check(sub, field, f"{where}.{name}")
        elif keyword in _SUBSCHEMA_LISTS and isinstance(value, list):
            for index, sub in enumerate(value):
                _check(sub, field, f"{where}[{index}]")
        elif keyword in _SUBSCHEMAS:
            _check(value, field, where)
