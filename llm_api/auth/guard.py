"""The access check run before every view: who is calling, and may they use this route?

Each route declares what it needs where it is registered (:mod:`llm_api.route_policy`).
Open: the routes declared ``open`` (the probes, the chat page), CORS preflights, and
requests that match no route (they get their 404 or 405). While no API key exists
(and ``LLM_API_REQUIRE_KEYS`` is off) every route is open and records get the empty
owner. Otherwise a route needs ``Authorization: Bearer <key>`` (routes declared with
``stream_token``, ``GET /chat/stream`` and ``DELETE /chat/stream/<id>``, also take
``?token=`` from ``POST /auth/stream-token``) and the scope it declares.
"""

from __future__ import annotations

from flask import g, request

from ..errors import ApiError
from ..route_policy import RoutePolicy, current_policy
from ..storage import ApiKey
from .keys import grants
from .tokens import TokenRejected

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def check_access() -> None:
    """``before_request``: sets ``g.api_key`` (None when open) and ``g.api_key_name``, or raises 401/403."""
    from ..state import services  # the state module imports the services, which import this package

    g.api_key = None
    if request.method == "OPTIONS" or request.endpoint is None:
        return
    policy = current_policy()
    if policy.open:
        return
    state = services()
    if not state.settings.require_keys and not state.keys.keys_exist():
        return
    key = _presented_key(state, policy)
    g.api_key_name = key.name  # logged with the request, refused or not
    scope = policy.scope
    if not grants(key, scope):
        raise ApiError(403, "insufficient_scope", f"This key lacks the `{scope}` scope this route needs.",
                       {"required_scope": scope})
    g.api_key = key


def current_owner() -> str:
    """The owner of what this request reads and writes: its key's id, or empty while the service is open."""
    key: ApiKey | None = g.get("api_key")
    return key.id if key is not None else ""


def current_key() -> ApiKey | None:
    return g.get("api_key")


def _presented_key(state, policy: RoutePolicy) -> ApiKey:  # noqa: ANN001 - llm_api.state.Services (import cycle)
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    if header:
        if scheme.lower() != "bearer" or not credential.strip():
            raise ApiError(401, "invalid_api_key", "The Authorization header must be `Bearer <key>`.",
                           headers=_CHALLENGE)
        key = state.keys.authenticate(credential.strip())
        if key is None:
            raise ApiError(401, "invalid_api_key", "The API key is not valid (unknown or revoked).",
                           headers=_CHALLENGE)
        return key
    token = request.args.get("token")
    if token and policy.stream_token:
        try:
            key_id = state.stream_tokens.key_id(token)
        except TokenRejected as exc:
            raise ApiError(401, exc.code, str(exc), headers=_CHALLENGE) from None
        key = state.keys.active_key(key_id)
        if key is None:
            raise ApiError(401, "invalid_token", "The stream token's key has been revoked.", headers=_CHALLENGE)
        return key
    raise ApiError(401, "missing_api_key", "This route needs an API key: send `Authorization: Bearer <key>`.",
                   headers=_CHALLENGE)
