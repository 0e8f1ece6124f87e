"""Real ``gunicorn -k gevent`` servers for the end-to-end tests: free ports, starting and stopping a server, and
the paths they need (the repository root to run in, and the project's cache of the converted test model)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
# The converted embedded model, kept between runs (the first conversion takes a while): the project's own
# folder, not the user's cache.
CACHE_DIR = Path(os.environ.get("LLM_API_TEST_CACHE_DIR", ROOT / ".cache" / "test-models"))

# A question the embedded model answers greedily with "The capital of France is Paris."
FRANCE = {"prompt": "What is the capital of France?", "temperature": 0, "max_tokens": 40}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_command(port: int, app: str = "wsgi:app") -> list[str]:
    """gunicorn with the project's gunicorn.conf.py on 127.0.0.1:``port``, run with ``cwd=ROOT``. ``app``: the
    WSGI entry (``tests.scripted_wsgi:app`` serves a scripted engine instead of the model)."""
    return [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", app]


class LiveServer:
    def __init__(self, url: str, process: subprocess.Popen, log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(tmp_dir: Path, env_overrides: dict[str, str] | None = None,
                 timeout: float = 300, port: int | None = None, app: str = "wsgi:app") -> LiveServer:
    """``gunicorn -k gevent`` (from gunicorn.conf.py) on ``port`` (default: a free one), waited on until
    /readyz says ready. Its database and log live in ``tmp_dir``. It serves no embedding model unless
    ``env_overrides`` names some (LLM_API_EMBEDDING_MODELS): loading one in every chat test's server would only
    cost start-up time; the embeddings tests start servers of their own."""
    port = port or free_port()
    env = dict(os.environ, LLM_API_CACHE_DIR=str(CACHE_DIR), LLM_API_HEARTBEAT_SECONDS="1", PYTHONUNBUFFERED="1",
               LLM_API_DATA_DIR=str(tmp_dir / "data"), LLM_API_DISCONNECT_GRACE_SECONDS="2",
               LLM_API_EMBEDDING_MODELS="")
    env.update(env_overrides or {})
    log_path = tmp_dir / f"gunicorn-{port}.log"
    log_file = open(log_path, "w")
    process = subprocess.Popen(gunicorn_command(port, app), cwd=ROOT, env=env, stdout=log_file,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, log_path, timeout)
    except RuntimeError:
        process.terminate()
        raise
    return LiveServer(url, process, log_path)


def wait_until_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float,
                     interval: float = 0.3) -> None:
    """Poll ``url``/readyz until it answers 200; raise with the log if ``process`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still importing the app
            pass
        time.sleep(interval)
    raise RuntimeError(f"not ready after {timeout:.0f} s:\n{log_path.read_text()}")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise AssertionError(f"gunicorn did not stop within 30 s of SIGTERM:\n{server.log()[-3000:]}") from None


def kill_server(server: LiveServer) -> None:
    """SIGKILL the master and its worker at once: nothing gets to clean up, as in a crash."""
    family = [psutil.Process(server.process.pid), *psutil.Process(server.process.pid).children(recursive=True)]
    for member in family:
        member.kill()
    psutil.wait_procs(family, timeout=10)


# gunicorn's error log: "[2025-01-01 12:00:00 +0000] [1234] [ERROR] message".
GUNICORN_LINE = re.compile(r"^\[[^\]]+\] \[\d+\] \[(?P<level>[A-Z]+)\] (?P<message>.*)$")


def refusal(result: subprocess.CompletedProcess) -> str:
    """The one line a refused start-up logs (an ERROR of gunicorn's log, without its time and pid); nothing else
    of llm_api's, and no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "llm_api: " in line]
    assert len(lines) == 1, result.stderr
    match = GUNICORN_LINE.match(lines[0])
    assert match is not None and match["level"] == "ERROR", lines[0]
    return match["message"]
