"""Graceful shutdown: what the application does while its worker drains.

The gunicorn worker (:mod:`llm_api.worker`) calls :func:`drain` when it gets
SIGTERM. From that moment every new request is answered 503 ``shutting_down``
with ``Retry-After`` (:func:`refuse_while_draining`), ``/readyz`` included, except
on the routes that declare themselves served while draining: ``/healthz`` stays
200, ``/metrics`` answers, and ``GET /chat/stream`` reconnects replay. Running
answers get until shortly before the graceful timeout to finish by themselves;
those still running then are interrupted: they end with an error
``shutting_down`` instead of their finish, and are stored as ``cancelled`` with
the text generated so far.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import request

from .errors import SHUTTING_DOWN, shutting_down
from .route_policy import current_policy
from .state import Services, services

log = logging.getLogger("llm_api.shutdown")

# Kept back from the graceful timeout, so that interrupted answers can still send their error event
# and be stored before gunicorn's master kills the worker.
MAX_MARGIN_SECONDS = 5.0
# After SIGQUIT/SIGINT (gunicorn's quick shutdown): how long interrupted answers get to be stored.
QUICK_FLUSH_SECONDS = 1.0
INTERRUPTED_MESSAGE = "The server is shutting down; the answer was stopped here and stored as cancelled."


@dataclass(frozen=True)
class DrainPlan:
    """How long running answers may take to finish by themselves, then how long interrupted ones get to flush."""

    wait_seconds: float
    flush_seconds: float


def drain_plan(graceful_timeout: float) -> DrainPlan:
    """Interrupt at ``graceful_timeout`` minus a margin (at most 5 s, a third of a short timeout), and give
    interrupted answers half that margin to be stored; the rest covers the worker's own exit."""
    margin = min(MAX_MARGIN_SECONDS, graceful_timeout / 3)
    return DrainPlan(wait_seconds=max(0.0, graceful_timeout - margin), flush_seconds=margin / 2)


def drain(state: Services, plan: DrainPlan) -> int:
    """Refuse new work, wait for running answers, interrupt what still runs; returns how many were interrupted."""
    state.begin_drain()
    running = state.chat.running
    log.info("graceful shutdown: refusing new requests; waiting up to %.1fs for %d running answer(s)",
             plan.wait_seconds, running)
    if state.chat.wait_idle(plan.wait_seconds):
        state.chat.interrupt_all(SHUTTING_DOWN, INTERRUPTED_MESSAGE)  # nothing runs: just admit nothing more
        log.info("graceful shutdown: no answer is running")
        return 0
    return interrupt_running(state, plan.flush_seconds)


def interrupt_running(state: Services, flush_seconds: float) -> int:
    """Interrupt every running answer now and wait up to ``flush_seconds`` for them to be stored."""
    state.begin_drain()
    count = state.chat.interrupt_all(SHUTTING_DOWN, INTERRUPTED_MESSAGE)
    if count:
        log.warning("graceful shutdown: interrupting %d answer(s) still running", count)
    if not state.chat.wait_idle(flush_seconds):
        log.warning("graceful shutdown: %d interrupted answer(s) not stored after %.1fs",
                    state.chat.running, flush_seconds)
    return count


def refuse_while_draining() -> None:
    """``before_request``: while draining, raise 503 ``shutting_down`` (with ``Retry-After``) for every
    request but those its route declares served (``serve_while_draining``, :mod:`llm_api.route_policy`).

    Served: ``/healthz``, ``/metrics``, and ``GET /chat/stream`` reconnects with a well-formed
    ``Last-Event-ID`` (they replay events of this worker and never start a generation). Everything
    else is refused, ``/readyz`` included (its answer while draining is ``shutting_down`` anyway),
    and so is a request that matches no route.
    """
    if not services().draining:
        return
    if current_policy().serves_while_draining(request):
        return
    raise shutting_down()
