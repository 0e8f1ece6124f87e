"""Thin Flask views: validate with a schema, call a service, shape the response.

Every view is registered with :func:`route`, which also declares its policy (who may call it, and
whether a draining worker still serves it; :mod:`llm_api.route_policy`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint

from llm_api.route_policy import DrainRule, RoutePolicy, declare


def route(bp: Blueprint, rule: str, methods: list[str], *, open: bool = False, scope: str = "chat",
          stream_token: bool = False,
          serve_while_draining: DrainRule = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``rule`` with and without a trailing slash (no redirect, and 405 stays 405), with its policy.

    By default a route needs a key with the ``chat`` scope and is refused while the worker drains.
    ``open=True``: no key is needed. ``scope``: the scope the key needs instead. ``stream_token=True``:
    the key may also come as a stream token in ``?token=``. ``serve_while_draining``: True to keep
    serving while draining, or a function of the request that says whether to.
    """
    policy = RoutePolicy(open=open, scope=scope, stream_token=stream_token,
                         serve_while_draining=serve_while_draining)
    bare = rule.rstrip("/") or "/"

    def register(view: Callable[..., Any]) -> Callable[..., Any]:
        declare(view, policy)
        bp.add_url_rule(bare, view_func=view, methods=methods)
        if bare != "/":
            bp.add_url_rule(bare + "/", endpoint=view.__name__, view_func=view, methods=methods)
        return view

    return register
