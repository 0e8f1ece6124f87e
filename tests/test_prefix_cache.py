"""Prefix reuse: the cache on its own, then the real engine with it on and off, token for token."""

from __future__ import annotations

import gevent
import pytest
import torch

from llm_api.generation.types import Finished, SamplingParams
from llm_api.local_model.engine import EngineOptions, LocalEngine
from llm_api.local_model.loader import ModelSpec
from llm_api.local_model.prefix_cache import PrefixCache, common_prefix
from tests.generation import collect
from tests.servers import CACHE_DIR

# ---- the cache alone ----------------------------------------------------------------------------------


def kv_for(ids: list[int], layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fake KV whose value at each position is its token id, so slices can be checked."""
    column = torch.tensor(ids, dtype=torch.float32)[None, None, :, None]
    return [(column.clone(), -column.clone()) for _ in range(layers)]


def test_common_prefix_is_exact_and_capped():
    a = tuple(range(100))
    assert common_prefix(a, a, 1000) == 100
    assert common_prefix(a, a, 40) == 40
    assert common_prefix(a, (*range(37), -1), 1000) == 37
    assert common_prefix(a, (-1,), 1000) == 0
    assert common_prefix((), a, 10) == 0


def test_lookup_takes_the_longest_prefix_and_leaves_the_last_token_to_run():
    cache = PrefixCache(1000, min_match=4)
    cache.store(list(range(10)), kv_for(list(range(10))))
    cache.store([*range(6), 50, 51], kv_for([*range(6), 50, 51]))
    length, kv = cache.lookup([*range(8), 99])
    assert length == 8 and len(kv) == 2
    assert kv[0][0].flatten().tolist() == list(range(8)) and kv[1][1].flatten().tolist() == [-x for x in range(8)]
    assert cache.lookup(list(range(10)))[0] == 9  # a prompt fully cached still runs its last token
    assert cache.lookup([*range(6), 50, 51, 52])[0] == 8
    assert cache.lookup([0, 1, 2, 99]) is None  # shorter than the minimum match
    assert (cache.hits, cache.reused_tokens) == (3, 8 + 9 + 8)


def test_a_longer_sequence_replaces_the_entry_it_extends():
    cache = PrefixCache(1000, min_match=2)
    cache.store([1, 2, 3], kv_for([1, 2, 3]))
    cache.store([1, 2, 3, 4, 5], kv_for([1, 2, 3, 4, 5]))  # the next turn of the same conversation
    assert len(cache) == 1 and cache.tokens == 5
    cache.store([1, 2, 3, 4], kv_for([1, 2, 3, 4]))  # already covered: nothing new is kept
    assert len(cache) == 1 and cache.tokens == 5


def test_eviction_is_least_recently_used_and_bounded_by_tokens():
    cache = PrefixCache(25, min_match=2)
    a, b, c = [[tag] * 10 for tag in (1, 2, 3)]
    cache.store(a, kv_for(a))
    cache.store(b, kv_for(b))
    assert cache.lookup([*a, 0]) is not None  # a is now the most recently used
    cache.store(c, kv_for(c))
    assert cache.tokens <= 25 and len(cache) == 2
    assert cache.lookup([*b, 0]) is None  # b went first
    assert cache.lookup([*a, 0]) is not None and cache.lookup([*c, 0]) is not None
    cache.store([7] * 30, kv_for([7] * 30))  # larger than the whole budget: never kept
    assert cache.tokens <= 25 and cache.lookup([7] * 31) is None


def test_a_zero_budget_keeps_nothing():
    cache = PrefixCache(0)
    cache.store(list(range(50)), kv_for(list(range(50))))
    assert not cache.enabled and len(cache) == 0 and cache.lookup(list(range(60))) is None


# ---- the real engine ----------------------------------------------------------------------------------

GREEDY = SamplingParams(max_tokens=48, temperature=0.0)


def engine_with(**options: int) -> LocalEngine:
    engine = LocalEngine(ModelSpec("embedded", cache_dir=str(CACHE_DIR)), EngineOptions(**options))
    engine.start()
    assert engine.wait_ready(300), engine.load_error
    return engine


@pytest.fixture(scope="module")
def uncached():
    engine = engine_with(prefix_cache_tokens=0)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def cached():
    engine = engine_with(prefix_cache_tokens=8192, prefill_chunk=16)
    yield engine
    engine.stop()


def generate(engine: LocalEngine, ids: list[int], params: SamplingParams = GREEDY, delay: float = 0.0,
             cancel_after: int | None = None) -> tuple[str, Finished]:
    gevent.sleep(delay)
    text, finished, _ = collect(engine.submit("p", ids, params), 60, cancel_after)
    return text, finished


def conversation(engine: LocalEngine, questions: list[str]) -> list[tuple[list[int], tuple[int, ...]]]:
    """Each turn's prompt (the whole history, as the service resends it) and its greedy answer's ids."""
    messages: list[dict[str, str]] = []
    turns = []
    for question in questions:
        messages.append({"role": "user", "content": question})
        ids = engine.encode_chat(messages)
        text, finished = generate(engine, ids)
        turns.append((ids, finished.token_ids))
        messages.append({"role": "assistant", "content": text})
    return turns


QUESTIONS = ["Tell me about the history of Rome.", "What about its emperors?", "Who was the most famous one?"]


@pytest.mark.model
def test_a_conversation_reuses_its_history_and_answers_token_for_token_the_same(cached, uncached):
    hits, reused = cached.stats["prefix_hits"], cached.stats["prefix_tokens_reused"]
    turns = conversation(cached, QUESTIONS)
    for ids, answer in turns:
        assert generate(uncached, ids)[1].token_ids == answer
    gevent.sleep(0.1)
    assert cached.stats["prefix_hits"] - hits >= 2
    # turns 2 and 3 reuse most of their prompt: all of the previous prompt and answer that re-tokenized alike
    assert cached.stats["prefix_tokens_reused"] - reused >= len(turns[1][0]) // 2 + len(turns[2][0]) // 2
    assert uncached.stats["prefix_hits"] == 0


@pytest.mark.model
def test_a_prefix_hit_while_other_rows_decode_gives_the_same_tokens(cached, uncached):
    system = {"role": "system", "content": "You are a terse assistant who answers in one short sentence. " * 6}
    prompts = [cached.encode_chat([system, {"role": "user", "content": q}])
               for q in ("What is 2+2?", "Name a colour.", "Who wrote Hamlet?", "What is the capital of Italy?")]
    alone = [generate(uncached, ids)[1].token_ids for ids in prompts]
    generate(cached, prompts[0])  # the shared system prompt is now cached
    hits = cached.stats["prefix_hits"]
    long_runner = gevent.spawn(generate, cached, cached.encode_chat([{"role": "user", "content": "Write a story."}]),
                               SamplingParams(max_tokens=120, temperature=0))
    jobs = [gevent.spawn(generate, cached, ids, GREEDY, 0.3 + i * 0.2) for i, ids in enumerate(prompts)]
    gevent.joinall([*jobs, long_runner], raise_error=True)
    assert [job.value[1].token_ids for job in jobs] == alone
    assert cached.stats["prefix_hits"] - hits >= len(prompts)


@pytest.mark.model
def test_a_cancelled_request_leaves_a_usable_prefix_and_no_wrong_tokens(cached, uncached):
    ids = cached.encode_chat([{"role": "user", "content": "Write a long story about a dragon and a knight."}])
    params = SamplingParams(max_tokens=64, temperature=0)
    _, cancelled = generate(cached, ids, params, cancel_after=4)
    assert cancelled.finish_reason == "cancelled"
    hits = cached.stats["prefix_hits"]
    _, again = generate(cached, ids, params)
    _, expected = generate(uncached, ids, params)
    assert again.token_ids == expected.token_ids
    assert again.token_ids[:len(cancelled.token_ids)] == cancelled.token_ids
    assert cached.stats["prefix_hits"] == hits + 1


@pytest.mark.model
def test_eviction_keeps_the_budget_and_the_answers(uncached):
    small = engine_with(prefix_cache_tokens=150)
    try:
        turns = conversation(small, QUESTIONS[:2])
        others = [small.encode_chat([{"role": "user", "content": q}]) for q in ("Name a fruit.", "Count to five.")]
        answers = [generate(small, ids)[1].token_ids for ids in others]
        assert small._prefixes.tokens <= 150
        for ids, answer in [*turns, *zip(others, answers, strict=True)]:
            assert generate(uncached, ids)[1].token_ids == answer
        again = generate(small, turns[1][0])[1].token_ids  # its entry may be gone: recomputed, still the same
        assert again == turns[1][1]
    finally:
        small.stop()
