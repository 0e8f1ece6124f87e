"""The model threads' priority: two of our servers, ``LLM_API_ENGINE_NICE=0`` and the default 10, both up at
once and taken in turn, each round one stream (decode tok/s) then 8 streams (aggregate tok/s, TTFT p95 and
``/healthz`` p99, probed every 50 ms from a process of its own). Medians of the rounds.

Usage:  python -m bench.engine_nice [--backend llama_cpp|torch] [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
from datetime import UTC, datetime

from bench.prompts import PROMPTS
from bench.run import EXACT_LENGTH, decode_speed, load, ours, stream_chat

SETTINGS = ("0", "10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="llama_cpp", choices=("llama_cpp", "torch"))
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    extra = EXACT_LENGTH["ours"]
    servers = {nice: ours({"LLM_API_BACKEND": args.backend, "LLM_API_MAX_BATCH": "16", "LLM_API_ENGINE_NICE": nice},
                          name=f"llm_api-nice-{nice}") for nice in SETTINGS}
    results: dict[str, dict[str, list[float]]] = {nice: {"1": [], "8": [], "ttft": [], "healthz": []}
                                                  for nice in SETTINGS}
    try:
        for server in servers.values():
            load(server.url, 8, 128, extra)  # a fresh server's first batch is slower
        for run in range(args.rounds):
            for nice, server in servers.items():
                alone = stream_chat(server.url, PROMPTS[run % len(PROMPTS)], 128, extra)
                results[nice]["1"].append(decode_speed(alone))
                summary = load(server.url, 8, 128, extra, probe=True)
                for key, field in (("8", "aggregate_tps"), ("ttft", "ttft_p95"), ("healthz", "healthz_p99_ms")):
                    results[nice][key].append(summary[field])
    finally:
        for server in servers.values():
            server.stop()
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, LLM_API_BACKEND={args.backend}, medians of {args.rounds} rounds")
    print("| LLM_API_ENGINE_NICE | 1 stream tok/s | 8 streams tok/s | TTFT p95 at 8 | /healthz p99 at 8 |")
    print("|---|---|---|---|---|")
    for nice in SETTINGS:
        medians = {key: statistics.median(values) for key, values in results[nice].items()}
        print(f"| {nice} | {medians['1']:.1f} | {medians['8']:.1f} | {medians['ttft']:.3f} s | "
              f"{medians['healthz']:.1f} ms |")


if __name__ == "__main__":
    main()
