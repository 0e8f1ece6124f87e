"""A client that cuts a stream at any byte offset (in the headers, mid-event, between events) never leaves a
hung generation, a lost answer or a server error behind: every cut answer is stored, and the engine is idle
again once the cuts are over."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.http import raw_request

pytestmark = pytest.mark.e2e

BODY = {"prompt": "Count from one to twenty in words.", "max_tokens": 24, "temperature": 0, "stream": True}


def _request(url: str, tag: str) -> tuple[str, bytes]:
    body = json.dumps({**BODY, "prompt": f"{BODY['prompt']} ({tag})"}).encode()
    return (f"POST /chat/new/message HTTP/1.1\nHost: test\nContent-Type: application/json\n"
            f"Content-Length: {len(body)}\nConnection: close\n"), body


def _read(sock, limit: int | None) -> bytes:
    data = b""
    while limit is None or len(data) < limit:
        chunk = sock.recv(1 if limit is not None and limit - len(data) < 64 else 4096)
        if not chunk:
            break
        data += chunk
    return data if limit is None else data[:limit]


@pytest.fixture(scope="module")
def whole_length(live_server) -> int:
    head, body = _request(live_server.url, "whole")
    with raw_request(live_server.url, head, body) as sock:
        whole = _read(sock, None)
    assert b"event: finish" in whole
    return len(whole)


def _cut_at(url: str, offset: int, tag: str) -> None:
    head, body = _request(url, tag)
    with raw_request(url, head, body) as sock:
        _read(sock, offset)  # then close: the client is gone


def _exchanges(url: str, tag: str) -> list[dict]:
    messages = requests.get(f"{url}/chat/get/messages?limit=500", timeout=10).json()["messages"]
    return [m for m in messages if f"({tag}" in m["prompt"]]


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(fraction=st.floats(min_value=0.0, max_value=1.0))
@example(fraction=0.0)
@example(fraction=1.0)
def test_a_stream_cut_at_any_offset_is_stored_and_frees_the_engine(live_server, whole_length, fraction):
    offset = min(whole_length - 1, int(fraction * whole_length))
    tag = f"cut-{uuid.uuid4().hex[:8]}"
    _cut_at(live_server.url, offset, tag)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stored = _exchanges(live_server.url, tag)
        running = requests.get(f"{live_server.url}/readyz", timeout=10).json()["stats"]["running"]
        if stored and running == 0:
            break
        time.sleep(0.2)
    assert len(stored) == 1, f"cut at byte {offset} of {whole_length}: {stored}"
    assert stored[0]["finish_reason"] in ("cancelled", "length", "stop"), stored[0]
    assert running == 0, f"a generation still runs after a cut at byte {offset}"
    assert requests.get(f"{live_server.url}/healthz", timeout=5).status_code == 200


def test_no_cut_left_an_error_in_the_log(live_server, whole_length):
    for offset in (0, 1, whole_length // 3, whole_length - 1):
        _cut_at(live_server.url, offset, f"log-{offset}")
    time.sleep(1.0)
    log = live_server.log()
    assert "Traceback" not in log and "status=500" not in log, log[-3000:]
