"""Prefix reuse: time to first token of a conversation's next turn after ~1,500 tokens of history, against
the same turn with no history, with the prefix cache on and off, side by side in ONE run.

Usage:  python -m bench.prefix_reuse [--history 1500] [--http] [--llama-server] [--runs 3] [--backend torch|llama_cpp]

In-process, a real greedy conversation is held on the embedded model until its history passes
``--history`` tokens; every turn reports how many of its prompt tokens came from the cache (the
previous answer is re-tokenized by the chat template, so this measures how much really matches).
Then ``--runs`` different final questions are timed after the history and alone. With ``--http`` the
same is done through the server (gunicorn, ``conversation_id`` turns), cache on and off. With
``--llama-server`` llama-server holds the same kind of conversation on the same GGUF file, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

import requests

QUESTIONS = [
    "Tell me about the history of Rome, in detail.",
    "What about its emperors? Describe several of them.",
    "How did the empire's economy work?",
    "Describe the Roman army and its legions.",
    "What was daily life like for ordinary Romans?",
    "How did the Western Roman Empire fall?",
    "What did the Romans leave to the modern world?",
    "Tell me more about Roman engineering and roads.",
    "And Roman law?",
    "Which Roman writers are still read today?",
    "Summarize everything so far.",
    "What else should I know?",
]
FINAL = ["Thank you. Which one book would you recommend about it?", "Now give me a short quiz question on this.",
         "In one sentence, what is the most important point?", "Can you say that again more simply?",
         "Which city should I visit to see Roman ruins?"]
GREEDY_TURN = 200  # tokens per history turn


# ---- in-process -------------------------------------------------------------------------------------

BACKEND = os.environ.get("LLM_API_BACKEND", "torch")  # --backend sets it, for the server too


def engine(prefix_tokens: int) -> Any:
    from bench.run import MODEL_CACHE
    from llm_api.local_model.engine import EngineOptions, LocalEngine
    from llm_api.local_model.loader import ModelSpec

    result = LocalEngine(ModelSpec("embedded", cache_dir=str(MODEL_CACHE), backend=BACKEND),
                         EngineOptions(prefix_cache_tokens=prefix_tokens))
    result.start()
    if not result.wait_ready(600):
        raise RuntimeError(result.load_error or "the engine did not load")
    return result


def timed(eng: Any, ids: list[int], max_tokens: int) -> tuple[float, str, Any]:
    """(seconds to the first text, the text, Finished)."""
    from llm_api.generation.types import SamplingParams, TextDelta

    started = time.perf_counter()
    handle = eng.submit("bench", ids, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    ttft, text = None, ""
    while True:
        event = handle.next_event(120)
        if isinstance(event, TextDelta):
            ttft = ttft if ttft is not None else time.perf_counter() - started
            text += event.text
        elif event is not None:
            handle.close()
            return (ttft if ttft is not None else time.perf_counter() - started), text, event


def in_process(history_tokens: int, runs: int) -> dict[str, Any]:
    on, off = engine(8192), engine(0)
    try:
        messages: list[dict[str, str]] = []
        turns = []
        for question in QUESTIONS:
            messages.append({"role": "user", "content": question})
            ids = on.encode_chat(messages)
            before = on.stats["prefix_tokens_reused"]
            ttft_on, text, _ = timed(on, ids, GREEDY_TURN)
            reused = on.stats["prefix_tokens_reused"] - before
            ttft_off = timed(off, ids, 1)[0]
            turns.append({"prompt_tokens": len(ids), "reused_tokens": reused,
                          "ttft_on": round(ttft_on, 3), "ttft_off": round(ttft_off, 3)})
            print(f"  turn {len(turns)}: {turns[-1]}", flush=True)
            messages.append({"role": "assistant", "content": text})
            if len(ids) + GREEDY_TURN >= history_tokens:
                break
        with_history, alone, cold = [], [], []
        for question in FINAL[:runs]:
            ids = on.encode_chat([*messages, {"role": "user", "content": question}])
            with_history.append(timed(on, ids, 1)[0])
            cold.append(timed(off, ids, 1)[0])
            alone.append(timed(on, on.encode_chat([{"role": "user", "content": question}]), 1)[0])
        history = len(on.encode_chat(messages))
    finally:
        on.stop()
        off.stop()
    turn_reuse = [t["reused_tokens"] / t["prompt_tokens"] for t in turns[1:]]
    out = summary(history, with_history, alone, cold)
    out.update(turns=turns, reused_share_per_turn=round(statistics.mean(turn_reuse), 3) if turn_reuse else None)
    print(f"  in-process: {json.dumps({k: v for k, v in out.items() if k != 'turns'})}", flush=True)
    return out


def summary(history: int, with_history: list[float], alone: list[float], cold: list[float]) -> dict[str, Any]:
    on, no_history, off = (statistics.median(x) for x in (with_history, alone, cold))
    return {"history_tokens": history, "ttft_after_history_cached_s": round(on, 3),
            "ttft_no_history_s": round(no_history, 3), "ttft_after_history_uncached_s": round(off, 3),
            "cached_over_no_history": round(on / no_history, 2), "uncached_over_no_history": round(off / no_history, 2)}


# ---- over HTTP --------------------------------------------------------------------------------------

def first_text_seconds(url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    with requests.post(f"{url}/chat/new/message", json={**body, "stream": True}, stream=True, timeout=600) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            if line.startswith(b"data: ") and b'"text"' in line:
                return time.perf_counter() - started
    raise RuntimeError("the stream ended without text")


def over_http(history_tokens: int, runs: int) -> dict[str, Any]:
    from bench.run import ours

    cached = ours()
    try:
        conversation, history, turns = None, [], []
        for question in QUESTIONS:
            before = requests.get(f"{cached.url}/readyz", timeout=10).json()["stats"]["prefix_tokens_reused"]
            body = {"prompt": question, "conversation_id": conversation, "temperature": 0, "max_tokens": GREEDY_TURN}
            answer = requests.post(f"{cached.url}/chat/new/message", timeout=600, json=body).json()
            conversation, history = answer["conversation_id"], answer["history"]
            reused = requests.get(f"{cached.url}/readyz", timeout=10).json()["stats"]["prefix_tokens_reused"] - before
            turns.append({"prompt_tokens": answer["usage"]["prompt_tokens"], "reused_tokens": reused})
            print(f"  turn {len(turns)}: {turns[-1]}", flush=True)
            if answer["usage"]["total_tokens"] >= history_tokens:
                break
        with_history, alone = [], []
        for question in FINAL[:runs]:
            body = {"prompt": question, "temperature": 0, "max_tokens": 1}
            with_history.append(first_text_seconds(cached.url, {**body, "history": history}))
            alone.append(first_text_seconds(cached.url, body))
    finally:
        cached.stop()
    uncached = ours({"LLM_API_PREFIX_CACHE_TOKENS": "0"})
    try:
        cold = [first_text_seconds(uncached.url, {"prompt": q, "temperature": 0, "max_tokens": 1, "history": history})
                for q in FINAL[:runs]]
    finally:
        uncached.stop()
    out = summary(turns[-1]["prompt_tokens"], with_history, alone, cold)
    reuse = [t["reused_tokens"] / t["prompt_tokens"] for t in turns[1:]]
    out.update(turns=turns, reused_share_per_turn=round(statistics.mean(reuse), 3) if reuse else None)
    print(f"  over HTTP: {json.dumps({k: v for k, v in out.items() if k != 'turns'})}", flush=True)
    return out


# ---- llama-server, the same conversation -------------------------------------------------------------

def first_content_seconds(url: str, body: dict[str, Any]) -> float:
    """Seconds to the first chunk of answer text of a streamed OpenAI chat completion (``body`` gives its
    messages and options)."""
    from bench.run import stream_chat

    result = stream_chat(url, "", body["max_tokens"], body)
    if result.ttft is None:
        raise RuntimeError("the stream ended without text")
    return result.ttft


def over_llama_server(history_tokens: int, runs: int) -> dict[str, Any]:
    """The same measurement on llama-server (the same GGUF file and kernels), OpenAI messages resent with one
    more turn: its slots keep each prompt's KV cells (``cache_prompt``) as ours do. Four slots of 2,048 tokens."""
    from bench.run import LLAMA_SERVER, Server, gguf_path

    server = Server("llama-server-prefix", [str(LLAMA_SERVER), "-m", gguf_path(), "-np", "4", "-c", "8192",
                                            "--host", "127.0.0.1", "--port", "{port}", "-t", str(os.cpu_count())],
                    {}, ready_path="/health")
    try:
        url, messages, total = server.url, [], 0
        for question in QUESTIONS:
            messages.append({"role": "user", "content": question})
            answer = requests.post(f"{url}/v1/chat/completions", timeout=600, json={
                "messages": messages, "temperature": 0, "max_tokens": GREEDY_TURN}).json()
            messages.append({"role": "assistant", "content": answer["choices"][0]["message"]["content"]})
            total = answer["usage"]["total_tokens"]
            if total >= history_tokens:
                break
        with_history, alone, cold = [], [], []
        for question in FINAL[:runs]:
            turn, asked = {"temperature": 0, "max_tokens": 1}, {"role": "user", "content": question}
            with_history.append(first_content_seconds(url, {**turn, "messages": [*messages, asked]}))
            alone.append(first_content_seconds(url, {**turn, "messages": [asked]}))
            cold.append(first_content_seconds(url, {**turn, "cache_prompt": False, "messages": [*messages, asked]}))
    finally:
        server.stop()
    out = summary(total, with_history, alone, cold)
    print(f"  llama-server: {json.dumps(out)}", flush=True)
    return out


def main() -> None:
    global BACKEND
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=1500, help="history tokens before the timed turn")
    parser.add_argument("--runs", type=int, default=3, help="final questions timed (median)")
    parser.add_argument("--http", action="store_true", help="also through the server")
    parser.add_argument("--llama-server", action="store_true", help="also llama-server on the same file")
    parser.add_argument("--backend", default=BACKEND, choices=("torch", "llama_cpp"), help="LLM_API_BACKEND")
    args = parser.parse_args()
    BACKEND = os.environ["LLM_API_BACKEND"] = args.backend  # the servers inherit the environment
    from bench.run import RESULTS, machine

    report: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                              "command": "python -m bench.prefix_reuse " + " ".join(sys.argv[1:])}
    print(f"prefix reuse, {report['date']}", flush=True)
    report["in_process"] = in_process(args.history, args.runs)
    if args.http:
        report["http"] = over_http(args.history, args.runs)
    if args.llama_server:
        report["llama_server"] = over_llama_server(args.history, args.runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"prefix-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
