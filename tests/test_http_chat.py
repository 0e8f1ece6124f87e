"""The lesson's chat API over the HTTP layer, on a scripted fake engine."""

from __future__ import annotations

import io
import json
import re

import pytest

from llm_api.generation.errors import NotReadyError
from tests.fakes import wait_until
from tests.http import assert_error, post
from tests.sse import parse_sse, read_sse


def test_lesson_client_call_without_json_content_type(client, fake_engine):
    response = post(client, {"prompt": "hello", "max_tokens": 1000 // 100}, path="/chat/new/message/")
    assert response.status_code == 200
    assert response.content_type == "application/json"
    body = response.get_json()
    assert body["response"] == fake_engine.reply
    assert body["status"] == 200
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", body["time"])
    assert re.fullmatch(r"[0-9a-f]{32}", body["message_id"])
    assert body["history"] == [{"role": "user", "content": "hello"},
                               {"role": "assistant", "content": fake_engine.reply}]
    assert body["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 5
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 5


@pytest.mark.parametrize("path", ["/chat/new/message", "/chat/new/message/"])
def test_routes_answer_with_and_without_trailing_slash(client, path):
    assert client.post(path, data='{"prompt": "hi"}').status_code == 200
    get_path = "/chat/get/messages" if not path.endswith("/") else "/chat/get/messages/"
    assert client.get(get_path).status_code == 200


def test_history_and_sampling_fields_reach_the_engine(client, fake_engine):
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a b"},
               {"role": "assistant", "content": "c"}]
    body = {"prompt": "d e f", "history": history, "max_tokens": 3, "temperature": 0.5, "top_p": 0.9,
            "seed": 7, "stop": ["x"]}
    response = post(client, body)
    assert response.status_code == 200
    request = fake_engine.submitted[-1]
    assert request.prompt_ids == fake_engine.encode_chat([*history, {"role": "user", "content": "d e f"}])
    assert (request.params.max_tokens, request.params.temperature, request.params.top_p) == (3, 0.5, 0.9)
    assert (request.params.seed, request.params.stop) == (7, ("x",))
    assert response.get_json()["finish_reason"] == "length"
    assert response.get_json()["history"][:3] == history


def test_defaults_match_the_lesson(client, fake_engine, settings):
    post(client, {"prompt": "hi"})
    params = fake_engine.submitted[-1].params
    assert (params.temperature, params.top_p) == (1.0, 1.0)
    # no max_tokens: the configured default, capped by the context left after the prompt
    assert params.max_tokens == min(settings.default_max_tokens, fake_engine.context_length - 2)


def test_stream_delta_events_then_finish(client, fake_engine):
    response = post(client, {"prompt": "hi", "stream": True})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    events = parse_sse(response.get_data(as_text=True))
    assert events[0]["comment"] and events[0]["data"] is None  # headers leave before the first token
    tokens = [e for e in events if e["data"] and e["event"] is None]
    payloads = [json.loads(e["data"]) for e in tokens]
    message_id = payloads[0]["message_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", message_id)
    assert "".join(p["text"] for p in payloads) == fake_engine.reply
    assert len(payloads) == 5
    assert all(set(p) == {"text", "message_id"} and p["message_id"] == message_id for p in payloads)
    finish = events[-1]
    assert finish["event"] == "finish"
    data = json.loads(finish["data"])
    assert data["message_id"] == message_id and data["finish_reason"] == "stop"
    assert data["usage"]["completion_tokens"] == 5
    ids = [e["id"] for e in events if e["data"]]
    assert ids == [f"{message_id}:{n}" for n in range(1, len(ids) + 1)]


def test_stream_cumulative_mode(client, fake_engine):
    response = post(client, {"prompt": "hi", "stream": True, "stream_mode": "cumulative"})
    texts = [json.loads(e["data"])["text"] for e in parse_sse(response.get_data(as_text=True))
             if e["data"] and e["event"] is None]
    assert texts[-1] == fake_engine.reply
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:], strict=False))
    assert len(texts) == 5


def test_stream_payload_newlines_stay_on_one_data_line(client, fake_engine):
    fake_engine.reply = "line1\nline2 \r\n tail"
    events = parse_sse(post(client, {"prompt": "hi", "stream": True}).get_data(as_text=True))
    texts = [json.loads(e["data"])["text"] for e in events if e["data"] and e["event"] is None]
    assert "".join(texts) == fake_engine.reply
    assert all("\n" not in e["data"] for e in events if e["data"])


def test_heartbeat_comments_while_waiting(client, fake_engine):
    fake_engine.delay = 0.2  # heartbeat is 0.05 s in these tests
    body = post(client, {"prompt": "hi", "stream": True, "max_tokens": 2}).get_data(as_text=True)
    assert body.count(": ping") >= 2
    assert parse_sse(body)[-1]["event"] == "finish"


def test_error_after_stream_began_is_an_error_event(client, fake_engine):
    fake_engine.fail_after = 2
    events = parse_sse(post(client, {"prompt": "hi", "stream": True}).get_data(as_text=True))
    assert [json.loads(e["data"])["text"] for e in events if e["data"] and e["event"] is None] == ["Hello", " from"]
    assert events[-1]["event"] == "error"
    assert json.loads(events[-1]["data"])["error"]["code"] == "generation_failed"
    assert not any(e["event"] == "finish" for e in events)


def test_non_streamed_generation_failure_is_500_envelope(client, fake_engine):
    fake_engine.fail_after = 1
    response = post(client, {"prompt": "hi"})
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "generation_failed"


def test_client_closing_a_stream_cancels_and_stores_it(client, fake_engine):
    fake_engine.delay = 0.02
    response = post(client, {"prompt": "hi", "stream": True})
    read_sse(response, 2)
    response.close()  # what the WSGI server does when the client has gone
    handle = fake_engine.handles[-1]
    # The grace for a reconnect is 0 in these settings: the cancel follows at once, off the request.
    assert wait_until(lambda: client.get("/chat/get/messages").get_json()["messages"])
    assert handle.cancelled
    assert handle.cancel_seen_at_token is not None and handle.cancel_seen_at_token <= 3
    stored = client.get("/chat/get/messages").get_json()["messages"][-1]
    assert stored["finish_reason"] == "cancelled"
    assert stored["response"] and fake_engine.reply.startswith(stored["response"])


def test_messages_are_listed_newest_last_with_pagination(client):
    ids = [post(client, {"prompt": f"q{n}"}).get_json()["message_id"] for n in range(5)]
    messages = client.get("/chat/get/messages").get_json()["messages"]
    assert [m["message_id"] for m in messages] == ids
    assert messages[0]["prompt"] == "q0" and messages[0]["response"]
    assert set(messages[0]) >= {"message_id", "time", "prompt", "response", "finish_reason", "usage"}
    page = client.get("/chat/get/messages?limit=2").get_json()["messages"]
    assert [m["message_id"] for m in page] == ids[-2:]
    older = client.get(f"/chat/get/messages?limit=2&before={ids[3]}").get_json()["messages"]
    assert [m["message_id"] for m in older] == ids[1:3]


# ---- errors: one envelope, the right status, never a 500 for bad input ------------------------------


@pytest.mark.parametrize("raw", ["{", "not json", "", "   ", '{"prompt": "a",}', b"\xff\xfe"])
def test_malformed_json_is_400(client, raw):
    assert_error(client.post("/chat/new/message", data=raw), 400, "invalid_json")


@pytest.mark.parametrize("body, field", [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "a", "temperature": 2.5}, "temperature"),
    ({"prompt": "a", "temperature": "1"}, "temperature"),
    ({"prompt": "a", "temperature": True}, "temperature"),
    ({"prompt": "a", "top_p": 0}, "top_p"),
    ({"prompt": "a", "top_p": 1.5}, "top_p"),
    ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "a", "max_tokens": 1.5}, "max_tokens"),
    ({"prompt": "a", "max_tokens": True}, "max_tokens"),
    ({"prompt": "a", "stream": "yes"}, "stream"),
    ({"prompt": "a", "stream_mode": "words"}, "stream_mode"),
    ({"prompt": "a", "history": [{"role": "robot", "content": "x"}]}, "history"),
    ({"prompt": "a", "history": [{"role": "user"}]}, "history"),
    ({"prompt": "a", "history": "nope"}, "history"),
    ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "a", "unexpected": 1}, "unexpected"),
])
def test_invalid_fields_are_422_naming_the_field(client, body, field):
    error = assert_error(post(client, body), 422, "validation_error")
    assert field in error["details"]["fields"]
    assert field in error["message"]


@pytest.mark.parametrize("raw", ["[1, 2]", '"text"', "42", "null"])
def test_json_that_is_not_an_object_is_422(client, raw):
    assert_error(client.post("/chat/new/message", data=raw), 422, "validation_error")


def test_nan_temperature_is_422(client):
    assert_error(client.post("/chat/new/message", data='{"prompt": "a", "temperature": NaN}'),
                 422, "validation_error")


def test_context_length_exceeded_is_400_with_numbers(client, fake_engine):
    error = assert_error(post(client, {"prompt": "a", "max_tokens": 100}), 400, "context_length_exceeded")
    assert error["details"] == {"prompt_tokens": 2, "max_tokens": 100, "context_length": fake_engine.context_length}


def test_prompt_filling_the_context_without_max_tokens_is_400(client, fake_engine):
    words = " ".join(["w"] * fake_engine.context_length)
    assert_error(post(client, {"prompt": words}), 400, "context_length_exceeded")


def test_body_over_limit_is_413(client, settings):
    body = json.dumps({"prompt": "x" * settings.max_body_bytes})
    assert_error(client.post("/chat/new/message", data=body), 413, "payload_too_large")


def test_chunked_body_over_limit_is_413_not_truncated(client, settings):
    body = json.dumps({"prompt": "x" * settings.max_body_bytes}).encode()
    # a chunked body has no Content-Length; the server marks the stream as terminated (as gunicorn does)
    response = client.post("/chat/new/message", input_stream=io.BytesIO(body),
                           headers={"Transfer-Encoding": "chunked"},
                           environ_overrides={"wsgi.input_terminated": True})
    assert_error(response, 413, "payload_too_large")


def test_queue_full_is_503_with_retry_after(client, fake_engine):
    fake_engine.queue_full = True
    response = post(client, {"prompt": "hi", "stream": True})
    assert_error(response, 503, "queue_full")
    assert int(response.headers["Retry-After"]) >= 1


def test_model_not_ready_is_503_with_retry_after(client, fake_engine):
    fake_engine.ready = False

    def not_ready(*args, **kwargs):
        raise NotReadyError("the model is loading")

    fake_engine.encode_chat = not_ready
    response = post(client, {"prompt": "hi"})
    assert_error(response, 503, "model_not_ready")
    assert response.headers["Retry-After"]
    ready = client.get("/readyz")
    assert_error(ready, 503, "model_not_ready")
    assert client.get("/healthz").status_code == 200


def test_unknown_route_and_wrong_method_use_the_envelope(client):
    assert_error(client.get("/nope"), 404, "not_found")
    response = client.get("/chat/new/message")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "limit=501", "other=1"])
def test_bad_message_query_is_422(client, query):
    assert_error(client.get(f"/chat/get/messages?{query}"), 422, "validation_error")


def test_readyz_reports_the_engine(client, fake_engine):
    body = client.get("/readyz").get_json()
    assert body["status"] == "ready" and body["model"] == fake_engine.model_name
    assert body["context_length"] == fake_engine.context_length


# ---- browser EventSource endpoint -------------------------------------------------------------------


def test_get_stream_sends_retry_ids_and_the_same_events(client, fake_engine):
    response = client.get("/chat/stream?prompt=hi&max_tokens=4&temperature=0&stop=zz&stop=yy")
    assert response.mimetype == "text/event-stream"
    body = response.get_data(as_text=True)
    assert body.startswith("retry: 3000\n\n")
    events = [e for e in parse_sse(body) if e["data"]]
    assert all(e["id"] for e in events)
    assert "".join(json.loads(e["data"])["text"] for e in events[:-1]) == "Hello from the fake"
    assert events[-1]["event"] == "finish"
    params = fake_engine.submitted[-1].params
    assert (params.max_tokens, params.temperature, params.stop) == (4, 0.0, ("zz", "yy"))


def test_reconnect_after_the_last_event_is_204_without_a_second_generation(client, fake_engine):
    events = [e for e in parse_sse(client.get("/chat/stream?prompt=hi").get_data(as_text=True)) if e["data"]]
    assert events[-1]["event"] == "finish"
    again = client.get("/chat/stream?prompt=hi", headers={"Last-Event-ID": events[-1]["id"]})
    assert again.status_code == 204  # an EventSource stops reconnecting on 204
    assert len(fake_engine.submitted) == 1


def reconnected(client, response, after: int) -> tuple[list[dict], list[dict]]:
    """Read ``after`` events, drop the connection, reconnect with Last-Event-ID: both parts."""
    first = read_sse(response, after)
    response.close()
    rest = [e for e in parse_sse(client.get("/chat/stream", headers={"Last-Event-ID": first[-1]["id"]})
                                 .get_data(as_text=True)) if e["data"]]
    return first, rest


def assert_contiguous(events: list[dict]) -> None:
    message_id = events[0]["id"].split(":")[0]
    assert [e["id"] for e in events] == [f"{message_id}:{n}" for n in range(1, len(events) + 1)]


def test_reconnect_mid_answer_gets_exactly_the_rest(app, client, fake_engine):
    app.extensions["llm_api"].live.grace_seconds = 5.0  # keep generating while the client is away
    fake_engine.delay = 0.02
    first, rest = reconnected(client, client.get("/chat/stream?prompt=hi"), 2)
    events = first + rest
    assert_contiguous(events)
    assert "".join(json.loads(e["data"])["text"] for e in events[:-1]) == fake_engine.reply
    assert events[-1]["event"] == "finish" and json.loads(events[-1]["data"])["finish_reason"] == "stop"
    assert len(fake_engine.submitted) == 1 and not fake_engine.handles[0].cancelled


def test_a_post_stream_is_cancelled_when_its_client_goes_and_a_reconnect_sees_that(app, client, fake_engine):
    app.extensions["llm_api"].live.grace_seconds = 5.0  # only EventSource streams wait for a reconnect
    fake_engine.delay = 0.02
    first, rest = reconnected(client, post(client, {"prompt": "hi", "stream": True}), 2)
    events = first + rest
    assert_contiguous(events)
    assert events[-1]["event"] == "finish" and json.loads(events[-1]["data"])["finish_reason"] == "cancelled"
    assert fake_engine.handles[0].cancelled and len(fake_engine.submitted) == 1


def test_a_finished_stream_forgotten_here_points_to_the_stored_message(app, client, fake_engine):
    app.extensions["llm_api"].live.resume_seconds = 0.0
    events = [e for e in parse_sse(client.get("/chat/stream?prompt=hi").get_data(as_text=True)) if e["data"]]
    finish = json.loads(events[-1]["data"])
    assert wait_until(lambda: not len(app.extensions["llm_api"].live))
    body = client.get("/chat/stream", headers={"Last-Event-ID": events[1]["id"]}).get_data(as_text=True)
    error = [e for e in parse_sse(body) if e["data"]]
    assert [e["event"] for e in error] == ["error"]
    payload = json.loads(error[0]["data"])["error"]
    assert payload["code"] == "resume_unavailable"
    assert payload["details"] == {"message_id": finish["message_id"], "conversation_id": finish["conversation_id"]}
    assert len(fake_engine.submitted) == 1


def test_reconnect_to_an_unknown_message_is_an_error_event(client, fake_engine):
    body = client.get("/chat/stream?prompt=hi", headers={"Last-Event-ID": "0" * 32 + ":3"}).get_data(as_text=True)
    events = [e for e in parse_sse(body) if e["data"]]
    assert [e["event"] for e in events] == ["error"]
    assert json.loads(events[0]["data"])["error"]["code"] == "resume_unavailable"
    assert fake_engine.submitted == []


@pytest.mark.parametrize("query, field", [
    ("", "prompt"), ("prompt=", "prompt"), ("prompt=a&max_tokens=x", "max_tokens"),
    ("prompt=a&temperature=nan", "temperature"), ("prompt=a&other=1", "other")])
def test_get_stream_bad_query_is_422(client, query, field):
    error = assert_error(client.get(f"/chat/stream?{query}"), 422, "validation_error")
    assert field in error["details"]["fields"]


def test_cors_headers_follow_the_setting(fake_engine, tmp_path):
    from llm_api import create_app
    from llm_api.config import Settings

    settings = Settings.from_env({"LLM_API_CORS_ORIGINS": "https://app.example"},
                                 database_url=f"sqlite:///{tmp_path / 'llm_api.sqlite3'}")
    app = create_app(settings, engine=fake_engine)
    client = app.test_client()
    preflight = client.options("/v1/chat/completions", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type"})
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    stream = client.get("/chat/stream?prompt=hi", headers={"Origin": "https://app.example"})
    assert stream.headers["Access-Control-Allow-Origin"] == "https://app.example"
    other = client.get("/chat/stream?prompt=hi", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_no_cors_headers_by_default(client):
    response = client.get("/chat/stream?prompt=hi", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1])
def test_seed_outside_64_bits_is_422(client, seed):
    assert_error(post(client, {"prompt": "a", "seed": seed}), 422, "validation_error")


def test_openai_shaped_body_on_the_lesson_route(client, fake_engine):
    """The lesson's Java caller posts {"model", "stream", "messages"} and reads the lesson's events."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]
    response = post(client, {"model": "chatglm3-6b", "stream": True, "messages": messages})
    events = parse_sse(response.get_data(as_text=True))
    assert events[-1]["event"] == "finish"
    assert fake_engine.submitted[-1].prompt_ids == fake_engine.encode_chat(messages)


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": "a"}], "prompt": "b"},
    {"messages": [{"role": "assistant", "content": "a"}]},
    {"messages": []},
    {"model": "m"},
])
def test_openai_shaped_body_must_be_coherent(client, body):
    assert_error(post(client, body), 422, "validation_error")


@pytest.mark.parametrize("log_prompts", [False, True])
def test_each_exchange_is_logged_on_one_line(fake_engine, log_prompts, tmp_path):
    import logging

    from llm_api import create_app
    from llm_api.config import Settings

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    settings = Settings.from_env({}, log_prompts=log_prompts, database_url=f"sqlite:///{tmp_path / 'llm_api.sqlite3'}")
    app = create_app(settings, engine=fake_engine)
    logger, collect = logging.getLogger("llm_api.exchange"), Collect()
    logger.addHandler(collect)
    try:
        answer = post(app.test_client(), {"prompt": "secret question"}).get_json()
    finally:
        logger.removeHandler(collect)
    lines = collect.lines
    assert len(lines) == 1 and "\n" not in lines[0]
    line = lines[0]
    for field in (f"message_id={answer['message_id']}", "prompt_tokens=3", "completion_tokens=5", "ttft=0.010s",
                  "total=0.020s", "finish_reason=stop", "time="):
        assert field in line
    assert ("secret question" in line) is log_prompts


def test_delete_stops_a_streaming_answer_at_once_without_waiting_for_the_grace(app, client, fake_engine):
    app.extensions["llm_api"].live.grace_seconds = 30.0  # a closed EventSource alone would wait this long
    fake_engine.delay = 0.05
    fake_engine.reply = " ".join(f"w{n}" for n in range(40))
    response = client.get("/chat/stream?prompt=hi&max_tokens=40")
    message_id = read_sse(response, 2)[0]["id"].split(":")[0]
    response.close()  # the page closes its EventSource...
    assert client.delete(f"/chat/stream/{message_id}").status_code == 204  # ...and asks the server to stop
    assert wait_until(lambda: fake_engine.handles[0].cancelled, timeout=2)
    stored = wait_until(lambda: [m for m in client.get("/chat/get/messages").get_json()["messages"]
                                 if m["message_id"] == message_id], timeout=2)
    assert stored[0]["finish_reason"] == "cancelled" and stored[0]["usage"]["completion_tokens"] < 40


def test_delete_of_an_answer_not_streaming_here_is_404(client, fake_engine):
    finished = [e for e in parse_sse(client.get("/chat/stream?prompt=hi").get_data(as_text=True)) if e["id"]]
    message_id = finished[0]["id"].split(":")[0]
    assert_error(client.delete(f"/chat/stream/{message_id}"), 404, "stream_not_found")  # already finished
    assert_error(client.delete(f"/chat/stream/{'0' * 32}"), 404, "stream_not_found")
