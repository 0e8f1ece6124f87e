"""An upstream engine learns its model and context length from ``GET {base}/models`` once when it starts,
then on its own timer (sooner while it has never succeeded, rarely after), and never inside a request:
against a real OpenAI-compatible stub server on 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from llm_api import create_app, start_engine, stop_engine
from llm_api.config import Settings
from llm_api.generation.types import Finished, SamplingParams
from llm_api.routing import UpstreamEngine
from tests.sse import send_openai_stream

MODEL = "stub-model"


class StubUpstream:
    """A tiny OpenAI-compatible server: ``/v1/models`` (failing with 500 the first ``fail_models`` times),
    and streamed ``/v1/chat/completions`` and ``/v1/completions`` answers of two pieces. Counts each call."""

    def __init__(self, fail_models: int = 0, models_delay: float = 0.0) -> None:
        self.fail_models = fail_models
        self.models_delay = models_delay  # seconds before each /v1/models answer
        self.calls: dict[str, int] = {}
        self.post_headers: list[dict[str, str]] = []  # each POST's request headers
        self._lock = threading.Lock()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                calls = stub.count("GET", self.path)
                time.sleep(stub.models_delay)
                if calls <= stub.fail_models:
                    self.reply(500, {"error": {"message": "not yet"}})
                elif self.path == "/v1/models":
                    self.reply(200, {"object": "list", "data": [{"id": MODEL, "context_length": 2048}]})
                else:
                    self.reply(404, {"error": {"message": "no such route"}})

            def do_POST(self) -> None:
                stub.count("POST", self.path)
                stub.post_headers.append(dict(self.headers))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                chat = self.path == "/v1/chat/completions"
                pieces = [{"delta": {"content": text}} if chat else {"text": text} for text in ("Hello", " there.")]
                events = [{"choices": [piece]} for piece in pieces]
                events.append({"choices": [{"delta": {}, "finish_reason": "stop"} if chat
                                           else {"text": "", "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 3, "completion_tokens": 2}, "model": body["model"]})
                send_openai_stream(self, events)

            def reply(self, status: int, payload: object) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def count(self, method: str, path: str) -> int:
        with self._lock:
            key = f"{method} {path}"
            self.calls[key] = self.calls.get(key, 0) + 1
            return self.calls[key]

    @property
    def models_calls(self) -> int:
        with self._lock:
            return self.calls.get("GET /v1/models", 0)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub() -> Iterator[StubUpstream]:
    server = StubUpstream()
    yield server
    server.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_many_requests_ask_the_upstream_for_its_models_only_at_start(stub, tmp_path):
    settings = Settings.from_env({"LLM_API_ENGINES": f"remote=openai+{stub.base_url}"},
                                 database_url=f"sqlite:///{tmp_path / 'llm_api.sqlite3'}")
    app = create_app(settings)
    client = app.test_client()
    try:
        assert client.get("/healthz").status_code == 200  # outside gunicorn, the first request starts the engines
        assert wait_until(lambda: stub.models_calls == 1)
        assert wait_until(lambda: client.get("/v1/models").get_json()["data"][0]["id"] == MODEL)
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
        asked = 0
        for i in range(50):
            kind = i % 5
            if kind == 0:
                response = client.get("/healthz")
            elif kind == 1:
                response = client.get("/readyz")
            elif kind == 2:
                response = client.get("/v1/models")
                assert response.get_json()["data"][0]["context_length"] == 2048  # learnt at start
            elif kind == 3:
                response = client.post("/v1/chat/completions", json=chat)
                assert response.get_json()["choices"][0]["message"]["content"] == "Hello there."
                assert response.get_json()["model"] == MODEL
                asked += 1
            else:
                response = client.post("/chat/new/message", data=json.dumps({"prompt": "Hi", "max_tokens": 8}))
                assert response.get_json()["response"] == "Hello there."
                asked += 1
            assert response.status_code == 200, response.get_data(as_text=True)
        start_engine(app)  # gunicorn's post_worker_init after a first request: nothing more
        assert stub.calls["POST /v1/chat/completions"] == asked
        assert stub.models_calls == 1
    finally:
        stop_engine(app)


def test_discovery_retries_sooner_until_it_succeeds_then_only_refreshes():
    stub = StubUpstream(fail_models=3)
    engine = UpstreamEngine("remote", stub.base_url, discovery_retry=0.02, discovery_retry_max=0.05,
                            discovery_refresh=60.0)
    try:
        assert engine.model_name == "remote" and engine.context_length == 4096  # until it has succeeded
        engine.start()
        engine.start()  # idempotent: one timer
        assert wait_until(lambda: engine.model_name == MODEL)
        assert engine.context_length == 2048
        time.sleep(0.3)  # many retry intervals, far from a refresh
        assert stub.models_calls == 4  # three failures, one success, nothing since
    finally:
        engine.stop()
        stub.close()


@pytest.mark.parametrize("fail_models", [0, 1])
def test_a_request_during_the_first_discovery_waits_for_its_answer(fail_models):
    """A request that comes while the first ``GET /models`` is under way uses what it learns, not the
    placeholders; if that first call fails, it goes on with them at once rather than wait for a retry."""
    stub = StubUpstream(fail_models=fail_models, models_delay=0.4)
    engine = UpstreamEngine("remote", stub.base_url, discovery_retry=30.0)
    try:
        engine.start()
        assert wait_until(lambda: stub.calls.get("GET /v1/models", 0) == 1)  # under way, not yet answered
        started = time.monotonic()
        learnt = (engine.model_name, engine.context_length)
        waited = time.monotonic() - started
        assert learnt == (("remote", 4096) if fail_models else (MODEL, 2048))
        assert 0.1 < waited < 5.0
        started = time.monotonic()
        assert engine.model_name == learnt[0] and time.monotonic() - started < 0.1  # only the first one waits
    finally:
        engine.stop()
        stub.close()


def test_after_a_success_discovery_refreshes_on_its_timer_until_stopped(stub):
    engine = UpstreamEngine("remote", stub.base_url, discovery_refresh=0.05)
    engine.start()
    try:
        assert wait_until(lambda: stub.models_calls >= 3)
    finally:
        engine.stop()
    time.sleep(0.2)  # a call under way when it stopped may still arrive
    stopped_at = stub.models_calls
    time.sleep(0.3)
    assert stub.models_calls == stopped_at
    engine.start()  # a stopped engine starts again
    assert wait_until(lambda: stub.models_calls > stopped_at)
    engine.stop()


def test_a_request_never_asks_for_the_models_even_before_discovery_succeeded(stub):
    stub.fail_models = 1000
    engine = UpstreamEngine("remote", stub.base_url)  # never started: no timer
    handle = engine.submit("r1", [0, 0], SamplingParams(max_tokens=8), messages=[{"role": "user", "content": "Hi"}])
    events = [handle.next_event(5) for _ in range(3)]
    assert isinstance(events[-1], Finished) and events[-1].finish_reason == "stop"
    assert stub.models_calls == 0 and stub.calls["POST /v1/chat/completions"] == 1


def test_the_trace_context_goes_to_the_upstream_and_nothing_else_of_it(stub):
    engine = UpstreamEngine("remote", stub.base_url)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    handle = engine.submit("r1", [0, 0], SamplingParams(max_tokens=8), messages=[{"role": "user", "content": "Hi"}],
                           trace_headers={"traceparent": traceparent, "tracestate": "java=svc7", "x-other": "no"})
    while not isinstance(handle.next_event(5), Finished):
        pass
    handle = engine.submit("r2", [0, 0], SamplingParams(max_tokens=8), messages=[{"role": "user", "content": "Hi"}])
    while not isinstance(handle.next_event(5), Finished):
        pass
    first, second = ({k.lower(): v for k, v in h.items()} for h in stub.post_headers)
    assert first["traceparent"] == traceparent and first["tracestate"] == "java=svc7" and "x-other" not in first
    assert "traceparent" not in second and "tracestate" not in second
