"""Staggered traffic on the llama.cpp backend, in-process: requests of different lengths arriving at random
times, with the batch moving rows together as others finish, and with those moves turned off.

Requests that arrive and finish at different times leave busy slots scattered, and llama.cpp computes each
group of adjacent busy slots as another pass over the weights. This measures what moving the rows together
(``SlotBatch._compact``) gives back. Rounds alternate between the two, on the same seeded plan.

Usage:  python -m bench.staggered [--requests 32] [--rounds 4] [--seconds 4] [--quantization none]
"""

from __future__ import annotations

import argparse
import random
import time

import gevent

from bench.prompts import PROMPTS
from bench.run import MODEL_CACHE
from llm_api.generation.types import Finished, SamplingParams
from llm_api.local_model import slot_batch
from llm_api.local_model.engine import EngineOptions, LocalEngine
from llm_api.local_model.spec import ModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0, help="arrivals spread over this long")
    parser.add_argument("--quantization", default="none")
    args = parser.parse_args()

    moving = {"on": True, "moves": 0}
    compacting_move = slot_batch.SlotBatch._compacting_move

    def switchable(batch: slot_batch.SlotBatch) -> tuple[int, int] | None:
        move = compacting_move(batch) if moving["on"] else None
        moving["moves"] += move is not None
        return move

    slot_batch.SlotBatch._compacting_move = switchable  # type: ignore[method-assign]
    spec = ModelSpec("embedded", cache_dir=str(MODEL_CACHE), backend="llama_cpp", quantization=args.quantization)
    engine = LocalEngine(spec, EngineOptions(max_batch=16, max_queue=4 * args.requests))
    engine.start()
    engine.wait_ready(600)

    def one(index: int, delay: float, tokens: int) -> int:
        gevent.sleep(delay)
        messages = [{"role": "user", "content": f"{PROMPTS[index % len(PROMPTS)]} ({index})"}]
        handle = engine.submit("bench", engine.encode_chat(messages),
                               SamplingParams(max_tokens=tokens, temperature=0.7, ignore_eos=True))
        while not isinstance(handle.next_event(120), Finished):
            pass
        return tokens

    try:
        for round_ in range(args.rounds):
            moving.update(on=round_ % 2 == 0, moves=0)
            plan = random.Random(7)
            requests = [(i, plan.uniform(0, args.seconds), plan.randint(24, 160)) for i in range(args.requests)]
            started = time.perf_counter()
            jobs = [gevent.spawn(one, *request) for request in requests]
            gevent.joinall(jobs, raise_error=True)
            rate = sum(job.value for job in jobs) / (time.perf_counter() - started)
            label = "rows moved together" if moving["on"] else "no moves"
            print(f"round {round_ + 1}, {label}: {rate:.1f} tok/s ({moving['moves']} moves)", flush=True)
    finally:
        engine.stop()


if __name__ == "__main__":
    main()
