"""Quotas shared by workers through a real Redis server, failing open while it is gone.

``redis-server`` comes from Debian's package (``.ci/run`` installs it); each test
starts its own on a free port. Without it the tests skip locally and fail in CI.
"""

from __future__ import annotations

import time

import pytest

from llm_api import create_app
from tests.http import assert_error, bearer, new_key, post


@pytest.fixture
def worker_apps(fake_engine, settings, redis_server):
    """Two apps on one database and one Redis: two workers of one service."""
    shared = settings.__class__(**{**settings.__dict__, "redis_url": redis_server.url})
    return [create_app(shared, engine=fake_engine) for _ in range(2)]


def test_limits_hold_across_workers(worker_apps):
    key = new_key(worker_apps[0], rpm=3, tpm=200)
    clients = [w.test_client() for w in worker_apps]
    for n in range(3):
        assert post(clients[n % 2], {"prompt": "hi", "max_tokens": 10}, headers=bearer(key)).status_code == 200
    refused = post(clients[1], {"prompt": "hi", "max_tokens": 10}, headers=bearer(key))
    assert_error(refused, 429, "rate_limit_exceeded")
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    used = int(clients[0].get("/conversations", headers=bearer(key)).headers["x-ratelimit-remaining-tokens"])
    assert 200 - 3 * 15 < used < 200  # three answers' real usage, not three 10-token reservations + prompts


def test_stream_slots_are_shared_across_workers(worker_apps):
    key = new_key(worker_apps[0], max_streams=1)
    quotas = [w.extensions["llm_api"].quotas for w in worker_apps]
    record = worker_apps[0].extensions["llm_api"].keys.store.list()[0]
    held = quotas[0].admit(record, 1)
    body = assert_error(post(worker_apps[1].test_client(), {"prompt": "hi"}, headers=bearer(key)), 429,
                        "rate_limit_exceeded")
    assert body["details"] == {"limit": "streams"}
    held.release(1)
    assert post(worker_apps[1].test_client(), {"prompt": "hi"}, headers=bearer(key)).status_code == 200


def test_without_redis_the_service_keeps_serving_and_counts_again_when_it_returns(worker_apps, redis_server):
    key = new_key(worker_apps[0], rpm=2)
    client = worker_apps[0].test_client()
    assert post(client, {"prompt": "hi"}, headers=bearer(key)).status_code == 200

    redis_server.stop()
    for _ in range(4):  # over the limit, but the counters are gone: fail open
        answer = post(client, {"prompt": "hi"}, headers=bearer(key))
        assert answer.status_code == 200
        assert "x-ratelimit-remaining-requests" not in answer.headers

    redis_server.start()  # a fresh, empty server on the same port
    time.sleep(2.1)  # the backend waits a moment before trying Redis again
    assert post(client, {"prompt": "hi"}, headers=bearer(key)).status_code == 200
    assert post(client, {"prompt": "hi"}, headers=bearer(key)).status_code == 200
    assert_error(post(client, {"prompt": "hi"}, headers=bearer(key)), 429, "rate_limit_exceeded")


def test_a_dead_redis_costs_no_waiting(worker_apps, redis_server):
    key = new_key(worker_apps[0], rpm=100, tpm=10_000, max_streams=5)
    client = worker_apps[0].test_client()
    redis_server.stop()
    started = time.monotonic()
    for _ in range(10):
        assert post(client, {"prompt": "hi"}, headers=bearer(key)).status_code == 200
    assert time.monotonic() - started < 5
