"""The OpenAI-compatible API over the HTTP layer, on a scripted fake engine."""

from __future__ import annotations

import pytest

from tests.fakes import CHAT
from tests.http import openai_error, post_json
from tests.sse import openai_payloads, parse_sse

MODEL = "fake-model"  # the name `model` must say


def data_lines(response) -> list:
    return openai_payloads(parse_sse(response.get_data(as_text=True)))


def test_chat_completion_object(client, fake_engine):
    body = post_json(client, "/v1/chat/completions", CHAT).get_json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == fake_engine.model_name and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": fake_engine.reply, "refusal": None}
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 5


def test_messages_roles_and_text_parts_reach_the_engine(client, fake_engine):
    messages = [{"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "one "}, {"type": "text", "text": "two"}]},
                {"role": "assistant", "content": "three", "name": "bot"},
                {"role": "user", "content": "four"}]
    post_json(client, "/v1/chat/completions", {**CHAT, "messages": messages, "max_completion_tokens": 3,
                                               "max_tokens": 9, "temperature": 0.2, "top_p": 0.5, "seed": 3,
                                               "stop": "x", "user": "u1"})
    expected = fake_engine.encode_chat([{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "one two"},
                                        {"role": "assistant", "content": "three"}, {"role": "user", "content": "four"}])
    request = fake_engine.submitted[-1]
    assert request.prompt_ids == expected
    assert (request.params.max_tokens, request.params.temperature, request.params.top_p) == (3, 0.2, 0.5)
    assert (request.params.seed, request.params.stop) == (3, ("x",))


def test_nulls_mean_defaults(client, fake_engine):
    body = {**CHAT, "temperature": None, "top_p": None, "n": None, "stop": None, "stream": None, "seed": None,
            "max_tokens": None, "stream_options": None, "frequency_penalty": None, "logprobs": None, "tools": None}
    assert post_json(client, "/v1/chat/completions", body).status_code == 200
    params = fake_engine.submitted[-1].params
    assert (params.temperature, params.top_p, params.stop, params.seed) == (1.0, 1.0, (), None)


def test_chat_stream_chunks(client, fake_engine):
    response = post_json(client, "/v1/chat/completions", {**CHAT, "stream": True})
    assert response.mimetype == "text/event-stream"
    chunks = data_lines(response)
    assert chunks[-1] == "[DONE]"
    chunks = chunks[:-1]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert "".join(content) == fake_engine.reply and len(content) == 5
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


def test_chat_stream_include_usage(client, fake_engine):
    chunks = data_lines(post_json(client, "/v1/chat/completions",
                                  {**CHAT, "stream": True, "stream_options": {"include_usage": True}}))[:-1]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_error_after_stream_began_is_one_error_line_then_done(client, fake_engine):
    fake_engine.fail_after = 2
    lines = data_lines(post_json(client, "/v1/chat/completions", {**CHAT, "stream": True}))
    assert lines[-1] == "[DONE]"
    error = lines[-2]["error"]
    assert error["code"] == "generation_failed" and error["type"] == "server_error" and error["message"]
    assert not any(isinstance(x, dict) and x.get("choices") and x["choices"][0].get("finish_reason") for x in lines)


def test_text_completion_and_stream_with_echo(client, fake_engine):
    body = post_json(client, "/v1/completions", {"model": MODEL, "prompt": "Once upon", "max_tokens": 3}).get_json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"] == "Hello from the" and body["choices"][0]["finish_reason"] == "length"
    assert fake_engine.submitted[-1].prompt_ids == fake_engine.encode_text("Once upon")  # no chat template
    chunks = data_lines(post_json(client, "/v1/completions", {"model": MODEL, "prompt": ["Once upon"], "echo": True,
                                                              "stream": True}))
    assert chunks[-1] == "[DONE]"
    texts = [c["choices"][0]["text"] for c in chunks[:-1]]
    assert "".join(texts) == "Once upon" + fake_engine.reply[: len("Hello from the fake model.")]
    assert fake_engine.submitted[-1].params.max_tokens == 16  # the endpoint's OpenAI default


def test_models_list(client, fake_engine):
    body = client.get("/v1/models").get_json()
    assert body["object"] == "list"
    assert body["data"][0]["id"] == fake_engine.model_name and body["data"][0]["object"] == "model"
    assert body["data"][0]["context_length"] == fake_engine.context_length


@pytest.mark.parametrize("extra, param", [
    ({"n": 9}, "n"), ({"tools": [{"type": "function"}]}, "tools"), ({"top_logprobs": 2}, "top_logprobs"),
    ({"frequency_penalty": 2.5}, "frequency_penalty"), ({"response_format": {"type": "xml"}},
                                                       "response_format"),
    ({"temperature": 3}, "temperature"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options"), ({"bogus": 1}, "bogus"),
])
def test_unsupported_or_invalid_fields_are_422_naming_them(client, extra, param):
    error = openai_error(post_json(client, "/v1/chat/completions", {**CHAT, **extra}), 422, param, "validation_error")
    assert param in error["message"]


def test_missing_model_is_422(client):
    openai_error(post_json(client, "/v1/chat/completions", {"messages": CHAT["messages"]}), 422, "model",
                 "validation_error")


def test_openai_errors_keep_the_services_status_codes(client, fake_engine):
    openai_error(client.post("/v1/chat/completions", data="{"), 400, None, "invalid_json")
    openai_error(post_json(client, "/v1/chat/completions", {**CHAT, "max_tokens": 500}), 400, None,
                 "context_length_exceeded")
    fake_engine.queue_full = True
    response = post_json(client, "/v1/chat/completions", CHAT)
    openai_error(response, 503, None, "queue_full")
    assert response.headers["Retry-After"]
    openai_error(client.get("/v1/nope"), 404, None, "not_found")
    assert client.get("/nope").get_json()["error"]["details"] == {}  # the rest of the service keeps its envelope


def test_ignore_eos_extension_reaches_the_engine(client, fake_engine):
    post_json(client, "/v1/chat/completions", {**CHAT, "ignore_eos": True, "max_tokens": 7})
    assert fake_engine.submitted[-1].params.ignore_eos is True
    post_json(client, "/v1/chat/completions", CHAT)
    assert fake_engine.submitted[-1].params.ignore_eos is False


def test_a_stream_response_closed_before_it_was_read_is_cancelled_and_stored(settings):
    from llm_api import create_app
    from tests.fakes import FakeEngine, wait_until

    engine = FakeEngine(delay=0.05, reply="one two three four five six seven eight")
    client = create_app(settings, engine=engine).test_client()
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True}, buffered=False)
    assert response.status_code == 200
    response.close()  # the client went away before the first byte
    assert wait_until(lambda: engine.handles and engine.handles[0].cancelled)
    stored = client.get("/chat/get/messages").get_json()["messages"]
    assert [m["finish_reason"] for m in stored] == ["cancelled"]
