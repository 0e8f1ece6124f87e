"""Plain data passed between the service layer and the engine thread."""

from __future__ import annotations

from dataclasses import dataclass, field

from .structured import StructuredOutput

MIN_SAMPLING_TEMPERATURE = 1e-4


@dataclass(frozen=True)
class SamplingParams:
    """How one request chooses its tokens. ``temperature == 0`` means greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # keep generating past end-of-turn tokens (benchmarks: exact output lengths)
    structured: StructuredOutput | None = None  # response_format and tools (generation/structured.py)

    @property
    def greedy(self) -> bool:
        """Temperatures this close to 0 are greedy (dividing by them overflows the logits)."""
        return self.temperature < MIN_SAMPLING_TEMPERATURE


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that leaves temperature or top_p out gets: the model's recommended values (its
    ``generation_config.json``, or documented values for a model without one), else OpenAI's 1.0."""

    temperature: float = 1.0
    top_p: float = 1.0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True)
class TextDelta:
    """New text for a request (never ends inside a UTF-8 character)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The request is over: ``finish_reason`` is stop, length, tool_calls, cancelled or error."""

    finish_reason: str
    usage: Usage
    time_to_first_token: float | None
    total_time: float
    error: str | None = None
    token_ids: tuple[int, ...] = ()  # every generated id, stop token included
    engine: str | None = None  # the named engine that answered (set by the engine router)
    model: str | None = None  # that engine's model name
    degraded: bool = False  # answered by a fallback engine or the static degraded answer
    # Seconds from admission until the engine took the request from its queue (the local engine reports it;
    # the prefill runs from then until the first token). None where the engine has no queue of its own.
    queue_time: float | None = None


@dataclass
class GenerationRequest:
    """What the engine needs to generate: prompt ids and sampling parameters."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)
