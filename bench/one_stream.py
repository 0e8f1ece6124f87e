"""One stream on our server against llama-server, the two taken in turn, several times.

The sweep in ``bench.run`` times one request per server at one stream, minutes apart, and one request on
this machine can be off by a quarter. Here each run sends the same prompt to our server and then to
llama-server, both up at once, and the report gives each side's median decode speed (tokens after the
first, over the time after the first) and their ratio.

Usage:  python -m bench.one_stream [--runs 7] [--tokens 128] [--quantization none|q8_0]
"""

from __future__ import annotations

import argparse
import statistics

from bench.prompts import PROMPTS
from bench.run import EXACT_LENGTH, PEERS, decode_speed, ours, stream_chat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--quantization", default="none", help="LLM_API_QUANTIZATION, for both servers' file")
    args = parser.parse_args()
    mine = ours({"LLM_API_BACKEND": "llama_cpp", "LLM_API_QUANTIZATION": args.quantization}, name="llm_api-one")
    try:
        peer = PEERS["llama-server"](args.quantization)
        try:
            speeds: dict[str, list[float]] = {"llm_api": [], "llama-server": []}
            for run in range(args.runs):
                prompt = PROMPTS[run % len(PROMPTS)]
                for name, server, extra in (("llm_api", mine, EXACT_LENGTH["ours"]),
                                            ("llama-server", peer, EXACT_LENGTH["llama-server"])):
                    speeds[name].append(decode_speed(stream_chat(server.url, prompt, args.tokens, extra)))
        finally:
            peer.stop()
    finally:
        mine.stop()
    medians = {name: statistics.median(values) for name, values in speeds.items()}
    for name, values in speeds.items():
        print(f"{name}: median {medians[name]:.1f} tok/s ({', '.join(f'{v:.0f}' for v in values)})")
    print(f"llm_api over llama-server: {medians['llm_api'] / medians['llama-server']:.3f}")


if __name__ == "__main__":
    main()
