"""The sampling knobs, log-probabilities and ``n`` over the HTTP layer, on a scripted fake engine: what reaches
the engine, the OpenAI shapes of the answers, and the refusals naming the field."""

from __future__ import annotations

import math

import pytest

from llm_api.generation.features import ALL_FEATURES, SAMPLING_FEATURES
from tests.fakes import CHAT
from tests.http import assert_error, openai_error, post, post_json
from tests.sse import openai_payloads, parse_sse

TEXT = {"model": CHAT["model"], "prompt": "Once upon", "max_tokens": 3}


def data_lines(response) -> list:
    return openai_payloads(parse_sse(response.get_data(as_text=True)))


def test_every_knob_reaches_the_engine_on_both_openai_routes(client, fake_engine):
    knobs = {"top_k": 40, "min_p": 0.05, "presence_penalty": 0.5, "frequency_penalty": -0.5,
             "repetition_penalty": 1.1, "logit_bias": {"7": 5, "3": -100}}
    post_json(client, "/v1/chat/completions", {**CHAT, **knobs, "logprobs": True, "top_logprobs": 2})
    params = fake_engine.submitted[-1].params
    assert (params.top_k, params.min_p, params.presence_penalty, params.frequency_penalty) == (40, 0.05, 0.5, -0.5)
    assert params.repetition_penalty == 1.1 and params.logit_bias == ((3, -100.0), (7, 5.0))
    assert params.logprobs and params.top_logprobs == 2
    post_json(client, "/v1/completions", {**TEXT, **knobs, "logprobs": 3})
    params = fake_engine.submitted[-1].params
    assert params.logprobs and params.top_logprobs == 3 and params.top_k == 40
    post_json(client, "/v1/chat/completions", {**CHAT, "top_k": -1, "logit_bias": {}, "presence_penalty": None})
    params = fake_engine.submitted[-1].params
    assert (params.top_k, params.logit_bias, params.presence_penalty, params.logprobs) == (0, (), 0.0, False)


def test_the_lesson_api_takes_the_extensions(client, fake_engine):
    body = {"prompt": "hi", "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "presence_penalty": 0.3,
            "frequency_penalty": 0.4}
    assert post(client, body).status_code == 200
    params = fake_engine.submitted[-1].params
    assert (params.top_k, params.min_p, params.repetition_penalty) == (5, 0.1, 1.2)
    assert (params.presence_penalty, params.frequency_penalty) == (0.3, 0.4)
    assert client.get("/chat/stream?prompt=hi&top_k=-1&repetition_penalty=1.3").status_code == 200
    params = fake_engine.submitted[-1].params
    assert (params.top_k, params.repetition_penalty) == (0, 1.3)
    assert_error(post(client, {"prompt": "hi", "repetition_penalty": 0}), 422, "validation_error")
    error = assert_error(post(client, {"prompt": "hi", "min_p": 2}), 422, "validation_error")
    assert "min_p" in error["details"]["fields"]


def test_chat_logprobs_in_openais_shape(client, fake_engine):
    body = post_json(client, "/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 2}).get_json()
    content = body["choices"][0]["logprobs"]["content"]
    assert "".join(entry["token"] for entry in content) == fake_engine.reply
    first = content[0]
    assert set(first) == {"token", "logprob", "bytes", "top_logprobs"}
    assert first["bytes"] == list(first["token"].encode()) and first["logprob"] == -0.25
    assert [t["token"] for t in first["top_logprobs"]] == [first["token"], "alt1"]
    assert set(first["top_logprobs"][1]) == {"token", "logprob", "bytes"}
    plain = post_json(client, "/v1/chat/completions", {**CHAT, "logprobs": False}).get_json()
    assert plain["choices"][0]["logprobs"] is None


def test_streamed_chat_logprobs_come_with_their_text(client, fake_engine):
    chunks = data_lines(post_json(client, "/v1/chat/completions",
                                  {**CHAT, "stream": True, "logprobs": True, "top_logprobs": 1}))
    content = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["delta"].get("content")]
    assert content and all(c["logprobs"]["content"][0]["token"] == c["delta"]["content"] for c in content)
    assert all(len(c["logprobs"]["content"][0]["top_logprobs"]) == 1 for c in content)
    assert chunks[0]["choices"][0]["logprobs"] is None  # the role chunk
    assert chunks[-1] == "[DONE]"


def test_completion_logprobs_in_the_legacy_shape(client, fake_engine):
    body = post_json(client, "/v1/completions", {**TEXT, "logprobs": 2}).get_json()
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["Hello", " from", " the"] and logprobs["token_logprobs"] == [-0.25] * 3
    assert logprobs["text_offset"] == [0, 5, 10]
    assert logprobs["top_logprobs"][1] == {" from": -0.25, "alt1": -1.0}
    chunks = data_lines(post_json(client, "/v1/completions", {**TEXT, "logprobs": 0, "stream": True}))
    streamed = [c["choices"][0]["logprobs"] for c in chunks[:-1] if c["choices"][0]["text"]]
    assert [s["text_offset"][0] for s in streamed] == [0, 5, 10]
    assert all(s["top_logprobs"] == [{}] for s in streamed)


def test_n_answers_with_their_own_seeds_and_summed_usage(client, fake_engine):
    body = post_json(client, "/v1/chat/completions", {**CHAT, "n": 3, "seed": 41, "max_tokens": 2}).get_json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == "Hello from" for c in body["choices"])
    assert [r.params.seed for r in fake_engine.submitted[-3:]] == [41, 42, 43]
    assert len({r.request_id for r in fake_engine.submitted[-3:]}) == 3  # three stored answers
    usage = body["usage"]
    assert usage["completion_tokens"] == 6 and usage["total_tokens"] == usage["prompt_tokens"] + 6
    post_json(client, "/v1/chat/completions", {**CHAT, "n": 2, "seed": 2**63 - 1})
    assert [r.params.seed for r in fake_engine.submitted[-2:]] == [2**63 - 1, -(2**63)]  # wraps within 64 bits
    post_json(client, "/v1/completions", {**TEXT, "n": 2})
    assert [r.params.seed for r in fake_engine.submitted[-2:]] == [None, None]  # each its own random seed
    listed = client.get("/chat/get/messages?limit=500").get_json()["messages"]
    assert len(listed) >= 3


def test_n_streamed_choices_carry_their_index(client, fake_engine):
    chunks = data_lines(post_json(client, "/v1/chat/completions",
                                  {**CHAT, "n": 2, "stream": True, "stream_options": {"include_usage": True}}))
    assert chunks[-1] == "[DONE]"
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks[:-2]:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["delta"].get("content", "")
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    assert texts == {0: fake_engine.reply, 1: fake_engine.reply} and finishes == {0: "stop", 1: "stop"}
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["completion_tokens"] == 10


def test_n_streamed_text_completions_and_echo(client, fake_engine):
    chunks = data_lines(post_json(client, "/v1/completions", {**TEXT, "n": 2, "stream": True, "echo": True}))
    texts = {0: "", 1: ""}
    for chunk in chunks[:-1]:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["text"]
    assert texts == {0: "Once upon" + "Hello from the", 1: "Once upon" + "Hello from the"}


def test_an_engine_refusing_one_of_n_stores_nothing(client, fake_engine):
    fake_engine.context_length = 8
    openai_error(post_json(client, "/v1/chat/completions", {**CHAT, "n": 2, "max_tokens": 20}), 400, None,
                 "context_length_exceeded")
    assert client.get("/conversations").get_json()["conversations"] == []


@pytest.mark.parametrize("field", ["logprobs", "logit_bias", "top_k", "repetition_penalty", "presence_penalty"])
def test_a_feature_the_engine_does_not_honour_is_refused_naming_it(client, fake_engine, field):
    fake_engine.features = SAMPLING_FEATURES - {field}
    value = {"logprobs": True, "logit_bias": {"1": 1}, "top_k": 3, "repetition_penalty": 1.2,
             "presence_penalty": 1}[field]
    error = openai_error(post_json(client, "/v1/chat/completions", {**CHAT, field: value}), 400, field,
                         "unsupported_parameter")
    assert field in error["message"]
    assert post_json(client, "/v1/chat/completions", CHAT).status_code == 200  # the rest still works
    if field in ("top_k", "repetition_penalty", "presence_penalty"):  # the lesson API refuses it the same way
        error = assert_error(post(client, {"prompt": "hi", field: value}), 400, "unsupported_parameter")
        assert list(error["details"]["fields"]) == [field]


@pytest.mark.parametrize("path, extra, param", [
    ("/v1/chat/completions", {"n": 9}, "n"),
    ("/v1/chat/completions", {"n": 0}, "n"),
    ("/v1/chat/completions", {"n": 2.5}, "n"),
    ("/v1/chat/completions", {"top_logprobs": 3}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": "yes"}, "logprobs"),
    ("/v1/chat/completions", {"presence_penalty": -2.01}, "presence_penalty"),
    ("/v1/chat/completions", {"frequency_penalty": "1"}, "frequency_penalty"),
    ("/v1/chat/completions", {"repetition_penalty": 0}, "repetition_penalty"),
    ("/v1/chat/completions", {"repetition_penalty": 2.5}, "repetition_penalty"),
    ("/v1/chat/completions", {"top_k": -2}, "top_k"),
    ("/v1/chat/completions", {"top_k": True}, "top_k"),
    ("/v1/chat/completions", {"min_p": 1.5}, "min_p"),
    ("/v1/chat/completions", {"logit_bias": {"abc": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"-1": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"5": 101}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"5": "1"}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"5": True}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": [1, 2]}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ("/v1/completions", {"logprobs": 21}, "logprobs"),
    ("/v1/completions", {"logprobs": True}, "logprobs"),
    ("/v1/completions", {"logprobs": 1, "echo": True}, "logprobs"),
    ("/v1/completions", {"n": 9}, "n"),
])
def test_bad_knobs_are_422_naming_the_field(client, path, extra, param):
    body = {**(CHAT if "chat" in path else TEXT), **extra}
    error = openai_error(post_json(client, path, body), 422, param, "validation_error")
    assert param in error["message"]


def test_logprob_values_are_finite_json_numbers(client):
    body = post_json(client, "/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 20}).get_json()
    values = [e["logprob"] for e in body["choices"][0]["logprobs"]["content"]]
    assert values and all(math.isfinite(v) for v in values)


# ---- the engine chain: a request goes only to an engine that honours what it uses ----------------------------
def routed_client(settings, *features: frozenset[str], degraded_answer: str = ""):
    from llm_api import create_app
    from llm_api.routing import EngineRouter
    from tests.fakes import FakeEngine

    engines = []
    for i, honoured in enumerate(features):
        engine = FakeEngine(reply=f"Answer from engine {i}.")
        engine.features = honoured
        engines.append(engine)
    router = EngineRouter([(f"e{i}", e) for i, e in enumerate(engines)], degraded_answer=degraded_answer)
    return create_app(settings, engine=router).test_client(), engines


def test_the_router_skips_an_engine_that_does_not_honour_a_field(settings):
    client, (plain, full) = routed_client(settings, frozenset(), SAMPLING_FEATURES)
    response = post_json(client, "/v1/chat/completions", {**CHAT, "logprobs": True})
    assert response.status_code == 200 and response.headers["X-LLM-API-Engine"] == "e1"
    assert response.get_json()["choices"][0]["logprobs"]["content"]
    assert plain.submitted == []  # not tried, and no breaker failure counted against it
    response = post_json(client, "/v1/chat/completions", CHAT)
    assert response.headers["X-LLM-API-Engine"] == "e0"  # a plain request still goes to the primary


def test_a_field_no_engine_of_the_chain_honours_is_a_400_even_with_a_static_answer(settings):
    client, engines = routed_client(settings, frozenset(), frozenset({"logprobs"}), degraded_answer="Busy.")
    error = openai_error(post_json(client, "/v1/chat/completions", {**CHAT, "min_p": 0.1}), 400, "min_p",
                         "unsupported_parameter")
    assert "min_p" in error["message"]
    assert all(engine.submitted == [] for engine in engines)


def test_the_static_answer_never_stands_in_for_a_field_it_cannot_honour(settings):
    client, (down,) = routed_client(settings, SAMPLING_FEATURES, degraded_answer="Busy.")
    down.queue_full = True
    response = post_json(client, "/v1/chat/completions", {**CHAT, "logprobs": True})
    assert response.status_code == 503  # rather than an answer without its log-probabilities
    assert post_json(client, "/v1/chat/completions", CHAT).get_json()["choices"][0]["message"]["content"] == "Busy."


WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize("extra, field", [
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [WEATHER], "tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "weather"}}}, "tool_choice"),
])
def test_the_answers_shape_goes_to_an_engine_that_enforces_it(settings, extra, field):
    """An engine without a grammar step (a model on its own generate code) is skipped for a JSON answer or a
    forced call; a chain with no engine for it refuses it naming the field, rather than a static answer."""
    client, (plain, full) = routed_client(settings, SAMPLING_FEATURES, ALL_FEATURES)
    response = post_json(client, "/v1/chat/completions", {**CHAT, **extra})
    assert response.headers["X-LLM-API-Engine"] == "e1" and plain.submitted == []
    tools_auto = post_json(client, "/v1/chat/completions", {**CHAT, "tools": [WEATHER]})
    assert tools_auto.headers["X-LLM-API-Engine"] == "e0"  # calls allowed but not forced: no grammar needed
    client, _ = routed_client(settings, SAMPLING_FEATURES, degraded_answer="Busy.")
    error = openai_error(post_json(client, "/v1/chat/completions", {**CHAT, **extra}), 400, field,
                         "unsupported_parameter")
    assert field in error["message"]
