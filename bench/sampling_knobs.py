"""What the sampling knobs cost per decode step: ``choose_tokens`` over a batch of rows on random logits of the
embedded model's vocabulary, with no knob (the default path), each knob family on every row, and all of them
with log-probabilities, side by side in ONE process. With ``--baseline FILE`` (the ``sampling.py`` of an older
checkout), every case is also timed with that code, the calls alternating, so the ratios show what a change
saved or cost each kind of request.

Usage:  python -m bench.sampling_knobs [--rows 8] [--steps 200] [--baseline OLD/llm_api/local_model/sampling.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from datetime import UTC, datetime
from types import ModuleType

import torch

from llm_api.generation.types import SamplingParams
from llm_api.local_model import sampling

VOCAB = 49152  # SmolLM2's


def load_baseline(path: str) -> ModuleType:
    """An older ``sampling.py``, imported inside this package so that its relative imports resolve."""
    spec = importlib.util.spec_from_file_location("llm_api.local_model._baseline_sampling", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def paired(a: tuple[ModuleType, list[SamplingParams]], b: tuple[ModuleType, list[SamplingParams]], steps: int,
           logits: list[torch.Tensor]) -> tuple[float, float]:
    """Median milliseconds of one ``choose_tokens`` call for ``a`` and for ``b`` (module, rows' parameters),
    the calls alternating so that a busy machine slows both alike."""
    def samplers(module: ModuleType, rows: list[SamplingParams]) -> list[object]:
        return [module.Sampler(p, list(range(64))) if module is sampling else module.Sampler(p) for p in rows]

    runs = [(a[0], samplers(*a), []), (b[0], samplers(*b), [])]
    for step in range(steps):
        for module, chosen, times in runs:
            started = time.perf_counter()
            module.choose_tokens(logits[step % len(logits)], chosen)
            times.append(time.perf_counter() - started)
    first, second = (statistics.median(times) * 1000 for _, _, times in runs)
    return first, second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--baseline", default="")
    args = parser.parse_args()
    torch.manual_seed(0)
    # Peaked like a model's distribution (the 0.9 nucleus falls inside the 256 candidates), 8 different steps.
    logits = [torch.randn(args.rows, VOCAB) * 5 for _ in range(8)]
    base = {"max_tokens": 10**6, "temperature": 0.7, "top_p": 0.9, "seed": 1}
    cases: list[tuple[str, dict[str, object]]] = [
        ("no knob (the default path)", {}),
        ("greedy, no knob", {"temperature": 0.0}),
        ("top_k 40 + min_p 0.05", {"top_k": 40, "min_p": 0.05}),
        ("presence + frequency penalties", {"presence_penalty": 0.5, "frequency_penalty": 0.5}),
        ("repetition_penalty 1.1", {"repetition_penalty": 1.1}),
        ("logit_bias, 10 tokens", {"logit_bias": tuple((i * 97, 1.0) for i in range(10))}),
        ("logprobs + top_logprobs 5", {"logprobs": True, "top_logprobs": 5}),
        ("all of the above", {"top_k": 40, "min_p": 0.05, "presence_penalty": 0.5, "frequency_penalty": 0.5,
                              "repetition_penalty": 1.1, "logit_bias": tuple((i * 97, 1.0) for i in range(10)),
                              "logprobs": True, "top_logprobs": 5}),
    ]
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.rows} rows, vocabulary {VOCAB}, median of {args.steps} steps")

    def rows(knobs: dict[str, object]) -> list[SamplingParams]:
        return [SamplingParams(**{**base, **knobs}) for _ in range(args.rows)]  # type: ignore[arg-type]

    print("| Case | Before | After | After / before |\n|---|---|---|---|")
    if args.baseline:
        old = load_baseline(args.baseline)
        for name, knobs in cases:
            before, after = paired((old, rows(knobs)), (sampling, rows(knobs)), args.steps, logits)
            print(f"| {name} | {before:.2f} ms | {after:.2f} ms | {after / before:.2f}× |")
    print("\n| Every row with | Default path | With the knob | Ratio |\n|---|---|---|---|")
    for name, knobs in cases[2:]:
        default, ms = paired((sampling, rows({})), (sampling, rows(knobs)), args.steps, logits)
        print(f"| {name} | {default:.2f} ms | {ms:.2f} ms | {ms / default:.2f}× |")


if __name__ == "__main__":
    main()
