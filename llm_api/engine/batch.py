"""The running batch: one KV cache whose rows are sequences that join and leave between steps.

Rows are left-padded to a common length; padded columns are zero and masked
out, and every row passes its own position ids, so a sequence's numbers do not
depend on its neighbours. New sequences are prefilled alone (no padding) and
then merged in; finished rows are dropped and all-padding columns trimmed.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

try:  # per-layer cache objects arrived in transformers 4.54; older releases cannot join the batch
    from transformers.cache_utils import DynamicLayer
except ImportError:  # pragma: no cover - only with an old transformers (ChatGLM3 remote code)
    DynamicLayer = None

from .sequence import SequenceState


def supports_batched_cache(model: Any) -> bool:
    """True when the model's cache is made of plain full-attention layers we can splice."""
    if DynamicLayer is None:
        return False
    try:
        cache = DynamicCache(config=model.config)
    except Exception:
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class RunningBatch:
    def __init__(self, model: Any, device: torch.device, vocab_limit: int) -> None:
        self._model = model
        self._device = device
        self._vocab_limit = vocab_limit
        parameters = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"  # renamed in transformers 5
        self.rows: list[SequenceState] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, columns] 1 = real token

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def prefill(self, seq: SequenceState) -> torch.Tensor:
        """Run the prompt of a new sequence alone; return its next-token logits and keep its cache aside."""
        ids = torch.tensor([seq.request.prompt_ids], device=self._device)
        cache = DynamicCache(config=self._model.config)
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
        extra[self._cache_arg] = cache
        out = self._model(input_ids=ids, use_cache=True, **extra)
        self._join(seq, cache, ids.shape[1])
        return self._limit(out.logits[:, -1, :])[0]

    @torch.inference_mode()
    def decode(self) -> torch.Tensor:
        """One step for every row; returns next-token logits [rows, vocab]."""
        assert self._mask is not None and self._cache is not None
        ids = torch.tensor([[row.last_token] for row in self.rows], device=self._device)
        positions = torch.tensor([[row.position] for row in self.rows], device=self._device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self.rows), 1))], dim=1)
        out = self._model(input_ids=ids, attention_mask=self._mask, position_ids=positions,
                          use_cache=True, **{self._cache_arg: self._cache})
        for row in self.rows:
            row.position += 1
        return self._limit(out.logits[:, -1, :])

    def retire(self, finished: list[SequenceState]) -> None:
        """Drop finished rows and the columns that are padding in every remaining row."""
        if not finished:
            return
        keep = [i for i, row in enumerate(self.rows) if row not in finished]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache, self._mask = None, None
            return
        assert self._mask is not None and self._cache is not None
        index = torch.tensor(keep, device=self._device)
        mask = self._mask.index_select(0, index)
        first_real = int(mask.any(dim=0).int().argmax())
        self._mask = mask[:, first_real:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first_real:]
            layer.values = layer.values.index_select(0, index)[:, :, first_real:]

    def clear(self) -> None:
        self.rows, self._cache, self._mask = [], None, None

    def _join(self, seq: SequenceState, cache: DynamicCache, length: int) -> None:
        mask = torch.ones((1, length), dtype=torch.long, device=self._device)
        if self._cache is None:
            self.rows, self._cache, self._mask = [seq], cache, mask
            return
        assert self._mask is not None
        width = max(self._mask.shape[1], length)
        self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)], dim=0)
        for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width, dim=2), _pad_left(theirs.keys, width, dim=2)])
            mine.values = torch.cat([_pad_left(mine.values, width, dim=2),
                                     _pad_left(theirs.values, width, dim=2)])
        self.rows.append(seq)

    def _limit(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] > self._vocab_limit:
            logits = logits.clone()
            logits[..., self._vocab_limit:] = float("-inf")
        return logits


def _pad_left(tensor: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
