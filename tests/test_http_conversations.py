"""Conversations over HTTP on a fake engine and a real SQLite file: history, storage of every outcome,
trimming to the context, and the /conversations routes."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from tests.fakes import wait_until
from tests.http import assert_error, post
from tests.sse import parse_sse, read_sse


def store_of(app):
    return app.extensions["llm_api"].store


def conversation(client, conversation_id: str, query: str = "") -> dict:
    response = client.get(f"/conversations/{conversation_id}{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def test_a_request_without_conversation_id_starts_one_and_stores_both_turns(client, fake_engine):
    body = post(client, {"prompt": "first question", "temperature": 0, "max_tokens": 3}).get_json()
    stored = conversation(client, body["conversation_id"])
    assert stored["title"] == "first question"
    user, answer = stored["messages"]
    assert (user["role"], user["content"]) == ("user", "first question")
    assert answer["message_id"] == body["message_id"] and answer["reply_to"] == user["message_id"]
    assert (answer["role"], answer["content"], answer["finish_reason"]) == ("assistant", body["response"], "length")
    assert answer["usage"] == body["usage"] and answer["model"] == "fake-model"
    assert answer["params"] == {"max_tokens": 3, "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": []}
    assert answer["time_to_first_token"] is not None and answer["total_time"] is not None
    assert answer["created_at"].endswith("+00:00")


def test_a_conversation_id_brings_the_stored_history_into_the_prompt(client, fake_engine):
    first = post(client, {"prompt": "one", "history": [{"role": "system", "content": "be brief"}]}).get_json()
    second = post(client, {"prompt": "two", "conversation_id": first["conversation_id"]}).get_json()
    assert second["conversation_id"] == first["conversation_id"]
    reply = fake_engine.reply
    expected = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"},
                {"role": "assistant", "content": reply}, {"role": "user", "content": "two"}]
    assert fake_engine.encoded[-1] == expected
    assert second["history"] == [*expected, {"role": "assistant", "content": reply}]
    roles = [m["role"] for m in conversation(client, first["conversation_id"])["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


def test_the_finish_event_of_a_stream_names_its_conversation(client):
    events = [e for e in parse_sse(post(client, {"prompt": "hi", "stream": True}).get_data(as_text=True))
              if e["data"]]
    finish = json.loads(events[-1]["data"])
    assert events[-1]["event"] == "finish" and finish["dropped_turns"] == 0
    stored = conversation(client, finish["conversation_id"])["messages"]
    assert stored[-1]["message_id"] == finish["message_id"] and stored[-1]["finish_reason"] == "stop"


def test_the_get_stream_continues_a_conversation(client, fake_engine):
    first = post(client, {"prompt": "one"}).get_json()
    body = client.get(f"/chat/stream?prompt=two&conversation_id={first['conversation_id']}").get_data(as_text=True)
    finish = json.loads([e for e in parse_sse(body) if e["event"] == "finish"][0]["data"])
    assert finish["conversation_id"] == first["conversation_id"]
    assert [m["content"] for m in fake_engine.encoded[-1]] == ["one", fake_engine.reply, "two"]


def test_a_failed_generation_is_stored_as_error(client, fake_engine):
    fake_engine.fail_after = 2
    assert post(client, {"prompt": "hi"}).status_code == 500
    events = parse_sse(post(client, {"prompt": "hi again", "stream": True}).get_data(as_text=True))
    assert events[-1]["event"] == "error"
    stored = client.get("/chat/get/messages").get_json()["messages"]
    assert [(m["prompt"], m["finish_reason"]) for m in stored] == [("hi", "error"), ("hi again", "error")]
    assert all(m["response"] == "Hello from" for m in stored)  # the partial text is kept too


def test_a_failed_turn_is_left_out_of_the_next_prompt(client, fake_engine):
    fake_engine.fail_after = 0
    first = post(client, {"prompt": "lost"})
    assert first.status_code == 500
    conversation_id = client.get("/conversations").get_json()["conversations"][0]["id"]
    fake_engine.fail_after = None
    post(client, {"prompt": "again", "conversation_id": conversation_id})
    assert fake_engine.encoded[-1] == [{"role": "user", "content": "again"}]


def test_a_refused_request_stores_nothing(client, fake_engine):
    first = post(client, {"prompt": "one"}).get_json()
    fake_engine.queue_full = True
    assert_error(post(client, {"prompt": "two"}), 503, "queue_full")
    assert_error(post(client, {"prompt": "three", "conversation_id": first["conversation_id"]}), 503, "queue_full")
    assert len(client.get("/conversations").get_json()["conversations"]) == 1
    assert len(conversation(client, first["conversation_id"])["messages"]) == 2


def test_history_too_long_for_the_context_drops_the_oldest_turns(client, fake_engine):
    fake_engine.context_length = 40  # the fake encodes one token per word
    system = {"role": "system", "content": "keep me"}
    history = [system]
    for n in range(6):
        history += [{"role": "user", "content": f"question {n} " + "word " * 4},
                    {"role": "assistant", "content": f"answer {n} " + "word " * 4}]
    body = post(client, {"prompt": "newest question", "history": history, "max_tokens": 5}).get_json()
    assert body["dropped_turns"] > 0
    seen = fake_engine.encoded[-1]
    assert seen[0] == system and seen[-1] == {"role": "user", "content": "newest question"}
    assert len(fake_engine.submitted[-1].prompt_ids) + 5 <= 40
    kept = (len(seen) - 2) // 2
    assert body["dropped_turns"] == 6 - kept
    assert seen[1:-1] == history[1 + 2 * body["dropped_turns"]:]  # the newest turns, whole
    # One turn more would not have fitted: the fewest turns were dropped.
    assert len(fake_engine.encode_chat([system, *history[2 * body["dropped_turns"] - 1:], seen[-1]])) + 5 > 40


def test_a_prompt_that_alone_exceeds_the_context_is_400(client, fake_engine):
    fake_engine.context_length = 10
    error = assert_error(post(client, {"prompt": "word " * 20, "max_tokens": 2}), 400, "context_length_exceeded")
    assert error["details"]["context_length"] == 10
    assert client.get("/conversations").get_json()["conversations"] == []


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x", "conversation_id": "not-an-id"}, "conversation_id"),
    ({"prompt": "x", "conversation_id": "a" * 32, "history": [{"role": "user", "content": "y"}]}, "conversation_id"),
])
def test_bad_conversation_fields_are_422(client, body, field):
    assert field in assert_error(post(client, body), 422, "validation_error")["details"]["fields"]


def test_an_unknown_conversation_is_404(client, fake_engine):
    error = assert_error(post(client, {"prompt": "x", "conversation_id": "a" * 32}), 404, "conversation_not_found")
    assert error["details"] == {"conversation_id": "a" * 32}
    assert fake_engine.submitted == []
    assert_error(client.get(f"/conversations/{'a' * 32}"), 404, "conversation_not_found")
    assert_error(client.delete(f"/conversations/{'a' * 32}"), 404, "conversation_not_found")


def test_conversations_are_listed_newest_first_in_pages(client):
    ids = [post(client, {"prompt": f"q{n}"}).get_json()["conversation_id"] for n in range(5)]
    seen, url = [], "/conversations?limit=2"
    while url:
        page = client.get(url).get_json()
        seen += [c["id"] for c in page["conversations"]]
        url = f"/conversations?limit=2&cursor={page['next_cursor']}" if page["next_cursor"] else None
    assert seen == ids[::-1]
    assert set(client.get("/conversations").get_json()["conversations"][0]) == {"id", "title", "created_at",
                                                                                 "updated_at"}


def test_a_conversations_messages_come_in_pages_oldest_first(client):
    conversation_id = post(client, {"prompt": "q0"}).get_json()["conversation_id"]
    for n in range(1, 3):
        post(client, {"prompt": f"q{n}", "conversation_id": conversation_id})
    first = conversation(client, conversation_id, "?limit=4")
    rest = conversation(client, conversation_id, f"?limit=4&cursor={first['next_cursor']}")
    assert [m["content"] for m in first["messages"] + rest["messages"] if m["role"] == "user"] == ["q0", "q1", "q2"]
    assert len(first["messages"]) == 4 and len(rest["messages"]) == 2 and rest["next_cursor"] is None


def test_deleting_a_conversation(client):
    body = post(client, {"prompt": "forget me"}).get_json()
    response = client.delete(f"/conversations/{body['conversation_id']}/")
    assert response.status_code == 204 and response.get_data() == b""
    assert_error(client.get(f"/conversations/{body['conversation_id']}"), 404, "conversation_not_found")
    assert client.get("/chat/get/messages").get_json()["messages"] == []


def test_renaming_a_conversation(client):
    body = post(client, {"prompt": "an old title"}).get_json()
    conversation_id = body["conversation_id"]
    before = conversation(client, conversation_id)
    response = client.patch(f"/conversations/{conversation_id}", json={"title": "  Trip\tto   Paris \n"})
    assert response.status_code == 200, response.get_data(as_text=True)
    renamed = response.get_json()
    assert renamed["title"] == "Trip to Paris"  # whitespace collapsed, as for a title made from a prompt
    assert {k: renamed[k] for k in ("id", "created_at", "updated_at")} == \
        {k: before[k] for k in ("id", "created_at", "updated_at")}  # updated_at is the newest message's time
    assert conversation(client, conversation_id)["title"] == "Trip to Paris"
    assert client.get("/conversations").get_json()["conversations"][0]["title"] == "Trip to Paris"
    assert client.patch(f"/chat/conversations/{conversation_id}/", json={"title": "x" * 200}).status_code == 200


@pytest.mark.parametrize("body, field", [
    ({}, "title"), ({"title": " \n "}, "title"), ({"title": "x" * 201}, "title"), ({"title": 3}, "title"),
    ({"title": "ok", "pinned": True}, "pinned"), ([], "_schema"),
])
def test_a_bad_title_is_422_naming_the_field(client, body, field):
    conversation_id = post(client, {"prompt": "keep me"}).get_json()["conversation_id"]
    error = assert_error(client.patch(f"/conversations/{conversation_id}", json=body), 422, "validation_error")
    assert field in error["details"]["fields"]
    assert conversation(client, conversation_id)["title"] == "keep me"


def test_renaming_an_unknown_conversation_is_404(client):
    error = assert_error(client.patch(f"/conversations/{'a' * 32}", json={"title": "x"}), 404,
                         "conversation_not_found")
    assert error["details"] == {"conversation_id": "a" * 32}
    assert_error(client.patch(f"/conversations/{'a' * 32}", data=b"{"), 400, "invalid_json")


def test_the_lesson_prefix_reaches_the_same_conversations(client):
    body = post(client, {"prompt": "hi"}).get_json()
    listed = client.get("/chat/conversations/").get_json()["conversations"]
    assert [c["id"] for c in listed] == [body["conversation_id"]]
    assert client.get(f"/chat/conversations/{body['conversation_id']}").status_code == 200


@pytest.mark.parametrize("query", ["?limit=0", "?limit=101", "?cursor=x", "?cursor=-1", "?other=1"])
def test_bad_list_queries_are_422(client, query):
    assert_error(client.get(f"/conversations{query}"), 422, "validation_error")


def test_records_carry_an_empty_owner_until_keys_exist(app, client):
    body = post(client, {"prompt": "hi"}).get_json()
    with store_of(app).engine.connect() as connection:
        owners = connection.execute(sa.text("SELECT owner FROM messages UNION SELECT owner FROM conversations"))
        assert [row[0] for row in owners] == [""]
    assert body["conversation_id"]


def test_a_broken_store_is_503_not_500(app, client):
    with store_of(app).engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE messages"))
    assert_error(post(client, {"prompt": "hi"}), 503, "storage_unavailable")
    assert_error(client.get("/chat/get/messages"), 503, "storage_unavailable")


def test_a_stream_whose_client_left_is_stored_as_cancelled(client, fake_engine):
    fake_engine.delay = 0.02
    response = client.get("/chat/stream?prompt=hi")
    read_sse(response, 2)
    response.close()
    stored = wait_until(lambda: client.get("/chat/get/messages").get_json()["messages"])
    assert stored[-1]["finish_reason"] == "cancelled"
    assert stored[-1]["response"] and fake_engine.reply.startswith(stored[-1]["response"])


@pytest.mark.parametrize("path", ["/conversations", "/chat/conversations", "/admin/conversations"])
@pytest.mark.parametrize("cursor", ["9223372036854775808", "9223372036854775809", "1" + "0" * 40])
def test_a_cursor_past_64_bits_is_a_422_naming_it(client, path, cursor):
    """Found by a random schemathesis run: SQLite could not bind it (a 500 before)."""
    response = client.get(f"{path}?cursor={cursor}")
    assert response.status_code == 422, response.get_data(as_text=True)
    assert "cursor" in response.get_json()["error"]["details"]["fields"]
