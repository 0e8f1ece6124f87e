"""A GGUF model run by llama.cpp's kernels, through llama-cpp-python's low-level (ctypes) bindings.

The weights stay as the file stores them (the embedded model: 4-bit Q4_1), which is what makes llama.cpp
several times faster per token on a CPU than the float32 copy torch runs. One llama.cpp context holds a
KV stream per sequence slot (``kv_unified`` off, as ``llama-server -np N`` has it), so a sequence's
attention reads its own cells only. Our engine thread drives the batching; llama.cpp only runs the
forward passes it is given and hands back logits, so sampling, grammars, stops and streaming are the
same code as on the torch backend.

Only the engine thread calls an instance. ``llama_cpp`` is imported on first use: it loads its shared
libraries at import and is an optional install (``make llama-cpp``).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelLoadError
from .spec import check_llama_cpp_installed

BATCH_TOKENS = 512  # tokens per llama_decode call; a longer prompt runs in several calls
# From this many tokens of one sequence in a llama_decode call, the build's attention runs in tiles
# (scripts/patch_llama_cpp.py, TILED_FROM_ROWS); with fewer, a row at a time. The two round differently.
TILED_ATTENTION_ROWS = 2
WEIGHTS_PLACED = b"model buffer size"  # llama.cpp's load log: one line per kind of buffer the weights went to


class LlamaCppModel:
    """One GGUF file and one context with ``slots`` sequences of ``context_per_slot`` tokens each."""

    def __init__(self, gguf: Path, slots: int, context_per_slot: int, threads: int, config: Any) -> None:
        check_llama_cpp_installed()
        import llama_cpp

        self._lib: Any = llama_cpp
        self.config = config  # the Hugging Face config of the same model (vocabulary size for grammars)
        _quiet_logs(llama_cpp)
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        self._model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), model_params)
        if not self._model:
            raise ModelLoadError(f"llama.cpp cannot load {gguf}")
        params = llama_cpp.llama_context_default_params()
        params.n_seq_max = slots
        params.n_ctx = context_per_slot * slots
        params.n_batch = params.n_ubatch = BATCH_TOKENS
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = False
        params.no_perf = True
        self._context = llama_cpp.llama_init_from_model(self._model, params)
        if not self._context:
            llama_cpp.llama_model_free(self._model)
            raise ModelLoadError(f"llama.cpp cannot make a context for {gguf} ({slots} slots of "
                                 f"{context_per_slot} tokens)")
        self._memory = llama_cpp.llama_get_memory(self._context)
        self.weights = gguf  # the file it runs
        self.slots = slots
        self.context_per_slot = int(llama_cpp.llama_n_ctx_seq(self._context))
        self.vocab_size = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self._model)))
        self._batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, 1)

    def run(self, tokens: Sequence[int], positions: Sequence[int], slots: Sequence[int],
            outputs: Sequence[bool]) -> np.ndarray:
        """Feed each token at its position into its slot's sequence; the logits of the tokens whose
        ``outputs`` flag is set, in the order given, as a new float32 array [outputs, vocab]. The tokens
        reach llama.cpp in :func:`decode_calls`, whatever order they come in."""
        calls = decode_calls(slots, positions)
        row_of = {index: row for row, index in enumerate(i for i, output in enumerate(outputs) if output)}
        logits = np.empty((len(row_of), self.vocab_size), dtype=np.float32)
        for part in calls:
            count = self._decode([(tokens[i], positions[i], slots[i], outputs[i]) for i in part])
            if count:  # llama.cpp's rows, in the call's order, copied once into their rows here
                made = np.ctypeslib.as_array(self._lib.llama_get_logits(self._context), shape=(count, self.vocab_size))
                logits[[row_of[i] for i in part if outputs[i]]] = made
        return logits

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> int:
        """One ``llama_decode`` of (token, position, slot, wants logits) entries; how many logits it made."""
        batch = self._batch
        batch.n_tokens = len(entries)
        for i, (token, position, slot, output) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = slot
            batch.logits[i] = output
        status = self._lib.llama_decode(self._context, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status}")
        return sum(1 for *_, output in entries if output)

    def warm_up(self, ids: Sequence[int]) -> None:
        """Run a short prompt once (first-call allocations happen before the first request), then drop it."""
        self.run(ids, range(len(ids)), [0] * len(ids), [False] * (len(ids) - 1) + [True])
        self.forget(0)

    def forget(self, slot: int, start: int = 0) -> bool:
        """Drop ``slot``'s cells from position ``start`` on; False when the model cannot cut there (then
        the caller drops the whole slot)."""
        return bool(self._lib.llama_memory_seq_rm(self._memory, slot, start, -1))

    def copy(self, source: int, target: int) -> None:
        """``target`` becomes a copy of ``source`` (all its cells).

        The cells go through llama.cpp's per-sequence state (about 1.5 ms for 170 tokens here): its own copy
        between two slots' KV streams copies the whole stream, every cell of the slot's context, which took
        15 ms whatever the sequence's length. That copy stays as the fallback."""
        size = self._lib.llama_state_seq_get_size(self._context, source)
        state = (ctypes.c_uint8 * size)()
        written = self._lib.llama_state_seq_get_data(self._context, state, size, source)
        self._lib.llama_memory_seq_rm(self._memory, target, -1, -1)
        if written and self._lib.llama_state_seq_set_data(self._context, state, written, target):
            return
        self._lib.llama_memory_seq_rm(self._memory, target, -1, -1)  # whatever a failed write left
        self._lib.llama_memory_seq_cp(self._memory, source, target, -1, -1)

    def clear(self) -> None:
        self._lib.llama_memory_clear(self._memory, True)

    def close(self) -> None:
        if self._context:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._context)
            self._lib.llama_model_free(self._model)
            self._context = self._model = None


_log_callback: Any = None  # process-wide, like llama.cpp's logger: it must outlive every model


def quantize(source: Path, target: Path, quantization: str, threads: int) -> None:
    """Write ``source`` re-quantized to ``quantization`` (a llama.cpp type name, e.g. ``q8_0``) as ``target``.

    Without AMX, llama.cpp's kernels run a batch of Q8_0 weights faster than the embedded file's Q4_1 (repacked
    into interleaved blocks at load where the CPU has AVX-512, on the plain kernels with AVX2). A file that is
    already quantized is quantized again (llama.cpp's ``allow_requantize``): the benchmark's quality guard
    measures the cost."""
    check_llama_cpp_installed()
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quantization.upper()}")
    params.allow_requantize = True
    params.nthread = threads
    _quiet_logs(llama_cpp)
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params)) != 0:
        raise ModelLoadError(f"llama.cpp could not re-quantize {source.name} to {quantization}")


def decode_calls(slots: Sequence[int], positions: Sequence[int]) -> list[list[int]]:
    """The ``llama_decode`` calls that run a step's tokens, as lists of their indices. Each slot's tokens are cut
    into :func:`prompt_piece` parts of at most ``BATCH_TOKENS`` (a row that decodes brings a part of one), and
    the parts of one length share calls, in :func:`slot_order`: the rows' single tokens, eight resent prompts'
    last two tokens. A slot's later part runs in a later call.

    llama.cpp cuts a call into parts that take as many tokens from each of its sequences; with a decoding row
    beside it, a prompt's first token would go with the row and the rest after. So how many of a prompt's tokens
    share a part, which decides how their attention is computed, would depend on what else runs in the step: a
    prompt alone, in a batch, or after a cached prefix would get different logits. Parts of one length are cut
    by llama.cpp only where their slots are not adjacent, and each stays whole."""
    rounds: list[dict[int, list[list[int]]]] = []  # the k-th part of every slot, by its length
    for _, group in itertools.groupby(slot_order(slots, positions), key=lambda index: slots[index]):
        for turn, part in enumerate(_cut(list(group))):
            if turn == len(rounds):
                rounds.append({})
            rounds[turn].setdefault(len(part), []).append(part)
    return [call for parts in rounds for length in sorted(parts) for call in _packed(parts[length])]


def _cut(indices: list[int]) -> list[list[int]]:
    """One slot's tokens in the :func:`prompt_piece` parts of at most ``BATCH_TOKENS`` they run in, in order."""
    parts = []
    while indices:
        taken = prompt_piece(len(indices), BATCH_TOKENS)
        parts.append(indices[:taken])
        indices = indices[taken:]
    return parts


def _packed(parts: list[list[int]]) -> list[list[int]]:
    """``parts`` joined into as few calls of at most ``BATCH_TOKENS`` as their order allows, none split."""
    calls: list[list[int]] = [[]]
    for part in parts:
        if len(calls[-1]) + len(part) > BATCH_TOKENS:
            calls.append([])
        calls[-1] += part
    return calls


def prompt_piece(remaining: int, budget: int) -> int:
    """How many of a prompt's ``remaining`` tokens to run now, with room for ``budget``: all when they fit, else
    as many as fit that leave at least :data:`TILED_ATTENTION_ROWS` for later; all of a few more than fit rather
    than a part too small for tiles, or none when the room is too small for one. So every part of a prompt of
    at least that many tokens runs in tiles, however the prompt is cut."""
    if remaining <= budget:
        return remaining
    taken = min(budget, remaining - TILED_ATTENTION_ROWS)
    if taken >= TILED_ATTENTION_ROWS:
        return taken
    return remaining if remaining - budget < TILED_ATTENTION_ROWS else 0


def slot_order(slots: Sequence[int], positions: Sequence[int]) -> list[int]:
    """The order to feed a batch's tokens to llama.cpp in: by slot, then by position.

    With a KV stream per slot, llama.cpp splits a batch into parts of consecutive slot ids, taken in the
    order the tokens come (slots 0, 1, 2 make one part; 2, 0, 1 or 0, 2 make two), and each part is one
    more pass over all the weights. Sixteen rows in shuffled slot order took 108 ms a step here against
    60 ms sorted. :class:`~llm_api.local_model.slot_batch.SlotBatch` keeps busy slots adjacent for the same
    reason."""
    return sorted(range(len(slots)), key=lambda index: (slots[index], positions[index]))


def _quiet_logs(llama_cpp: Any) -> None:
    """llama.cpp logs every load detail to stderr; keep its warnings and errors (in our log), and the lines
    that say where the weights went, which name the kernels that will run them: ``AMX model buffer size``
    means Intel AMX's, ``CPU_REPACK`` the interleaved AVX ones, ``CPU_Mapped`` alone the plain ones."""
    global _log_callback
    if _log_callback is None:
        _log_callback = _log_callback_for(llama_cpp)
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def _log_callback_for(llama_cpp: Any) -> Any:
    log = logging.getLogger("llama_cpp")
    info, warn = 2, 3  # GGML_LOG_LEVEL_INFO and _WARN; ERROR is 4, CONT (5) continues the previous line

    def callback(level: int, text: bytes, _user_data: Any) -> None:
        if level in (warn, warn + 1):
            log.warning("%s", text.decode("utf-8", "replace").rstrip())
        elif level == info and WEIGHTS_PLACED in text:
            log.info("%s", text.decode("utf-8", "replace").strip())

    return llama_cpp.llama_log_callback(callback)
