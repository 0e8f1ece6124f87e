"""Thin Flask views: validate with a schema, call a service, shape the response."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint


def route(bp: Blueprint, rule: str, methods: list[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``rule`` with and without a trailing slash (no redirect, and 405 stays 405)."""
    bare = rule.rstrip("/") or "/"

    def register(view: Callable[..., Any]) -> Callable[..., Any]:
        bp.add_url_rule(bare, view_func=view, methods=methods)
        if bare != "/":
            bp.add_url_rule(bare + "/", endpoint=view.__name__, view_func=view, methods=methods)
        return view

    return register
