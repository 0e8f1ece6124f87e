"""The running batch on llama.cpp: every sequence owns a slot (its own KV stream) from prefill to retirement.

A step feeds each row's last token at its own position into its own slot, in one ``llama_decode``: no
padding, no masks, no cache reshaping when rows join or leave. A finished sequence leaves its cells in
its slot, and the slot remembers which token ids they hold. A new prompt takes the free slot that holds
the longest prefix of it (a conversation's next turn, OpenAI messages resent with one more turn, a shared
system prompt), cuts the cells after that prefix and runs only the rest; with no match it takes the slot
released longest ago. A prefix that sits in a busy slot, or in a slot holding much more than the match,
is copied into that free slot instead, so the longer state is not cut. So prefix reuse is bounded by
the slots (``LLM_API_MAX_BATCH``) and each slot's context, and evicts least recently used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .llama_cpp_model import LlamaCppModel
from .prefix_cache import MIN_MATCH_TOKENS, common_prefix
from .running import PendingPrefill, StepResult
from .sequence import SequenceState


@dataclass
class SlotReuse:
    """Prefix reuse counters, as :class:`~llm_api.local_model.prefix_cache.PrefixCache` keeps them."""

    enabled: bool
    hits: int = 0
    reused_tokens: int = 0


class SlotPrefill(PendingPrefill):
    """A new sequence whose prompt is being run, possibly in chunks, into its slot."""

    def __init__(self, seq: SequenceState, slot: int, reused: int) -> None:
        super().__init__(seq, reused)
        self.slot = slot

    @property
    def fed(self) -> int:
        """Tokens in the slot: the prompt's so far, then (once it decodes) every token fed to the model."""
        return self.seq.position if not self.remaining else self.done


class SlotBatch:
    def __init__(self, model: LlamaCppModel, vocab_limit: int, reuse_prefixes: bool = True) -> None:
        self._model = model
        self._vocab_limit = vocab_limit
        self.rows: list[SequenceState] = []
        self._slot_of: dict[SequenceState, int] = {}
        self._free: list[int] = list(range(model.slots))  # released longest ago first
        self._held: dict[int, tuple[int, ...]] = {}  # free slot → the token ids its cells hold
        self._busy: dict[int, SlotPrefill] = {}  # slot → the sequence that owns it (in prefill or a row)
        self.prefixes = SlotReuse(enabled=reuse_prefixes)

    def __len__(self) -> int:
        return len(self.rows)

    def start_prefill(self, seq: SequenceState) -> SlotPrefill:
        """A free slot for a new sequence, holding the longest prefix of its prompt that any slot has.

        A free slot whose cells the prompt continues (a conversation's next turn) is taken as it is. A
        prefix held by a busy slot, or by a slot holding much more (a long conversation whose system
        prompt a new request shares), is copied into the free slot released longest ago instead, so the
        longer state survives: a copy costs far less than running the prefix again."""
        prompt = tuple(seq.request.prompt_ids)
        reused, source = 0, None
        if self.prefixes.enabled:
            for candidate, held in self._histories():
                length = common_prefix(held, prompt, len(prompt) - 1)
                if length > reused:
                    reused, source = length, candidate
        if source is None or reused < MIN_MATCH_TOKENS:
            slot, reused = self._free[0], 0
        elif source in self._free and (len(self._held.get(source, ())) - reused < MIN_MATCH_TOKENS
                                       or len(self._free) == 1):
            slot = source
        else:
            slot = next(free for free in self._free if free != source)
            self._model.copy(source, slot)
        if not reused or not self._model.forget(slot, reused):
            reused = 0
            self._model.forget(slot)
        if reused:
            self.prefixes.hits += 1
            self.prefixes.reused_tokens += reused
        self._free.remove(slot)
        self._held.pop(slot, None)
        prefill = self._busy[slot] = SlotPrefill(seq, slot, reused)
        return prefill

    def _histories(self) -> list[tuple[int, tuple[int, ...]]]:
        """(slot, the token ids its cells hold) for every slot that holds some: free ones first."""
        busy = [(slot, tuple([*owner.seq.request.prompt_ids, *owner.seq.generated][:owner.fed]))
                for slot, owner in self._busy.items()]
        return [(slot, self._held.get(slot, ())) for slot in self._free] + busy

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

    def step(self, prefills: Sequence[SlotPrefill], chunk: int) -> StepResult[SlotPrefill]:
        """One ``llama_decode`` for every row's next token and the prompt tokens of ``prefills``: at most
        ``chunk`` of them while rows decode (the step stays short), all of them when none does."""
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        outputs: list[bool] = []
        rows = list(self.rows)
        for row in rows:
            tokens.append(row.last_token)
            positions.append(row.position)
            slots.append(self._slot_of[row])
            outputs.append(True)
        budget = chunk if rows else sum(p.remaining for p in prefills)
        completing: list[SlotPrefill] = []
        for prefill in prefills:
            if budget <= 0:
                break
            prompt = prefill.seq.request.prompt_ids
            end = min(len(prompt), prefill.done + budget)
            tokens.extend(prompt[prefill.done:end])
            positions.extend(range(prefill.done, end))
            slots.extend([prefill.slot] * (end - prefill.done))
            outputs.extend([False] * (end - prefill.done - 1) + [end == len(prompt)])
            budget -= end - prefill.done
            prefill.done = end
            if not prefill.remaining:
                completing.append(prefill)
        logits = self._limit(self._model.run(tokens, positions, slots, outputs))
        for row in rows:
            row.position += 1
        for prefill in completing:
            self._join(prefill)
        return StepResult(rows=rows, logits=logits[:len(rows)] if rows else None,
                          completed=[(p, logits[len(rows) + i]) for i, p in enumerate(completing)])

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
        self.rows, self._slot_of, self._held, self._busy = [], {}, {}, {}
        self._free = list(range(self._model.slots))

    def _join(self, prefill: SlotPrefill) -> None:
        self.rows.append(prefill.seq)
        self._slot_of[prefill.seq] = prefill.slot

    def _release(self, slot: int, held: tuple[int, ...]) -> None:
        del self._busy[slot]
        self._held[slot] = held
        self._free.append(slot)

    def _limit(self, logits: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(logits)
        if tensor.shape[-1] > self._vocab_limit:
            tensor[..., self._vocab_limit:] = float("-inf")
        return tensor
