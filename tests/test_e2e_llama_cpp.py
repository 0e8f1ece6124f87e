"""The real server (gunicorn gevent) on LLM_API_BACKEND=llama_cpp: the openai client streams from it, a
conversation's next turn reuses its slot, and concurrent streams each get their own answer."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from tests.servers import start_server, stop_server

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(tmp_path_factory.mktemp("llama-cpp"), {"LLM_API_BACKEND": "llama_cpp"})
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=120)


def _prefix_tokens_reused(server) -> float:
    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("llm_api_prefix_tokens_reused "))


def _reused_since(server, before: float, timeout: float = 10) -> float:
    """Tokens reused since ``before`` was read, once the workers' sampled gauge shows a change."""
    deadline = time.monotonic() + timeout
    while (now := _prefix_tokens_reused(server)) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    return now - before


def test_the_openai_client_streams_what_it_gets_whole(client):
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=30)
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=30,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens > 3
    assert whole.model == MODEL


def test_a_conversation_turn_reuses_the_slot_of_the_turn_before(server, client):
    history = [{"role": "system", "content": "You are a patient teacher of geography. " * 6},
               {"role": "user", "content": "What is a river delta?"}]
    first = client.chat.completions.create(model=MODEL, messages=history, temperature=0, max_tokens=40)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "Name one."}]
    time.sleep(2)  # the gauge is sampled every second: let it show the first turn
    before = _prefix_tokens_reused(server)
    second = client.chat.completions.create(model=MODEL, messages=history, temperature=0, max_tokens=20)
    assert second.choices[0].message.content
    assert _reused_since(server, before) >= first.usage.prompt_tokens


def test_eight_concurrent_streams_each_get_their_own_greedy_answer(client):
    questions = [f"What is {n} plus {n}?" for n in range(1, 9)]

    def ask(question: str) -> str:
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}],
                                                temperature=0, max_tokens=24, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, questions))
    alone = [ask(question) for question in questions]
    assert together == alone and all(together)
