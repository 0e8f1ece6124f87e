"""Real chat models side by side in one gunicorn gevent server (the embedded model by default, and by
LLM_API_CHAT_MODELS a tiny ChatGLM3 folder and the embedded model once more, the three loading at once in the
worker), each chosen by `model` on the OpenAI and the lesson routes."""

from __future__ import annotations

import pytest
import requests

from tests.chatglm3_tiny import build_tiny_chatglm3
from tests.http import non_streamed, stored
from tests.servers import start_server, stop_server

pytestmark = [pytest.mark.e2e, pytest.mark.model]

GLM = "chatglm3-tiny"  # the folder's name: the model it serves


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = build_tiny_chatglm3(tmp_path_factory.mktemp("glm") / GLM)
    server = start_server(tmp_path_factory.mktemp("two-models"), {
        "LLM_API_CHAT_MODELS": f"glm={folder},smol=embedded",
        "LLM_API_CACHE_DIR": str(tmp_path_factory.mktemp("glm-cache"))})
    yield server
    stop_server(server)


def complete(url: str, model: str) -> dict:
    response = requests.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": model, "messages": [{"role": "user", "content": "Hello"}], "temperature": 0, "max_tokens": 8})
    assert response.status_code == 200, response.text
    return response.json()


def test_both_models_are_listed_loaded_and_chosen_by_model(server):
    ready = requests.get(f"{server.url}/readyz", timeout=10).json()  # ready only once both have loaded
    default = ready["model"]
    assert ready["chat_models"]["glm"]["model"] == GLM
    listed = [(m["id"], m["kind"]) for m in requests.get(f"{server.url}/v1/models", timeout=10).json()["data"]]
    assert listed == [(default, "chat"), ("glm", "chat"), ("smol", "chat")]
    assert ready["chat_models"]["smol"]["model"] == default

    by_id, by_name, by_default = complete(server.url, "glm"), complete(server.url, GLM), complete(server.url, default)
    assert by_id["model"] == by_name["model"] == GLM and by_default["model"] == default
    assert by_id["choices"][0]["message"] == by_name["choices"][0]["message"]  # greedy: the same model's answer
    # The same weights loaded twice answer alike: neither load was spoiled by the other's.
    assert complete(server.url, "smol")["choices"][0]["message"] == by_default["choices"][0]["message"]

    # The lesson API: an optional `model`, the default without it; the stored answer names the model.
    lesson = {"prompt": "Hello", "temperature": 0, "max_tokens": 8}
    glm_answer = non_streamed(server.url, {**lesson, "model": "glm"})
    assert glm_answer["response"] == by_id["choices"][0]["message"]["content"]
    assert stored(server.url, glm_answer["message_id"])["model"] == GLM
    plain = non_streamed(server.url, lesson)
    assert plain["response"] == by_default["choices"][0]["message"]["content"]
    assert stored(server.url, plain["message_id"])["model"] == default
    # A conversation continued without `model` stays with the model that answered it.
    continued = non_streamed(server.url, {**lesson, "prompt": "More", "conversation_id": glm_answer["conversation_id"]})
    assert stored(server.url, continued["message_id"])["model"] == GLM

    unknown = requests.post(f"{server.url}/v1/chat/completions", timeout=10, json={
        "model": "glm-2", "messages": [{"role": "user", "content": "Hello"}]})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
