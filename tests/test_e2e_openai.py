"""The official ``openai`` Python client against the real server (gunicorn gevent, embedded model)."""

from __future__ import annotations

import openai
import pytest

MODEL = "SmolLM2-135M-Instruct"  # the embedded chat model's name: what `model` must say

pytestmark = pytest.mark.e2e

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def openai_client(live_server):
    """The official openai client, pointed at the live server."""
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="not-needed", max_retries=0, timeout=120)


def test_non_streamed_chat_completion(openai_client):
    completion = openai_client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=40)
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert "Paris" in completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens > 3 and completion.model == "SmolLM2-135M-Instruct"


def test_streamed_chat_completion_matches_the_non_streamed_one(openai_client):
    expected = openai_client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=40)
    chunks = list(openai_client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=40,
                                                        stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 5
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_with_usage(openai_client):
    chunks = list(openai_client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=40,
                                                        stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 3
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_sequence_is_not_returned(openai_client):
    completion = openai_client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=40,
                                                       stop=["Paris"])
    text = completion.choices[0].message.content
    assert "Paris" not in text and text.startswith("The capital of France is")
    assert completion.choices[0].finish_reason == "stop"


def test_same_seed_same_text(openai_client):
    story = [{"role": "user", "content": "Tell me a short story about a fox."}]
    texts = [openai_client.chat.completions.create(model=MODEL, messages=story, temperature=1.0, seed=42, max_tokens=24)
             .choices[0].message.content for _ in range(2)]
    assert texts[0] == texts[1] and texts[0]


def test_validation_error_surfaces_as_a_client_exception(openai_client):
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        openai_client.chat.completions.create(model=MODEL, messages=FRANCE, n=9)
    assert raised.value.status_code == 422
    assert raised.value.body["param"] == "n" and raised.value.body["code"] == "validation_error"
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=100_000)
    assert raised.value.body["code"] == "context_length_exceeded"


def test_models_list(openai_client):
    models = openai_client.models.list().data
    assert [m.id for m in models] == ["SmolLM2-135M-Instruct"]
    assert models[0].model_extra["context_length"] == 8192


def test_text_completion(openai_client):
    completion = openai_client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5,
                                                  temperature=0)
    assert completion.object == "text_completion" and completion.choices[0].text.strip()
    streamed = "".join(c.choices[0].text for c in openai_client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True))
    assert streamed == completion.choices[0].text
