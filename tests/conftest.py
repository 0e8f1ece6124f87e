"""Shared fixtures: apps on a fake engine, the embedded model in-process, and a real gunicorn server.

The helpers they and the tests use live in modules of their own: ``tests.http`` (requests and error checks),
``tests.sse`` (reading event streams), ``tests.servers`` (gunicorn servers, ports, paths), ``tests.metrics``,
``tests.fakes`` and ``tests.fault_engine`` (scripted engines), ``tests.databases`` and ``tests.browser``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_api import create_app
from llm_api.config import Settings
from tests.fakes import FakeEngine
from tests.servers import CACHE_DIR, LiveServer, start_server, stop_server


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
    """The Flask test client of ``app``."""
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


@pytest.fixture(scope="session")
def live_server(tmp_path_factory) -> Iterator[LiveServer]:
    """A real gunicorn server on the embedded model, shared by the whole session."""
    server = start_server(tmp_path_factory.mktemp("server"))
    yield server
    stop_server(server)
