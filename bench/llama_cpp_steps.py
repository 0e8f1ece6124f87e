"""What llama.cpp's kernels cost alone: ms a decode step at several batch sizes, and prompt tokens a second,
for the embedded GGUF as our ``llama_cpp`` backend loads it (no engine loop, no sampling, no HTTP).

Usage:  python -m bench.llama_cpp_steps [--rows 1 8 16] [--steps 40] [--quantization none|q8_0]
                                        [--history 1500] [--turns 12 24 40]

Every row has its own slot holding a 64-token prompt; each step feeds one token to every row. The first
five steps are left out and the median of the rest is reported. The load log line that names where the
weights went (``AMX`` or ``CPU_REPACK`` buffers) is printed too: it says which kernels ran.

Then what a conversation's next turn costs the kernels: a turn of each ``--turns`` length run into a slot
holding ``--history`` cells, against the same turn into an empty slot (median of five), the history itself
run as one prompt, and one row's decode step at the history's end (``--history 0`` skips this part).
``LLAMA_CPP_LIB_PATH`` (llama-cpp-python's own setting) points at another build's libraries, to compare.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.run import MODEL_CACHE
from llm_api.local_model.llama_cpp_model import LlamaCppModel
from llm_api.local_model.loader import ModelSpec, load_model

PROMPT = list(range(100, 164))
LONG_PROMPT = list(range(100, 356))


def run_prompt(model: LlamaCppModel, ids: list[int], slot: int, start: int = 0) -> None:
    """``ids`` into ``slot`` from position ``start``, in one step, with the last token's logits."""
    model.run(ids, range(start, start + len(ids)), [slot] * len(ids), [False] * (len(ids) - 1) + [True])


def ms(action: Callable[..., object], *args: Any) -> float:
    """Milliseconds ``action(*args)`` took."""
    started = time.perf_counter()
    action(*args)
    return 1000 * (time.perf_counter() - started)


def next_turn(model: LlamaCppModel, history: int, turns: list[int]) -> None:
    """Print what a turn costs after ``history`` cached cells and alone, the history's own prompt time, and one
    decode step at its end. Slot 0 holds the history; slot 1 runs each turn alone."""
    cells = [100 + 7 * i % 5000 for i in range(history)]
    model.clear()
    print(f"prompt of {history} tokens: {ms(run_prompt, model, cells, 0):.0f} ms", flush=True)
    for length in turns:
        turn = list(range(2000, 2000 + length))
        after, alone = [], []
        for _ in range(5):
            after.append(ms(run_prompt, model, turn, 0, history))
            model.forget(0, history)
            alone.append(ms(run_prompt, model, turn, 1))
            model.forget(1)
        print(f"turn of {length} tokens: {statistics.median(after):.1f} ms after the history, "
              f"{statistics.median(alone):.1f} ms alone", flush=True)
    step = [ms(model.run, [7], [history + i], [0], [True]) for i in range(25)]
    print(f"1 row at {history} cells: {statistics.median(step[5:]):.2f} ms a step", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--history", type=int, default=1500, help="cells a slot holds before the next turn")
    parser.add_argument("--turns", type=int, nargs="+", default=[12, 24, 40], help="the next turn's lengths")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    spec = ModelSpec("embedded", cache_dir=str(MODEL_CACHE), backend="llama_cpp", quantization=args.quantization)
    model = load_model(spec, slots=max(2, *args.rows)).model
    try:
        for rows in args.rows:
            model.clear()
            for slot in range(rows):
                run_prompt(model, PROMPT, slot)
            seconds = []
            for step in range(args.steps):
                started = time.perf_counter()
                model.run([7] * rows, [len(PROMPT) + step] * rows, list(range(rows)), [True] * rows)
                seconds.append(time.perf_counter() - started)
            print(f"{rows:>2} rows: {1000 * statistics.median(seconds[5:]):.2f} ms a step", flush=True)
        model.clear()
        started = time.perf_counter()
        run_prompt(model, LONG_PROMPT, 0)
        print(f"prompt: {len(LONG_PROMPT) / (time.perf_counter() - started):.0f} tokens a second", flush=True)
        if args.history:
            next_turn(model, args.history, args.turns)
    finally:
        model.close()


if __name__ == "__main__":
    main()
