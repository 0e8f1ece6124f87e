"""The real engine on the embedded model, in-process: batching, sampling, cancellation, admission."""

from __future__ import annotations

import gevent
import pytest

from llm_api.generation.errors import ContextLengthError, QueueFullError
from llm_api.generation.types import Finished, SamplingParams, TextDelta
from llm_api.local_model.decode import IncrementalDetokenizer
from llm_api.local_model.engine import EngineOptions, LocalEngine
from llm_api.local_model.loader import ModelSpec
from tests.generation import collect
from tests.servers import CACHE_DIR

pytestmark = pytest.mark.model

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Explain gravity in one sentence.",
           "List three fruits.", "What is 2+2?", "Who wrote Hamlet?", "Say hello in French.", "Describe a cat."]
GREEDY = SamplingParams(max_tokens=40, temperature=0.0)


def run(engine, prompt: str, params: SamplingParams, delay: float = 0.0, cancel_after: int | None = None,
        cancel_reason: str = "cancelled"):
    """Submit one chat request and collect (text, Finished, number of deltas)."""
    gevent.sleep(delay)
    handle = engine.submit("t", engine.encode_chat([{"role": "user", "content": prompt}]), params)
    text, finished, deltas = collect(handle, 30, cancel_after, cancel_reason)
    return text, finished, deltas, handle


def test_greedy_answer_is_sensible(real_engine):
    text, finished, _, _ = run(real_engine, "What is the capital of France?", GREEDY)
    assert "Paris" in text
    assert finished.finish_reason == "stop"


def test_greedy_tokens_identical_alone_and_in_a_staggered_batch_of_8(real_engine):
    alone = [run(real_engine, p, GREEDY)[1].token_ids for p in PROMPTS]
    jobs = [gevent.spawn(run, real_engine, p, GREEDY, i * 0.1) for i, p in enumerate(PROMPTS)]
    gevent.joinall(jobs, raise_error=True)
    batched = [job.value[1].token_ids for job in jobs]
    assert batched == alone
    assert sum(len(t) for t in alone) > 8 * 10


def test_each_request_keeps_its_own_parameters_in_one_batch(real_engine):
    seeded = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.9, seed=1234)
    specs = [
        ("Tell me a story about a fox.", seeded),
        ("Tell me a story about a fox.", seeded),
        ("Count from one to twenty in words.", SamplingParams(max_tokens=5, temperature=0.0)),
        ("What is the capital of France?", SamplingParams(max_tokens=30, temperature=0.0, stop=("Paris",))),
        ("What is the capital of France?", GREEDY),
    ]
    jobs = [gevent.spawn(run, real_engine, prompt, params) for prompt, params in specs]
    gevent.joinall(jobs, raise_error=True)
    (a, fa, *_), (b, fb, *_), (short, fs, *_), (stopped, fst, *_), (full, *_) = [j.value for j in jobs]
    assert a == b and fa.token_ids == fb.token_ids  # same seed, same request → same text
    assert fs.finish_reason == "length" and fs.usage.completion_tokens == 5 and short
    assert fst.finish_reason == "stop" and "Paris" not in stopped and "Paris" in full
    assert full.startswith(stopped)


def test_cancel_stops_generation_within_a_few_steps(real_engine):
    params = SamplingParams(max_tokens=200, temperature=0.0)
    text, finished, deltas, handle = run(real_engine, "Write a long story about a dragon.", params, cancel_after=3)
    assert finished.finish_reason == "cancelled"
    assert handle.cancel_seen_at_token is not None
    assert finished.usage.completion_tokens <= deltas + 2
    assert finished.usage.completion_tokens < 20


def test_a_request_past_its_deadline_finishes_with_timeout_and_keeps_its_text(real_engine):
    params = SamplingParams(max_tokens=200, temperature=0.0)
    text, finished, deltas, _ = run(real_engine, "Write a long story about a dragon.", params, cancel_after=4,
                                    cancel_reason="timeout")
    assert finished.finish_reason == "timeout"
    assert text and finished.usage.completion_tokens <= deltas + 2


def test_admission_is_bounded_even_for_a_burst():
    engine = LocalEngine(ModelSpec("embedded", cache_dir=str(CACHE_DIR)), EngineOptions(max_batch=2, max_queue=3))
    engine.start()
    assert engine.wait_ready(300), engine.load_error
    try:
        ids = engine.encode_chat([{"role": "user", "content": "Write a long story."}])
        accepted, refused = [], 0
        for _ in range(20):  # a burst from one greenlet: the engine thread may take 2 into its batch meanwhile
            try:
                accepted.append(engine.submit("b", ids, SamplingParams(max_tokens=100, temperature=0)))
            except QueueFullError:
                refused += 1
        assert 3 <= len(accepted) <= 2 + 3
        assert refused == 20 - len(accepted)
        for handle in accepted:
            handle.cancel()
        with pytest.raises(ContextLengthError):
            engine.submit("c", ids, SamplingParams(max_tokens=engine.context_length))
    finally:
        engine.stop()


def test_sequential_generate_path_matches_the_batched_loop(real_engine):
    """Models that cannot join the batch run through model.generate with a streamer; same answers."""
    engine = LocalEngine(ModelSpec("embedded", cache_dir=str(CACHE_DIR)), EngineOptions(batching=False))
    engine.start()
    assert engine.wait_ready(300), engine.load_error
    try:
        assert not engine.batched
        for prompt in PROMPTS[:3]:
            text, finished, deltas, _ = run(engine, prompt, GREEDY)
            expected = run(real_engine, prompt, GREEDY)
            assert (text, finished.token_ids) == (expected[0], expected[1].token_ids)
            assert deltas > 3
        text, finished, deltas, handle = run(engine, "Write a long story about a dragon.",
                                             SamplingParams(max_tokens=200, temperature=0), cancel_after=3)
        assert finished.finish_reason == "cancelled" and finished.usage.completion_tokens <= deltas + 2
    finally:
        engine.stop()


@pytest.mark.parametrize("text", ["Emoji: 👍🏽🇫🇷🧑‍💻 done", "中文：你好，世界！日本語もです。", "Ünïcödé ✓ ∑ → ∞"])
def test_real_tokenizer_splits_characters_and_the_detokenizer_holds_them_back(real_engine, text):
    model = real_engine._loaded()
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    raw_pieces = [model.decode([i]) for i in ids]
    assert any("\ufffd" in piece for piece in raw_pieces)  # the tokenizer really does split characters
    detok = IncrementalDetokenizer(model.decode)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(deltas) == model.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)


def test_any_local_hugging_face_chat_model_folder_loads(real_engine):
    """A plain local folder (config.json, safetensors, tokenizer with a chat template) runs in the batch."""
    folder = next(p for p in CACHE_DIR.iterdir() if (p / "config.json").is_file() and p.name.startswith("SmolLM2"))
    engine = LocalEngine(ModelSpec(str(folder), cache_dir=str(CACHE_DIR)), EngineOptions())
    engine.start()
    assert engine.wait_ready(300), engine.load_error
    try:
        assert engine.batched and engine.model_name == folder.name
        text, finished, _, _ = run(engine, "What is the capital of France?", GREEDY)
        assert text == run(real_engine, "What is the capital of France?", GREEDY)[0]
        assert "Paris" in text
    finally:
        engine.stop()


def test_near_zero_temperature_is_greedy_and_odd_seeds_are_fine(real_engine):
    greedy = run(real_engine, "What is the capital of France?", GREEDY)[1].token_ids
    tiny = run(real_engine, "What is the capital of France?", SamplingParams(max_tokens=40, temperature=1e-40))
    assert tiny[1].token_ids == greedy and tiny[1].finish_reason == "stop"
    for seed in (-1, 2**64 + 5):
        text, finished, _, _ = run(real_engine, "Say something.", SamplingParams(max_tokens=5, seed=seed))
        assert finished.finish_reason in ("stop", "length") and finished.usage.completion_tokens >= 1


@pytest.fixture(scope="module")
def chunky_engine():
    """Small prefill chunks, so that ordinary prompts are prefilled in several pieces."""
    engine = LocalEngine(ModelSpec("embedded", cache_dir=str(CACHE_DIR)), EngineOptions(prefill_chunk=8))
    engine.start()
    assert engine.wait_ready(300), engine.load_error
    yield engine
    engine.stop()


def test_chunked_prefill_gives_the_same_tokens(real_engine, chunky_engine):
    alone = [run(real_engine, p, GREEDY)[1].token_ids for p in PROMPTS[:4]]
    jobs = [gevent.spawn(run, chunky_engine, p, GREEDY, i * 0.15) for i, p in enumerate(PROMPTS[:4])]
    gevent.joinall(jobs, raise_error=True)
    assert [job.value[1].token_ids for job in jobs] == alone


def test_a_long_prompt_is_prefilled_between_decode_steps_of_running_streams(chunky_engine):
    """While a ~500-token prompt is prefilled in chunks, a running stream keeps receiving tokens."""
    engine = chunky_engine
    running = engine.submit("r", engine.encode_chat([{"role": "user", "content": "Write a long story."}]),
                            SamplingParams(max_tokens=150, temperature=0))
    assert isinstance(running.next_event(30), TextDelta)
    long_prompt = " ".join(f"word{i}" for i in range(250))
    ids = engine.encode_chat([{"role": "user", "content": long_prompt}])
    assert len(ids) > 450
    waiting = engine.submit("l", ids, SamplingParams(max_tokens=1, temperature=0))
    tokens_meanwhile = 0
    while (event := waiting.next_event(0.001)) is None:
        running_event = running.next_event(0.01)
        if isinstance(running_event, TextDelta):
            tokens_meanwhile += 1
        assert not isinstance(running_event, Finished), "the running stream ended before the prefill did"
    assert isinstance(event, (TextDelta, Finished))
    # 450+ tokens in chunks of 8 take 56+ rounds, each with one decode step of the running stream
    assert tokens_meanwhile >= 40
    running.cancel()


def test_ignore_eos_generates_exactly_max_tokens(real_engine):
    text, finished, _, _ = run(real_engine, "What is the capital of France?",
                               SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))
    assert finished.finish_reason == "length" and finished.usage.completion_tokens == 30
    assert text.startswith("The capital of France is Paris.")


def test_the_backlog_reports_the_work_ahead_and_finishes_report_their_time_in_the_queue(real_engine):
    from tests.fakes import wait_until

    ids = real_engine.encode_chat([{"role": "user", "content": "Write a long story."}])
    long = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
    run(real_engine, "Hi", SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    assert real_engine.backlog().tokens_per_second > 0  # measured
    assert real_engine.backlog().wait_seconds() == 0.0  # an idle engine: no wait
    handles = [real_engine.submit(f"b{i}", ids, long) for i in range(8 + 3)]  # a full batch of 8, and 3 waiting
    try:
        assert wait_until(lambda: real_engine.stats["running"] == 8, timeout=60)
        backlog = real_engine.backlog()
        assert (backlog.waiting, backlog.waiting_max_tokens, backlog.free_slots) == (3, 3 * 60, 0)
        assert 0 < backlog.running_max_tokens <= 8 * 60
        expected = (backlog.waiting_max_tokens + backlog.running_max_tokens) * backlog.fill / backlog.tokens_per_second
        assert backlog.wait_seconds() == pytest.approx(expected) and expected > 0
    finally:
        for handle in handles:
            handle.cancel()
    finishes = [collect(handle, 60)[1] for handle in handles]
    assert all(f.queue_time is not None and f.queue_time >= 0 for f in finishes)
    assert max(f.queue_time for f in finishes[8:]) > 0  # the last three waited for a slot
    assert real_engine.backlog().waiting == 0
