"""GET /metrics and the request log on the real gunicorn server (gevent worker, multi-process metrics)."""

from __future__ import annotations

import time

import pytest
import requests

from tests.metrics import scrape, value

pytestmark = pytest.mark.e2e


def test_a_chat_request_shows_in_metrics_and_in_the_request_log(live_server):
    response = requests.post(f"{live_server.url}/chat/new/message", timeout=120, headers={"X-Request-ID": "e2e-m1"},
                             json={"prompt": "Say hello.", "max_tokens": 8, "temperature": 0})
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "e2e-m1"
    samples = scrape(live_server.url)
    assert value(samples, "llm_api_time_to_first_token_seconds_count") >= 1
    assert value(samples, "llm_api_generated_tokens_total") > 0
    assert value(samples, "llm_api_prompt_tokens_total") > 0
    assert value(samples, "llm_api_requests_total", route="/chat/new/message", method="POST", status="200") >= 1
    assert value(samples, "llm_api_model_load_seconds") > 0  # sampled from the engine once it is ready
    assert ("llm_api_queue_depth", ()) in samples and ("llm_api_running_batch_size", ()) in samples

    deadline = time.monotonic() + 10
    while "request_id=e2e-m1" not in live_server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = [line for line in live_server.log().splitlines() if "request_id=e2e-m1" in line]
    assert any(" llm_api.request " in line and " status=200" in line for line in lines), lines
    assert any(" llm_api.exchange " in line for line in lines), lines
    assert "Say hello." not in live_server.log()  # prompts are not logged by default


def test_a_finished_stream_leaves_no_active_stream(live_server):
    body = {"prompt": "Count to three.", "max_tokens": 8, "temperature": 0, "stream": True}
    with requests.post(f"{live_server.url}/chat/new/message", json=body, timeout=120, stream=True) as response:
        assert response.headers["X-Request-ID"]
        text = response.text
    assert "event: finish" in text
    deadline = time.monotonic() + 10
    while value(scrape(live_server.url), "llm_api_active_streams") != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert value(scrape(live_server.url), "llm_api_active_streams") == 0
