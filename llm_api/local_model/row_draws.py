"""Token draws made row by row in NumPy, for logits on a CPU.

They find what the vectorised torch path over the whole vocabulary finds (the same cut, the same nucleus, the
same slot of the cumulative distribution) in a few passes over the row, sorting only its likely tokens. Where
a row cannot be decided this way, they say so (-1) and the caller takes the torch path for that row. The row's
uniform number is drawn by the caller, once a step, whichever path uses it.
"""

from __future__ import annotations

import numpy as np

# The nucleus is looked for first among the tokens at least this likely (relative to the row's total): when
# they hold top_p of the mass, it is among them, and they are few (at most a thousand).
LIKELY = 1e-3
# A top-k cut is looked for first among the tokens this close to the most likely one (in units of the scaled
# logits): when at least k are, the k most likely are among them.
TOP_K_SPREADS = (8.0, 32.0)


def nucleus_from_logits(row: np.ndarray, temperature: float, top_p: float, draw: float) -> int:
    """The token drawn from the nucleus of ``softmax(row / temperature)`` with the uniform ``draw``, or -1 when
    that nucleus is not among the likely tokens (a flat row) or the row is not finite.

    The weights are the softmax's numerators in float32, as torch's softmax computes them; only the likely
    ones are sorted."""
    peak = row.max()
    if not np.isfinite(peak):
        return -1
    weights = row - peak
    weights *= np.float32(1.0 / temperature)
    np.exp(weights, out=weights)  # the most likely token weighs 1
    total = float(weights.sum())
    ids = np.flatnonzero(weights >= LIKELY * total)
    return draw_from_top(ids, weights[ids].astype(np.float64), total, top_p, draw)


def nucleus_among_likely(row: np.ndarray, top_p: float, draw: float) -> int:
    """The token drawn from the nucleus of ``row`` (probabilities summing to 1) when that lies among its tokens
    of probability at least ``LIKELY``, else -1: finding those is one comparison over the row."""
    ids = np.flatnonzero(row >= LIKELY)
    return draw_from_top(ids, row[ids], 1.0, top_p, draw)


def draw_from_top(ids: np.ndarray, weights: np.ndarray, total: float, top_p: float, draw: float) -> int:
    """The token drawn from the nucleus, given the weights of a top set of the row's tokens (every token not
    given is less likely than each given one) and the whole row's weight; -1 when the given tokens hold less
    than ``top_p`` of it.

    The nucleus is the smallest set of most likely tokens whose weight reaches ``top_p`` of the total (ties
    in vocabulary order), and the draw takes the slot of its cumulative weight holding ``draw`` × its weight.
    """
    if not weights.size:
        return -1
    order = np.argsort(-weights, kind="stable")  # most likely first; ties in vocabulary order
    ids, weights = ids[order], weights[order]
    cdf = np.cumsum(weights, dtype=np.float64)
    if cdf[-1] < top_p * total:
        return -1
    size = max(1, int(np.searchsorted(cdf - weights, top_p * total, side="left")))  # the weight before each is short
    return _slot_holding(ids[:size], cdf[:size], draw)


def _slot_holding(ids: np.ndarray, cdf: np.ndarray, draw: float) -> int:
    """The token whose slot of the cumulative weights ``cdf`` (of ``ids``, in that order) holds ``draw`` × their
    total: the target is kept strictly below the total, so the slot found always has some weight."""
    total = cdf[-1]
    target = min(draw * total, np.nextafter(total, 0.0))
    return int(ids[np.searchsorted(cdf, target, side="right")])


def truncated_from_logits(row: np.ndarray, temperature: float, top_k: int, min_p: float, top_p: float,
                          draw: float) -> int:
    """The token drawn with the uniform ``draw`` from ``row`` cut as the vectorised path cuts it: scaled by
    ``temperature``; cut to its ``top_k`` most likely tokens (ties at the cut kept; 0 or the vocabulary's size
    or more: no cut); softmaxed; cut below ``min_p`` × the most likely token's probability and renormalised;
    then drawn from the nucleus (``top_p`` < 1) or from the whole cut distribution in vocabulary order. -1 when
    the row is not finite or the nucleus cannot be decided here.

    Only the tokens that survive the top-k cut are exponentiated; a min-p cut alone needs the whole row's sum."""
    scaled = row / np.float32(temperature)
    peak = scaled.max()
    if not np.isfinite(peak):
        return -1
    if 0 < top_k < scaled.size:
        ids = _top_k_ids(scaled, peak, top_k)
        weights = np.exp(scaled[ids] - peak)
        probs = weights / weights.sum(dtype=np.float32)
    else:
        weights = scaled - peak
        np.exp(weights, out=weights)
        row_sum = weights.sum(dtype=np.float32)
        # a little below the cut, which is made on the probabilities next, so that rounding loses no token
        ids = np.flatnonzero(weights >= np.float32(min_p * 0.999)) if min_p > 0 else np.arange(row.size)
        probs = weights[ids] / row_sum  # the softmax of the whole row, at these tokens
    if min_p > 0:
        kept = probs >= probs.max() * np.float32(min_p)
        ids, probs = ids[kept], probs[kept]
        probs = probs / probs.sum(dtype=np.float32)
    if top_p < 1.0:
        return draw_from_top(ids, probs.astype(np.float64), 1.0, top_p, draw)
    return _slot_holding(ids, np.cumsum(probs, dtype=np.float64), draw)  # in vocabulary order, as over the whole row


def _top_k_ids(scaled: np.ndarray, peak: np.floating, top_k: int) -> np.ndarray:
    """The ids, in vocabulary order, of the ``top_k`` largest of ``scaled`` and of any token equal to the k-th."""
    for spread in TOP_K_SPREADS:
        ids = np.flatnonzero(scaled >= peak - spread)
        if ids.size >= top_k:
            break
    else:
        ids = np.arange(scaled.size)  # a flatter row: every token is a candidate
    if ids.size > top_k:
        values = scaled[ids]
        limit = np.partition(values, ids.size - top_k)[ids.size - top_k]
        ids = ids[values >= limit]
    return ids
