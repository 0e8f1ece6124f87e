"""What the engine's scheduling loop needs of a running batch, whichever backend runs the model:
:class:`~llm_api.local_model.batch.RunningBatch` (torch, one padded KV cache) or
:class:`~llm_api.local_model.slot_batch.SlotBatch` (llama.cpp, a KV stream per sequence)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import torch

from .sequence import SequenceState


class PendingPrefill:
    """A new sequence whose prompt is being run, possibly in chunks, before it joins the batch."""

    def __init__(self, seq: SequenceState, reused: int = 0) -> None:
        self.seq = seq
        self.done = reused  # prompt tokens already in its cache
        self.reused = reused  # of which left there by an earlier sequence (prefix reuse)

    @property
    def started(self) -> bool:
        """Some of the prompt has been run here (not only reused from an earlier sequence)."""
        return self.done > self.reused

    @property
    def remaining(self) -> int:
        """Prompt tokens still to run."""
        return len(self.seq.request.prompt_ids) - self.done


class ReuseCounters(Protocol):
    @property
    def hits(self) -> int: ...

    @property
    def reused_tokens(self) -> int: ...


P = TypeVar("P", bound=PendingPrefill)


@dataclass
class StepResult(Generic[P]):
    """What one step computed: the next-token logits of the rows that were decoded, and of the prefills
    whose prompt is now complete (they have joined the batch; their rows decode from the next step on)."""

    rows: list[SequenceState] = field(default_factory=list)
    logits: torch.Tensor | None = None  # [rows, vocab]
    completed: list[tuple[P, torch.Tensor]] = field(default_factory=list)  # (prefill, logits [vocab])


class Batch(Protocol[P]):
    """Sequences decoded together one step at a time; they join after their prefill and leave when done."""

    rows: list[SequenceState]

    @property
    def prefixes(self) -> ReuseCounters: ...

    def __len__(self) -> int: ...

    def start_prefill(self, seq: SequenceState) -> P: ...

    def join_twin(self, twin: P, source: P) -> None: ...

    def abandon_prefill(self, prefill: P) -> None: ...

    def step(self, prefills: Sequence[P], chunk: int) -> StepResult[P]:
        """Decode every row once and run prompt tokens of ``prefills`` (in order; at most ``chunk`` of them
        while rows are decoding, every one when none is)."""

    def retire(self, finished: Sequence[SequenceState]) -> None: ...

    def clear(self) -> None: ...
