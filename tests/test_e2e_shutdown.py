"""End to end: SIGTERM to a real gunicorn master serving the embedded model drains the worker.

New requests get 503 ``shutting_down`` at once, a short stream finishes, long streams end with an
``error`` event ``shutting_down`` shortly before the graceful timeout, the server exits within it,
and every message, both users' turns and every answer, is in the database afterwards."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from llm_api.storage import open_store
from tests.servers import start_server
from tests.sse import iter_sse, lesson_text, openai_payloads, text_chunks

pytestmark = pytest.mark.e2e

# Greedy, this prompt runs to 2,000 tokens on the embedded model: far past the graceful timeout.
LONG_PROMPT = "Write a very long story about a dragon and a knight, in many chapters."
GRACEFUL_TIMEOUT = 8  # running answers are interrupted 2.7 s before it (llm_api.shutdown.drain_plan)


class StreamReader:
    """Reads one streamed answer in a thread; ``started`` is set once ``ready_after`` data events arrived."""

    def __init__(self, url: str, body: dict, ready_after: int) -> None:
        self.url, self.body, self.ready_after = url, body, ready_after
        self.started = threading.Event()
        self.events: list[dict] = []

    def __call__(self) -> list[dict]:
        try:
            with requests.post(self.url, data=json.dumps(self.body), stream=True, timeout=60) as response:
                assert response.status_code == 200, response.text
                for event in iter_sse(text_chunks(response)):
                    if event["data"] is not None:
                        self.events.append(event)
                    if len(self.events) >= self.ready_after:
                        self.started.set()
            return self.events
        finally:
            self.started.set()


def test_sigterm_drains_the_worker_and_no_message_is_lost(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'shutdown.sqlite3'}"
    server = start_server(tmp_path, {"LLM_API_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT), "LLM_API_DATABASE_URL": db_url,
                                     "LLM_API_DEVICE": "cpu", "LLM_API_TORCH_THREADS": "1",  # steady steps
                                     # the long answer must run until the drain interrupts it, even on a fast
                                     # CPU where it would reach its loop (near token 330) and the repetition stop
                                     "LLM_API_REPETITION_MAX": "0"})
    url = server.url
    long_prompt = LONG_PROMPT
    short_prompt = "Count from one to twenty in words."
    refused_prompt = "This request arrives too late."
    long_lesson = StreamReader(f"{url}/chat/new/message", {"prompt": long_prompt, "temperature": 0,
                                                           "max_tokens": 2000, "stream": True}, ready_after=3)
    long_openai = StreamReader(f"{url}/v1/chat/completions", {
        "model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": long_prompt}], "temperature": 0,
        "max_tokens": 2000, "ignore_eos": True, "stream": True}, ready_after=3)
    short = StreamReader(f"{url}/chat/new/message", {"prompt": short_prompt, "temperature": 0, "max_tokens": 8,
                                                     "stream": True}, ready_after=1)
    try:
        with ThreadPoolExecutor(3) as pool:
            long_futures = [pool.submit(long_lesson), pool.submit(long_openai)]
            assert long_lesson.started.wait(60) and long_openai.started.wait(60)
            short_future = pool.submit(short)
            assert short.started.wait(60)
            server.process.send_signal(signal.SIGTERM)  # at its first event: the short answer is still running
            signalled = time.monotonic()
            time.sleep(0.2)  # the signal reaches the master, which passes it on to the worker
            ready = requests.get(f"{url}/readyz", timeout=5)  # each call opens a fresh connection
            assert ready.status_code == 503 and ready.json()["error"]["code"] == "shutting_down"
            refused = requests.post(f"{url}/chat/new/message", data=json.dumps({"prompt": refused_prompt}), timeout=5)
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "shutting_down"
            assert requests.get(f"{url}/healthz", timeout=5).status_code == 200

            short_events = short_future.result(timeout=30)
            lesson_events, openai_events = (f.result(timeout=30) for f in long_futures)
            streams_ended = time.monotonic() - signalled
        server.process.wait(GRACEFUL_TIMEOUT + 4)
        exited = time.monotonic() - signalled
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)
    log = server.log()
    assert exited < GRACEFUL_TIMEOUT + 3, log[-3000:]
    assert GRACEFUL_TIMEOUT / 2 < streams_ended < GRACEFUL_TIMEOUT, log[-3000:]  # interrupted before the deadline
    assert server.process.returncode == 0, log[-3000:]

    # What the clients saw.
    assert short_events[-1]["event"] == "finish", short_events[-3:]
    short_finish = json.loads(short_events[-1]["data"])
    assert short_finish["finish_reason"] in ("stop", "length")
    assert lesson_events[-1]["event"] == "error", lesson_events[-3:]
    lesson_error = json.loads(lesson_events[-1]["data"])["error"]
    assert lesson_error["code"] == "shutting_down" and not any(e["event"] == "finish" for e in lesson_events)
    payloads = openai_payloads(openai_events)
    assert payloads[-1] == "[DONE]" and payloads[-2]["error"]["code"] == "shutting_down"
    assert payloads[-2]["error"]["type"] == "server_error"
    openai_text = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads
                          if isinstance(p, dict) and p.get("choices"))

    # What was stored: every user turn, every answer with exactly the text its client received.
    store = open_store(db_url, migrate=False)
    try:
        short_answer = store.get_message(short_finish["message_id"], "")
        assert short_answer.finish_reason == short_finish["finish_reason"]
        assert [(m.role, m.content) for m in store.history(short_answer.conversation_id)] == [
            ("user", short_prompt), ("assistant", lesson_text(short_events))]

        lesson_answer = store.get_message(lesson_error["details"]["message_id"], "")
        assert lesson_answer.conversation_id == lesson_error["details"]["conversation_id"]
        assert lesson_answer.finish_reason == "cancelled"
        assert lesson_answer.content and lesson_answer.content == lesson_text(lesson_events)
        assert [(m.role, m.content) for m in store.history(lesson_answer.conversation_id)] == [
            ("user", long_prompt), ("assistant", lesson_answer.content)]
        assert lesson_answer.usage["completion_tokens"] < 2000

        openai_answer = store.get_message(payloads[0]["id"].removeprefix("chatcmpl-"), "")
        assert openai_answer.finish_reason == "cancelled"
        assert openai_answer.content and openai_answer.content == openai_text
        assert [(m.role, m.content) for m in store.history(openai_answer.conversation_id)] == [
            ("user", long_prompt), ("assistant", openai_text)]

        titles = [c.title for c in store.list_conversations("", 50, None).items]
        assert refused_prompt not in titles  # refused before anything was stored
    finally:
        store.engine.dispose()
    assert "waiting up to 5.3s for 3 running answer(s)" in log  # the short answer was running at SIGTERM
    assert "interrupting 2 answer(s) still running" in log


def test_a_server_with_nothing_running_stops_at_once_on_sigterm(tmp_path):
    server = start_server(tmp_path, {"LLM_API_GRACEFUL_TIMEOUT": "30"})
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise AssertionError(f"gunicorn did not stop at once:\n{server.log()[-3000:]}") from None
    assert time.monotonic() - started < 5 and server.process.returncode == 0


def test_sigint_interrupts_and_stores_running_answers_at_once(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'quick.sqlite3'}"
    server = start_server(tmp_path, {"LLM_API_GRACEFUL_TIMEOUT": "60", "LLM_API_DATABASE_URL": db_url,
                                     "LLM_API_DEVICE": "cpu", "LLM_API_TORCH_THREADS": "1"})
    reader = StreamReader(f"{server.url}/chat/new/message", {"prompt": LONG_PROMPT, "temperature": 0,
                                                             "max_tokens": 2000, "stream": True}, ready_after=3)
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(reader)
            assert reader.started.wait(60)
            server.process.send_signal(signal.SIGINT)  # gunicorn's quick shutdown: no waiting for the answer
            signalled = time.monotonic()
            events = future.result(timeout=30)
        server.process.wait(10)
        exited = time.monotonic() - signalled
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(10)
    assert exited < 5, server.log()[-3000:]
    assert events[-1]["event"] == "error", events[-3:]
    error = json.loads(events[-1]["data"])["error"]
    assert error["code"] == "shutting_down"
    store = open_store(db_url, migrate=False)
    try:
        answer = store.get_message(error["details"]["message_id"], "")
        assert answer.finish_reason == "cancelled" and answer.content and answer.content == lesson_text(events)
        assert [m.role for m in store.history(answer.conversation_id)] == ["user", "assistant"]
    finally:
        store.engine.dispose()
