"""Properties of the body reader that a schema cannot express: nesting depth, text that is not Unicode,
huge numbers, duplicate keys, and bodies cut at every byte offset. Whatever the input, the answer is a
value or a 400 in the envelope, never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_api.errors import ApiError
from llm_api.http_body import MAX_JSON_DEPTH, parse_json

FAST = settings(max_examples=200, deadline=None)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(), lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                                             max_size=4),
                    max_leaves=20)


def depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def outcome(raw: bytes):
    try:
        return "ok", parse_json(raw)
    except ApiError as error:
        assert error.status == 400 and error.code in {"invalid_json", "nesting_too_deep", "invalid_text"}
        return error.code, error


@FAST
@given(JSON)
def test_valid_unicode_json_within_the_limit_round_trips(value):
    raw = json.dumps(value).encode()
    if depth(value) <= MAX_JSON_DEPTH:
        assert outcome(raw) == ("ok", value)


@FAST
@given(st.integers(min_value=MAX_JSON_DEPTH + 1, max_value=5000), st.sampled_from(["[", '{"k":']),
       st.text(max_size=10))
def test_any_nesting_past_the_limit_is_400(levels, opener, key):
    closer = "]" if opener == "[" else "}"
    deep = opener * levels + "1" + closer * levels
    raw = json.dumps({key: "x"})[:-1] + ", " + json.dumps(key + "!") + ": " + deep + "}"
    code, error = outcome(raw.encode())
    assert code == "nesting_too_deep"
    assert list(error.details["fields"]) == [key + "!"]


@FAST
@given(st.text(), st.integers(min_value=0xD800, max_value=0xDFFF), st.text())
def test_an_unpaired_surrogate_escape_is_400_naming_the_field(before, surrogate, after):
    text = json.dumps(before)[1:-1] + f"\\u{surrogate:04x}" + json.dumps(after)[1:-1]
    code, error = outcome(f'{{"prompt": "{text}"}}'.encode())
    if code != "ok":  # a high surrogate followed by an escaped low one is a valid pair
        assert code == "invalid_text" and list(error.details["fields"]) == ["prompt"]
    else:
        assert "prompt" in error


@FAST
@given(st.binary(min_size=1, max_size=8).filter(lambda b: not _utf8(b)))
def test_bytes_that_are_not_utf8_in_a_string_are_400_naming_the_field(junk):
    code, error = outcome(b'{"messages": [{"role": "user", "content": "a' + junk.replace(b'"', b"").replace(b"\\", b"")
                          + b'"}]}')
    assert code in {"invalid_text", "invalid_json"}  # control characters make it invalid JSON first
    if code == "invalid_text":
        assert list(error.details["fields"]) == ["messages.0.content"]


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@FAST
@given(st.integers(min_value=-(10**4000), max_value=10**4000) | st.floats(allow_nan=False))
def test_huge_numbers_are_values_or_400(number):
    code, _ = outcome(json.dumps({"max_tokens": number}).encode())
    assert code in {"ok", "invalid_json"}


@FAST
@given(st.text(), st.lists(JSON, min_size=2, max_size=4))
def test_duplicate_keys_the_last_one_wins(key, values):
    raw = "{" + ", ".join(f"{json.dumps(key)}: {json.dumps(v)}" for v in values) + "}"
    assert outcome(raw.encode()) == ("ok", {key: values[-1]})


@pytest.mark.parametrize("body", [
    {"prompt": "héllo 😀 [{", "history": [{"role": "user", "content": 'a"b'}], "stop": ["]", "}"]},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "ü"}]}], "n": 1},
])
def test_a_body_cut_at_every_byte_offset_is_never_another_error(body):
    raw = json.dumps(body, ensure_ascii=False).encode()
    for offset in range(len(raw) + 1):
        outcome(raw[:offset] if raw[:offset].strip() else b"{}")
