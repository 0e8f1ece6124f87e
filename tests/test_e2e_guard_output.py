"""End to end: the output guard on a real gunicorn server with the embedded model, greedy decoding.

SmolLM2-135M-Instruct answers "What is the capital of France?" with "The capital of France is Paris."
and "What is the capital of Germany?" with "The capital of Germany is Berlin."; asked to sing
"la la la ...", or for a poem whose every line is "I love you", it loops until ``max_tokens``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from tests.http import non_streamed, stored, stream_events
from tests.metrics import scrape, value
from tests.servers import FRANCE, LiveServer, start_server, stop_server
from tests.sse import lesson_text, openai_chunks, parse_sse

pytestmark = pytest.mark.e2e

FILTERED_FRANCE = "The capital of France is "
SING = {"prompt": "Sing la la la la la la la la la la la la la.", "temperature": 0, "max_tokens": 300}
POEM = "Write a poem where every line is: I love you."


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("guard")
    words = folder / "words.txt"
    words.write_text("# cities the answers must not name\nberlin\n", encoding="utf-8")
    server = start_server(folder, {"LLM_API_OUTPUT_FILTER": "Paris", "LLM_API_OUTPUT_FILTER_WORDS": str(words),
                                   "LLM_API_OUTPUT_FILTER_HOLDBACK": "12"})
    yield server
    stop_server(server)


def test_the_lesson_answer_stops_right_before_the_filtered_word(guarded_server):
    url = guarded_server.url
    events = stream_events(url, FRANCE)
    tokens = [e for e in events if e["event"] is None]
    assert lesson_text(events) == FILTERED_FRANCE and len(tokens) >= 2  # streamed, 12 characters late
    assert events[-1]["event"] == "finish"
    finish = json.loads(events[-1]["data"])
    assert finish["finish_reason"] == "content_filter"
    record = stored(url, finish["message_id"])
    assert (record["response"], record["finish_reason"]) == (FILTERED_FRANCE, "content_filter")

    answer = non_streamed(url, FRANCE)
    assert (answer["response"], answer["finish_reason"]) == (FILTERED_FRANCE, "content_filter")
    assert answer["history"][-1]["content"] == FILTERED_FRANCE
    assert stored(url, answer["message_id"])["response"] == FILTERED_FRANCE


def test_the_word_list_stops_an_openai_answer(guarded_server):
    url = guarded_server.url
    body = {"model": "SmolLM2-135M-Instruct", "temperature": 0, "max_tokens": 40,
            "messages": [{"role": "user", "content": "What is the capital of Germany?"}]}
    response = requests.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    choice = response.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("The capital of Germany is ", "content_filter")
    streamed = requests.post(f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=120)
    assert streamed.status_code == 200, streamed.text
    chunks = openai_chunks(parse_sse(streamed.text))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "The capital of Germany is "
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    record = stored(url, chunks[0]["id"].removeprefix("chatcmpl-"))
    assert (record["response"], record["finish_reason"]) == (text, "content_filter")


def test_a_looping_answer_ends_with_repetition(guarded_server):
    url = guarded_server.url
    events = stream_events(url, SING)
    finish = json.loads(events[-1]["data"])
    assert events[-1]["event"] == "finish" and finish["finish_reason"] == "repetition"
    text = lesson_text(events)
    assert text.endswith(" la" * 14) and text.count("la") < 20
    assert finish["usage"]["completion_tokens"] < 40  # of max_tokens 300
    record = stored(url, finish["message_id"])
    assert (record["response"], record["finish_reason"]) == (text, "repetition")

    body = {"model": "SmolLM2-135M-Instruct", "temperature": 0, "max_tokens": 400,
            "messages": [{"role": "user", "content": POEM}]}
    answer = requests.post(f"{url}/v1/chat/completions", json=body, timeout=300).json()
    assert answer["choices"][0]["finish_reason"] == "repetition"
    assert answer["usage"]["completion_tokens"] < 250
    assert 4 <= answer["choices"][0]["message"]["content"].count("I love you, my love, my love.") <= 7


def test_stops_are_logged_without_the_text_and_counted(guarded_server):
    url = guarded_server.url
    answer = non_streamed(url, FRANCE)
    looped = non_streamed(url, SING)
    assert (answer["finish_reason"], looped["finish_reason"]) == ("content_filter", "repetition")
    deadline = time.monotonic() + 10
    while f"message_id={looped['message_id']}" not in guarded_server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [line for line in guarded_server.log().splitlines() if "output guard stopped" in line]
    mine = [line for line in lines if f"message_id={answer['message_id']}" in line]
    assert len(mine) == 1 and "reason=content_filter rule=LLM_API_OUTPUT_FILTER " in mine[0]
    assert any(f"message_id={looped['message_id']} reason=repetition rule=repetition:10x4" in line for line in lines)
    assert not any("Paris" in line or "matched=" in line for line in lines)  # LLM_API_LOG_PROMPTS is off
    samples = scrape(url)
    assert value(samples, "llm_api_output_guard_stops_total", reason="content_filter") >= 1
    assert value(samples, "llm_api_output_guard_stops_total", reason="repetition") >= 1
    assert value(samples, "llm_api_answers_total", finish_reason="content_filter") >= 1
