"""The running batch on llama.cpp: every sequence owns a slot (its own KV stream) from prefill to retirement.

A step feeds each row's last token at its own position into its own slot, in one ``llama_decode``: no
padding, no masks, no cache reshaping when rows join or leave. A finished sequence leaves its cells in
its slot, and the slot remembers which token ids they hold. A new prompt takes the free slot that holds
the longest prefix of it (a conversation's next turn, OpenAI messages resent with one more turn, a shared
system prompt), cuts the cells after that prefix and runs only the rest; with no match it takes the slot
released longest ago. So prefix reuse is bounded by the slots (``LLM_API_MAX_BATCH``) and each slot's
context, and evicts least recently used, without copying any state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .llama_cpp_model import LlamaCppModel
from .prefix_cache import MIN_MATCH_TOKENS, common_prefix
from .sequence import SequenceState


@dataclass
class SlotReuse:
    """Prefix reuse counters, as :class:`~llm_api.local_model.prefix_cache.PrefixCache` keeps them."""

    enabled: bool
    hits: int = 0
    reused_tokens: int = 0


class SlotPrefill:
    """A new sequence whose prompt is being run, possibly in chunks, into its slot."""

    def __init__(self, seq: SequenceState, slot: int, reused: int) -> None:
        self.seq = seq
        self.slot = slot
        self.done = reused  # prompt tokens already in the slot
        self.reused = reused  # of which left there by an earlier sequence

    @property
    def started(self) -> bool:
        return self.done > self.reused

    @property
    def remaining(self) -> int:
        return len(self.seq.request.prompt_ids) - self.done


class SlotBatch:
    def __init__(self, model: LlamaCppModel, vocab_limit: int, reuse_prefixes: bool = True) -> None:
        self._model = model
        self._vocab_limit = vocab_limit
        self.rows: list[SequenceState] = []
        self._slot_of: dict[SequenceState, int] = {}
        self._free: list[int] = list(range(model.slots))  # released longest ago first
        self._held: dict[int, tuple[int, ...]] = {}  # free slot → the token ids its cells hold
        self.prefixes = SlotReuse(enabled=reuse_prefixes)

    def __len__(self) -> int:
        return len(self.rows)

    def start_prefill(self, seq: SequenceState) -> SlotPrefill:
        """A free slot for a new sequence, holding the longest prefix of its prompt that a slot has."""
        prompt = tuple(seq.request.prompt_ids)
        slot, reused = self._free[0], 0
        if self.prefixes.enabled:
            for candidate in self._free:
                length = common_prefix(self._held.get(candidate, ()), prompt, len(prompt) - 1)
                if length > reused:
                    slot, reused = candidate, length
        if reused < MIN_MATCH_TOKENS or not self._model.forget(slot, reused):
            reused = 0
            self._model.forget(slot)
        if reused:
            self.prefixes.hits += 1
            self.prefixes.reused_tokens += reused
        self._free.remove(slot)
        self._held.pop(slot, None)
        return SlotPrefill(seq, slot, reused)

    def join_twin(self, twin: SlotPrefill, source: SlotPrefill) -> None:
        """``twin`` has the prompt ``source`` has just run: its slot gets a copy of those cells and it joins
        the batch without running the prompt (a request's ``n`` answers)."""
        assert twin.seq.request.prompt_ids == source.seq.request.prompt_ids and not source.remaining
        self._model.copy(source.slot, twin.slot)
        twin.done = len(twin.seq.request.prompt_ids)
        self._join(twin)

    def abandon_prefill(self, prefill: SlotPrefill) -> None:
        """A prefill that ends before joining (cancelled): its slot keeps what it computed."""
        self._release(prefill.slot, tuple(prefill.seq.request.prompt_ids[:prefill.done]))

    def prefill_chunk(self, prefill: SlotPrefill, max_tokens: int) -> torch.Tensor | None:
        """Run up to ``max_tokens`` more prompt tokens; when the prompt is complete the sequence joins the
        batch and its next-token logits are returned, until then ``None``."""
        prompt = prefill.seq.request.prompt_ids
        end = min(len(prompt), prefill.done + max_tokens)
        count = end - prefill.done
        outputs = [False] * count
        outputs[-1] = end == len(prompt)
        logits = self._model.run(prompt[prefill.done:end], range(prefill.done, end), [prefill.slot] * count,
                                 outputs)
        prefill.done = end
        if prefill.remaining:
            return None
        self._join(prefill)
        return self._limit(logits)[0]

    def decode(self) -> torch.Tensor:
        """One step for every row; returns next-token logits [rows, vocab]."""
        rows = self.rows
        logits = self._model.run([row.last_token for row in rows], [row.position for row in rows],
                                 [self._slot_of[row] for row in rows], [True] * len(rows))
        for row in rows:
            row.position += 1
        return self._limit(logits)

    def retire(self, finished: Sequence[SequenceState]) -> None:
        """Drop finished rows; their slots keep the cells of every token fed (not after an error)."""
        for seq in finished:
            slot = self._slot_of.pop(seq, None)
            if slot is None:
                continue
            self.rows.remove(seq)
            if seq.finish_reason == "error":
                self._model.forget(slot)
                self._release(slot, ())
            else:
                self._release(slot, tuple([*seq.request.prompt_ids, *seq.generated][:seq.position]))

    def clear(self) -> None:
        """Forget every row, prefill and cell (after a failed step)."""
        self._model.clear()
        self.rows, self._slot_of, self._held = [], {}, {}
        self._free = list(range(self._model.slots))

    def _join(self, prefill: SlotPrefill) -> None:
        self.rows.append(prefill.seq)
        self._slot_of[prefill.seq] = prefill.slot

    def _release(self, slot: int, held: tuple[int, ...]) -> None:
        self._held[slot] = held
        self._free.append(slot)

    def _limit(self, logits: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(logits)
        if tensor.shape[-1] > self._vocab_limit:
            tensor[..., self._vocab_limit:] = float("-inf")
        return tensor
