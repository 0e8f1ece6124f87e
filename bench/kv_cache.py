"""Decode ms/step of the running batch with HF's DynamicCache (every layer's K and V concatenated every
step, the attention mask too) against the preallocated slots (``SlotLayer``), side by side in ONE process
on the embedded model: same prompts, greedy, and the tokens of both are checked to be identical.

Usage:  python -m bench.kv_cache [--rows 1 8 16] [--steps 64] [--repeats 3]

Rows join one by one (prefilled alone, then merged, as in the engine); only the decode steps that
follow are timed. Each (rows, cache) pair is run ``--repeats`` times, the two caches alternating; the
median is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.prompts import PROMPTS


@dataclass
class _Request:
    prompt_ids: list[int]


@dataclass
class _Row:
    """What RunningBatch reads of a sequence."""

    request: _Request
    generated: list[int] = field(default_factory=list)
    position: int = 0
    finish_reason: str | None = None

    @property
    def last_token(self) -> int:
        return self.generated[-1]


def run(model: Any, prompts: list[list[int]], steps: int, preallocated: bool) -> tuple[float, list[list[int]]]:
    from llm_api.local_model.batch import RunningBatch
    from llm_api.local_model.prefix_cache import PrefixCache

    pad_head = model.device.type == "cpu" and model.dtype == torch.float32
    batch = RunningBatch(model.model, model.device, model.vocab_limit, pad_head_rows=pad_head,
                         prefixes=PrefixCache(0), preallocated=preallocated)
    rows = []
    for ids in prompts:
        row = _Row(_Request(ids), position=len(ids))
        prefill = batch.start_prefill(row)  # type: ignore[arg-type]
        logits = batch.prefill_chunk(prefill, len(ids))
        assert logits is not None
        row.generated.append(int(logits.argmax()))
        rows.append(row)
    started = time.perf_counter()
    for _ in range(steps):
        logits = batch.decode()
        for row, token in zip(batch.rows, logits.argmax(dim=-1).tolist(), strict=True):
            row.generated.append(token)
    elapsed = time.perf_counter() - started
    return elapsed / steps * 1000, [row.generated for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from bench.run import MODEL_CACHE
    from llm_api.local_model.loader import load_model
    from llm_api.local_model.spec import ModelSpec

    model = load_model(ModelSpec("embedded", cache_dir=str(MODEL_CACHE), device="cpu", dtype="float32"))
    encoded = [model.prompt_format.build([{"role": "user", "content": p}]) for p in PROMPTS]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; {args.steps} greedy decode steps, median of {args.repeats}")
    print("| rows | DynamicCache ms/step | preallocated ms/step | speed-up |")
    print("|---:|---:|---:|---:|")
    run(model, encoded[:2], 8, True)  # warm-up
    run(model, encoded[:2], 8, False)
    for count in args.rows:
        prompts = [encoded[i % len(encoded)] for i in range(count)]
        times: dict[bool, list[float]] = {False: [], True: []}
        tokens: dict[bool, list[list[int]]] = {}
        for _ in range(args.repeats):
            for preallocated in (False, True):
                ms, tokens[preallocated] = run(model, prompts, args.steps, preallocated)
                times[preallocated].append(ms)
        assert tokens[False] == tokens[True], f"{count} rows: the two caches generated different tokens"
        old, new = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {count} | {old:.1f} | {new:.1f} | {old / new:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
