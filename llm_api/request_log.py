"""Every request: a request id, one log line when it ends, and its count in the metrics.

- The id comes from the client's ``X-Request-ID`` when it is 1-128 characters of
  ``[A-Za-z0-9._-]``, else it is a new uuid4 hex. It is ``flask.g.request_id``,
  it is echoed in the ``X-Request-ID`` response header (errors and streams
  included), and log lines written while the request is served carry it.
- The ``llm_api.request`` line is written when the response body is done: at
  once for an ordinary response, when the server closes it for a streamed one,
  so a stream's line has the stream's whole duration. It never holds the query
  string (a browser stream's prompt is there) nor the API key itself, only its
  name (``g.api_key_name``, set by the auth check). It carries the request's
  ``trace_id`` when it has one: its server span's with tracing on, else the
  caller's W3C ``traceparent`` (see :mod:`llm_api.tracing`).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import TYPE_CHECKING

from flask import Flask, Response, g, request

from .logging_setup import bind_request_id
from .tracing import log_trace_id

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("llm_api.request")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def request_id_from(header: str | None) -> str:
    """The client's id when it is sane, else a new one."""
    if header is not None and _SANE_REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def route_of(rule: str | None) -> str | None:
    """The route template, without the trailing slash that every rule is also registered with."""
    return None if rule is None else rule.rstrip("/") or "/"


def install(app: Flask, metrics: Metrics) -> None:
    """Register the hooks; call this before any other ``before_request`` so that theirs run inside it."""

    @app.before_request
    def _start_request() -> None:
        g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        g.request_started = time.perf_counter()
        bind_request_id(g.request_id)

    @app.after_request
    def _finish_request(response: Response) -> Response:
        if "request_id" not in g:  # an earlier before_request refused the request before ours ran
            g.request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER))
        response.headers[REQUEST_ID_HEADER] = g.request_id
        started = g.get("request_started", time.perf_counter())
        rule = request.url_rule.rule if request.url_rule is not None else None
        fields = {
            "request_id": g.request_id,
            "trace_id": log_trace_id(request.headers),
            "method": request.method,
            "path": request.path,
            "route": route_of(rule),
            "status": response.status_code,
            "duration_ms": None,
            "remote_addr": request.remote_addr,
            "api_key_name": g.get("api_key_name"),
        }
        streamed = response.is_streamed and not response.direct_passthrough  # the server closes it at the end
        sse = streamed and response.mimetype == "text/event-stream"

        def done() -> None:
            fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
            if sse:
                metrics.stream_closed()
            metrics.request_finished(fields["route"], fields["method"], fields["status"])
            log.info("request", extra={"fields": fields})

        if streamed:
            if sse:
                metrics.stream_opened()
            response.call_on_close(done)
        else:
            done()
        return response

    @app.teardown_request
    def _forget_request_id(_error: BaseException | None) -> None:
        bind_request_id(None)  # the greenlet may serve the connection's next request
