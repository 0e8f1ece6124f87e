"""The benchmark suite: the real server under gunicorn, the same engine in-process, and the peers,
side by side in ONE run so that ratios are fair on a noisy machine.

Usage:  python -m bench.run [--tokens 128] [--peers ours,lesson,naive,llama-server,llama-server:q8_0,llama-cpp-python]
                            [--backends torch,llama_cpp,llama_cpp:q8_0]
                            [--baseline PATH]   (the same sweep on another checkout of this code, e.g. before a change)
                            [--sampling defaults|nucleus|llama-server]   (one sampling for us and llama.cpp's servers)
Prints every figure and writes them all to bench/results/<timestamp>.json (and latest.json).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import requests

from bench.prompts import PROMPTS

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LLM_API_BENCH_CACHE", ROOT / ".cache" / "bench"))
MODEL_CACHE = Path(os.environ.get("LLM_API_CACHE_DIR", ROOT / ".cache" / "test-models"))
RESULTS = ROOT / "bench" / "results"
LLAMA_SERVER = ROOT / ".cache" / "llama.cpp-0.3.36" / "llama-server"  # scripts/build_llama_cpp.sh: this CPU's build
LLAMA_CPP_PYTHON = CACHE / "llama-cpp-python-venv" / "bin" / "python"


# ---- measuring one stream --------------------------------------------------------------------------

@dataclass
class StreamResult:
    ttft: float | None
    seconds: float
    tokens: int
    cut: bool  # ended without [DONE], or with fewer tokens than asked for


def stream_chat(url: str, prompt: str, tokens: int, extra: dict[str, Any], count_chunks: bool = False) -> StreamResult:
    """One streamed OpenAI chat completion; token count from usage when the server reports it."""
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0.7, "stream": True, **extra}
    started = time.perf_counter()
    ttft, pieces, usage, done = None, 0, None, False
    try:
        with requests.post(f"{url}/v1/chat/completions", json=body, stream=True, timeout=600) as response:
            for line in response.iter_lines():
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        pieces += 1
                        ttft = ttft if ttft is not None else time.perf_counter() - started
    except requests.RequestException:
        pass
    if usage:
        counted = usage["completion_tokens"]
    elif count_chunks:  # one chunk per token, and a stream the server cuts short may still end with [DONE]
        counted = pieces
    else:  # chunks are words (TextIteratorStreamer); with ignore_eos, [DONE] means max_tokens were generated
        counted = tokens if done else pieces
    # Counting chunks can miss a token whose text is empty (half a character): a cut stream stops far short.
    shortfall = counted < tokens * CHUNK_COUNT_SLACK if count_chunks and not usage else counted < tokens
    return StreamResult(ttft, time.perf_counter() - started, counted, cut=not done or shortfall)


def decode_speed(result: StreamResult) -> float:
    """Tokens a second after the first token: the tokens after it, over the time after it."""
    return (result.tokens - 1) / (result.seconds - (result.ttft or 0.0))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class HealthProbe:
    """Times GET /healthz every 50 ms while a load runs, from a process of its own: in this process the probe
    would wait for the GIL behind the load's client threads, and time them as much as the server."""

    def __init__(self, url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.samples: list[float] = []
        self._stop, self._results = context.Event(), context.Queue()
        self._process = context.Process(target=_probe_health, args=(url, self._stop, self._results), daemon=True)

    def __enter__(self) -> HealthProbe:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.samples = self._results.get(timeout=60)
        self._process.join()


def _probe_health(url: str, stop: Any, results: Any) -> None:
    session, samples = requests.Session(), []
    session.get(f"{url}/healthz", timeout=10)  # the connection is open before the first timed request
    while not stop.is_set():
        started = time.perf_counter()
        session.get(f"{url}/healthz", timeout=10)
        samples.append(time.perf_counter() - started)
        stop.wait(0.05)
    results.put(samples)


def load(url: str, streams: int, tokens: int, extra: dict[str, Any], probe: bool = False,
         count_chunks: bool = False, tag: str = "") -> dict[str, Any]:
    """``streams`` concurrent streams (different prompts), each asking for ``tokens`` tokens; a ``tag`` starts
    every prompt, so that a new tag makes prompts no server has seen (each is then run whole)."""
    prompts = [tag + PROMPTS[i % len(PROMPTS)] for i in range(streams)]
    probe_ctx = HealthProbe(url) if probe else None
    started = time.perf_counter()
    if probe_ctx:
        probe_ctx.__enter__()
    with ThreadPoolExecutor(streams) as pool:
        results = list(pool.map(lambda p: stream_chat(url, p, tokens, extra, count_chunks), prompts))
    wall = time.perf_counter() - started
    if probe_ctx:
        probe_ctx.__exit__()
    ttfts = [r.ttft for r in results if r.ttft is not None]
    total = sum(r.tokens for r in results)
    summary = {
        "streams": streams, "aggregate_tps": round(total / wall, 1),
        "per_stream_tps": round(statistics.mean(r.tokens / r.seconds for r in results), 2),
        "ttft_p50": round(percentile(ttfts, 0.5) or 0, 3), "ttft_p95": round(percentile(ttfts, 0.95) or 0, 3),
        "cut": sum(r.cut for r in results), "tokens": total,
    }
    if probe_ctx:
        ms = [s * 1000 for s in probe_ctx.samples]
        summary.update(healthz_p50_ms=round(percentile(ms, 0.5), 2), healthz_p99_ms=round(percentile(ms, 0.99), 2))
    print(f"    {streams:>2} streams: {summary}", flush=True)
    return summary


# ---- servers ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, name: str, command: list[str], env: dict[str, str], ready_path: str = "/healthz",
                 cwd: Path = ROOT) -> None:
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [part.replace("{port}", str(self.port)) for part in command]
        self.log = open(CACHE / f"{name}.log", "w")
        self.process = subprocess.Popen(command, cwd=cwd, env={**os.environ, **env}, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        started = time.monotonic()
        deadline = started + 1800  # LLM_API_QUANTIZATION=int8 compiles for minutes at its first start
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited: see {self.log.name}")
            try:
                if requests.get(self.url + ready_path, timeout=2).status_code == 200:
                    self.start_seconds = round(time.monotonic() - started, 1)  # launch to ready
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{name} not ready")

    def rss_mb(self) -> float:
        """Resident memory of the serving process(es): the children of a gunicorn master, else itself."""
        process = psutil.Process(self.process.pid)
        children = process.children(recursive=True)
        return round(sum(p.memory_info().rss for p in (children or [process])) / 2**20, 1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def ours(env: dict[str, str] | None = None, root: Path = ROOT, name: str = "llm_api") -> Server:
    """Our server on a fresh SQLite database, so that every run starts from the same empty store; ``root``:
    the checkout whose code it runs."""
    CACHE.mkdir(parents=True, exist_ok=True)  # the other bench modules start it without bench.run's main
    data_dir = tempfile.mkdtemp(prefix="llm-api-bench-", dir=CACHE)
    return Server(name, [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", "127.0.0.1:{port}",
                              "--no-control-socket", "wsgi:app"],
                  {"LLM_API_CACHE_DIR": str(MODEL_CACHE), "LLM_API_DATA_DIR": data_dir, "LLM_API_LOG_LEVEL": "warning",
                   **(env or {})},
                  ready_path="/readyz", cwd=root)


def llama_cpp_built() -> bool:
    from llm_api.local_model.spec import check_llama_cpp_installed

    try:
        check_llama_cpp_installed()
    except Exception:
        return False
    return True


def converted_model_dir() -> str:
    return str(next(p for p in MODEL_CACHE.iterdir() if (p / "config.json").is_file() and p.name.startswith("SmolLM2")))


def gguf_path(quantization: str = "none") -> str:
    """The embedded GGUF file, or (LLM_API_QUANTIZATION) its re-quantized copy that our server runs too."""
    from llm_api.local_model.loader import embedded_gguf_path, requantized_gguf

    gguf = embedded_gguf_path()
    if quantization == "none":
        return str(gguf)
    return str(requantized_gguf(gguf, quantization, MODEL_CACHE, os.cpu_count() or 1))


def variant(name: str) -> tuple[str, str]:
    """``llama_cpp:q8_0`` or ``llama-server:q8_0``: (the backend or peer, the LLM_API_QUANTIZATION it runs)."""
    base, _, quantization = name.partition(":")
    return base, quantization or "none"


def _baseline(name: str, command: list[str]) -> Server:
    return Server(name, command, {"LLM_API_BENCH_MODEL_DIR": converted_model_dir()})


def _llama_cpp_python(name: str, *flags: str) -> Server:
    command = [str(LLAMA_CPP_PYTHON), "-m", "llama_cpp.server", "--model", gguf_path(), "--port", "{port}",
               "--n_ctx", "4096", *flags]
    return Server(name, command, {}, ready_path="/v1/models")


PEERS = {
    "lesson": lambda: _baseline("lesson-fastapi", [sys.executable, "-m", "uvicorn", "bench.peers.lesson_fastapi:app",
                                                   "--port", "{port}", "--log-level", "warning"]),
    "naive": lambda: _baseline("naive-flask", [sys.executable, "-m", "gunicorn", "-c",
                                               "bench/peers/gunicorn_naive.conf.py", "-b", "127.0.0.1:{port}",
                                               "--no-control-socket", "bench.peers.naive_flask:app"]),
    "llama-server": lambda quantization="none": Server(
        "llama-server", [str(LLAMA_SERVER), "-m", gguf_path(quantization), "-np", "8", "-c", "8192", "--host",
                         "127.0.0.1", "--port", "{port}", "-t", str(os.cpu_count())], {}, ready_path="/health"),
    "llama-cpp-python": lambda: _llama_cpp_python("llama-cpp-python"),
    "llama-cpp-python-no-interrupt": lambda: _llama_cpp_python("llama-cpp-python-no-interrupt",
                                                               "--interrupt_requests", "False"),
}
SETUP = {"llama-server": (LLAMA_SERVER, "make bench-peers"),
         "llama-cpp-python": (LLAMA_CPP_PYTHON, "bench/peers/setup_llama_cpp_python.sh"),
         "llama-cpp-python-no-interrupt": (LLAMA_CPP_PYTHON, "bench/peers/setup_llama_cpp_python.sh")}
# How each peer is told to generate exactly max_tokens (past the end-of-turn token, id 2).
_NO_EOS = {"logit_bias": {"2": -100}}
OUR_MODEL = "SmolLM2-135M-Instruct"  # the embedded model's name: our server answers 404 to any other `model`
EXACT_LENGTH = {"ours": {"model": OUR_MODEL, "ignore_eos": True, "stream_options": {"include_usage": True}},
                "lesson": {"ignore_eos": True}, "naive": {"ignore_eos": True}, "llama-server": {"ignore_eos": True},
                "llama-cpp-python": _NO_EOS, "llama-cpp-python-no-interrupt": _NO_EOS}


# What --sampling adds to every request besides the temperature (0.7): nothing, so that each server fills in
# its own defaults (ours: the model's recommended top_p, 0.9 for the embedded model; llama.cpp's servers: top_k
# 40, top_p 0.95, min_p 0.05), or one server's set sent to every server that takes these extensions, so that
# all draw from the same distribution and do the same work.
SAMPLING: dict[str, dict[str, Any]] = {
    "defaults": {},
    "nucleus": {"top_p": 0.9, "top_k": 0, "min_p": 0.0},
    "llama-server": {"top_p": 0.95, "top_k": 40, "min_p": 0.05},
}
TAKES_SAMPLING = {"ours", "llama-server", "llama-cpp-python", "llama-cpp-python-no-interrupt"}


def request_extra(kind: str, sampling: str = "defaults") -> dict[str, Any]:
    """What every request to a server of ``kind`` adds: exactly max_tokens, and the ``--sampling`` set."""
    return {**EXACT_LENGTH[kind], **(SAMPLING[sampling] if kind in TAKES_SAMPLING else {})}


# Peers that send one chunk per token and report no usage: their tokens are counted chunk by chunk.
COUNTED_BY_CHUNKS = {"llama-cpp-python", "llama-cpp-python-no-interrupt"}
CHUNK_COUNT_SLACK = 0.95


# ---- the sections ----------------------------------------------------------------------------------

def single_stream(server: Server, tokens: int, runs: int, backend: str = "torch",
                  quantization: str = "none", max_batch: int = 8, sampling: str = "defaults") -> dict[str, Any]:
    """Over HTTP vs the same engine code in-process (this process), same prompt, length and sampling."""
    import gevent  # noqa: F401 - the engine's hand-off waits on the gevent hub

    from llm_api.generation.types import SamplingParams, TextDelta
    from llm_api.local_model.engine import EngineOptions, LocalEngine
    from llm_api.local_model.loader import ModelSpec

    prompt = PROMPTS[0]
    spec = ModelSpec("embedded", cache_dir=str(MODEL_CACHE), backend=backend, quantization=quantization)
    engine = LocalEngine(spec, EngineOptions(max_batch=max_batch))
    engine.start()
    engine.wait_ready(600)

    # what the server makes of the request: the model's recommended top_p where the request names none
    knobs = {"top_p": engine.sampling_defaults().top_p, **SAMPLING[sampling]}
    params = SamplingParams(max_tokens=tokens, temperature=0.7, ignore_eos=True, **knobs)

    def in_process() -> StreamResult:
        handle = engine.submit("b", engine.encode_chat([{"role": "user", "content": prompt}]), params)
        started, ttft = time.perf_counter(), None
        while True:
            event = handle.next_event(60)
            if isinstance(event, TextDelta) and ttft is None:
                ttft = time.perf_counter() - started
            elif event is not None and not isinstance(event, TextDelta):
                return StreamResult(ttft, time.perf_counter() - started, event.usage.completion_tokens, False)

    http, local = [], []
    for _ in range(runs):  # taken in turn, so that the machine's drift during the runs falls on both alike
        http.append(stream_chat(server.url, prompt, tokens, request_extra("ours", sampling)))
        local.append(in_process())
    engine.stop()

    def decode_tps(results: list[StreamResult]) -> float:
        return statistics.median(decode_speed(r) for r in results)

    out = {
        "http_ttft_p50": round(percentile([r.ttft for r in http], 0.5), 3),
        "http_ttft_p95": round(percentile([r.ttft for r in http], 0.95), 3),
        "inproc_ttft_p50": round(percentile([r.ttft for r in local], 0.5), 3),
        "inproc_ttft_p95": round(percentile([r.ttft for r in local], 0.95), 3),
        "http_decode_tps": round(decode_tps(http), 2), "inproc_decode_tps": round(decode_tps(local), 2),
    }
    out["http_over_inproc_tps"] = round(out["http_decode_tps"] / out["inproc_decode_tps"], 3)
    out["http_minus_inproc_ttft_ms"] = round((out["http_ttft_p50"] - out["inproc_ttft_p50"]) * 1000, 1)
    print(f"  single stream: {out}", flush=True)
    return out


def rss_after_requests(server: Server, counts: tuple[int, ...], concurrency: int = 16) -> dict[str, float]:
    """RSS after N short requests (KV caches of finished sequences must be freed)."""
    out, done = {}, 0

    def one(i: int) -> None:
        requests.post(f"{server.url}/v1/chat/completions", timeout=600, json={
            "model": OUR_MODEL, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": 8, "ignore_eos": True})

    for count in counts:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(done, count)))
        done = count
        out[str(count)] = server.rss_mb()
        print(f"  RSS after {count} requests: {out[str(count)]} MiB", flush=True)
    return out


def idle_connections(count: int) -> dict[str, Any]:
    """``count`` SSE streams held open by one worker while they wait in the queue (heartbeats flowing)."""
    server = ours({"LLM_API_MAX_BATCH": "1", "LLM_API_MAX_QUEUE": str(count + 10), "LLM_API_HEARTBEAT_SECONDS": "2"})
    try:
        blocker = threading.Thread(target=stream_chat, args=(server.url, PROMPTS[0], 4000, {"ignore_eos": True}),
                                   daemon=True)
        blocker.start()
        time.sleep(1.0)
        rss_before = server.rss_mb()
        body = json.dumps({"prompt": "hello", "stream": True, "max_tokens": 8}).encode()
        head = (f"POST /chat/new/message HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        selector, sockets, states = selectors.DefaultSelector(), [], []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(head + body)
            sock.setblocking(False)
            states.append({"pings": 0, "closed": False})
            selector.register(sock, selectors.EVENT_READ, states[-1])
            sockets.append(sock)
        with HealthProbe(server.url) as probe:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.5):
                    data = key.fileobj.recv(65536)
                    if not data:
                        key.data["closed"] = True
                        selector.unregister(key.fileobj)
                    else:
                        key.data["pings"] += data.count(b": ping")
        result = {
            "connections": count, "rss_before_mb": rss_before, "rss_with_connections_mb": server.rss_mb(),
            "dropped": sum(s["closed"] for s in states), "with_heartbeats": sum(s["pings"] > 0 for s in states),
            "healthz_p50_ms": round(percentile([s * 1000 for s in probe.samples], 0.5), 2),
            "healthz_p99_ms": round(percentile([s * 1000 for s in probe.samples], 0.99), 2),
        }
        for sock in sockets:
            sock.close()
        print(f"  idle connections: {result}", flush=True)
        return result
    finally:
        server.stop()


def machine() -> dict[str, Any]:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_model": _cpu_model()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--levels", default="1,2,4,8,16")
    parser.add_argument("--peer-levels", default="1,4,8,16")
    parser.add_argument("--peers", default="lesson,naive,llama-server,llama-server:q8_0,llama-cpp-python,"
                                            "llama-cpp-python-no-interrupt",
                        help="`llama-server:QUANTIZATION` runs llama-server on the file LLM_API_QUANTIZATION makes")
    parser.add_argument("--backends", default="torch,llama_cpp,llama_cpp:q8_0",
                        help="LLM_API_BACKEND values to sweep, `:QUANTIZATION` after llama_cpp for an "
                             "LLM_API_QUANTIZATION; the first is the report's main sweep (llama_cpp is skipped when "
                             "it is not built: `make llama-cpp`)")
    parser.add_argument("--runs", type=int, default=5, help="single-stream repetitions")
    parser.add_argument("--idle", type=int, default=1000, help="idle SSE connections (0 to skip)")
    parser.add_argument("--rss-requests", type=int, default=1000, help="requests for the RSS check (0 to skip)")
    parser.add_argument("--sampling", default="defaults", choices=tuple(SAMPLING),
                        help="sampling parameters sent besides the temperature, to us and the llama.cpp peers")
    parser.add_argument("--baseline", default="", help="a checkout of this code to sweep too, in the same run "
                        "(e.g. `git worktree add /tmp/before HEAD~1`); the report gives ours over it per level")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    peer_levels = [int(x) for x in args.peer_levels.split(",")]
    report: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                              "command": "python -m bench.run " + " ".join(sys.argv[1:]), "tokens": args.tokens}
    print(f"llm_api benchmark, {report['date']}, {report['machine']}", flush=True)

    names = [b for b in args.backends.split(",") if b]
    report["backends"] = {}
    for index, name in enumerate(names):
        backend, quantization = variant(name)
        if backend == "llama_cpp" and not llama_cpp_built():
            print(f"ours on {name}: not built, skipped (run make llama-cpp)", flush=True)
            report["backends"][name] = {"skipped": "not built: run make llama-cpp"}
            continue
        server = ours({"LLM_API_MAX_BATCH": str(max(levels)), "LLM_API_MAX_QUEUE": "2000",
                       "LLM_API_BACKEND": backend, "LLM_API_QUANTIZATION": quantization})
        try:
            print(f"ours (gunicorn gevent, embedded model, LLM_API_BACKEND={backend}, "
                  f"LLM_API_QUANTIZATION={quantization}):", flush=True)
            result = {"start_seconds": server.start_seconds,
                      "single_stream": single_stream(server, args.tokens, args.runs, backend, quantization,
                                                     max(levels), args.sampling),
                      "sweep": [load(server.url, n, args.tokens, request_extra("ours", args.sampling), probe=True)
                                for n in levels]}
            if args.rss_requests and index == 0:
                report["rss_mb"] = rss_after_requests(server, (10, args.rss_requests))
        finally:
            server.stop()
        report["backends"][name] = result
        if index == 0:
            report.update(result)
    if args.baseline:
        print(f"baseline ({args.baseline}):", flush=True)
        base = ours({"LLM_API_MAX_BATCH": str(max(levels)), "LLM_API_MAX_QUEUE": "2000"}, root=Path(args.baseline),
                    name="llm_api-baseline")
        try:
            rows = [load(base.url, n, args.tokens, request_extra("ours", args.sampling), probe=True) for n in levels]
        finally:
            base.stop()
        for row, mine in zip(rows, report["sweep"], strict=True):
            row["ours_over_baseline"] = round(mine["aggregate_tps"] / row["aggregate_tps"], 2)
        report["baseline"] = {"path": args.baseline, "levels": rows}
    if args.idle:
        report["idle"] = idle_connections(args.idle)

    report["peers"] = {}
    for name in [p for p in args.peers.split(",") if p]:
        kind, quantization = variant(name)
        binary, setup = SETUP.get(kind, (None, ""))
        if binary is not None and not binary.exists():
            print(f"{name}: not built, skipped (run {setup})", flush=True)
            report["peers"][name] = {"skipped": f"not built: run {setup}"}
            continue
        print(f"{name}:", flush=True)
        peer = PEERS[kind](quantization) if quantization != "none" else PEERS[kind]()
        try:
            rows = [load(peer.url, n, args.tokens, request_extra(kind, args.sampling),
                         count_chunks=kind in COUNTED_BY_CHUNKS) for n in peer_levels]
            report["peers"][name] = {"levels": rows}
        finally:
            peer.stop()

    for backend, mine in report["backends"].items():
        ours_at = {row["streams"]: row for row in mine.get("sweep", [])}
        for result in report["peers"].values():
            for row in result.get("levels", []):
                level = ours_at.get(row["streams"])
                if level and row["aggregate_tps"]:
                    row[f"{backend}_over_peer"] = round(level["aggregate_tps"] / row["aggregate_tps"], 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (RESULTS / f"{stamp}.json", RESULTS / "latest.json"):
        path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written to {RESULTS / f'{stamp}.json'}")


if __name__ == "__main__":
    main()
