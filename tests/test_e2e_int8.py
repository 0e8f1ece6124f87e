"""``LLM_API_QUANTIZATION=int8`` under a real ``gunicorn -k gevent`` worker, on a tiny random Llama: /readyz says
503 while the decode step compiles in the engine thread, then 200, and streamed answers come back whole and the
same as alone when eight run at once."""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.llama_tiny import build_tiny_llama
from tests.servers import CACHE_DIR, ROOT, LiveServer, free_port, gunicorn_command, stop_server, wait_until_ready
from tests.workers import taking_turns

pytestmark = pytest.mark.e2e


def stream(url: str, prompt: str, tokens: int) -> str:
    body = {"model": "llama-tiny-2x64", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    text, usage = "", None
    with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines():
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                text += "".join((c.get("delta") or {}).get("content") or "" for c in chunk["choices"])
    assert usage is not None and usage["completion_tokens"] == tokens
    return text


def test_int8_under_gunicorn_is_not_ready_until_compiled_then_serves(tmp_path, int8_compile_cache):
    folder = build_tiny_llama(CACHE_DIR / "llama-tiny-2x64", CACHE_DIR)
    port = free_port()
    env = {"LLM_API_CACHE_DIR": str(int8_compile_cache), "LLM_API_DATA_DIR": str(tmp_path / "data"),
           "LLM_API_MODEL": str(folder), "LLM_API_QUANTIZATION": "int8", "LLM_API_EMBEDDING_MODELS": "",
           "PYTHONUNBUFFERED": "1", "LLM_API_MAX_BATCH": "8"}
    log_path = tmp_path / "gunicorn.log"
    with taking_turns(int8_compile_cache):  # no other int8 process fills the cache meanwhile
        process = subprocess.Popen(gunicorn_command(port), cwd=ROOT, env={**os.environ, **env},
                                   stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
        server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
        try:
            statuses = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and 503 not in statuses:
                try:
                    statuses.append(requests.get(f"{server.url}/readyz", timeout=10).status_code)
                except requests.RequestException:  # not listening yet, or a busy start on a shared machine
                    time.sleep(0.2)
            assert 503 in statuses  # listening, and not ready while it compiles
            wait_until_ready(server.url, process, log_path, 900)
            assert "decode step compiled in" in server.log()
            jobs = [(f"Question number {i}: what comes next?", 10 + i) for i in range(8)]
            alone = [stream(server.url, *job) for job in jobs]
            with ThreadPoolExecutor(8) as pool:
                together = list(pool.map(lambda job: stream(server.url, *job), jobs))
            assert together == alone
        finally:
            stop_server(server)
