"""The fixed-shape decode step (``LLM_API_DECODE_GRAPHS``) on the CPU, where no CUDA graph can be captured.

The step of each bucket is traced once into a graph of PyTorch operations on its fixed buffers and that graph is
replayed from then on, as a CUDA graph would be: shapes, Python branches and tensor addresses are frozen at
capture. The answers must match the padded batch's token for token, and the graph must hold no operation that
waits for the device (a CUDA capture fails on those)."""

from __future__ import annotations

import gevent
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import llm_api.local_model.engine as engine_module
from llm_api.generation.types import SamplingParams
from llm_api.local_model.batch import RunningBatch
from llm_api.local_model.engine import EngineOptions, LocalEngine
from llm_api.local_model.graphed_batch import MIN_COLUMNS, GraphedBatch, Step, bucket
from llm_api.local_model.loader import ModelSpec
from llm_api.local_model.prefix_cache import PrefixCache
from tests.generation import collect
from tests.servers import CACHE_DIR

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Explain gravity in one sentence.",
           "List three fruits.", "What is 2+2?", "Who wrote Hamlet?", "Say hello in French.", "Describe a cat."]
HOST_SYNCS = ("aten._local_scalar_dense.", "aten.nonzero.", "aten.item.")  # results the host must wait for


def test_buckets_are_powers_of_two_from_the_smallest():
    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
    assert [bucket(n, MIN_COLUMNS) for n in (1, 128, 129, 300)] == [128, 128, 256, 512]


class TracedCapture:
    """Captures a step by tracing it into an FX graph of aten operations, and replays the graph."""

    def __init__(self) -> None:
        self.captures = 0
        self.replays = 0
        self.operations: set[str] = set()

    def __call__(self, step: Step) -> Step:
        graph = make_fx(step, tracing_mode="real")()
        self.captures += 1
        self.operations |= {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}

        def replay():
            self.replays += 1
            return graph()

        return replay


def test_a_chatglm3_shaped_model_decodes_the_same_from_replayed_steps():
    """ChatGLM3's native architecture (``GlmForCausalLM``: grouped keys and values, partial rotary embeddings)
    at two layers, three rows of different lengths: one captured step (4 rows, 256 columns) replayed."""
    from bench.gpu_decode import TINY, random_model, run

    cpu = torch.device("cpu")
    model = random_model(TINY, cpu, torch.float32)
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, vocab, (length,), generator=generator).tolist() for length in (20, 140, 60)]
    capture = TracedCapture()
    graphed = GraphedBatch(model, cpu, vocab, slots=4, prefixes=PrefixCache(0), capture=capture)
    padded = RunningBatch(model, cpu, vocab, prefixes=PrefixCache(0))
    assert run(graphed, prompts, 20, cpu)[2] == run(padded, prompts, 20, cpu)[2]
    assert (capture.captures, capture.replays) == (1, 20)
    assert not [op for op in capture.operations if op.startswith(HOST_SYNCS)]


def test_a_capture_that_fails_leaves_the_batch_decoding_uncaptured(caplog):
    from bench.gpu_decode import TINY, random_model, run

    def failing(step: Step) -> Step:
        raise RuntimeError("operation not permitted when stream is capturing")

    cpu = torch.device("cpu")
    model = random_model(TINY, cpu, torch.float32)
    vocab = model.config.vocab_size
    prompts = [list(range(10, 40)), list(range(50, 70))]
    graphed = GraphedBatch(model, cpu, vocab, slots=2, prefixes=PrefixCache(0), capture=failing)
    padded = RunningBatch(model, cpu, vocab, prefixes=PrefixCache(0))
    assert run(graphed, prompts, 8, cpu)[2] == run(padded, prompts, 8, cpu)[2]
    assert [r.message for r in caplog.records if r.levelname == "ERROR"] == [
        "decode step capture failed; decode steps run uncaptured from now on"]


@pytest.fixture(scope="module")
def traced():
    capture = TracedCapture()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "no_capture", capture)
        engine = LocalEngine(ModelSpec("embedded", cache_dir=str(CACHE_DIR)),
                             EngineOptions(max_batch=8, max_queue=32, decode_graphs="eager"))
        engine.start()
        assert engine.wait_ready(300), engine.load_error
    yield engine, capture
    engine.stop()


def answer(engine: LocalEngine, messages: list[dict[str, str]], max_tokens: int, delay: float = 0.0):
    gevent.sleep(delay)
    handle = engine.submit("t", engine.encode_chat(messages), SamplingParams(max_tokens=max_tokens, temperature=0.0))
    text, finished, _ = collect(handle, 60)
    return text, finished.token_ids


def staggered(engine: LocalEngine) -> list[tuple[int, ...]]:
    """Eight requests a little apart, of different lengths: rows join while others decode and leave in the
    middle, so slots are filled, moved down and reused."""
    jobs = [gevent.spawn(answer, engine, [{"role": "user", "content": prompt}], 16 + 6 * i, 0.03 * i)
            for i, prompt in enumerate(PROMPTS)]
    gevent.joinall(jobs, raise_error=True)
    return [job.value[1] for job in jobs]


@pytest.mark.model
def test_replayed_steps_answer_as_the_padded_batch_alone_and_in_a_staggered_batch(traced, real_engine):
    engine, capture = traced
    assert staggered(engine) == staggered(real_engine)
    alone = answer(engine, [{"role": "user", "content": PROMPTS[3]}], 34)
    assert alone == answer(real_engine, [{"role": "user", "content": PROMPTS[3]}], 34)
    assert capture.captures <= 4 and capture.replays > 15 * capture.captures  # row buckets 1, 2, 4, 8; 128 columns
    assert "aten.index_put_.default" in capture.operations  # the operations' names are as expected
    assert not [op for op in capture.operations if op.startswith(HOST_SYNCS)]


@pytest.mark.model
def test_a_sequence_longer_than_the_arena_grows_it_and_captures_again(traced, real_engine):
    engine, capture = traced
    long_question = [{"role": "user", "content": "Summarise this: " + "the quick brown fox jumps over it; " * 30}]
    before = capture.captures
    assert answer(engine, long_question, 40) == answer(real_engine, long_question, 40)
    assert len(engine.encode_chat(long_question)) > MIN_COLUMNS and capture.captures > before


@pytest.mark.model
def test_a_conversation_reuses_its_prefix_and_answers_as_the_padded_batch(traced, real_engine):
    engine, _ = traced
    hits = engine._prefixes.hits
    for source in (engine, real_engine):
        messages: list[dict[str, str]] = []
        turns = []
        for question in ("Tell me about Rome.", "And its emperors?", "Which one was the most famous?"):
            messages.append({"role": "user", "content": question})
            text, ids = answer(source, messages, 24)
            messages.append({"role": "assistant", "content": text})
            turns.append(ids)
        if source is engine:
            graphed_turns = turns
    assert graphed_turns == turns
    assert engine._prefixes.hits >= hits + 2


def test_the_gpu_benchmark_runs_a_chatglm3_shaped_model_and_both_batches_agree(capsys, monkeypatch):
    """``bench.gpu_decode`` on a two-layer model of ChatGLM3's kind, on the CPU in float32: the fixed-shape steps
    give the padded batch's greedy tokens on every row, and the roofline line is printed."""
    from bench import gpu_decode

    monkeypatch.setattr("sys.argv", ["gpu_decode", "--tiny", "--device", "cpu", "--dtype", "float32",
                                     "--rows", "1", "3", "--steps", "12", "--prompt", "150"])
    gpu_decode.main()
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[-2].endswith("| 1 of 1 |") and table[-1].endswith("| 3 of 3 |")
    assert "of the roofline" in out.splitlines()[-1]
