"""The engine router: fallbacks on each trigger, the circuit breaker, the static degraded answer and how a
degraded answer is marked, over the HTTP layer with fault-injecting engines; and LLM_API_ENGINES."""

from __future__ import annotations

import json

import pytest

from llm_api import create_app
from llm_api.config import ConfigError, Settings
from llm_api.routing import EngineRouter, UpstreamEngine, build_router
from llm_api.routing.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from tests.fakes import FakeEngine
from tests.fault_engine import FaultyEngine
from tests.sse import parse_sse

STATIC = "The service is degraded; please retry later."


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chain(*modes: str, degraded_answer: str = "", first_token_timeout: float = 0.0, failures: int = 2,
          clock: Clock | None = None, **fake) -> tuple[EngineRouter, list[FaultyEngine]]:
    engines = [FaultyEngine(FakeEngine(reply=f"Answer from engine {i}.", **fake), model_name=f"model-{i}", mode=mode)
               for i, mode in enumerate(modes)]
    router = EngineRouter([(f"e{i}", engine) for i, engine in enumerate(engines)],
                          first_token_timeout=first_token_timeout, degraded_answer=degraded_answer,
                          breaker_failures=failures, breaker_window=60.0, breaker_cooldown=30.0,
                          now=clock or Clock())
    return router, engines


def client_for(settings: Settings, router: EngineRouter):
    app = create_app(settings, engine=router)
    app.config["TESTING"] = True
    return app.test_client()


def ask(client, **body):
    return client.post("/chat/new/message", data=json.dumps({"prompt": "hi", "max_tokens": 8, **body}))


def streamed(client, **body):
    response = ask(client, stream=True, **body)
    return response, [e for e in parse_sse(response.get_data(as_text=True)) if e["data"] is not None]


# ---- the breaker -----------------------------------------------------------------------------------------
def test_breaker_opens_after_n_failures_in_the_window_then_probes_once_and_closes():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, window=10.0, cooldown=5.0, now=clock)
    ticket = breaker.allow()
    breaker.failure(ticket)
    clock.now += 11  # that failure leaves the window
    for _ in range(2):
        breaker.failure(breaker.allow())
    assert breaker.state == CLOSED
    breaker.failure(breaker.allow())
    assert breaker.state == OPEN and breaker.allow() is None  # rejects fast
    clock.now += 4.9
    assert breaker.allow() is None
    clock.now += 0.2
    assert breaker.state == HALF_OPEN
    probe = breaker.allow()
    assert probe is not None and probe.probe
    assert breaker.allow() is None  # exactly one probe
    breaker.release(probe)  # its client left before an outcome: the slot frees
    probe = breaker.allow()
    assert probe is not None and breaker.allow() is None
    breaker.success(probe)
    assert breaker.state == CLOSED and breaker.allow() is not None


def test_a_failed_probe_reopens_the_circuit_for_another_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(failures=1, window=10.0, cooldown=5.0, now=clock)
    straggler = breaker.allow()
    breaker.failure(breaker.allow())
    assert breaker.state == OPEN
    breaker.failure(straggler)  # let through before the opening: changes nothing
    clock.now += 5
    breaker.failure(breaker.allow())
    assert breaker.state == OPEN
    clock.now += 4.9
    assert breaker.state == OPEN
    clock.now += 0.1
    breaker.success(breaker.allow())
    assert breaker.state == CLOSED


# ---- fallback triggers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["raise", "overload", "error"])
def test_the_primary_failing_before_its_first_token_falls_back(settings, mode):
    router, engines = chain(mode, "ok")
    client = client_for(settings, router)
    response = ask(client)
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert answer["response"] == "Answer from engine 1."
    assert answer["engine"] == "e1" and answer["degraded"] is True
    assert response.headers["X-LLM-API-Engine"] == "e1" and response.headers["X-LLM-API-Degraded"] == "1"
    assert engines[0].submits == 1 and engines[1].submits == 1
    stored = client.get("/chat/get/messages").get_json()["messages"][-1]
    assert stored["model"] == "model-1" and stored["response"] == "Answer from engine 1."
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'llm_api_degraded_answers_total{engine="e1"} 1.0' in metrics


def test_a_stalled_primary_is_cancelled_after_the_first_token_timeout(settings):
    router, engines = chain("stall", "ok", first_token_timeout=0.2)
    client = client_for(settings, router)
    response, events = streamed(client)
    assert response.headers["X-LLM-API-Engine"] == "e0"  # the stream opened on the primary
    assert "X-LLM-API-Degraded" not in response.headers
    finish = json.loads(events[-1]["data"])
    assert events[-1]["event"] == "finish" and finish["engine"] == "e1" and finish["degraded"] is True
    assert "".join(json.loads(e["data"])["text"] for e in events[:-1]) == "Answer from engine 1."
    assert engines[0].stalled[0].cancelled  # the stalled request was cancelled on the primary


def test_an_open_circuit_skips_the_primary_without_trying_it(settings):
    clock = Clock()
    router, engines = chain("raise", "ok", failures=2, clock=clock)
    client = client_for(settings, router)
    for _ in range(2):
        assert ask(client).get_json()["engine"] == "e1"
    assert router.circuits == {"e0": OPEN, "e1": CLOSED}
    assert 'llm_api_circuit_state{engine="e0"} 2.0' in client.get("/metrics").get_data(as_text=True)
    assert ask(client).get_json()["engine"] == "e1"
    assert engines[0].submits == 2  # rejected fast: not tried while open

    engines[0].mode = "ok"  # the primary recovers
    clock.now += 29
    assert ask(client).get_json()["engine"] == "e1"
    clock.now += 1  # the cool-down is over: one probe goes to the primary, and closes the circuit
    answer = ask(client).get_json()
    assert answer["engine"] == "e0" and answer["degraded"] is False and engines[0].submits == 3
    assert router.circuits["e0"] == CLOSED
    assert ask(client).get_json()["engine"] == "e0"


def test_a_failing_probe_keeps_the_circuit_open(settings):
    clock = Clock()
    router, engines = chain("raise", "ok", failures=1, clock=clock)
    client = client_for(settings, router)
    ask(client)
    clock.now += 30
    assert ask(client).get_json()["engine"] == "e1" and engines[0].submits == 2  # the probe, failed
    assert router.circuits["e0"] == OPEN
    assert ask(client).get_json()["engine"] == "e1" and engines[0].submits == 2


def test_the_static_degraded_answer_is_the_last_resort(settings):
    router, engines = chain("raise", "overload", degraded_answer=STATIC)
    client = client_for(settings, router)
    response = ask(client)
    answer = response.get_json()
    assert response.status_code == 200 and answer["response"] == STATIC
    assert answer["engine"] == "static" and answer["degraded"] is True and answer["finish_reason"] == "stop"
    assert response.headers["X-LLM-API-Engine"] == "static" and response.headers["X-LLM-API-Degraded"] == "1"
    response, events = streamed(client)
    assert json.loads(events[0]["data"])["text"] == STATIC
    assert json.loads(events[-1]["data"])["engine"] == "static"
    completion = client.post("/v1/chat/completions", data=json.dumps(
        {"model": "model-0", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})).get_json()
    assert completion["choices"][0]["message"]["content"] == STATIC
    assert completion["model"] == "static" and completion["system_fingerprint"] == "static"


def test_without_a_last_resort_the_primary_error_is_the_answer(settings):
    router, _ = chain("overload", "raise")
    client = client_for(settings, router)
    response = ask(client)
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "queue_full"
    assert client.get("/chat/get/messages").get_json()["messages"] == []  # nothing stored
    router, _ = chain("raise", "overload")
    response = client_for(settings, router).post("/v1/chat/completions", data=json.dumps(
        {"model": "model-0", "messages": [{"role": "user", "content": "hi"}]}))
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "engine_unavailable"


def test_no_fallback_after_the_first_token(settings):
    router, engines = chain("ok", "ok", degraded_answer=STATIC, delay=0.01, fail_after=2)
    client = client_for(settings, router)
    response, events = streamed(client)
    assert [json.loads(e["data"])["text"] for e in events[:-1]] == ["Answer", " from"]
    assert events[-1]["event"] == "error"
    assert json.loads(events[-1]["data"])["error"]["code"] == "generation_failed"
    assert engines[1].submits == 0
    stored = client.get("/chat/get/messages").get_json()["messages"][-1]
    assert stored["finish_reason"] == "error" and stored["response"] == "Answer from"
    assert router.circuits["e0"] == CLOSED
    streamed(client)  # a second engine death mid-answer: two failures open the circuit
    assert router.circuits["e0"] == OPEN


def test_a_context_length_error_is_the_callers_not_a_fallback(settings):
    router, engines = chain("ok", "ok", degraded_answer=STATIC)
    client = client_for(settings, router)
    response = ask(client, max_tokens=1000)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "context_length_exceeded"
    assert engines[1].submits == 0 and router.circuits["e0"] == CLOSED


def test_openai_answers_name_the_model_and_engine_that_answered(settings):
    router, _ = chain("raise", "ok")
    client = client_for(settings, router)
    body = {"model": "model-0", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    response = client.post("/v1/chat/completions", data=json.dumps(body))
    completion = response.get_json()
    assert completion["model"] == "model-1" and completion["system_fingerprint"] == "e1"
    assert response.headers["X-LLM-API-Degraded"] == "1"
    response = client.post("/v1/chat/completions", data=json.dumps({**body, "stream": True}))
    chunks = [json.loads(e["data"]) for e in parse_sse(response.get_data(as_text=True))
              if e["data"] not in (None, "[DONE]")]
    assert {c["system_fingerprint"] for c in chunks} == {"e1"} and {c["model"] for c in chunks} == {"model-1"}
    text = client.post("/v1/completions", data=json.dumps({"model": "model-0", "prompt": "hi", "max_tokens": 8}))
    assert text.get_json()["system_fingerprint"] == "e1" and text.headers["X-LLM-API-Engine"] == "e1"


def test_the_default_chain_is_one_engine_named_main_and_never_degraded(client, fake_engine):
    response = ask(client)
    assert response.get_json()["engine"] == "main" and response.get_json()["degraded"] is False
    assert response.headers["X-LLM-API-Engine"] == "main" and "X-LLM-API-Degraded" not in response.headers
    fake_engine.queue_full = True
    assert ask(client).get_json()["error"]["code"] == "queue_full"  # no breaker, no fallback


# ---- configuration -----------------------------------------------------------------------------------------
def test_engines_are_parsed_with_their_keys_and_models(tmp_path):
    settings = Settings.from_env({
        "LLM_API_ENGINES": f"a=openai+https://gpu1.example:8000/v1/, b=openai+http://10.0.0.5:8000/v1,c={tmp_path}",
        "LLM_API_ENGINE_A_API_KEY": "secret", "LLM_API_ENGINE_B_MODEL": "meta/llama",
        "LLM_API_FIRST_TOKEN_TIMEOUT": "2.5", "LLM_API_DEGRADED_ANSWER": " Busy. "})
    a, b, c = settings.engine_chain
    assert (a.kind, a.source, a.api_key, a.model) == ("upstream", "https://gpu1.example:8000/v1", "secret", "")
    assert (b.source, b.api_key, b.model) == ("http://10.0.0.5:8000/v1", "", "meta/llama")
    assert (c.kind, c.source) == ("local", str(tmp_path)) and settings.local_model == str(tmp_path)
    assert settings.first_token_timeout == 2.5 and settings.degraded_answer == "Busy."
    router = build_router(settings, FakeEngine())
    assert [type(m.engine) for m in router.members][:2] == [UpstreamEngine, UpstreamEngine]
    assert router.members[0].engine.estimator is router.members[2].engine
    assert Settings.from_env({"LLM_API_ENGINES": "r=openai+http://h:1/v1"}).local_model is None
    default = Settings.from_env({})
    assert [(t.name, t.kind) for t in default.engine_chain] == [("main", "local")]


@pytest.mark.parametrize(("raw", "expected"), [
    ("remote", "must be a comma-separated list of NAME=TARGET"),
    ("Remote=embedded", "must be a comma-separated list of NAME=TARGET"),
    ("a=embedded,a=openai+http://h:1/v1", "'a' is given twice"),
    ("static=embedded", "reserved for the static degraded answer"),
    ("a=embedded,b=embedded", "at most one local engine"),
    ("a=openai+http://:80/v1", "must be openai+http(s)://HOST:PORT/v1"),
    ("a=openai+http://h:99999/v1", "must be openai+http(s)://HOST:PORT/v1"),
    ("a=/no/such/folder", "LLM_API_ENGINES (engine 'a') must be `embedded` or an existing local model folder"),
    (" , ", "must be a comma-separated list of NAME=TARGET"),
])
def test_bad_engine_lists_are_refused_with_one_line(raw, expected):
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"LLM_API_ENGINES": raw})
    assert expected in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("variable", ["LLM_API_FIRST_TOKEN_TIMEOUT", "LLM_API_BREAKER_FAILURES",
                                      "LLM_API_BREAKER_WINDOW", "LLM_API_BREAKER_COOLDOWN",
                                      "LLM_API_UPSTREAM_TIMEOUT", "LLM_API_UPSTREAM_CONTEXT_LENGTH"])
def test_bad_fallback_numbers_are_refused(variable):
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: "-1"})


def test_the_local_engine_takes_its_options_from_the_settings():
    """Every engine setting reaches the engine it builds (the engine is built, not started: nothing loads)."""
    settings = Settings.from_env({"LLM_API_MAX_BATCH": "5", "LLM_API_PREFILL_CHUNK": "32", "LLM_API_ENGINE_NICE": "3",
                                  "LLM_API_PREFIX_CACHE_TOKENS": "100", "LLM_API_DECODE_GRAPHS": "eager"})
    options = build_router(settings).members[0].engine.options
    assert (options.max_batch, options.prefill_chunk, options.nice, options.prefix_cache_tokens,
            options.decode_graphs) == (5, 32, 3, 100, "eager")
