"""Reading, renaming and deleting stored conversations, scoped to their owner."""

from __future__ import annotations

from ..storage import Conversation, ConversationNotFound, ConversationStore, Message, Page


class ConversationService:
    def __init__(self, store: ConversationStore) -> None:
        self._store = store

    def list(self, limit: int, cursor: int | None, owner: str | None = "") -> Page[Conversation]:
        return self._store.list_conversations(owner, limit, cursor)

    def get(self, conversation_id: str, limit: int, cursor: int | None,
            owner: str | None = "") -> tuple[Conversation, Page[Message]]:
        """The conversation and one page of its messages, oldest first."""
        conversation = self._store.get_conversation(conversation_id, owner)
        if conversation is None:
            raise ConversationNotFound(conversation_id)
        return conversation, self._store.list_messages(conversation_id, limit, cursor)

    def delete(self, conversation_id: str, owner: str | None = "") -> None:
        if not self._store.delete_conversation(conversation_id, owner):
            raise ConversationNotFound(conversation_id)

    def rename(self, conversation_id: str, title: str, owner: str | None = "") -> Conversation:
        renamed = self._store.rename_conversation(conversation_id, title, owner)
        if renamed is None:
            raise ConversationNotFound(conversation_id)
        return renamed
