"""Several chat models behind one server (LLM_API_CHAT_MODELS), chosen by `model`: two fake chat engines."""

from __future__ import annotations

import dataclasses

import pytest

from llm_api import create_app
from tests.fake_embedder import FakeEmbedder
from tests.fakes import FakeEngine
from tests.http import assert_error, openai_error, post, post_json

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture
def second() -> FakeEngine:
    engine = FakeEngine("Answer of the second model.", context_length=128)
    engine.model_name = "second-model"  # what it serves; its configured id is `second`
    return engine


@pytest.fixture
def app(fake_engine, second, settings):
    app = create_app(settings, engine=fake_engine, chat_models={"second": second},
                     embedders={"fake-embedder": FakeEmbedder()})
    app.config["TESTING"] = True
    return app


def completion(client, model: str):
    response = post_json(client, "/v1/chat/completions", {"model": model, **CHAT})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def test_model_chooses_the_chat_model_on_the_openai_routes(client, fake_engine, second):
    picked = completion(client, "second")
    assert picked.get_json()["choices"][0]["message"]["content"] == "Answer of the second model."
    assert picked.get_json()["model"] == "second-model"  # the model that wrote it, as OpenAI names a snapshot
    assert picked.headers["X-LLM-API-Engine"] == "second"
    assert len(second.submitted) == 1 and not fake_engine.submitted
    default = completion(client, "fake-model")
    assert default.get_json()["choices"][0]["message"]["content"] == "Hello from the fake model."
    assert default.get_json()["model"] == "fake-model" and len(fake_engine.submitted) == 1
    by_served_name = completion(client, "second-model")  # the name of the model it serves selects it too
    assert by_served_name.get_json()["model"] == "second-model" and len(second.submitted) == 2
    text = post_json(client, "/v1/completions", {"model": "second", "prompt": "hi", "max_tokens": 3})
    assert text.get_json()["choices"][0]["text"] == "Answer of the" and len(second.submitted) == 3


def test_the_lesson_api_takes_an_optional_model_and_defaults_to_the_first(client, fake_engine, second):
    chosen = post(client, {"prompt": "hi", "model": "second"})
    assert chosen.status_code == 200 and chosen.get_json()["response"] == "Answer of the second model."
    default = post(client, {"prompt": "hi"})
    assert default.get_json()["response"] == "Hello from the fake model."
    streamed = client.get("/chat/stream?prompt=hi&model=second&stream_mode=cumulative")
    assert "Answer of the second model." in streamed.get_data(as_text=True)
    assert len(second.submitted) == 2 and len(fake_engine.submitted) == 1


def test_a_continued_conversation_keeps_its_model_unless_another_is_asked_for(client, fake_engine, second):
    started = post(client, {"prompt": "hi", "model": "second"}).get_json()
    continued = post(client, {"prompt": "and then?", "conversation_id": started["conversation_id"]})
    assert continued.get_json()["response"] == "Answer of the second model." and not fake_engine.submitted
    switched = post(client, {"prompt": "you now", "conversation_id": started["conversation_id"],
                             "model": "fake-model"})
    assert switched.get_json()["response"] == "Hello from the fake model."
    assert fake_engine.encoded[-1][0]["content"] == "hi"  # the whole stored history goes to the new model
    again = post(client, {"prompt": "and now?", "conversation_id": started["conversation_id"]})
    assert again.get_json()["response"] == "Hello from the fake model."  # the newest answer's model


def test_a_conversation_whose_model_is_gone_continues_on_the_default(settings, fake_engine, second):
    client = create_app(settings, engine=fake_engine, chat_models={"second": second}, embedders={}).test_client()
    started = post(client, {"prompt": "hi", "model": "second"}).get_json()
    later = create_app(settings, engine=fake_engine, embedders={}).test_client()  # restarted without it
    continued = post(later, {"prompt": "and then?", "conversation_id": started["conversation_id"]})
    assert continued.status_code == 200 and continued.get_json()["response"] == "Hello from the fake model."


def test_the_model_list_has_every_chat_model_with_its_context_length(client):
    models = {m["id"]: m for m in client.get("/v1/models").get_json()["data"]}
    assert [m for m in models] == ["fake-model", "second", "fake-embedder"]
    assert (models["fake-model"]["kind"], models["fake-model"]["context_length"]) == ("chat", 64)
    assert (models["second"]["kind"], models["second"]["context_length"]) == ("chat", 128)


def test_unknown_and_wrong_kind_models_are_refused_on_every_route(client):
    openai_error(post_json(client, "/v1/chat/completions", {"model": "third", **CHAT}), 404, "model",
                 "model_not_found")
    assert_error(post(client, {"prompt": "hi", "model": "third"}), 404, "model_not_found")
    assert_error(client.get("/chat/stream?prompt=hi&model=third"), 404, "model_not_found")
    openai_error(post_json(client, "/v1/embeddings", {"model": "second", "input": "a"}), 400, "model",
                 "wrong_model_kind")
    openai_error(post_json(client, "/v1/embeddings", {"model": "second-model", "input": "a"}), 400, "model",
                 "wrong_model_kind")
    assert_error(post(client, {"prompt": "hi", "model": "fake-embedder"}), 400, "wrong_model_kind")


def test_readiness_waits_for_every_chat_model(client, second):
    ready = client.get("/readyz")
    assert ready.status_code == 200 and second.started  # outside gunicorn the first request starts them all
    assert ready.get_json()["chat_models"]["second"]["context_length"] == 128
    second.ready = False
    second.load_error = "the second model failed to load"
    error = assert_error(client.get("/readyz"), 503, "model_not_ready")
    assert "second model failed" in error["message"]


def test_the_chat_models_setting(tmp_path):
    from llm_api.config import EMBEDDED_MODEL, ChatModelTarget, ConfigError, Settings

    assert Settings.from_env({}).chat_models == ()
    two = Settings.from_env({"LLM_API_CHAT_MODELS": f" small=embedded , glm:tiny={tmp_path}"}).chat_models
    assert two == (ChatModelTarget("small", EMBEDDED_MODEL), ChatModelTarget("glm:tiny", str(tmp_path)))
    for raw in ("a", "a=", "=embedded", "a b=embedded", "a=embedded,a=embedded", f"a={tmp_path / 'missing'}"):
        with pytest.raises(ConfigError, match="LLM_API_CHAT_MODELS"):
            Settings.from_env({"LLM_API_CHAT_MODELS": raw})


def test_an_alias_still_selects_the_default_chat_model(settings, fake_engine, second):
    client = create_app(dataclasses.replace(settings, chat_model_aliases=("gpt-4o",)), engine=fake_engine,
                        chat_models={"second": second}, embedders={}).test_client()
    assert completion(client, "gpt-4o").get_json()["model"] == "fake-model" and len(fake_engine.submitted) == 1
