"""POST /v1/embeddings, /v1/models and `model` on every route, on a fake chat engine and a fake embedder."""

from __future__ import annotations

import base64
import dataclasses
import logging

import numpy as np
import pytest

from llm_api import create_app
from tests.fake_embedder import FakeEmbedder
from tests.http import assert_error, bearer, new_key, openai_error, post, post_json

EMBED = "/v1/embeddings"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def app(fake_engine, embedder, settings):
    app = create_app(dataclasses.replace(settings, max_body_bytes=65536), engine=fake_engine,
                     embedders={embedder.model_name: embedder})
    app.config["TESTING"] = True
    return app


def embed(client, body, **kwargs):
    return post_json(client, EMBED, {"model": "fake-embedder", **body}, **kwargs)


def test_a_list_of_strings_gets_one_vector_each_in_openais_shape(client, embedder):
    response = embed(client, {"input": ["ab", "hello"]})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["object"] == "list" and body["model"] == "fake-embedder"
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1)]
    expected = [embedder.vector(ids) for ids in embedder.tokenize(["ab", "hello"])]
    assert np.allclose([d["embedding"] for d in body["data"]], expected)
    assert body["usage"] == {"prompt_tokens": 4 + 7, "total_tokens": 4 + 7}  # begin and end tokens counted


def test_a_single_string_and_base64_give_the_same_floats(client):
    floats = embed(client, {"input": "hello"}).get_json()["data"][0]["embedding"]
    encoded = embed(client, {"input": "hello", "encoding_format": "base64"}).get_json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert np.frombuffer(base64.b64decode(encoded), dtype="<f4").tolist() == pytest.approx(floats)


def test_token_arrays_are_ids_of_the_models_own_vocabulary(client, embedder):
    as_text = embed(client, {"input": ["ab"]}).get_json()["data"][0]["embedding"]
    ids = embedder.tokenize(["ab"])[0][1:-1]  # without the begin and end tokens the model adds itself
    one = embed(client, {"input": ids}).get_json()
    many = embed(client, {"input": [ids, ids]}).get_json()
    assert one["data"][0]["embedding"] == pytest.approx(as_text)
    assert [d["embedding"] for d in many["data"]] == [pytest.approx(as_text)] * 2
    assert one["usage"]["prompt_tokens"] == len(ids) + 2


def test_dimensions_equal_to_the_models_is_accepted(client):
    assert len(embed(client, {"input": "a", "dimensions": 8}).get_json()["data"][0]["embedding"]) == 8


@pytest.mark.parametrize(("body", "param"), [
    ({"input": []}, "input"),
    ({"input": ""}, "input"),
    ({"input": ["a", ""]}, "input"),
    ({"input": ["a"] * 2049}, "input"),
    ({"input": ["a", 1]}, "input"),
    ({"input": [[1], "a"]}, "input"),
    ({"input": [[]]}, "input"),
    ({"input": [-1]}, "input"),
    ({"input": [1.5]}, "input"),
    ({"input": [True]}, "input"),
    ({"input": 7}, "input"),
    ({"input": {"text": "a"}}, "input"),
    ({"input": None}, "input"),
    ({}, "input"),
    ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "a", "dimensions": "8"}, "dimensions"),
    ({"input": "a", "dimensions": 0}, "dimensions"),
    ({"input": "a", "truncate": True}, "truncate"),
])
def test_bad_input_is_a_422_naming_the_field(client, body, param):
    openai_error(embed(client, body), 422, param, "validation_error")


def test_no_model_is_a_422_naming_it(client):
    openai_error(post_json(client, EMBED, {"input": "a"}), 422, "model", "validation_error")


def test_an_input_longer_than_the_window_is_a_400_naming_it(client, embedder):
    error = openai_error(embed(client, {"input": ["short", "x" * 15]}), 400, "input", "context_length_exceeded")
    assert "Input 1 has 17 tokens" in error["message"] and "at most 16" in error["message"]
    assert embedder.submitted == []  # refused before the engine


def test_an_id_outside_the_vocabulary_is_a_400(client):
    error = openai_error(embed(client, {"input": [[5, 100]]}), 400, "input", "invalid_token_id")
    assert "100" in error["message"]


def test_other_dimensions_are_a_400_naming_the_field(client):
    openai_error(embed(client, {"input": "a", "dimensions": 4}), 400, "dimensions", "unsupported_dimensions")


def test_an_unknown_model_is_404_on_every_route(client):
    openai_error(post_json(client, EMBED, {"model": "nope", "input": "a"}), 404, "model", "model_not_found")
    openai_error(post_json(client, "/v1/chat/completions", {"model": "nope", **CHAT}), 404, "model",
                 "model_not_found")
    openai_error(post_json(client, "/v1/completions", {"model": "nope", "prompt": "a"}), 404, "model",
                 "model_not_found")
    assert_error(post(client, {"prompt": "hi", "model": "nope"}), 404, "model_not_found")
    assert_error(client.get("/chat/stream?prompt=hi&model=nope"), 404, "model_not_found")


def test_a_model_of_the_other_kind_is_400(client):
    openai_error(post_json(client, EMBED, {"model": "fake-model", "input": "a"}), 400, "model", "wrong_model_kind")
    openai_error(post_json(client, "/v1/chat/completions", {"model": "fake-embedder", **CHAT}), 400, "model",
                 "wrong_model_kind")
    assert_error(post(client, {"prompt": "hi", "model": "fake-embedder"}), 400, "wrong_model_kind")


def test_the_chat_model_is_chosen_by_its_name_or_left_out_on_the_lesson_api(client):
    assert post_json(client, "/v1/chat/completions", {"model": "fake-model", **CHAT}).status_code == 200
    assert post(client, {"prompt": "hi", "model": "fake-model"}).status_code == 200
    assert post(client, {"prompt": "hi"}).status_code == 200


def test_the_model_list_has_every_model_with_its_kind(client):
    models = {m["id"]: m for m in client.get("/v1/models").get_json()["data"]}
    assert models["fake-model"]["kind"] == "chat" and models["fake-model"]["context_length"] == 64
    assert models["fake-embedder"] == {**models["fake-embedder"], "object": "model", "kind": "embedding",
                                       "context_length": 16, "dimensions": 8}


def test_outside_gunicorn_an_embedding_model_starts_on_its_first_request(client, embedder):
    assert client.get("/readyz").status_code == 200 and not embedder.started
    embed(client, {"input": "a"})
    assert embedder.started


def test_readiness_waits_for_a_started_embedding_model(app, client, embedder):
    embed(client, {"input": "a"})
    embedder.ready = False
    assert_error(client.get("/readyz"), 503, "model_not_ready")
    openai_error(embed(client, {"input": "a"}), 503, None, "model_not_ready")


def test_embeddings_need_the_chat_scope_and_count_toward_tokens_per_minute(app, client):
    metrics_only = new_key(app, "scraper", ("metrics",))
    openai_error(embed(client, {"input": "a"}, headers=bearer(metrics_only)), 403, None, "insufficient_scope")
    key = new_key(app, tpm=20)
    first = embed(client, {"input": ["abc", "de"]}, headers=bearer(key))  # 5 + 4 tokens
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == "11"
    assert embed(client, {"input": "abcdefgh"}, headers=bearer(key)).status_code == 200  # 10: one left
    refused = embed(client, {"input": "a"}, headers=bearer(key))
    assert refused.status_code == 429 and refused.get_json()["error"]["type"] == "rate_limit_error"


def test_embeddings_appear_in_the_metrics_and_the_log(app, client, caplog):
    with caplog.at_level(logging.INFO):
        embed(client, {"input": ["ab", "c"]})
    line = next(r for r in caplog.records if r.name == "llm_api.embeddings")
    assert line.fields == {**line.fields, "model": "fake-embedder", "inputs": 2, "tokens": 7}
    request_line = next(r for r in caplog.records if r.name == "llm_api.request")
    assert request_line.fields["route"] == "/v1/embeddings" and request_line.fields["status"] == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert 'llm_api_embedding_inputs_total{model="fake-embedder"} 2.0' in text
    assert 'llm_api_embedding_tokens_total{model="fake-embedder"} 7.0' in text
    assert 'llm_api_embedding_requests_total{model="fake-embedder"} 1.0' in text


def test_the_embedding_models_setting(tmp_path):
    from llm_api.config import ConfigError, EmbeddingTarget, Settings

    assert Settings.from_env({}).embedding_models == (EmbeddingTarget("all-MiniLM-L6-v2", "embedded"),)
    assert Settings.from_env({"LLM_API_EMBEDDING_MODELS": ""}).embedding_models == ()
    two = Settings.from_env({"LLM_API_EMBEDDING_MODELS": f"a=EMBEDDED, b:v1={tmp_path}"}).embedding_models
    assert two == (EmbeddingTarget("a", "embedded"), EmbeddingTarget("b:v1", str(tmp_path)))
    for raw in ("a", "a=", "=embedded", "a b=embedded", "a=embedded,a=embedded", f"a={tmp_path / 'missing'}"):
        with pytest.raises(ConfigError, match="LLM_API_EMBEDDING_MODELS"):
            Settings.from_env({"LLM_API_EMBEDDING_MODELS": raw})
    assert Settings.from_env({}).chat_model_aliases == ("chatglm3-6b",)
    assert Settings.from_env({"LLM_API_CHAT_MODEL_ALIASES": " x, y "}).chat_model_aliases == ("x", "y")
    with pytest.raises(ConfigError, match="LLM_API_CHAT_MODEL_ALIASES"):
        Settings.from_env({"LLM_API_CHAT_MODEL_ALIASES": "a b"})


def test_the_start_up_check_of_an_embedding_folder(tmp_path):
    from llm_api.local_model.embedding_spec import EmbeddingSpec, preflight_embedding
    from llm_api.local_model.errors import ModelLoadError

    preflight_embedding(EmbeddingSpec("minilm", "embedded"))  # the package is installed
    with pytest.raises(ModelLoadError, match="neither a config.json nor a modules.json"):
        preflight_embedding(EmbeddingSpec("empty", str(tmp_path)))


def test_an_alias_selects_the_chat_model_and_can_be_turned_off(settings, fake_engine):
    aliased = create_app(dataclasses.replace(settings, chat_model_aliases=("gpt-4o",)), engine=fake_engine,
                         embedders={}).test_client()
    assert post_json(aliased, "/v1/chat/completions", {"model": "gpt-4o", **CHAT}).status_code == 200
    openai_error(post_json(aliased, "/v1/chat/completions", {"model": "chatglm3-6b", **CHAT}), 404, "model",
                 "model_not_found")
