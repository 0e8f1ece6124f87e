"""The conversation store on SQLAlchemy Core (SQLite or PostgreSQL).

Every method is one short transaction. Ordering uses the auto-increment ``pk``
(insertion order, safe with concurrent writers); the public ids are random hex.
``owner=None`` reads across owners (an admin view); a string scopes the read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from .errors import StorageError
from .records import Conversation, Exchange, Message, Page
from .tables import conversations, messages

Q = TypeVar("Q", sa.Select[Any], sa.Update)


@contextmanager
def transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """One short transaction; any database failure becomes a :class:`StorageError` (its cause kept)."""
    try:
        with engine.begin() as connection:
            yield connection
    except SQLAlchemyError as exc:
        raise StorageError(f"{type(exc).__name__}: {str(exc).splitlines()[0]}") from exc


class SqlConversationStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _transaction(self) -> AbstractContextManager[sa.Connection]:
        return transaction(self.engine)

    # ---- conversations ----------------------------------------------------------------------------
    def create_conversation(self, conversation: Conversation, first_messages: Sequence[Message]) -> None:
        with self._transaction() as db:
            db.execute(conversations.insert().values(
                id=conversation.id, title=conversation.title, owner=conversation.owner,
                created_at=conversation.created_at, updated_at=conversation.updated_at))
            _insert_messages(db, first_messages)

    def get_conversation(self, conversation_id: str, owner: str | None) -> Conversation | None:
        query = _owned(sa.select(conversations).where(conversations.c.id == conversation_id), conversations, owner)
        with self._transaction() as db:
            row = db.execute(query).first()
        return _conversation(row) if row else None

    def list_conversations(self, owner: str | None, limit: int, cursor: int | None) -> Page[Conversation]:
        """Newest first; ``cursor`` is the ``next_cursor`` of the previous page."""
        query = _owned(sa.select(conversations), conversations, owner)
        if cursor is not None:
            query = query.where(conversations.c.pk < cursor)
        query = query.order_by(conversations.c.pk.desc()).limit(limit + 1)
        with self._transaction() as db:
            rows = db.execute(query).all()
        return _page(rows, limit, _conversation)

    def delete_conversation(self, conversation_id: str, owner: str | None) -> bool:
        with self._transaction() as db:
            found = db.execute(_owned(sa.select(conversations.c.id).where(conversations.c.id == conversation_id),
                                      conversations, owner)).first()
            if not found:
                return False
            db.execute(messages.delete().where(messages.c.conversation_id == conversation_id))
            db.execute(conversations.delete().where(conversations.c.id == conversation_id))
        return True

    def rename_conversation(self, conversation_id: str, title: str, owner: str | None) -> Conversation | None:
        """Set the title; ``updated_at`` stays the time of the newest message. None when not found."""
        with self._transaction() as db:
            found = db.execute(_owned(sa.update(conversations).where(conversations.c.id == conversation_id),
                                      conversations, owner).values(title=title))
            if found.rowcount == 0:
                return None
            row = db.execute(sa.select(conversations).where(conversations.c.id == conversation_id)).first()
        return _conversation(row) if row else None

    # ---- messages ---------------------------------------------------------------------------------
    def add_messages(self, conversation_id: str, new_messages: Sequence[Message]) -> None:
        """Append to a conversation and mark it updated."""
        with self._transaction() as db:
            _insert_messages(db, new_messages)
            db.execute(conversations.update().where(conversations.c.id == conversation_id)
                       .values(updated_at=max(m.created_at for m in new_messages)))

    def delete_messages(self, message_ids: Sequence[str]) -> None:
        with self._transaction() as db:
            db.execute(messages.delete().where(messages.c.id.in_(list(message_ids))))

    def list_messages(self, conversation_id: str, limit: int, cursor: int | None) -> Page[Message]:
        """Oldest first; ``cursor`` is the ``next_cursor`` of the previous page."""
        query = sa.select(messages).where(messages.c.conversation_id == conversation_id)
        if cursor is not None:
            query = query.where(messages.c.pk > cursor)
        query = query.order_by(messages.c.pk).limit(limit + 1)
        with self._transaction() as db:
            rows = db.execute(query).all()
        return _page(rows, limit, _message)

    def history(self, conversation_id: str) -> list[Message]:
        """Every message of a conversation, oldest first."""
        query = sa.select(messages).where(messages.c.conversation_id == conversation_id).order_by(messages.c.pk)
        with self._transaction() as db:
            return [_message(row) for row in db.execute(query)]

    def get_message(self, message_id: str, owner: str | None) -> Message | None:
        with self._transaction() as db:
            row = db.execute(_owned(sa.select(messages).where(messages.c.id == message_id), messages, owner)).first()
        return _message(row) if row else None

    def list_exchanges(self, owner: str | None, limit: int, before: str | None) -> list[Exchange]:
        """Answered user turns, newest last; ``before`` is an answer's message id."""
        answer, prompt = messages.alias("answer"), messages.alias("prompt")
        query = (sa.select(answer, prompt).join(prompt, prompt.c.id == answer.c.reply_to)
                 .where(answer.c.role == "assistant"))
        query = _owned(query, answer, owner)
        with self._transaction() as db:
            if before is not None:
                pivot = db.execute(sa.select(messages.c.pk).where(messages.c.id == before)).scalar()
                if pivot is None:
                    return []
                query = query.where(answer.c.pk < pivot)
            rows = db.execute(query.order_by(answer.c.pk.desc()).limit(limit)).all()
        width = len(messages.columns)
        return [Exchange(prompt=_message(row[width:]), answer=_message(row[:width])) for row in reversed(rows)]


def _owned(query: Q, table: sa.FromClause, owner: str | None) -> Q:
    return query if owner is None else query.where(table.c.owner == owner)


def _insert_messages(db: sa.Connection, new_messages: Sequence[Message]) -> None:
    if new_messages:
        db.execute(messages.insert(), [_message_row(m) for m in new_messages])


def _message_row(message: Message) -> dict[str, Any]:
    usage = message.usage or {}
    return {
        "id": message.id, "conversation_id": message.conversation_id, "role": message.role,
        "content": message.content, "created_at": message.created_at, "owner": message.owner,
        "reply_to": message.reply_to, "finish_reason": message.finish_reason,
        "prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": usage.get("completion_tokens"),
        "time_to_first_token": message.time_to_first_token, "total_time": message.total_time,
        "params": message.params, "model": message.model, "error": message.error,
    }


def utc(value: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; everything is stored in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _conversation(row: Any) -> Conversation:
    m = row._mapping
    return Conversation(id=m["id"], title=m["title"], created_at=utc(m["created_at"]),
                        updated_at=utc(m["updated_at"]), owner=m["owner"])


def _message(row: Any) -> Message:
    values = dict(zip(messages.columns.keys(), row, strict=True))
    usage = None
    if values["prompt_tokens"] is not None:
        prompt_tokens, completion_tokens = values["prompt_tokens"], values["completion_tokens"] or 0
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
    return Message(
        id=values["id"], conversation_id=values["conversation_id"], role=values["role"],
        content=values["content"], created_at=utc(values["created_at"]), owner=values["owner"],
        reply_to=values["reply_to"], finish_reason=values["finish_reason"], usage=usage,
        time_to_first_token=values["time_to_first_token"], total_time=values["total_time"],
        params=values["params"], model=values["model"], error=values["error"],
    )


def _page(rows: Sequence[Any], limit: int, convert: Any) -> Page[Any]:
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = str(rows[-1]._mapping["pk"]) if more else None
    return Page([convert(row) for row in rows], next_cursor)
