"""Prometheus metrics for ``GET /metrics``.

Two modes, chosen by ``PROMETHEUS_MULTIPROC_DIR``:

- **One process** (the variable is unset: tests, ``flask run``). Each app has its
  own :class:`Metrics` on its own ``CollectorRegistry``, so many apps in one
  process never collide, and ``/metrics`` renders that registry.
- **Several gunicorn workers** (gunicorn.conf.py sets the variable in the master
  before forking). prometheus_client then keeps every value in per-process files
  in that directory, whatever registry a metric is created on. Each worker creates
  its metric objects once (:func:`metrics_for_app` caches them by process id),
  and ``/metrics`` on any worker adds up the files of all workers with
  ``MultiProcessCollector``. Gauges say how: ``livesum`` (summed over the live
  workers) or ``livemax``. The master drops a dead worker's live gauges
  (``child_exit`` calls :func:`prometheus_client.multiprocess.mark_process_dead`).

prometheus_client is only ever called from greenlets of the worker's main thread,
never from the engine thread: engine values (queue depth, running batch, load
time) are plain attributes that :meth:`Metrics.observe_engine` samples when
``/metrics`` is scraped, and every second in multi-process mode, so the other
workers' gauges stay fresh too.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import TYPE_CHECKING, Any

import gevent
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as _values
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from flask import Flask

    from .generation.types import Finished
    from .routing import EngineRouter
    from .storage import Message

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The text exposition format that generate_latest writes (prometheus_client's own default answer).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
EXTENSION_KEY = "llm_api.metrics"
SAMPLE_SECONDS = 1.0
UNMATCHED_ROUTE = "unmatched"  # the route label of a request that matched no route (404, 405)
RATE_LIMITS = ("requests", "tokens", "streams")
FINISH_REASONS = ("stop", "length", "cancelled", "timeout", "error", "content_filter", "repetition")
GUARD_REASONS = ("content_filter", "repetition")  # answers the output guard stopped

CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}  # llm_api_circuit_state (engines/breaker.py)

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
EMBEDDING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def multiprocess_enabled() -> bool:
    """True when ``PROMETHEUS_MULTIPROC_DIR`` is set: metric values then go to files in that directory."""
    if not os.environ.get(MULTIPROC_ENV):
        return False
    if not getattr(_values.ValueClass, "_multiprocess", False):
        # prometheus_client picks its value class when first imported; here that was before the variable
        # was set (something imported it in gunicorn's master first). Pick again, so that the metrics
        # created from now on write to the directory.
        _values.ValueClass = _values.get_value_class()
    return True


class Metrics:
    """The metric objects, and the few calls the rest of the service makes on them."""

    def __init__(self, registry: CollectorRegistry | None, *, multiprocess: bool = False) -> None:
        self.registry = registry
        self.multiprocess = multiprocess
        on: dict[str, Any] = {"registry": registry}
        self.requests = Counter("llm_api_requests", "HTTP requests, by route, method and status.",
                                ["route", "method", "status"], **on)
        self.time_to_first_token = Histogram(
            "llm_api_time_to_first_token_seconds", "Seconds from admission to the first generated token.",
            buckets=TTFT_BUCKETS, **on)
        self.time_per_output_token = Histogram(
            "llm_api_time_per_output_token_seconds",
            "Mean seconds per generated token after the first, one observation per answer.",
            buckets=TPOT_BUCKETS, **on)
        self.generated_tokens = Counter("llm_api_generated_tokens", "Tokens generated (completion tokens).", **on)
        self.prompt_tokens = Counter("llm_api_prompt_tokens", "Prompt tokens of answered requests.", **on)
        self.answers = Counter("llm_api_answers", "Answers, by finish reason.", ["finish_reason"], **on)
        self.cancellations = Counter("llm_api_cancellations",
                                     "Answers cancelled (client gone, or the engine stopping).", **on)
        self.output_guard_stops = Counter("llm_api_output_guard_stops",
                                          "Answers the output guard stopped, by reason.", ["reason"], **on)
        self.degraded_answers = Counter("llm_api_degraded_answers",
                                        "Answers given by a fallback engine or the static degraded answer, by engine.",
                                        ["engine"], **on)
        self.circuit_state = Gauge("llm_api_circuit_state",
                                   "Each engine's circuit breaker: 0 closed, 1 half-open, 2 open (the worst worker's).",
                                   ["engine"], multiprocess_mode="livemax", **on)
        self.rate_limited_requests = Counter("llm_api_rate_limited", "Requests refused by a rate limit, by limit.",
                                             ["limit"], **on)
        self.queue_depth = Gauge("llm_api_queue_depth", "Requests waiting for a batch slot.",
                                 multiprocess_mode="livesum", **on)
        self.queue_wait = Gauge("llm_api_queue_wait_seconds",
                                "Estimated wait of a request submitted now (the longest of the workers').",
                                multiprocess_mode="livemax", **on)
        self.shed_requests = Counter("llm_api_shed_requests",
                                     "Requests refused at once (503 overloaded): their estimated wait exceeded "
                                     "LLM_API_MAX_QUEUE_WAIT.", **on)
        self.running_batch_size = Gauge("llm_api_running_batch_size", "Sequences in the running batch.",
                                        multiprocess_mode="livesum", **on)
        self.prefix_tokens_reused = Gauge(
            "llm_api_prefix_tokens_reused", "Prompt tokens whose KV state was reused instead of run again (prefix "
            "reuse), since each worker's engine started.", multiprocess_mode="livesum", **on)
        self.active_streams = Gauge("llm_api_active_streams", "Streamed (SSE) responses now open.",
                                    multiprocess_mode="livesum", **on)
        self.model_load_seconds = Gauge("llm_api_model_load_seconds",
                                        "Seconds the model took to load (the slowest worker's).",
                                        multiprocess_mode="livemax", **on)
        self.embedding_requests = Counter("llm_api_embedding_requests", "Embedding requests answered, by model.",
                                          ["model"], **on)
        self.embedding_inputs = Counter("llm_api_embedding_inputs", "Inputs embedded, by model.", ["model"], **on)
        self.embedding_tokens = Counter("llm_api_embedding_tokens", "Tokens embedded (special tokens included), "
                                        "by model.", ["model"], **on)
        self.embedding_seconds = Histogram("llm_api_embedding_seconds",
                                           "Seconds from an embedding request's admission to its vectors.",
                                           buckets=EMBEDDING_BUCKETS, **on)
        for limit in RATE_LIMITS:  # present (at 0) before the first refusal, for dashboards and alerts
            self.rate_limited_requests.labels(limit=limit)
        for reason in FINISH_REASONS:
            self.answers.labels(finish_reason=reason)
        for reason in GUARD_REASONS:
            self.output_guard_stops.labels(reason=reason)
        self._sampled: weakref.WeakSet[EngineRouter] = weakref.WeakSet()

    # ---- calls from the rest of the service --------------------------------------------------------
    def request_finished(self, route: str | None, method: str, status: int) -> None:
        self.requests.labels(route=route or UNMATCHED_ROUTE, method=method, status=str(status)).inc()

    def rate_limited(self, limit: str) -> None:
        """A request was refused by the rate limit ``limit``: ``requests``, ``tokens`` or ``streams``."""
        self.rate_limited_requests.labels(limit=limit).inc()

    def shed(self) -> None:
        """A request was refused with 503 ``overloaded`` (load shedding)."""
        self.shed_requests.inc()

    def stream_opened(self) -> None:
        self.active_streams.inc()

    def stream_closed(self) -> None:
        self.active_streams.dec()

    def answer(self, message: Message, finished: Finished) -> None:
        """One stored answer (ChatService's ``on_answer`` hook): tokens, latencies, how it ended, and
        which engine gave it (a fallback's answer counts as degraded)."""
        if finished.engine and finished.degraded:
            self.degraded_answers.labels(engine=finished.engine).inc()
        usage = message.usage or {}
        completion = int(usage.get("completion_tokens") or 0)
        self.prompt_tokens.inc(int(usage.get("prompt_tokens") or 0))
        self.generated_tokens.inc(completion)
        reason = message.finish_reason or "unknown"
        self.answers.labels(finish_reason=reason).inc()
        if reason == "cancelled":
            self.cancellations.inc()
        if reason in GUARD_REASONS:
            self.output_guard_stops.labels(reason=reason).inc()
        ttft = message.time_to_first_token
        if ttft is not None:
            self.time_to_first_token.observe(ttft)
            if completion > 1 and message.total_time is not None and message.total_time >= ttft:
                self.time_per_output_token.observe((message.total_time - ttft) / (completion - 1))

    def embedded(self, model: str, inputs: int, tokens: int, seconds: float) -> None:
        """One answered embeddings request (EmbeddingService's ``on_embedded`` hook)."""
        self.embedding_requests.labels(model=model).inc()
        self.embedding_inputs.labels(model=model).inc(inputs)
        self.embedding_tokens.labels(model=model).inc(tokens)
        self.embedding_seconds.observe(seconds)

    def observe_engine(self, engine: EngineRouter) -> None:
        """Copy the engine's plain attributes into the gauges (never called from the engine thread)."""
        for name, state in engine.circuits.items():
            self.circuit_state.labels(engine=name).set(CIRCUIT_STATES.get(state, 0))
        self.queue_depth.set(engine.queued)
        self.queue_wait.set(engine.backlog().wait_seconds())
        self.running_batch_size.set(engine.stats.get("running", 0))
        self.prefix_tokens_reused.set(engine.stats.get("prefix_tokens_reused", 0))
        load_seconds = engine.load_seconds
        if load_seconds is not None:
            self.model_load_seconds.set(load_seconds)

    def sample_engine_every(self, engine: EngineRouter, seconds: float = SAMPLE_SECONDS) -> None:
        """Keep ``observe_engine(engine)`` running on a greenlet, so that a scrape answered by another
        worker sees this worker's gauges; the greenlet ends when the engine is gone. Idempotent."""
        if engine in self._sampled:
            return
        self._sampled.add(engine)
        gevent.spawn(_sample_loop, weakref.ref(self), weakref.ref(engine), seconds)

    # ---- exposition --------------------------------------------------------------------------------
    def render(self) -> bytes:
        """The text exposition: this app's registry, or in multi-process mode every worker's files."""
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        assert self.registry is not None
        return generate_latest(self.registry)


def _sample_loop(metrics_ref: weakref.ref[Metrics], engine_ref: weakref.ref[EngineRouter], seconds: float) -> None:
    while True:
        metrics, engine = metrics_ref(), engine_ref()
        if metrics is None or engine is None:
            return
        try:
            metrics.observe_engine(engine)
        except Exception:  # a sampling error must never end the worker's other work
            log.exception("could not sample the engine's metrics")
        del metrics, engine
        gevent.sleep(seconds)


_process_metrics: dict[int, Metrics] = {}


def new_metrics() -> Metrics:
    """A :class:`Metrics` for one app: its own registry, or in multi-process mode this process's one set."""
    if multiprocess_enabled():
        pid = os.getpid()
        if pid not in _process_metrics:  # the values live in this process's files: one set of objects each
            _process_metrics.clear()  # a forked child drops its parent's objects
            _process_metrics[pid] = Metrics(None, multiprocess=True)
        return _process_metrics[pid]
    return Metrics(CollectorRegistry(auto_describe=True))


def install(app: Flask, engine: EngineRouter) -> Metrics:
    """Give ``app`` its metrics; in multi-process mode also start sampling ``engine`` every second."""
    metrics = new_metrics()
    app.extensions[EXTENSION_KEY] = metrics
    if metrics.multiprocess:
        metrics.sample_engine_every(engine)
    return metrics


def app_metrics(app: Flask) -> Metrics:
    return app.extensions[EXTENSION_KEY]


def current_metrics() -> Metrics:
    """The metrics of the app handling the current request (``current_metrics().rate_limited("tokens")``)."""
    from flask import current_app

    return app_metrics(current_app)
