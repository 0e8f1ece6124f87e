"""The nucleus draw made row by row in NumPy, for logits on a CPU.

It finds what the vectorised torch path over the whole vocabulary finds (the same nucleus, the same slot of
its cumulative distribution) in a few passes over the row, sorting only its likely tokens. Where a row cannot
be decided this way, it says so (-1) and the caller takes the torch path for that row. The row's uniform
number is drawn by the caller, once a step, whichever path uses it.
"""

from __future__ import annotations

import numpy as np

# The nucleus is looked for first among the tokens at least this likely (relative to the row's total): when
# they hold top_p of the mass, it is among them, and they are few (at most a thousand).
LIKELY = 1e-3


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
    nucleus = cdf[size - 1]
    target = min(draw * nucleus, np.nextafter(nucleus, 0.0))  # strictly below the total: a slot with weight
    return int(ids[np.searchsorted(cdf[:size], target, side="right")])
