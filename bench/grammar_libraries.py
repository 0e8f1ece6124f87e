"""Which grammar library constrains decoding most cheaply: the per-token cost of a JSON-schema constraint on
every row of a batch of 8, next to one batched decode step of the embedded model.

Usage: python -m bench.grammar_libraries [--steps 60] [--libraries llguidance,xgrammar,outlines_core]

Each library compiles the same schema, then for each of --steps tokens of a valid answer it fills the 8 rows'
token masks, applies them to a [8, vocab] logits tensor and advances the 8 matchers with the answer's token.
The model step is timed the same way (8 rows, one decode step each) for the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from llm_api.local_model.loader import ModelSpec, load_model

ROWS = 8
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city", "zip"], "additionalProperties": False},
        "score": {"type": "number"},
    },
    "required": ["name", "age", "email", "tags", "address", "score"],
    "additionalProperties": False,
}
ANSWER = {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "tags": ["red", "blue", "green", "red"],
          "address": {"city": "London", "zip": "W1 1AA"}, "score": 97.25}


def unpack_apply(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set the logits of every token whose bit is 0 to -inf (int32 words, bit i of word w = token 32w+i)."""
    shifts = torch.arange(32, dtype=torch.int32)
    allowed = ((bitmask[:, :, None] >> shifts) & 1).bool().reshape(bitmask.shape[0], -1)[:, :logits.shape[1]]
    logits.masked_fill_(~allowed, float("-inf"))


def bench_llguidance(tokenizer: Any, vocab: int, tokens: list[int], eos: int) -> tuple[float, float]:
    import llguidance
    import llguidance.hf
    import llguidance.torch as lltorch

    started = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=eos)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA))
    matchers = [llguidance.LLMatcher(lltok, grammar) for _ in range(ROWS)]
    setup = time.perf_counter() - started
    bitmask = lltorch.allocate_token_bitmask(ROWS, vocab)
    logits = torch.randn(ROWS, vocab)

    def step(token: int) -> None:
        for row, matcher in enumerate(matchers):
            lltorch.fill_next_token_bitmask(matcher, bitmask, row)
        unpack_apply(logits, bitmask)
        for matcher in matchers:
            assert matcher.consume_token(token), matcher.get_error()

    return setup, _timed(step, tokens)


def bench_xgrammar(tokenizer: Any, vocab: int, tokens: list[int], eos: int) -> tuple[float, float]:
    import xgrammar as xgr

    started = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab, stop_token_ids=[eos])
    compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA))
    matchers = [xgr.GrammarMatcher(compiled) for _ in range(ROWS)]
    setup = time.perf_counter() - started
    bitmask = xgr.allocate_token_bitmask(ROWS, vocab)
    logits = torch.randn(ROWS, vocab)

    def step(token: int) -> None:
        for row, matcher in enumerate(matchers):
            matcher.fill_next_token_bitmask(bitmask, row)
        xgr.apply_token_bitmask_inplace(logits, bitmask)
        for matcher in matchers:
            assert matcher.accept_token(token)

    return setup, _timed(step, tokens)


def bench_outlines_core(tokenizer: Any, vocab: int, tokens: list[int], eos: int) -> tuple[float, float]:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    started = time.perf_counter()
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}  # byte-level BPE pieces → bytes
    pieces: dict[bytes, list[int]] = {}
    for token_id in range(vocab):
        if token_id == eos:
            continue
        piece = tokenizer.convert_ids_to_tokens(token_id)
        if all(char in to_byte for char in piece):
            pieces.setdefault(bytes(to_byte[char] for char in piece), []).append(token_id)
    index = Index(build_regex_from_schema(json.dumps(SCHEMA)), Vocabulary(eos, pieces))
    guides = [Guide(index) for _ in range(ROWS)]
    setup = time.perf_counter() - started
    bitmask = torch.zeros(ROWS, (vocab + 31) // 32, dtype=torch.int32)
    logits = torch.randn(ROWS, vocab)

    def step(token: int) -> None:
        for row, guide in enumerate(guides):
            guide.write_mask_into(bitmask[row].data_ptr(), bitmask.shape[1], 4)
        unpack_apply(logits, bitmask)
        for guide in guides:
            guide.advance(token, return_tokens=False)  # outlines-core returns nothing when told not to

    return setup, _timed(step, tokens)


def _timed(step: Any, tokens: list[int]) -> float:
    times = []
    for token in tokens:
        started = time.perf_counter()
        step(token)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def model_step_seconds(loaded: Any, steps: int) -> float:
    """Median seconds of one decode step for 8 rows (cache of a 40-token prompt)."""
    model = loaded.model
    ids = torch.tensor([loaded.prompt_format.build([{"role": "user", "content": "Describe a person as JSON."}])] * ROWS)
    times = []
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            started = time.perf_counter()
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--cache-dir", default=".cache/test-models")
    parser.add_argument("--libraries", default="llguidance,xgrammar,outlines_core")
    args = parser.parse_args()
    loaded = load_model(ModelSpec("embedded", "cpu", "float32", cache_dir=args.cache_dir))
    tokenizer, vocab = loaded.tokenizer, loaded.vocab_limit
    eos = min(loaded.prompt_format.stop_token_ids)
    tokens = tokenizer.encode(json.dumps(ANSWER), add_special_tokens=False)[: args.steps]
    model_step = model_step_seconds(loaded, min(args.steps, 20))
    print(f"model decode step, {ROWS} rows: {model_step * 1000:.2f} ms (median of {min(args.steps, 20)})")
    print(f"{'library':<14} {'setup s':>8} {'grammar ms/step':>16} {'step ratio':>11}")
    for name in args.libraries.split(","):
        setup, per_step = globals()[f"bench_{name}"](tokenizer, vocab, tokens, eos)
        ratio = (model_step + per_step) / model_step
        print(f"{name:<14} {setup:>8.2f} {per_step * 1000:>16.3f} {ratio:>10.3f}x")


if __name__ == "__main__":
    main()
