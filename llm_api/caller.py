"""Generation on behalf of the calling key: its owner id on the records, its quotas at admission,
and its ``x-ratelimit-*`` headers on every answer."""

from __future__ import annotations

from functools import partial

from flask import Response

from .auth.guard import current_key, current_owner
from .errors import overloaded
from .metrics import current_metrics
from .services.chat import Admit, ChatRequest, ChatResult, ChatStream
from .state import services


def admission() -> Admit:
    """The admission check for this request's key (``QuotaExceeded`` becomes a 429)."""
    return partial(services().quotas.admit, current_key())


def refuse_if_overloaded() -> None:
    """Load shedding (``LLM_API_MAX_QUEUE_WAIT``): 503 ``overloaded`` at once, before anything is read or
    stored, when the work queued ahead would keep this request waiting longer than the limit."""
    state = services()
    max_wait = state.settings.max_queue_wait
    if max_wait <= 0:
        return
    wait = state.engine.backlog().wait_seconds()
    if wait > max_wait:
        current_metrics().shed()
        raise overloaded(wait, max_wait)


def open_stream(chat_request: ChatRequest) -> ChatStream:
    refuse_if_overloaded()
    return services().chat.open_stream(chat_request, current_owner(), admission())


def complete(chat_request: ChatRequest) -> ChatResult:
    refuse_if_overloaded()
    return services().chat.complete(chat_request, current_owner(), admission())


def open_streams(chat_request: ChatRequest) -> list[ChatStream]:
    """The request's ``n`` answers, generated together."""
    refuse_if_overloaded()
    return services().chat.open_streams(chat_request, current_owner(), admission())


def complete_all(chat_request: ChatRequest) -> list[ChatResult]:
    refuse_if_overloaded()
    return services().chat.complete_all(chat_request, current_owner(), admission())


def add_rate_limit_headers(response: Response) -> Response:
    """``after_request``: the key's ``x-ratelimit-*`` headers on every answer (when it has limits)."""
    key = current_key()
    if key is not None and (key.rpm is not None or key.tpm is not None):
        response.headers.update(services().quotas.headers(key))
    return response
