"""Embeddings per second for 1, 8 and 64 inputs per request: our server over HTTP (gunicorn, the embedded
all-MiniLM-L6-v2) against sentence-transformers' own ``encode`` in-process, side by side in ONE run.

Usage:  python -m bench.embeddings [--sizes 1,8,64] [--inputs 512] [--clients 1,4] [--threads 1]

Each size embeds ``--inputs`` different passages (from bench/prompts.py, cycled with a number so no two are
equal), in requests of that many inputs. In-process, ``SentenceTransformer.encode`` gets the same batches
one after another. Over HTTP, ``--clients`` threads send the requests at once (1: one request at a time; more:
requests overlap, and the server embeds the waiting ones together). The ratio HTTP / in-process is printed
per size; it is the figure to compare between runs, since absolute speeds move with the machine's load.
Both sides use ``--threads`` torch threads (the server through LLM_API_TORCH_THREADS): on a machine whose
cores are busy with other work, two threads that wait for each other at every operation run many times
slower than one, so only equal settings compare.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import requests

from bench.prompts import PROMPTS
from bench.run import RESULTS, ours

MODEL = "all-MiniLM-L6-v2"


def texts(count: int) -> list[str]:
    return [f"{PROMPTS[i % len(PROMPTS)]} ({i})" for i in range(count)]


def batches(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def in_process(sizes: list[int], inputs: int, threads: int) -> dict[int, float]:
    import torch
    from sentence_transformers import SentenceTransformer

    from llm_api.local_model.embedding_spec import embedded_embedding_folder

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(embedded_embedding_folder()), device="cpu")
    model.encode(texts(8))  # warm-up
    rates = {}
    for size in sizes:
        work = batches(texts(inputs), size)
        started = time.perf_counter()
        for batch in work:
            model.encode(batch, batch_size=32)
        rates[size] = inputs / (time.perf_counter() - started)
        print(f"  in-process, {size:>2} per call: {rates[size]:8.1f} embeddings/s", flush=True)
    return rates


def over_http(url: str, sizes: list[int], inputs: int, clients: int) -> dict[int, float]:
    session = requests.Session()

    def post(batch: list[str]) -> None:
        response = session.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": batch}, timeout=600)
        response.raise_for_status()
        assert len(response.json()["data"]) == len(batch)

    post(texts(8))  # warm-up
    rates = {}
    for size in sizes:
        work = batches(texts(inputs), size)
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(post, work))
        rates[size] = inputs / (time.perf_counter() - started)
        print(f"  HTTP, {clients} client(s), {size:>2} per request: {rates[size]:8.1f} embeddings/s", flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,8,64")
    parser.add_argument("--inputs", type=int, default=512)
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    clients = [int(c) for c in args.clients.split(",")]
    print(f"embeddings of {MODEL}, {args.inputs} inputs per size, {args.threads} torch thread(s)", flush=True)
    server = ours({"LLM_API_EMBEDDING_MODELS": f"{MODEL}=embedded", "LLM_API_TORCH_THREADS": str(args.threads)},
                  name="llm_api-embeddings")
    try:
        http = {c: over_http(server.url, sizes, args.inputs, c) for c in clients}
    finally:
        server.stop()
    local = in_process(sizes, args.inputs, args.threads)
    print("HTTP / in-process:", flush=True)
    for size in sizes:
        ratios = ", ".join(f"{c} client(s) {http[c][size] / local[size]:.2f}" for c in clients)
        print(f"  {size:>2} per request: {ratios}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "inputs": args.inputs, "threads": args.threads,
              "cpus": os.cpu_count(), "in_process": local, "http": {str(c): r for c, r in http.items()}}
    (RESULTS / f"embeddings-{record['when']}.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
