"""Per-sequence token choice: greedy, or temperature + top-p with its own seeded generator."""

from __future__ import annotations

import os

import torch

from ..generation.types import SamplingParams

_SEED_MASK = (1 << 64) - 1


class Sampler:
    """Chooses the next token for one sequence; a seed makes the choices repeatable."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._generator: torch.Generator | None = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little")
            self._generator = torch.Generator().manual_seed(seed & _SEED_MASK)  # any int is a valid seed

    def choose(self, logits: torch.Tensor) -> int:
        """``logits``: 1-D float tensor over the vocabulary (on any device)."""
        if self._generator is None:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float().cpu() / self.params.temperature, dim=-1)
        if self.params.top_p < 1.0:
            probs = _top_p_filter(probs, self.params.top_p)
        return int(torch.multinomial(probs, 1, generator=self._generator))


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest set whose mass reaches ``top_p``."""
    sorted_probs, order = torch.sort(probs, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs[mass_before >= top_p] = 0.0
    filtered = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return filtered / filtered.sum()


def choose_tokens(logits: torch.Tensor, samplers: list[Sampler]) -> list[int | Exception]:
    """One token per row of ``logits`` [rows, vocab]; greedy rows share one argmax.

    A row whose sampling fails gets the exception instead of a token, so one bad
    row never takes its neighbours down with it.
    """
    greedy = torch.argmax(logits, dim=-1).tolist()
    tokens: list[int | Exception] = []
    for row, sampler in enumerate(samplers):
        if sampler.params.greedy:
            tokens.append(greedy[row])
            continue
        try:
            tokens.append(sampler.choose(logits[row]))
        except (RuntimeError, ValueError) as exc:  # e.g. non-finite probabilities
            tokens.append(exc)
    return tokens
