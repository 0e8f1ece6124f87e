"""GET /openapi.json: a valid OpenAPI 3.1 description of every route, status, error and SSE answer."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

from blueprints.openapi import build_spec
from tests.http import new_key

SERVED = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def spec(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.content_type == "application/json"
    return response.get_json()


def test_the_description_is_valid_openapi_3_1(spec):
    assert spec["openapi"] == "3.1.0"
    validate(spec)


def rule_to_path(rule: str) -> str:
    return rule.replace("<", "{").replace(">", "}").rstrip("/") or "/"


def test_every_route_and_method_is_described(app, spec):
    served = {(rule_to_path(r.rule), m.lower()) for r in app.url_map.iter_rules() if not r.endpoint.endswith("static")
              for m in r.methods if m.lower() in SERVED}
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert served == described


def test_every_operation_names_its_security_and_error_envelope(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "security" in operation, (path, method)
            envelope = "OpenAIError" if path.startswith("/v1/") else "Error"
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref == f"#/components/schemas/{envelope}", (path, method, status)
    scopes = {path: ops["get"]["security"] for path, ops in spec["paths"].items() if "get" in ops}
    assert scopes["/admin/conversations"] == [{"bearerAuth": ["admin"]}]
    assert scopes["/metrics"] == [{"bearerAuth": ["metrics"]}]
    assert scopes["/healthz"] == scopes["/openapi.json"] == []


def test_streamed_answers_are_described_with_their_events(spec):
    answer = spec["paths"]["/chat/new/message"]["post"]["responses"]["200"]["content"]
    assert set(answer) == {"application/json", "text/event-stream"}
    events = answer["text/event-stream"]["x-sse-events"]
    assert events["finish"] == {"$ref": "#/components/schemas/ChatFinishEvent"}
    chunk = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    assert chunk["x-sse-events"]["message"] == {"$ref": "#/components/schemas/ChatCompletionChunk"}


def test_request_schemas_are_strict_like_the_server(spec):
    body = spec["components"]["schemas"]["ChatMessageRequest"]
    assert body["additionalProperties"] is False
    assert "oneOf" in body["properties"]["stop"]


def test_the_description_is_open_even_once_keys_exist(app, client):
    new_key(app)
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/chat/get/messages").status_code == 401


def test_build_spec_is_deterministic():
    assert build_spec() == build_spec()


def test_an_answer_sent_in_history_is_listed_with_nulls_the_description_allows(client, spec):
    """Found by a random schemathesis run: an assistant turn the caller sent in `history` is listed by
    GET /chat/get/messages with no finish_reason, usage, model or timing, so the description must allow null."""
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert client.post("/chat/new/message", json={"prompt": "And now?", "history": history}).status_code == 200
    sent = next(e for e in client.get("/chat/get/messages").get_json()["messages"] if e["response"] == "Hello.")
    nullable = {name for name, value in sent.items() if value is None}
    assert {"finish_reason", "usage", "model", "total_time"} <= nullable
    properties = spec["components"]["schemas"]["Exchange"]["properties"]
    for name in nullable:
        schema = properties[name]
        assert "null" in (schema.get("type") or []) or {"type": "null"} in schema.get("anyOf", []), (name, schema)
