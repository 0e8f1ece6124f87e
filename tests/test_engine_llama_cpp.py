"""The engine on LLM_API_BACKEND=llama_cpp, in-process: the embedded GGUF's own 4-bit weights on llama.cpp's
kernels (built by `make llama-cpp`, which `make test` runs first), driven by our batching loop."""

from __future__ import annotations

import ctypes
import json
import logging
from dataclasses import replace

import gevent
import numpy as np
import pytest
import torch
from gguf import GGUFReader

from llm_api.generation.errors import ContextLengthError
from llm_api.generation.structured import ResponseFormat, StructuredOutput
from llm_api.generation.types import SamplingParams
from llm_api.local_model.engine import EngineOptions, LocalEngine
from llm_api.local_model.errors import ModelLoadError
from llm_api.local_model.loader import ModelSpec, load_model
from llm_api.local_model.slot_batch import SlotBatch
from llm_api.local_model.spec import cpu_flags, preflight
from tests.generation import collect
from tests.servers import CACHE_DIR

pytestmark = pytest.mark.model

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Explain gravity in one sentence.",
           "List three fruits.", "What is 2+2?", "Who wrote Hamlet?", "Say hello in French.", "Describe a cat."]
GREEDY = SamplingParams(max_tokens=40, temperature=0.0)
SPEC = ModelSpec("embedded", cache_dir=str(CACHE_DIR), backend="llama_cpp")
Q8_0_FILE_TYPE = 7  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q8_0, as GGUF's general.file_type stores it


def _engine(spec: ModelSpec = SPEC, **options) -> LocalEngine:
    engine = LocalEngine(spec, EngineOptions(**{"max_batch": 8, "max_queue": 32, **options}))
    engine.start()
    assert engine.wait_ready(300), engine.load_error
    return engine


@pytest.fixture(scope="module")
def llama_engine():
    engine = _engine()
    yield engine
    engine.stop()


def run(engine, messages, params: SamplingParams, delay: float = 0.0, cancel_after: int | None = None):
    gevent.sleep(delay)
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    handle = engine.submit("t", engine.encode_chat(messages), params)
    text, finished, deltas = collect(handle, 60, cancel_after)
    return text, finished, deltas, handle


def test_it_runs_the_gguf_on_llama_cpp_in_the_batched_loop(llama_engine):
    model = llama_engine._loaded()
    assert type(model.model).__name__ == "LlamaCppModel"
    assert llama_engine.batched
    assert llama_engine.context_length == 4096  # the per-slot cap, below the model's 8,192
    text, finished, deltas, _ = run(llama_engine, "Count from one to five.", SamplingParams(max_tokens=30,
                                                                                         temperature=0.0))
    assert finished.finish_reason in ("stop", "length") and deltas > 3 and text.strip()
    assert finished.usage.completion_tokens == len(finished.token_ids)


def test_greedy_tokens_identical_alone_and_in_a_staggered_batch_of_8(llama_engine):
    alone = [run(llama_engine, p, GREEDY)[1].token_ids for p in PROMPTS]
    jobs = [gevent.spawn(run, llama_engine, p, GREEDY, i * 0.05) for i, p in enumerate(PROMPTS)]
    gevent.joinall(jobs, raise_error=True)
    assert [job.value[1].token_ids for job in jobs] == alone
    assert sum(len(t) for t in alone) > 8 * 10


def test_greedy_tokens_identical_alone_and_in_a_burst_behind_one_request(llama_engine, monkeypatch):
    """Seven requests arriving together while a first one decodes: their prompts run in a step of their own
    (the first row waits a step), each in the slot holding its earlier run, and every answer is the same."""
    alone = [run(llama_engine, p, GREEDY)[1].token_ids for p in PROMPTS]
    waited = []
    step = SlotBatch.step

    def recording_step(batch, prefills, chunk):
        rows = len(batch.rows)
        result = step(batch, prefills, chunk)
        waited.append(rows > 0 and not result.rows)
        return result

    monkeypatch.setattr(SlotBatch, "step", recording_step)
    jobs = [gevent.spawn(run, llama_engine, PROMPTS[-1], GREEDY)]
    jobs += [gevent.spawn(run, llama_engine, p, GREEDY, 0.02) for p in PROMPTS[:-1]]
    gevent.joinall(jobs, raise_error=True)
    assert [job.value[1].token_ids for job in [*jobs[1:], jobs[0]]] == alone
    assert any(waited)


def test_a_continued_conversation_reuses_its_slot_and_answers_the_same_as_without_reuse(llama_engine):
    cold = _engine(prefix_cache_tokens=0)
    try:
        history = [{"role": "system", "content": "You are a terse assistant. " * 8},
                   {"role": "user", "content": "Name a large animal."}]
        first = run(llama_engine, history, GREEDY)[0]
        history += [{"role": "assistant", "content": first}, {"role": "user", "content": "And a small one?"}]
        hits, reused = llama_engine.stats["prefix_hits"], llama_engine.stats["prefix_tokens_reused"]
        warm = run(llama_engine, history, GREEDY)[1].token_ids
        assert llama_engine.stats["prefix_hits"] == hits + 1
        assert llama_engine.stats["prefix_tokens_reused"] - reused > 60  # the system prompt and the first turn
        assert run(cold, history, GREEDY)[1].token_ids == warm
        assert cold.stats["prefix_hits"] == 0
    finally:
        cold.stop()


def test_concurrent_prompts_sharing_a_system_prompt_copy_it_from_a_busy_slot(llama_engine):
    system = {"role": "system", "content": "You answer questions about geography in one short sentence. " * 4}
    slow = gevent.spawn(run, llama_engine, [system, {"role": "user", "content": "Describe the Alps."}],
                        SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True))
    gevent.sleep(0.3)  # the first is decoding: its slot is busy when the others arrive
    hits = llama_engine.stats["prefix_hits"]
    jobs = [gevent.spawn(run, llama_engine, [system, {"role": "user", "content": f"Where is {city}?"}], GREEDY)
            for city in ("Lima", "Oslo", "Hanoi")]
    gevent.joinall([slow, *jobs], raise_error=True)
    assert llama_engine.stats["prefix_hits"] >= hits + 3
    alone = [run(llama_engine, [system, {"role": "user", "content": f"Where is {city}?"}], GREEDY)[1].token_ids
             for city in ("Lima", "Oslo", "Hanoi")]
    assert [job.value[1].token_ids for job in jobs] == alone


def test_a_request_sharing_only_the_system_prompt_leaves_a_conversations_slot_whole(llama_engine):
    system = {"role": "system", "content": "You are a careful historian who answers at length. " * 5}
    history = [system, {"role": "user", "content": "Tell me about the Roman Republic."}]
    answer = run(llama_engine, history, SamplingParams(max_tokens=80, temperature=0.0))[0]
    history += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And the Empire?"}]
    run(llama_engine, [system, {"role": "user", "content": "Hi!"}], GREEDY)  # shares the system prompt only
    reused = llama_engine.stats["prefix_tokens_reused"]
    run(llama_engine, history, GREEDY)
    assert llama_engine.stats["prefix_tokens_reused"] - reused > len(llama_engine.encode_chat(history[:2])) + 40


def test_n_answers_share_one_prompt_run_and_a_seed_repeats(llama_engine):
    """Submitted back to back as the service submits a request's ``n`` answers; the engine thread may take
    the first before the others arrive, so the prompt runs once, twice at worst, for four answers."""
    seeded = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.9, seed=77)
    shared = llama_engine.shared_prefills
    ids = llama_engine.encode_chat([{"role": "user", "content": "Tell me a story about a fox."}])
    handles = [llama_engine.submit(f"n{i}", ids, seeded) for i in range(4)]
    answers = [collect(handle, 60)[1].token_ids for handle in handles]
    assert all(answer == answers[0] for answer in answers) and answers[0]
    assert llama_engine.shared_prefills - shared >= 2


def test_cancel_stops_generation_within_a_few_steps(llama_engine):
    params = SamplingParams(max_tokens=300, temperature=0.0, ignore_eos=True)
    _, finished, deltas, handle = run(llama_engine, "Write a long story about a dragon.", params, cancel_after=3)
    assert finished.finish_reason == "cancelled" and handle.cancel_seen_at_token is not None
    assert finished.usage.completion_tokens < 30


def test_a_json_schema_answer_validates(llama_engine):
    """The bound on the number is part of what is checked, and it ends the number: unbounded, this model's
    greedy population of Tokyo repeats a digit until the token limit on some kernels."""
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "population": {"type": "integer", "minimum": 0, "maximum": 99999999}},
              "required": ["city", "population"], "additionalProperties": False}
    structured = StructuredOutput(ResponseFormat("json_schema", json.dumps(schema), "city"))
    ids = llama_engine.encode_chat([{"role": "user", "content": "Give the largest city of Japan as JSON."}])
    handle = llama_engine.submit("s", ids, SamplingParams(max_tokens=60, temperature=0.0, structured=structured))
    text, finished, _ = collect(handle, 60)
    answer = json.loads(text)
    assert finished.finish_reason == "stop" and set(answer) == {"city", "population"}
    assert isinstance(answer["population"], int) and 0 <= answer["population"] <= 99999999


def test_logprobs_are_log_probabilities_of_the_chosen_tokens(llama_engine):
    ids = llama_engine.encode_chat([{"role": "user", "content": "Say yes."}])
    handle = llama_engine.submit("l", ids, SamplingParams(max_tokens=5, temperature=0.0, logprobs=True,
                                                          top_logprobs=3))
    logprobs = []
    while (event := handle.next_event(60)) is not None and not hasattr(event, "finish_reason"):
        logprobs.extend(getattr(event, "logprobs", ()) or ())
    assert logprobs and all(entry.logprob <= 0 for entry in logprobs)
    assert all(entry.top and entry.top[0].logprob >= entry.logprob - 1e-4 for entry in logprobs)


def test_a_step_given_in_any_slot_order_returns_each_rows_logits_where_it_was_asked():
    """llama.cpp computes a batch in groups of adjacent slots taken in the order given, so the model feeds a
    step sorted by slot; the logits must still come back in the caller's order."""
    model = load_model(SPEC, slots=4).model
    try:
        prompts = [[1, 504, 3000 + slot, 42] for slot in range(4)]
        for slot, prompt in enumerate(prompts):
            model.run(prompt, range(4), [slot] * 4, [False] * 3 + [True])

        def step(slots: list[int]):
            logits = model.run([7] * len(slots), [4] * len(slots), slots, [True] * len(slots))
            for slot in slots:
                model.forget(slot, 4)  # back to the prompt, for the next order
            return logits

        in_order = step([0, 1, 2, 3])
        shuffled = step([2, 0, 3, 1])
        assert in_order.shape == (4, model.vocab_size)
        assert not np.allclose(in_order[0], in_order[2])  # the rows differ, so a mix-up would show
        np.testing.assert_allclose(shuffled, in_order[[2, 0, 3, 1]], rtol=1e-5, atol=1e-5)
        mixed = model.run([7, 9, 7], [4, 4, 5], [3, 0, 3], [True, False, True])  # a slot's two tokens, and one
        for slot in (0, 3):  # without logits between
            model.forget(slot, 4)
        pair = model.run([7, 7], [4, 5], [3, 3], [True, True])
        assert np.array_equal(mixed, pair) and not np.array_equal(pair[0], pair[1])
        model.copy(2, 0)  # slot 0 now holds slot 2's prompt, and slot 2 still does
        np.testing.assert_allclose(step([0, 2]), in_order[[2, 2]], rtol=1e-5, atol=1e-5)
    finally:
        model.close()


def test_a_turn_after_cached_cells_gets_the_same_logits_as_its_whole_prompt_run_at_once():
    """A new turn of a stored conversation runs its few tokens over the cells its slot kept. The build runs
    attention in tiles from 2 query rows (scripts/patch_llama_cpp.py), where a row's result does not depend on
    the rows beside it, so the turn's logits are the same bits as when the history and the turn run together.
    ggml's row-at-a-time path, which such a turn took before, gave logits up to 0.76 apart here."""
    model = load_model(SPEC, slots=2).model
    try:
        history = [100 + 7 * i % 5000 for i in range(300)]
        model.run(history, range(300), [0] * 300, [False] * 300)
        for length in (24, 2):  # a question, and the shortest part a prompt is cut into
            turn = list(range(2000, 2000 + length))
            after_cached = model.run(turn, range(300, 300 + length), [0] * length, [True] * length)
            model.forget(0, 300)
            at_once = model.run(history + turn, range(300 + length), [1] * (300 + length),
                                [False] * 300 + [True] * length)
            model.forget(1)
            assert after_cached.shape == (length, model.vocab_size)
            assert np.array_equal(after_cached, at_once)
    finally:
        model.close()


def test_a_requantized_file_is_made_once_and_answers_the_same_alone_and_in_a_batch():
    """LLM_API_QUANTIZATION=q8_0: the GGUF re-quantized into the model cache on first load, reused after."""
    engine = _engine(replace(SPEC, quantization="q8_0"))
    try:
        weights = engine._loaded().model.weights
        assert weights.name == "SmolLM2-135M-Instruct.Q4_1.q8_0.gguf" and weights.is_relative_to(CACHE_DIR)
        file_type = GGUFReader(weights).fields["general.file_type"]
        assert int(file_type.parts[file_type.data[0]][0]) == Q8_0_FILE_TYPE
        made = weights.stat().st_mtime_ns
        alone = [run(engine, p, GREEDY)[1].token_ids for p in PROMPTS]
        jobs = [gevent.spawn(run, engine, p, GREEDY, i * 0.05) for i, p in enumerate(PROMPTS)]
        gevent.joinall(jobs, raise_error=True)
        assert [job.value[1].token_ids for job in jobs] == alone  # batch invariance holds for this option too
    finally:
        engine.stop()
    again = load_model(replace(SPEC, quantization="q8_0"), slots=1)
    try:
        assert again.model.weights == weights and weights.stat().st_mtime_ns == made  # not made a second time
    finally:
        again.model.close()


@pytest.mark.parametrize("quantization", ["none", "q8_0"])
def test_a_rows_logits_are_the_same_bits_alone_and_in_a_batch_of_8(quantization):
    """Batch invariance at the kernels, for each weight format offered."""
    model = load_model(replace(SPEC, quantization=quantization), slots=8).model
    try:
        for slot in range(8):
            model.run([1, 504, 3000 + 7 * slot, 42, 99], range(5), [slot] * 5, [False] * 4 + [True])
        alone = np.stack([model.run([7], [5], [slot], [True])[0] for slot in range(8)])
        for slot in range(8):
            model.forget(slot, 5)
        batch = model.run([7] * 8, [5] * 8, list(range(8)), [True] * 8)
        assert np.array_equal(alone, batch)
        assert not np.array_equal(alone[0], alone[1])  # different prompts: a mix-up of rows would show
    finally:
        model.close()


def test_the_kernels_agree_with_float32_torch_on_the_same_weights():
    """The logits llama.cpp computes for every position of three chat prompts, against the torch backend's
    float32 copy of the same GGUF. llama.cpp quantizes activations to 8 bits, so they differ a little; a
    kernel that computes the wrong thing (AMX tiles left unconfigured, a bad repack) differs everywhere."""
    reference = load_model(replace(SPEC, backend="torch"))
    model = load_model(SPEC, slots=1).model
    try:
        differences, agreements = [], []
        for prompt in PROMPTS[:3]:
            ids = reference.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                          add_generation_prompt=True, return_dict=False)
            with torch.inference_mode():
                expected = reference.model(torch.tensor([ids])).logits[0].float().numpy()
            got = model.run(ids, range(len(ids)), [0] * len(ids), [True] * len(ids))[:, :expected.shape[1]]
            model.forget(0)
            differences.append(np.abs(got - expected).mean())
            agreements.append((got.argmax(axis=1) == expected.argmax(axis=1)).mean())
        assert max(differences) < 0.5, differences  # measured 0.24-0.28, on logits spanning about 69
        assert min(agreements) > 0.9, agreements  # measured 95-97% of positions pick the same top token
    finally:
        model.close()


def _amx_usable() -> bool:
    """The CPU has AMX and Linux grants its tile data to this process (what llama.cpp asks for too)."""
    if "amx_int8" not in (cpu_flags() or []):
        return False
    sys_arch_prctl, request_permission, tile_data = 158, 0x1023, 18  # x86-64 Linux
    return ctypes.CDLL(None, use_errno=True).syscall(sys_arch_prctl, request_permission, tile_data) == 0


def test_the_weights_run_on_amx_kernels_exactly_where_the_cpu_has_them(caplog):
    """On a CPU with AVX-512, `make llama-cpp` builds llama.cpp's AMX kernels in: llama.cpp repacks the
    weights for them where the CPU has AMX and Linux grants it (a batch of 16 decodes about 3x faster
    here), and leaves them out elsewhere."""
    caplog.set_level(logging.INFO, logger="llama_cpp")
    load_model(SPEC, slots=1).model.close()
    placed = [record.getMessage() for record in caplog.records if "model buffer size" in record.getMessage()]
    assert placed, "llama.cpp's load log names the buffers the weights went to"
    assert any(" AMX model buffer" in line for line in placed) == _amx_usable(), placed


def test_a_prompt_past_the_slot_context_is_refused(llama_engine):
    ids = llama_engine.encode_chat([{"role": "user", "content": "Hi"}])
    with pytest.raises(ContextLengthError):
        llama_engine.submit("c", ids, SamplingParams(max_tokens=4096))


def test_the_backend_needs_a_gguf_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="LLM_API_BACKEND=llama_cpp runs GGUF files"):
        preflight(ModelSpec(str(tmp_path), backend="llama_cpp"))


def test_without_llama_cpp_installed_start_up_says_how_to_build_it(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(ModelLoadError, match="make llama-cpp"):
        preflight(SPEC)
