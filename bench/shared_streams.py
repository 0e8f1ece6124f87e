"""Streams shared through Redis: how long a dropped stream takes to resume on the other instance, against the
same instance, and what two instances behind nginx (round-robin) give against one, side by side in ONE run.

Usage:  python -m bench.shared_streams [--trials 40] [--streams 8] [--tokens 64] [--rounds 2]

Two gunicorn instances (one worker each) share one SQLite file and one Redis (``redis-server`` from
Debian's package); nginx (Debian's ``nginx-light``) is started as in the end-to-end test.

- **Resume latency**: a ``GET /chat/stream`` answer is read for 2 events from instance A, then the
  connection is dropped and the client reconnects at once with the first event's id as ``Last-Event-ID``
  (as if event 2 had been generated while it was away), alternately to A (the events come from
  the worker's memory) and to B (from Redis). Measured: from the drop to the first resumed event
  (event 2, checked to be the same), p50 and p99. The answer is then stopped (``DELETE``, through the
  instance that resumed it) so that every trial starts on an idle engine.
- **Throughput**: ``--streams`` concurrent OpenAI streams of ``--tokens`` tokens each (``ignore_eos``)
  through nginx with one instance in its ``upstream``, then with both, ``--rounds`` times alternately.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

import requests

from bench.run import CACHE, RESULTS, free_port, load, machine, ours, percentile
from tests.databases import RedisServer
from tests.nginx import Nginx
from tests.sse import iter_sse, text_chunks


def first_data_event(response: requests.Response) -> dict:
    for event in iter_sse(text_chunks(response)):
        if event["data"]:
            return event
    raise RuntimeError("the resumed stream sent no event")


def resume_once(start_url: str, resume_url: str, n: int, tokens: int) -> float:
    """Seconds from dropping a stream on ``start_url`` to the first event of its resumption on ``resume_url``."""
    params = {"prompt": f"Tell me a long story about a lighthouse keeper, number {n}.", "max_tokens": tokens,
              "temperature": 0.7}
    response = requests.get(f"{start_url}/chat/stream", params=params, stream=True, timeout=120)
    seen = []
    for event in iter_sse(text_chunks(response)):
        if event["data"]:
            seen.append(event)
            if len(seen) == 2:
                break
    response.close()
    dropped = time.perf_counter()
    # The client missed event 2, as a client misses what was generated while it was away: the first
    # resumed event exists already, so the time measured is the resumption's, not the next token's.
    with requests.get(f"{resume_url}/chat/stream", headers={"Last-Event-ID": seen[0]["id"]}, stream=True,
                      timeout=120) as again:
        event = first_data_event(again)
        latency = time.perf_counter() - dropped
        message_id = event["id"].split(":")[0]
        assert event["id"] == seen[1]["id"] and event["data"] == seen[1]["data"]
        # Stop it (through the instance that resumed it) and read to the end: the next trial starts on an idle
        # engine.
        assert requests.delete(f"{resume_url}/chat/stream/{message_id}", timeout=30).status_code in (204, 404)
        for _ in iter_sse(text_chunks(again)):
            pass
    return latency


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"p50_ms": round(percentile(ms, 0.5) or 0, 1), "p99_ms": round(percentile(ms, 0.99) or 0, 1),
            "mean_ms": round(statistics.mean(ms), 1), "n": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40, help="resumptions per side (same / other instance)")
    parser.add_argument("--resume-tokens", type=int, default=16, help="max_tokens of each resumed answer")
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    redis_server = RedisServer(free_port())
    redis_server.start()
    database = f"sqlite:///{tempfile.mkdtemp(prefix='llm-api-bench-', dir=CACHE)}/shared.sqlite3"
    env = {"LLM_API_DATABASE_URL": database, "LLM_API_REDIS_URL": redis_server.url, "LLM_API_WORKERS": "1"}
    servers = []
    nginx = None
    try:
        servers.append(ours(env, name="llm_api-a"))  # the first alone: it creates the schema
        servers.append(ours(env, name="llm_api-b"))
        a, b = servers
        same, other = [], []
        for n in range(args.trials * 2):
            (same if n % 2 == 0 else other).append(resume_once(a.url, a.url if n % 2 == 0 else b.url, n,
                                                               args.resume_tokens))
            print(f"  resumed {n + 1} of {args.trials * 2}", flush=True)
        resume = {"same_instance": summary(same), "other_instance": summary(other)}
        print(f"resume latency (drop -> first resumed event): {json.dumps(resume)}", flush=True)

        nginx = Nginx(free_port(), [a.url.removeprefix("http://")])
        extra = {"ignore_eos": True}
        one, two = [], []
        for _ in range(args.rounds):
            for upstreams, into in (([a], one), ([a, b], two)):
                nginx.stop()
                nginx.start([s.url.removeprefix("http://") for s in upstreams])
                print(f"  through nginx, {len(upstreams)} instance(s):", flush=True)
                into.append(load(nginx.url, args.streams, args.tokens, extra))
        throughput: dict[str, Any] = {
            "one_instance_tps": round(statistics.mean(r["aggregate_tps"] for r in one), 1),
            "two_instances_tps": round(statistics.mean(r["aggregate_tps"] for r in two), 1),
            "runs": {"one": one, "two": two},
        }
        throughput["ratio"] = round(throughput["two_instances_tps"] / throughput["one_instance_tps"], 2)
        print(f"throughput, {args.streams} streams x {args.tokens} tokens: one instance "
              f"{throughput['one_instance_tps']} tok/s, two {throughput['two_instances_tps']} tok/s "
              f"(x{throughput['ratio']})", flush=True)
    finally:
        if nginx is not None:
            nginx.remove()
        for server in servers:
            server.stop()
        redis_server.stop()

    result = {"started": started_at, "machine": machine(), "load_average": os.getloadavg(), "args": vars(args),
              "resume": resume, "throughput": throughput}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"shared-streams-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
