"""Route policy: who may call a route, and whether a draining worker still serves it.

Each view declares its policy where it is registered (``route(bp, rule, methods, scope=..., ...)``
in :mod:`blueprints`); the policy is stored on the view function. The checks that run before every
request, :func:`llm_api.auth.guard.check_access` and :func:`llm_api.shutdown.refuse_while_draining`,
read :func:`current_policy`: the policy of the view Flask matched. A view that declares nothing,
and a request that matched no route, get :data:`DEFAULT_POLICY`: a key with the ``chat`` scope, and
refused while draining.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Request, current_app, request

from .auth.keys import SCOPES

View = TypeVar("View", bound=Callable[..., Any])
DrainRule = bool | Callable[[Request], bool]  # served while draining: always, never, or when the request says so

_ATTRIBUTE = "route_policy"


@dataclass(frozen=True)
class RoutePolicy:
    """What one route allows. The defaults are the safe ones."""

    open: bool = False  # True: no key is ever needed (the probes, the chat page)
    scope: str = "chat"  # the scope the caller's key needs (``admin`` implies every other)
    stream_token: bool = False  # also takes ``?token=`` from POST /auth/stream-token (a browser's EventSource)
    serve_while_draining: DrainRule = False  # see :meth:`serves_while_draining`

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"unknown scope {self.scope!r}; known: {', '.join(SCOPES)}")

    def serves_while_draining(self, incoming: Request) -> bool:
        """Whether a worker that drains for shutdown still answers ``incoming`` (otherwise: 503
        ``shutting_down``)."""
        rule = self.serve_while_draining
        return rule(incoming) if callable(rule) else rule


DEFAULT_POLICY = RoutePolicy()


def declare(view: View, policy: RoutePolicy) -> View:
    """Store ``policy`` on ``view``. A view registered under several rules (or blueprints) has one policy."""
    declared = getattr(view, _ATTRIBUTE, None)
    if declared is not None and declared != policy:
        raise ValueError(f"view {view.__name__} already declares {declared}")
    setattr(view, _ATTRIBUTE, policy)
    return view


def policy_of(view: Callable[..., Any] | None) -> RoutePolicy:
    """The policy ``view`` declares, else :data:`DEFAULT_POLICY`."""
    policy = getattr(view, _ATTRIBUTE, None)
    return policy if isinstance(policy, RoutePolicy) else DEFAULT_POLICY


def current_policy() -> RoutePolicy:
    """The policy of the view that answers this request (:data:`DEFAULT_POLICY` when no route matched)."""
    endpoint = request.endpoint
    return policy_of(current_app.view_functions.get(endpoint) if endpoint is not None else None)
