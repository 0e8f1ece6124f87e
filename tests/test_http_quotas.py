"""Per-key requests and tokens per minute, concurrent streams, and the request deadline, on a fake engine."""

from __future__ import annotations

import json

import gevent

from llm_api import create_app
from tests.fakes import FakeEngine, wait_until
from tests.http import assert_error, bearer, new_key, post
from tests.sse import parse_sse


def test_requests_per_minute_are_counted_and_the_next_one_is_429(app, client):
    key = new_key(app, rpm=2)
    first = post(client, {"prompt": "hi"}, headers=bearer(key))
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert post(client, {"prompt": "hi"}, headers=bearer(key)).headers["x-ratelimit-remaining-requests"] == "0"
    refused = post(client, {"prompt": "hi"}, headers=bearer(key))
    body = assert_error(refused, 429, "rate_limit_exceeded")
    assert body["details"] == {"limit": "requests"}
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    scraper = new_key(app, "prometheus", ("metrics",))
    assert_error(client.get("/metrics", headers=bearer(key)), 403, "insufficient_scope")
    metrics = client.get("/metrics", headers=bearer(scraper)).get_data(as_text=True)
    assert 'llm_api_rate_limited_total{limit="requests"} 1.0' in metrics


def test_the_headers_come_on_every_answer_of_a_limited_key(app, client):
    key = new_key(app, rpm=5, tpm=500)
    response = client.get("/conversations", headers=bearer(key))
    assert response.headers["x-ratelimit-remaining-requests"] == "5"
    assert response.headers["x-ratelimit-remaining-tokens"] == "500"


def test_a_rate_limited_openai_request_gets_openais_error_type(app, client):
    key = new_key(app, rpm=1)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    assert client.post("/v1/chat/completions", json=body, headers=bearer(key)).status_code == 200
    refused = client.post("/v1/chat/completions", json=body, headers=bearer(key))
    assert refused.status_code == 429
    assert refused.get_json()["error"]["type"] == "rate_limit_error"


def test_tokens_are_reserved_at_admission_and_the_unused_part_is_given_back(app, client, fake_engine):
    key = new_key(app, tpm=100)
    answer = post(client, {"prompt": "hi", "max_tokens": 40}, headers=bearer(key))
    assert answer.status_code == 200
    used = answer.get_json()["usage"]["total_tokens"]
    assert used < 40  # the fake model stops after 5 tokens
    assert answer.headers["x-ratelimit-remaining-tokens"] == str(100 - used)


def test_a_request_that_does_not_fit_the_remaining_tokens_is_429_and_counts_nothing(app, client):
    key = new_key(app, tpm=60, rpm=10)
    refused = post(client, {"prompt": "hi", "max_tokens": 60}, headers=bearer(key))
    body = assert_error(refused, 429, "rate_limit_exceeded")
    assert body["details"] == {"limit": "tokens"}
    assert "lower max_tokens" in body["message"]
    assert refused.headers["x-ratelimit-remaining-tokens"] == "60"
    assert refused.headers["x-ratelimit-remaining-requests"] == "10"  # the refused request was given back


def test_a_held_reservation_makes_the_next_request_wait(client, settings):
    engine = FakeEngine(delay=0.05, reply="a b c d e f g h", context_length=64)
    app = create_app(settings, engine=engine)
    client = app.test_client()
    key = new_key(app, tpm=50)
    running = gevent.spawn(lambda: post(client, {"prompt": "hi", "max_tokens": 30, "stream": True},
                                        headers=bearer(key)).get_data())
    assert wait_until(lambda: engine.handles)
    refused = post(client, {"prompt": "hi", "max_tokens": 30}, headers=bearer(key))
    assert_error(refused, 429, "rate_limit_exceeded")
    running.get(timeout=10)
    assert post(client, {"prompt": "hi", "max_tokens": 30}, headers=bearer(key)).status_code == 200


def test_concurrent_streams_per_key_are_capped(settings):
    engine = FakeEngine(delay=0.05, reply="a b c d e f g h", context_length=64)
    app = create_app(settings, engine=engine)
    client = app.test_client()
    key, other = new_key(app, max_streams=1), new_key(app, "team-b", max_streams=1)
    running = gevent.spawn(lambda: post(client, {"prompt": "hi", "stream": True}, headers=bearer(key)).get_data())
    assert wait_until(lambda: engine.handles)
    body = assert_error(post(client, {"prompt": "hi"}, headers=bearer(key)), 429, "rate_limit_exceeded")
    assert body["details"] == {"limit": "streams"}
    assert post(client, {"prompt": "hi"}, headers=bearer(other)).status_code == 200  # its own cap
    running.get(timeout=10)
    assert post(client, {"prompt": "hi"}, headers=bearer(key)).status_code == 200  # the slot came back


def test_a_refused_engine_gives_the_whole_reservation_back(app, client, fake_engine):
    key = new_key(app, tpm=100, rpm=2, max_streams=1)
    fake_engine.queue_full = True
    refused = post(client, {"prompt": "hi", "max_tokens": 40}, headers=bearer(key))
    assert refused.status_code == 503
    assert refused.headers["x-ratelimit-remaining-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "100"
    fake_engine.queue_full = False
    answer = post(client, {"prompt": "hi", "max_tokens": 40}, headers=bearer(key))
    assert answer.status_code == 200
    assert answer.headers["x-ratelimit-remaining-requests"] == "1"
    assert answer.headers["x-ratelimit-remaining-tokens"] == str(100 - answer.get_json()["usage"]["total_tokens"])


def test_a_refund_never_takes_a_window_below_zero():
    from limits import RateLimitItemPerMinute

    from llm_api.quota.backend import QuotaBackend

    backend, item = QuotaBackend(), RateLimitItemPerMinute(100)
    assert backend.take(item, "k", 30)
    backend.give_back(item, "k", 80)  # e.g. the charge was in a window that has ended since
    assert backend.window(item, "k")[0] == 100
    assert backend.take(item, "k", 100) and not backend.take(item, "k", 1)


def test_a_generation_past_the_request_timeout_ends_with_timeout_and_keeps_its_text(settings):
    words = " ".join(f"w{n}" for n in range(19)) + " ten"
    engine = FakeEngine(delay=0.1, reply=words, context_length=64)
    app = create_app(settings.__class__(**{**settings.__dict__, "request_timeout": 0.6}), engine=engine)
    client = app.test_client()
    answer = post(client, {"prompt": "hi", "max_tokens": 20}).get_json()
    assert answer["finish_reason"] == "timeout"
    assert 0 < answer["usage"]["completion_tokens"] < 20
    assert answer["response"] and "ten" not in answer["response"]
    stream = post(client, {"prompt": "hi", "max_tokens": 20, "stream": True}).get_data(as_text=True)
    finish = [e for e in parse_sse(stream) if e["event"] == "finish"][0]
    assert json.loads(finish["data"])["finish_reason"] == "timeout"
    stored = client.get("/chat/get/messages").get_json()["messages"]
    assert [m["finish_reason"] for m in stored] == ["timeout", "timeout"]
