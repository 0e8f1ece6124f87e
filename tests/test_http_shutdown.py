"""Graceful shutdown over the HTTP layer, on a scripted fake engine: refusing new work while draining,
interrupting running answers, and the gunicorn worker's signal handling without a real gunicorn."""

from __future__ import annotations

import json
import logging
import signal
import socket
from types import SimpleNamespace

import gevent
import pytest

from llm_api.services.chat import ChatRequest, ChatUnavailable
from llm_api.shutdown import INTERRUPTED_MESSAGE, DrainPlan, drain, drain_plan, interrupt_running
from llm_api.worker import DrainingGeventWorker, _Connection
from tests.fakes import CHAT, wait_until
from tests.http import assert_error, openai_error, post, post_json
from tests.sse import lesson_text, openai_payloads, parse_sse, read_sse

LONG_REPLY = " ".join(f"w{n}" for n in range(40))


def state_of(app):
    return app.extensions["llm_api"]


def stored_answer(app, message_id: str):
    message = state_of(app).store.get_message(message_id, "")
    assert message is not None, f"message {message_id} was not stored"
    return message


def rest_of(response) -> str:
    return "".join(chunk.decode() for chunk in response.iter_encoded())


# ---- draining: what new requests get ---------------------------------------------------------------


def test_while_draining_readyz_is_503_and_healthz_stays_200(app, client):
    state_of(app).begin_drain()
    response = client.get("/readyz")
    assert_error(response, 503, "shutting_down")
    assert response.headers["Retry-After"] == "1"
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz/").get_json() == {"status": "ok"}


@pytest.mark.parametrize("body", [{"prompt": "hi"}, {"prompt": "hi", "stream": True}])
def test_while_draining_a_new_message_is_503_with_retry_after_and_nothing_is_stored(app, client, fake_engine, body):
    state_of(app).begin_drain()
    response = post(client, body)
    error = assert_error(response, 503, "shutting_down")
    assert error["message"] and response.headers["Retry-After"] == "1"
    assert fake_engine.submitted == []
    assert state_of(app).store.list_conversations("", 10, None).items == []


def test_while_draining_other_routes_are_503_too(app, client, fake_engine):
    state_of(app).begin_drain()
    assert_error(client.get("/chat/stream?prompt=hi"), 503, "shutting_down")
    assert_error(client.get("/chat/get/messages"), 503, "shutting_down")
    assert_error(client.get("/nope"), 503, "shutting_down")
    assert fake_engine.submitted == []


def test_while_draining_the_openai_api_answers_503_in_openais_shape(app, client, fake_engine):
    state_of(app).begin_drain()
    for response in (post_json(client, "/v1/chat/completions", CHAT),
                     post_json(client, "/v1/chat/completions", {**CHAT, "stream": True}),
                     post_json(client, "/v1/completions", {"model": "fake-model", "prompt": "hi"}),
                     client.get("/v1/models")):
        openai_error(response, 503, None, "shutting_down")
        assert response.headers["Retry-After"] == "1"
    assert fake_engine.submitted == []


def test_while_draining_a_reconnect_to_a_stream_of_this_worker_is_still_served(app, client, fake_engine):
    state_of(app).live.grace_seconds = 5.0  # the EventSource stream keeps generating while its client is away
    fake_engine.delay = 0.02
    first = read_sse(client.get("/chat/stream?prompt=hi"), 2)
    state_of(app).begin_drain()
    body = client.get("/chat/stream", headers={"Last-Event-ID": first[-1]["id"]}).get_data(as_text=True)
    rest = [e for e in parse_sse(body) if e["data"]]
    assert rest[-1]["event"] == "finish" and json.loads(rest[-1]["data"])["finish_reason"] == "stop"
    assert lesson_text(first + rest) == fake_engine.reply
    assert len(fake_engine.submitted) == 1


def test_an_answer_admitted_after_the_interrupt_is_refused_before_anything_is_stored(app, client, fake_engine):
    state_of(app).chat.interrupt_all("shutting_down", INTERRUPTED_MESSAGE)  # the flag itself is not set here
    assert_error(post(client, {"prompt": "hi"}), 503, "shutting_down")
    with pytest.raises(ChatUnavailable):
        state_of(app).chat.open_stream(ChatRequest.from_turn("hi", []))
    assert fake_engine.submitted == []


# ---- interrupting running answers ------------------------------------------------------------------


def test_an_interrupted_lesson_stream_ends_with_a_shutting_down_error_and_is_stored_cancelled(app, client,
                                                                                              fake_engine):
    fake_engine.reply, fake_engine.delay = LONG_REPLY, 0.02
    response = post(client, {"prompt": "hi", "stream": True})
    first = read_sse(response, 3)
    assert interrupt_running(state_of(app), flush_seconds=5) == 1
    events = first + [e for e in parse_sse(rest_of(response)) if e["data"]]
    message_id = json.loads(events[0]["data"])["message_id"]
    assert events[-1]["event"] == "error" and not any(e["event"] == "finish" for e in events)
    assert events[-1]["id"] == f"{message_id}:{len(events)}"  # the error takes the finish's place in the sequence
    error = json.loads(events[-1]["data"])["error"]
    assert error["code"] == "shutting_down" and error["message"] == INTERRUPTED_MESSAGE
    stored = stored_answer(app, message_id)
    assert error["details"] == {"message_id": message_id, "conversation_id": stored.conversation_id}
    assert stored.finish_reason == "cancelled"
    assert stored.content == lesson_text(events) and stored.content and LONG_REPLY.startswith(stored.content)
    assert stored.content != LONG_REPLY
    assert state_of(app).chat.running == 0


def test_an_interrupted_openai_stream_sends_one_error_then_done(app, client, fake_engine):
    fake_engine.reply, fake_engine.delay = LONG_REPLY, 0.02
    response = post_json(client, "/v1/chat/completions", {**CHAT, "stream": True})
    chunks, body = response.iter_encoded(), ""
    while body.count("data:") < 4:
        body += next(chunks).decode()
    # This response is read by the test alone (no pump greenlet): interrupt without waiting for the store.
    assert state_of(app).chat.interrupt_all("shutting_down", INTERRUPTED_MESSAGE) == 1
    body += "".join(chunk.decode() for chunk in chunks)
    lines = openai_payloads(parse_sse(body))
    assert lines[-1] == "[DONE]"
    assert lines[-2] == {"error": {"message": INTERRUPTED_MESSAGE, "type": "server_error", "param": None,
                                   "code": "shutting_down"}}
    assert not any(isinstance(x, dict) and x.get("choices") and x["choices"][0].get("finish_reason") for x in lines)
    sent = "".join(x["choices"][0]["delta"].get("content", "") for x in lines if isinstance(x, dict) and "choices" in x)
    stored = stored_answer(app, lines[0]["id"].removeprefix("chatcmpl-"))
    assert stored.finish_reason == "cancelled" and stored.content == sent and sent


@pytest.mark.parametrize("path, body", [("/chat/new/message", {"prompt": "hi"}), ("/v1/chat/completions", CHAT)])
def test_an_interrupted_non_streamed_answer_is_503_and_its_text_is_stored(app, client, fake_engine, path, body):
    fake_engine.reply, fake_engine.delay = LONG_REPLY, 0.02
    pending = gevent.spawn(post_json, client, path, body)
    assert wait_until(lambda: fake_engine.handles and state_of(app).chat.running)
    gevent.sleep(0.1)  # a few pieces
    interrupt_running(state_of(app), flush_seconds=5)
    response = pending.get(timeout=5)
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.get_json()["error"]["code"] == "shutting_down"
    message_id = fake_engine.submitted[-1].request_id
    if path.startswith("/v1/"):
        assert set(response.get_json()["error"]) == {"message", "type", "param", "code"}
    else:
        assert response.get_json()["error"]["details"]["message_id"] == message_id
    stored = stored_answer(app, message_id)
    assert stored.finish_reason == "cancelled" and stored.content and LONG_REPLY.startswith(stored.content)


def test_an_answer_that_ends_by_itself_before_the_cancel_is_seen_keeps_its_finish(app, client, fake_engine):
    response = post(client, {"prompt": "hi", "stream": True})  # delay 0: the whole answer is already queued
    first = read_sse(response, 1)
    interrupt_running(state_of(app), flush_seconds=5)
    events = first + [e for e in parse_sse(rest_of(response)) if e["data"]]
    assert events[-1]["event"] == "finish" and json.loads(events[-1]["data"])["finish_reason"] == "stop"


# ---- the drain -------------------------------------------------------------------------------------


def test_drain_plan_keeps_a_margin_before_the_graceful_timeout():
    assert drain_plan(600) == DrainPlan(wait_seconds=595, flush_seconds=2.5)
    assert drain_plan(6) == DrainPlan(wait_seconds=4, flush_seconds=1)
    assert drain_plan(1).wait_seconds == pytest.approx(2 / 3)


def test_drain_lets_a_short_answer_finish_and_interrupts_a_long_one(app, client, fake_engine):
    fake_engine.delay = 0.02
    short = post(client, {"prompt": "hi", "stream": True, "max_tokens": 3})
    short_first = read_sse(short, 1)
    fake_engine.reply = LONG_REPLY
    long = post(client, {"prompt": "hi", "stream": True})
    long_first = read_sse(long, 1)
    assert drain(state_of(app), DrainPlan(wait_seconds=0.3, flush_seconds=5)) == 1
    assert state_of(app).draining
    short_events = short_first + [e for e in parse_sse(rest_of(short)) if e["data"]]
    long_events = long_first + [e for e in parse_sse(rest_of(long)) if e["data"]]
    assert short_events[-1]["event"] == "finish"
    assert json.loads(short_events[-1]["data"])["finish_reason"] == "length"
    assert long_events[-1]["event"] == "error"
    assert json.loads(long_events[-1]["data"])["error"]["code"] == "shutting_down"


def test_drain_with_nothing_running_returns_at_once(app):
    started = gevent.get_hub().loop.now()
    assert drain(state_of(app), DrainPlan(wait_seconds=10, flush_seconds=1)) == 0
    assert gevent.get_hub().loop.now() - started < 1


# ---- the gunicorn worker's signal handling, without gunicorn -----------------------------------------


class _Cfg:
    def __init__(self, graceful_timeout: float) -> None:
        self.graceful_timeout = graceful_timeout


def bare_worker(app, graceful_timeout: float) -> DrainingGeventWorker:
    """The worker's state as gunicorn leaves it once the app is loaded (no sockets, no fork)."""
    worker = DrainingGeventWorker.__new__(DrainingGeventWorker)
    worker.draining, worker._quitting, worker._connections = False, False, {}
    worker.alive, worker.cfg, worker.log, worker.wsgi = True, _Cfg(graceful_timeout), logging.getLogger("test"), app
    return worker


def test_sigterm_drains_then_lets_the_worker_leave(app, client, fake_engine):
    fake_engine.reply, fake_engine.delay = LONG_REPLY, 0.05
    response = post(client, {"prompt": "hi", "stream": True})
    first = read_sse(response, 1)
    worker = bare_worker(app, graceful_timeout=1.5)  # interrupt after 1.0 s
    (idle, idle_peer), (busy, busy_peer) = socket.socketpair(), socket.socketpair()
    worker._connections = {idle: _Connection("idle", None), busy: _Connection("busy", None)}
    worker.handle_exit(signal.SIGTERM, None)
    assert worker.draining and state_of(app).draining and worker.alive  # at once, still serving
    assert_error(client.get("/readyz"), 503, "shutting_down")
    worker.handle_exit(signal.SIGTERM, None)  # a second SIGTERM changes nothing
    events = first + [e for e in parse_sse(rest_of(response)) if e["data"]]
    assert json.loads(events[-1]["data"])["error"]["code"] == "shutting_down"
    assert wait_until(lambda: not worker.alive, timeout=3)
    assert idle_peer.recv(1) == b""  # the idle keep-alive connection was shut down, the busy one was not
    busy_peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        busy_peer.recv(1)
    for sock in (idle, idle_peer, busy, busy_peer):
        sock.close()


def test_a_request_that_ends_during_the_drain_closes_its_connection(app, monkeypatch):
    """A request that began before SIGTERM is busy when the drain shuts the idle connections down; when it
    ends, its connection closes instead of waiting for another request, which would hold the worker's exit
    for the keep-alive timeout. Outside a drain, the connection stays open for the next request."""
    from gunicorn.workers.ggevent import GeventWorker

    worker = bare_worker(app, graceful_timeout=1)
    request, (sock, peer) = SimpleNamespace(must_close=False), socket.socketpair()

    def answered_while_sigterm_arrives(*_args: object) -> bool:
        worker.draining = True  # SIGTERM came while the response was being written
        return True

    monkeypatch.setattr(GeventWorker, "handle_request", lambda *_args: True)
    assert worker.handle_request("listener", request, sock, None) is True
    monkeypatch.setattr(GeventWorker, "handle_request", answered_while_sigterm_arrives)
    with pytest.raises(StopIteration):  # gunicorn's keep-alive loop then closes the connection
        worker.handle_request("listener", request, sock, None)
    assert not request.must_close  # it began before the drain, so its response did not announce the close
    sock.close()
    peer.close()


def test_connections_still_open_after_the_drain_are_logged_and_ended(app, monkeypatch, caplog):
    """A connection still open a while after the drain (a client that stopped reading, say) would hold the
    worker's exit for the rest of the graceful timeout: it is shut down, with its handler's stack logged, and a
    handler that waits on something other than its connection is killed a second later."""
    from gevent.event import Event
    from gevent.socket import socketpair
    from gunicorn.workers.ggevent import GeventWorker

    import llm_api.worker as worker_module

    monkeypatch.setattr(worker_module, "LINGER_SECONDS", 0.2)
    worker = bare_worker(app, graceful_timeout=1)
    (reading, reading_peer), (waiting, waiting_peer) = socketpair(), socketpair()
    waits = {reading: lambda: reading.recv(1), waiting: Event().wait}
    monkeypatch.setattr(GeventWorker, "handle", lambda _self, _listener, client, _addr: waits[client]())
    handlers = {client: gevent.spawn(worker.handle, "listener", client, None) for client in waits}
    gevent.sleep(0)
    assert set(worker._connections) == set(waits)
    with caplog.at_level(logging.WARNING, logger="test"):
        worker.handle_exit(signal.SIGTERM, None)
        assert wait_until(lambda: all(h.dead for h in handlers.values()), timeout=5)
    assert handlers[reading].successful()  # its read saw the end of the stream and it ended by itself
    assert isinstance(handlers[waiting].value, gevent.GreenletExit)  # killed
    assert reading_peer.recv(1) == b"" and waiting_peer.recv(1) == b""
    stacks = [r.getMessage() for r in caplog.records if "still open" in r.getMessage()]
    assert len(stacks) == 2 and any("recv" in m for m in stacks) and any("wait" in m for m in stacks), stacks
    assert not worker._connections
    for sock in (reading, reading_peer, waiting, waiting_peer):
        sock.close()


def test_sigterm_before_the_app_is_loaded_is_gunicorns_plain_exit(app):
    worker = bare_worker(app, graceful_timeout=1)
    del worker.wsgi
    worker.handle_exit(signal.SIGTERM, None)
    assert not worker.alive and not worker.draining
