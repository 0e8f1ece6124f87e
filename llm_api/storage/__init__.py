"""Where handled exchanges are kept: an interface, and an in-process implementation."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from gevent.lock import RLock


@dataclass
class ExchangeRecord:
    """One prompt and its answer, as stored and as listed by ``GET /chat/get/messages``."""

    message_id: str
    time: str  # "%Y-%m-%d %H:%M:%S", UTC
    prompt: str
    response: str
    finish_reason: str
    usage: dict[str, int]
    model: str
    conversation_id: str | None = None
    time_to_first_token: float | None = None
    total_time: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    owner: str = ""


class MessageStore(Protocol):
    def add(self, record: ExchangeRecord) -> None: ...

    def list(self, limit: int, before: str | None = None) -> list[ExchangeRecord]:
        """Up to ``limit`` records older than ``before`` (a message_id), newest last."""
        ...

    def get(self, message_id: str) -> ExchangeRecord | None: ...


class InMemoryMessageStore:
    """Keeps the newest ``capacity`` exchanges of this worker process."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._records: OrderedDict[str, ExchangeRecord] = OrderedDict()
        self._capacity = capacity
        self._lock = RLock()

    def add(self, record: ExchangeRecord) -> None:
        with self._lock:
            self._records[record.message_id] = record
            while len(self._records) > self._capacity:
                self._records.popitem(last=False)

    def list(self, limit: int, before: str | None = None) -> list[ExchangeRecord]:
        with self._lock:
            records = list(self._records.values())
        if before is not None:
            ids = [r.message_id for r in records]
            records = records[: ids.index(before)] if before in ids else []
        return records[-limit:] if limit > 0 else []

    def get(self, message_id: str) -> ExchangeRecord | None:
        with self._lock:
            return self._records.get(message_id)
