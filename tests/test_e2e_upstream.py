"""End to end: an llm_api server whose engine is an upstream llm_api server (both real gunicorn servers):
the upstream's models read once at start (not per request), answers passed through token by token, a forced
tool call relayed, cancellation carried upstream, and an upstream that dies mid-stream, the static degraded
answer, the breaker opening, and recovery once the upstream is back."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.http import non_streamed, stream_events
from tests.servers import FRANCE, LiveServer, free_port, kill_server, start_server, stop_server
from tests.sse import lesson_text

MODEL = "SmolLM2-135M-Instruct"  # the name `model` must say

pytestmark = pytest.mark.e2e

DEGRADED = "The assistant is busy right now; please try again in a minute."
LONG = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story about a fox."}],
        "temperature": 0, "max_tokens": 1500, "ignore_eos": True, "stream": True}


@pytest.fixture(scope="module")
def upstream_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, upstream_port):
    server = start_server(tmp_path_factory.mktemp("upstream"), port=upstream_port)
    yield server
    if server.process.poll() is None:
        stop_server(server)


@pytest.fixture(scope="module")
def front(tmp_path_factory, upstream, upstream_port):
    server = start_server(tmp_path_factory.mktemp("front"), {
        "LLM_API_ENGINES": f"remote=openai+http://127.0.0.1:{upstream_port}/v1",
        "LLM_API_DEGRADED_ANSWER": DEGRADED, "LLM_API_BREAKER_FAILURES": "2", "LLM_API_BREAKER_WINDOW": "60",
        "LLM_API_BREAKER_COOLDOWN": "3", "LLM_API_UPSTREAM_TIMEOUT": "5"})
    yield server
    stop_server(server)


def data_texts(events) -> list[str]:
    return [json.loads(e["data"])["text"] for e in events if e["event"] is None]


def newest_stored(url: str) -> dict:
    return requests.get(f"{url}/chat/get/messages?limit=1", timeout=10).json()["messages"][-1]


def models_asked(server: LiveServer) -> int:
    """``GET /v1/models`` requests that ``server`` answered (its request log)."""
    return server.log().count("method=GET path=/v1/models ")


def test_the_upstream_is_asked_for_its_models_when_the_front_starts_and_not_per_request(upstream, front):
    deadline = time.monotonic() + 30
    while models_asked(upstream) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert models_asked(upstream) == 1  # the front's worker, as it started
    for i in range(50):
        if i % 10 == 0:
            response = requests.post(f"{front.url}/chat/new/message", timeout=120,
                                     data=json.dumps({"prompt": "Hi", "max_tokens": 4, "temperature": 0}))
            assert response.json()["engine"] == "remote"
        else:
            response = requests.get(front.url + ("/healthz", "/readyz", "/v1/models")[i % 3], timeout=10)
        assert response.status_code == 200, response.text
    assert models_asked(upstream) == 1


def test_answers_pass_through_token_by_token(upstream, front):
    direct = non_streamed(upstream.url, FRANCE)
    response = requests.post(f"{front.url}/chat/new/message", data=json.dumps(FRANCE), timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["X-LLM-API-Engine"] == "remote" and "X-LLM-API-Degraded" not in response.headers
    answer = response.json()
    assert answer["response"] == direct["response"] and "Paris" in answer["response"]
    assert answer["engine"] == "remote" and answer["degraded"] is False
    assert answer["usage"] == direct["usage"]  # the upstream's own count is what the front reports

    upstream_events, front_events = stream_events(upstream.url, FRANCE), stream_events(front.url, FRANCE)
    assert data_texts(front_events) == data_texts(upstream_events)  # the same pieces, one event each
    assert lesson_text(front_events) == direct["response"]
    finish = json.loads(front_events[-1]["data"])
    assert front_events[-1]["event"] == "finish" and finish["engine"] == "remote" and not finish["degraded"]

    body = {"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0, "max_tokens": 40}
    via_front = requests.post(f"{front.url}/v1/chat/completions", json=body, timeout=120).json()
    assert via_front["choices"][0]["message"]["content"] == direct["response"]
    assert via_front["model"] == "SmolLM2-135M-Instruct" and via_front["system_fingerprint"] == "remote"
    models = requests.get(f"{front.url}/v1/models", timeout=10).json()["data"][0]
    assert models["id"] == "SmolLM2-135M-Instruct" and models["context_length"] == 8192  # learnt upstream


def test_sampling_fields_and_logprobs_reach_the_upstream_unchanged(upstream, front):
    """Sampled with a seed, the answer through the front is the upstream's own only if every knob arrived."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Name three fruits."}], "temperature": 1.0,
            "top_p": 0.95, "seed": 11, "max_tokens": 12, "top_k": 8, "min_p": 0.05, "repetition_penalty": 1.3,
            "presence_penalty": 0.5, "frequency_penalty": 0.5, "logit_bias": {"28": -5}, "logprobs": True,
            "top_logprobs": 2, "n": 2}
    direct = requests.post(f"{upstream.url}/v1/chat/completions", json=body, timeout=120).json()
    via_front = requests.post(f"{front.url}/v1/chat/completions", json=body, timeout=120).json()
    assert via_front["system_fingerprint"] == "remote"
    assert [c["message"] for c in via_front["choices"]] == [c["message"] for c in direct["choices"]]
    def entries(answer):
        return [[(e["token"], e["bytes"], [t["token"] for t in e["top_logprobs"]]) for e in c["logprobs"]["content"]]
                for c in answer["choices"]]

    def logprobs(answer):
        return [e["logprob"] for c in answer["choices"] for e in c["logprobs"]["content"]]

    assert entries(via_front) == entries(direct) and entries(direct)[0]
    # the numbers may differ in the last digits: two batches of one row, or one batch of two
    assert logprobs(via_front) == pytest.approx(logprobs(direct), abs=1e-3)
    without_top_k = requests.post(f"{front.url}/v1/chat/completions", json={**body, "top_k": 0}, timeout=120).json()
    assert [c["message"] for c in without_top_k["choices"]] != [c["message"] for c in direct["choices"]]
    streamed = requests.post(f"{front.url}/v1/completions", timeout=120, json={
        "model": MODEL, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "logprobs": 1,
        "stream": True}).text
    assert '"token_logprobs": [' in streamed.replace('":[', '": [') and "text_offset" in streamed


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_a_forced_tool_call_is_relayed_from_the_upstream(upstream, front):
    """The upstream constrains and parses the call; the front relays it, whole and streamed."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "temperature": 0, "max_tokens": 40}
    direct = requests.post(f"{upstream.url}/v1/chat/completions", json=body, timeout=120).json()["choices"][0]
    via_front = requests.post(f"{front.url}/v1/chat/completions", json=body, timeout=120).json()["choices"][0]
    assert via_front["finish_reason"] == direct["finish_reason"] == "tool_calls"
    [call] = via_front["message"]["tool_calls"]
    assert call["function"] == direct["message"]["tool_calls"][0]["function"]
    assert call["function"]["name"] == "get_weather" and isinstance(json.loads(call["function"]["arguments"]), dict)

    text = requests.post(f"{front.url}/v1/chat/completions", json={**body, "stream": True}, timeout=120).text
    chunks = [json.loads(line[len("data: "):]) for line in text.splitlines()
              if line.startswith("data: {")]
    pieces = [p for c in chunks for choice in c["choices"] for p in choice["delta"].get("tool_calls", ())]
    assert pieces[0]["function"]["name"] == "get_weather" and pieces[0]["id"].startswith("call_")
    assert "".join(p["function"]["arguments"] for p in pieces) == call["function"]["arguments"]
    assert [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]] == ["tool_calls"]


def test_a_client_leaving_cancels_the_upstream_generation(upstream, front):
    with requests.post(f"{front.url}/v1/chat/completions", json=LONG, stream=True, timeout=120) as response:
        assert response.status_code == 200
        chunks = 0
        for line in response.iter_lines():
            if line.startswith(b"data: {") and b'"content":"' in line:
                chunks += 1
                if chunks >= 5:
                    break
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stored = newest_stored(upstream.url)
        if stored["prompt"] == LONG["messages"][0]["content"] and stored["finish_reason"]:
            break
        time.sleep(0.2)
    assert stored["finish_reason"] == "cancelled", stored
    assert 5 <= stored["usage"]["completion_tokens"] < 1500


def test_an_upstream_that_dies_mid_stream_then_fallback_breaker_and_recovery(upstream, front, upstream_port,
                                                                              tmp_path_factory):
    seen = 0
    with requests.post(f"{front.url}/chat/new/message", stream=True, timeout=120, data=json.dumps(
            {"prompt": "Tell me a long story about a fox.", "max_tokens": 1500, "temperature": 0,
             "stream": True})) as response:
        lines = response.iter_lines(decode_unicode=True)
        for line in lines:
            if line.startswith("data: ") and '"text"' in line:
                seen += 1
                if seen == 5:
                    kill_server(upstream)  # an upstream that dies, with no goodbye
            if line.startswith("event: "):
                event = line
                break
        data = next(line for line in lines if line.startswith("data: "))
    assert event == "event: error" and seen >= 5  # no fallback once tokens were sent
    assert json.loads(data[len("data: "):])["error"]["code"] == "generation_failed"

    started = time.monotonic()
    response = requests.post(f"{front.url}/chat/new/message", data=json.dumps(FRANCE), timeout=30)
    assert response.status_code == 200 and response.json()["response"] == DEGRADED
    assert response.headers["X-LLM-API-Engine"] == "static" and response.headers["X-LLM-API-Degraded"] == "1"
    assert response.json()["engine"] == "static" and response.json()["degraded"] is True
    metrics = requests.get(f"{front.url}/metrics", timeout=10).text
    assert 'llm_api_circuit_state{engine="remote"} 2.0' in metrics  # two failures: open
    assert 'llm_api_degraded_answers_total{engine="static"} 1.0' in metrics
    events = stream_events(front.url, FRANCE)  # rejected fast while open: the static answer, streamed
    assert lesson_text(events) == DEGRADED and json.loads(events[-1]["data"])["engine"] == "static"

    restarted = start_server(tmp_path_factory.mktemp("upstream-again"), port=upstream_port)
    try:
        assert time.monotonic() - started > 3  # the cool-down is over: the next request is the probe
        answer = non_streamed(front.url, FRANCE)
        assert answer["engine"] == "remote" and answer["degraded"] is False and "Paris" in answer["response"]
        metrics = requests.get(f"{front.url}/metrics", timeout=10).text
        assert 'llm_api_circuit_state{engine="remote"} 0.0' in metrics
    finally:
        stop_server(restarted)
