"""The fixed-shape decode steps (``LLM_API_DECODE_GRAPHS``) on the CPU, where no CUDA graph can be captured.

On the embedded model, uncaptured, the arena's layout must give the padded batch's answers token for token. On
tiny random models of the embedded model's and ChatGLM3's architectures, each bucket's step is traced once into
a graph of PyTorch operations on its fixed buffers and that graph is replayed, as a CUDA graph would be: shapes,
Python branches and tensor addresses are frozen at capture. The answers must match the padded batch's, and the
graph must hold no operation whose result the host waits for (a CUDA capture fails on those)."""

from __future__ import annotations

import gevent
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import llm_api.local_model.engine as engine_module
from llm_api.generation.types import SamplingParams
from llm_api.local_model.batch import RunningBatch
from llm_api.local_model.engine import EngineOptions, LocalEngine
from llm_api.local_model.graphed_batch import MIN_COLUMNS, Capture, GraphedBatch, Step, bucket
from llm_api.local_model.loader import ModelSpec
from llm_api.local_model.prefix_cache import PrefixCache
from tests.generation import collect
from tests.llama_tiny import build_tiny_llama
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


CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_glm():
    """ChatGLM3's native architecture (``GlmForCausalLM``: grouped keys and values, partial rotary embeddings)
    at two layers, random weights, float32."""
    from bench.gpu_decode import TINY, random_model

    return random_model(TINY, CPU, torch.float32)


def graphed_and_padded_tokens(model, capture: Capture, prompts: list[list[int]], steps: int):
    """Each row's greedy tokens from the graphed batch (with ``capture``) and from the padded batch."""
    from bench.gpu_decode import run

    vocab = model.config.vocab_size
    graphed = GraphedBatch(model, CPU, vocab, slots=len(prompts), prefixes=PrefixCache(0), capture=capture)
    padded_batch = RunningBatch(model, CPU, vocab, prefixes=PrefixCache(0))
    return run(graphed, prompts, steps, CPU)[2], run(padded_batch, prompts, steps, CPU)[2]


def test_a_chatglm3_shaped_model_decodes_the_same_from_replayed_steps(tiny_glm):
    """Three rows of different lengths: one captured step (4 rows, 256 columns) replayed."""
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, tiny_glm.config.vocab_size, (length,), generator=generator).tolist()
               for length in (20, 140, 60)]
    capture = TracedCapture()
    graphed, padded_batch = graphed_and_padded_tokens(tiny_glm, capture, prompts, 20)
    assert graphed == padded_batch
    assert (capture.captures, capture.replays) == (1, 20)
    assert not [op for op in capture.operations if op.startswith(HOST_SYNCS)]


def test_a_capture_that_fails_leaves_the_batch_decoding_uncaptured(tiny_glm, caplog):
    def failing(step: Step) -> Step:
        raise RuntimeError("operation not permitted when stream is capturing")

    graphed, padded_batch = graphed_and_padded_tokens(tiny_glm, failing, [list(range(10, 40)), list(range(50, 70))], 8)
    assert graphed == padded_batch
    assert [r.message for r in caplog.records if r.levelname == "ERROR"] == [
        "decode step capture failed; decode steps run uncaptured from now on"]


def started(engine: LocalEngine) -> LocalEngine:
    engine.start()
    assert engine.wait_ready(300), engine.load_error
    return engine


@pytest.fixture(scope="module")
def eager():
    """The embedded model on the fixed-shape steps, uncaptured: its answers depend on every earlier token, so
    a row reading another slot's keys and values, or a stale column, changes them."""
    engine = started(LocalEngine(ModelSpec("embedded", cache_dir=str(CACHE_DIR)),
                                 EngineOptions(max_batch=8, decode_graphs="eager")))
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def tiny_folder():
    return build_tiny_llama(CACHE_DIR / "llama-tiny-2x64", CACHE_DIR)


def answer(engine: LocalEngine, messages: list[dict[str, str]], max_tokens: int):
    handle = engine.submit("t", engine.encode_chat(messages), SamplingParams(max_tokens=max_tokens, temperature=0.0))
    text, finished, _ = collect(handle, 60)
    return text, finished.token_ids


LENGTHS = [30, 12, 24, 15, 40, 18, 27, 21]
LONG_QUESTION = [{"role": "user", "content": "Summarise this: " + "the quick brown fox jumps over it; " * 30}]


def staggered(engine: LocalEngine) -> list[tuple[int, ...]]:
    """Eight requests at once, of different lengths: each joins after its prefill while the others decode, and
    they leave out of order, so slots are filled, moved down and reused."""
    jobs = [gevent.spawn(answer, engine, [{"role": "user", "content": prompt}], length)
            for prompt, length in zip(PROMPTS, LENGTHS, strict=True)]
    gevent.joinall(jobs, raise_error=True)
    return [job.value[1] for job in jobs]


@pytest.mark.model
def test_the_arena_answers_as_the_padded_batch_in_a_staggered_batch_and_alone(eager, real_engine):
    assert staggered(eager) == staggered(real_engine)
    question = [{"role": "user", "content": PROMPTS[3]}]
    assert answer(eager, question, 24) == answer(real_engine, question, 24)


@pytest.mark.model
def test_a_sequence_longer_than_the_arena_grows_it_and_answers_the_same(eager, real_engine):
    assert len(eager.encode_chat(LONG_QUESTION)) > MIN_COLUMNS
    assert answer(eager, LONG_QUESTION, 24) == answer(real_engine, LONG_QUESTION, 24)


@pytest.mark.model
def test_a_conversation_reuses_its_prefix_and_answers_as_the_padded_batch(eager, real_engine):
    hits = eager._prefixes.hits
    turns: dict[LocalEngine, list[tuple[int, ...]]] = {eager: [], real_engine: []}
    for engine, answers in turns.items():
        messages: list[dict[str, str]] = []
        for question in ("Tell me about Rome.", "And its emperors?", "Which one was the most famous?"):
            messages.append({"role": "user", "content": question})
            text, ids = answer(engine, messages, 16)
            messages.append({"role": "assistant", "content": text})
            answers.append(ids)
    assert turns[eager] == turns[real_engine]
    assert eager._prefixes.hits >= hits + 2


@pytest.mark.model
def test_steps_captured_once_per_bucket_and_replayed_answer_as_the_padded_batch(tiny_folder):
    """On a tiny model (tracing the embedded model's 30 layers takes seconds a bucket): each bucket's step is
    traced once, replayed from then on, and holds no operation the host waits for."""
    capture = TracedCapture()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine_module, "no_capture", capture)
        traced = started(LocalEngine(ModelSpec(str(tiny_folder), cache_dir=str(CACHE_DIR)),
                                     EngineOptions(max_batch=8, decode_graphs="eager")))
    padded = started(LocalEngine(ModelSpec(str(tiny_folder), cache_dir=str(CACHE_DIR)),
                                 EngineOptions(max_batch=8, decode_graphs="off")))
    try:
        assert staggered(traced) == staggered(padded)
        captures = capture.captures
        assert 2 <= captures <= 4 and capture.replays > 10 * captures  # row buckets 1, 2, 4, 8; 128 columns
        assert answer(traced, LONG_QUESTION, 24) == answer(padded, LONG_QUESTION, 24)
        assert capture.captures > captures  # the arena grew: its steps were captured again
    finally:
        traced.stop()
        padded.stop()
    assert "aten.index_put_.default" in capture.operations  # the operations' names are as expected
    assert not [op for op in capture.operations if op.startswith(HOST_SYNCS)]


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
