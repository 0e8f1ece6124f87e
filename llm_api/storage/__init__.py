"""Where conversations and their messages are kept: an interface, and the SQL implementation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from sqlalchemy.exc import SQLAlchemyError

from .database import create_db_engine, upgrade
from .errors import ConversationNotFound, StorageError
from .key_store import KeyNameTaken, SqlKeyStore
from .records import ApiKey, Conversation, Exchange, Message, Page
from .sql_store import SqlConversationStore

__all__ = [
    "ApiKey", "KeyNameTaken", "SqlKeyStore",
    "Conversation", "ConversationNotFound", "ConversationStore", "Exchange", "Message", "Page",
    "SqlConversationStore", "StorageError", "key_counts", "open_store", "prepare_database",
]


class ConversationStore(Protocol):
    """``owner=None`` reads across owners; a string scopes the read to that owner's records."""

    def create_conversation(self, conversation: Conversation, first_messages: Sequence[Message]) -> None: ...

    def get_conversation(self, conversation_id: str, owner: str | None) -> Conversation | None: ...

    def list_conversations(self, owner: str | None, limit: int, cursor: int | None) -> Page[Conversation]: ...

    def delete_conversation(self, conversation_id: str, owner: str | None) -> bool: ...

    def rename_conversation(self, conversation_id: str, title: str, owner: str | None) -> Conversation | None: ...

    def add_messages(self, conversation_id: str, new_messages: Sequence[Message]) -> None: ...

    def delete_messages(self, message_ids: Sequence[str]) -> None: ...

    def list_messages(self, conversation_id: str, limit: int, cursor: int | None) -> Page[Message]: ...

    def history(self, conversation_id: str) -> list[Message]: ...

    def get_message(self, message_id: str, owner: str | None) -> Message | None: ...

    def list_exchanges(self, owner: str | None, limit: int, before: str | None) -> list[Exchange]: ...


def prepare_database(url: str) -> None:
    """Bring the schema to the newest revision once, before any worker starts (gunicorn's master).

    Raises :class:`StorageError` with a one-line reason when the database cannot be used.
    """
    try:
        engine = create_db_engine(url, pool_size=1)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
    except (SQLAlchemyError, OSError, ValueError) as exc:
        raise StorageError(str(exc).splitlines()[0]) from exc


class KeyCounts(NamedTuple):
    created: int  # revoked ones included
    active: int


def key_counts(url: str) -> KeyCounts:
    """How many API keys the database at ``url`` holds (for the start-up checks in gunicorn's master)."""
    engine = create_db_engine(url, pool_size=1)
    try:
        keys = SqlKeyStore(engine)
        return KeyCounts(keys.count(active_only=False), keys.count(active_only=True))
    finally:
        engine.dispose()


def open_store(url: str, pool_size: int = 10, migrate: bool = True) -> SqlConversationStore:
    """Connect, bring the schema to the newest revision, and return the store."""
    engine = create_db_engine(url, pool_size)
    if migrate:
        upgrade(engine)
    return SqlConversationStore(engine)
