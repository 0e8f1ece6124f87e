"""A newcomer's first run: a fresh clone, an empty home, `make serve`, and the source material's own client.

Slow (it builds a virtual environment from the pinned requirements and converts the embedded model into an
empty cache), so it runs once, in the full suite only (marked ``e2e``). It prints the timings that
docs/operations.md quotes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.servers import ROOT, free_port, wait_until_ready

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 1500.0  # seconds: the install, the conversion and the model load, on a slow machine


def _fresh_home(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    keep = {name: value for name, value in os.environ.items()
            if name in ("PATH", "LANG", "LC_ALL", "TMPDIR") or name.startswith("PIP_")}
    return {**keep, "HOME": str(home)}  # no LLM_API_*, no XDG_*: every default applies


def test_a_fresh_clone_serves_the_lesson_client_a_short_sensible_answer(tmp_path):
    if shutil.which("make") is None or shutil.which("git") is None:
        pytest.fail("this test needs make and git on the PATH")
    checkout = tmp_path / "llm_api"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(checkout)], check=True, timeout=120)
    port = free_port()
    env = {**_fresh_home(tmp_path), "LLM_API_BIND": f"127.0.0.1:{port}"}
    log = tmp_path / "make-serve.log"
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(["make", "serve"], cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, log, READY_TIMEOUT, interval=1.0)
        ready_after = time.monotonic() - started
        # The source material's client: a prompt and max_tokens, nothing else.
        asked = time.monotonic()
        response = requests.post(f"{url}/chat/new/message", data=json.dumps({"prompt": "hello", "max_tokens": 1000}),
                                 timeout=300)
        answer_seconds = time.monotonic() - asked
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["finish_reason"] == "stop", body  # it ends its turn by itself, far from the 1,000 tokens
        assert 0 < body["usage"]["completion_tokens"] <= 100, body["usage"]
        assert re.search(r"[A-Za-z]{2,}", body["response"]), body["response"]  # words, not noise or nothing
        print(f"\nfirst run: make serve ready after {ready_after:.0f} s; the lesson client's answer "
              f"({body['usage']['completion_tokens']} tokens) took {answer_seconds:.1f} s: {body['response']!r}")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    log_text = log.read_text()
    assert "Traceback" not in log_text, log_text[-4000:]
    assert not (tmp_path / "home" / ".gunicorn").exists()
