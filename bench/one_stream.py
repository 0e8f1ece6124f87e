"""Our server against llama-server, the two taken in turn, several times, at one or more stream counts.

The sweep in ``bench.run`` times one round per server and stream count, minutes apart, and one round on
this machine can be off by a quarter. Here each run sends the same prompts to our server and then to
llama-server, both up at once, and the report gives each side's median and their ratio: at one stream the
decode speed (tokens after the first, over the time after the first), at several the aggregate tok/s of
all streams started at once (and the median of each round's TTFT p95).

The rounds send the same prompts again, as a client resending a conversation does, so both servers find them
cached and run only their last tokens. With ``--fresh`` every round's prompts are new (each starts with the
round's number), so each round also pays for running every prompt whole: what the time to first token is
when many new requests arrive at once.

Both servers get the same request: temperature 0.7 and, with ``--sampling defaults``, nothing else, so each
applies its own defaults to the rest (ours the model's recommended top_p, 0.9 for the embedded model;
llama-server top_k 40, top_p 0.95 and min_p 0.05, a cheaper draw over fewer tokens). ``--sampling nucleus``
sends both ours (top_p 0.9, no top-k or min-p cut), ``--sampling llama-server`` both llama-server's: then both
draw from the same distribution and do the same work.

With ``--baseline PATH`` a third server runs another checkout of this code (``git worktree add PATH COMMIT``),
taken in turn with the other two: a change's effect, measured in rounds minutes apart, is lost in this
machine's noise; measured in the same rounds, it is the ratio of the two.

Usage:  python -m bench.one_stream [--runs 7] [--tokens 128] [--quantization none|q8_0] [--streams 1,8,16]
                                   [--fresh] [--sampling defaults|nucleus|llama-server] [--baseline PATH]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from bench.prompts import PROMPTS
from bench.run import PEERS, SAMPLING, Server, decode_speed, load, ours, request_extra, stream_chat


def measure(server: Server, streams: int, tokens: int, extra: dict[str, Any], run: int,
            tag: str = "") -> tuple[float, float]:
    """(tok/s, TTFT p95 in seconds) of one round: one stream's decode speed, or ``streams`` streams' aggregate;
    ``tag`` starts every prompt."""
    if streams == 1:
        result = stream_chat(server.url, tag + PROMPTS[run % len(PROMPTS)], tokens, extra)
        return decode_speed(result), result.ttft or 0.0
    summary = load(server.url, streams, tokens, extra, tag=tag)
    return summary["aggregate_tps"], summary["ttft_p95"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--quantization", default="none", help="LLM_API_QUANTIZATION, for both servers' file")
    parser.add_argument("--streams", default="1", help="comma-separated stream counts, each measured --runs times")
    parser.add_argument("--fresh", action="store_true", help="new prompts every round (none is cached)")
    parser.add_argument("--sampling", default="defaults", choices=tuple(SAMPLING),
                        help="the sampling parameters both servers get besides the temperature")
    parser.add_argument("--baseline", default="", help="another checkout of this code (before a change, say), "
                                                       "taken in turn with the other two")
    args = parser.parse_args()
    counts = [int(count) for count in args.streams.split(",")]
    env = {"LLM_API_BACKEND": "llama_cpp", "LLM_API_QUANTIZATION": args.quantization,
           "LLM_API_MAX_BATCH": str(max(counts + [8]))}
    ours_extra = request_extra("ours", args.sampling)
    sides: list[tuple[str, Server, dict[str, Any]]] = []  # each server as soon as it is up
    try:
        sides.append(("llm_api", ours(env, name="llm_api-one"), ours_extra))
        if args.baseline:
            sides.append(("baseline", ours(env, root=Path(args.baseline), name="llm_api-baseline"), ours_extra))
        sides.append(("llama-server", PEERS["llama-server"](args.quantization),
                      request_extra("llama-server", args.sampling)))
        for _, server, extra in sides:  # a round each first: a fresh server's first batch is slower
            load(server.url, max(counts), args.tokens, extra)
        for streams in counts:
            tags = [f"({streams}.{run}) " if args.fresh else "" for run in range(args.runs)]
            report(streams, [name for name, _, _ in sides],
                   [[measure(server, streams, args.tokens, extra, run, tag) for _, server, extra in sides]
                    for run, tag in enumerate(tags)])
    finally:
        for _, server, _ in sides:
            server.stop()


def report(streams: int, names: list[str], rounds: list[list[tuple[float, float]]]) -> None:
    """Each side's median tok/s over the rounds (and its rounds) and median TTFT p95; each side's ratio to the
    last (llama-server), and ours to the baseline's where one ran."""
    medians = {}
    for side, name in enumerate(names):
        speeds = [taken[side][0] for taken in rounds]
        medians[name] = statistics.median(speeds)
        ttft = statistics.median(taken[side][1] for taken in rounds)
        print(f"{streams:>2} streams, {name}: median {medians[name]:.1f} tok/s "
              f"({', '.join(f'{v:.0f}' for v in speeds)}), TTFT p95 median {ttft:.3f} s", flush=True)
    for name in names[:-1]:
        print(f"{streams:>2} streams, {name} over {names[-1]}: {medians[name] / medians[names[-1]]:.3f}", flush=True)
    if "baseline" in medians:
        ratio = medians["llm_api"] / medians["baseline"]
        print(f"{streams:>2} streams, llm_api over baseline: {ratio:.3f}", flush=True)


if __name__ == "__main__":
    main()
