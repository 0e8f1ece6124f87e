"""Load shedding: the wait estimate (work queued ahead at the measured decode rate), and the 503 ``overloaded``
that a request expected to wait longer than LLM_API_MAX_QUEUE_WAIT gets at once, on a slow queueing engine."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import replace

import gevent
import pytest
from gevent.event import Event

from llm_api import create_app
from llm_api.generation.backlog import Backlog, RateMeter
from llm_api.generation.handle import GenerationHandle
from llm_api.generation.types import Finished, TextDelta, Usage
from tests.fakes import FakeEngine, wait_until
from tests.http import assert_error, post

# ---- the estimate ---------------------------------------------------------------------------------------


def test_no_wait_while_a_batch_slot_is_free_for_every_waiting_request():
    backlog = Backlog(waiting=2, waiting_max_tokens=1000, running_max_tokens=500, free_slots=3,
                      tokens_per_second=10.0)
    assert backlog.wait_seconds() == 0.0


def test_the_wait_is_the_work_ahead_at_the_measured_rate_scaled_by_the_fill():
    full = Backlog(waiting=4, waiting_max_tokens=400, running_max_tokens=100, free_slots=0,
                   tokens_per_second=50.0, fill=1.0)
    assert full.wait_seconds() == pytest.approx(10.0)
    assert Backlog(waiting=4, waiting_max_tokens=400, running_max_tokens=100, free_slots=0,
                   tokens_per_second=50.0, fill=0.25).wait_seconds() == pytest.approx(2.5)


def test_nothing_is_estimated_before_a_rate_was_measured():
    assert Backlog(waiting=100, waiting_max_tokens=10_000, free_slots=0).wait_seconds() == 0.0
    assert Backlog().wait_seconds() == 0.0  # an upstream's: unknown


def test_the_rate_meter_follows_the_steps_and_the_fill_the_answers():
    meter = RateMeter(smoothing=0.5)
    assert meter.tokens_per_second is None and meter.fill == 1.0
    meter.step(8, 0.1)  # the first measurement is taken whole
    assert meter.tokens_per_second == pytest.approx(80.0)
    meter.step(8, 0.2)  # then a moving average
    assert meter.tokens_per_second == pytest.approx(60.0)
    meter.step(0, 0.1)  # an empty step teaches nothing
    assert meter.tokens_per_second == pytest.approx(60.0)
    meter.answer(25, 100)  # the first answer is taken whole
    assert meter.fill == pytest.approx(0.25)
    meter.answer(100, 100)
    assert meter.fill == pytest.approx(0.625)
    meter.answer(500, 100)  # never above 1
    assert 0.625 < meter.fill <= 1.0


# ---- over HTTP, on a slow engine with a real queue --------------------------------------------------------

SECONDS_PER_TOKEN = 0.03
MAX_TOKENS = 20


class QueueingEngine(FakeEngine):
    """A slow engine with one batch row and a queue: requests run one after the other, a token every
    ``SECONDS_PER_TOKEN`` seconds (its measured rate is that nominal one, so the estimate does not depend
    on how busy the test machine is); it reports its backlog like the local engine."""

    def __init__(self) -> None:
        super().__init__(context_length=4096)
        self.inbox: deque[GenerationHandle] = deque()
        self.running: GenerationHandle | None = None
        self.meter = RateMeter()
        self.wake = Event()
        self.worker = gevent.spawn(self._serve)

    def submit(self, request_id, prompt_ids, params, **text_and_trace):
        handle = GenerationHandle(self._request(request_id, prompt_ids, params), self._channel(), lambda: None)
        self.submitted.append(handle.request)
        self.inbox.append(handle)
        self.wake.set()
        return handle

    def backlog(self) -> Backlog:
        running_left = 0 if self.running is None else self.running.request.params.max_tokens - self.sent
        return Backlog(waiting=len(self.inbox), waiting_max_tokens=sum(h.request.params.max_tokens for h in self.inbox),
                       running_max_tokens=running_left, free_slots=0 if self.running else 1,
                       tokens_per_second=self.meter.tokens_per_second, fill=self.meter.fill)

    @staticmethod
    def _request(request_id, prompt_ids, params):
        from llm_api.generation.types import GenerationRequest

        return GenerationRequest(request_id, list(prompt_ids), params)

    @staticmethod
    def _channel():
        from llm_api.generation.channel import Channel

        return Channel()

    def _serve(self) -> None:
        while True:
            if not self.inbox:
                self.wake.clear()
                self.wake.wait()
                continue
            self.running, self.sent = self.inbox.popleft(), 0
            handle, params = self.running, self.running.request.params
            while self.sent < params.max_tokens and not handle.cancelled:
                gevent.sleep(SECONDS_PER_TOKEN)
                handle.channel.put(TextDelta(f" w{self.sent}"))
                self.sent += 1
                self.meter.step(1, SECONDS_PER_TOKEN)
            reason = "cancelled" if handle.cancelled else "length"
            self.meter.answer(self.sent, params.max_tokens)
            self.running = None
            handle.channel.put(Finished(reason, Usage(len(handle.request.prompt_ids), self.sent), 0.0, 0.0))


@pytest.fixture
def queueing_engine():
    engine = QueueingEngine()
    yield engine
    engine.worker.kill()


def test_a_request_expected_to_wait_too_long_gets_503_at_once_and_is_accepted_when_the_queue_drains(
        settings, queueing_engine):
    # Two apps over one engine: the queue is filled through one without a limit, the other sheds.
    unlimited = create_app(settings, engine=queueing_engine).test_client()
    client = create_app(replace(settings, max_queue_wait=0.5), engine=queueing_engine).test_client()
    body = {"prompt": "hi", "max_tokens": MAX_TOKENS}
    assert post(client, body).status_code == 200  # alone: no wait; the engine measures its rate meanwhile
    assert queueing_engine.meter.tokens_per_second == pytest.approx(1 / SECONDS_PER_TOKEN)

    # One request runs, four wait: about 4 x 20 + (up to 20) tokens ahead at 33 tokens/s, 2.4 to 3 s > 0.5 s.
    queued = [gevent.spawn(post, unlimited, body) for _ in range(5)]
    assert wait_until(lambda: len(queueing_engine.inbox) == 4 and queueing_engine.running is not None)
    submitted = len(queueing_engine.submitted)
    refused = post(client, body)
    error = assert_error(refused, 503, "overloaded")
    estimate = error["details"]["estimated_wait_seconds"]
    assert 4 * MAX_TOKENS * SECONDS_PER_TOKEN <= estimate <= 5 * MAX_TOKENS * SECONDS_PER_TOKEN + 0.1
    assert error["details"]["max_queue_wait_seconds"] == 0.5
    assert int(refused.headers["Retry-After"]) == max(1, math.ceil(estimate - 0.5))
    assert 2 <= int(refused.headers["Retry-After"]) <= 3
    # At once: it was never queued, and every request ahead of it is still unanswered.
    assert len(queueing_engine.submitted) == submitted
    assert not any(greenlet.ready() for greenlet in queued)
    # The same on the OpenAI-compatible API, in its shape.
    openai = client.post("/v1/chat/completions", json={"model": "fake-model", "max_tokens": MAX_TOKENS,
                                                       "messages": [{"role": "user", "content": "hi"}]})
    assert openai.status_code == 503 and openai.get_json()["error"]["code"] == "overloaded"
    assert openai.get_json()["error"]["type"] == "server_error" and int(openai.headers["Retry-After"]) >= 1
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "llm_api_shed_requests_total 2.0" in metrics

    # As the queue drains, the estimate falls under the limit and requests are taken again.
    gevent.joinall(queued, timeout=30)
    assert all(g.value.status_code == 200 for g in queued)
    assert queueing_engine.backlog().wait_seconds() == 0.0
    assert post(client, body).status_code == 200


def test_off_by_default_a_long_queue_only_waits(settings, queueing_engine):
    app = create_app(settings, engine=queueing_engine)
    client = app.test_client()
    body = {"prompt": "hi", "max_tokens": 3}
    assert post(client, body).status_code == 200
    queued = [gevent.spawn(post, client, body) for _ in range(4)]
    assert wait_until(lambda: len(queueing_engine.inbox) == 3)
    assert queueing_engine.backlog().wait_seconds() > 0
    assert post(client, body).status_code == 200  # waited its turn
    gevent.joinall(queued, timeout=30)
    assert all(g.value.status_code == 200 for g in queued)
