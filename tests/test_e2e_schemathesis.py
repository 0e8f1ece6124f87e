"""Schemathesis against the real gunicorn server, over every operation of /openapi.json: no server errors,
only documented statuses and content types, and JSON answers that conform to the description.

Bounded for CI: LLM_API_SCHEMATHESIS_EXAMPLES examples per operation (default 8), and generation kept tiny
(max_tokens at most 4 in what is generated, LLM_API_DEFAULT_MAX_TOKENS=4 where it is left out). A longer run
for releases is described in docs/operations.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.servers import LiveServer, start_server, stop_server

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("LLM_API_SCHEMATHESIS_EXAMPLES", "8"))
# CI runs one fixed (derandomized) set of examples, so a landing never depends on luck; a release run sets
# LLM_API_SCHEMATHESIS_RANDOM=1 (and more examples) to explore new inputs (docs/operations.md).
DERANDOMIZE = os.environ.get("LLM_API_SCHEMATHESIS_RANDOM", "") != "1"
TINY = 4
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("schemathesis"), {
        "LLM_API_DEFAULT_MAX_TOKENS": str(TINY), "LLM_API_EMBEDDING_MODELS": "all-MiniLM-L6-v2=embedded"})
    yield server
    stop_server(server)


def keep_generation_tiny(spec: dict, models: list[str]) -> dict:
    """Generated max_tokens at most TINY: the server's limits are unchanged, only what is asked stays small.
    A generated `model` is one the server serves (chat or embedding, so a wrong kind is tried too): any other
    name is a 404 before the body's other fields are looked at."""
    for schema in spec["components"]["schemas"].values():
        if "model" in schema.get("properties", {}):
            schema["properties"]["model"] = {"type": "string", "enum": models}
        for name in ("max_tokens", "max_completion_tokens"):
            if name in schema.get("properties", {}):
                schema["properties"][name]["maximum"] = TINY
    for operations in spec["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "max_tokens":
                    parameter["schema"]["maximum"] = TINY
    return spec


@pytest.fixture(scope="module")
def api_schema(fuzzed_server):
    spec = requests.get(f"{fuzzed_server.url}/openapi.json", timeout=30).json()
    models = [m["id"] for m in requests.get(f"{fuzzed_server.url}/v1/models", timeout=30).json()["data"]]
    return schemathesis.openapi.from_dict(keep_generation_tiny(spec, models))


def operations(api_schema) -> list:
    return [result.ok() for result in api_schema.get_all_operations()]


def test_every_operation_conforms(api_schema, fuzzed_server):
    """One hypothesis run per operation (schemathesis' pytest plugin does not load under this pytest)."""
    failures = []
    for operation in operations(api_schema):

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None,
                  phases=[Phase.explicit, Phase.generate], derandomize=DERANDOMIZE)
        def conforms(case) -> None:
            case.call_and_validate(base_url=fuzzed_server.url, checks=CHECKS, timeout=60)

        try:
            conforms()
        except Exception as exc:  # every operation's failure is reported together
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures) + "\n\n" + fuzzed_server.log()[-3000:]
