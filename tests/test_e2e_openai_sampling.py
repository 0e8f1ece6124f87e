"""The official ``openai`` client asks the real server (gunicorn gevent, embedded model) for log-probabilities,
several answers and the sampling extensions, streamed and not; every answer parses in the client's own types."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob

pytestmark = pytest.mark.e2e

FRUITS = [{"role": "user", "content": "Name three fruits."}]
MODEL = "SmolLM2-135M-Instruct"  # the name `model` must say
# The extensions go in extra_body, as the client's documentation says for vLLM's fields.
ASK = {"model": MODEL, "messages": FRUITS, "temperature": 0.8, "seed": 5, "max_tokens": 16, "n": 2, "logprobs": True,
       "top_logprobs": 3, "presence_penalty": 0.3, "frequency_penalty": 0.2, "logit_bias": {"28": -2},
       "extra_body": {"top_k": 40, "min_p": 0.02, "repetition_penalty": 1.1}}


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def answer(client) -> ChatCompletion:
    return client.chat.completions.create(**ASK)


def check_logprobs(content: str, entries: list[ChatCompletionTokenLogprob]) -> None:
    assert entries and all(isinstance(e, ChatCompletionTokenLogprob) for e in entries)
    assert bytes(b for e in entries for b in e.bytes).decode() == content
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)


def test_two_answers_with_logprobs_parse_in_the_clients_types(client, answer):
    assert [c.index for c in answer.choices] == [0, 1]
    for choice in answer.choices:
        assert choice.message.content and choice.finish_reason in ("stop", "length")
        check_logprobs(choice.message.content, choice.logprobs.content)
    assert answer.usage.completion_tokens == sum(len(c.logprobs.content) for c in answer.choices) + sum(
        c.finish_reason == "stop" for c in answer.choices)  # the end-of-turn token counts, without a logprob
    second = client.chat.completions.create(**{**ASK, "n": 1, "seed": 6})  # answer 1 is seed + 1
    assert second.choices[0].message.content == answer.choices[1].message.content


def test_the_same_answers_streamed_carry_their_index_and_logprobs(client, answer):
    chunks = list(client.chat.completions.create(**ASK, stream=True, stream_options={"include_usage": True}))
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    texts, entries, finishes = {0: "", 1: ""}, {0: [], 1: []}, {}
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        texts[choice.index] += choice.delta.content or ""
        if choice.logprobs is not None:
            entries[choice.index].extend(choice.logprobs.content)
        if choice.finish_reason:
            finishes[choice.index] = choice.finish_reason
    for index, choice in enumerate(answer.choices):
        assert texts[index] == choice.message.content and finishes[index] == choice.finish_reason
        assert [e.token for e in entries[index]] == [e.token for e in choice.logprobs.content]
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens


def test_text_completion_logprobs_in_the_legacy_shape(client):
    ask = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "logprobs": 2}
    completion = client.completions.create(**ask)
    logprobs = completion.choices[0].logprobs
    assert "".join(logprobs.tokens) == completion.choices[0].text
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == len(logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0 and all(len(top) <= 2 for top in logprobs.top_logprobs)
    streamed = [c.choices[0] for c in client.completions.create(**ask, stream=True)]
    assert [t for c in streamed if c.logprobs for t in c.logprobs.tokens] == logprobs.tokens


@pytest.mark.parametrize("fields, param", [
    ({"n": 9}, "n"), ({"top_logprobs": 2}, "top_logprobs"), ({"presence_penalty": 3}, "presence_penalty"),
    ({"logit_bias": {"x": 1}}, "logit_bias"), ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
])
def test_bad_values_are_client_exceptions_naming_the_field(client, fields, param):
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.chat.completions.create(model=MODEL, messages=FRUITS, max_tokens=4, **fields)
    assert raised.value.body["param"] == param
