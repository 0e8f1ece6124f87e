"""What the engine's scheduling loop needs of a running batch, whichever backend runs the model:
:class:`~llm_api.local_model.batch.RunningBatch` (torch, one padded KV cache) or
:class:`~llm_api.local_model.slot_batch.SlotBatch` (llama.cpp, a KV stream per sequence)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import torch

from .sequence import SequenceState


class PendingPrefill(Protocol):
    """A new sequence whose prompt is being run before it joins the batch."""

    @property
    def seq(self) -> SequenceState: ...

    @property
    def started(self) -> bool:
        """Some of the prompt has been run here (not only reused from an earlier sequence)."""

    @property
    def remaining(self) -> int:
        """Prompt tokens still to run."""


class ReuseCounters(Protocol):
    @property
    def hits(self) -> int: ...

    @property
    def reused_tokens(self) -> int: ...


P = TypeVar("P", bound=PendingPrefill)


class Batch(Protocol[P]):
    """Sequences decoded together one step at a time; they join after their prefill and leave when done."""

    rows: list[SequenceState]

    @property
    def prefixes(self) -> ReuseCounters: ...

    def __len__(self) -> int: ...

    def start_prefill(self, seq: SequenceState) -> P: ...

    def join_twin(self, twin: P, source: P) -> None: ...

    def abandon_prefill(self, prefill: P) -> None: ...

    def prefill_chunk(self, prefill: P, max_tokens: int) -> torch.Tensor | None: ...

    def decode(self) -> torch.Tensor: ...

    def retire(self, finished: Sequence[SequenceState]) -> None: ...

    def clear(self) -> None: ...
