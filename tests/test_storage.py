"""The conversation store, run whole against SQLite and against a real PostgreSQL server."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from llm_api.storage import Conversation, Message, SqlConversationStore, StorageError, open_store
from llm_api.storage.database import create_db_engine, current_revision, head_revision, upgrade
from tests.databases import BACKENDS, database_url

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def url(backend, tmp_path):
    with database_url(backend, tmp_path) as url:
        yield url


@pytest.fixture
def store(url):
    store = open_store(url, pool_size=4)
    yield store
    store.engine.dispose()


def conversation(n: int, owner: str = "") -> Conversation:
    return Conversation(f"{n:032x}", f"title {n}", T0 + timedelta(minutes=n), T0 + timedelta(minutes=n), owner)


def message(n: int, conversation_id: str, role: str = "user", **fields) -> Message:
    return Message(f"{n:031x}m", conversation_id, role, f"text {n}", T0 + timedelta(seconds=n), **fields)


def exchange(store: SqlConversationStore, conv: Conversation, n: int, **answer_fields) -> tuple[Message, Message]:
    """Store a user turn and its answer in ``conv``."""
    prompt = message(n, conv.id, owner=conv.owner)
    answer = message(n + 1, conv.id, "assistant", owner=conv.owner, reply_to=prompt.id, **answer_fields)
    store.add_messages(conv.id, [prompt])
    store.add_messages(conv.id, [answer])
    return prompt, answer


def test_schema_is_at_the_newest_revision(store):
    assert current_revision(store.engine) == head_revision() == "0003"
    upgrade(store.engine)  # at the newest revision, applying again changes nothing
    assert current_revision(store.engine) == "0003"


def test_a_conversation_round_trips_with_its_first_messages(store):
    conv = conversation(1)
    first = [message(1, conv.id, "system"), message(2, conv.id)]
    store.create_conversation(conv, first)
    assert store.get_conversation(conv.id, "") == conv
    assert store.history(conv.id) == first
    assert store.get_conversation("f" * 32, "") is None


def test_an_answer_keeps_everything_about_how_it_was_made(store):
    conv = conversation(1)
    store.create_conversation(conv, [])
    params = {"max_tokens": 20, "temperature": 0.0, "top_p": 1.0, "seed": 7, "stop": ["\n"]}
    prompt, answer = exchange(store, conv, 10, finish_reason="length",
                              usage={"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32},
                              time_to_first_token=0.125, total_time=1.5, params=params, model="m", error=None)
    assert store.get_message(answer.id, "") == answer
    assert store.get_message(answer.id, "").params == params
    assert store.get_conversation(conv.id, "").updated_at == answer.created_at


def test_conversations_are_listed_newest_first_page_by_page(store):
    for n in range(5):
        store.create_conversation(conversation(n), [])
    seen, cursor = [], None
    while True:
        page = store.list_conversations("", 2, cursor)
        seen += [c.id for c in page.items]
        if page.next_cursor is None:
            break
        cursor = int(page.next_cursor)
    assert seen == [conversation(n).id for n in (4, 3, 2, 1, 0)]


def test_messages_are_listed_oldest_first_page_by_page(store):
    conv = conversation(1)
    store.create_conversation(conv, [message(n, conv.id) for n in range(5)])
    first = store.list_messages(conv.id, 3, None)
    rest = store.list_messages(conv.id, 3, int(first.next_cursor))
    assert [m.content for m in first.items + rest.items] == [f"text {n}" for n in range(5)]
    assert rest.next_cursor is None


def test_deleting_a_conversation_deletes_its_messages(store):
    keep, gone = conversation(1), conversation(2)
    for conv in (keep, gone):
        store.create_conversation(conv, [])
    exchange(store, keep, 10)
    _, answer = exchange(store, gone, 20)
    assert store.delete_conversation(gone.id, "")
    assert not store.delete_conversation(gone.id, "")
    assert store.get_conversation(gone.id, "") is None and store.history(gone.id) == []
    assert store.get_message(answer.id, "") is None
    assert len(store.history(keep.id)) == 2


def test_renaming_a_conversation_keeps_its_times_and_its_owner(store):
    mine, theirs = conversation(1, owner="key-a"), conversation(2, owner="key-b")
    for conv in (mine, theirs):
        store.create_conversation(conv, [])
    renamed = store.rename_conversation(mine.id, "a new title", "key-a")
    assert renamed == Conversation(mine.id, "a new title", mine.created_at, mine.updated_at, "key-a")
    assert store.get_conversation(mine.id, "key-a") == renamed
    assert store.rename_conversation(theirs.id, "not yours", "key-a") is None
    assert store.get_conversation(theirs.id, "key-b").title == "title 2"
    assert store.rename_conversation("0" * 32, "nobody", None) is None
    assert store.rename_conversation(theirs.id, "by an admin", None).title == "by an admin"


def test_exchanges_pair_each_answer_with_its_prompt_newest_last(store):
    conv = conversation(1)
    store.create_conversation(conv, [])
    pairs = [exchange(store, conv, n, finish_reason="stop") for n in (10, 20, 30)]
    store.add_messages(conv.id, [message(40, conv.id)])  # a user turn with no answer yet is not listed
    listed = store.list_exchanges("", 10, None)
    assert [(e.prompt, e.answer) for e in listed] == pairs
    assert [e.answer.id for e in store.list_exchanges("", 1, None)] == [pairs[2][1].id]
    assert [e.answer.id for e in store.list_exchanges("", 10, pairs[2][1].id)] == [pairs[0][1].id, pairs[1][1].id]
    assert store.list_exchanges("", 10, "0" * 32) == []


def test_reads_are_scoped_to_their_owner(store):
    mine, theirs = conversation(1, owner="key-a"), conversation(2, owner="key-b")
    for conv in (mine, theirs):
        store.create_conversation(conv, [])
    _, answer = exchange(store, theirs, 10)
    assert [c.id for c in store.list_conversations("key-a", 10, None).items] == [mine.id]
    assert store.get_conversation(theirs.id, "key-a") is None
    assert not store.delete_conversation(theirs.id, "key-a")
    assert store.get_message(answer.id, "key-a") is None and store.get_message(answer.id, "key-b") == answer
    assert store.list_exchanges("key-a", 10, None) == []
    assert len(store.list_conversations(None, 10, None).items) == 2  # owner=None: across owners


def test_taking_back_messages(store):
    conv = conversation(1)
    store.create_conversation(conv, [message(1, conv.id)])
    store.add_messages(conv.id, [message(2, conv.id), message(3, conv.id)])
    store.delete_messages([message(2, conv.id).id, message(3, conv.id).id])
    assert [m.content for m in store.history(conv.id)] == ["text 1"]


def test_a_broken_database_raises_storage_error(store):
    with store.engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE messages"))
    with pytest.raises(StorageError):
        store.history(conversation(1).id)


def test_upgrade_from_the_first_schema_keeps_the_data(url):
    engine = create_db_engine(url)
    upgrade(engine, "0001")
    assert current_revision(engine) == "0001"
    with engine.begin() as connection:  # rows as the first schema wrote them: no owner column yet
        connection.execute(sa.text("INSERT INTO conversations (id, title, created_at, updated_at) "
                                   "VALUES (:id, 't', :at, :at)"), {"id": "c" * 32, "at": T0})
        connection.execute(sa.text(
            "INSERT INTO messages (id, conversation_id, role, content, created_at, finish_reason, prompt_tokens, "
            "completion_tokens) VALUES (:id, :c, 'assistant', 'old answer', :at, 'stop', 3, 4)"),
            {"id": "a" * 32, "c": "c" * 32, "at": T0})
    engine.dispose()
    store = open_store(url)
    assert current_revision(store.engine) == "0003"
    old = store.get_message("a" * 32, "")
    assert (old.content, old.owner, old.usage) == ("old answer", "", {"prompt_tokens": 3, "completion_tokens": 4,
                                                                     "total_tokens": 7})
    assert store.get_conversation("c" * 32, "").owner == ""
    store.engine.dispose()


def test_the_pool_is_sized_from_the_setting(url):
    engine = create_db_engine(url, pool_size=3)
    assert engine.pool.size() == 3
    engine.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'db' / 'nested' / 'x.sqlite3'}")
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    store.engine.dispose()


COOPERATION_CHECK = """
from gevent import monkey; monkey.patch_all()
import sys, time, gevent, sqlalchemy as sa
from llm_api.storage.database import create_db_engine
engine = create_db_engine(sys.argv[1])
ticks = []
def slow_query():
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_sleep(1)"))
def ticker():
    for _ in range(10):
        ticks.append(time.monotonic()); gevent.sleep(0.05)
start = time.monotonic()
gevent.joinall([gevent.spawn(slow_query), gevent.spawn(ticker)])
print(sum(1 for t in ticks if t - start < 0.9), round(time.monotonic() - start, 2))
"""


def test_postgres_queries_let_other_greenlets_run(tmp_path):
    """Under gevent's patching (as in the gunicorn worker), a 1 s query must not stall the event loop."""
    with database_url("postgresql", tmp_path) as url:
        result = subprocess.run([sys.executable, "-c", COOPERATION_CHECK, url], capture_output=True, text=True,
                                timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    ticks_during_query, elapsed = result.stdout.split()
    assert int(ticks_during_query) == 10  # every tick ran while the query slept
    assert float(elapsed) >= 1.0
