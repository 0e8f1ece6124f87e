"""Streams shared by workers through a real Redis server: a reconnect or a Stop on a worker that does not
generate the answer, and a Redis that stops answering (each worker keeps its own streams).

Two apps on one database and one Redis stand for two workers. The live tail followed across workers (a
blocking read, cooperative only under gevent's monkey-patching) and a worker killed mid-answer are tested
under real gunicorn servers in ``test_e2e_shared_streams.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm_api import create_app
from tests.fakes import FakeEngine, wait_until
from tests.http import bearer, new_key
from tests.sse import parse_sse, read_sse

LONG = " ".join(f"word{n}" for n in range(40))


@pytest.fixture
def workers(settings, redis_server):
    """Two apps, each with its own engine, on one database and one Redis: two workers of one service."""
    shared = settings.__class__(**{**settings.__dict__, "redis_url": redis_server.url, "resume_seconds": 30.0,
                                   "disconnect_grace_seconds": 5.0})
    engines = [FakeEngine(LONG, context_length=256), FakeEngine(LONG, context_length=256)]
    apps = [create_app(shared, engine=engine) for engine in engines]
    return apps, engines


def data_events(body: str) -> list[dict]:
    return [e for e in parse_sse(body) if e["data"]]


def text_of(events: list[dict]) -> str:
    return "".join(json.loads(e["data"])["text"] for e in events if e["event"] is None)


def test_another_worker_replays_an_answer_it_did_not_generate(workers):
    (first, second), (engine, other_engine) = workers
    events = data_events(first.test_client().get("/chat/stream?prompt=hi").get_data(as_text=True))
    assert events[-1]["event"] == "finish"

    rest = data_events(second.test_client().get("/chat/stream", headers={"Last-Event-ID": events[2]["id"]})
                       .get_data(as_text=True))
    assert [e["id"] for e in rest] == [e["id"] for e in events[3:]]
    assert rest[-1]["event"] == "finish" and json.loads(rest[-1]["data"]) == json.loads(events[-1]["data"])
    assert text_of(events[:3] + rest) == LONG
    again = second.test_client().get("/chat/stream", headers={"Last-Event-ID": events[-1]["id"]})
    assert again.status_code == 204  # nothing after the last event: the EventSource stops reconnecting
    assert len(engine.submitted) == 1 and other_engine.submitted == []  # never a second generation


def test_another_callers_answer_is_not_found_on_another_worker(workers):
    (first, second), _ = workers
    alice, bob = new_key(first, name="alice"), new_key(first, name="bob")
    response = first.test_client().get("/chat/stream?prompt=hi", headers=bearer(alice))
    events = data_events(response.get_data(as_text=True))
    assert events[-1]["event"] == "finish"
    body = second.test_client().get("/chat/stream", headers={"Last-Event-ID": events[1]["id"], **bearer(bob)})
    error = data_events(body.get_data(as_text=True))
    assert [e["event"] for e in error] == ["error"]
    assert json.loads(error[0]["data"])["error"]["code"] == "resume_unavailable"


def test_stop_on_another_worker_cancels_the_answer(workers):
    (first, second), (engine, _) = workers
    engine.delay = 0.05
    response = first.test_client().get("/chat/stream?prompt=hi")
    head = read_sse(response, 2)
    message_id = head[0]["id"].split(":")[0]

    assert second.test_client().delete(f"/chat/stream/{message_id}").status_code == 204
    rest = read_sse(response)
    finish = json.loads(rest[-1]["data"])
    assert rest[-1]["event"] == "finish" and finish["finish_reason"] == "cancelled"
    assert engine.handles[0].cancelled and finish["usage"]["completion_tokens"] < 40
    stored = second.extensions["llm_api"].chat.find_message(message_id)
    assert stored is not None and stored.finish_reason == "cancelled"
    # Once it has ended there is nothing left to stop, on either worker.
    for app in (first, second):
        assert app.test_client().delete(f"/chat/stream/{message_id}").status_code == 404


def test_stop_of_an_unknown_answer_is_404_on_any_worker(workers):
    (first, _), _ = workers
    response = first.test_client().delete(f"/chat/stream/{'0' * 32}")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "stream_not_found"


def test_with_redis_down_streams_stay_on_their_worker_and_others_say_resume_unavailable(workers, redis_server):
    (first, second), (engine, other_engine) = workers
    redis_server.stop()
    client = first.test_client()
    events = data_events(client.get("/chat/stream?prompt=hi").get_data(as_text=True))
    assert events[-1]["event"] == "finish" and text_of(events) == LONG  # the answer itself is unaffected

    rest = data_events(client.get("/chat/stream", headers={"Last-Event-ID": events[1]["id"]}).get_data(as_text=True))
    assert [e["id"] for e in rest] == [e["id"] for e in events[2:]]  # its own worker still resumes it

    elsewhere = data_events(second.test_client().get("/chat/stream", headers={"Last-Event-ID": events[1]["id"]})
                            .get_data(as_text=True))
    assert [e["event"] for e in elsewhere] == ["error"]
    error = json.loads(elsewhere[0]["data"])["error"]
    assert error["code"] == "resume_unavailable" and "unreachable" in error["message"]
    assert other_engine.submitted == [] and len(engine.submitted) == 1


def test_an_answer_kept_alive_only_by_the_shared_state_is_still_cancelled_after_the_grace(workers):
    """With no client anywhere, the owner cancels after the grace, as without Redis."""
    (first, _), (engine, _) = workers
    first.extensions["llm_api"].live.grace_seconds = 0.2
    engine.delay = 0.05
    response = first.test_client().get("/chat/stream?prompt=hi")
    head = read_sse(response, 2)
    response.close()
    message_id = head[0]["id"].split(":")[0]
    chat = first.extensions["llm_api"].chat
    stored = wait_until(lambda: chat.find_message(message_id), timeout=10)
    assert stored is not None and stored.finish_reason == "cancelled"


COOPERATION_CHECK = """
from gevent import monkey; monkey.patch_all()
import sys, time, gevent
from llm_api.services.shared_streams import SharedStreams
shared = SharedStreams(sys.argv[1], resume_seconds=5, heartbeat_seconds=1.0)
shared.publish("a" * 32, {"owner": "", "conversation_id": "b" * 32})
info = shared.lookup("a" * 32, "")
ticks = []
def follow():
    return next(iter(shared.follow(info, 0)))  # nothing published: a heartbeat after one blocking read
def ticker():
    for _ in range(10):
        ticks.append(time.monotonic()); gevent.sleep(0.05)
start = time.monotonic()
follower = gevent.spawn(follow)
gevent.joinall([follower, gevent.spawn(ticker)])
print(sum(1 for t in ticks if t - start < 0.9), round(time.monotonic() - start, 2), follower.value)
"""


def test_a_follower_waiting_on_redis_lets_other_greenlets_run(redis_server):
    """Under gevent's patching (as in the gunicorn worker), the blocking read of a follower on another worker
    must not stall the event loop, and it returns after one heartbeat so that a gone client is noticed."""
    result = subprocess.run([sys.executable, "-c", COOPERATION_CHECK, redis_server.url], capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    ticks_during_read, elapsed, item = result.stdout.split()
    assert int(ticks_during_read) == 10  # every tick ran while the read blocked
    assert float(elapsed) >= 1.0 and item == "None"  # the read waited one heartbeat, then a heartbeat is due
