"""Requests that leave temperature or top_p out get the model's recommended values, not a blanket 1.0."""

from __future__ import annotations

import json

import pytest

from llm_api.generation.types import SamplingDefaults
from llm_api.local_model.loader import CHATGLM3_SAMPLING, EMBEDDED_SAMPLING, recommended_sampling

MODEL = "fake-model"  # the name `model` must say

RECOMMENDED = SamplingDefaults(temperature=0.3, top_p=0.85)


@pytest.fixture
def recommending_engine(fake_engine):
    fake_engine.defaults = RECOMMENDED
    return fake_engine


@pytest.mark.parametrize(("path", "body"), [
    ("/chat/new/message", {"prompt": "hello", "max_tokens": 3}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3,
                              "temperature": None, "top_p": None}),  # null: the default too
    ("/v1/completions", {"model": MODEL, "prompt": "hello", "max_tokens": 3}),
])
def test_left_out_fields_get_the_models_recommended_values(recommending_engine, client, path, body):
    assert client.post(path, json=body).status_code == 200
    params = recommending_engine.submitted[-1].params
    assert (params.temperature, params.top_p) == (0.3, 0.85)


def test_the_browser_endpoint_gets_them_too(recommending_engine, client):
    response = client.get("/chat/stream?prompt=hello&max_tokens=2")
    assert response.status_code == 200 and b"event: finish" in response.get_data()
    params = recommending_engine.submitted[-1].params
    assert (params.temperature, params.top_p) == (0.3, 0.85)


@pytest.mark.parametrize("path", ["/chat/new/message", "/v1/completions"])
def test_values_sent_by_the_caller_win(recommending_engine, client, path):
    assert client.post(path, json={"model": MODEL, "prompt": "hello", "max_tokens": 3, "temperature": 1.0,
                                   "top_p": 1.0}).status_code == 200
    params = recommending_engine.submitted[-1].params
    assert (params.temperature, params.top_p) == (1.0, 1.0)
    only_one = {"model": MODEL, "prompt": "hello", "max_tokens": 3, "temperature": 0.0}
    assert client.post(path, json=only_one).status_code == 200
    params = recommending_engine.submitted[-1].params
    assert (params.temperature, params.top_p) == (0.0, 0.85)


def test_the_stored_answer_records_the_values_used(recommending_engine, client):
    answer = client.post("/chat/new/message", json={"prompt": "hello", "max_tokens": 3}).get_json()
    conversation = client.get(f"/conversations/{answer['conversation_id']}").get_json()
    stored = next(m for m in conversation["messages"] if m["role"] == "assistant")
    assert stored["params"]["temperature"] == 0.3 and stored["params"]["top_p"] == 0.85


def test_generation_config_gives_a_folder_models_defaults(tmp_path):
    assert recommended_sampling(tmp_path) == SamplingDefaults(1.0, 1.0)  # no file: OpenAI's defaults
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.95, "top_k": 20}))
    assert recommended_sampling(tmp_path) == SamplingDefaults(0.6, 0.95)
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.7}))
    assert recommended_sampling(tmp_path) == SamplingDefaults(0.7, 1.0)
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": "hot", "top_p": 0}))
    assert recommended_sampling(tmp_path) == SamplingDefaults(1.0, 1.0)  # unusable values are ignored
    (tmp_path / "generation_config.json").write_text("not json")
    assert recommended_sampling(tmp_path) == SamplingDefaults(1.0, 1.0)


def test_the_documented_defaults_of_the_built_in_formats():
    assert EMBEDDED_SAMPLING == SamplingDefaults(0.2, 0.9)  # SmolLM2's model card
    assert CHATGLM3_SAMPLING == SamplingDefaults(0.8, 0.8)  # ChatGLM3's own chat()


@pytest.mark.model
def test_the_embedded_model_recommends_its_cards_values(real_engine):
    assert real_engine.sampling_defaults() == EMBEDDED_SAMPLING
