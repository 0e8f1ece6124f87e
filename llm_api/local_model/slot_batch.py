"""The running batch on llama.cpp: every sequence owns a slot (its own KV stream) from prefill to retirement.

A step feeds each row's last token at its own position into its own slot, in one ``llama_decode`` (the
prompts' parts in calls beside it): no padding, no masks, no cache reshaping when rows join or leave. A
finished sequence leaves its cells in its slot, and the slot remembers which token ids they hold. A new
prompt takes the free slot that holds the longest prefix of it (a conversation's next turn, OpenAI messages
resent with one more turn, a shared system prompt), cuts the cells after that prefix and runs only the rest;
with no match it takes a free slot beside busy ones (released longest ago among those), because llama.cpp
runs each group of adjacent busy slots as its own pass over the weights. A prefix that sits in a busy slot,
or in a slot holding much more than the match, is copied into a free slot beside the busy ones instead (a
copy moves the source's every cell, 15 us each), unless the match is too small a share of them to pay for
it, or the copy would overwrite as many cells of another prompt as it keeps. So prefix reuse is bounded by
the slots (``LLM_API_MAX_BATCH``) and each slot's context, and evicts least recently used among equally
placed slots.

Busy slots left apart from the others (by sequences that finished, or by a prefix taken in place apart from
them) are moved together at the start of the next step, once that round's new prompts have their slots: the
requests of a burst, resent together, then fill the gaps in their own slots instead of being moved over
each other's prefixes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .llama_cpp_model import TILED_ATTENTION_ROWS, LlamaCppModel, prompt_piece
from .prefix_cache import MIN_MATCH_TOKENS, common_prefix
from .running import PendingPrefill, StepResult
from .sequence import SequenceState

# A copy moves every cell its source holds, whatever the match: it pays when the match is at least this share of
# them. Measured on the embedded model: a copy 15 us a cell, a prompt about 0.7 ms a token on AMX kernels
# (2.8 ms on AVX-512 ones), so 32 keeps a margin on both.
CELLS_COPIED_PER_PROMPT_TOKEN = 32
# Sequences apart from the others are left where they are when they end within this many steps (by their
# max_tokens): a group apart costs a few milliseconds a step, a move overwrites a free slot's cells, which a
# request resent a moment later may have needed (eight answers ending together, the first one a step early).
MOVE_HORIZON_STEPS = 8


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

    def steps_left(self) -> int:
        """The most steps the sequence may still decode (its max_tokens less what it has generated)."""
        return self.seq.request.params.max_tokens - len(self.seq.generated)

    def cells(self) -> tuple[int, ...]:
        """The token ids the slot's cells hold."""
        return tuple([*self.seq.request.prompt_ids, *self.seq.generated][:self.fed])


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

        A free slot whose cells the prompt continues (a conversation's next turn, or one that holds a little
        more, which is dropped) is taken as it is, even apart from the busy ones: the next step moves it
        beside them unless other new prompts fill the gap first (:meth:`_compact`), and a copy made now
        could overwrite the prefix of a request resent in the same burst. A prefix held by a busy slot or by
        a slot holding much more (a long conversation whose system prompt a new request shares) is copied
        into the best placed free slot instead: a copy costs far less than running the prefix again. A copy
        moves all its source's cells, though, so a match under 1/32 of them (a short system prompt shared
        with a long conversation) is run again instead."""
        prompt = tuple(seq.request.prompt_ids)
        reused, source, source_cells = 0, None, 0
        if self.prefixes.enabled:
            for candidate, held in self._histories():
                length = common_prefix(held, prompt, len(prompt) - _least_run(len(prompt)))
                if length > reused:
                    reused, source, source_cells = length, candidate, len(held)
        best = self._best_free()
        if source is None or reused < MIN_MATCH_TOKENS:
            slot, reused = best, 0
        elif source in self._free and (len(self._free) == 1 or self._cheap_in_place(
                source_cells - reused, source_cells, self._copy_target(source, best))):
            slot = source
        elif _cheaper_than_copying(reused, source_cells):
            slot, reused = best, 0  # the copy would move far more cells than running the match costs
        else:
            slot = self._copy_target(source, best)
            self._model.copy(source, slot)
        if not reused or not self._model.forget(slot, reused):
            reused = 0
            self._model.forget(slot)
        if reused:
            self.prefixes.hits += 1
            self.prefixes.reused_tokens += reused
        prefill = SlotPrefill(seq, slot, reused)
        self._take(slot, prefill)
        return prefill

    def _copy_target(self, source: int, best: int) -> int:
        return best if best != source else self._best_free(excluding=source)

    def _cheap_in_place(self, cells_past_match: int, cells: int, target: int) -> bool:
        """Whether a free slot is better taken as it is, losing its cells past the match, than copied into
        free ``target``: those cells are cheap to lose, or the copy would overwrite as many of ``target``'s
        own (another prompt's prefix, as eight requests resent at once find in each other's slots)."""
        return _cheap_to_lose(cells_past_match, cells) or cells_past_match <= len(self._held.get(target, ()))

    def _gaps_added(self, slot: int) -> int:
        """How many more runs of adjacent busy slots there are once ``slot`` is busy too (-1, 0 or 1): llama.cpp
        runs each run as its own pass over the weights (:func:`~llm_api.local_model.llama_cpp_model.slot_order`),
        so eight rows in eight separate slots cost 2.4 times eight rows in adjacent ones."""
        return 1 - (slot - 1 in self._busy) - (slot + 1 in self._busy)

    def _best_free(self, excluding: int | None = None) -> int:
        """The free slot that joins or bridges busy ones, released longest ago among equals."""
        return min((slot for slot in self._free if slot != excluding), key=self._gaps_added)

    def _histories(self) -> list[tuple[int, tuple[int, ...]]]:
        """(slot, the token ids its cells hold) for every slot that holds some: free ones first."""
        busy = [(slot, owner.cells()) for slot, owner in self._busy.items()]
        return [(slot, self._held.get(slot, ())) for slot in self._free] + busy

    def _compact(self) -> None:
        """Move sequences out of the smallest group of adjacent busy slots, one at a time, while a move leaves
        fewer groups or a smaller smallest group. Sequences that finish at different times, or prefixes taken
        in place, leave busy slots scattered; a move copies one sequence's cells once (a few milliseconds), a
        group apart costs another pass over the weights on every step. The slot left behind keeps its cells
        for prefix reuse. Called at the start of a step, after the round's new prompts have their slots."""
        while (move := self._compacting_move()) is not None:
            source, target = move
            owner = self._busy[source]
            self._model.copy(source, target)
            self._release(source)
            self._take(target, owner)
            if owner.seq in self._slot_of:
                self._slot_of[owner.seq] = target

    def _compacting_move(self) -> tuple[int, int] | None:
        """(busy slot, free slot): the first move, free slots released longest ago first, that lowers
        :func:`_scatter`; None when none does (each move lowers it, so moves end), or when the smallest group's
        sequences all end within :data:`MOVE_HORIZON_STEPS`."""
        busy = set(self._busy)
        now = _scatter(busy)
        if now[0] < 2:
            return None
        smallest = min(_groups(busy), key=len)
        if all(self._busy[slot].steps_left() <= MOVE_HORIZON_STEPS for slot in smallest):
            return None  # the gap closes by itself soon
        for source in dict.fromkeys((smallest[0], smallest[-1])):
            for target in self._free:
                if _scatter(busy - {source} | {target}) < now:
                    return source, target
        return None

    def join_twin(self, twin: SlotPrefill, source: SlotPrefill) -> None:
        """``twin`` has the prompt ``source`` has just run: its slot gets a copy of those cells and it joins
        the batch without running the prompt (a request's ``n`` answers)."""
        assert twin.seq.request.prompt_ids == source.seq.request.prompt_ids and not source.remaining
        self._model.copy(source.slot, twin.slot)
        twin.done = len(twin.seq.request.prompt_ids)
        self._join(twin)

    def abandon_prefill(self, prefill: SlotPrefill) -> None:
        """A prefill that ends before joining (cancelled): its slot keeps what it computed."""
        self._release(prefill.slot)

    def step(self, prefills: Sequence[SlotPrefill], chunk: int) -> StepResult[SlotPrefill]:
        """Every row's next token and the prompt tokens of ``prefills``: about ``chunk`` of them while rows
        decode (the step stays short; never fewer than the build's tiled attention takes), all of them when none
        does, each prompt cut by :func:`~llm_api.local_model.llama_cpp_model.prompt_piece`.

        The rows' tokens never share a ``llama_decode`` call with prompt parts
        (:func:`~llm_api.local_model.llama_cpp_model.decode_calls`), so a step with both costs a pass over the
        weights more than the prompts alone. When more prompts complete in the step than there are rows (a
        burst of requests behind the first), the rows wait for the next step: the new ones get their first
        token that pass sooner (a row's pass: 3 ms on AMX kernels, 8 ms on AVX2 ones, beside 16-100 ms for a
        burst's prompts), and the rows' tokens cost no more in the next step's one call. Each such step more
        than doubles the rows, so rows never wait more than a few steps in a row."""
        self._compact()
        rows = list(self.rows)
        budget = max(chunk, TILED_ATTENTION_ROWS) if rows else sum(p.remaining for p in prefills)
        parts: list[tuple[SlotPrefill, int]] = []
        for prefill in prefills:
            if budget <= 0:
                break
            taken = prompt_piece(prefill.remaining, budget)
            if taken:
                parts.append((prefill, taken))
                budget -= taken
        completing = [prefill for prefill, taken in parts if taken == prefill.remaining]
        if len(completing) > len(rows):
            rows = []
        tokens = [row.last_token for row in rows]
        positions = [row.position for row in rows]
        slots = [self._slot_of[row] for row in rows]
        outputs = [True] * len(rows)
        for prefill, taken in parts:
            prompt = prefill.seq.request.prompt_ids
            end = prefill.done + taken
            tokens.extend(prompt[prefill.done:end])
            positions.extend(range(prefill.done, end))
            slots.extend([prefill.slot] * taken)
            outputs.extend([False] * (taken - 1) + [end == len(prompt)])
            prefill.done = end
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
                self._release(slot, keep=False)
            else:
                self._release(slot)

    def clear(self) -> None:
        """Forget every row, prefill and cell (after a failed step)."""
        self._model.clear()
        self.rows, self._slot_of, self._held, self._busy = [], {}, {}, {}
        self._free = list(range(self._model.slots))

    def _join(self, prefill: SlotPrefill) -> None:
        self.rows.append(prefill.seq)
        self._slot_of[prefill.seq] = prefill.slot

    def _take(self, slot: int, owner: SlotPrefill) -> None:
        """``owner`` takes free ``slot`` (whatever it held is then its own to cut or keep)."""
        self._free.remove(slot)
        self._held.pop(slot, None)
        self._busy[slot], owner.slot = owner, slot

    def _release(self, slot: int, keep: bool = True) -> None:
        """``slot`` is free again, holding its owner's cells for prefix reuse (none, with ``keep`` off)."""
        owner = self._busy.pop(slot)
        self._held[slot] = owner.cells() if keep else ()
        self._free.append(slot)

    def _limit(self, logits: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(logits)
        if tensor.shape[-1] > self._vocab_limit:
            tensor[..., self._vocab_limit:] = float("-inf")
        return tensor


def _least_run(prompt_tokens: int) -> int:
    """How many of a prompt's last tokens run even when a slot holds them: one, for its logits, or enough for
    the build's tiled attention (:data:`~llm_api.local_model.llama_cpp_model.TILED_ATTENTION_ROWS`), so that a
    reused prompt's tokens are computed as the whole prompt's would be."""
    return TILED_ATTENTION_ROWS if prompt_tokens >= TILED_ATTENTION_ROWS else 1


def _cheaper_than_copying(tokens: int, cells: int) -> bool:
    """Whether running ``tokens`` prompt tokens again costs less than copying a slot of ``cells`` cells."""
    return tokens * CELLS_COPIED_PER_PROMPT_TOKEN < cells


def _cheap_to_lose(cells_past_match: int, cells: int) -> bool:
    """Whether a free slot's cells past the match (an earlier answer's end, say) are worth less than copying
    them all to keep them: too few to be a prefix worth keeping, or fewer than a copy of the slot would cost."""
    return cells_past_match < MIN_MATCH_TOKENS or _cheaper_than_copying(cells_past_match, cells)


def _groups(slots: set[int]) -> list[list[int]]:
    """``slots`` as runs of consecutive ids, in order."""
    runs: list[list[int]] = []
    for slot in sorted(slots):
        if runs and runs[-1][-1] == slot - 1:
            runs[-1].append(slot)
        else:
            runs.append([slot])
    return runs


def _scatter(slots: set[int]) -> tuple[int, int]:
    """How scattered busy ``slots`` are: (groups, size of the smallest group); lower is better."""
    groups = _groups(slots)
    return len(groups), min((len(group) for group in groups), default=0)
