"""Errors the store raises (the HTTP layer maps them to statuses)."""


class StorageError(Exception):
    """The database could not be reached or refused a statement."""


class ConversationNotFound(LookupError):
    """No conversation with that id is visible to the caller."""

    def __init__(self, conversation_id: str) -> None:
        super().__init__(f"No conversation {conversation_id!r}.")
        self.conversation_id = conversation_id
