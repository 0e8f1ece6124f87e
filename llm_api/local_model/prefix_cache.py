"""Prefix reuse: the KV state of recent sequences, so that a prompt which starts the same way skips
recomputing the shared part.

A finished sequence leaves its keys and values (prompt and generated tokens, all that was fed to the
model) here, keyed by its token ids. A new prompt takes the longest cached prefix of itself: a
conversation's next turn (whose prompt holds the previous answer), OpenAI messages resent with one
more turn, or a long system prompt shared by many requests. Entries are evicted least recently used
once the tokens held pass the budget. Only the engine thread touches it, so there are no locks.

Reused tensors are never written to: a prefill's cache grows by concatenation, which makes new
tensors, so one entry can seed any number of prefills at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, [1, kv_heads, tokens, head_dim]

MIN_MATCH_TOKENS = 16  # shorter matches save too little to be worth an entry's slot


@dataclass
class _Entry:
    ids: tuple[int, ...]
    kv: KV


class PrefixCache:
    """Token ids → KV state, bounded by ``capacity_tokens`` (0 turns it off)."""

    def __init__(self, capacity_tokens: int, min_match: int = MIN_MATCH_TOKENS) -> None:
        self.capacity_tokens = capacity_tokens
        self.min_match = max(1, min_match)
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._next_key = 0
        self.tokens = 0  # tokens held in all entries
        self.hits = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def enabled(self) -> bool:
        return self.capacity_tokens > 0

    def lookup(self, prompt: Sequence[int]) -> tuple[int, KV] | None:
        """The longest cached prefix of ``prompt`` that still leaves its last token to run (the model must
        see at least one new token to give the next token's logits): its length and its KV, as views."""
        if not self._entries:
            return None
        wanted = tuple(prompt)
        limit = len(wanted) - 1
        best, best_key = 0, -1
        for key, entry in self._entries.items():
            length = common_prefix(entry.ids, wanted, limit)
            if length > best:
                best, best_key = length, key
        if best < self.min_match:
            return None
        self._entries.move_to_end(best_key)
        self.hits += 1
        self.reused_tokens += best
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in self._entries[best_key].kv]

    def store(self, ids: Sequence[int], kv: KV) -> None:
        """Keep ``kv`` (owned from now on) for ``ids``. An entry it extends is dropped; one that already
        covers it is only marked as recently used."""
        key_ids = tuple(ids)
        size = len(key_ids)
        if not self.enabled or size < self.min_match or size > self.capacity_tokens:
            return
        for key, entry in list(self._entries.items()):
            if len(entry.ids) >= size and entry.ids[:size] == key_ids:
                self._entries.move_to_end(key)
                return
            if entry.ids == key_ids[:len(entry.ids)]:
                self._drop(key)
        self._entries[self._next_key] = _Entry(key_ids, kv)
        self._next_key += 1
        self.tokens += size
        while self.tokens > self.capacity_tokens:
            self._drop(next(iter(self._entries)))

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0

    def _drop(self, key: int) -> None:
        self.tokens -= len(self._entries.pop(key).ids)


def common_prefix(a: tuple[int, ...], b: tuple[int, ...], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit`` (tuple slices compare in C)."""
    high = min(len(a), len(b), limit)
    if high <= 0:
        return 0
    if a[:high] == b[:high]:
        return high
    low = 0  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low
