"""The quality guard: every precision the engine offers against float32, on the same text and prompts.

For each precision: perplexity on a fixed public-domain text (bench/data/genesis-kjv.txt, about 21,500
tokens of the embedded model's tokenizer) and greedy agreement with float32 on the 50 fixed prompts
(identical answers, and the share of float32's tokens in the common prefix).

Usage: python -m bench.quality [--tokens 64] [--window 1024] [--out bench/results/quality.json]
Prints a summary and writes it, with every answer, to the JSON file.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from bench.prompts import PROMPTS
from llm_api.config import QUANTIZATIONS
from llm_api.local_model.errors import ModelLoadError
from llm_api.local_model.llama_cpp_model import LlamaCppModel
from llm_api.local_model.loader import LoadedModel, ModelSpec, load_model

TEXT = Path(__file__).resolve().parent / "data" / "genesis-kjv.txt"
# What the engine offers on the CPU, as LLM_API_DTYPE values; float32 is the reference and the default.
PRECISIONS = ("float32", "bfloat16")
# LLM_API_QUANTIZATION on the torch backend: torchao's 8-bit weights and activations (the decode step compiled; the
# scores here run uncompiled: the same quantization, rounding aside).
TORCH_QUANTIZED = {f"torch-{name}": name for name in QUANTIZATIONS["torch"]}
# LLM_API_BACKEND=llama_cpp, when it is installed: the GGUF's own 4-bit weights (Q4_1) on llama.cpp's kernels, and
# the file re-quantized to each LLM_API_QUANTIZATION format.
LLAMA_CPP = {"llama_cpp-q4_1": "none", **{f"llama_cpp-{name}": name for name in QUANTIZATIONS["llama_cpp"]}}
# The default may lose at most this much perplexity against float32 (the guard).
MAX_PERPLEXITY_LOSS = 0.03


def text_ids(loaded: LoadedModel) -> list[int]:
    ids: list[int] = loaded.tokenizer(TEXT.read_text(encoding="utf-8"))["input_ids"]
    return ids


def token_nlls(loaded: LoadedModel, ids: list[int], window: int) -> torch.Tensor:
    """The negative log-likelihood of every token but the first, in sliding windows of ``window`` tokens half a
    window apart; each window scores only the tokens no earlier window scored, so every token after the first
    window is predicted from at least half a window of context."""
    scores, scored_up_to = [], 1
    with torch.inference_mode():
        for begin in range(0, len(ids), window // 2):
            end = min(begin + window, len(ids))
            chunk = torch.tensor([ids[begin:end]], device=loaded.device)
            logits = all_logits(loaded, ids[begin:end])[:-1].float()
            nll = torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="none")
            scores.append(nll[-(end - scored_up_to):])
            scored_up_to = end
            if end == len(ids):
                break
    return torch.cat(scores)


def all_logits(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    """The logits after every token of ``ids`` [tokens, vocab], the model seeing ``ids`` alone."""
    if isinstance(loaded.model, LlamaCppModel):
        logits = loaded.model.run(ids, range(len(ids)), [0] * len(ids), [True] * len(ids))
        loaded.model.forget(0)
        return torch.from_numpy(logits)
    out: torch.Tensor = loaded.model(input_ids=torch.tensor([ids], device=loaded.device)).logits[0]
    return out


def perplexity(loaded: LoadedModel, ids: list[int], window: int) -> float:
    return math.exp(float(token_nlls(loaded, ids, window).mean()))


def greedy(loaded: LoadedModel, prompt: str, tokens: int) -> tuple[list[int], float]:
    if isinstance(loaded.model, LlamaCppModel):
        return llama_cpp_greedy(loaded, loaded.model, prompt, tokens)
    ids = torch.tensor([loaded.prompt_format.build([{"role": "user", "content": prompt}])])
    started = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                    do_sample=False, top_k=None, top_p=None,
                                    eos_token_id=sorted(loaded.prompt_format.stop_token_ids))
    return out[0, ids.shape[1]:].tolist(), time.perf_counter() - started


def llama_cpp_greedy(loaded: LoadedModel, model: LlamaCppModel, prompt: str,
                     tokens: int) -> tuple[list[int], float]:
    ids = loaded.prompt_format.build([{"role": "user", "content": prompt}])
    stops = loaded.prompt_format.stop_token_ids
    started = time.perf_counter()
    logits = model.run(ids, range(len(ids)), [0] * len(ids), [False] * (len(ids) - 1) + [True])
    out: list[int] = []
    while len(out) < tokens:
        out.append(int(logits[-1].argmax()))
        if out[-1] in stops:
            break
        logits = model.run([out[-1]], [len(ids) + len(out) - 1], [0], [True])
    model.forget(0)
    return out, time.perf_counter() - started


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def agreement(models: dict[str, LoadedModel], tokens: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    totals = {name: [0, 0.0] for name in models}
    for prompt in PROMPTS:
        row: dict[str, Any] = {"prompt": prompt}
        for name, loaded in models.items():
            ids, seconds = greedy(loaded, prompt, tokens)
            totals[name][0] += len(ids)
            totals[name][1] += seconds
            row[name] = {"ids": ids, "text": loaded.decode(ids)}
        rows.append(row)
    reference_tokens = sum(len(r["float32"]["ids"]) for r in rows)
    summary = {name: {
        "identical_answers": sum(r[name]["ids"] == r["float32"]["ids"] for r in rows),
        "float32_tokens_in_common_prefix": round(
            sum(common_prefix(r[name]["ids"], r["float32"]["ids"]) for r in rows) / reference_tokens, 3),
        "tokens_per_second": round(totals[name][0] / totals[name][1], 1)} for name in models}
    return summary, rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens per prompt")
    parser.add_argument("--window", type=int, default=1024, help="perplexity window, in tokens")
    parser.add_argument("--cache-dir", default=".cache/test-models")
    parser.add_argument("--out", default="bench/results/quality.json")
    parser.add_argument("--only", default="", help="comma-separated precisions to measure beside float32 "
                                                   "(default: all), e.g. torch-int8")
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}

    def wanted(name: str) -> bool:
        return name == "float32" or not only or name in only

    models = {name: load_model(ModelSpec("embedded", "cpu", name, cache_dir=args.cache_dir))
              for name in PRECISIONS if wanted(name)}
    for name, quantization in TORCH_QUANTIZED.items():
        if wanted(name):
            models[name] = load_model(ModelSpec("embedded", "cpu", cache_dir=args.cache_dir, quantization=quantization))
    for name, quantization in [(n, q) for n, q in LLAMA_CPP.items() if wanted(n)]:
        spec = ModelSpec("embedded", cache_dir=args.cache_dir, backend="llama_cpp", quantization=quantization)
        try:
            models[name] = load_model(spec, slots=1)
        except ModelLoadError as exc:
            print(f"{name}: not measured ({exc})")
    ids = text_ids(models["float32"])
    scores = {name: perplexity(loaded, ids, args.window) for name, loaded in models.items()}
    agreed, rows = agreement(models, args.tokens)
    summary = {"text": TEXT.name, "text_tokens": len(ids), "window": args.window, "prompts": len(PROMPTS),
               "max_new_tokens": args.tokens, "precisions": {name: {
                   "perplexity": round(scores[name], 3),
                   "perplexity_vs_float32": round(scores[name] / scores["float32"], 4),
                   **agreed[name]} for name in models},
               "default_within_guard": scores[PRECISIONS[0]] / scores["float32"] <= 1 + MAX_PERPLEXITY_LOSS}
    print(json.dumps(summary, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
