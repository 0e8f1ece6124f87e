"""Unusual but plausible input answers 400/422 in the error envelope, naming the field, never 500.

Regression tests for the three classes of 500 found by generated requests: JSON nested about a thousand
levels deep, text that is not Unicode (bytes that are not UTF-8, unpaired surrogate escapes), and a history
that cannot fit the context next to a huge max_tokens.
"""

from __future__ import annotations

import json

import pytest

from llm_api import create_app
from llm_api.config import Settings
from llm_api.http_body import MAX_JSON_DEPTH
from tests.fakes import CHAT
from tests.http import assert_error, openai_error, post

DEEP = 1000


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Room for bodies nested a thousand levels deep (``{"a": `` is five bytes a level)."""
    return Settings.from_env({}, heartbeat_seconds=0.05, max_body_bytes=65536,
                             database_url=f"sqlite:///{tmp_path / 'llm_api.sqlite3'}",
                             disconnect_grace_seconds=0.0, resume_seconds=5.0)


def nested_object(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def nested_array(depth: int) -> str:
    return "[" * depth + "]" * depth


# ---- nesting ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["stream", "stop", "prompt", "history", "max_tokens", "unknown"])
@pytest.mark.parametrize("nested", [nested_object, nested_array])
def test_a_field_nested_a_thousand_levels_is_400_naming_it(client, field, nested):
    response = client.post("/chat/new/message", data=f'{{"prompt": "hi", "{field}": {nested(DEEP)}}}')
    error = assert_error(response, 400, "nesting_too_deep")
    assert error["details"]["fields"] == {field: [f"Nested more than {MAX_JSON_DEPTH} levels deep."]}
    assert field in error["message"]


def test_a_body_nested_a_thousand_levels_is_400(client):
    assert_error(client.post("/chat/new/message", data=nested_array(DEEP)), 400, "nesting_too_deep")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_openai_routes_name_the_too_deep_field_as_param(client, path):
    body = json.dumps({**CHAT, "prompt": "hi"} if path == "/v1/completions" else CHAT)
    response = client.post(path, data=body[:-1] + f', "stop": {nested_array(DEEP)}}}',
                           content_type="application/json")
    openai_error(response, 400, "stop", "nesting_too_deep")


def test_nesting_up_to_the_limit_is_parsed_and_then_validated(client):
    # The top-level object is level 1, so the field's value may nest MAX_JSON_DEPTH - 1 levels: the schema
    # answers (422), not the body reader.
    allowed = f'{{"prompt": "hi", "stop": {nested_array(MAX_JSON_DEPTH - 1)}}}'
    assert_error(client.post("/chat/new/message", data=allowed), 422, "validation_error")
    too_deep = f'{{"prompt": "hi", "stop": {nested_array(MAX_JSON_DEPTH)}}}'
    assert_error(client.post("/chat/new/message", data=too_deep), 400, "nesting_too_deep")


def test_brackets_inside_strings_do_not_count(client, fake_engine):
    prompt = "[{" * DEEP + '\\"' + "]}" * DEEP
    response = client.post("/chat/new/message", data=f'{{"prompt": "{prompt}", "max_tokens": 2}}')
    assert response.status_code == 200, response.get_data(as_text=True)


# ---- text that is not Unicode ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw, field", [
    (b'{"prompt": "a\\udfffb"}', "prompt"),
    (b'{"prompt": "a\\ud800"}', "prompt"),
    (b'{"prompt": "a\xffb"}', "prompt"),
    (b'{"prompt": "a\xed\xbf\xbfb"}', "prompt"),  # a surrogate encoded as UTF-8 bytes: not UTF-8 either
    (b'{"prompt": "hi", "history": [{"role": "user", "content": "x\\udc80"}]}', "history.0.content"),
    (b'{"messages": [{"role": "user", "content": "\\udfff"}]}', "messages.0.content"),
    (b'{"prompt": "hi", "stop": ["\\ud83d"]}', "stop.0"),
    (b'{"prompt": "hi", "\\udfff": 1}', "\\udfff"),
])
def test_text_that_is_not_unicode_is_400_naming_the_field(client, fake_engine, raw, field):
    error = assert_error(client.post("/chat/new/message", data=raw), 400, "invalid_text")
    assert list(error["details"]["fields"]) == [field]
    assert field in error["message"]
    assert fake_engine.encoded == []  # no tokenizer saw it


def test_openai_route_names_the_field_that_is_not_unicode(client):
    raw = b'{"model": "fake-model", "messages": [{"role": "user", "content": "a\\udfffb"}]}'
    openai_error(client.post("/v1/chat/completions", data=raw, content_type="application/json"),
                 400, "messages.0.content", "invalid_text")


def test_a_surrogate_pair_is_one_character_and_accepted(client, fake_engine):
    response = client.post("/chat/new/message", data=b'{"prompt": "smile \\ud83d\\ude00", "max_tokens": 2}')
    assert response.status_code == 200, response.get_data(as_text=True)
    assert fake_engine.encoded[-1][-1]["content"] == "smile \U0001f600"


def test_a_utf8_bom_is_still_accepted(client):
    response = client.post("/chat/new/message", data=b'\xef\xbb\xbf{"prompt": "hi", "max_tokens": 2}')
    assert response.status_code == 200, response.get_data(as_text=True)


# ---- duplicate keys: the last one wins -------------------------------------------------------------------

def test_duplicate_keys_last_one_wins(client, fake_engine):
    response = client.post("/chat/new/message", data='{"prompt": "first", "prompt": "second", "max_tokens": 2}')
    assert response.status_code == 200
    assert fake_engine.encoded[-1][-1]["content"] == "second"


# ---- histories that cannot fit ---------------------------------------------------------------------------

HISTORY = [{"role": "user", "content": "a b c d e f g"}, {"role": "assistant", "content": "h i j k"}]


@pytest.mark.parametrize("turns", [1, 2, 5])
@pytest.mark.parametrize("max_tokens", [61, 10**12])  # the fake: 64 tokens, the prompt alone 4
def test_a_history_that_cannot_fit_beside_max_tokens_is_400(client, turns, max_tokens):
    body = {"prompt": "x y z", "history": HISTORY * turns, "max_tokens": max_tokens}
    error = assert_error(post(client, body), 400, "context_length_exceeded")
    assert error["details"]["max_tokens"] == max_tokens


def test_a_stored_history_that_cannot_fit_is_400(client):
    first = post(client, {"prompt": "a b c d e f g h i j", "max_tokens": 3}).get_json()
    body = {"prompt": "x y z", "conversation_id": first["conversation_id"], "max_tokens": 10**12}
    assert_error(post(client, body), 400, "context_length_exceeded")


def test_huge_max_tokens_on_openai_route_is_400(client):
    body = {**CHAT, "messages": [*HISTORY, *CHAT["messages"]], "max_tokens": 10**12}
    openai_error(client.post("/v1/chat/completions", data=json.dumps(body), content_type="application/json"),
                 400, None, "context_length_exceeded")


def test_app_with_default_settings_applies_the_same_rules(tmp_path):
    """Not just the tests' settings: the default body limit (1 MiB) leaves room for deep bodies."""
    settings = Settings.from_env({}, database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    from tests.fakes import FakeEngine
    client = create_app(settings, engine=FakeEngine()).test_client()
    assert_error(client.post("/chat/new/message", data=f'{{"stream": {nested_object(DEEP)}}}'), 400,
                 "nesting_too_deep")
