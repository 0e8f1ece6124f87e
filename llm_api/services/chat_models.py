"""What a chat request is, where its turn is stored, and what comes back: plain data, no behaviour."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..generation.structured import StructuredOutput
from ..generation.types import TokenLogprob
from .history import ChatMessage


class Reservation(Protocol):
    """What an admission check hands back: released with the tokens the answer really used."""

    def release(self, used_tokens: int) -> None: ...

    def cancel(self) -> None:
        """The request was refused after admission: nothing of it counts."""


Admit = Callable[[int], Reservation]


@dataclass(frozen=True)
class ChatRequest:
    """One generation request. ``messages`` go through the model's chat template; with
    ``raw=True`` the ``prompt`` text is tokenized as is (``/v1/completions``).

    With ``conversation_id`` the stored history comes first and ``messages`` holds
    only the new turn. ``fit_history`` drops the oldest turns that do not fit the
    context instead of refusing the request.
    """

    messages: list[ChatMessage]
    prompt: str  # what the log calls the prompt: the newest user turn, or the raw text
    max_tokens: int | None = None
    temperature: float | None = None  # None: the model's recommended value (Engine.sampling_defaults)
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    conversation_id: str | None = None
    raw: bool = False
    ignore_eos: bool = False
    fit_history: bool = False
    structured: StructuredOutput | None = None  # response_format, tools and tool_choice
    model: str | None = None  # the chat model asked for; None: a continued conversation's own, else the default
    # Optional sampling features (docs/api.md); the neutral values change nothing.
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1  # answers to generate, each with its own seed (seed + i) and stored message

    @classmethod
    def from_messages(cls, messages: list[ChatMessage], **fields: Any) -> ChatRequest:
        """OpenAI's shape: the whole conversation; the newest user turn is what gets logged as the prompt."""
        prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
        return cls(messages=messages, prompt=prompt, **fields)

    @classmethod
    def from_turn(cls, prompt: str, history: list[ChatMessage], **fields: Any) -> ChatRequest:
        """The lesson's shape: earlier ``history`` (or a stored conversation) plus the new user ``prompt``."""
        return cls(messages=[*history, {"role": "user", "content": prompt}], prompt=prompt, fit_history=True,
                   **fields)


@dataclass(frozen=True)
class Turn:
    """Where one exchange is stored: its conversation, the user's message, and the answer's id."""

    conversation_id: str
    user_message_id: str
    message_id: str
    owner: str
    created_conversation: bool
    written_ids: tuple[str, ...]
    dropped_turns: int
    prompt_messages: list[ChatMessage] = field(default_factory=list)
    request_id: str | None = None  # the HTTP request that asked for it, for the exchange log line


@dataclass
class ChatResult:
    message_id: str
    response: str
    history: list[ChatMessage]
    finish_reason: str
    usage: dict[str, int]
    time: str
    conversation_id: str
    dropped_turns: int = 0
    status: int = 200
    engine: str = ""  # the named engine that answered
    degraded: bool = False  # a fallback engine, or the static degraded answer
    model: str = ""  # that engine's model name
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # OpenAI's shape: id, type, function
    logprobs: list[TokenLogprob] | None = None  # when the request asked for them


class ChatUnavailable(Exception):
    """The service refused to start an answer, or stopped one, for a reason of its own (a 503)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}
