"""GET /metrics: the counters, histograms and gauges, per app and across worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from llm_api import create_app
from llm_api.metrics import app_metrics
from tests.fakes import FakeEngine, wait_until
from tests.http import post
from tests.metrics import parse, scrape, value
from tests.servers import ROOT
from tests.sse import read_sse


def test_requests_are_counted_by_route_template_and_status(client):
    assert post(client, {"prompt": "hi"}).status_code == 200
    assert client.post("/chat/new/message/", data='{"prompt": "hi"}').status_code == 200  # same route
    assert post(client, {"prompt": 5}).status_code == 422
    assert client.get("/conversations/0123456789abcdef0123456789abcdef").status_code == 404
    assert client.get("/no/such/page").status_code == 404
    samples = scrape(client)
    requests = "llm_api_requests_total"
    assert value(samples, requests, route="/chat/new/message", method="POST", status="200") == 2
    assert value(samples, requests, route="/chat/new/message", method="POST", status="422") == 1
    # the route template, not the path: one series for every conversation id
    assert value(samples, requests, route="/conversations/<conversation_id>", method="GET", status="404") == 1
    assert value(samples, requests, route="unmatched", method="GET", status="404") == 1
    assert not any("/no/such/page" in str(labels) for _, labels in samples)
    assert value(scrape(client), requests, route="/metrics", method="GET", status="200") == 1  # the first scrape


def test_answers_feed_tokens_latencies_and_finish_reasons(client, fake_engine):
    for max_tokens in (None, 2):
        body = {"prompt": "two words"} if max_tokens is None else {"prompt": "two words", "max_tokens": max_tokens}
        assert post(client, body).status_code == 200
    samples = scrape(client)
    # the fake engine: 5 pieces (or max_tokens), ttft 0.01 s, total 0.02 s; the prompt is 2 words + 1 id
    assert value(samples, "llm_api_generated_tokens_total") == 5 + 2
    assert value(samples, "llm_api_prompt_tokens_total") == 3 + 3
    assert value(samples, "llm_api_time_to_first_token_seconds_count") == 2
    assert value(samples, "llm_api_time_to_first_token_seconds_sum") == pytest.approx(0.02)
    assert value(samples, "llm_api_time_to_first_token_seconds_bucket", le="0.01") == 2
    assert value(samples, "llm_api_time_per_output_token_seconds_count") == 2
    assert value(samples, "llm_api_time_per_output_token_seconds_sum") == pytest.approx(0.01 / 4 + 0.01 / 1)
    assert value(samples, "llm_api_answers_total", finish_reason="stop") == 1
    assert value(samples, "llm_api_answers_total", finish_reason="length") == 1
    assert value(samples, "llm_api_answers_total", finish_reason="cancelled") == 0
    assert value(samples, "llm_api_cancellations_total") == 0


def test_open_streams_are_a_gauge_and_a_dropped_one_counts_as_cancelled(client, fake_engine):
    fake_engine.delay = 0.02
    response = post(client, {"prompt": "hi", "stream": True})
    read_sse(response, 2)
    assert value(scrape(client), "llm_api_active_streams") == 1
    response.close()  # the client went away
    assert wait_until(lambda: value(scrape(client), "llm_api_cancellations_total") == 1)
    samples = scrape(client)
    assert value(samples, "llm_api_active_streams") == 0
    assert value(samples, "llm_api_answers_total", finish_reason="cancelled") == 1
    assert value(samples, "llm_api_requests_total", route="/chat/new/message", method="POST", status="200") == 1


def test_openai_streams_count_too(client):
    response = client.post("/v1/chat/completions", data=json.dumps(
        {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}))
    assert response.get_data(as_text=True).endswith("data: [DONE]\n\n")
    assert value(scrape(client), "llm_api_active_streams") == 1  # until the server closes the response
    response.close()
    samples = scrape(client)
    assert value(samples, "llm_api_active_streams") == 0
    assert value(samples, "llm_api_requests_total", route="/v1/chat/completions", method="POST", status="200") == 1
    assert value(samples, "llm_api_generated_tokens_total") == 5


def test_engine_gauges_are_read_when_scraped(client, fake_engine):
    fake_engine.queued = 3
    fake_engine.stats["running"] = 2
    fake_engine.load_seconds = 1.5
    samples = scrape(client)
    assert value(samples, "llm_api_queue_depth") == 3
    assert value(samples, "llm_api_running_batch_size") == 2
    assert value(samples, "llm_api_model_load_seconds") == 1.5
    fake_engine.queued = 0
    assert value(scrape(client), "llm_api_queue_depth") == 0


def test_rate_limit_rejections_by_limit(app, client):
    samples = scrape(client)
    for limit in ("requests", "tokens", "streams"):  # present before the first refusal
        assert ("llm_api_rate_limited_total", (("limit", limit),)) in samples
    app_metrics(app).rate_limited("tokens")
    app_metrics(app).rate_limited("tokens")
    app_metrics(app).rate_limited("streams")
    samples = scrape(client)
    assert value(samples, "llm_api_rate_limited_total", limit="tokens") == 2
    assert value(samples, "llm_api_rate_limited_total", limit="streams") == 1
    assert value(samples, "llm_api_rate_limited_total", limit="requests") == 0


def test_every_app_has_its_own_registry(settings):
    first = create_app(settings, engine=FakeEngine()).test_client()
    second = create_app(settings, engine=FakeEngine()).test_client()  # no "Duplicated timeseries"
    assert post(first, {"prompt": "hi"}).status_code == 200
    assert value(scrape(first), "llm_api_generated_tokens_total") == 5
    assert value(scrape(second), "llm_api_generated_tokens_total") == 0


# ---- several processes (gunicorn workers) sharing PROMETHEUS_MULTIPROC_DIR --------------------------------

_WORKER = textwrap.dedent("""
    import json, os, sys
    late = sys.argv[1] == "late"
    if late:  # prometheus_client imported before the variable is set, as a master importing it first would
        import prometheus_client  # noqa: F401
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ.pop("METRICS_DIR_LATER")
    from llm_api import create_app
    from llm_api.config import Settings
    from tests.fakes import FakeEngine
    engine = FakeEngine()
    settings = Settings.from_env({}, database_url="sqlite:///" + sys.argv[2], log_level="error")
    client = create_app(settings, engine=engine).test_client()
    for _ in range(int(sys.argv[3])):
        assert client.post("/chat/new/message", data='{"prompt": "hi"}').status_code == 200
    engine.queued = int(sys.argv[4])
    engine.load_seconds = float(sys.argv[5])
    assert client.get("/metrics").status_code == 200  # samples the engine gauges into this process's files
    print(json.dumps({"pid": os.getpid()}))
""")

_COLLECTOR = textwrap.dedent("""
    import sys
    from prometheus_client import multiprocess
    from llm_api import create_app
    from llm_api.config import Settings
    from tests.fakes import FakeEngine
    settings = Settings.from_env({}, database_url="sqlite:///" + sys.argv[1], log_level="error")
    client = create_app(settings, engine=FakeEngine()).test_client()
    sys.stdout.write(client.get("/metrics").get_data(as_text=True))
    sys.stdout.write("\\n# ---- after the first worker died ----\\n")
    multiprocess.mark_process_dead(int(sys.argv[2]))
    sys.stdout.write(client.get("/metrics").get_data(as_text=True))
""")


def _python(script: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out


def test_multiprocess_mode_adds_up_every_worker(tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    base = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env = dict(base, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    workers = [
        _python(_WORKER, ["early", str(tmp_path / "one.db"), "2", "3", "1.5"], env),
        _python(_WORKER, ["late", str(tmp_path / "two.db"), "3", "4", "2.5"],
                dict(base, METRICS_DIR_LATER=str(metrics_dir))),
    ]
    pids = [json.loads(_finish(worker).strip().splitlines()[-1])["pid"] for worker in workers]
    assert {p.name.split("_")[-1] for p in metrics_dir.glob("*.db")} >= {f"{pid}.db" for pid in pids}
    collected = _finish(_python(_COLLECTOR, [str(tmp_path / "collector.db"), str(pids[0])], env))
    before, after = (parse(part) for part in collected.split("# ---- after the first worker died ----"))

    assert value(before, "llm_api_requests_total", route="/chat/new/message", method="POST", status="200") == 5
    assert value(before, "llm_api_requests_total", route="/metrics", method="GET", status="200") == 2
    assert value(before, "llm_api_generated_tokens_total") == 5 * 5
    assert value(before, "llm_api_time_to_first_token_seconds_count") == 5
    assert value(before, "llm_api_time_to_first_token_seconds_bucket", le="+Inf") == 5
    assert value(before, "llm_api_answers_total", finish_reason="stop") == 5
    assert value(before, "llm_api_queue_depth") == 3 + 4  # livesum over the live processes
    assert value(before, "llm_api_model_load_seconds") == 2.5  # livemax
    # a dead worker's live gauges go (gunicorn's master does this in child_exit); its counters stay
    assert value(after, "llm_api_queue_depth") == 4
    assert value(after, "llm_api_model_load_seconds") == 2.5
    assert value(after, "llm_api_generated_tokens_total") == 5 * 5
