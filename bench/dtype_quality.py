"""bf16 vs fp32 on this CPU: greedy agreement and speed on the 50 fixed prompts.

Usage: python -m bench.dtype_quality [--tokens 64] [--out bench/results/dtype.json]
Prints a summary and writes the per-prompt results (both answers) to the JSON file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.prompts import PROMPTS
from llm_api.local_model.loader import ModelSpec, load_model


def greedy(loaded, prompt: str, tokens: int) -> tuple[list[int], float]:
    ids = torch.tensor([loaded.prompt_format.build([{"role": "user", "content": prompt}])])
    started = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                    do_sample=False, top_k=None, top_p=None,
                                    eos_token_id=sorted(loaded.prompt_format.stop_token_ids))
    return out[0, ids.shape[1]:].tolist(), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--cache-dir", default=".cache/test-models")
    parser.add_argument("--out", default="bench/results/dtype.json")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    models = {dtype: load_model(ModelSpec("embedded", "cpu", dtype, cache_dir=args.cache_dir))
              for dtype in ("float32", "bfloat16")}
    rows, totals = [], {d: [0, 0.0] for d in models}
    for prompt in PROMPTS:
        row = {"prompt": prompt}
        for dtype, loaded in models.items():
            ids, seconds = greedy(loaded, prompt, args.tokens)
            totals[dtype][0] += len(ids)
            totals[dtype][1] += seconds
            row[dtype] = {"ids": ids, "text": loaded.decode(ids)}
        a, b = row["float32"]["ids"], row["bfloat16"]["ids"]
        row["same"] = a == b
        row["common_prefix"] = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                                    min(len(a), len(b)))
        rows.append(row)
    same = sum(r["same"] for r in rows)
    prefix = sum(r["common_prefix"] for r in rows) / sum(len(r["float32"]["ids"]) for r in rows)
    speed = {d: totals[d][0] / totals[d][1] for d in totals}
    summary = {"prompts": len(rows), "identical_answers": same, "fp32_tokens_in_common_prefix": round(prefix, 3),
               "tokens_per_second": {d: round(v, 1) for d, v in speed.items()},
               "bf16_speedup": round(speed["bfloat16"] / speed["float32"], 2), "max_new_tokens": args.tokens}
    print(json.dumps(summary, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
