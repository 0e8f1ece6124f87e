"""What constrained decoding costs per token inside a running batch of 8, against the same batch unconstrained,
side by side in ONE run on the embedded model (in-process, one engine).

Usage:  python -m bench.constrained_cost [--tokens 48] [--rounds 3]

Three batches of 8 requests, each repeated ``--rounds`` times, interleaved so that load on the machine hits all
three alike: 8 unconstrained rows; 1 row constrained to a JSON schema among 7 unconstrained; 8 constrained
rows. Every row generates exactly ``--tokens`` tokens (``ignore_eos``; the constrained schema is an array of
strings long enough never to complete first). Reported per batch step (decode steps of the 8 rows): the
process's CPU time (every thread: torch's and the engine's), which other work on a shared machine does not
inflate, and the wall time; and the ratios to the unconstrained batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from llm_api.generation import Finished, SamplingParams
from llm_api.generation.structured import ResponseFormat, StructuredOutput

ROWS = 8
SCHEMA = {"type": "object", "properties": {"notes": {"type": "array", "minItems": 64, "items": {
    "type": "object", "properties": {"title": {"type": "string", "maxLength": 40},
                                     "score": {"type": "integer", "minimum": 0, "maximum": 100},
                                     "tag": {"enum": ["red", "green", "blue"]}},
    "required": ["title", "score", "tag"], "additionalProperties": False}}}, "required": ["notes"]}
PROMPTS = ["Write notes about cats.", "List facts about Rome.", "Describe the sea.", "Rate some films.",
           "Write notes about trains.", "List facts about Mars.", "Describe a forest.", "Rate some books."]


def engine() -> Any:
    from bench.run import MODEL_CACHE
    from llm_api.local_model.engine import EngineOptions, LocalEngine
    from llm_api.local_model.loader import ModelSpec

    result = LocalEngine(ModelSpec("embedded", cache_dir=str(MODEL_CACHE)),
                         EngineOptions(max_batch=ROWS, prefix_cache_tokens=0))
    result.start()
    if not result.wait_ready(600):
        raise RuntimeError(result.load_error or "the engine did not load")
    return result


def run_batch(local: Any, constrained: int, tokens: int) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, decode steps) from the last admission to the last finish."""
    structured = StructuredOutput(ResponseFormat("json_schema", json.dumps(SCHEMA), "notes"))
    handles = []
    for row, prompt in enumerate(PROMPTS):
        ids = local.encode_chat([{"role": "user", "content": prompt}])
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True,
                                structured=structured if row < constrained else None)
        handles.append(local.submit(f"b{row}", ids, params))
    while local.stats["running"] < ROWS:  # all rows admitted (prefilled) before the clock starts
        time.sleep(0.001)
    steps, started, cpu = local.stats["steps"], time.perf_counter(), time.process_time()
    for handle in handles:
        while not isinstance(event := handle.next_event(600), Finished):
            assert event is not None, "no event in time"
        assert event.finish_reason == "length", event
        handle.close()
    return time.perf_counter() - started, time.process_time() - cpu, local.stats["steps"] - steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.tokens < 2 * ROWS:  # rows admitted first decode while the others prefill: none may finish before
        parser.error(f"--tokens must be at least {2 * ROWS}")
    local = engine()
    run_batch(local, ROWS, args.tokens)  # warm up: the grammar compiler and its first compile
    cases = {"8 unconstrained": 0, "1 constrained + 7 unconstrained": 1, "8 constrained": ROWS}
    cpu_step: dict[str, list[float]] = {name: [] for name in cases}
    wall_step: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, constrained in cases.items():
            wall, cpu, steps = run_batch(local, constrained, args.tokens)
            cpu_step[name].append(cpu / max(steps, 1))
            wall_step[name].append(wall / max(steps, 1))
    local.stop()
    cpu_base = statistics.median(cpu_step["8 unconstrained"])
    wall_base = statistics.median(wall_step["8 unconstrained"])
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {ROWS} rows x {args.tokens} tokens, "
          f"median of {args.rounds} rounds")
    print("| Batch of 8 | CPU ms per step | ratio | wall ms per step | ratio |")
    print("|---|---|---|---|---|")
    for name in cases:
        cpu, wall = statistics.median(cpu_step[name]), statistics.median(wall_step[name])
        print(f"| {name} | {cpu * 1000:.1f} | {cpu / cpu_base:.3f}x | {wall * 1000:.1f} | {wall / wall_base:.3f}x |")


if __name__ == "__main__":
    main()
