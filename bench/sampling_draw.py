"""What choosing the next tokens costs on the embedded model's own logits: ``choose_tokens`` at 1 and 8 rows,
temperature 0.7, ``top_p`` 0.9 and 1. The logits are recorded from the ``llama_cpp`` backend: while the model
answers eight prompts (forty sampled tokens each, its real distribution rather than random numbers), and at
the prompts' own positions (flatter). With ``--baseline`` (the ``sampling.py`` of an older checkout) each case
is also timed with that code, the calls alternating in ONE process.

Usage:  python -m bench.sampling_draw [--steps 300] [--baseline OLD/llm_api/local_model/sampling.py]
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import numpy as np
import torch

from bench.prompts import PROMPTS
from bench.run import MODEL_CACHE
from bench.sampling_knobs import load_baseline, paired
from llm_api.generation.types import SamplingParams
from llm_api.local_model import sampling
from llm_api.local_model.loader import ModelSpec, load_model

ANSWER_TOKENS = 40


def recorded_logits() -> tuple[np.ndarray, np.ndarray]:
    """(the logits of every answer step, the logits at the prompts' positions), each [rows, vocabulary]."""
    loaded = load_model(ModelSpec("embedded", cache_dir=str(MODEL_CACHE), backend="llama_cpp"), slots=1)
    model, rng = loaded.model, np.random.default_rng(0)
    answering, prompting = [], []
    try:
        for prompt in PROMPTS[:8]:
            ids = loaded.prompt_format.build([{"role": "user", "content": prompt}], ())
            model.clear()
            logits = model.run(ids, range(len(ids)), [0] * len(ids), [True] * len(ids))
            prompting.append(logits[:-1])
            row, position = logits[-1], len(ids)
            for _ in range(ANSWER_TOKENS):
                answering.append(row)
                weights = np.exp((row.astype(np.float64) - row.max()) / 0.7)
                token = int(rng.choice(row.size, p=weights / weights.sum()))
                row = model.run([token], [position], [0], [True])[0]
                position += 1
    finally:
        model.close()
    return np.stack(answering), np.concatenate(prompting)


def batches(logits: np.ndarray, rows: int) -> list[torch.Tensor]:
    return [torch.from_numpy(logits[start:start + rows].copy()) for start in range(0, len(logits) - rows + 1, rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--baseline", default="")
    args = parser.parse_args()
    answering, prompting = recorded_logits()
    old = load_baseline(args.baseline) if args.baseline else sampling
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median ms of {args.steps} calls, temperature 0.7")
    print("| Logits | Rows | top_p | Before | After | After / before |\n|---|---|---|---|---|---|")
    for name, logits in (("answering", answering), ("prompt positions", prompting)):
        for rows in (1, 8):
            for top_p in (0.9, 1.0):
                params = [SamplingParams(max_tokens=10**6, temperature=0.7, top_p=top_p, seed=seed)
                          for seed in range(rows)]
                before, after = paired((old, params), (sampling, params), args.steps, batches(logits, rows))
                print(f"| {name} | {rows} | {top_p} | {before:.3f} | {after:.3f} | {after / before:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
