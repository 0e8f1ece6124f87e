"""Shared fixtures: apps on a fake engine, the embedded model in-process, and a real gunicorn server.

The suite runs in a home of its own: before anything else is imported, HOME and the XDG folders point at a
fresh temporary folder for the whole session, and gunicorn and flask subprocesses inherit it. No test sees the
user's database (or the API keys in it) or cache, and a test that leaves files where the app keeps them by
default fails (see ``tests/isolation.py``).

The helpers the fixtures and tests use live in modules of their own: ``tests.http`` (requests and error checks),
``tests.sse`` (reading event streams), ``tests.servers`` (gunicorn servers, ports, paths), ``tests.metrics``,
``tests.fakes`` and ``tests.fault_engine`` (scripted engines), ``tests.databases`` and ``tests.browser``.
"""

# ruff: noqa: E402  (the session's HOME and this worker's cores are set before the app's modules are imported)
from __future__ import annotations

import os

from tests.isolation import clear_default_locations, fresh_home, written_by_the_app
from tests.workers import pin_this_worker, run_folder

os.environ.update(fresh_home())  # first: the app and its libraries may read these when they are imported
pin_this_worker()  # before torch is imported

from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_api import create_app
from llm_api.config import Settings
from tests.databases import RedisServer
from tests.fakes import FakeEngine
from tests.servers import CACHE_DIR, LiveServer, free_port, start_server, stop_server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files that load the model or start servers first, so that the many quick files fill in at the end
    and ``make test``'s workers (``tests.workers``) finish together. Without xdist, only the order changes."""
    slow_files = {item.path for item in items if item.get_closest_marker("e2e") or item.get_closest_marker("model")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: file order within each kind


def fail_if_the_app_wrote_to_the_home(who: str) -> None:
    written = written_by_the_app()
    if not written:
        return
    home = Path(os.environ["HOME"])
    names = "\n".join(f"  ~/{path.relative_to(home)}" for path in written)
    clear_default_locations()  # so that the next test is not blamed too
    pytest.fail(f"{who} wrote where the app keeps its files by default, outside its temporary folders:\n{names}\n"
                "On a user's machine that is their own database, keys and cache. Give the app a folder of the "
                "test's own: a database_url under tmp_path (the settings fixture has one), or LLM_API_DATA_DIR / "
                "LLM_API_CACHE_DIR for a server.", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def session_home() -> Iterator[Path]:
    """The session's temporary HOME; once every other fixture is torn down, the app must have left nothing there
    (a session- or module-scoped server may write after the last test)."""
    yield Path(os.environ["HOME"])
    fail_if_the_app_wrote_to_the_home("The session's fixtures")


@pytest.fixture(autouse=True)
def nothing_written_to_the_home(request) -> Iterator[None]:
    """Fails the test after which the app's files appear in the session's HOME."""
    yield
    fail_if_the_app_wrote_to_the_home(f"{request.node.nodeid} (the test or a fixture it uses)")


@pytest.fixture(scope="session")
def int8_compile_cache(tmp_path_factory) -> Path:
    """The test run's one cache folder for ``LLM_API_QUANTIZATION=int8`` tests, shared by ``make test``'s
    workers. The first to start compiles the decode step into it, cold, as on a fresh machine; the others load
    inductor's code from it, as a restarted server does, instead of compiling for another minute each. Each
    starts its int8 process inside ``taking_turns(folder)``, so that no process reads a half-filled cache."""
    folder = run_folder(tmp_path_factory.getbasetemp()) / "int8-compile-cache"
    folder.mkdir(exist_ok=True)
    return folder


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


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real Redis server of its own on a free port, for one test."""
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()
