"""Decode steps of a ChatGLM3-6B-shaped model with random weights: the padded batch against the fixed-shape
steps replayed as CUDA graphs (``LLM_API_DECODE_GRAPHS``), side by side in ONE process, and the share of the
memory-bandwidth roofline one row reaches (the weights' bytes read once per step, at the bandwidth a device
copy measures here).

Usage:  python -m bench.gpu_decode [--rows 1 8 32] [--steps 128] [--prompt 128] [--device cuda]
        python -m bench.gpu_decode --tiny --device cpu   # the same code on a two-layer model, as a check

The model is built on the spot from ChatGLM3-6B's ``config.json`` values through the service's converter
(``glm_config``): transformers' ``GlmForCausalLM`` in bfloat16, about 12.5 GB. Rows join one by one
(prefilled alone, as in the engine), then ``--steps`` greedy steps are timed. On a CPU nothing is captured:
the fixed-shape steps run eagerly.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from bench.kv_cache import _Request, _Row

# ChatGLM3-6B's config.json (THUDM/chatglm3-6b), the fields the converter reads.
CHATGLM3_6B = {
    "padded_vocab_size": 65024, "hidden_size": 4096, "ffn_hidden_size": 13696, "num_layers": 28,
    "num_attention_heads": 32, "kv_channels": 128, "multi_query_attention": True, "multi_query_group_num": 2,
    "seq_length": 8192, "layernorm_epsilon": 1e-05, "add_qkv_bias": True, "eos_token_id": 2, "pad_token_id": 0,
}
TINY = {**CHATGLM3_6B, "hidden_size": 256, "ffn_hidden_size": 512, "num_layers": 2, "num_attention_heads": 4,
        "kv_channels": 64, "padded_vocab_size": 4096}
SPECIAL_IDS = {"<|user|>": 64795, "<|observation|>": 64797}


def random_model(source: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import GlmConfig, GlmForCausalLM

    from llm_api.local_model.chatglm3 import glm_config

    config = GlmConfig(**glm_config(source, SPECIAL_IDS))
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = GlmForCausalLM._from_config(config, dtype=dtype)
    return model.eval()


def copy_bandwidth(device: torch.device, gib: float = 2.0) -> float:
    """Bytes per second a device-to-device copy moves (read plus write), best of five."""
    source = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        started = time.perf_counter()
        target.copy_(source)
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * source.numel() / best


def run(batch: Any, prompts: list[list[int]], steps: int,
        device: torch.device) -> tuple[float, float, list[list[int]]]:
    """(seconds of the first step, which captures; median seconds of the other steps; each row's tokens)."""
    rows = []
    for ids in prompts:
        row = _Row(_Request(ids), position=len(ids))
        logits = batch.prefill_chunk(batch.start_prefill(row), len(ids))
        row.generated.append(int(logits.argmax()))
        rows.append(row)
    times = []
    for _ in range(steps):
        _sync(device)
        started = time.perf_counter()
        logits = batch.decode()
        tokens = logits.argmax(dim=-1).tolist()  # the engine reads every step's tokens on the host too
        times.append(time.perf_counter() - started)
        for row, token in zip(batch.rows, tokens, strict=True):
            row.generated.append(token)
    batch.retire(list(batch.rows))
    ordered = sorted(times[1:])
    return times[0], ordered[len(ordered) // 2], [row.generated for row in rows]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens per row")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--tiny", action="store_true", help="a two-layer model of the same kind (a quick check)")
    args = parser.parse_args()

    from llm_api.local_model.batch import RunningBatch
    from llm_api.local_model.graphed_batch import GraphedBatch, capture_cuda_graph, no_capture
    from llm_api.local_model.prefix_cache import PrefixCache

    device = torch.device(args.device)
    source = TINY if args.tiny else CHATGLM3_6B
    dtype = getattr(torch, args.dtype)
    started = time.perf_counter()
    model = random_model(source, device, dtype)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = copy_bandwidth(device, 0.25 if args.tiny else 2.0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# {name}, torch {torch.__version__}; {'tiny' if args.tiny else 'ChatGLM3-6B'}-shaped GlmForCausalLM, "
          f"random {args.dtype} weights {weight_bytes / 1e9:.2f} GB, built in {time.perf_counter() - started:.0f}s; "
          f"device copy {bandwidth / 1e9:.0f} GB/s; {args.prompt}-token prompts, {args.steps} greedy steps")
    print("| rows | padded ms/step | graphed ms/step | padded tok/s | graphed tok/s | speed-up | first graphed step "
          "| rows with the same greedy tokens |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    one_row_ms = None
    for count in args.rows:
        prompts = [torch.randint(0, vocab, (args.prompt,), generator=generator).tolist() for _ in range(count)]
        padded = RunningBatch(model, device, vocab, prefixes=PrefixCache(0))
        capture = capture_cuda_graph(torch.cuda.graph_pool_handle()) if device.type == "cuda" else no_capture
        graphed = GraphedBatch(model, device, vocab, slots=count, prefixes=PrefixCache(0), capture=capture)
        run(padded, prompts, 4, device)  # warm-up: kernels chosen, memory pools filled
        _, padded_step, padded_tokens = run(padded, prompts, args.steps, device)
        first, graphed_step, graphed_tokens = run(graphed, prompts, args.steps, device)
        same = sum(a == b for a, b in zip(padded_tokens, graphed_tokens, strict=True))
        if count == 1:
            one_row_ms = graphed_step * 1000
        print(f"| {count} | {padded_step * 1000:.2f} | {graphed_step * 1000:.2f} | {count / padded_step:.0f} | "
              f"{count / graphed_step:.0f} | {padded_step / graphed_step:.2f}× | {first * 1000:.0f} ms "
              f"| {same} of {count} |", flush=True)
    if one_row_ms is not None:
        floor_ms = weight_bytes / bandwidth * 1000
        print(f"\nOne row: {one_row_ms:.2f} ms/step against {floor_ms:.2f} ms to read the weights once at the "
              f"measured bandwidth: {floor_ms / one_row_ms:.0%} of the roofline.")


if __name__ == "__main__":
    main()
