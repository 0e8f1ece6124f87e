"""The running batch: one KV cache whose rows are sequences that join and leave between steps.

Rows are left-padded to a common length; padded columns are zero and masked
out, and every row passes its own position ids, so a sequence's numbers do not
depend on its neighbours. New sequences are prefilled alone (no padding) and
then merged in; finished rows are dropped and all-padding columns trimmed.

Keys, values and the attention mask live in buffers with spare room along the sequence axis
(:class:`SlotLayer`, :class:`_MaskBuffer`): a decode step writes its column in place instead of
concatenating every layer's cache into new tensors, and attention sees views of the used length.
Every tensor the batch makes is made in inference mode, so that a compiled decode step
(``LLM_API_QUANTIZATION=int8``) always meets the same kind of tensor and never compiles again.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from transformers.cache_utils import DynamicCache

try:  # per-layer cache objects arrived in transformers 4.54; older releases cannot join the batch
    from transformers.cache_utils import DynamicLayer
    _HAS_LAYERS = True
except ImportError:  # pragma: no cover - only with an old transformers (ChatGLM3 remote code)
    _HAS_LAYERS = False

from .prefix_cache import KV, PrefixCache
from .running import PendingPrefill, StepResult
from .sequence import SequenceState


def supports_batched_cache(model: Any) -> bool:
    """True when the model's cache is made of plain full-attention layers we can splice."""
    if not _HAS_LAYERS:
        return False
    try:
        cache = DynamicCache(config=model.config)
    except Exception:
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


SPARE_MIN = 64  # columns of room a buffer gets beyond what it needs when it is (re)allocated


def _capacity(needed: int) -> int:
    """Room for ``needed`` columns and then some: growth by half again keeps reallocation amortized O(1)
    with less idle memory than doubling (16 rows of a long conversation are hundreds of MB of KV)."""
    return needed + max(SPARE_MIN, needed // 2)


class SlotLayer(DynamicLayer):  # type: ignore[no-untyped-call]  # transformers: an untyped __init_subclass__
    """A ``DynamicLayer`` whose keys and values are views of the first ``length`` columns of buffers with
    spare room: :meth:`update` copies new columns in place and reallocates only when the room runs out.

    A tensor assigned to ``keys``/``values`` is adopted as a buffer with no spare room, so the next update
    copies it into a new buffer: tensors seeded from the prefix cache are never written to.
    """

    def __init__(self) -> None:
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        self._length = 0
        super().__init__()  # type: ignore[no-untyped-call]

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._key_buffer is None else self._key_buffer.narrow(-2, 0, self._length)

    @keys.setter
    def keys(self, tensor: torch.Tensor | None) -> None:
        self._key_buffer = tensor
        self._length = 0 if tensor is None or tensor.dim() < 2 else tensor.shape[-2]

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._value_buffer is None else self._value_buffer.narrow(-2, 0, self._length)

    @values.setter
    def values(self, tensor: torch.Tensor | None) -> None:
        self._value_buffer = tensor
        self._length = 0 if tensor is None or tensor.dim() < 2 else tensor.shape[-2]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        used, needed = self._length, self._length + new
        keys, values = self._key_buffer, self._value_buffer
        if keys is None or values is None or keys.dim() < 2 or keys.shape[-2] < needed:
            keys, values = _grown(keys, key_states, used, needed), _grown(values, value_states, used, needed)
        keys.narrow(-2, used, new).copy_(key_states)
        values.narrow(-2, used, new).copy_(value_states)
        self._key_buffer, self._value_buffer, self._length = keys, values, needed
        return keys.narrow(-2, 0, needed), values.narrow(-2, 0, needed)

    def reserve(self, columns: int) -> None:
        """Room for ``columns`` more and one spare before the next update, so that the update only copies and
        the used part stays a strict part of the buffer: a compiled decode step then always meets the same
        kind of tensors and takes the same path through :meth:`update`."""
        keys, values = self._key_buffer, self._value_buffer
        if keys is None or values is None or keys.dim() < 2:
            return
        used, needed = self._length, self._length + columns
        if keys.shape[-2] <= needed:
            self._key_buffer = _grown(keys, keys, used, needed)
            self._value_buffer = _grown(values, values, used, needed)

    def assemble(self, parts: list[tuple[torch.Tensor, torch.Tensor]], width: int) -> None:
        """Rows from ``parts`` (keys, values) stacked, each left-padded with zeros to ``width`` columns, into
        new buffers with spare room."""
        keys0, values0 = parts[0]
        rows = sum(k.shape[0] for k, _ in parts)
        shape = (rows, keys0.shape[1], _capacity(width), keys0.shape[3])
        keys = keys0.new_zeros(shape)
        values = values0.new_zeros((rows, values0.shape[1], shape[2], values0.shape[3]))
        row = 0
        for part_keys, part_values in parts:
            count, length = part_keys.shape[0], part_keys.shape[2]
            keys[row:row + count].narrow(-2, width - length, length).copy_(part_keys)
            values[row:row + count].narrow(-2, width - length, length).copy_(part_values)
            row += count
        self._key_buffer, self._value_buffer, self._length = keys, values, width


def _grown(buffer: torch.Tensor | None, like: torch.Tensor, used: int, needed: int) -> torch.Tensor:
    shape = list(like.shape)
    shape[-2] = _capacity(needed)
    grown = like.new_empty(shape)
    if buffer is not None and used:
        grown.narrow(-2, 0, used).copy_(buffer.narrow(-2, 0, used))
    return grown


class _MaskBuffer:
    """The attention mask [rows, columns] (1 = real token) in a buffer with spare columns."""

    def __init__(self, mask: torch.Tensor) -> None:
        self._buffer = mask.new_zeros((mask.shape[0], _capacity(mask.shape[1])))
        self._buffer[:, :mask.shape[1]].copy_(mask)
        self._length = mask.shape[1]

    @property
    def view(self) -> torch.Tensor:
        return self._buffer[:, :self._length]

    def append_column(self) -> torch.Tensor:
        """A column of ones for a decode step; the mask including it (never the whole buffer: a spare column
        stays, so the mask is always a strict part of it, as a compiled decode step expects)."""
        if self._length + 1 >= self._buffer.shape[1]:
            grown = self._buffer.new_zeros((self._buffer.shape[0], _capacity(self._length + 1)))
            grown[:, :self._length].copy_(self._buffer[:, :self._length])
            self._buffer = grown
        self._buffer[:, self._length].fill_(1)
        self._length += 1
        return self.view


class Prefill(PendingPrefill):
    """A new sequence whose prompt is being run, possibly in chunks, into its own cache."""

    def __init__(self, seq: SequenceState, cache: DynamicCache, reused: int = 0) -> None:
        super().__init__(seq, reused)
        self.cache = cache
        self.prompt_kv: KV | None = None  # the whole prompt's keys and values, once it has run


class RunningBatch:
    def __init__(self, model: Any, device: torch.device, vocab_limit: int, pad_head_rows: bool = False,
                 prefixes: PrefixCache | None = None, preallocated: bool = True,
                 decode_step: Callable[..., Any] | None = None) -> None:
        self._model = model
        self._decode_step = decode_step or model  # a compiled forward for decode steps (int8), else the model
        self._device = device
        self._vocab_limit = vocab_limit
        parameters = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"  # renamed in transformers 5
        self._split_head = _plain_head(model) if pad_head_rows else None
        self.rows: list[SequenceState] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, columns] 1 = real token
        self._preallocated = preallocated  # False: HF's DynamicLayer and a mask concatenated every step
        self._mask_buffer: _MaskBuffer | None = None
        self.prefixes = prefixes if prefixes is not None else PrefixCache(0)

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def start_prefill(self, seq: SequenceState) -> Prefill:
        """A cache for a new sequence, seeded with the longest cached prefix of its prompt."""
        cache = self._new_cache()
        found = self.prefixes.lookup(seq.request.prompt_ids) if self.prefixes.enabled else None
        if found is None:
            return Prefill(seq, cache)
        length, kv = found
        for layer, (keys, values) in zip(cache_layers(cache), kv, strict=True):
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values  # views: the next update concatenates into new tensors
        return Prefill(seq, cache, reused=length)

    @torch.inference_mode()
    def join_twin(self, twin: Prefill, source: Prefill) -> None:
        """``twin`` has the same prompt as ``source``, which has just run it: it joins the batch with
        ``source``'s keys and values instead of running the prompt again (a request's ``n`` answers)."""
        assert source.prompt_kv is not None and twin.seq.request.prompt_ids == source.seq.request.prompt_ids
        cache = self._new_cache()
        for layer, (keys, values) in zip(cache_layers(cache), source.prompt_kv, strict=True):
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        twin.cache, twin.done = cache, len(twin.seq.request.prompt_ids)
        self._join(twin.seq, cache, twin.done)

    def _new_cache(self) -> DynamicCache:
        cache = DynamicCache(config=self._model.config)
        if self._preallocated:
            cache.layers = [SlotLayer() for _ in cache.layers]
        return cache

    @torch.inference_mode()
    def abandon_prefill(self, prefill: Prefill) -> None:
        """A prefill that ends before joining (cancelled): keep what it computed for the next try."""
        if prefill.done > prefill.reused:
            kv = [(k.clone(), v.clone()) for k, v in map(layer_kv, cache_layers(prefill.cache))]
            self.prefixes.store(prefill.seq.request.prompt_ids[:prefill.done], kv)

    @torch.inference_mode()
    def prefill_chunk(self, prefill: Prefill, max_tokens: int) -> torch.Tensor | None:
        """Run up to ``max_tokens`` more prompt tokens of a new sequence, alone (no padding).

        When the prompt is complete the sequence joins the batch and its next-token
        logits are returned; until then ``None``.
        """
        prompt = prefill.seq.request.prompt_ids
        end = min(len(prompt), prefill.done + max_tokens)
        ids = torch.tensor([prompt[prefill.done:end]], device=self._device)
        positions = torch.arange(prefill.done, end, device=self._device)[None, :]
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
        out = self._model(input_ids=ids, position_ids=positions, use_cache=True,
                          **{self._cache_arg: prefill.cache}, **extra)
        prefill.done = end
        if prefill.remaining:
            return None
        prefill.prompt_kv = [layer_kv(layer) for layer in cache_layers(prefill.cache)]  # columns never written again
        self._join(prefill.seq, prefill.cache, len(prompt))
        return self._limit(out.logits[:, -1, :])[0]

    @torch.inference_mode()
    def decode(self) -> torch.Tensor:
        """One step for every row; returns next-token logits [rows, vocab]."""
        assert self._mask is not None and self._cache is not None
        ids = torch.tensor([[row.last_token] for row in self.rows], device=self._device)
        positions = torch.tensor([[row.position] for row in self.rows], device=self._device)
        if self._mask_buffer is not None:
            self._mask = self._mask_buffer.append_column()
        else:
            self._mask = torch.cat([self._mask, self._mask.new_ones((len(self.rows), 1))], dim=1)
        inputs = {"input_ids": ids, "attention_mask": self._mask, "position_ids": positions, "use_cache": True,
                  self._cache_arg: self._cache}
        if self._decode_step is not self._model:  # compiled: a buffer that must grow does so here, not inside it
            for layer in cache_layers(self._cache):
                if isinstance(layer, SlotLayer):
                    layer.reserve(1)
        if self._split_head is not None and len(self.rows) in _SLOW_HEAD_ROWS:
            logits = self._padded_head_logits(inputs)
        else:
            logits = self._decode_step(**inputs).logits[:, -1, :]
        for row in self.rows:
            row.position += 1
        return self._limit(logits)

    def step(self, prefills: Sequence[Prefill], chunk: int) -> StepResult[Prefill]:
        """The rows' decode step, then one chunk of the first prefill (a prompt runs alone: no padding)."""
        result: StepResult[Prefill] = StepResult()
        if self.rows:
            result.rows, result.logits = list(self.rows), self.decode()
        if prefills:
            prefill = prefills[0]
            logits = self.prefill_chunk(prefill, chunk if result.rows else prefill.remaining)
            if logits is not None:
                result.completed.append((prefill, logits))
        return result

    def _padded_head_logits(self, inputs: dict[str, Any]) -> torch.Tensor:
        """Decoder body as usual, then the output projection on 4 rows: fp32 GEMM with 2–3 rows is
        slower than with 4 on MKL (a 49152-row head took 22/33 ms at 2/3 rows, 17 ms at 4)."""
        assert self._split_head is not None
        body, head = self._split_head
        hidden = body(**inputs).last_hidden_state[:, -1, :]
        padded = torch.cat([hidden, hidden.new_zeros((_PADDED_HEAD_ROWS - hidden.shape[0], hidden.shape[1]))])
        logits: torch.Tensor = head(padded)[: hidden.shape[0]]
        return logits

    @torch.inference_mode()
    def retire(self, finished: Sequence[SequenceState]) -> None:
        """Drop finished rows, leaving their KV state to the prefix cache."""
        if not finished:
            return
        if self.prefixes.enabled:
            for seq in finished:
                if seq in self.rows and seq.finish_reason != "error":
                    self.prefixes.store(*self._row_state(self.rows.index(seq)))
        self._keep_rows([i for i, row in enumerate(self.rows) if row not in finished])

    def _keep_rows(self, keep: list[int]) -> None:
        """Only the rows at indices ``keep`` stay; columns that are padding in all of them go."""
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache, self._mask, self._mask_buffer = None, None, None
            return
        assert self._mask is not None and self._cache is not None
        index = torch.tensor(keep, device=self._device)
        mask = self._mask.index_select(0, index)
        first_real = int(mask.any(dim=0).int().argmax())
        self._set_mask(mask[:, first_real:])
        for layer in cache_layers(self._cache):
            keys, values = layer_kv(layer)
            keys = keys[:, :, first_real:].index_select(0, index)
            values = values[:, :, first_real:].index_select(0, index)
            if isinstance(layer, SlotLayer):
                layer.assemble([(keys, values)], keys.shape[2])
            else:
                layer.keys, layer.values = keys, values

    def _row_state(self, index: int) -> tuple[list[int], KV]:
        """Row ``index``'s token ids fed so far and a copy of their keys and values."""
        seq = self.rows[index]
        fed = seq.position  # prompt + generated tokens but the last, which the model has not seen yet
        return [*seq.request.prompt_ids, *seq.generated][:fed], self._row_kv(index, fed)

    def _row_kv(self, index: int, fed: int) -> KV:
        """A copy of row ``index``'s keys and values for its ``fed`` tokens (the rightmost columns: rows are
        left-padded)."""
        assert self._cache is not None
        return [(k[index:index + 1, :, k.shape[2] - fed:].clone(), v[index:index + 1, :, v.shape[2] - fed:].clone())
                for k, v in map(layer_kv, cache_layers(self._cache))]

    def clear(self) -> None:
        self.rows, self._cache, self._mask, self._mask_buffer = [], None, None, None

    def _set_mask(self, mask: torch.Tensor) -> None:
        if self._preallocated:
            self._mask_buffer = _MaskBuffer(mask)
            self._mask = self._mask_buffer.view
        else:
            self._mask = mask

    def _join(self, seq: SequenceState, cache: DynamicCache, length: int) -> None:
        mask = torch.ones((1, length), dtype=torch.long, device=self._device)
        if self._cache is None:
            self.rows, self._cache = [seq], cache
            self._set_mask(mask)
            return
        assert self._mask is not None
        width = max(self._mask.shape[1], length)
        self._set_mask(torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)], dim=0))
        for mine, theirs in zip(cache_layers(self._cache), cache_layers(cache), strict=True):
            (my_keys, my_values), (their_keys, their_values) = layer_kv(mine), layer_kv(theirs)
            if isinstance(mine, SlotLayer):
                mine.assemble([(my_keys, my_values), (their_keys, their_values)], width)
                continue
            mine.keys = torch.cat([_pad_left(my_keys, width, dim=2), _pad_left(their_keys, width, dim=2)])
            mine.values = torch.cat([_pad_left(my_values, width, dim=2), _pad_left(their_values, width, dim=2)])
        self.rows.append(seq)

    def _limit(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] > self._vocab_limit:
            logits = logits.clone()
            logits[..., self._vocab_limit:] = float("-inf")
        return logits


_SLOW_HEAD_ROWS = (2, 3)
_PADDED_HEAD_ROWS = 4


def _plain_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder body, output projection) when logits are exactly ``head(body(...))``, else None."""
    config = model.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    try:
        body, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if body is None or not isinstance(head, torch.nn.Linear):
        return None
    return body, head


def cache_layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, which :func:`supports_batched_cache` checked are all plain ``DynamicLayer``."""
    return cast(list[DynamicLayer], cache.layers)


def layer_kv(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    keys, values = layer.keys, layer.values
    assert keys is not None and values is not None, "a cache layer used before its first update"
    return keys, values


def _pad_left(tensor: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
