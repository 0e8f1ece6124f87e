"""End to end: a real ``gunicorn -k gevent`` worker serving the embedded model over HTTP."""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from tests.http import abort, non_streamed, raw_request, read_until, stored, stream_events
from tests.isolation import home_env
from tests.servers import CACHE_DIR, FRANCE, ROOT, free_port, gunicorn_command, start_server, stop_server
from tests.sse import lesson_text

pytestmark = pytest.mark.e2e


def test_lesson_client_works_unchanged(live_server):
    url = live_server.url
    response = requests.post(f"{url}/chat/new/message/", data=json.dumps({"prompt": "hello", "max_tokens": 1000}))
    assert response.status_code == 200
    answer = response.json()
    assert answer["status"] == 200 and answer["response"] and answer["finish_reason"] in ("stop", "length")
    assert answer["history"][-1] == {"role": "assistant", "content": answer["response"]}
    messages = requests.get(f"{url}/chat/get/messages/").json()["messages"]
    assert any(m["message_id"] == answer["message_id"] and m["response"] == answer["response"] for m in messages)


def test_greedy_answer_streamed_and_not(live_server):
    answer = non_streamed(live_server.url, FRANCE)
    assert "Paris" in answer["response"]
    events = stream_events(live_server.url, FRANCE)
    tokens = [e for e in events if e["event"] is None]
    assert len(tokens) >= 5
    first, last = tokens[0]["at"], tokens[-1]["at"]
    assert last - first > 0.1 and first < last / 2  # spread over time, not one burst at the end
    assert lesson_text(events) == answer["response"]
    assert events[-1]["event"] == "finish"
    finish = json.loads(events[-1]["data"])
    assert finish["finish_reason"] == "stop" and finish["usage"]["completion_tokens"] >= len(tokens)


def test_four_concurrent_streams_with_different_parameters_and_a_fast_healthz(live_server):
    url = live_server.url
    specs = [
        {"prompt": "What is the capital of France?", "temperature": 0, "max_tokens": 40},
        {"prompt": "Write a haiku about the sea.", "temperature": 0, "max_tokens": 40},
        {"prompt": "Tell me a story about a fox.", "temperature": 0.9, "top_p": 0.9, "seed": 99, "max_tokens": 30},
        {"prompt": "Count from one to twenty in words.", "temperature": 0, "max_tokens": 6},
    ]
    expected = [non_streamed(url, spec) for spec in specs]
    with ThreadPoolExecutor(len(specs)) as pool:
        futures = [pool.submit(stream_events, url, spec) for spec in specs]
        probes = []
        while not all(f.done() for f in futures):
            started = time.monotonic()
            assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
            probes.append(time.monotonic() - started)
            time.sleep(0.05)
        results = [f.result() for f in futures]
    for spec, want, events in zip(specs, expected, results, strict=True):
        assert lesson_text(events) == want["response"], spec
        assert json.loads(events[-1]["data"])["finish_reason"] == want["finish_reason"]
    assert json.loads(results[3][-1]["data"])["usage"]["completion_tokens"] == 6
    assert len(probes) >= 5
    assert statistics.median(probes) < 0.05 and sorted(probes)[int(len(probes) * 0.9)] < 0.05, probes


def _nice_by_thread(pid: int) -> dict[int, int]:
    """Each thread of process ``pid`` and its nice value (the 19th field of its /proc stat)."""
    values = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        values[int(task.name)] = int(stat[stat.rindex(")") + 2:].split()[16])
    return values


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_model_threads_run_ten_nice_levels_below_the_http_thread(live_server):
    """LLM_API_ENGINE_NICE, 10 by default: in the worker, the gevent thread keeps the worker's priority, and the
    engine thread and the OpenMP team it started for the model run 10 levels lower."""
    requests.post(f"{live_server.url}/chat/new/message", json={"prompt": "Hi", "max_tokens": 2},
                  timeout=120).raise_for_status()
    worker = psutil.Process(live_server.process.pid).children()[0].pid
    nice = _nice_by_thread(worker)
    lowered = [thread for thread, value in nice.items() if value == min(19, nice[worker] + 10)]
    assert len(lowered) >= 2  # the engine thread and at least one worker of its team (2 cores or more)
    assert worker not in lowered


def test_disconnect_stops_generation_within_five_steps(live_server):
    body = json.dumps({"prompt": "Write a very long story about a dragon and a knight.", "temperature": 0,
                       "max_tokens": 300, "stream": True}).encode()
    sock = raw_request(live_server.url, f"POST /chat/new/message HTTP/1.1\nHost: test\n"
                                        f"Content-Length: {len(body)}\n", body)
    received = read_until(sock, lambda text: text.count("\ndata: ") >= 6)
    abort(sock)
    payloads = [json.loads(line.split("data: ", 1)[1]) for line in received.split("\n")
                if line.startswith("data: ") and line.endswith("}")]
    record = stored(live_server.url, payloads[0]["message_id"])
    assert record["finish_reason"] == "cancelled"
    assert record["usage"]["completion_tokens"] <= len(payloads) + 5  # of 300 allowed
    assert record["response"].startswith("".join(p["text"] for p in payloads))


def test_malformed_chunked_body_is_400_and_oversized_chunked_body_is_413(live_server):
    head = "POST /chat/new/message HTTP/1.1\nHost: test\nTransfer-Encoding: chunked\nConnection: close\n"
    sock = raw_request(live_server.url, head, b'5\r\n{"pro\r\nZZ\r\nbroken')
    sock.shutdown(socket.SHUT_WR)
    reply = read_until(sock, lambda text: False, limit=10)
    sock.close()
    assert reply.startswith("HTTP/1.1 400"), reply[:200]
    assert json.loads(reply.split("\r\n\r\n", 1)[1])["error"]["code"] == "invalid_body"

    payload = json.dumps({"prompt": "x" * 1_100_000}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 65536]), payload[i:i + 65536])
                      for i in range(0, len(payload), 65536)) + b"0\r\n\r\n"
    keep_alive_head = head.replace("Connection: close\n", "")  # the server drains the rest, no reset
    sock = raw_request(live_server.url, keep_alive_head, chunks)
    reply = read_until(sock, lambda text: text.endswith("}\n"), limit=10)
    sock.close()
    assert reply.startswith("HTTP/1.1 413"), reply[:200]
    assert json.loads(reply.split("\r\n\r\n", 1)[1])["error"]["code"] == "payload_too_large"


def test_declared_oversized_body_is_413(live_server):
    response = requests.post(f"{live_server.url}/chat/new/message", timeout=30,
                             data=json.dumps({"prompt": "x" * 1_100_000}))
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_bad_input_never_500(live_server):
    url = live_server.url
    cases = [("POST", "/chat/new/message", "{"), ("POST", "/chat/new/message", '{"prompt": ""}'),
             ("POST", "/chat/new/message", '{"prompt": "a", "max_tokens": 9000}'),
             ("GET", "/chat/get/messages?limit=-1", None), ("GET", "/nope", None), ("DELETE", "/healthz", None)]
    for method, path, body in cases:
        response = requests.request(method, f"{url}{path}", data=body, timeout=30)
        assert 400 <= response.status_code < 500, (path, body, response.status_code)
        assert response.json()["error"]["code"]


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory):
    """One batch slot and one queue slot, fast heartbeats: to see queueing, 503 and heartbeats."""
    server = start_server(tmp_path_factory.mktemp("tight"), {
        "LLM_API_MAX_BATCH": "1", "LLM_API_MAX_QUEUE": "1", "LLM_API_HEARTBEAT_SECONDS": "0.3"})
    yield server
    stop_server(server)


def test_queue_full_gets_503_and_a_waiting_stream_gets_heartbeats_and_can_leave(tight_server):
    url = tight_server.url
    long_body = json.dumps({"prompt": "Write a very long story about a dragon.", "temperature": 0,
                            "max_tokens": 250, "stream": True}).encode()
    head = f"POST /chat/new/message HTTP/1.1\nHost: test\nContent-Length: {len(long_body)}\n"
    running = raw_request(url, head, long_body)
    read_until(running, lambda text: "\ndata: " in text)  # holds the only batch slot
    waiting = raw_request(url, head, long_body)  # takes the only queue slot
    early = read_until(waiting, lambda text: text.count(": ping") >= 2, limit=20)
    assert early.startswith("HTTP/1.1 200") and "\ndata: " not in early and early.count(": ping") >= 2

    refused = requests.post(f"{url}/chat/new/message", data=long_body, timeout=30)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) >= 1

    waiting.close()  # noticed by a heartbeat write: the queued request is cancelled before it runs
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = requests.get(f"{url}/chat/get/messages?limit=10").json()["messages"]
        if records:
            break
        time.sleep(0.1)
    assert len(records) == 1  # the running stream is still going
    assert records[0]["finish_reason"] == "cancelled" and records[0]["usage"]["completion_tokens"] == 0
    running.close()
    assert non_streamed(url, FRANCE)["finish_reason"] == "stop"  # capacity is back


def test_readyz_is_503_until_the_model_is_loaded(tmp_path):
    """Watch a fresh worker start: /healthz answers at once, /readyz says model_not_ready, then ready."""
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", **home_env(), "LLM_API_CACHE_DIR": str(CACHE_DIR),
           "LLM_API_DATA_DIR": str(tmp_path)}
    process = subprocess.Popen(gunicorn_command(port), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    seen = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or importing the app
                time.sleep(0.05)
                continue
            seen.append((ready.status_code, health.status_code))
            if ready.status_code == 503:
                assert ready.json()["error"]["code"] == "model_not_ready" and ready.headers["Retry-After"]
            if ready.status_code == 200:
                break
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(30)
    assert seen[-1] == (200, 200)
    assert (503, 200) in seen, seen


def test_a_server_without_any_api_key_warns_at_start_that_it_is_open(live_server):
    assert "llm_api: warning: no API key exists, so every route is open" in live_server.log()
