"""Draws made row by row in NumPy, for logits on a CPU.

Each finds what the vectorised torch path over the whole vocabulary finds (the same nucleus, the same slot
of the cumulative distribution) in a few passes over the row, with no sort or cumulative sum over all of
it. Where a row cannot be decided this way, the function says so (-1) and the caller takes the torch path
for that row. The row's uniform number is drawn by the caller, once a step, whichever path uses it.
"""

from __future__ import annotations

import numpy as np

# The nucleus is looked for first among the tokens at least this likely (relative to the row's total): when
# they hold top_p of the mass, it is among them, and they are few (at most a thousand).
LIKELY = 1e-3
# A draw over a whole row first finds which block of this many vocabulary slots it lands in.
CDF_BLOCK = 256


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


def inverse_cdf_by_blocks(rows: np.ndarray, draws: np.ndarray) -> list[int]:
    """For each row of probabilities, the slot where its cumulative mass first passes its draw × its total
    (never a zero-mass slot): the cumulative sum runs over the sums of blocks of ``CDF_BLOCK`` slots, then
    inside the one block the draw lands in. A float64 cumulative sum over a whole vocabulary costs several
    times more, and this is every step's draw when ``top_p`` is 1."""
    count, vocab = rows.shape
    whole = vocab - vocab % CDF_BLOCK
    sums = rows[:, :whole].reshape(count, -1, CDF_BLOCK).sum(axis=-1, dtype=np.float64)
    if whole < vocab:
        sums = np.concatenate([sums, rows[:, whole:].sum(axis=-1, dtype=np.float64)[:, None]], axis=1)
    cdf = np.cumsum(sums, axis=-1)
    total = cdf[:, -1]
    targets = np.minimum(draws * total, np.nextafter(total, 0.0))
    tokens = []
    for row, row_cdf, target in zip(rows, cdf, targets, strict=True):
        block = int(np.searchsorted(row_cdf, target, side="right"))  # the first block whose end passes it
        start = block * CDF_BLOCK
        values = row[start:start + CDF_BLOCK]
        inside = (row_cdf[block - 1] if block else 0.0) + np.cumsum(values, dtype=np.float64)
        slot = int(np.searchsorted(inside, target, side="right"))
        if slot == values.size:  # the block's running sum ended a rounding error short of its sum
            slot = int(np.flatnonzero(values)[-1])
        tokens.append(start + slot)
    return tokens
