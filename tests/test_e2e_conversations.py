"""End to end on the real model under gunicorn: stored conversations, streams that survive a real
reconnect, and nothing lost when a client leaves or the server is killed — on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import urlencode

import pytest
import requests

from llm_api.storage import open_store
from tests.databases import BACKENDS, database_url
from tests.http import non_streamed, stored
from tests.servers import FRANCE, kill_server, start_server
from tests.sse import lesson_text, read_sse

pytestmark = pytest.mark.e2e


def test_a_stored_conversation_continues_exactly_like_sending_the_whole_history(live_server):
    url = live_server.url
    first = non_streamed(url, {"prompt": "My name is Ada. Please remember it.", "temperature": 0,
                               "max_tokens": 24})
    second = non_streamed(url, {"prompt": "What is my name?", "temperature": 0, "max_tokens": 24,
                                "conversation_id": first["conversation_id"]})
    explicit = non_streamed(url, {"prompt": "What is my name?", "temperature": 0, "max_tokens": 24, "history": [
        {"role": "user", "content": "My name is Ada. Please remember it."},
        {"role": "assistant", "content": first["response"]}]})
    assert second["conversation_id"] == first["conversation_id"] != explicit["conversation_id"]
    assert second["usage"]["prompt_tokens"] == explicit["usage"]["prompt_tokens"]
    assert second["response"] == explicit["response"]
    assert "Ada" in second["response"]
    messages = requests.get(f"{url}/conversations/{first['conversation_id']}", timeout=10).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[-1]["content"] == second["response"] and messages[-1]["model"]


def test_a_real_reconnect_mid_answer_resumes_exactly_where_it_left_off(live_server):
    prompt = f"List the colours of the rainbow, one per line. ({uuid.uuid4().hex[:6]})"
    expected = non_streamed(live_server.url, {"prompt": prompt, "temperature": 0, "max_tokens": 48})
    query = urlencode({"prompt": prompt, "temperature": 0, "max_tokens": 48})
    with requests.get(f"{live_server.url}/chat/stream?{query}", stream=True, timeout=60) as response:
        first = read_sse(response, 5)
    # The connection is gone; reconnect as EventSource does, with the last id it saw.
    with requests.get(f"{live_server.url}/chat/stream?{query}", headers={"Last-Event-ID": first[-1]["id"]},
                      stream=True, timeout=60) as response:
        rest = read_sse(response)
    events = first + rest
    message_id = first[0]["id"].split(":")[0]
    assert [e["id"] for e in events] == [f"{message_id}:{n}" for n in range(1, len(events) + 1)]  # no gap, no dup
    assert len(rest) > 2, "the reconnect must land mid-answer"
    assert events[-1]["event"] == "finish"
    assert json.loads(events[-1]["data"])["finish_reason"] == expected["finish_reason"]
    assert lesson_text(events) == expected["response"]
    exchanges = requests.get(f"{live_server.url}/chat/get/messages?limit=500", timeout=10).json()["messages"]
    assert len([e for e in exchanges if e["prompt"] == prompt]) == 2  # the reference and ONE streamed generation


def test_an_event_stream_nobody_reconnects_to_is_cancelled_and_stored_with_its_text(live_server):
    query = urlencode({"prompt": "Write a very long story about a dragon.", "temperature": 0, "max_tokens": 400})
    with requests.get(f"{live_server.url}/chat/stream?{query}", stream=True, timeout=60) as response:
        seen = read_sse(response, 4)
    record = stored(live_server.url, seen[0]["id"].split(":")[0], timeout=30)
    assert record["finish_reason"] == "cancelled"
    assert record["response"].startswith(lesson_text(seen)) and record["usage"]["completion_tokens"] < 400


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_server_killed_mid_stream_leaves_the_users_turn_stored(tmp_path, backend):
    with database_url(backend, tmp_path) as db_url:
        server = start_server(tmp_path, {"LLM_API_DATABASE_URL": db_url})
        try:
            answered = non_streamed(server.url, FRANCE)
            assert "Paris" in answered["response"]
            prompt = f"Tell me a long story about a lighthouse. ({uuid.uuid4().hex[:6]})"
            body = json.dumps({"prompt": prompt, "max_tokens": 300, "stream": True})
            with requests.post(f"{server.url}/chat/new/message", data=body, stream=True, timeout=60) as response:
                assert len(read_sse(response, 3)) == 3
                kill_server(server)
        finally:
            if server.process.poll() is None:
                kill_server(server)
        store = open_store(db_url, migrate=False)
        try:
            conversations = store.list_conversations("", 10, None).items
            killed = next(c for c in conversations if c.title == prompt)
            assert [(m.role, m.content) for m in store.history(killed.id)] == [("user", prompt)]
            kept = store.get_message(answered["message_id"], "")
            assert kept.content == answered["response"] and kept.finish_reason == "stop"
        finally:
            store.engine.dispose()
        time.sleep(0.1)
