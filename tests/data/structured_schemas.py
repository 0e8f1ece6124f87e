"""JSON Schemas for the structured-output tests: nested objects, arrays, enums, bounded numbers, optional and
required fields, references, anyOf, string lengths and formats. Each with the prompt it is asked with."""

from __future__ import annotations

from typing import Any

NAME = {"type": "string", "minLength": 1, "maxLength": 24}

SCHEMAS: list[tuple[str, str, dict[str, Any]]] = [
    ("person", "Describe a person.", {
        "type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": False}),
    ("color", "Pick a colour.", {
        "type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"]}),
    ("temperature", "What is the temperature in Paris?", {
        "type": "object", "properties": {"celsius": {"type": "number", "minimum": -50, "maximum": 60},
                                         "city": NAME}, "required": ["celsius", "city"]}),
    ("tags", "List three tags for a blog post about cats.", {
        "type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 16},
                                                  "minItems": 1, "maxItems": 3}}, "required": ["tags"]}),
    ("nested_address", "Where does Ada live?", {
        "type": "object", "properties": {
            "name": NAME,
            "address": {"type": "object", "properties": {"city": NAME, "zip": {"type": "string", "maxLength": 10},
                                                         "country": {"enum": ["UK", "FR", "US"]}},
                        "required": ["city", "country"], "additionalProperties": False}},
        "required": ["name", "address"], "additionalProperties": False}),
    ("boolean_flag", "Is the sky blue?", {
        "type": "object", "properties": {"answer": {"type": "boolean"}, "confidence": {
            "type": "number", "minimum": 0, "maximum": 1}}, "required": ["answer", "confidence"]}),
    ("optional_fields", "Describe a book.", {
        "type": "object", "properties": {"title": NAME, "year": {"type": "integer", "minimum": 1400, "maximum": 2030},
                                         "subtitle": NAME}, "required": ["title"]}),
    ("array_of_objects", "List two planets with their order from the sun.", {
        "type": "object", "properties": {"planets": {"type": "array", "minItems": 2, "maxItems": 2, "items": {
            "type": "object", "properties": {"name": NAME, "order": {"type": "integer", "minimum": 1, "maximum": 8}},
            "required": ["name", "order"], "additionalProperties": False}}}, "required": ["planets"]}),
    ("enum_integers", "Rate the film from 1 to 5.", {
        "type": "object", "properties": {"stars": {"enum": [1, 2, 3, 4, 5]}, "review": NAME},
        "required": ["stars"]}),
    ("exclusive_bounds", "Give a probability.", {
        "type": "object", "properties": {"p": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
        "required": ["p"]}),
    ("const_and_type", "Report the status.", {
        "type": "object", "properties": {"kind": {"const": "status"}, "ok": {"type": "boolean"}},
        "required": ["kind", "ok"]}),
    ("nullable", "Who is the manager, if any?", {
        "type": "object", "properties": {"manager": {"type": ["string", "null"], "maxLength": 20}},
        "required": ["manager"]}),
    ("any_of", "Give an id: a number or a code.", {
        "type": "object", "properties": {"id": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9999},
                                                          {"type": "string", "maxLength": 8}]}},
        "required": ["id"]}),
    ("refs", "Describe two points.", {
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9},
                                                             "y": {"type": "integer", "minimum": -9, "maximum": 9}},
                            "required": ["x", "y"], "additionalProperties": False}},
        "type": "object", "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}},
        "required": ["a", "b"]}),
    ("pattern", "Give a product code like AB-123.", {
        "type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}},
        "required": ["code"]}),
    ("date_format", "When was the meeting?", {
        "type": "object", "properties": {"date": {"type": "string", "format": "date"}}, "required": ["date"]}),
    ("deep_nesting", "Describe a company.", {
        "type": "object", "properties": {"company": {"type": "object", "properties": {
            "name": NAME, "ceo": {"type": "object", "properties": {"name": NAME, "age": {
                "type": "integer", "minimum": 18, "maximum": 99}}, "required": ["name", "age"]}},
            "required": ["name", "ceo"]}}, "required": ["company"]}),
    ("matrix", "Give a 2x2 matrix of small numbers.", {
        "type": "object", "properties": {"rows": {"type": "array", "minItems": 2, "maxItems": 2, "items": {
            "type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer", "minimum": 0, "maximum": 9}}}},
        "required": ["rows"]}),
    ("tuple_items", "Give a name and an age.", {
        "type": "object", "properties": {"pair": {"type": "array", "prefixItems": [NAME, {
            "type": "integer", "minimum": 0, "maximum": 99}], "items": False, "minItems": 2}}, "required": ["pair"]}),
    ("string_lengths", "Give a three-letter airport code.", {
        "type": "object", "properties": {"iata": {"type": "string", "minLength": 3, "maxLength": 3}},
        "required": ["iata"]}),
    ("top_level_array", "List two fruits.", {
        "type": "array", "items": {"enum": ["apple", "pear", "plum"]}, "minItems": 2, "maxItems": 2}),
    ("mixed_required", "Describe an order.", {
        "type": "object", "properties": {
            "id": {"type": "integer", "minimum": 1, "maximum": 1000},
            "items": {"type": "array", "maxItems": 2, "items": {"type": "object", "properties": {
                "sku": {"type": "string", "maxLength": 8}, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["sku", "qty"]}},
            "paid": {"type": "boolean"}, "note": NAME},
        "required": ["id", "items", "paid"]}),
]
