"""A running batch whose decode step has fixed shapes, so that on CUDA it is replayed as a captured CUDA graph.

On a GPU a decode step of a few rows is bound by kernel launches, not by the GPU: each of hundreds of small
kernels costs the host a few microseconds to launch. A CUDA graph launches the whole step at once, but it
replays fixed memory addresses and shapes. So here every row owns a slot of one preallocated KV arena per layer
(``[slots, kv heads, columns, head dim]``), and column ``c`` of a slot holds the row's token at position ``c``:
rows need no left padding and a step writes each row's new column in place, at the row's own position.

A step runs on the smallest bucket that holds the batch: rows rounded up to a power of two (the extra rows
write into free slots and are thrown away), columns to a power of two from :data:`MIN_COLUMNS`, masked past
each row's position. Each bucket's step is captured once and then replayed; only the growth of the arena (a
longer sequence than it has room for) drops the captured steps, since their addresses change. Prompts still
run uncaptured (:class:`~llm_api.local_model.batch.RunningBatch`'s prefill), and a finished prompt's keys and
values are copied into a free slot.

Without capture (``LLM_API_DECODE_GRAPHS=eager``, and in the CPU tests) the same fixed-shape step runs as
plain PyTorch calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from .batch import RunningBatch, cache_layers, layer_kv
from .prefix_cache import KV, PrefixCache
from .sequence import SequenceState

log = logging.getLogger(__name__)

MIN_COLUMNS = 128  # the smallest column bucket: short sequences share one captured step per row count

Step = Callable[[], torch.Tensor]  # runs one decode step on the bucket's fixed inputs; returns logits [rows, vocab]
Capture = Callable[[Step], Step]  # turns a step into one that replays it (a CUDA graph), or returns it as it is


def bucket(needed: int, smallest: int = 1) -> int:
    """The smallest power of two times ``smallest`` that is at least ``needed``."""
    size = smallest
    while size < needed:
        size *= 2
    return size


def capture_cuda_graph(pool: Any) -> Capture:
    """A :data:`Capture` that records a step as a CUDA graph in the memory pool ``pool``. The step runs twice on
    a side stream first, as CUDA graph capture requires (lazy initialisation, library workspaces); those runs
    write the same keys and values the replay writes."""

    def capture(step: Step) -> Step:
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # torch: an untyped constructor
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: an embedding model's thread may use the GPU meanwhile; only this thread must not
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            logits = step()

        def replay() -> torch.Tensor:
            graph.replay()
            return logits

        return replay

    return capture


def no_capture(step: Step) -> Step:
    return step


class _Arena:
    """Every layer's keys and values for all slots: ``[slots, kv heads, columns, head dim]`` each."""

    def __init__(self, like: KV, slots: int, columns: int) -> None:
        self.keys = [k.new_zeros((slots, k.shape[1], columns, k.shape[3])) for k, _ in like]
        self.values = [v.new_zeros((slots, v.shape[1], columns, v.shape[3])) for _, v in like]

    @property
    def slots(self) -> int:
        return self.keys[0].shape[0]

    @property
    def columns(self) -> int:
        return self.keys[0].shape[2]

    def with_columns(self, columns: int) -> _Arena:
        """A larger arena holding this one's contents."""
        grown = _Arena(list(zip(self.keys, self.values, strict=True)), self.slots, columns)
        for old, new in zip([*self.keys, *self.values], [*grown.keys, *grown.values], strict=True):
            new.narrow(2, 0, self.columns).copy_(old)
        return grown

    def put(self, slot: int, kv: KV) -> None:
        """Keys and values of one sequence ([1, heads, length, dim] per layer) into ``slot``'s first columns."""
        for keys, values, (k, v) in zip(self.keys, self.values, kv, strict=True):
            keys[slot].narrow(1, 0, k.shape[2]).copy_(k[0])
            values[slot].narrow(1, 0, v.shape[2]).copy_(v[0])

    def take(self, slot: int, length: int) -> KV:
        """A copy of ``slot``'s first ``length`` columns, [1, heads, length, dim] per layer."""
        return [(k[slot:slot + 1, :, :length].clone(), v[slot:slot + 1, :, :length].clone())
                for k, v in zip(self.keys, self.values, strict=True)]

    def move(self, source: int, target: int, length: int) -> None:
        for arena in (*self.keys, *self.values):
            arena[target].narrow(1, 0, length).copy_(arena[source].narrow(1, 0, length))


class _ArenaLayer(DynamicLayer):
    """One layer's arena as a decode step of one bucket sees it: the new column of each row is written at the
    row's position, and attention reads the bucket's rows and columns."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, columns: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        rows = positions.shape[0]
        self._keys, self._values = keys.narrow(0, 0, rows), values.narrow(0, 0, rows)
        self._slots = torch.arange(rows, device=keys.device)
        self._positions = positions
        self._columns = columns
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        self._keys[self._slots, :, self._positions] = key_states[:, :, 0]
        self._values[self._slots, :, self._positions] = value_states[:, :, 0]
        return self._keys.narrow(2, 0, self._columns), self._values.narrow(2, 0, self._columns)

    def get_seq_length(self) -> int:
        return self._columns

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._columns, 0


class GraphedBatch(RunningBatch):
    """Sequences in the slots of a preallocated KV arena, decoded one fixed-shape step at a time (see the module
    docstring). ``slots`` is the most rows the batch holds (``LLM_API_MAX_BATCH``)."""

    def __init__(self, model: Any, device: torch.device, vocab_limit: int, slots: int,
                 prefixes: PrefixCache | None = None, capture: Capture = no_capture) -> None:
        super().__init__(model, device, vocab_limit, prefixes=prefixes)
        self._slots = bucket(slots)
        self._capture = capture
        self._arena: _Arena | None = None
        self._steps: dict[tuple[int, int], Step] = {}  # (rows, columns) bucket -> its captured step
        self._token_ids = torch.zeros((self._slots, 1), dtype=torch.long, device=device)
        self._positions = torch.zeros(self._slots, dtype=torch.long, device=device)

    @torch.inference_mode()
    def decode(self) -> torch.Tensor:
        rows = len(self.rows)
        needed = max(row.position for row in self.rows) + 1
        self._make_room(needed)  # the arena's columns are a bucket too: at least the step's
        rows_bucket, columns_bucket = bucket(rows), bucket(needed, MIN_COLUMNS)
        padding = [0] * (rows_bucket - rows)  # extra rows: token 0 at position 0 of a free slot
        self._token_ids[:rows_bucket, 0].copy_(torch.tensor([row.last_token for row in self.rows] + padding))
        self._positions[:rows_bucket].copy_(torch.tensor([row.position for row in self.rows] + padding))
        step = self._steps.get((rows_bucket, columns_bucket))
        if step is None:
            step = self._steps[(rows_bucket, columns_bucket)] = self._captured(self._step(rows_bucket, columns_bucket))
        logits = step()[:rows].clone()  # the replay's output buffer is written again by the next replay
        for row in self.rows:
            row.position += 1
        return self._limit(logits)

    def _captured(self, step: Step) -> Step:
        """``step`` captured; if capture fails (a model whose forward cannot be captured), the step as it is,
        and every later step too: the batch goes on uncaptured rather than failing its requests."""
        try:
            return self._capture(step)
        except Exception:
            log.exception("decode step capture failed; decode steps run uncaptured from now on")
            self._capture = no_capture
            return step

    def _step(self, rows: int, columns: int) -> Step:
        """One decode step for ``rows`` slots and ``columns`` columns, reading only the fixed input buffers."""
        assert self._arena is not None
        arena, model = self._arena, self._model
        token_ids, positions = self._token_ids.narrow(0, 0, rows), self._positions.narrow(0, 0, rows)
        cache = DynamicCache(config=model.config)
        cache.layers = [_ArenaLayer(k, v, positions, columns) for k, v in zip(arena.keys, arena.values, strict=True)]
        column_index = torch.arange(columns, device=self._device)
        dtype = arena.keys[0].dtype
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}

        def step() -> torch.Tensor:
            hidden = (column_index[None, :] > positions[:, None])[:, None, None, :]
            mask = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device).masked_fill(
                hidden, torch.finfo(dtype).min)
            out = model(input_ids=token_ids, position_ids=positions[:, None], attention_mask=mask, use_cache=True,
                        **{self._cache_arg: cache}, **extra)
            logits: torch.Tensor = out.logits[:, -1, :]
            return logits

        return step

    def _make_room(self, columns: int, like: KV | None = None) -> None:
        """An arena with at least ``columns`` columns (made from ``like``'s shapes the first time)."""
        if self._arena is None:
            assert like is not None
            self._arena = _Arena(like, self._slots, bucket(columns, MIN_COLUMNS))
        elif self._arena.columns < columns:
            self._arena = self._arena.with_columns(bucket(columns, MIN_COLUMNS))
            self._steps.clear()  # captured with the old arena's addresses
            log.info("decode arena grown to %d columns; steps are captured again", self._arena.columns)

    def _join(self, seq: SequenceState, cache: DynamicCache, length: int) -> None:
        kv = [layer_kv(layer) for layer in cache_layers(cache)]
        self._make_room(length + 1, like=kv)
        assert self._arena is not None and len(self.rows) < self._arena.slots
        self._arena.put(len(self.rows), kv)
        self.rows.append(seq)

    def _keep_rows(self, keep: list[int]) -> None:
        """Only the rows at indices ``keep`` stay; they move down to keep the occupied slots first."""
        assert self._arena is not None
        for target, source in enumerate(keep):
            if source != target:
                self._arena.move(source, target, self.rows[source].position)
        self.rows = [self.rows[i] for i in keep]

    def _row_kv(self, index: int, fed: int) -> KV:
        assert self._arena is not None
        return self._arena.take(index, fed)

    def clear(self) -> None:
        self.rows = []
