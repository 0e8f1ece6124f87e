"""One error taxonomy for every route: ``{"error": {"code", "message", "details"}}``.

Errors raised before a stream starts are rendered as JSON with their status;
after a stream has started they are sent in-band as an SSE ``error`` event.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from flask import Flask, has_request_context, jsonify, request
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from .generation.embedding import EmbeddingFailed, InputTooLongError, TokenIdError, UnsupportedDimensionsError
from .generation.errors import ContextLengthError, EngineError, GenerationError, NotReadyError, QueueFullError
from .generation.features import InvalidParameterError, UnsupportedFeatureError
from .generation.structured import UnsupportedFieldError
from .local_model.errors import ModelLoadError
from .metrics import current_metrics
from .quota.admission import QuotaExceeded
from .routing.errors import EngineUnavailableError, UpstreamRejectedError
from .routing.models import ModelKindError, ModelNotFoundError
from .services.chat import ChatUnavailable
from .storage import ConversationNotFound, StorageError

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1
OPENAI_PREFIX = "/v1/"


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The service's error envelope, for a JSON answer or an SSE ``error`` event."""
    return {"error": {"code": code, "message": message, "details": details or {}}}


class ApiError(Exception):
    """An error with its HTTP status, a stable machine-readable code and a human message."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param  # the request field at fault (OpenAI's ``param``), when not a validation error's
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)

    def openai_body(self) -> dict[str, Any]:
        """OpenAI's shape, for ``/v1/*``: ``{"error": {"message", "type", "param", "code"}}``."""
        fields = self.details.get("fields")
        param = next(iter(fields), None) if isinstance(fields, dict) else self.param
        if self.status == 429:
            kind = "rate_limit_error"
        elif self.status >= 500:
            kind = "server_error"
        else:
            kind = "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": param, "code": self.code}}


def invalid_json(reason: str) -> ApiError:
    return ApiError(400, "invalid_json", f"The request body is not valid JSON: {reason}")


def validation_failed(messages: Any) -> ApiError:
    fields = messages if isinstance(messages, dict) else {"_schema": messages}
    problems = "; ".join(f"{name}: {_first_message(fields[name])}" for name in sorted(fields, key=str))
    return ApiError(422, "validation_error", f"Invalid request fields: {problems}", {"fields": fields})


def _first_message(messages: Any) -> str:
    """The first readable message in marshmallow's nested error structure."""
    while not isinstance(messages, str):
        if isinstance(messages, dict) and messages:
            messages = next(iter(messages.values()))
        elif isinstance(messages, list) and messages:
            messages = messages[0]
        else:
            return str(messages)
    return messages


def from_engine_error(exc: EngineError) -> ApiError:
    """Map the engine's exceptions to statuses: the one place that decides them."""
    retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if isinstance(exc, UnsupportedFieldError):  # a field the engine cannot honour (an unsupported keyword, …)
        return ApiError(422, "unsupported_field", exc.message, {"fields": {exc.field: [exc.message]}})
    if isinstance(exc, ContextLengthError):
        return ApiError(400, "context_length_exceeded", str(exc), {
            "prompt_tokens": exc.prompt_tokens, "max_tokens": exc.max_tokens,
            "context_length": exc.context_length})
    if isinstance(exc, InvalidParameterError):  # the fields envelope of a validation error, so `param` names it
        code = "unsupported_parameter" if isinstance(exc, UnsupportedFeatureError) else "invalid_parameter"
        return ApiError(400, code, str(exc), {"fields": {exc.field: [str(exc)]}})
    if isinstance(exc, QueueFullError):
        return ApiError(503, "queue_full", f"The server is at capacity ({exc}); retry shortly.", headers=retry)
    if isinstance(exc, (NotReadyError, ModelLoadError)):
        return ApiError(503, "model_not_ready", f"The model is not ready: {exc}", headers=retry)
    if isinstance(exc, EngineUnavailableError):  # an upstream down or refusing, or an open circuit
        return ApiError(503, "engine_unavailable", f"The engine is unavailable: {exc}", headers=retry)
    if isinstance(exc, UpstreamRejectedError):  # the upstream found fault with the request itself
        return ApiError(400, "upstream_rejected", str(exc), {"upstream_status": exc.status})
    if isinstance(exc, ModelNotFoundError):
        return ApiError(404, "model_not_found", str(exc), {"model": exc.name}, param="model")
    if isinstance(exc, ModelKindError):
        return ApiError(400, "wrong_model_kind", str(exc), {"model": exc.name, "kind": exc.kind}, param="model")
    if isinstance(exc, InputTooLongError):
        return ApiError(400, "context_length_exceeded", str(exc), {
            "input_index": exc.index, "tokens": exc.tokens, "context_length": exc.window}, param="input")
    if isinstance(exc, TokenIdError):
        return ApiError(400, "invalid_token_id", str(exc), {"input_index": exc.index, "token": exc.token,
                                                             "vocab_size": exc.vocab_size}, param="input")
    if isinstance(exc, UnsupportedDimensionsError):
        return ApiError(400, "unsupported_dimensions", str(exc), {"dimensions": exc.dimensions}, param="dimensions")
    if isinstance(exc, EmbeddingFailed):
        return ApiError(500, "embedding_failed", str(exc))
    if isinstance(exc, GenerationError):
        return ApiError(500, "generation_failed", str(exc))
    return ApiError(500, "engine_error", str(exc))


def overloaded(estimated_wait: float, max_wait: float) -> ApiError:
    """Load shedding: the work queued ahead would keep a new request waiting longer than ``max_wait`` seconds.
    ``Retry-After`` is when, at the measured rate, the queue ahead will have drained to ``max_wait``."""
    retry_after = max(1, math.ceil(estimated_wait - max_wait))
    return ApiError(503, "overloaded",
                    f"The server is overloaded: a new request would wait about {estimated_wait:.0f} s for the model, "
                    f"more than its limit of {max_wait:g} s; retry in {retry_after} s.",
                    {"estimated_wait_seconds": round(estimated_wait, 1), "max_queue_wait_seconds": max_wait},
                    headers={"Retry-After": str(retry_after)})


SHUTTING_DOWN = "shutting_down"


def shutting_down() -> ApiError:
    """A request that reaches a worker while it drains for shutdown (see llm_api/shutdown.py)."""
    return ApiError(503, SHUTTING_DOWN, "The server is shutting down; retry the request.",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def from_unavailable(exc: ChatUnavailable) -> ApiError:
    """The service stopped or refused an answer itself (e.g. ``shutting_down``): 503, retry elsewhere."""
    return ApiError(503, exc.code, exc.message, exc.details, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def uses_openai_errors() -> bool:
    return has_request_context() and request.path.startswith(OPENAI_PREFIX)


def error_response(error: ApiError):  # noqa: ANN201 - a Flask response
    response = jsonify(error.openai_body() if uses_openai_errors() else error.body())
    response.status_code = error.status
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


_HTTP_CODES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 406: "not_acceptable",
    408: "request_timeout", 411: "length_required", 413: "payload_too_large", 414: "uri_too_long",
    415: "unsupported_media_type", 429: "rate_limited", 431: "headers_too_large",
}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(error: ApiError):  # noqa: ANN202
        return error_response(error)

    @app.errorhandler(EngineError)
    def _engine_error(error: EngineError):  # noqa: ANN202
        return error_response(from_engine_error(error))

    @app.errorhandler(ConversationNotFound)
    def _no_conversation(error: ConversationNotFound):  # noqa: ANN202
        return error_response(ApiError(404, "conversation_not_found", str(error),
                                       {"conversation_id": error.conversation_id}))

    @app.errorhandler(QuotaExceeded)
    def _quota_exceeded(error: QuotaExceeded):  # noqa: ANN202
        current_metrics().rate_limited(error.limit)
        return error_response(ApiError(429, "rate_limit_exceeded", str(error), {"limit": error.limit},
                                       headers={"Retry-After": str(error.retry_after)}))

    @app.errorhandler(ChatUnavailable)
    def _chat_unavailable(error: ChatUnavailable):  # noqa: ANN202
        return error_response(from_unavailable(error))

    @app.errorhandler(StorageError)
    def _storage_error(error: StorageError):  # noqa: ANN202
        log.error("storage unavailable: %s", error)
        return error_response(ApiError(503, "storage_unavailable", "The message store is unavailable; retry shortly.",
                                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)}))

    @app.errorhandler(ValidationError)
    def _validation_error(error: ValidationError):  # noqa: ANN202
        return error_response(validation_failed(error.messages))

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):  # noqa: ANN202
        status = error.code or 500
        code = _HTTP_CODES.get(status, "http_error")
        response = error_response(ApiError(status, code, error.description or error.name))
        if status == 405 and error.get_response().headers.get("Allow"):
            response.headers["Allow"] = error.get_response().headers["Allow"]
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):  # noqa: ANN202
        log.exception("unhandled error")
        return error_response(ApiError(500, "internal_error", "An internal error occurred."))
