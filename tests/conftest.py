"""Shared fixtures: apps on a fake engine, the embedded model in-process, and a real gunicorn server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from llm_api import create_app
from llm_api.config import Settings
from tests.fakes import FakeEngine

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("LLM_API_TEST_CACHE_DIR", ROOT / ".cache" / "test-models"))


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({}, heartbeat_seconds=0.05, max_body_bytes=4096,
                             database_url=f"sqlite:///{tmp_path / 'llm_api.sqlite3'}",
                             disconnect_grace_seconds=0.0, resume_seconds=5.0)


@pytest.fixture
def app(fake_engine: FakeEngine, settings: Settings):
    app = create_app(settings, engine=fake_engine)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def real_engine():
    """The embedded model on its own engine thread, loaded once per test session."""
    from llm_api.local_model.engine import EngineOptions, LocalEngine
    from llm_api.local_model.loader import ModelSpec

    engine = LocalEngine(ModelSpec("embedded", cache_dir=str(CACHE_DIR)), EngineOptions(max_batch=8, max_queue=32))
    engine.start()
    assert engine.wait_ready(300), engine.load_error
    yield engine
    engine.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, url: str, process: subprocess.Popen, log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(tmp_dir: Path, env_overrides: dict[str, str] | None = None,
                 timeout: float = 300, port: int | None = None) -> LiveServer:
    """``gunicorn -k gevent`` (from gunicorn.conf.py) on ``port`` (default: a free one), waited on until
    /readyz says ready."""
    port = port or free_port()
    env = dict(os.environ, LLM_API_CACHE_DIR=str(CACHE_DIR), LLM_API_HEARTBEAT_SECONDS="1", PYTHONUNBUFFERED="1",
               LLM_API_DATA_DIR=str(tmp_dir / "data"), LLM_API_DISCONNECT_GRACE_SECONDS="2")
    env.update(env_overrides or {})
    log_path = tmp_dir / f"gunicorn-{port}.log"
    log_file = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "wsgi:app"],
        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return LiveServer(url, process, log_path)
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still importing the app
            pass
        time.sleep(0.3)
    process.terminate()
    raise RuntimeError(f"gunicorn not ready after {timeout}s:\n{log_path.read_text()}")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise AssertionError(f"gunicorn did not stop within 30 s of SIGTERM:\n{server.log()[-3000:]}") from None


@pytest.fixture(scope="session")
def live_server(tmp_path_factory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("server"))
    yield server
    stop_server(server)
