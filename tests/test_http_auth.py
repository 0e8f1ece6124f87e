"""API keys, scopes, owner scoping, stream tokens, the keys CLI and CORS preflights, on a fake engine."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa
from flask import Blueprint

from llm_api import create_app
from llm_api.route_policy import DEFAULT_POLICY, RoutePolicy, declare, policy_of
from llm_api.state import EXTENSION_KEY
from tests.http import assert_error, bearer, new_key, post
from tests.sse import parse_sse, read_sse


@pytest.fixture
def key(app) -> str:
    return new_key(app)


def test_without_any_key_every_route_is_open(client):
    assert post(client, {"prompt": "hi"}).status_code == 200
    assert client.get("/conversations").status_code == 200


@pytest.mark.parametrize("path", ["/conversations", "/chat/get/messages", "/v1/models"])
def test_once_a_key_exists_a_missing_key_is_401(client, key, path):
    response = client.get(path)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    code = response.get_json()["error"]["code"]
    assert code == "missing_api_key"


@pytest.mark.parametrize("header", ["Bearer llmk_" + "0" * 32 + "_" + "0" * 64, "Bearer nonsense",
                                    "Basic dXNlcjpwYXNz", "Bearer "])
def test_an_unknown_or_malformed_key_is_401(client, key, header):
    response = post(client, {"prompt": "hi"}, headers={"Authorization": header})
    assert_error(response, 401, "invalid_api_key")


def test_a_valid_key_is_let_through_and_its_errors_on_v1_have_openais_shape(client, key):
    assert post(client, {"prompt": "hi"}, headers=bearer(key)).status_code == 200
    response = client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "missing_api_key"
    assert set(response.get_json()["error"]) == {"message", "type", "param", "code"}


def test_a_secret_that_differs_in_one_character_is_refused(client, key):
    forged = key[:-1] + ("0" if key[-1] != "0" else "1")
    assert_error(post(client, {"prompt": "hi"}, headers=bearer(forged)), 401, "invalid_api_key")


def test_probes_page_and_preflight_stay_open(client, key):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/").status_code == 200
    assert client.options("/chat/new/message").status_code == 200


def test_keys_are_stored_only_as_hashes(app, key):
    engine = app.extensions[EXTENSION_KEY].store.engine
    with engine.connect() as db:
        rows = [dict(r._mapping) for r in db.execute(sa.text("SELECT * FROM api_keys"))]
    assert len(rows) == 1
    secret = key.rsplit("_", 1)[1]
    assert all(secret not in str(value) for value in rows[0].values())
    assert rows[0]["secret_hash"] != secret and len(rows[0]["secret_hash"]) == 64


def test_a_revoked_key_is_refused(app, client, key):
    assert app.extensions[EXTENSION_KEY].keys.store.revoke("team-a")
    assert_error(post(client, {"prompt": "hi"}, headers=bearer(key)), 401, "invalid_api_key")


def test_a_key_without_the_admin_scope_is_403_on_admin_routes(client, key):
    assert_error(client.get("/admin/conversations", headers=bearer(key)), 403, "insufficient_scope")


def test_a_route_that_declares_no_policy_needs_a_chat_key_and_is_refused_while_draining(app, client, key):
    """A view registered without ``blueprints.route`` gets llm_api.route_policy.DEFAULT_POLICY."""
    undeclared = Blueprint("undeclared", __name__)
    undeclared.add_url_rule("/undeclared", "view", lambda: "ok")
    app.register_blueprint(undeclared)
    assert_error(client.get("/undeclared"), 401, "missing_api_key")
    error = assert_error(client.get("/undeclared", headers=bearer(new_key(app, "ops", ("metrics",)))), 403,
                         "insufficient_scope")
    assert error["details"] == {"required_scope": "chat"}
    assert client.get("/undeclared", headers=bearer(key)).get_data(as_text=True) == "ok"
    app.extensions[EXTENSION_KEY].begin_drain()
    assert_error(client.get("/undeclared", headers=bearer(key)), 503, "shutting_down")


def test_a_route_policy_names_a_known_scope_and_a_view_has_one_policy():
    with pytest.raises(ValueError, match="unknown scope"):
        RoutePolicy(scope="chats")
    view = declare(lambda: "ok", RoutePolicy(scope="admin"))
    assert policy_of(view) == RoutePolicy(scope="admin") and policy_of(None) == DEFAULT_POLICY
    with pytest.raises(ValueError, match="already declares"):
        declare(view, RoutePolicy(open=True))


def test_conversations_and_messages_are_scoped_to_their_key(app, client, key):
    other = new_key(app, "team-b")
    admin = new_key(app, "ops", ("admin",))
    mine = post(client, {"prompt": "mine"}, headers=bearer(key)).get_json()
    theirs = post(client, {"prompt": "theirs"}, headers=bearer(other)).get_json()

    listed = client.get("/conversations", headers=bearer(key)).get_json()["conversations"]
    assert [c["id"] for c in listed] == [mine["conversation_id"]]
    assert_error(client.get(f"/conversations/{theirs['conversation_id']}", headers=bearer(key)), 404,
                 "conversation_not_found")
    assert_error(client.delete(f"/conversations/{theirs['conversation_id']}", headers=bearer(key)), 404,
                 "conversation_not_found")
    assert_error(client.patch(f"/conversations/{theirs['conversation_id']}", json={"title": "mine now"},
                              headers=bearer(key)), 404, "conversation_not_found")
    continued = post(client, {"prompt": "more", "conversation_id": theirs["conversation_id"]}, headers=bearer(key))
    assert_error(continued, 404, "conversation_not_found")
    exchanges = client.get("/chat/get/messages", headers=bearer(key)).get_json()["messages"]
    assert [e["prompt"] for e in exchanges] == ["mine"]

    everything = client.get("/admin/conversations", headers=bearer(admin)).get_json()["conversations"]
    owners = {c["id"]: c["owner"] for c in everything}
    keys = app.extensions[EXTENSION_KEY].keys.store
    by_name = {k.name: k.id for k in keys.list()}
    assert owners == {mine["conversation_id"]: by_name["team-a"], theirs["conversation_id"]: by_name["team-b"]}


def test_a_stream_cannot_be_resumed_by_another_key(app, client, key):
    other = new_key(app, "team-b")
    body = client.post("/chat/new/message", data=json.dumps({"prompt": "hi", "stream": True}),
                       headers=bearer(key)).get_data(as_text=True)
    last_id = [e for e in parse_sse(body) if e["id"]][-1]["id"]
    resumed = client.get("/chat/stream", headers={**bearer(other), "Last-Event-ID": last_id})
    events = [e for e in parse_sse(resumed.get_data(as_text=True)) if e["event"] == "error"]
    assert json.loads(events[0]["data"])["error"]["code"] == "resume_unavailable"
    assert "conversation_id" not in json.loads(events[0]["data"])["error"]["details"]


# ---- stream tokens ---------------------------------------------------------------------------------

def mint(client, key: str) -> str:
    response = client.post("/auth/stream-token", headers=bearer(key))
    assert response.status_code == 200
    assert response.get_json()["expires_in"] == 300
    return response.get_json()["token"]


def test_an_event_source_streams_with_a_token_instead_of_a_header(client, key):
    token = mint(client, key)
    response = client.get(f"/chat/stream?prompt=hi&token={token}")
    assert response.status_code == 200
    assert [e["event"] for e in parse_sse(response.get_data(as_text=True)) if e["data"]][-1] == "finish"


def test_minting_a_token_needs_a_key(client, key):
    assert_error(client.post("/auth/stream-token"), 401, "missing_api_key")


def test_a_tampered_token_is_refused(client, key):
    token = mint(client, key)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert_error(client.get(f"/chat/stream?prompt=hi&token={tampered}"), 401, "invalid_token")


def test_the_raw_key_is_not_accepted_in_the_url(client, key):
    assert_error(client.get(f"/chat/stream?prompt=hi&token={key}"), 401, "invalid_token")


def test_a_token_works_only_on_the_event_stream_route(client, key):
    token = mint(client, key)
    assert_error(client.get(f"/conversations?token={token}"), 401, "missing_api_key")


def test_a_token_of_a_revoked_key_is_refused(app, client, key):
    token = mint(client, key)
    app.extensions[EXTENSION_KEY].keys.store.revoke("team-a")
    assert_error(client.get(f"/chat/stream?prompt=hi&token={token}"), 401, "invalid_token")


def test_an_expired_token_is_refused(fake_engine, settings):
    app = create_app(settings.__class__(**{**settings.__dict__, "stream_token_seconds": 1}), engine=fake_engine)
    client = app.test_client()
    key = new_key(app)
    token = client.post("/auth/stream-token", headers=bearer(key)).get_json()["token"]
    time.sleep(2.2)
    assert_error(client.get(f"/chat/stream?prompt=hi&token={token}"), 401, "token_expired")


def test_every_worker_signs_with_the_same_shared_secret(fake_engine, settings, app, key):
    other_worker = create_app(settings, engine=fake_engine).test_client()
    token = mint(app.test_client(), key)
    assert other_worker.get(f"/chat/stream?prompt=hi&token={token}").status_code == 200


# ---- required keys and the CLI ---------------------------------------------------------------------

def test_required_keys_close_every_route_even_before_the_first_key(fake_engine, settings):
    app = create_app(settings.__class__(**{**settings.__dict__, "require_keys": True}), engine=fake_engine)
    assert_error(post(app.test_client(), {"prompt": "hi"}), 401, "missing_api_key")


def test_the_keys_cli_creates_lists_and_revokes(app, client):
    runner = app.test_cli_runner()
    created = runner.invoke(args=["keys", "create", "--name", "batch-jobs", "--rpm", "60", "--tpm", "5000",
                                  "--streams", "2"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    assert key.startswith("llmk_") and "\n" not in key  # the key alone on stdout, for scripts
    assert post(client, {"prompt": "hi"}, headers=bearer(key)).status_code == 200

    listed = runner.invoke(args=["keys", "list"])
    row = next(line.split("\t") for line in listed.stdout.splitlines() if line.startswith("batch-jobs"))
    assert row[2:6] == ["chat", "60", "5000", "2"] and row[-1] == "-"
    assert key.split("_")[2] not in listed.stdout

    duplicate = runner.invoke(args=["keys", "create", "--name", "batch-jobs"])
    assert duplicate.exit_code != 0 and "already exists" in duplicate.output
    assert runner.invoke(args=["keys", "revoke", "batch-jobs"]).exit_code == 0
    assert_error(post(client, {"prompt": "hi"}, headers=bearer(key)), 401, "invalid_api_key")
    assert runner.invoke(args=["keys", "revoke", "batch-jobs"]).exit_code != 0


# ---- CORS ------------------------------------------------------------------------------------------

@pytest.fixture
def cors_client(fake_engine, settings):
    app = create_app(settings.__class__(**{**settings.__dict__, "cors_origins": ("https://app.example",)}),
                     engine=fake_engine)
    new_key(app)
    return app.test_client()


def preflight(client, origin: str, headers: str = "authorization, content-type"):
    return client.options("/v1/chat/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers})


def test_a_preflight_from_an_allowed_origin_passes(cors_client):
    response = preflight(cors_client, "https://app.example", "authorization, content-type, traceparent, tracestate")
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "traceparent", "tracestate"} <= allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]


def test_a_preflight_from_another_origin_gets_no_cors_headers(cors_client):
    response = preflight(cors_client, "https://evil.example")
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cross_origin_answers_expose_the_rate_limit_headers(cors_client):
    response = cors_client.get("/healthz", headers={"Origin": "https://app.example"})
    exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-ratelimit-remaining-requests", "x-ratelimit-reset-tokens", "retry-after", "x-request-id"} <= exposed


def test_only_the_streams_key_can_stop_it_and_a_stream_token_may(app, client, key, fake_engine):
    other = new_key(app, "team-b")
    app.extensions[EXTENSION_KEY].live.grace_seconds = 30.0
    fake_engine.delay = 0.05
    token = mint(client, key)
    response = client.get(f"/chat/stream?prompt=hi&token={token}")
    message_id = read_sse(response, 1)[0]["id"].split(":")[0]
    assert_error(client.delete(f"/chat/stream/{message_id}", headers=bearer(other)), 404, "stream_not_found")
    assert client.delete(f"/chat/stream/{message_id}?token={token}").status_code == 204
    assert fake_engine.handles[-1].cancelled
    response.close()
