"""What the store keeps: conversations, their messages, and pages of either."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Conversation:
    id: str
    title: str
    created_at: datetime
    updated_at: datetime
    owner: str = ""


@dataclass(frozen=True)
class Message:
    """One turn. Assistant turns also carry how they were generated and how they ended."""

    id: str
    conversation_id: str
    role: str  # system | user | assistant
    content: str
    created_at: datetime
    owner: str = ""
    reply_to: str | None = None  # an assistant turn: the user turn it answers
    finish_reason: str | None = None  # stop | length | cancelled | error
    usage: dict[str, int] | None = None
    time_to_first_token: float | None = None
    total_time: float | None = None
    params: dict[str, Any] | None = None
    model: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Exchange:
    """A user turn and the answer to it: one row of the lesson's ``GET /chat/get/messages``."""

    prompt: Message
    answer: Message


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiKey:
    """A caller's key: only the SHA-256 of its secret part is kept. Limits of ``None`` mean unlimited."""

    id: str
    name: str
    secret_hash: str
    scopes: tuple[str, ...]
    created_at: datetime
    rpm: int | None = None
    tpm: int | None = None
    max_streams: int | None = None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None
