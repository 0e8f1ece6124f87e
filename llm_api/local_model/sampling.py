"""Token choice for every row of a step in one vectorised pass.

The order, per row, is vLLM's: the log-probabilities a request asked for are read from the model's own
distribution (the raw log-softmax, before any of the request's adjustments); then ``logit_bias`` is
added, the penalties applied (repetition: Hugging Face's, on prompt and output tokens; presence and
frequency: OpenAI's, on output tokens); greedy rows take the argmax of the adjusted logits; sampled rows
share one softmax (each at its own temperature) after their top-k cut, one min-p cut, one nucleus
(top-p) cut and one inverse-CDF draw, where each row's random number comes from its own seeded generator,
so a seed repeats whatever the batch. Every step works row by row, so a row's choice never depends on its
neighbours, and each adjustment runs only on the rows that use it: a step where no row asks for one
costs what it did before these knobs existed. On a CPU the sampled rows with a nucleus or a cut draw one
by one in NumPy instead (:mod:`~llm_api.local_model.row_draws`), which picks the same token for the same
random number in a fraction of the passes over the vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..generation.types import SamplingParams
from .row_draws import nucleus_among_likely, nucleus_from_logits, truncated_from_logits

_SEED_MASK = (1 << 64) - 1
# The nucleus is looked for among this many most likely tokens first, which is far cheaper than sorting the
# whole vocabulary; a row whose nucleus is not inside them (a flat distribution) falls back to a full sort.
_NUCLEUS_CANDIDATES = 256
# What a log-probability of minus infinity (a token the model can never produce) is reported as: JSON has
# no infinity, and vLLM reports the same number.
LOGPROB_FLOOR = -9999.0


@dataclass(frozen=True)
class ChosenLogprobs:
    """The log-probability of the token just chosen and the ``top_logprobs`` most likely (id, logprob)."""

    logprob: float
    top: tuple[tuple[int, float], ...]


class Sampler:
    """One sequence's parameters, its random stream (a seed makes its choices repeatable), and what its
    penalties need to know of the tokens so far."""

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int] = ()) -> None:
        self.params = params
        self._generator: torch.Generator | None = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little")
            self._generator = torch.Generator().manual_seed(seed & _SEED_MASK)  # any int is a valid seed
        self._prompt_ids = list(prompt_ids) if params.repetition_penalty != 1.0 else []
        self._counts: torch.Tensor | None = None  # generated tokens [vocab] (presence and frequency penalties)
        self._seen: torch.Tensor | None = None  # prompt or generated tokens [vocab] (repetition penalty)
        self.chosen: ChosenLogprobs | None = None  # the last choice's log-probabilities, when asked for

    @property
    def adjusts_logits(self) -> bool:
        return self.params.penalised or bool(self.params.logit_bias)

    @property
    def truncates(self) -> bool:
        return self.params.top_k > 0 or self.params.min_p > 0.0

    def draw(self) -> torch.Tensor:
        """The next uniform number in [0, 1) of this sequence's stream, shape [1]."""
        return torch.rand(1, generator=self._generator, dtype=torch.float64)

    def counts(self, vocab: int, device: torch.device) -> torch.Tensor:
        if self._counts is None:
            self._counts = torch.zeros(vocab, dtype=torch.float32, device=device)
        return self._counts

    def seen(self, vocab: int, device: torch.device) -> torch.Tensor:
        if self._seen is None:
            self._seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            ids = [i for i in self._prompt_ids if 0 <= i < vocab]
            if ids:
                self._seen[torch.tensor(ids, device=device)] = True
        return self._seen

    def observe(self, token: int) -> None:
        """The token chosen for this sequence (the penalties of its next steps count it)."""
        if self._counts is not None:
            self._counts[token] += 1
        if self._seen is not None:
            self._seen[token] = True

    def choose(self, logits: torch.Tensor) -> int:
        """``logits``: 1-D float tensor over the vocabulary (on any device)."""
        token = choose_tokens(logits[None, :], [self])[0]
        if isinstance(token, Exception):
            raise token
        return token


def choose_tokens(logits: torch.Tensor, samplers: list[Sampler]) -> list[int | Exception]:
    """One token per row of ``logits`` [rows, vocab].

    A row whose sampling fails (non-finite probabilities) gets an exception instead of a token, so one
    bad row never takes its neighbours down with it. A sampler that asked for log-probabilities finds
    them in its ``chosen`` afterwards.
    """
    device = logits.device
    wanting = [row for row, sampler in enumerate(samplers) if sampler.params.logprobs]
    raw = torch.log_softmax(_select(logits, wanting).float(), dim=-1) if wanting else None
    adjusted = [row for row, sampler in enumerate(samplers) if sampler.adjusts_logits]
    if adjusted:
        work = logits.float()  # a copy when the logits were half precision
        logits = work.clone() if work is logits else work
        chosen = [samplers[row] for row in adjusted]
        if len(adjusted) == len(samplers):
            logits = adjust_logits(logits, chosen)
        else:
            logits[_index(adjusted, device)] = adjust_logits(logits[_index(adjusted, device)], chosen)
    tokens: list[int | Exception] = [0] * len(samplers)
    greedy = [row for row, sampler in enumerate(samplers) if sampler.params.greedy]
    if greedy:  # max's index: the first largest, as argmax's, in half argmax's time on a CPU
        for row, token in zip(greedy, _select(logits, greedy).max(dim=-1).indices.tolist(), strict=True):
            tokens[row] = token
    sampled = [row for row, sampler in enumerate(samplers) if not sampler.params.greedy]
    if sampled:
        _sample(logits, samplers, sampled, tokens)
    for row in adjusted:
        token = tokens[row]
        if not isinstance(token, Exception):
            samplers[row].observe(token)
    if raw is not None:
        _record_logprobs(raw, [samplers[row] for row in wanting], [tokens[row] for row in wanting])
    return tokens


def _sample_from_logits(logits: torch.Tensor, samplers: list[Sampler], sampled: list[int], draws: torch.Tensor,
                        tokens: list[int | Exception]) -> tuple[list[int], torch.Tensor]:
    """On a CPU, the rows with a nucleus, a top-k or a min-p cut draw straight from their logits (NumPy,
    :mod:`~llm_api.local_model.row_draws`: sorting only the likely tokens, exponentiating only those a top-k cut
    keeps); the rows it leaves, and their draws, are returned for the vectorised path."""
    def eligible(row: int) -> bool:
        return samplers[row].params.top_p < 1.0 or samplers[row].truncates

    if not any(eligible(row) for row in sampled):
        return sampled, draws  # no row for this path: nothing to convert
    rows = logits.float().numpy()
    left, left_draws = [], []
    for row, draw in zip(sampled, draws.tolist(), strict=True):
        token = _row_draw(rows[row], samplers[row], draw) if eligible(row) else -1
        if token >= 0:
            tokens[row] = token
        else:
            left.append(row)
            left_draws.append(draw)
    return left, torch.tensor(left_draws, dtype=torch.float64)


def _row_draw(row: np.ndarray, sampler: Sampler, draw: float) -> int:
    params = sampler.params
    if sampler.truncates:
        return truncated_from_logits(row, params.temperature, params.top_k, params.min_p, params.top_p, draw)
    return nucleus_from_logits(row, params.temperature, params.top_p, draw)


def _select(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """The given rows of ``logits`` (the tensor itself when that is all of them)."""
    if len(rows) == logits.shape[0]:
        return logits
    return logits[_index(rows, logits.device)]


def _index(rows: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, device=device)


def _sample(logits: torch.Tensor, samplers: list[Sampler], sampled: list[int],
            tokens: list[int | Exception]) -> None:
    """Draw the token of every sampled row into ``tokens``."""
    device = logits.device
    draws = torch.cat([samplers[row].draw() for row in sampled])  # each row's one number this step, whatever path
    if device.type == "cpu":
        sampled, draws = _sample_from_logits(logits, samplers, sampled, draws, tokens)
        if not sampled:
            return
    draws = draws.to(device)
    params = [samplers[row].params for row in sampled]
    temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device)[:, None]
    top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device)
    scaled = _select(logits, sampled).float() / temperature
    truncating = any(samplers[row].truncates for row in sampled)
    if truncating and any(p.top_k > 0 for p in params):
        scaled = top_k_filter(scaled, [p.top_k for p in params])
    probs = torch.softmax(scaled, dim=-1)
    if truncating and any(p.min_p > 0.0 for p in params):
        probs = min_p_filter(probs, torch.tensor([p.min_p for p in params], dtype=torch.float32, device=device))
    totals = probs.sum(dim=-1)  # NaN when any probability is: softmax's output is otherwise in [0, 1]
    finite = torch.isfinite(totals) & (totals > 0)
    if not bool(finite.all()):  # a failed row must not poison the draw
        probs = torch.where(finite[:, None], probs, torch.ones_like(probs))
    chosen = sample_rows(probs, top_p, draws).tolist()
    for i, (row, ok) in enumerate(zip(sampled, finite.tolist(), strict=True)):
        tokens[row] = chosen[i] if ok else ValueError("the probabilities are not finite")


def adjust_logits(rows: torch.Tensor, samplers: list[Sampler]) -> torch.Tensor:
    """``rows`` [n, vocab] (float, owned: changed in place) with each sampler's ``logit_bias`` added and its
    penalties applied, from the tokens it has seen so far."""
    vocab, device = rows.shape[-1], rows.device
    biased = [(i, token, bias) for i, s in enumerate(samplers) for token, bias in s.params.logit_bias if token < vocab]
    if biased:
        where, tokens, biases = zip(*biased, strict=True)
        rows.index_put_((_index(list(where), device), _index(list(tokens), device)),
                        torch.tensor(biases, dtype=rows.dtype, device=device), accumulate=True)
    repeated = [i for i, s in enumerate(samplers) if s.params.repetition_penalty != 1.0]
    if repeated:
        index = _index(repeated, device)
        seen = torch.stack([samplers[i].seen(vocab, device) for i in repeated])
        penalty = torch.tensor([samplers[i].params.repetition_penalty for i in repeated], device=device)[:, None]
        x = rows[index]
        rows[index] = torch.where(seen, torch.where(x > 0, x / penalty, x * penalty), x)
    counted = [i for i, s in enumerate(samplers) if s.params.presence_penalty or s.params.frequency_penalty]
    if counted:
        index = _index(counted, device)
        counts = torch.stack([samplers[i].counts(vocab, device) for i in counted])
        frequency = torch.tensor([samplers[i].params.frequency_penalty for i in counted], device=device)[:, None]
        presence = torch.tensor([samplers[i].params.presence_penalty for i in counted], device=device)[:, None]
        rows[index] = rows[index] - counts * frequency - (counts > 0).float() * presence
    return rows


def top_k_filter(scaled: torch.Tensor, top_k: list[int]) -> torch.Tensor:
    """Each row's logits outside its ``top_k`` most likely set to minus infinity (ties at the cut kept);
    rows with ``top_k`` 0 (or at least the vocabulary) untouched."""
    vocab = scaled.shape[-1]
    ks = [k if 0 < k < vocab else 0 for k in top_k]
    widest = max(ks)
    if widest == 0:
        return scaled
    kth = torch.topk(scaled, widest, dim=-1).values  # sorted, most likely first
    index = torch.tensor([max(k, 1) - 1 for k in ks], device=scaled.device)[:, None]
    limit = kth.gather(-1, index)
    cut = torch.tensor([k > 0 for k in ks], device=scaled.device)[:, None] & (scaled < limit)
    return scaled.masked_fill(cut, float("-inf"))


def min_p_filter(probs: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Zero each row's probabilities below ``min_p`` × its largest one, and renormalise (``min_p`` 0: no cut)."""
    floor = probs.max(dim=-1, keepdim=True).values * min_p[:, None]
    kept = torch.where(probs < floor, torch.zeros_like(probs), probs)
    return kept / kept.sum(dim=-1, keepdim=True)


def _record_logprobs(raw: torch.Tensor, samplers: list[Sampler], tokens: list[int | Exception]) -> None:
    """Each sampler's ``chosen``: the raw log-probability of its token and its ``top_logprobs`` alternatives."""
    safe = [t if isinstance(t, int) else 0 for t in tokens]
    chosen = raw.gather(-1, torch.tensor(safe, device=raw.device)[:, None])[:, 0]
    widest = min(max(s.params.top_logprobs for s in samplers), raw.shape[-1])
    top_values: list[list[float]] = [[] for _ in samplers]
    top_ids: list[list[int]] = [[] for _ in samplers]
    if widest:
        values, ids = torch.topk(raw, widest, dim=-1)
        top_values = _finite(values).tolist()
        top_ids = ids.tolist()
    for i, (sampler, logprob) in enumerate(zip(samplers, _finite(chosen).tolist(), strict=True)):
        k = sampler.params.top_logprobs
        sampler.chosen = ChosenLogprobs(logprob, tuple(zip(top_ids[i][:k], top_values[i][:k], strict=True)))


def _finite(values: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(values, nan=LOGPROB_FLOOR, neginf=LOGPROB_FLOOR, posinf=0.0).clamp(min=LOGPROB_FLOOR)


def sample_rows(probs: torch.Tensor, top_p: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """For each row of ``probs`` [rows, vocab], the token whose slot of the row's cumulative distribution,
    restricted to its nucleus (the smallest set of most likely tokens whose mass reaches ``top_p``), holds
    ``draws`` [rows] (uniform in [0, 1)). Rows with ``top_p >= 1`` keep the whole vocabulary."""
    return _by_kind(top_p >= 1.0, lambda rows: _inverse_cdf(probs[rows], draws[rows]),
                    lambda rows: _nucleus(probs[rows], top_p[rows], draws[rows]))


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    if probs.device.type != "cpu":
        return _nucleus_among_candidates(probs, top_p, draws)
    tokens = _nucleus_among_likely(probs, top_p, draws)
    wide = tokens < 0
    if bool(wide.any()):
        tokens[wide] = _nucleus_among_candidates(probs[wide], top_p[wide], draws[wide])
    return tokens


def _nucleus_among_likely(probs: torch.Tensor, top_p: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Each row's token drawn from its nucleus when that lies among its likely tokens, else -1: on a CPU, row
    by row in NumPy, this costs a tenth of a top-k over the vocabulary."""
    rows = zip(probs.numpy(), top_p.tolist(), draws.tolist(), strict=True)
    return torch.tensor([nucleus_among_likely(row, mass, draw) for row, mass, draw in rows], dtype=torch.long)


def _nucleus_among_candidates(probs: torch.Tensor, top_p: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    candidates = min(_NUCLEUS_CANDIDATES, probs.shape[-1])
    values, order = torch.topk(probs, candidates, dim=-1)  # sorted, most likely first

    def whole_vocabulary(rows: Rows) -> torch.Tensor:
        values, order = torch.sort(probs[rows], dim=-1, descending=True)
        return _nucleus_draw(values, order, top_p[rows], draws[rows])

    # Rows whose nucleus is wider than the candidates: only they sort the whole vocabulary.
    return _by_kind(values.sum(dim=-1) < top_p, whole_vocabulary,
                    lambda rows: _nucleus_draw(values[rows], order[rows], top_p[rows], draws[rows]))


Rows = torch.Tensor | slice  # a row mask, or every row


def _by_kind(kind: torch.Tensor, when: Callable[[Rows], torch.Tensor],
             otherwise: Callable[[Rows], torch.Tensor]) -> torch.Tensor:
    """Each row's token from ``when`` where ``kind`` holds and from ``otherwise`` elsewhere; each is called with
    the rows it serves. Rows all of one kind (the usual case) are passed as every row, so none is copied."""
    if bool(kind.all()):
        return when(slice(None))
    if not bool(kind.any()):
        return otherwise(slice(None))
    tokens = torch.empty(kind.shape[0], dtype=torch.long, device=kind.device)
    tokens[kind] = when(kind)
    tokens[~kind] = otherwise(~kind)
    return tokens


def _nucleus_draw(values: torch.Tensor, order: torch.Tensor, top_p: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """The drawn token of each row, from its most likely tokens (``values``, sorted, and their ids ``order``)."""
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
