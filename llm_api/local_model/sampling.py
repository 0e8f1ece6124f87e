"""Token choice for every row of a step in one vectorised pass: greedy rows take the argmax; sampled rows
share one softmax (each at its own temperature), one nucleus (top-p) cut and one inverse-CDF draw, where
each row's random number comes from its own seeded generator, so a seed repeats whatever the batch."""

from __future__ import annotations

import os

import torch

from ..generation.types import SamplingParams

_SEED_MASK = (1 << 64) - 1
# The nucleus is looked for among this many most likely tokens first, which is far cheaper than sorting the
# whole vocabulary; a row whose nucleus is not inside them (a flat distribution) falls back to a full sort.
_NUCLEUS_CANDIDATES = 256


class Sampler:
    """One sequence's parameters and its random stream; a seed makes its choices repeatable."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._generator: torch.Generator | None = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little")
            self._generator = torch.Generator().manual_seed(seed & _SEED_MASK)  # any int is a valid seed

    def draw(self) -> torch.Tensor:
        """The next uniform number in [0, 1) of this sequence's stream, shape [1]."""
        return torch.rand(1, generator=self._generator, dtype=torch.float64)

    def choose(self, logits: torch.Tensor) -> int:
        """``logits``: 1-D float tensor over the vocabulary (on any device)."""
        token = choose_tokens(logits[None, :], [self])[0]
        if isinstance(token, Exception):
            raise token
        return token


def choose_tokens(logits: torch.Tensor, samplers: list[Sampler]) -> list[int | Exception]:
    """One token per row of ``logits`` [rows, vocab].

    A row whose sampling fails (non-finite probabilities) gets an exception instead of a token, so one
    bad row never takes its neighbours down with it.
    """
    tokens: list[int | Exception] = list(torch.argmax(logits, dim=-1).tolist())
    sampled = [row for row, sampler in enumerate(samplers) if not sampler.params.greedy]
    if not sampled:
        return tokens
    device = logits.device
    params = [samplers[row].params for row in sampled]
    temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device)[:, None]
    top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device)
    draws = torch.cat([samplers[row].draw() for row in sampled]).to(device)
    rows = logits if len(sampled) == len(samplers) else logits[torch.tensor(sampled, device=device)]
    probs = torch.softmax(rows.float() / temperature, dim=-1)
    finite = torch.isfinite(probs).all(dim=-1) & (probs.sum(dim=-1) > 0)
    probs = torch.where(finite[:, None], probs, torch.ones_like(probs))  # a failed row must not poison the draw
    chosen = sample_rows(probs, top_p, draws).tolist()
    for i, (row, ok) in enumerate(zip(sampled, finite.tolist(), strict=True)):
        tokens[row] = chosen[i] if ok else ValueError("the probabilities are not finite")
    return tokens


def sample_rows(probs: torch.Tensor, top_p: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """For each row of ``probs`` [rows, vocab], the token whose slot of the row's cumulative distribution,
    restricted to its nucleus (the smallest set of most likely tokens whose mass reaches ``top_p``), holds
    ``draws`` [rows] (uniform in [0, 1)). Rows with ``top_p >= 1`` keep the whole vocabulary."""
    tokens = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    whole = top_p >= 1.0
    if bool(whole.any()):
        tokens[whole] = _inverse_cdf(probs[whole], draws[whole])
    cut = ~whole
    if bool(cut.any()):
        tokens[cut] = _nucleus(probs[cut], top_p[cut], draws[cut])
    return tokens


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    candidates = min(_NUCLEUS_CANDIDATES, probs.shape[-1])
    values, order = torch.topk(probs, candidates, dim=-1)  # sorted, most likely first
    if bool((values.sum(dim=-1) < top_p).any()):
        values, order = torch.sort(probs, dim=-1, descending=True)
    values = _top_p_filter(values, top_p)
    return order.gather(-1, _inverse_cdf(values, draws)[:, None])[:, 0]


def _top_p_filter(sorted_probs: torch.Tensor, top_p: torch.Tensor | float) -> torch.Tensor:
    """Zero every probability (sorted, most likely first) outside the smallest set whose mass reaches
    ``top_p`` (per row), and renormalise."""
    limit = top_p[:, None] if isinstance(top_p, torch.Tensor) and top_p.dim() == 1 else top_p
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    outside = mass_before >= limit
    outside[..., 0] = False  # the most likely token is always kept, however small top_p (it may underflow to 0)
    kept = torch.where(outside, torch.zeros_like(sorted_probs), sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)


def _inverse_cdf(probs: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Index where each row's cumulative mass first passes ``draws`` × its total (never a zero-mass slot)."""
    cdf = torch.cumsum(probs.double(), dim=-1)
    total = cdf[:, -1]
    # strictly below the total, so the slot found always holds some mass
    target = torch.minimum(draws.double() * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target[:, None], right=True)[:, 0]
