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
    # The knobs below are neutral by default; docs/api.md gives each one's range and meaning.
    top_k: int = 0  # keep the k most likely tokens; 0: all
    min_p: float = 0.0  # drop tokens less likely than min_p × the most likely one's probability
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per earlier occurrence in the generated text
    repetition_penalty: float = 1.0  # Hugging Face's: divides (or multiplies) the logits of prompt and output tokens
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    logprobs: bool = False  # report each chosen token's log-probability
    top_logprobs: int = 0  # and this many most likely alternatives at each position

    @property
    def greedy(self) -> bool:
        """Temperatures this close to 0 are greedy (dividing by them overflows the logits)."""
        return self.temperature < MIN_SAMPLING_TEMPERATURE

    @property
    def penalised(self) -> bool:
        """Some penalty changes the logits according to the tokens seen so far."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


@dataclass(frozen=True)
class TokenLogprob:
    """One position of an answer: the chosen token (as text and as its bytes) and its log-probability
    under the model's own distribution, with the most likely alternatives (``top``, most likely first;
    their own ``top`` is empty)."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[TokenLogprob, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """OpenAI's chat shape: ``{"token", "logprob", "bytes", "top_logprobs"}``."""
        return {"token": self.token, "logprob": self.logprob, "bytes": list(self.bytes),
                "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in self.top]}


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
    """New text for a request (never ends inside a UTF-8 character), and the log-probabilities of the tokens
    generated since the last delta when the request asked for them."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


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
