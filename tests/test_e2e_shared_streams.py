"""Any instance serves any stream: two gunicorn instances (the second with two workers) on one PostgreSQL
database and one Redis, behind a real nginx that balances round-robin, with no stickiness.

- a Chromium ``EventSource`` whose connection is cut mid-answer (nginx restarted) reconnects through nginx
  to the other instance and receives the rest of the same answer, generated once;
- Stop on the chat page reaches the instance that does not generate the answer, which stops it;
- an instance killed mid-answer (``SIGKILL``): the reconnect, served by the other instance, gets the events
  that were published and then ``generation_lost``; the database holds the user turn and the text sent,
  marked as lost.

Which instance served a request comes from nginx's access log (``$upstream_addr``); which one generates an
answer from each instance's ``llm_api_active_streams`` while the answer is streaming.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.browser import chromium_driver, wait_for
from tests.databases import RedisServer, fresh_postgres_database
from tests.nginx import Nginx
from tests.servers import LiveServer, free_port, kill_server, start_server, stop_server
from tests.sse import iter_sse, text_chunks

pytestmark = pytest.mark.e2e

LONG_PROMPT = "Write a very long story about a dragon and a knight."
MAX_TOKENS = 200  # several seconds of decoding on two CPU cores: still generating after a cut and a 3 s reconnect


class Topology:
    def __init__(self, instances: list[LiveServer], nginx: Nginx, redis_url: str) -> None:
        self.instances = instances
        self.nginx = nginx
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)

    def address(self, instance: LiveServer) -> str:
        return instance.url.removeprefix("http://")

    def generating(self) -> LiveServer:
        """The one instance with a stream open (the answer's owner while its client is attached)."""
        owners = [i for i in self.instances if i.process.poll() is None and active_streams(i) > 0]
        assert len(owners) == 1, [active_streams(i) for i in self.instances]
        return owners[0]

    def other(self, instance: LiveServer) -> LiveServer:
        return next(i for i in self.instances if i is not instance)

    def served(self, method: str, path: str, last_event_id: str | None = None) -> list[str]:
        """The upstream that answered each ``method path`` (with that ``Last-Event-ID``), in order: the last one
        nginx tried, after any that refused the connection."""
        lines = [line for line in self.nginx.access_log() if line.startswith(f"{method} {path} ")
                 and (last_event_id is None or line.endswith(f" last_event_id={last_event_id}"))]
        return [line.split(" upstream=")[1].split(" last_event_id=")[0].split(", ")[-1] for line in lines]

    def stored(self, message_id: str) -> tuple[dict, list[dict]]:
        """The stored answer ``message_id`` and every message of its conversation (through nginx)."""
        found = [m for m in requests.get(f"{self.nginx.url}/chat/get/messages?limit=100", timeout=30)
                 .json()["messages"] if m["message_id"] == message_id]
        assert len(found) == 1, found
        messages = requests.get(f"{self.nginx.url}/conversations/{found[0]['conversation_id']}", timeout=30
                                ).json()["messages"]
        return found[0], messages

    def stream_keys(self) -> set[str]:
        return set(self.redis.scan_iter("llm_api/streams/*/events"))


def active_streams(instance: LiveServer) -> float:
    text = requests.get(f"{instance.url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "llm_api_active_streams" for sample in family.samples)


@pytest.fixture(scope="module")
def topology(tmp_path_factory) -> Iterator[Topology]:
    redis_server = RedisServer(free_port())
    redis_server.start()
    with fresh_postgres_database() as database_url:
        env = {"LLM_API_DATABASE_URL": database_url, "LLM_API_REDIS_URL": redis_server.url,
               "LLM_API_DISCONNECT_GRACE_SECONDS": "5", "LLM_API_RESUME_SECONDS": "120"}
        instances: list[LiveServer] = []
        nginx = None
        try:  # the first instance alone creates the schema; then the second, with two workers
            instances.append(start_server(tmp_path_factory.mktemp("instance-a"), env))
            instances.append(start_server(tmp_path_factory.mktemp("instance-b"), {**env, "LLM_API_WORKERS": "2"}))
            nginx = Nginx(free_port(), [i.url.removeprefix("http://") for i in instances])
            nginx.start()
            yield Topology(instances, nginx, redis_server.url)
        finally:
            if nginx is not None:
                nginx.remove()
            for instance in instances:
                if instance.process.poll() is None:
                    stop_server(instance)
            redis_server.stop()


@pytest.fixture(scope="module")
def browser():
    driver = chromium_driver()
    yield driver
    driver.quit()


# An EventSource that records what it receives: each message's id and data, the finish, and any error event.
LISTEN = """
window.got = []; window.errors = [];
const source = new EventSource(arguments[0]);
window.source = source;
source.onmessage = (e) => window.got.push({id: e.lastEventId, data: JSON.parse(e.data)});
source.addEventListener('finish', (e) => {
  window.finish = {id: e.lastEventId, data: JSON.parse(e.data)}; source.close();
});
source.addEventListener('error', (e) => { window.errors.push(e.data || 'dropped:' + source.readyState); });
"""


def test_an_eventsource_cut_mid_answer_resumes_on_the_other_instance(topology, browser):
    tag = uuid.uuid4().hex[:8]
    browser.get(f"{topology.nginx.url}/healthz")  # any page of the origin: the EventSource is same-origin
    query = "/chat/stream?" + urlencode({"prompt": f"{LONG_PROMPT} ({tag})", "max_tokens": MAX_TOKENS,
                                         "temperature": 0})
    browser.execute_script(LISTEN, query)
    wait_for(lambda: browser.execute_script("return window.got.length") >= 5)
    owner = topology.generating()
    other = topology.other(owner)

    # Cut: nginx stops (closing every connection) and comes back with the other instance first, where a fresh
    # round-robin sends the EventSource's automatic reconnect.
    topology.nginx.stop()
    cut_at = browser.execute_script("return window.got.length")
    topology.nginx.start([topology.address(other), topology.address(owner)])

    finish = wait_for(lambda: browser.execute_script("return window.finish"), timeout=600)  # a loaded machine
    got = browser.execute_script("return window.got")
    message_id = finish["data"]["message_id"]
    resumed = wait_for(lambda: [line for line in topology.nginx.access_log() if f"last_event_id={message_id}:" in line],
                       timeout=10)  # nginx writes a request's line just after its last byte
    assert resumed and resumed[0].split(" upstream=")[1].split(" ")[0] == topology.address(other), resumed
    assert any(e.startswith("dropped") for e in browser.execute_script("return window.errors"))
    assert len(got) > cut_at  # events arrived after the cut, from the other instance

    ids = [event["id"] for event in got] + [finish["id"]]
    assert ids == [f"{message_id}:{n}" for n in range(1, len(ids) + 1)]  # each event once, none missing
    answer, messages = topology.stored(message_id)
    assert finish["data"]["finish_reason"] == answer["finish_reason"] != "cancelled"  # the follower counted as a client
    assert "".join(event["data"]["text"] for event in got) == answer["response"]
    # Generated once: one user turn and one answer in its conversation, and no other conversation for the prompt.
    assert [m["role"] for m in messages] == ["user", "assistant"]
    asked = [m for m in requests.get(f"{topology.nginx.url}/chat/get/messages?limit=100", timeout=30)
             .json()["messages"] if tag in m["prompt"]]
    assert len(asked) == 1
    assert sum(f"message_id={message_id}" in i.log() and "exchange" in i.log() for i in topology.instances) == 1


def test_stop_on_the_chat_page_stops_an_answer_generated_by_the_other_instance(topology, browser):
    tag = uuid.uuid4().hex[:8]
    browser.get(f"{topology.nginx.url}/")
    before = topology.stream_keys()
    prompt = browser.find_element("id", "prompt")
    prompt.clear()
    prompt.send_keys(f"{LONG_PROMPT} ({tag})")
    browser.find_element("id", "send").click()
    key = wait_for(lambda: next(iter(topology.stream_keys() - before), None))
    wait_for(lambda: topology.redis.xlen(key) >= 3)  # the answer is streaming
    owner = topology.generating()
    message_id = key.split("{")[1].split("}")[0]

    browser.find_element("id", "stop").click()

    def stored():
        found = [m for m in requests.get(f"{topology.nginx.url}/chat/get/messages?limit=100", timeout=30)
                 .json()["messages"] if m["message_id"] == message_id]
        return found[0] if found else None

    answer = wait_for(stored, timeout=60)
    assert answer["finish_reason"] == "cancelled" and tag in answer["prompt"]
    assert answer["usage"]["completion_tokens"] < MAX_TOKENS
    stop = wait_for(lambda: topology.served("DELETE", f"/chat/stream/{message_id}"), timeout=10)
    assert stop == [topology.address(topology.other(owner))]
    assert f"message {message_id}: cancelled from another worker" in owner.log()  # the Stop, not the grace


def test_an_instance_killed_mid_answer_is_reported_by_the_other_and_stored_as_lost(topology):
    tag = uuid.uuid4().hex[:8]
    response = requests.get(f"{topology.nginx.url}/chat/stream", stream=True, timeout=60, params={
        "prompt": f"{LONG_PROMPT} ({tag})", "max_tokens": MAX_TOKENS, "temperature": 0})
    first: list[dict] = []
    events = iter_sse(text_chunks(response))
    while len(first) < 5:
        event = next(events)
        if event["data"]:
            first.append(event)
    owner = topology.generating()
    kill_server(owner)
    response.close()

    message_id = first[-1]["id"].split(":")[0]
    again = requests.get(f"{topology.nginx.url}/chat/stream", headers={"Last-Event-ID": first[-1]["id"]},
                         stream=True, timeout=60)
    assert again.status_code == 200
    rest = [e for e in iter_sse(text_chunks(again)) if e["data"]]
    # nginx writes a request's line just after its last byte: wait for it.
    served = wait_for(lambda: topology.served("GET", "/chat/stream", first[-1]["id"]), timeout=10)
    assert served == [topology.address(topology.other(owner))]

    *published, lost = rest
    assert lost["event"] == "error"
    error = json.loads(lost["data"])["error"]
    assert error["code"] == "generation_lost"
    ids = [e["id"] for e in first + rest]
    assert ids == [f"{message_id}:{n}" for n in range(1, len(ids) + 1)]
    text = "".join(json.loads(e["data"])["text"] for e in first + published)

    answer, messages = topology.stored(message_id)
    assert error["details"] == {"message_id": message_id, "conversation_id": answer["conversation_id"]}
    assert [m["role"] for m in messages] == ["user", "assistant"]  # the user turn was kept
    assert tag in messages[0]["content"]
    assert answer["finish_reason"] == "error" and answer["response"] == text  # the text sent, marked as lost
    assert messages[1]["error"].startswith("generation_lost")
