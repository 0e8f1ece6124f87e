"""Request ids, the one-line request log, and the JSON log format."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import gevent
import pytest
from flask import g

from llm_api import create_app
from llm_api.config import ConfigError, Settings
from tests.fakes import FakeEngine
from tests.http import post

HEX_ID = re.compile(r"[0-9a-f]{32}")


@contextmanager
def log_output() -> Iterator[io.StringIO]:
    """What the service's stdout log handler writes, formatted as configured by the last create_app."""
    handler = next(h for h in logging.getLogger("llm_api").handlers if h.get_name() == "llm_api")
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    try:
        yield buffer
    finally:
        handler.setStream(previous)


def json_lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]  # every line is one object


def make_app(settings: Settings, engine: FakeEngine | None = None, **overrides):
    fields = {k: getattr(settings, k) for k in ("heartbeat_seconds", "database_url", "disconnect_grace_seconds")}
    app = create_app(Settings.from_env({}, **{**fields, **overrides}), engine=engine or FakeEngine())
    app.config["TESTING"] = True
    return app


# ---- request ids ---------------------------------------------------------------------------------------

def test_a_sane_request_id_is_echoed(client):
    for given in ("abc", "req-1.2_3", "A" * 128):
        response = post(client, {"prompt": "hi"}, headers={"X-Request-ID": given})
        assert response.headers["X-Request-ID"] == given


def test_a_missing_request_id_is_generated(client):
    first, second = (post(client, {"prompt": "hi"}).headers["X-Request-ID"] for _ in range(2))
    assert HEX_ID.fullmatch(first) and HEX_ID.fullmatch(second) and first != second


@pytest.mark.parametrize("insane", ["", "has space", "A" * 129, "quote\"d", "semi;colon", "é"])
def test_an_insane_request_id_is_replaced(client, insane):
    response = client.get("/healthz", headers={"X-Request-ID": insane.encode().decode("latin-1")})
    assert HEX_ID.fullmatch(response.headers["X-Request-ID"])


def test_errors_and_streams_carry_the_request_id(client):
    assert post(client, {"prompt": 5}, headers={"X-Request-ID": "bad-body"}).headers["X-Request-ID"] == "bad-body"
    assert client.get("/nowhere", headers={"X-Request-ID": "nowhere"}).headers["X-Request-ID"] == "nowhere"
    assert client.delete("/healthz", headers={"X-Request-ID": "verb"}).headers["X-Request-ID"] == "verb"
    stream = post(client, {"prompt": "hi", "stream": True}, headers={"X-Request-ID": "sse-1"})
    assert stream.mimetype == "text/event-stream" and stream.headers["X-Request-ID"] == "sse-1"
    stream.close()


def test_the_view_sees_the_request_id_in_g(app):
    seen = []

    @app.route("/probe")
    def probe():
        seen.append(g.request_id)
        return "ok"

    response = app.test_client().get("/probe", headers={"X-Request-ID": "probe-1"})
    assert seen == ["probe-1"] == [response.headers["X-Request-ID"]]


# ---- the request line ----------------------------------------------------------------------------------

def test_json_lines_have_the_request_fields(settings):
    client = make_app(settings, log_format="json").test_client()
    with log_output() as out:
        answer = post(client, {"prompt": "hi"}, headers={"X-Request-ID": "json-1"})
        post(client, {"prompt": 5})
    lines = json_lines(out)
    request = next(line for line in lines if line["logger"] == "llm_api.request" and line["request_id"] == "json-1")
    assert request["level"] == "INFO" and request["message"] == "request"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", request["ts"])
    assert request["method"] == "POST"
    assert request["path"] == "/chat/new/message" and request["route"] == "/chat/new/message"
    assert request["status"] == 200
    assert isinstance(request["duration_ms"], float) and request["duration_ms"] >= 0
    assert request["remote_addr"] == "127.0.0.1"
    assert "api_key_name" not in request  # no key was used
    refused = [line for line in lines if line["logger"] == "llm_api.request" and line["status"] == 422]
    assert len(refused) == 1 and HEX_ID.fullmatch(refused[0]["request_id"])
    # the exchange line carries the id of the request that asked for it
    exchange = next(line for line in lines if line["logger"] == "llm_api.exchange")
    assert exchange["request_id"] == "json-1" and answer.get_json()["message_id"] in exchange["message"]


def test_the_key_name_is_logged_when_a_key_was_used(settings):
    app = make_app(settings, log_format="json")
    app.before_request(lambda: setattr(g, "api_key_name", "ci-runner"))  # what the auth check sets
    with log_output() as out:
        app.test_client().get("/healthz", headers={"X-Request-ID": "keyed"})
    line = next(line for line in json_lines(out) if line["logger"] == "llm_api.request")
    assert line["api_key_name"] == "ci-runner" and line["request_id"] == "keyed"


def test_text_lines_end_in_key_value_fields(settings):
    client = make_app(settings).test_client()  # text is the default
    with log_output() as out:
        client.get("/healthz/", headers={"X-Request-ID": "text-1"})
    line = next(line for line in out.getvalue().splitlines() if " llm_api.request " in line)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO llm_api\.request request request_id=text-1 ", line)
    for field in ("method=GET", "path=/healthz/", "route=/healthz", "status=200", "remote_addr=127.0.0.1"):
        assert f" {field}" in line
    assert re.search(r" duration_ms=\d+\.\d", line)


def test_a_stream_is_logged_when_it_ends_with_its_whole_duration(settings):
    engine = FakeEngine(delay=0.05)
    client = make_app(settings, engine, log_format="json").test_client()
    with log_output() as out:
        response = post(client, {"prompt": "hi", "stream": True}, headers={"X-Request-ID": "sse-2"})
        assert not [line for line in json_lines(out) if line["logger"] == "llm_api.request"]  # still open
        body = response.get_data(as_text=True)
        response.close()  # what the server does when the body has been sent
    message_id = re.search(r'"message_id":"([0-9a-f]{32})"', body).group(1)
    lines = json_lines(out)
    request = next(line for line in lines if line["logger"] == "llm_api.request")
    assert request["request_id"] == "sse-2" and request["status"] == 200
    assert request["duration_ms"] >= 5 * 50 * 0.9  # five pieces, 50 ms apart
    # the answer was recorded by the stream's pump greenlet, which has no request context: the id still follows
    exchange = next(line for line in lines if line["logger"] == "llm_api.exchange" and message_id in line["message"])
    assert exchange["request_id"] == "sse-2"


def test_concurrent_requests_keep_their_own_ids(settings):
    client = make_app(settings, FakeEngine(delay=0.01), log_format="json").test_client()
    with log_output() as out:
        jobs = [gevent.spawn(post, client, {"prompt": "hi"}, headers={"X-Request-ID": f"conc-{n}"}) for n in range(4)]
        gevent.joinall(jobs, raise_error=True)
    answers = {job.value.headers["X-Request-ID"]: job.value.get_json()["message_id"] for job in jobs}
    exchanges = [line for line in json_lines(out) if line["logger"] == "llm_api.exchange"]
    assert len(exchanges) == 4
    for line in exchanges:  # interleaved on one hub, each exchange still carries its own request's id
        assert answers[line["request_id"]] in line["message"]


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("log_prompts", [False, True])
def test_the_prompt_is_logged_only_with_log_prompts(settings, log_format, log_prompts):
    client = make_app(settings, log_format=log_format, log_prompts=log_prompts).test_client()
    with log_output() as out:
        post(client, {"prompt": "secret question"})
        for stream in (post(client, {"prompt": "secret stream", "stream": True}),
                       client.get("/chat/stream?prompt=secret%20query&max_tokens=2")):
            assert "event: finish" in stream.get_data(as_text=True)
            stream.close()
        client.post("/v1/completions", data=json.dumps({"model": "fake-model", "prompt": "secret raw"}))
    text = out.getvalue()
    if log_format == "json":
        json_lines(out)
    assert text.count("llm_api.request") == 4
    for prompt in ("secret question", "secret stream", "secret query", "secret raw"):
        assert (prompt in text) is log_prompts
    assert "secret%20query" not in text  # the query string is never logged


def test_log_format_setting():
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"LLM_API_LOG_FORMAT": " JSON "}).log_format == "json"
    with pytest.raises(ConfigError, match="LLM_API_LOG_FORMAT must be one of text, json"):
        Settings.from_env({"LLM_API_LOG_FORMAT": "yaml"})


def test_without_tracing_the_line_carries_the_trace_id_of_a_valid_traceparent(settings):
    app = make_app(settings, log_format="json")
    client = app.test_client()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with log_output() as buffer:
        client.get("/conversations", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
                                              "X-Request-ID": "with-trace"})
        client.get("/conversations", headers={"traceparent": "00-not-a-trace-01", "X-Request-ID": "bad-trace"})
        client.get("/conversations", headers={"X-Request-ID": "no-trace"})
    lines = {line["request_id"]: line for line in json_lines(buffer) if line["logger"] == "llm_api.request"}
    assert lines["with-trace"]["trace_id"] == trace_id
    assert "trace_id" not in lines["bad-trace"] and "trace_id" not in lines["no-trace"]
